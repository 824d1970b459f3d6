"""Every GPU check in one call (issue 36): what a session lent a GPU for 15 minutes runs first.

Steps, each a child process with its own time bound (a step that fails or runs out is reported and
the suite goes on):
  1. gpu_tests      the tests marked `gpu` (fast path against NotaGen's algorithm, batches, CUDA
                    graphs, bf16, a model split between the GPU and the CPU, MusicGen in fp16)
  2. notagen_speed  NotaGen-X size in bf16 over 1024 patches, batch 1 and 64, against the memory
                    floor; NotaGen's own algorithm over 128 patches (compared per patch, said so)
  3. placement      a model split across devices (two GPUs when present, else GPU + CPU) writing
                    what the whole model writes, and copies serving requests at once
  4. musicgen_speed musicgen-small's shapes with random weights in fp16, 30 s of audio: plain
                    transformers `generate` against Cadenza's path (real-time factor, codes agree)
  5. studio_load    16 users composing at once on the studio (the bundled model), batched and serial

Writes bench/results/<date>-<gpu>.json and .md (a table) and prints one JSON line. Targets on the
GPU (issue 36): NotaGen-X bf16 batch 1 <= 3.5 ms per patch and <= 2.0x its floor, >= 20x the
reference, peak <= 2 GB; batch 64 throughput >= 30x batch 1; MusicGen RTF <= 0.15 and >= 4x plain.

    python -m bench.gpu_suite                # on a GPU: under 8 minutes on one H100/H200-class GPU
    python -m bench.gpu_suite --dry-run      # every step at tiny sizes on the CPU (plumbing, < 3 minutes)
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# name -> (arguments on a GPU, arguments in a dry run, time bound in seconds on a GPU)
STEPS = {
    "gpu_tests": (["-m", "pytest", "-q", "-m", "gpu", "tests"], ["-m", "pytest", "-q", "-m", "gpu", "tests"], 150),
    "notagen_speed": (["-m", "bench.notagen_speed", "--size", "notagen-x", "--patches", "1024", "--dtype", "bf16",
                       "--batch", "64", "--reference-patches", "128", "--device", "cuda"],
                      ["-m", "bench.notagen_speed", "--size", "tiny", "--patches", "16", "--batch", "2",
                       "--reference-patches", "4", "--device", "cpu"], 150),
    "placement": (["-m", "bench.placement", "--size", "notagen-small", "--patches", "96"],
                  ["-m", "bench.placement", "--size", "tiny", "--patches", "8", "--requests", "2"], 60),
    "musicgen_speed": (["-m", "bench.musicgen_speed", "--seconds", "30", "--device", "cuda"],
                       ["-m", "bench.musicgen_speed", "--tiny", "--seconds", "0.5", "--device", "cpu"], 90),
    "studio_load": (["-m", "bench.studio_load", "--users", "16", "--arrivals", "together", "--patches", "96"],
                    ["-m", "bench.studio_load", "--users", "2", "--arrivals", "together", "--patches", "8", "--tiny"],
                    60),
}
DRY_BOUND_S = 120  # each step of a dry run


def last_json(text: str) -> dict | None:
    """The last line of a bench's output that is one JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def run_step(name: str, args: list[str], bound_s: float) -> dict:
    t0 = time.monotonic()
    try:
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=bound_s)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-2000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-2000:]
        return {"step": name, "ok": False, "seconds": round(time.monotonic() - t0, 1),
                "error": f"ran past its bound of {bound_s:.0f} s", "tail": str(tail)}
    out = {"step": name, "ok": done.returncode == 0, "seconds": round(time.monotonic() - t0, 1),
           "exit": done.returncode}
    if name == "gpu_tests":
        m = re.search(r"(\d+) passed", done.stdout)
        out |= {"passed": int(m.group(1)) if m else 0,
                "skipped": int(s.group(1)) if (s := re.search(r"(\d+) skipped", done.stdout)) else 0,
                "failed": int(f.group(1)) if (f := re.search(r"(\d+) failed", done.stdout)) else 0}
        out["ok"] = done.returncode in (0, 5) and out["failed"] == 0  # 5: every test deselected
    else:
        out["result"] = last_json(done.stdout)
        out["ok"] = out["ok"] and out["result"] is not None
    if not out["ok"]:
        out["tail"] = (done.stdout[-1500:] + "\n" + done.stderr[-1500:]).strip()
    return out


