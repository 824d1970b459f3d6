"""The GPU suite's dry run (issue 36): every step at tiny sizes on the CPU, so the command a session
lent a GPU runs first cannot rot while no GPU is lent."""
import json
import subprocess
import sys

from conftest import ROOT


def test_the_gpu_suite_runs_every_step_in_a_dry_run_and_writes_its_results(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["ok"] and last["dry_run"], last
    assert set(last["steps"]) == {"gpu_tests", "notagen_speed", "placement", "musicgen_speed", "studio_load"}
    written = json.loads((tmp_path / last["written"].split("/")[-1]).read_text())
    assert written["steps"]["notagen_speed"]["result"]["same_text"] is True  # the fast path wrote the reference's text
    assert written["steps"]["placement"]["result"]["notagen"]["split"]["same_as_single"] is True
    assert written["steps"]["musicgen_speed"]["result"]["codes_agree"] == 1.0
    assert "| notagen_speed | yes |" in next(tmp_path.glob("*.md")).read_text()


def test_the_gpu_suite_refuses_to_run_for_real_without_a_gpu_and_names_unknown_steps():
    import torch

    run = lambda *a: subprocess.run([sys.executable, "-m", "bench.gpu_suite", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    if not torch.cuda.is_available():
        assert "no CUDA GPU here: run on a GPU machine, or --dry-run" in run().stderr
    assert "unknown step(s) nope: expected some of gpu_tests" in run("--dry-run", "--steps", "nope").stderr
