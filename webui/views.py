"""What the page shows of a piece, in words, tables and HTML: pure functions of records (no Gradio,
no components), so the page (webui/tabs/) only places them and tests can read them."""
from __future__ import annotations

import html
import json
import re

from engine.api import analysis_lines
from engine.store import PieceRecord
from engine.service.policy import public
from engine.stops import FINISHED, StopReason

HISTORY_HEADERS = ["created", "title", "kind", "seed", "bars", "fits the metre", "model"]
HISTORY_WIDTHS = ["14%", "24%", "14%", "14%", "8%", "11%", "15%"]  # of the page: no sideways scroll at 820 px
# The browser engraves the ABC held in #live-abc into #live-score (webui/static/cadenza-score.js);
# this HTML never changes, so a re-render of the page never wipes the engraving.
LIVE_SCORE_HTML = ("<div id='live-score-tools'></div>"
                   "<div id='live-score'><p class='placeholder'><i>The sheet music appears here as the piece is "
                   "written.</i></p></div>")
NOTES_SHOWN = 12  # converter notes listed under "details" at most

# The converters' words -> a composer's (what was wrong and what the studio did about it).
PLAIN = [
    (re.compile(r"score partname (\S+) does not exist"),
     r"the %%score line names a voice \1 the score does not have; it was left out"),
    (re.compile(r"misplaced symbol: (\S+)"), r"a stray '\1' in the ABC was skipped"),
    (re.compile(r"^ABC -> MusicXML: ", re.I), "reading the ABC: "),
    (re.compile(r"^MusicXML -> ", re.I), "making the "),
]


def plain(message: str) -> str:
    """A converter's message in plain words: no caret lines, no server paths, one line."""
    lines = [ln for ln in public(str(message)).splitlines() if ln.strip() and not set(ln.strip()) <= set("^~- ")]
    text = " ".join(" ".join(lines).split()).replace("**", "")
    for pattern, words in PLAIN:
        text = pattern.sub(words, text)
    return text[:300]


def prompt_line(prompt: dict) -> str:
    return " / ".join(prompt[k] for k in ("period", "composer", "instrumentation") if prompt.get(k))


def summary(r: PieceRecord) -> str:
    """One headline for the open piece: what it is, how it was made, whether its bars fit."""
    parts = [f"**{html.escape(r.title)}**", r.kind]
    if r.prompt:
        parts.append(html.escape(prompt_line(r.prompt)))
    if r.bars:
        parts.append(f"{r.bars} bars")
    if r.alignment:
        parts.append(html.escape(r.alignment.replace("aligned", "fit the metre and each other")))
    if r.stop_reason and r.stop_reason not in FINISHED:
        parts.append(f"stopped: {html.escape(STOPS.get(r.stop_reason, r.stop_reason))}")
    return " · ".join(parts)


STOPS = {StopReason.CANCELLED: "you pressed Stop", StopReason.CLOSED: "the page was closed",
         StopReason.SHUTDOWN: "the server shut down", StopReason.MAX_PATCHES: "the longest text allowed was reached",
         StopReason.MAX_CHARS: "the longest text allowed was reached", StopReason.MAX_SECONDS: "the time allowed ran out",
         StopReason.CONTEXT: "the model's context was full",
         StopReason.INTERRUPTED: "the server stopped while it was written (a crash or a kill)",
         StopReason.REPLICA_LOST: "the model's replica stopped while it was written (a crash or a lost machine)"}


def seed_line(r: PieceRecord) -> str:
    if r.seed is None:
        return ""
    return f"Seed **{r.seed}**: *Write this again* writes the same piece with the same settings."


def notes(r: PieceRecord) -> str:
    """Exports that failed, in view; the musical check (engine.symbolic.analysis) open; the
    converters' notes folded under "details"."""
    failed = "".join(f"<p class='failed'>The {html.escape(fmt)} could not be made: {html.escape(plain(err))}</p>"
                     for fmt, err in r.errors.items())
    found = analysis_lines(r.analysis)
    if found:
        shown = (" <span class='fault-key'>(the bars at fault are drawn in red on the score)</span>"
                 if any(r.analysis.get(k) for k in FAULTS) else "")
        failed += (f"<details open class='analysis'><summary>Musical check{shown}</summary><ul>"
                   + "".join(f"<li>{html.escape(line)}</li>" for line in found) + "</ul></details>")
    if not r.warnings:
        return failed
    items = "".join(f"<li>{html.escape(plain(w))}</li>" for w in r.warnings[:NOTES_SHOWN])
    more = f"<li>... and {len(r.warnings) - NOTES_SHOWN} more</li>" if len(r.warnings) > NOTES_SHOWN else ""
    word = "note" if len(r.warnings) == 1 else "notes"
    return f"{failed}<details><summary>{len(r.warnings)} {word} on the score</summary><ul>{items}{more}</ul></details>"


