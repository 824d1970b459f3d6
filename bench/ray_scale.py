"""The studio with its model in-process, and on Ray Serve with 1 and 2 replicas, in one run:
N simulated users (gradio_client, arriving together) each compose a piece of at most --patches
patches with the bundled model (--tiny: a tiny random model, plumbing only) and download it.
Reports per server: completed, failed, p50/p95 latency, patches/s, and the Ray overhead
(in-process throughput over 1 replica's, minus one; target <= 10%). On a machine with N GPUs,
--replica-gpus 1 --replicas-max N compares N replicas with 1. Last line: one JSON object.

    python -m bench.ray_scale [--users 16] [--patches 64] [--max-batch 16] [--tiny] [--max-minutes 20]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.studio_load import free_port, run, tiny_model


def serve(tmp: Path, name: str, model: str | None, max_batch: int, replicas: int = 0, gpus: float = 0.0,
          replicas_max: int = 0):
    """A studio page; replicas=0: the model in-process, else that many Ray Serve replicas sharing
    this machine's CPUs (replicas_max: autoscaled from `replicas` up to it, each of one CPU)."""
    from engine.service.studio import Studio
    from engine.settings import ServerSettings
    from webui.app import start

    cpus = max(1.0, (os.cpu_count() or 1) / max(1, replicas_max or replicas))
    config = ServerSettings(port=free_port(), outputs=str(tmp / f"outputs-{name}"), model=model, queue_size=64,
                            max_batch=max_batch, max_wait_s=600, ray="local" if replicas else "",
                            replicas=max(1, replicas), replica_cpus=cpus, replica_gpus=gpus,
                            replicas_max=replicas_max)
    studio = Studio(config)  # on this thread: a local Ray lives as long as the thread that started it
    studio.model(None).get(600)
    demo, _, url = start(config, studio, quiet=True)
    return demo, studio, url


class Replicas:
    """The running replicas of the studio's model, sampled every second while the load runs."""

    def __init__(self, studio):
        import threading

        self.slot, self.t0, self.seen = studio.model(None), time.monotonic(), []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(1.0):  # bounded by stop()
            states = self.slot.replicas()
            running = sum(int(part.split()[0]) for part in states.split(", ") if part.endswith("running"))
            rows = sorted((r["rows_in_use"] for r in self.slot.batches()), reverse=True)  # each replica's busy rows
            self.seen.append((round(time.monotonic() - self.t0, 1), running, rows))

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        peak = max((n for _, n, _ in self.seen), default=0)
        first = next((t for t, n, _ in self.seen if n > 1), None)
        return {"replicas_peak": peak, "second_replica_after_s": first,
                "replicas_over_time": self.seen[:: max(1, len(self.seen) // 20)]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--replicas-max", type=int, default=2)
    ap.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (the studio default is auto)")
    ap.add_argument("--autoscale", action="store_true",
                    help="also a server autoscaled from 1 replica to --replicas-max under the same load")
    ap.add_argument("--only-autoscale", action="store_true", help="the autoscaled server alone")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model: plumbing only")
    ap.add_argument("--max-minutes", type=float, default=20.0, help="no new server starts after this long")
    a = ap.parse_args(argv)
    deadline = time.monotonic() + 60 * a.max_minutes
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = str(tiny_model(tmp)) if a.tiny else None
        servers = [("in_process", 0, 0)] + [(f"ray_{n}_replicas", n, 0) for n in range(1, a.replicas_max + 1)]
        auto = [(f"ray_autoscaled_1_to_{a.replicas_max}", 1, a.replicas_max)]
        for name, replicas, most in auto if a.only_autoscale else servers + (auto if a.autoscale else []):
            if time.monotonic() > deadline:
                rows[name] = {"skipped": "--max-minutes reached"}
                continue
            demo, studio, url = serve(tmp, name, model, a.max_batch, replicas, a.replica_gpus, most)
            watch = Replicas(studio) if most else None
            try:
                rows[name] = run(url, studio, a.users, "together", a.patches, tmp, base=1000 * (replicas + 1) + most)
                if watch is not None:
                    rows[name] |= watch.stop()
            finally:
                demo.close()
                if studio.cluster is not None:  # not studio.shutdown(): it closes the render pipeline for good
                    studio.cluster.close()
            print(name, json.dumps(rows[name]), flush=True)
    base, one = rows.get("in_process", {}), rows.get("ray_1_replicas", {})
    overhead = (round(base["throughput_patches_per_s"] / one["throughput_patches_per_s"] - 1, 3)
                if base.get("throughput_patches_per_s") and one.get("throughput_patches_per_s") else None)
    result = {"users": a.users, "patches": a.patches, "max_batch": a.max_batch, "model": "tiny" if a.tiny else "bundled",
              "cpus": os.cpu_count(), "servers": rows, "ray_overhead": overhead}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
