"""N simulated users on one studio (localhost, gradio_client, a tiny random-weight model), each
composing a short piece and downloading its files, for N = 1, 4, 16. Reports completed and failed
requests, p50/p95 latency (submit -> files downloaded) and queue wait (submit -> first streamed
update), and checks that no user's history shows another's piece. Two server settings run side
by side: one request composed at a time (concurrency 1) and two at a time (concurrency 2).
Last line: one JSON object. Target: N = 16 with zero failures and no cross-session leak.

    python -m bench.studio_load [--users 1,4,16] [--patches 32]
"""
from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, concurrency: int):
    from engine.symbolic.checkpoint import save_model
    from engine.symbolic.config import NotaGenConfig
    from engine.symbolic.model import NotaGenModel
    from engine.symbolic.prompts import Prompt, PromptTable
    from webui.app import start
    from webui.config import StudioConfig
    from webui.studio import Studio

    model = NotaGenModel(NotaGenConfig(patch_length=64, patch_num_layers=2, char_num_layers=1, hidden_size=128))
    folder = save_model(model.init_weights(std=0.2, seed=1).eval(), tmp / "tiny",
                        prompts=PromptTable([Prompt("Baroque", "Bach, Johann Sebastian", "Choral")]))
    config = StudioConfig(port=free_port(), outputs=str(tmp / f"outputs-c{concurrency}"), model=str(folder),
                          concurrency=concurrency, queue_size=64)
    studio = Studio(config)
    studio.model(None).get()
    demo, _, url = start(config, studio, quiet=True)
    return demo, url


def user(url: str, n: int, patches: int, tmp: Path, out: dict) -> None:
    from gradio_client import Client

    key = f"bench-user-{n:04d}-" + "k" * 12
    rec = {"ok": False}
    t0 = time.monotonic()
    try:
        c = Client(url, verbose=False, download_files=str(tmp / f"dl-{n}"))
        job = c.submit(key, "", "Baroque", "Bach, Johann Sebastian", "Choral", n, 1.2, 9, 0.9, patches, 1,
                       api_name="/compose")
        first = None
        while not job.done():  # bounded by the request's own max_patches and the server's limits
            if first is None and any(o and o[0] and o[0].get("status") == "writing" for o in job.outputs()):
                first = time.monotonic() - t0
            time.sleep(0.02)
        info, files = job.result(timeout=600)
        latency = time.monotonic() - t0
        mine = info["pieces"][0]["id"]
        history = [p["id"] for p in c.predict(key, api_name="/history")["pieces"]]
        rec = {"ok": bool(files) and all(Path(f).stat().st_size > 0 for f in files), "latency": latency,
               "queue_wait": first if first is not None else latency, "leak": history != [mine]}
    except Exception as e:  # noqa: BLE001 - a failed request is what we count
        rec = {"ok": False, "error": str(e)[:200]}
    out[n] = rec


def run(url: str, users: int, patches: int, tmp: Path, base: int) -> dict:
    out: dict[int, dict] = {}
    threads = [threading.Thread(target=user, args=(url, base + i, patches, tmp, out)) for i in range(users)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    wall = time.monotonic() - t0
    ok = [r for r in out.values() if r.get("ok")]
    lat = sorted(r["latency"] for r in ok)
    waits = sorted(r["queue_wait"] for r in ok)
    pct = lambda xs, q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None  # noqa: E731
    return {"users": users, "completed": len(ok), "failed": users - len(ok),
            "leaks": sum(1 for r in ok if r["leak"]), "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95),
            "queue_wait_p50_s": pct(waits, 0.5), "queue_wait_p95_s": pct(waits, 0.95), "wall_s": round(wall, 2),
            "errors": sorted({r["error"] for r in out.values() if "error" in r})[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="1,4,16")
    ap.add_argument("--patches", type=int, default=32, help="patches per piece")
    args = ap.parse_args()
    counts = [int(x) for x in args.users.split(",")]
    result = {"bench": "studio_load", "patches": args.patches}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for conc in (1, 2):
            demo, url = start(tmp, conc)
            try:
                rows = [run(url, n, args.patches, tmp, base=1000 * conc + 100 * i) for i, n in enumerate(counts)]
            finally:
                demo.close()
            for r in rows:
                print(f"concurrency {conc}  users {r['users']:3d}: completed {r['completed']}, failed {r['failed']}, "
                      f"leaks {r['leaks']}, latency p50 {r['p50_s']}s p95 {r['p95_s']}s, queue wait p50 "
                      f"{r['queue_wait_p50_s']}s p95 {r['queue_wait_p95_s']}s, wall {r['wall_s']}s")
            result[f"concurrency_{conc}"] = rows
    top = [r for k in ("concurrency_1", "concurrency_2") for r in result[k] if r["users"] == max(counts)]
    result["target_met"] = all(r["failed"] == 0 and r["leaks"] == 0 for r in top)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