def history_rows(records: list[PieceRecord]) -> list[list]:
    return [[r.created.replace("T", " ")[:16], r.title, r.kind, "" if r.seed is None else str(r.seed), r.bars,
             (r.alignment.split(" ")[0] if r.alignment else ""), r.model] for r in records]


def card(r: PieceRecord, number: int, abc: str) -> str:
    """A variation's card: its number, seed and bars, and its first bars engraved by the browser."""
    head = f"<b>Variation {number}</b> · seed {r.seed} · {r.bars} bars"
    if r.alignment:
        head += f" · {html.escape(r.alignment.split(' ')[0])} fit"
    # HTML, not Markdown: Gradio's Markdown strips the data-abc attribute, and the card stayed blank
    return f"<p>{head}</p><div class='abc-incipit' data-abc=\"{html.escape(incipit(abc), quote=True)}\"></div>"


def incipit(abc: str, bars: int = 4) -> str:
    """The header (less its title) and the first `bars` lines of the tune body (NotaGen's format: a
    line is a bar of every voice), enough to tell variations apart at a glance."""
    lines = abc.splitlines()
    body = [i for i, ln in enumerate(lines) if ln.startswith("[V:") or (ln and not re.match(r"[A-Za-z]:|%", ln))]
    end = body[bars - 1] + 1 if len(body) >= bars else len(lines)
    # the title and composer are the same on every card (the card's head names the variation)
    return "\n".join(ln for ln in lines[:end] if not re.match(r"[TC]:", ln)) + "\n"


def system_tables(info: dict) -> tuple[list[list], list[list], str]:
    """The System page: devices, models, and one line on the work going on."""
    devices = [[d.get("device", ""), d.get("name", ""), d.get("free_gib", ""), d.get("total_gib", "")]
               for d in info.get("devices", [])]
    models = [[m.get("model", ""), m.get("kind", "NotaGen-style"), m.get("status", ""), m.get("placement") or "",
               _batching(m.get("batching") or [])] for m in info.get("models", [])]
    waiting = info.get("waiting_in_queue")
    line = (f"{info.get('running', 0)} piece(s) being made now (every user's scores in one batch per model copy: "
            f"see its rows below); {'' if waiting is None else f'{waiting} waiting in the queue; '}"
            f"the queue holds {info.get('queue_size', '?')}. Exports rendered {info.get('rendering', '?')}.")
    return devices, models, line


def _batching(copies: list[dict]) -> str:
    """Each copy's batch: rows in use and by how many sessions, requests waiting, pieces paused
    (given back so that rows are shared evenly), patches per second."""
    def one(c: dict) -> str:
        sessions = f" for {c['sessions_writing']} sessions" if c.get("sessions_writing", 0) > 1 else ""
        paused = f", {c['paused_pieces']} paused to share rows" if c.get("paused_pieces") else ""
        where = (f"replica {c['replica'][:8]} on {c.get('node', '?')} ({', '.join(c.get('devices') or [])}, heard "
                 f"{c.get('heard_s', 0):g} s ago): ") if c.get("replica") else ""
        return (f"{where}{c['rows_in_use']}/{c['max_batch']} rows{sessions}, {c['waiting_requests']} waiting{paused}, "
                f"{c['patches_per_s']} patches/s")
    return "; ".join(one(c) for c in copies)


# the musical check's findings with bar numbers (engine.symbolic.analysis), as the score shows them
FAULTS = {"unfit_bars": "does not fill the metre", "parallel_bars": "parallel fifths or octaves",
          "crossing_bars": "voices crossing"}


def marks(analysis: dict, abc: str) -> str:
    """The bars at fault for the engraved score (cadenza-score.js draws them in red, with the
    reasons on hover), tied to the text they were found in: an edit of it hides them."""
    bars: dict[str, list[str]] = {}
    for field, why in FAULTS.items():
        for n in (analysis or {}).get(field) or []:
            bars.setdefault(str(n), []).append(why)
    if not bars:
        return ""
    return json.dumps({"bars": bars, "length": len(abc), "tail": abc[-64:]})
