"""One conversion stage in a child process: `python -m engine.render.worker STAGE ARGS_JSON`.

The child limits its own memory (RLIMIT_AS) before importing anything heavy; the parent bounds
its time. The last line of stdout is a JSON object: the stage's result, or {"error": "..."}.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import sys
from pathlib import Path

from engine.errors import CadenzaError
from engine.render import convert
from engine.render.convert import MIDI_SUFFIXES, ConversionError
from engine.render.identity import tidy_titles
from engine.symbolic.abcformat import interleave, musicxml_to_abc, xml_to_abc


def die_with_parent() -> None:
    """Linux: the kernel kills this worker when the server that started it dies, even by SIGKILL.
    If the server died before this ran, exit now (the parent is then someone else)."""
    parent = os.environ.get("CADENZA_PARENT_PID")
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent and os.getppid() != int(parent):
        os._exit(5)


def limit_memory(megabytes: int) -> None:
    limit = megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_stage(stage: str, a: dict) -> dict:
    if stage == "musicxml":
        xml, warnings = convert.abc_to_musicxml(Path(a["abc"]).read_text())
        Path(a["out"]).write_text(xml, encoding="utf-8")
        return {"files": [a["out"]], "warnings": warnings}
    if stage == "import":
        src = Path(a["src"])
        # a MIDI file is notated first (music21, quantised); then it goes on as any MusicXML upload
        raw, notes = (convert.midi_to_musicxml(src) if src.suffix.lower() in MIDI_SUFFIXES
                      else (convert.read_musicxml(src), []))
        data, mended = convert.mended_musicxml(raw)
        notes += mended
        Path(a["xml"]).write_bytes(data)
        abc = tidy_titles(musicxml_to_abc(a["xml"], timeout=a.get("timeout", 60)))  # its title once, no "Music21"
        Path(a["abc"]).write_text(abc, encoding="utf-8")
        return {"files": [a["xml"], a["abc"]], "warnings": notes}
    if stage == "transpose":
        xml, note = convert.transpose_musicxml(Path(a["abc"]).read_text(), a["to_key"])
        Path(a["xml"]).write_text(xml, encoding="utf-8")
        Path(a["out"]).write_text(musicxml_to_abc(a["xml"], timeout=a.get("timeout", 60)), encoding="utf-8")
        return {"files": [a["out"]], "note": note}
    if stage == "interleave":
        # a user's score (ABC or MusicXML) -> header lines and one line per bar of every voice
        if "abc" in a:
            xml, _ = convert.abc_to_musicxml(Path(a["abc"]).read_text(encoding="utf-8"))
            abc = xml_to_abc(xml.encode(), timeout=0)
        else:
            abc = musicxml_to_abc(a["xml"], timeout=0)  # .mxl too
        Path(a["out"]).write_text("".join(interleave(abc)), encoding="utf-8")
        return {"files": [a["out"]]}
    if stage == "midi":
        info = convert.musicxml_to_midi(Path(a["xml"]), Path(a["out"]))
        return {"files": [a["out"]], **info}
    if stage == "wav":
        info = convert.midi_to_wav(Path(a["midi"]), Path(a["out"]), Path(a["soundfont"]), a["max_seconds"])
        return {"files": [a["out"]], **info}
    if stage == "sheet":
        svgs = convert.musicxml_to_svg(Path(a["xml"]).read_text(encoding="utf-8"))
        files: dict[str, list[str]] = {"svg": [], "pdf": [], "png": []}
        for i, svg in enumerate(svgs, 1):
            path = f"{a['stem']}-page{i}.svg"
            Path(path).write_text(svg, encoding="utf-8")
            files["svg"].append(path)
        if "pdf" in a["formats"]:
            convert.svg_to_pdf(svgs, Path(a["stem"] + ".pdf"))
            files["pdf"].append(a["stem"] + ".pdf")
        if "png" in a["formats"]:
            convert.svg_to_png(svgs[0], Path(a["stem"] + ".png"))
            files["png"].append(a["stem"] + ".png")
        notes = sum(svg.count('class="note"') for svg in svgs)
        return {"files": files, "pages": len(svgs), "notes_drawn": notes}
    raise ValueError(f"unknown stage {stage!r}")


def main() -> int:
    die_with_parent()
    stage, args = sys.argv[1], json.loads(sys.argv[2])
    limit_memory(int(args.get("memory_mb", 3072)))

    try:
        result = run_stage(stage, args)
        code = 0
    except (ConversionError, CadenzaError) as e:
        result, code = {"error": str(e)}, 3
    except (MemoryError, OSError) as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            result, code = {"error": "the server's disk is full"}, 4
        elif isinstance(e, OSError) and e.errno != errno.ENOMEM:  # the limit can also surface as an OS call refused
            result, code = {"error": f"{type(e).__name__}: {e.strerror or str(e)[:300]}"}, 4
        else:
            result, code = {"error": f"the conversion needed more than its {args.get('memory_mb', 3072)} MB memory limit"}, 4
    except RecursionError:
        result, code = {"error": "the score is nested too deeply to convert (e.g. tuplets inside tuplets)"}, 4
    except Exception as e:  # a converter's own bug on odd input: report it, never crash the server
        result, code = {"error": f"{type(e).__name__}: {str(e)[:300]}"}, 4
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown of big libraries


if __name__ == "__main__":
    sys.exit(main())
