"""The Cadenza studio page (Gradio). Thin: every button calls a Studio method (engine/service/studio.py),
which calls the engine. Per-user data comes in through the session key the browser keeps
(gr.BrowserState) and lives on disk under the outputs directory, never in module globals."""
from __future__ import annotations

import functools
import html
import logging
import os
import secrets
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import gradio as gr

from engine.api import AudioProgress
from engine.audio.musicgen import KNOWN_MODELS, AudioSettings
from engine.errors import CadenzaError, SettingsError
from engine.render.identity import heading, of_edit
from engine.requests import ComposeRequest
from engine.store import valid_key
from engine.symbolic.sampling import SamplingSettings
from engine.settings import ServerSettings
from engine.service.policy import public
from webui.guard import LoginBackoff
from webui import views
from engine.service.pieces import Outcome, Progress
from engine.service.studio import Studio
from webui.forms import audio_request, compose_request
from webui.handlers import fail, keep_page, servable, with_session, sweep_served, trim_served
from webui.http_api import endpoints

log = logging.getLogger("cadenza.web")

# The page's and the API's defaults are the engine's: read from its request classes' fields
# (ComposeRequest.max_patches ...), never written here.
AUDIO_KINDS = ("audio", "performed")
AUDIO_PLAYERS = 4  # variations shown with a player each (all are in the downloads)
STATIC = Path(__file__).parent / "static"  # abcjs (vendored, pinned) and the script that engraves with it
CSS = """
#live-abc, #score-marks { display: none !important; }
#live-score { background: white; color: black; overflow: auto; max-height: 78vh; min-height: 160px; padding: 4px 8px; }
#live-score .placeholder { color: #666; padding: 2em; }
#score-page { background: white; overflow-x: auto; max-height: 80vh; }
#score-page svg { width: 100%; height: auto; }
#status { min-height: 1.6em; }
.abc-incipit { background: white; min-height: 60px; overflow: hidden; }
.toast-wrap { top: auto !important; bottom: var(--size-4); }  /* notices at the foot: never over the lists and buttons */
#history-table table { table-layout: fixed; }
#history-table td, #history-table th { word-break: normal; overflow-wrap: anywhere; }
"""
# Page-wide rules Gradio's css= cannot hold (it scopes every selector inside the app's container):
# below 1100 px the Settings sidebar opens over the page, as Gradio does below 768 px, instead of
# squeezing the score into what is left (at 820 px the music kept 420 px).
HEAD_CSS = """
@media (max-width: 1100px) {
  .sidebar-parent, .sidebar-parent:has(.sidebar.open) { padding-left: 0 !important; padding-right: 0 !important; }
}
"""


def _head() -> str:
    """abcjs and the engraving script, inlined: no file route to open, works offline."""
    scripts = [STATIC / "abcjs-basic-min.js", STATIC / "cadenza-score.js", STATIC / "page.js"]
    return f"<style>{HEAD_CSS}</style>" + "".join(
        f"<script>{p.read_text(encoding='utf-8')}</script>" for p in scripts if p.is_file())
FOLLOW_S = 3 * 3600.0  # a page follows a piece being written at most this long (a reload follows it again)
# The page is updated at most this often while a piece is written (each update is the whole piece so
# far: the editor and the engraving redo it all). Every patch, a chorale took 4x as long on 2 cores.
UPDATE_GAP_S = 0.5
# Runs in the browser as Generate, Continue, Rewrite or Write this again is pressed: the music
# being written comes into view (the inputs go on unchanged).
TO_THE_MUSIC = ("(...args) => { const s = document.getElementById('status'); "
                "if (s) s.scrollIntoView({block: 'start', behavior: 'smooth'}); return args; }")


def _page_html(svg: str | None, page: int = 0, pages: int = 0) -> str:
    if not svg:
        return "<p><i>The printed page appears here when the piece is finished.</i></p>"
    label = f"<p>page {page + 1} of {pages}</p>" if pages > 1 else ""
    return f"{label}<div id='score-page'>{svg}</div>"


def _history(ui: SimpleNamespace, records: list) -> dict:
    """The History table and the ids of its rows, always together: a row selected after the table
    grew must name its own piece."""
    return {ui.history: views.history_rows(records), ui.history_ids: [r.id for r in records]}


def _identity(r, abc: str) -> dict:
    """What the page keeps of the open piece (gr.State): enough to continue, render, transpose or
    write it again as the piece it is, and its ABC's T:/C: lines, which tell whether the editor
    still holds this piece (identity.of_edit)."""
    return {"id": r.id, "title": r.title, "kind": r.kind, "prompt": r.prompt, "seed": r.seed,
            "settings": r.settings, "heading": list(heading(abc))}


def _show(ui: SimpleNamespace, studio: Studio, key: str, o: Outcome, siblings: list[Outcome] | None = None) -> dict:
    """Everything the page shows of a finished piece, by component; `siblings`: the variations
    written with it (cards side by side), None to leave the cards as they are."""
    pages = [str(p) for p in o.paths("svg")]
    first = Path(pages[0]).read_text() if pages else None
    wav = o.paths("wav")
    r = o.record
    seed_info = views.seed_line(r) or (
        "" if r.prompt else "This score has no style of its own: Continue and Rewrite write it as the Period, "
                            "Composer and Instrumentation chosen above.")
    shown = {ui.abc: o.abc, ui.live: o.abc, ui.marks: views.marks(r.analysis, o.abc), ui.progress: views.summary(r),
             ui.notes: views.notes(r),
             ui.seed_info: seed_info, ui.again: gr.update(visible=r.seed is not None and r.kind == "composed"),
             ui.printed: _page_html(first, 0, len(pages)), ui.pages: pages, ui.page_no: 0,
             ui.audio: gr.update(value=servable(wav[0]) if wav else None, visible=True), ui.downloads: [servable(p) for p in o.downloads()],
             **_history(ui, studio.history(key)), ui.piece_id: r.id, ui.current: _identity(r, o.abc), ui.work: {"piece": r.id, "draft": None}}
    if siblings is not None:
        shown |= _cards(ui, siblings)
    return shown


