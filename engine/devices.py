"""What this machine has to run models on: every visible GPU and the CPU, with their memory.
One inventory for the doctor, the studio's System page and the placement planner, read when asked
(free memory changes as models load), never at import."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import SettingsError

GIB = 2**30
HOST_UNKNOWN = 8 * GIB  # what the planner assumes of a host whose memory cannot be read (no /proc)


@dataclass(frozen=True)
class Device:
    name: str  # "cuda:0" or "cpu", as torch names it
    label: str  # what it is, in words: "NVIDIA H100 80GB HBM3", "CPU, 16 threads"
    free: int | None  # bytes free now (None: unknown)
    total: int | None  # bytes in all (None: unknown)

    def row(self) -> dict:
        """For a report (the System page, its HTTP answer): sizes in GiB, two decimals."""
        gib = lambda b: "" if b is None else round(b / GIB, 2)  # noqa: E731
        return {"device": self.name, "name": self.label, "free_gib": gib(self.free), "total_gib": gib(self.total)}

    def line(self) -> str:
        if self.free is None or self.total is None:
            return f"{self.name} {self.label}: memory unknown"
        return f"{self.name} {self.label}: {self.free / GIB:.1f} GiB free of {self.total / GIB:.1f} GiB"


def gpu_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES decides)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu(index: int) -> Device:
    if not 0 <= index < gpu_count():
        raise SettingsError(f"cuda:{index} asked for, but this machine has {gpu_count()} visible GPU(s)")
    free, total = torch.cuda.mem_get_info(index)
    return Device(f"cuda:{index}", torch.cuda.get_device_name(index), free, total)


def host() -> Device:
    """The CPU and the machine's memory (MemAvailable: what can be had without swapping)."""
    label = f"CPU, {torch.get_num_threads()} threads"
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
        return Device("cpu", label, kib("MemAvailable"), kib("MemTotal"))
    except (OSError, KeyError, ValueError):
        return Device("cpu", label, None, None)


def inventory() -> list[Device]:
    """Every visible GPU, then the CPU."""
    return [gpu(i) for i in range(gpu_count())] + [host()]


def free_bytes(name: str) -> int:
    """What a device has free now: a GPU's free memory, the host's available memory (assumed
    HOST_UNKNOWN where it cannot be read)."""
    if name.startswith("cuda"):
        return gpu(int(name.split(":")[1]) if ":" in name else 0).free
    free = host().free
    return HOST_UNKNOWN if free is None else free
