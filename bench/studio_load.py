"""Many composers on one studio (localhost, gradio_client): N simulated users each compose a piece
of at most --patches patches with the bundled model (--tiny: a tiny random model, plumbing only)
and download its files, arriving together or staggered (Poisson arrivals, mean gap 0.5 s), for
N = 1, 4, 16, 32. Two servers side by side in one run: `serial` (a batch of one row: one piece
at a time, as before continuous batching) and `batched` (engine.symbolic.scheduler, every user's
piece in one running batch of --max-batch rows). Reports completed, failed, clear refusals,
p50/p95 latency (submit -> files downloaded), queue wait (submit -> first streamed patch),
patches/s overall, and leaks (a history showing another user's piece). Last line: one JSON
object with keys `serial` and `batched`, each a list of rows.
Targets (2-core CPU): 16 users arriving together: batched p95 <= 0.4x serial p95, throughput
>= 2.5x serial; 0 failures and 0 leaks everywhere.

    python -m bench.studio_load [--users 1,4,16,32] [--patches 96] [--max-batch 32] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, name: str, max_batch: int, tiny: bool):
    from webui.app import start
    from engine.settings import ServerSettings
    from engine.service.studio import Studio

    model = str(tiny_model(tmp)) if tiny else None
    config = ServerSettings(port=free_port(), outputs=str(tmp / f"outputs-{name}"), model=model, queue_size=64,
                          max_batch=max_batch, max_wait_s=600)
    studio = Studio(config)
    studio.model(None).get()
    demo, _, url = start(config, studio, quiet=True)
    return demo, studio, url


def tiny_model(tmp: Path) -> Path:
    from engine.symbolic.checkpoint import save_model
    from engine.symbolic.config import NotaGenConfig
    from engine.symbolic.model import NotaGenModel
    from engine.symbolic.prompts import Prompt, PromptTable

    model = NotaGenModel(NotaGenConfig(patch_length=64, patch_num_layers=2, char_num_layers=1, hidden_size=128))
    return save_model(model.init_weights(std=0.2, seed=1).eval(), tmp / "tiny",
                      prompts=PromptTable([Prompt("Baroque", "Bach, Johann Sebastian", "Choral")]))


PROMPT = ("Baroque", "Bach, Johann Sebastian", "Choral")


def user(url: str, n: int, patches: int, tmp: Path, delay: float, out: dict) -> None:
    from gradio_client import Client

    time.sleep(delay)  # its arrival
    key = f"bench-user-{n:05d}-" + "k" * 12
    rec = {"ok": False}
    t0 = time.monotonic()
    try:
        c = Client(url, verbose=False, download_files=str(tmp / f"dl-{n}"))
        job = c.submit(key, "", *PROMPT, n, 1.2, 9, 0.9, patches, 1, api_name="/compose")
        first = None
        while not job.done():  # bounded by the request's own max_patches and the server's limits
            if first is None and any(o and o[0] and o[0].get("status") == "writing" for o in job.outputs()):
                first = time.monotonic() - t0
            time.sleep(0.05)
        info, files = job.result(timeout=1800)
        latency = time.monotonic() - t0
        mine = info["pieces"][0]["id"]
        history = [p["id"] for p in c.predict(key, api_name="/history")["pieces"]]
        rec = {"ok": bool(files) and all(Path(f).stat().st_size > 0 for f in files), "latency": latency,
               "queue_wait": first if first is not None else latency, "leak": history != [mine]}
    except Exception as e:  # noqa: BLE001 - a failed request is what we count
        rec = {"ok": False, "error": str(e)[:200], "refused": "busy" in str(e) or "queue is full" in str(e)}
    out[n] = rec


def arrivals(users: int, how: str, rng: random.Random) -> list[float]:
    if how == "together":
        return [0.0] * users
    t, out = 0.0, []
    for _ in range(users):
        out.append(t)
        t += rng.expovariate(1 / MEAN_GAP_S)
    return out


MEAN_GAP_S = 0.5


def run(url: str, studio, users: int, how: str, patches: int, tmp: Path, base: int) -> dict:
    out: dict[int, dict] = {}
    delays = arrivals(users, how, random.Random(base))
    threads = [threading.Thread(target=user, args=(url, base + i, patches, tmp, delays[i], out)) for i in range(users)]
    before = written(studio)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    wall = time.monotonic() - t0
    ok = [r for r in out.values() if r.get("ok")]
    lat = sorted(r["latency"] for r in ok)
    waits = sorted(r["queue_wait"] for r in ok)
    pct = lambda xs, q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None  # noqa: E731
    return {"users": users, "arrival": how, "completed": len(ok), "failed": users - len(ok),
            "refused": sum(1 for r in out.values() if r.get("refused")),
            "leaks": sum(1 for r in ok if r["leak"]), "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95),
            "queue_wait_p50_s": pct(waits, 0.5), "queue_wait_p95_s": pct(waits, 0.95), "wall_s": round(wall, 2),
            "throughput_patches_per_s": round((written(studio) - before) / wall, 2),
            "errors": sorted({r["error"] for r in out.values() if "error" in r})[:3]}


def written(studio) -> int:
    """Patches written so far by this server's pieces (their manifests)."""
    total = 0
    for m in Path(studio.store.root).glob("*/*/*.manifest.json"):
        total += json.loads(m.read_text())["generation"]["patches"]
    return total