def _cleared(ui: SimpleNamespace) -> dict:
    """The page without a finished piece: what _show fills, emptied (a new piece is being written,
    and nothing of the previous one may stay beside it: it is in History)."""
    return {ui.seed_info: "", ui.again: gr.update(visible=False), ui.notes: "", ui.marks: "", ui.printed: _page_html(None),
            ui.pages: [], ui.page_no: 0, ui.downloads: None, **_cards(ui, []),
            # the old player is hidden, not emptied: emptying it, then giving it the new piece, reloaded
            # the player just after the new piece began to play (the cursor test lost its place)
            ui.audio: gr.update(visible=False)}


def _cards(ui: SimpleNamespace, outcomes: list[Outcome]) -> dict:
    """The variations side by side: each card its seed, first bars, player and an Open button."""
    many = len(outcomes) > 1
    shown = {ui.cards_row: gr.update(visible=many), ui.card_ids: [o.record.id for o in outcomes] if many else []}
    for n, card in enumerate(ui.cards):
        o = outcomes[n] if many and n < len(outcomes) else None
        wav = o.paths("wav") if o else []
        shown |= {card.box: gr.update(visible=o is not None),
                  card.text: views.card(o.record, n + 1, o.abc) if o else "",
                  card.audio: servable(wav[0]) if wav else None}
    return shown


def _audio_summary(o: Outcome) -> str:
    r = o.record
    st = r.settings
    made = st.get("audio_seconds", 0)
    rtf = f", real-time factor {r.seconds / made:.2f}" if made else ""
    lines = [f"**{html.escape(r.title)}** - {made:.1f} s of audio in {r.seconds:.1f} s{rtf}",
             f"seed **{r.seed}**, model {html.escape(r.model)}, {st.get('windows', 1)} window(s), stop: {r.stop_reason}"]
    if r.prompt.get("melody"):
        lines.append(f"following the melody of {html.escape(r.prompt['melody'])}")
    lines += [f"- note: {html.escape(w)}" for w in r.warnings[:8]]
    return "\n\n".join(lines)


def _audio_players(o: Outcome) -> list:
    wavs = o.paths("wav")
    return [gr.update(value=servable(wavs[i]), visible=True) if i < len(wavs)
            else gr.update(value=None, visible=False) for i in range(AUDIO_PLAYERS)]


def _show_audio(ui: SimpleNamespace, studio: Studio, key: str, o: Outcome) -> dict:
    """Everything the Audio page shows of a finished clip, by component."""
    return {ui.a_progress: _audio_summary(o), **dict(zip(ui.a_players, _audio_players(o))),
            ui.a_pictures: [servable(p) for p in o.paths("png")], ui.a_files: [servable(p) for p in o.downloads()],
            **_history(ui, studio.history(key))}


def _musicgen_choices(studio: Studio, first: str, melody: bool) -> list[str]:
    """The server's MusicGen model, then the known ones this server can load (in its cache, or
    downloadable when the admin allowed it)."""
    def offered(m: str) -> bool:
        try:
            studio.policy.musicgen(m)
            return True
        except CadenzaError:
            return False

    known = [m for m in KNOWN_MODELS if "melody" in m or not melody]
    return list(dict.fromkeys([first, *(m for m in known if offered(m))]))


def _score_tab(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """The Score tab: the prompt and the controls a composer sets each time, the buttons, then the
    music in the middle (engraved as it is written), its player, downloads and variations, then
    the ABC to edit. The settings set once live in the sidebar (see _settings_sidebar)."""
    with gr.Tab("Score", id="score"):
        with gr.Row(equal_height=True):
            ui.period = gr.Dropdown(label="Period", choices=[], interactive=True)
            # names are long ("Bach, Johann Sebastian"): twice the room, so that 820 px shows them whole
            ui.composer = gr.Dropdown(label="Composer", choices=[], interactive=True, scale=2)
            ui.instrumentation = gr.Dropdown(label="Instrumentation", choices=[], interactive=True)
            ui.surprise = gr.Button("Surprise me", scale=0, min_width=120)
        with gr.Row(equal_height=True):  # text boxes: empty means the model decides (a number box shows 0)
            ui.bars = gr.Textbox(value="", label="Length in bars", placeholder="the model's length", min_width=130)
            ui.music_key = gr.Textbox(value="", label="Key", placeholder="the model's (D, Bb, F#m)", min_width=130)
            ui.meter = gr.Textbox(value="", label="Metre", placeholder="the model's (3/4, 6/8)", min_width=130)
            ui.tempo = gr.Textbox(value="", label="Tempo (quarter =)", placeholder="the model's tempo", min_width=130)
            # (a slider needs two ends: a server allowing one variation shows it fixed at 1)
            ui.variations = gr.Slider(1, max(2, config.max_variations), value=1, step=1, label="Variations",
                                      min_width=200, interactive=config.max_variations > 1)
            ui.seed = gr.Textbox(value="", label="Seed", placeholder="random", min_width=130)
        with gr.Row():
            ui.generate = gr.Button("Generate", variant="primary")
            ui.stop = gr.Button("Stop", variant="secondary")
            ui.cont = gr.Button("Continue this score")
            ui.render = gr.Button("Render my edits")
        ui.progress = gr.Markdown("", elem_id="status")
        with gr.Row():  # the player, the seed and Write this again, right above the music
            ui.audio = gr.Audio(label="Listen", type="filepath", interactive=False, elem_id="score-player", scale=3,
                                min_width=360)
            with gr.Column(scale=2, min_width=300):
                ui.seed_info = gr.Markdown("")
                ui.again = gr.Button("Write this again", visible=False, size="md")
        ui.live = gr.Textbox(value="", elem_id="live-abc", show_label=False, container=False, lines=1)
        # the bars at fault in the musical check, for the score (views.marks); hidden like live-abc
        ui.marks = gr.Textbox(value="", elem_id="score-marks", show_label=False, container=False, lines=1)
        ui.score = gr.HTML(views.LIVE_SCORE_HTML, elem_id="score")
        with gr.Row():
            ui.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, height=200,
                                   min_width=360)
            ui.notes = gr.HTML("", min_width=300)
        with gr.Row(visible=False) as ui.cards_row:
            ui.cards = []
            for n in range(config.max_variations):
                with gr.Column(visible=False, min_width=280) as box:
                    card = SimpleNamespace(box=box, text=gr.HTML(""),
                                           audio=gr.Audio(type="filepath", interactive=False, show_label=False),
                                           open=gr.Button(f"Open variation {n + 1}", size="sm"))
                ui.cards.append(card)
        with gr.Accordion("The score as ABC: edit, continue, rewrite, transpose, upload", open=True):
            with gr.Row():
                ui.abc = gr.Code(label="ABC (editable)", language=None, interactive=True, lines=12, max_lines=30,
                                 wrap_lines=True, scale=3)
                with gr.Column(scale=1, min_width=260):
                    ui.upload = gr.File(label="Upload a score (ABC, MusicXML, MXL)", type="filepath",
                                        file_types=[".abc", ".musicxml", ".xml", ".mxl"])
                    with gr.Row():
                        # a click on the score puts the bar's number here (webui/static/cadenza-score.js)
                        ui.rewrite_bar = gr.Number(value=1, precision=0, minimum=0, label="Bar (click one)",
                                                   min_width=80, elem_id="rewrite-bar")
                        ui.rewrite = gr.Button("Rewrite from this bar (a new seed)", min_width=150)
                    with gr.Row():
                        ui.transpose_key = gr.Textbox(value="", label="Key", placeholder="D, Bb, F#m", min_width=80)
                        ui.transpose = gr.Button("Transpose to this key", min_width=150)
        with gr.Accordion("The printed page (as in the PDF)", open=False):
            ui.printed = gr.HTML(_page_html(None))
            with gr.Row():
                ui.prev_page = gr.Button("< page", scale=0)
                ui.next_page = gr.Button("page >", scale=0)
        with gr.Accordion("Perform with MusicGen", open=False):
            gr.Markdown("The score above is played with the SoundFont and given to a MusicGen melody model "
                        "as the melody; it plays the piece again in the style you describe.")
            ui.perform_weights = gr.Markdown(_weights_note(studio, config.melody_model, melody=True))
            with gr.Row():
                ui.style = gr.Textbox(label="Style", value="string quartet, warm hall", scale=2)
                ui.perform_model = gr.Dropdown(label="Melody model", value=config.melody_model, allow_custom_value=True,
                                               choices=_musicgen_choices(studio, config.melody_model, melody=True))
                ui.perform_seconds = gr.Slider(1, config.max_audio_seconds, value=min(30, config.max_audio_seconds),
                                               step=1, label="At most (seconds)")
            ui.perform = gr.Button("Perform with MusicGen")
            ui.perform_progress = gr.Markdown("")
            ui.perform_audio = gr.Audio(label="Performance", type="filepath", interactive=False)
            ui.perform_files = gr.File(label="Performance downloads", file_count="multiple", interactive=False)


