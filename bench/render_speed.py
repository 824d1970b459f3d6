"""Time of every export for four real scores from music21's corpus (a Bach chorale, a Mozart
string quartet movement, a Schoenberg piano piece, an Irish folk tune), rendered the way
generated pieces are. Two ways side by side: the audio and sheet-music chains in parallel (the
default) and one after the other. Prints a table, then one JSON line.

    python -m bench.render_speed
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from engine.render.pipeline import FORMATS, RenderOptions, render

SCORES = {"chorale": ("bach/bwv66.6", None), "quartet": ("mozart/k80/movement1", None),
          "keyboard": ("schoenberg/opus19/movement2", None), "folk": ("oneills1850/0001-0050.abc", 3)}
STAGES = ("musicxml", "midi", "wav", "pdf")  # svg/pdf/png share one stage


def score_abc(name: str, tmp: Path) -> str:
    from music21 import corpus

    from engine.symbolic.abcformat import interleave, musicxml_to_abc, to_model_text
    from engine.symbolic.postprocess import to_abc

    work, number = SCORES[name]
    if number is None:
        xml = corpus.getWork(work)
    else:
        xml = corpus.parse(work, number=number).write("musicxml", fp=str(tmp / f"{name}.musicxml"))
    return to_abc(to_model_text(interleave(musicxml_to_abc(xml)))).abc


def main() -> None:
    rows, result = [], {"bench": "render_speed", "device": "cpu"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in SCORES:
            abc = score_abc(name, tmp)
            for mode, parallel in (("parallel", True), ("sequential", False)):
                t = time.perf_counter()
                r = render(abc, tmp / f"{name}-{mode}", FORMATS, name, options=RenderOptions(parallel=parallel))
                total = time.perf_counter() - t
                stage = {f: r.status[f].seconds for f in STAGES}
                rows.append((name, mode, stage, total, sorted(r.failed)))
                result[f"{name}_{mode}_total_s"] = round(total, 3)
                if mode == "parallel":
                    result |= {f"{name}_{f}_s": round(v, 3) for f, v in stage.items()}
    print(f"{'score':9s} {'mode':10s} " + " ".join(f"{f:>9s}" for f in STAGES) + f" {'all':>8s}  failed")
    for name, mode, stage, total, failed in rows:
        print(f"{name:9s} {mode:10s} " + " ".join(f"{stage[f]:9.2f}" for f in STAGES) + f" {total:8.2f}  {failed or ''}")
    print("(seconds; pdf = the sheet-music stage: SVG pages, PDF and PNG)")
    result["chorale_all_formats_s"] = result["chorale_parallel_total_s"]
    result["parallel_speedup_chorale"] = round(result["chorale_sequential_total_s"] / result["chorale_parallel_total_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