SAMPLING_PIECES = 8  # written together, then each alone


def sampling_match(tiny_folder: Path | None, pieces: int, patches: int) -> dict:
    """Under sampling, how often a piece written in the batch equals the piece written alone
    (same seed; fp32 on this CPU): batched rows round differently, and a sample drawn near a
    threshold may then differ."""
    from engine import api
    from engine.symbolic.scheduler import Scheduler

    lm = api.load(str(tiny_folder) if tiny_folder else None)
    request = lambda i: api.ComposeRequest(*PROMPT, seed=500 + i, max_patches=patches)  # noqa: E731
    # every piece in the batch at once: a piece holds a row per candidate of its search
    scheduler = Scheduler(lm.model, max_batch=pieces * request(0).search, max_wait_s=600)
    try:
        streams = [api.compose_stream(lm, request(i), scheduler=scheduler) for i in range(pieces)]
        # start every request before reading any, so that they share the batch
        firsts = [next(s) for s in streams]
        batched = [[ev for ev in [f, *s] if isinstance(ev, api.Composition)][0].piece.text
                   for f, s in zip(firsts, streams)]
    finally:
        scheduler.close()
    alone = [api.compose(lm, request(i))[0].piece.text for i in range(pieces)]
    same = sum(a == b for a, b in zip(batched, alone))
    return {"pieces": pieces, "same_text": same, "same_pct": round(100 * same / pieces, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="1,4,16,32")
    ap.add_argument("--arrivals", default="together,poisson")
    ap.add_argument("--patches", type=int, default=96, help="patches per piece at most")
    ap.add_argument("--max-batch", type=int, default=32, help="rows of the batched server (the studio's default)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (plumbing) instead of the bundled one")
    args = ap.parse_args()
    counts = [int(x) for x in args.users.split(",")]
    result = {"bench": "studio_load", "patches": args.patches, "model": "tiny" if args.tiny else "bundled",
              "max_batch": args.max_batch}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, rows_ in (("serial", 1), ("batched", args.max_batch)):
            demo, studio, url = start(tmp, name, rows_, args.tiny)
            rows = []
            try:
                for i, n in enumerate(counts):
                    for j, how in enumerate(args.arrivals.split(",")):
                        # the same seeds (user numbers) on both servers: the same pieces, so the
                        # same work (a seed whose bars are written again many times costs more)
                        r = run(url, studio, n, how, args.patches, tmp, base=1000 * i + 100 * j)
                        rows.append(r)
                        print(f"{name:8s} users {n:3d} {how:9s}: completed {r['completed']}, failed {r['failed']} "
                              f"(refused {r['refused']}), leaks {r['leaks']}, latency p50 {r['p50_s']}s p95 "
                              f"{r['p95_s']}s, queue wait p95 {r['queue_wait_p95_s']}s, "
                              f"{r['throughput_patches_per_s']} patches/s, wall {r['wall_s']}s", flush=True)
            finally:
                demo.close()
            result[name] = rows
    result["sampling_match"] = sampling_match(tiny_model(Path(tempfile.mkdtemp())) if args.tiny else None,
                                              SAMPLING_PIECES, args.patches)
    print(f"sampling: {result['sampling_match']['same_text']} of {result['sampling_match']['pieces']} pieces written "
          "in the batch equal the piece written alone", flush=True)
    at16 = {k: next((r for r in result[k] if r["users"] == 16 and r["arrival"] == "together"), None)
            for k in ("serial", "batched")}
    if all(at16.values()) and at16["serial"]["p95_s"] and at16["serial"]["throughput_patches_per_s"]:
        result["p95_ratio_16"] = round(at16["batched"]["p95_s"] / at16["serial"]["p95_s"], 3)
        result["throughput_ratio_16"] = round(at16["batched"]["throughput_patches_per_s"]
                                              / at16["serial"]["throughput_patches_per_s"], 2)
    result["no_failures_no_leaks"] = all(r["failed"] == 0 and r["leaks"] == 0 for k in ("serial", "batched")
                                         for r in result[k])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