def _settings_sidebar(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """What a composer sets once, out of the way of the music: the model and the sampling."""
    with gr.Sidebar(label="Settings", open=False, position="right"):
        gr.Markdown("### Settings\nFor Generate, Continue and Rewrite.")
        ui.temperature = gr.Slider(0.1, 2.0, value=SamplingSettings.temperature, step=0.05, label="Temperature")
        ui.top_k = gr.Slider(0, 128, value=SamplingSettings.top_k, step=1, label="Top-k (0 = off)")
        ui.top_p = gr.Slider(0.05, 1.0, value=SamplingSettings.top_p, step=0.01, label="Top-p")
        ui.bar_retries = gr.Slider(0, 32, value=ComposeRequest.bar_retries, step=1,
                                   label="Bar retries (0 = NotaGen's sampling)")
        ui.critic = gr.Checkbox(value=ComposeRequest.critic,
                                label="Musical critic: write again bars that fit no chord or move in parallel "
                                      "fifths or octaves, and end on a cadence (where the style's real music does)")
        ui.max_patches = gr.Slider(16, config.max_patches, value=min(ComposeRequest.max_patches, config.max_patches),
                                   step=16, label="Longest text the model may write (x16 characters)")
        with gr.Accordion("Model", open=False):
            offered = ", ".join(studio.policy.offered()[:8]) or "none"
            ui.model = gr.Textbox(label="Model", value="", placeholder="empty: the server's model; or the name of "
                                  f"a model in its models folder ({offered})")
            if not config.allow_downloads:
                gr.Markdown("Downloading from the Hugging Face Hub is off on this server (the person running "
                            "it can start it with `--allow-downloads`).")
            with gr.Row(visible=bool(config.allow_downloads)):
                ui.repo = gr.Textbox(label="Hugging Face repo", placeholder="ElectricAlexis/NotaGen")
                ui.repo_file = gr.Textbox(label="File", placeholder="weights_notagenx_p_size_16_p_length_1024_p_layers_20_h_size_1280.pth")
                ui.fetch = gr.Button("Download", scale=0)
            ui.use_model = gr.Button("Use this model")


def _weights_note(studio: Studio, spec: str, melody: bool) -> str:
    """Said before anyone presses a button: whether MusicGen's weights are on this server."""
    missing = studio.audio_weights_missing(spec, melody)
    return "" if missing is None else f"**MusicGen is not set up on this server.** {missing}"


def _audio_tab(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """The Audio tab: text (and a melody) to MusicGen, players, pictures and downloads."""
    with gr.Tab("Audio", id="audio"):
        gr.Markdown("Text to music with Meta's MusicGen (weights CC-BY-NC 4.0: non-commercial use). "
                    "Melody models can follow a melody you upload or record.")
        ui.a_weights = gr.Markdown(_weights_note(studio, config.audio_model, melody=False))
        with gr.Row():
            ui.a_prompt = gr.Textbox(label="Describe the music", lines=2, scale=3,
                                  placeholder="warm string quartet, slow, melancholic")
            ui.a_model = gr.Dropdown(label="MusicGen model", value=config.audio_model, allow_custom_value=True,
                                  choices=_musicgen_choices(studio, config.audio_model, melody=False))
        ui.a_duration = gr.Slider(1, config.max_audio_seconds, value=AudioSettings.duration, step=1,
                               label="Duration (seconds; past 30 s it is made in overlapping windows)")
        with gr.Accordion("Advanced settings", open=False):
            with gr.Row():
                ui.a_guidance = gr.Slider(0, 10, value=AudioSettings.guidance_scale, step=0.1, label="Guidance scale")
                ui.a_top_k = gr.Slider(0, 1000, value=AudioSettings.top_k, step=1, label="Top-k")
                ui.a_top_p = gr.Slider(0, 1, value=AudioSettings.top_p, step=0.01, label="Top-p (0 = off)")
                ui.a_temperature = gr.Slider(0.1, 2.0, value=AudioSettings.temperature, step=0.05, label="Temperature")
            with gr.Row():
                ui.a_seed = gr.Textbox(value="", label="Seed", placeholder="random")
                ui.a_variations = gr.Slider(1, AUDIO_PLAYERS, value=1, step=1, label="Variations made together")
        ui.a_melody = gr.Audio(label="Melody to follow (melody models only): upload or record", type="filepath",
                            sources=["upload", "microphone"])
        with gr.Row():
            ui.a_go = gr.Button("Generate audio", variant="primary")
            ui.a_stop = gr.Button("Stop", variant="secondary")
        ui.a_progress = gr.Markdown("")
        ui.a_players = [gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False, visible=i == 0)
                     for i in range(AUDIO_PLAYERS)]
        ui.a_pictures = gr.Gallery(label="Waveform and spectrogram", columns=2, height=360, object_fit="contain")
        ui.a_files = gr.File(label="Downloads", file_count="multiple", interactive=False)


def _history_tab(ui: SimpleNamespace) -> None:
    """The History tab: this session's pieces; a clicked row is selected: play, open, rename, delete."""
    with gr.Tab("History", id="history") as ui.history_tab:
        gr.Markdown("Every piece of this browser's session, newest first. Click a row to select it.")
        ui.history = gr.Dataframe(headers=views.HISTORY_HEADERS, interactive=False, wrap=True,
                                  column_widths=views.HISTORY_WIDTHS, max_height=420, elem_id="history-table")
        with gr.Group(visible=False) as ui.picked_box:
            ui.picked_text = gr.Markdown("")
            ui.picked_audio = gr.Audio(type="filepath", interactive=False, show_label=False)
            with gr.Row(equal_height=True):
                ui.open_picked = gr.Button("Open", variant="primary", scale=0, min_width=100)
                ui.new_title = gr.Textbox(label="New title", placeholder="a title for this piece", scale=2)
                ui.rename = gr.Button("Rename", scale=0, min_width=100)
                ui.delete_picked = gr.Button("Delete", variant="stop", scale=0, min_width=100)
        with gr.Row():
            ui.usage = gr.Markdown("")
            ui.undelete = gr.Button("Undo delete", visible=False, scale=0, min_width=140)
        with gr.Accordion("Delete several", open=False):
            with gr.Row():
                ui.to_delete = gr.Dropdown(label="Pieces to delete", choices=[], multiselect=True, scale=3)
                ui.delete = gr.Button("Delete", variant="stop", scale=0)


def _system_tab(ui: SimpleNamespace) -> None:
    """The System tab: devices, models, the queue, as tables."""
    with gr.Tab("System", id="system"):
        ui.sys_line = gr.Markdown("")
        ui.sys_devices = gr.Dataframe(headers=["device", "name", "free GiB", "total GiB"], label="Devices",
                                      interactive=False, wrap=True)
        ui.sys_models = gr.Dataframe(headers=["model", "kind", "status", "placement", "batch"], label="Models",
                                     interactive=False, wrap=True, column_widths=["10%", "10%", "22%", "38%", "20%"])
        ui.refresh = gr.Button("Refresh")


def _prompt_lists(studio: Studio, spec, prompt) -> tuple | None:
    """The three dropdowns showing `prompt` (a Prompt or a record's dict), each offering what the
    cascade allows; None when the model is not ready or the prompt is not one it knows."""
    p = prompt if not isinstance(prompt, dict) else SimpleNamespace(**{f: prompt.get(f) for f in PROMPT_FIELDS})
    try:
        _, composers, _, instrumentations = studio.choices(spec or None, p.period, p.composer)
        periods = studio.prompts(spec or None).periods()
    except CadenzaError:
        return None
    if p.period not in periods or p.composer not in composers or p.instrumentation not in instrumentations:
        return None
    return (gr.update(choices=periods, value=p.period), gr.update(choices=composers, value=p.composer),
            gr.update(choices=instrumentations, value=p.instrumentation))


PROMPT_FIELDS = ("period", "composer", "instrumentation")


def _restore(ui: SimpleNamespace, studio: Studio, spec, record, with_length: bool = False) -> dict:
    """The settings a piece was written with, back in the page (opening it from History, Write
    this again): its prompt in the lists, its sampling, key, metre and tempo; its length only to
    write it again (Continue needs a longer one)."""
    out = dict(zip((ui.period, ui.composer, ui.instrumentation), _prompt_lists(studio, spec, record.prompt) or ()))
    st = record.settings or {}
    for comp, name in ((ui.temperature, "temperature"), (ui.top_k, "top_k"), (ui.top_p, "top_p"),
                       (ui.bar_retries, "bar_retries"), (ui.critic, "critic"), (ui.max_patches, "max_patches")):
        if name in st:
            out[comp] = st[name]
    controls = st.get("controls") or {}
    text = lambda v: "" if v in (None, 0) else str(v)  # noqa: E731 - the boxes are text: empty = the model's
    out |= {ui.music_key: text(controls.get("key")), ui.meter: text(controls.get("meter")),
            ui.tempo: text(controls.get("tempo")), ui.bars: text(controls.get("bars")) if with_length else ""}
    return out


def _wire_session(ui: SimpleNamespace, config: ServerSettings, studio: Studio, demo: gr.Blocks) -> None:
    """The session key, the work area kept over a reload, the model loading at start and the
    cascading prompt lists."""
    def init(k, work):
        if not valid_key(k):
            k = secrets.token_urlsafe(24)
        shown = {ui.key: k, **_history(ui, studio.history(k)), ui.status: public(studio.model(None).status())}
        return shown | _reopen(k, work)

    def _reopen(k, work) -> dict:
        """The piece open before the reload, and the ABC being edited in it (unsaved)."""
        work = work if isinstance(work, dict) else {}
        draft = work.get("draft") if isinstance(work.get("draft"), str) else None
        try:
            shown = _show(ui, studio, k, studio.outcome(k, work.get("piece"))) if work.get("piece") else {}
        except CadenzaError:
            shown = {}
        if draft is not None and len(draft) <= config.max_score_chars:
            shown |= {ui.abc: draft, ui.live: draft, ui.work: {"piece": work.get("piece"), "draft": draft}}
        return shown

    def tick(done, spec, current):
        """While a model loads: its status each second, then the lists (the open piece's prompt
        when it has one); the timer then stops (ticks go through the queue like every request)."""
        idle = gr.Timer(active=False)
        if done:
            return (gr.skip(),) * 4 + (done, idle)
        try:
            slot = studio.model(spec or None)
            if not slot.ready:
                return public(slot.status()), gr.skip(), gr.skip(), gr.skip(), False, gr.skip()
            first = studio.prompts(spec or None).prompts[0]
        except CadenzaError as e:
            return public(str(e)), gr.skip(), gr.skip(), gr.skip(), True, idle
        opened = (current or {}).get("prompt") if isinstance(current, dict) else None
        shown = _prompt_lists(studio, spec, opened or {}) or _prompt_lists(studio, spec, first) or (gr.skip(),) * 3
        return (public(slot.status()), *shown, True, idle)

    restored = list(dict.fromkeys([ui.key, ui.status] + ui.shown))
    ui.loaded = demo.load(init, [ui.key, ui.work], restored, api_visibility="private", concurrency_limit=None)
    demo.load(lambda: (_weights_note(studio, config.audio_model, False), _weights_note(studio, config.melody_model, True)),
              None, [ui.a_weights, ui.perform_weights], api_visibility="private", concurrency_limit=None)
    ui.timer = gr.Timer(1.0)
    ui.timer.tick(tick, [ui.filled, ui.model, ui.current],
                  [ui.status, ui.period, ui.composer, ui.instrumentation, ui.filled, ui.timer],
                  api_visibility="private", concurrency_limit=None)

    def on_period(spec, p):
        try:
            _, comps, c, ins = studio.choices(spec or None, p)
        except CadenzaError:
            return gr.skip(), gr.skip()
        return gr.update(choices=comps, value=c), gr.update(choices=ins, value=ins[0])

    def on_composer(spec, p, c):
        try:
            _, _, _, ins = studio.choices(spec or None, p, c)
        except CadenzaError:
            return gr.skip()
        return gr.update(choices=ins, value=ins[0])

    ui.period.input(on_period, [ui.model, ui.period], [ui.composer, ui.instrumentation], api_visibility="private",
                    concurrency_limit=None)
    ui.composer.input(on_composer, [ui.model, ui.period, ui.composer], [ui.instrumentation], api_visibility="private",
                      concurrency_limit=None)

    def on_surprise(spec, p="", c="", i=""):
        """Another prompt than the one shown (a few draws, bounded: a table of one repeats)."""
        try:
            for _ in range(8):
                pick = studio.surprise(spec or None)
                if (pick.period, pick.composer, pick.instrumentation) != (p, c, i):
                    break
            return _prompt_lists(studio, spec, pick) or (gr.skip(),) * 3
        except CadenzaError as e:
            fail(e)

    ui.surprise.click(on_surprise, [ui.model, ui.period, ui.composer, ui.instrumentation],
                      [ui.period, ui.composer, ui.instrumentation], api_visibility="private", concurrency_limit=None)

    def keep_draft(work, text):
        """Every edit of the ABC goes to this browser's storage, so a reload finds it."""
        work = work if isinstance(work, dict) else {}
        return {"piece": work.get("piece"), "draft": text if isinstance(text, str) else None}

    ui.abc.input(keep_draft, [ui.work, ui.abc], [ui.work], api_visibility="private", concurrency_limit=None,
                 trigger_mode="always_last", show_progress="hidden")


def _wire_model(ui: SimpleNamespace, studio: Studio) -> None:
    """Model: use another model from the models folder, or download one (when allowed)."""
    def on_use_model(spec):
        try:
            studio.model(spec or None)
        except CadenzaError as e:
            fail(e)
        return f"loading {public(spec) if spec else 'the server model'} ...", False, gr.Timer(active=True)

    ui.use_model.click(on_use_model, [ui.model], [ui.status, ui.filled, ui.timer], api_visibility="private",
                       concurrency_limit=None)

    def on_fetch(r, f, progress_bar=gr.Progress(track_tqdm=True)):
        try:
            name = studio.fetch(r, f)
        except CadenzaError as e:
            fail(e)
        return name, f"downloaded {public(name)}: press 'Use this model'"

    ui.fetch.click(on_fetch, [ui.repo, ui.repo_file], [ui.model, ui.status], api_visibility="private",
                   concurrency_id="download",
                concurrency_limit=1)


def _edited(text, current) -> tuple[str | None, dict | None]:
    """(title, prompt) of the score in the editor: the open piece's while it is still that piece,
    its own once another score was pasted over it (identity.of_edit)."""
    if not isinstance(current, dict) or not isinstance(text, str):
        return None, None
    title = current.get("title") if isinstance(current.get("title"), str) else None
    prompt = current.get("prompt") if isinstance(current.get("prompt"), dict) else None
    opened = tuple(current.get("heading") or (None, None))
    return of_edit(text, opened, title, prompt)


def _wire_compose(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """Generate, Continue, Rewrite, Write this again, Stop and the variation cards."""
    def run(k, spec, p, c, i, temp, tk, tp, sd, mp, var, br, critic, bars, mkey, meter, tempo, cont_abc=None,
            rewrite_from=None, title=None):
        studio.model(spec or None)  # a model this server does not offer is refused first, whatever else came
        request = compose_request(p, c, i, temp, tk, tp, sd, mp, var, br, bool(critic), bars, mkey, meter, tempo)
        # written on a thread of its own: a reload reattaches to it (reattach), a closed tab leaves it to finish
        live = studio.write(k, request, model=spec or None, continue_abc=cont_abc, rewrite_from=rewrite_from,
                            title=title)
        yield from _follow(k, live)

    def _follow(k, live) -> Iterator[dict]:
        cleared = False
        for item in live.follow(FOLLOW_S, UPDATE_GAP_S):
            # once the new piece is under way, nothing of the previous one stays beside it (its
            # player, seed, Write this again, downloads, pages, notes, cards): it is in History
            gone = {} if cleared else _cleared(ui)
            cleared = True
            if isinstance(item, Progress) and (item.waiting is not None or item.keeping is not None):
                yield gone | {ui.progress: item.line()}  # (the score stays as it is)
            elif isinstance(item, Progress):
                yield gone | {ui.abc: item.abc, ui.live: item.abc, ui.progress: item.line()}
            elif item:
                # the seed box is emptied: a seed typed once is not used again without asking
                # (the seed of this piece is shown, with Write this again)
                yield _show(ui, studio, k, item[0], siblings=item) | {ui.seed: ""}
            else:  # Stop came before the first bar: nothing to keep (what was open before is in History)
                yield {ui.progress: "stopped before a bar was written: nothing was kept"}

    @with_session
    def reattach(k):
        """A page loaded while its session's piece is being written (a reload, a second tab): its
        prompt and settings back in the page, then its progress and live score as it goes on."""
        live = studio.live(k)
        if live is None:
            yield gr.skip()
            return
        about = SimpleNamespace(prompt=live.about["prompt"], settings=live.about["settings"])
        yield _restore(ui, studio, None, about, with_length=True) | {ui.filled: True}  # the lists: not the first prompt
        yield from _follow(k, live)

    reattached = list(dict.fromkeys(ui.shown + ui.settings_shown + [ui.filled]))
    ui.loaded.then(reattach, [ui.key], reattached, api_visibility="private", concurrency_limit=None)

    inputs = [ui.key, ui.model, ui.period, ui.composer, ui.instrumentation, ui.temperature, ui.top_k, ui.top_p, ui.seed,
              ui.max_patches, ui.variations, ui.bar_retries, ui.critic, ui.bars, ui.music_key, ui.meter, ui.tempo]
    composing = dict(api_visibility="private", concurrency_id="model", concurrency_limit=config.compose_limit(),
                     show_progress_on=[ui.progress], js=TO_THE_MUSIC)
    ui.generate.click(with_session(run), inputs, ui.shown, **composing)

    @with_session
    def run_continue(k, *values):
        *settings, text, current = values
        if not text or not text.strip():
            raise SettingsError("there is no score to continue: write or upload some ABC first")
        yield from run(k, *settings, cont_abc=text, title=_edited(text, current)[0])

    @with_session
    def run_rewrite(k, *values):
        *settings, text, bar, current = values
        if not text or not text.strip():
            raise SettingsError("there is no score to rewrite: open, write or upload one first")
        yield from run(k, *settings, cont_abc=text, rewrite_from=bar, title=_edited(text, current)[0])

    ui.cont.click(run_continue, inputs + [ui.abc, ui.current], ui.shown, **composing)
    ui.rewrite.click(run_rewrite, inputs + [ui.abc, ui.rewrite_bar, ui.current], ui.shown, **composing)
    ui.stop.click(with_session(lambda k: "stopping after this patch ..." if studio.stop(k, "compose") else gr.skip()),
                  [ui.key], [ui.progress], api_visibility="private", concurrency_limit=None)

    def again(current):
        """The open piece's prompt, settings, length and seed back in the page, to write it again."""
        if not isinstance(current, dict) or current.get("seed") is None:
            return gr.skip()
        record = SimpleNamespace(prompt=current.get("prompt") or {}, settings=current.get("settings") or {})
        return _restore(ui, studio, None, record, with_length=True) | {
            ui.seed: str(current["seed"]), ui.variations: 1}

    restored = ui.settings_shown + [ui.seed, ui.variations]
    ui.again.click(again, [ui.current], restored, api_visibility="private", concurrency_limit=None).then(
        with_session(run), inputs, ui.shown, **composing)

    def open_card(k, ids, n):
        if not valid_key(k) or not isinstance(ids, list) or n >= len(ids):
            return gr.skip()
        try:
            return _show(ui, studio, k, studio.outcome(k, ids[n]))
        except CadenzaError as e:
            return keep_page(e)

    for n, card in enumerate(ui.cards):
        card.open.click(functools.partial(open_card, n=n), [ui.key, ui.card_ids], ui.shown, api_visibility="private",
                        concurrency_limit=None)


def _wire_scores(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """Render, upload and turning the score's pages."""
    @with_session
    def on_render(k, text, current=None):
        """The edits are the open piece's: its title and prompt go with them."""
        return _show(ui, studio, k, studio.render(k, text, *_edited(text, current)))

    @with_session
    def on_upload(k, path):
        if not path:
            return gr.skip()
        try:
            shown = _show(ui, studio, k, studio.upload(k, path))
        except CadenzaError as e:
            keep_page(e)  # the notice; the open piece stays as it is
            return {ui.upload: None}  # the file that could not be read leaves the box
        # the box is emptied once the score is read: the piece is in the work area and History
        return shown | {ui.upload: None}

    @with_session
    def on_transpose(k, text, to_key, current=None, chosen_key=None):
        if not text or not text.strip():
            raise SettingsError("there is no score to transpose: open, write or upload one first")
        if not to_key or not to_key.strip():
            raise SettingsError("type the key to transpose to first (D, Bb, F#m ...)")
        shown = _show(ui, studio, k, studio.transpose(k, text, to_key, *_edited(text, current)))
        # a key chosen for the piece follows it: Continue would refuse the old key against the new score
        return shown | ({ui.music_key: to_key.strip()} if chosen_key and chosen_key.strip() else {})

    rendering = dict(api_visibility="private", concurrency_id="render", concurrency_limit=2,
                     show_progress_on=[ui.progress])
    ui.render.click(on_render, [ui.key, ui.abc, ui.current], ui.shown, **rendering)
    ui.transpose.click(on_transpose, [ui.key, ui.abc, ui.transpose_key, ui.current, ui.music_key],
                       ui.shown + [ui.music_key], **rendering)
    ui.upload.upload(on_upload, [ui.key, ui.upload], ui.shown + [ui.upload], **rendering)

    def turn(paths, n, step):
        if not paths:
            return gr.skip(), n
        n = max(0, min(len(paths) - 1, n + step))
        return _page_html(Path(paths[n]).read_text(), n, len(paths)), n

    for button, step in ((ui.prev_page, -1), (ui.next_page, 1)):
        button.click(functools.partial(turn, step=step), [ui.pages, ui.page_no], [ui.printed, ui.page_no],
                     api_visibility="private", concurrency_limit=None)


def _wire_audio(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """The Audio page and "Perform with MusicGen"."""
    @with_session(errors=(CadenzaError, ValueError, TypeError))  # (a melody file soundfile cannot read)
    def run_audio(k, text, spec, dur, guidance, tk, tp, temp, sd, var, melody):
        request = audio_request(text, dur, sd, guidance, tk, tp, temp, var, melody=melody)
        for item in studio.audio(k, request, model=spec or None):
            if isinstance(item, AudioProgress):
                yield {ui.a_progress: f"making audio (seed {item.seed}): step {item.steps} of {item.total}, "
                                      f"{item.elapsed:.1f}s"}
            else:
                yield _show_audio(ui, studio, k, item[0])

    ui.a_go.click(run_audio, [ui.key, ui.a_prompt, ui.a_model, ui.a_duration, ui.a_guidance, ui.a_top_k, ui.a_top_p,
                              ui.a_temperature, ui.a_seed, ui.a_variations, ui.a_melody], ui.audio_shown,
                  api_visibility="private", concurrency_id="audio", concurrency_limit=1)
    ui.a_stop.click(with_session(lambda k: "stopping ..." if studio.stop(k, "audio") else gr.skip()), [ui.key],
                    [ui.a_progress], api_visibility="private", concurrency_limit=None)

    @with_session(errors=(CadenzaError, ValueError, TypeError))
    def run_perform(k, text, style_text, spec, dur, sd):
        for item in studio.audio(k, audio_request(style_text, dur, sd, score=text or ""), model=spec or None):
            if isinstance(item, AudioProgress):
                yield {ui.perform_progress: f"performing (seed {item.seed}): step {item.steps} of {item.total}, "
                                            f"{item.elapsed:.1f}s"}
            else:
                o = item[0]
                wavs = o.paths("wav")
                yield {ui.perform_progress: _audio_summary(o), ui.perform_audio: servable(wavs[0]) if wavs else None,
                       ui.perform_files: [servable(p) for p in o.downloads()], **_history(ui, studio.history(k))}

    ui.perform.click(run_perform, [ui.key, ui.abc, ui.style, ui.perform_model, ui.perform_seconds, ui.seed],
                     ui.perform_shown, api_visibility="private", concurrency_id="audio", concurrency_limit=1)


def _wire_history(ui: SimpleNamespace, config: ServerSettings, studio: Studio) -> None:
    """History: a clicked row is selected (its player, Open, Rename, Delete); a score opens on the
    Score page with its prompt and settings, audio on the Audio page."""
    def listing(k) -> dict:
        records = studio.history(k)
        choices = [(f"{r.created.replace('T', ' ')[:16]} {r.title}", r.id) for r in records]
        return {**_history(ui, records), ui.to_delete: gr.update(choices=choices, value=[]), ui.usage: studio.usage(k),
                ui.picked: "", ui.picked_box: gr.update(visible=False)}

    @with_session
    def on_history(k, ids, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(ids, list) or not isinstance(row, int) or not 0 <= row < len(ids):
            return gr.skip()
        o = studio.outcome(k, ids[row])
        r = o.record
        wav = o.paths("wav")
        about = f"{views.summary(r)}" + (f" · seed {r.seed}" if r.seed is not None else "") + f" · {r.created[:16]}"
        return {ui.picked: r.id, ui.picked_box: gr.update(visible=True), ui.picked_text: about,
                ui.picked_audio: servable(wav[0]) if wav else None, ui.new_title: r.title}

    picked = [ui.picked, ui.picked_box, ui.picked_text, ui.picked_audio, ui.new_title]
    ui.history.select(on_history, [ui.key, ui.history_ids], picked, api_visibility="private", concurrency_limit=None)

    @with_session
    def on_open(k, pid, spec):
        o = studio.outcome(k, pid)
        if o.record.kind in AUDIO_KINDS:
            return {**_show_audio(ui, studio, k, o), ui.tabs: gr.Tabs(selected="audio")}
        return {**_show(ui, studio, k, o, siblings=[o]), **_restore(ui, studio, spec, o.record),
                ui.tabs: gr.Tabs(selected="score")}

    opened = list(dict.fromkeys(ui.shown + ui.audio_shown + [ui.tabs, ui.period, ui.composer, ui.instrumentation,
                                                             ui.temperature, ui.top_k, ui.top_p, ui.bar_retries,
                                                             ui.critic, ui.max_patches, ui.music_key, ui.meter,
                                                             ui.tempo, ui.bars]))
    ui.open_picked.click(on_open, [ui.key, ui.picked, ui.model], opened, api_visibility="private",
                         concurrency_limit=None)

    @with_session
    def on_rename(k, pid, title):
        r = studio.rename(k, pid, title)
        gr.Info(f"renamed: {html.escape(r.title)}")  # a title is the user's text, never HTML
        return listing(k)

    @with_session
    def on_delete(k, ids):
        n, freed = studio.delete(k, ids or [])
        gr.Info(f"deleted {n} piece(s), {freed / 2**20:.1f} MB freed: Undo delete brings them back")
        return listing(k) | {ui.undelete: gr.update(visible=True)}

    @with_session
    def on_undelete(k):
        n = studio.undelete(k)
        gr.Info(f"{n} piece(s) back in History" if n else "nothing to bring back: only the last Delete can be undone")
        return listing(k) | {ui.undelete: gr.update(visible=False)}

    listed = [ui.history, ui.history_ids, ui.to_delete, ui.usage, ui.picked, ui.picked_box, ui.undelete]
    ui.history_tab.select(with_session(listing), [ui.key], listed, api_visibility="private", concurrency_limit=None)
    ui.rename.click(on_rename, [ui.key, ui.picked, ui.new_title], listed, api_visibility="private",
                    concurrency_limit=None)
    ui.delete_picked.click(with_session(lambda k, pid: on_delete(k, [pid] if pid else [])), [ui.key, ui.picked], listed,
                           api_visibility="private", concurrency_limit=None)
    ui.delete.click(on_delete, [ui.key, ui.to_delete], listed, api_visibility="private", concurrency_limit=None)
    ui.undelete.click(on_undelete, [ui.key], listed, api_visibility="private", concurrency_limit=None)


def _wire_system(ui: SimpleNamespace, demo: gr.Blocks, studio: Studio) -> None:
    """The System page, as tables."""
    def system_info():
        # Gradio has no public call for the queue's length; read it if this version has it.
        queue = getattr(demo, "_queue", None)
        waiting = len(queue) if queue is not None and hasattr(queue, "__len__") else None
        devices, models, line = views.system_tables({**studio.system(), "waiting_in_queue": waiting})
        return line, devices, models

    shown = [ui.sys_line, ui.sys_devices, ui.sys_models]
    ui.refresh.click(system_info, None, shown, api_visibility="private", concurrency_limit=None)
    demo.load(system_info, None, shown, api_visibility="private", concurrency_limit=None)


def build_app(config: ServerSettings, studio: Studio | None = None) -> gr.Blocks:
    """The page: a builder per tab, then the wiring of each concern; `ui` holds the components."""
    studio = studio or Studio(config)
    cache_s = int(config.cache_hours * 3600)
    with gr.Blocks(title="Cadenza", delete_cache=(min(3600, cache_s), cache_s)) as demo:
        secret = studio.store.secret()
        ui = SimpleNamespace(key=gr.BrowserState("", storage_key="cadenza-session", secret=secret),
                             # the work area (open piece, unsaved ABC) kept in this browser over a reload
                             work=gr.BrowserState({}, storage_key="cadenza-work", secret=secret),
                             pages=gr.State([]), piece_id=gr.State(""), filled=gr.State(False),
                             current=gr.State({}), card_ids=gr.State([]), history_ids=gr.State([]),
                             picked=gr.State(""))
        with gr.Row(equal_height=True):
            gr.Markdown("## Cadenza\nPick a style, generate, read, listen, download. Settings: the sidebar on the right.")
            ui.status = gr.Markdown("loading the model ...")
        with gr.Tabs() as ui.tabs:
            _score_tab(ui, config, studio)
            _audio_tab(ui, config, studio)
            _history_tab(ui)
            _system_tab(ui)
        _settings_sidebar(ui, config, studio)
        ui.page_no = gr.State(0)
        # what a finished piece, clip or performance may change on the page (handlers return dicts by component)
        ui.shown = [ui.abc, ui.live, ui.marks, ui.progress, ui.notes, ui.seed_info, ui.again, ui.printed, ui.pages, ui.page_no,
                    ui.audio, ui.downloads, ui.history, ui.history_ids, ui.piece_id, ui.current, ui.work,
                    ui.cards_row, ui.card_ids, ui.seed, *(x for c in ui.cards for x in (c.box, c.text, c.audio))]
        ui.audio_shown = [ui.a_progress, *ui.a_players, ui.a_pictures, ui.a_files, ui.history, ui.history_ids]
        # what _restore sets: a piece's prompt and settings
        ui.settings_shown = [ui.period, ui.composer, ui.instrumentation, ui.temperature, ui.top_k, ui.top_p,
                             ui.bar_retries, ui.critic, ui.max_patches, ui.music_key, ui.meter, ui.tempo, ui.bars]
        ui.perform_shown = [ui.perform_progress, ui.perform_audio, ui.perform_files, ui.history, ui.history_ids]
        _wire_session(ui, config, studio, demo)
        _wire_model(ui, studio)
        _wire_compose(ui, config, studio)
        _wire_scores(ui, config, studio)
        _wire_audio(ui, config, studio)
        _wire_history(ui, config, studio)
        _wire_system(ui, demo, studio)
        endpoints(studio, config)
    # api_open=False: /gradio_api/run/<name> is refused, so every request waits in the queue and
    # keeps its limits (gradio_client and the page use the queue).
    demo.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency, api_open=False)
    return demo


def start(config: ServerSettings, studio: Studio | None = None, quiet: bool = False):
    """Builds the page and serves it in the background (what launch() and the tests run):
    -> (demo, studio, url). With --auth, wrong passwords are slowed per client address."""
    studio = studio or Studio(config)
    studio.model(None)  # starts loading now; the page is up meanwhile
    demo = build_app(config, studio)
    # uvicorn believes X-Forwarded-For from the addresses in FORWARDED_ALLOW_IPS (by default this
    # machine): anyone with a local tunnel could then pose as any address to the login limit.
    os.environ["FORWARDED_ALLOW_IPS"] = config.trusted_proxies
    middleware = []
    if config.auth:
        from starlette.middleware import Middleware

        middleware.append(Middleware(LoginBackoff, free_tries=config.login_free_tries))
    demo.launch(server_name=config.host, server_port=config.port, auth=config.auth, share=config.share,
                max_file_size=f"{config.max_upload_mb}mb", css=CSS, head=_head(), show_error=False, prevent_thread_lock=True,
                quiet=quiet, app_kwargs={"middleware": middleware})
    return demo, studio, f"http://{config.host}:{config.port}/"


def launch(config: ServerSettings) -> None:
    """Serves until SIGTERM or Ctrl+C, then: no new work, running pieces stopped and kept (their
    record says "shutdown"), conversions ended, exit within about 30 s."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    demo, studio, url = start(config)
    print(f"Cadenza studio on {url}  (outputs in {studio.store.root})", flush=True)
    cache_s = config.cache_hours * 3600
    while not stop.wait(60.0):  # the main thread only waits for a signal; each minute: old served copies go
        sweep_served(cache_s)
        trim_served(int(config.cache_max_gb * 2**30))
    _shut_down(demo, studio)


def _shut_down(demo, studio: Studio) -> None:
    watchdog = threading.Timer(30.0, lambda: os._exit(1))  # whatever hangs, the process ends
    watchdog.daemon = True
    watchdog.start()
    print("Cadenza: shutting down: finishing what is running ...", flush=True)
    summary = studio.shutdown()
    # a job is one request (a score with its variations, a render, a clip), not one piece
    print(f"Cadenza: {summary['stopped']} running request(s) stopped, what they wrote kept; "
          f"{summary['workers_killed']} conversion(s) "
          f"ended{', ' + str(summary['unfinished']) + ' not finished in time' if summary['unfinished'] else ''}",
          flush=True)
    try:
        demo.close()
    finally:
        os._exit(0)  # Gradio's and the queue's threads need not be waited for: every record is on disk