def targets(steps: dict) -> dict:
    """Issue 36's GPU targets against what was measured (None where a step gave no figure)."""
    ns = (steps.get("notagen_speed") or {}).get("result") or {}
    mg = (steps.get("musicgen_speed") or {}).get("result") or {}
    check = lambda ok, *keys: bool(ok) if all(k in ns for k in keys) else None  # noqa: E731
    return {
        "notagen_x_ms_per_patch_le_3.5": check(ns.get("fast_ms_per_patch", 1e9) <= 3.5, "fast_ms_per_patch"),
        "notagen_x_x_floor_le_2.0": check(ns.get("fast_x_floor", 1e9) <= 2.0, "fast_x_floor"),
        "notagen_x_speedup_ge_20": check(ns.get("speedup_fast_over_reference", 0) >= 20, "speedup_fast_over_reference"),
        "notagen_x_peak_le_2GB": check(ns.get("fast_peak_bytes", 1e18) <= 2e9, "fast_peak_bytes"),
        "batch64_throughput_ge_30x": check(ns.get("batch_throughput_ratio", 0) >= 30, "batch_throughput_ratio"),
        "musicgen_target_met": mg.get("target_met"),
    }


def markdown(summary: dict) -> str:
    rows = ["| step | ok | seconds | figures |", "|---|---|---|---|"]
    for name, s in summary["steps"].items():
        r = s.get("result") or {}
        if name == "gpu_tests":
            figs = f"{s.get('passed', 0)} passed, {s.get('skipped', 0)} skipped, {s.get('failed', 0)} failed"
        elif name == "notagen_speed" and r:
            figs = (f"{r.get('fast_ms_per_patch', 0):.2f} ms/patch, {r.get('fast_x_floor', 0):.2f}x floor, "
                    f"{r.get('speedup_fast_over_reference', 0):.1f}x reference ({r.get('reference_patches')} patches), "
                    f"batch {r.get('batch')}: {r.get('batch_throughput_ratio', 0):.1f}x, "
                    f"peak {r.get('fast_peak_bytes', 0) / 2**20:.0f} MiB")
        elif name == "musicgen_speed" and r:
            best = r.get("runs", {}).get(r.get("best"), {})
            figs = f"best {r.get('best')}: RTF {best.get('rtf', 0):.3f}, {r.get('speedup', 0):.2f}x plain, codes agree {r.get('codes_agree')}"
        elif name == "placement" and r:
            nota = r.get("notagen", {})
            figs = (f"split {'+'.join(nota.get('split', {}).get('devices', []))}: same text as one device "
                    f"{nota.get('split', {}).get('same_as_single')}; {len(nota.get('replicate', {}).get('copies', []))} "
                    f"copies at once: {nota.get('replicate', {}).get('speedup', 0):.2f}x one in turn")
        elif name == "studio_load" and r:
            last = lambda rows: rows[-1] if rows else {}  # noqa: E731
            b, sr = last(r.get("batched", [])), last(r.get("serial", []))
            figs = (f"{b.get('users')} users: batched p95 {b.get('p95_s')} s against serial {sr.get('p95_s')} s, "
                    f"{b.get('failed')} failed, {b.get('leaks')} leaks")
        else:
            figs = (s.get("error") or s.get("tail") or "")[:160].replace("\n", " ")
        rows.append(f"| {name} | {'yes' if s['ok'] else 'NO'} | {s['seconds']} | {figs} |")
    lines = [f"# GPU suite, {summary['date']}, {summary['device']}" + (" (dry run: tiny sizes on the CPU)" if summary["dry_run"] else ""),
             "", *rows, "", "Targets: " + ", ".join(f"{k}: {v}" for k, v in summary["targets"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU (plumbing)")
    ap.add_argument("--steps", default=",".join(STEPS), help="steps to run, comma-separated")
    ap.add_argument("--out", default=None,
                    help="folder for the .json and .md results (default bench/results; a dry run: outputs/gpu_suite)")
    a = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not a.dry_run:
        raise SystemExit("no CUDA GPU here: run on a GPU machine, or --dry-run for the plumbing on the CPU")
    device = "cpu (dry run)" if a.dry_run else torch.cuda.get_device_name(0)
    chosen = [s.strip() for s in a.steps.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        raise SystemExit(f"unknown step(s) {', '.join(unknown)}: expected some of {', '.join(STEPS)}")
    steps = {}
    for name in chosen:
        on_gpu, dry, bound = STEPS[name]
        steps[name] = run_step(name, dry if a.dry_run else on_gpu, DRY_BOUND_S if a.dry_run else bound)
        print(f"{name}: {'ok' if steps[name]['ok'] else 'FAILED'} in {steps[name]['seconds']} s", flush=True)
    date = datetime.date.today().isoformat()
    summary = {"bench": "gpu_suite", "date": date, "device": device, "dry_run": a.dry_run, "steps": steps,
               "targets": targets(steps) if not a.dry_run else {}, "ok": all(s["ok"] for s in steps.values())}
    out = Path(a.out or (ROOT / "outputs" / "gpu_suite" if a.dry_run else RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{date}-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{stem}.md").write_text(markdown(summary))
    print(markdown(summary))
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"} |
                     {"steps": {k: {"ok": v["ok"], "seconds": v["seconds"]} for k, v in steps.items()},
                      "written": str(out / f"{stem}.json")}))
    return summary


if __name__ == "__main__":
    main()
