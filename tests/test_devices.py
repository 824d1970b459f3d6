"""One inventory of what models can run on: the doctor, System and the placement planner read it."""
import pytest
import torch

from engine import placement
from engine.devices import GIB, gpu, gpu_count, host, inventory, free_bytes
from engine.errors import SettingsError


def test_the_inventory_lists_every_visible_gpu_then_the_cpu_with_its_memory():
    found = inventory()
    assert [d.name for d in found] == [f"cuda:{i}" for i in range(torch.cuda.device_count())] + ["cpu"]
    cpu = found[-1]
    meminfo = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo")}
    assert cpu.total == meminfo["MemTotal"] and 0 < cpu.free <= cpu.total
    assert f"{cpu.total / GIB:.1f} GiB" in cpu.line()
    assert cpu.row() == {"device": "cpu", "name": cpu.label, "free_gib": round(cpu.free / GIB, 2),
                         "total_gib": round(cpu.total / GIB, 2)}


def test_a_gpu_that_is_not_there_is_refused_by_name_and_the_planner_budgets_from_the_inventory():
    with pytest.raises(SettingsError, match=f"cuda:{gpu_count() + 3} asked for, but this machine has {gpu_count()}"):
        gpu(gpu_count() + 3)
    assert abs(placement.budgets(["cpu"])["cpu"] - host().free) < 256 * 2**20  # the same reading, moments apart
    assert placement.budgets(["cpu"], {"cpu": 5 * GIB}) == {"cpu": 5 * GIB}  # --max-memory wins
    assert free_bytes("cpu") > 0
    if gpu_count() == 0:
        assert placement.budgets().keys() == {"cpu"}
