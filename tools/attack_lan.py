"""A bounded attack on a studio served on this machine (issue 31): what one person on the LAN could
do to everyone else, tried again against `./run.sh` on 127.0.0.1. Every loop is bounded; it only
ever talks to 127.0.0.1.

    ./run.sh --port 7899 &           # the studio as a user starts it (bundled model)
    .venv/bin/python -m tools.attack_lan --url http://127.0.0.1:7899/ --outputs outputs

Cases (each prints one line; the last line is one JSON object):
  converters  two sessions render two different real scores at once, many times: each must get
              its own bars (the check of the metre runs abctoolkit, whose state is global)
  fair        one session asks for every row (8 variations, long), a second asks for one short
              piece: the second must start at once and end long before the first
  wav         a 1,194-character score of 289 whole notes at quarter = 60 (about 19 minutes):
              the bytes it may put on disk are bounded
  hung        a score whose header alone fills the model's context is continued (the studio in
              process, on the bundled model: Continue is a page-only handler): refused at once
"""
from __future__ import annotations

import argparse
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHORALE = "bach/bwv66.6"
FOLK = ("oneills1850/0001-0050.abc", 3)


def key(name: str) -> str:
    return f"attack-{name}-{secrets.token_hex(8)}"


def real_scores() -> dict[str, str]:
    """Two real scores from music21's corpus as ABC (what a user would paste)."""
    from music21 import corpus

    from engine.symbolic.abcformat import interleave, musicxml_to_abc, to_model_text
    from engine.symbolic.postprocess import to_abc

    chorale = Path(corpus.getWork(CHORALE))
    folk = Path(corpus.parse(FOLK[0], number=FOLK[1]).write("musicxml"))
    return {name: to_abc(to_model_text(interleave(musicxml_to_abc(p)))).abc
            for name, p in (("chorale", chorale), ("folk", folk))}


def case_converters(url: str, rounds: int) -> dict:
    from gradio_client import Client

    scores = real_scores()
    alone = {}
    for name, abc in scores.items():
        result, _ = Client(url, verbose=False).predict(key(name), abc, api_name="/render")
        alone[name] = result["pieces"][0]["alignment"]

    def one(name: str) -> str:
        result, _ = Client(url, verbose=False).predict(key(name), scores[name], api_name="/render")
        return result["pieces"][0]["alignment"]
    names = list(scores) * rounds
    t = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, names))
    wrong = sum(g != alone[n] for n, g in zip(names, got))
    return {"case": "converters", "requests": len(names), "wrong": wrong, "alone": alone,
            "seconds": round(time.monotonic() - t, 1)}


def case_fair(url: str, patches: int) -> dict:
    from gradio_client import Client

    prompt = ("Baroque", "Bach, Johann Sebastian", "Choral")
    hog = Client(url, verbose=False).submit(key("hog"), "", *prompt, 1, 1.2, 9, 0.9, patches, 8, api_name="/compose")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:  # bounded: the hog's first update
        if hog.status().code.name in ("ITERATING", "FINISHED"):
            break
        time.sleep(0.2)
    t1 = time.monotonic()
    small = Client(url, verbose=False).submit(key("small"), "", *prompt, 2, 1.2, 9, 0.9, 48, 1, api_name="/compose")
    first_patch = None
    while time.monotonic() - t1 < 600:  # bounded: the small piece ends or 10 minutes pass
        outs = small.outputs()
        if first_patch is None and any(o[0].get("status") == "writing" for o in outs if o and o[0]):
            first_patch = time.monotonic() - t1
        if small.done():
            break
        time.sleep(0.2)
    small_s = time.monotonic() - t1
    hog_outs = hog.outputs()
    paused = [o[0].get("reason", "") for o in hog_outs if o and o[0] and o[0].get("status") == "waiting"]
    hog_done = hog.done()
    hog.cancel()
    return {"case": "fair", "small_first_patch_s": None if first_patch is None else round(first_patch, 1),
            "small_done_s": round(small_s, 1), "small_ok": small.done() and small.exception() is None,
            "hog_done_first": hog_done, "hog_paused_messages": len(paused),
            "hog_paused_reason": paused[0] if paused else ""}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def case_wav(url: str, outputs: Path) -> dict:
    from gradio_client import Client

    abc = "X:1\nT:Long\nL:1/1\nQ:1/4=60\nM:4/4\nK:C\n" + "|".join(["C"] * 289) + "|]\n"
    before = folder_bytes(outputs)
    t = time.monotonic()
    result, _ = Client(url, verbose=False).predict(key("wav"), abc, api_name="/render")
    piece = result["pieces"][0]
    return {"case": "wav", "chars": len(abc), "seconds": round(time.monotonic() - t, 1),
            "bytes_written": folder_bytes(outputs) - before, "wav": "wav" in piece["files"],
            "wav_error": piece["errors"].get("wav", "")}


def case_hung() -> dict:
    """In process: Continue is page-only. A 500-voice header, as the attack run found."""
    import tempfile

    from engine.requests import ComposeRequest
    from engine.settings import ServerSettings
    from engine.service.studio import Studio

    voices = "".join(f"V:{i} treble\n" for i in range(1, 501))
    abc = "X:1\nL:1/8\nM:4/4\nK:C\n" + voices + "".join(f"[V:{i}]C8|]\n" for i in range(1, 501))
    studio = Studio(ServerSettings(outputs=tempfile.mkdtemp(), min_free_mb=0))
    request = ComposeRequest("Baroque", "Bach, Johann Sebastian", "Choral", seed=1, max_patches=64)
    t = time.monotonic()
    try:
        list(studio.compose(key("hung"), request, continue_abc=abc))
        outcome = "not refused"
    except Exception as e:  # noqa: BLE001 - what the user would be shown
        outcome = str(e)[:200]
    return {"case": "hung", "seconds": round(time.monotonic() - t, 1), "message": outcome}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--outputs", default="outputs", help="the server's outputs folder (bytes written)")
    ap.add_argument("--rounds", type=int, default=6, help="converter requests per score")
    ap.add_argument("--hog-patches", type=int, default=600)
    ap.add_argument("--cases", default="converters,fair,wav,hung")
    a = ap.parse_args()
    if not a.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("this script attacks this machine only: --url http://127.0.0.1:PORT/")
    results = []
    for case in a.cases.split(","):
        if case == "converters":
            results.append(case_converters(a.url, a.rounds))
        elif case == "fair":
            results.append(case_fair(a.url, a.hog_patches))
        elif case == "wav":
            results.append(case_wav(a.url, Path(a.outputs)))
        elif case == "hung":
            results.append(case_hung())
        print(results[-1], flush=True)
    print(json.dumps({r["case"]: r for r in results}))


if __name__ == "__main__":
    main()
