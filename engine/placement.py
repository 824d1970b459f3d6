"""Where a model lives on the machine's devices: a plan, made before any weight is loaded.

Plans:
- single: the whole model on one device.
- split: the layers across several devices, in contiguous stages. For NotaGen the patch
  embedding, the first patch-level layers and the whole character-level decoder share the first
  stage (the character decoder runs 16 times per patch: it must not hop); the other patch-level
  layers follow in stages balanced by weight bytes plus KV-cache bytes. For MusicGen,
  accelerate's `infer_auto_device_map` with decoder blocks kept whole.
- replicate: a full copy per device; requests go to the least-loaded copy.
- auto: replicate on every device the model fits on with headroom for the batch and context;
  split when it fits on none; the CPU only as a last resort, with a warning.

Sizes come from accelerate (`compute_module_sizes`), on models built on the meta device, so
planning NotaGen-X or musicgen-large costs no memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from engine.devices import free_bytes, gpu_count
from engine.errors import CheckpointError, SettingsError
from engine.symbolic.checkpoint import read_config
from engine.symbolic.model import NotaGenModel

PLACEMENTS = ("auto", "single", "split", "replicate")
HEADROOM = 0.10  # of each device's budget kept free for activations, sampling and fragmentation


class PlacementError(SettingsError):
    """No plan can hold the model on the devices given."""


@dataclass
class Unit:
    """A part of a model that moves as a whole, in running order."""
    name: str
    weight: int  # bytes
    cache: int = 0  # KV-cache bytes for the planned batch and context
    pinned: bool = False  # must sit in the first stage

    @property
    def bytes(self) -> int:
        return self.weight + self.cache


@dataclass
class Stage:
    device: str
    units: list[str]
    weight_bytes: int
    cache_bytes: int

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.cache_bytes


@dataclass
class Plan:
    kind: str  # single | split | replicate
    stages: list[Stage]  # split: in running order; replicate: one full copy per device
    reason: str
    warnings: list[str] = field(default_factory=list)
    dtype: torch.dtype = torch.float32  # what the weights are loaded as (set by plan_for)

    @property
    def devices(self) -> list[str]:
        return [s.device for s in self.stages]

    def check_devices(self) -> "Plan":
        """Every device the plan names exists here (a plan for simulated GPUs stops before loading)."""
        for stage in self.stages:
            pick_device(stage.device)
        return self

    def to_dict(self) -> dict:
        return {"kind": self.kind, "reason": self.reason, "warnings": self.warnings, "dtype": _dtype_name(self.dtype),
                "stages": [{**asdict(s), "units": _ranges(s.units)} for s in self.stages]}

    def describe(self) -> str:
        lines = [f"placement: {self.kind} ({self.reason}), {_dtype_name(self.dtype)}"]
        for s in self.stages:
            lines.append(f"  {s.device:8s} weights {s.weight_bytes / 2**30:7.2f} GiB  cache {s.cache_bytes / 2**30:6.2f} GiB"
                         f"  {', '.join(_ranges(s.units))}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


    def summary(self) -> str:
        """The plan in words for the System page (describe() lists the modules, for the logs)."""
        gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
        dtype = _dtype_name(self.dtype)
        if self.kind == "split":
            where = ", ".join(f"{s.device} {gib(s.bytes)}" for s in self.stages)
            text = f"split over {len(self.stages)} devices in running order ({where}), {dtype}"
        elif self.kind == "replicate":
            text = (f"a whole copy on each of {', '.join(self.devices)} ({gib(self.stages[0].bytes)} each), {dtype}"
                    if self.stages else f"no copies, {dtype}")
        else:
            s = self.stages[0] if self.stages else None
            text = (f"on {s.device}: {gib(s.weight_bytes)} of weights and {gib(s.cache_bytes)} of cache, {dtype}"
                    if s else dtype)
        return "; ".join([text] + self.warnings)


def _ranges(units: list[str]) -> list[str]:
    """'...h.0', '...h.1', '...h.2' -> '...h.0-2' (plans of 20 layers stay readable)."""
    out: list[str] = []
    for name in units:
        head, _, tail = name.rpartition(".")
        if out and tail.isdigit():
            prev = out[-1]
            p_head, _, p_tail = prev.rpartition(".")
            lo, _, hi = p_tail.partition("-")
            if p_head == head and (hi or lo).isdigit() and int(hi or lo) + 1 == int(tail):
                out[-1] = f"{head}.{lo}-{tail}"
                continue
        out.append(name)
    return out


# --- devices, dtypes and options -----------------------------------------------------------------------
@dataclass
class PlacementOptions:
    """Where a model goes: GPUs ("0,1,2"; default every visible one, or the CPU), the plan
    (auto | single | split | replicate), budgets ("0=20GiB,1=20GiB"), and the batch the KV cache
    is sized for."""
    devices: str | None = None
    placement: str = "auto"
    max_memory: str | None = None
    batch: int = 1


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """None or 'auto': the first CUDA GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CheckpointError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} asked for, but this machine has no CUDA GPU (use 'cpu')")
    if dev.type == "cuda" and dev.index is not None and dev.index >= gpu_count():
        raise CheckpointError(f"device {device!r} asked for, but this machine has {gpu_count()} "
                              "visible GPU(s) (CUDA_VISIBLE_DEVICES decides which)")
    return dev


def default_dtype(device: str | torch.device, half: torch.dtype = torch.bfloat16) -> torch.dtype:
    """Half precision on a GPU (bf16 as NotaGen runs; MusicGen's weights are fp16), fp32 on the
    CPU (where half-precision matmuls are slow)."""
    return half if torch.device(device).type == "cuda" else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --- configuration -------------------------------------------------------------------------------------
def parse_devices(text: str | None) -> list[str] | None:
    """'0,1,2' or 'cuda:0,cpu' -> ['cuda:0', 'cuda:1', 'cuda:2']; empty: None (every visible GPU)."""
    if not text or not str(text).strip():
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part.isdigit():
            part = f"cuda:{part}"
        if part != "cpu" and not (part.startswith("cuda:") and part[5:].isdigit()):
            raise SettingsError(f"unknown device {part!r}: expected GPU numbers like 0,1,2 or cuda:N or cpu")
        if part in out:
            raise SettingsError(f"device {part} is named twice")
        out.append(part)
    return out


def parse_max_memory(text: str | None) -> dict[str, int]:
    """'0=20GiB,1=20GiB,cpu=64GiB' -> {'cuda:0': bytes, 'cuda:1': bytes, 'cpu': bytes}."""
    from accelerate.utils import convert_file_size_to_int

    if not text or not str(text).strip():
        return {}
    out = {}
    for part in str(text).split(","):
        dev, sep, size = part.partition("=")
        if not sep:
            raise SettingsError(f"max memory {part!r}: expected DEVICE=SIZE, e.g. 0=20GiB")
        (dev,) = parse_devices(dev.strip())
        try:
            out[dev] = int(convert_file_size_to_int(size.strip()))
        except (ValueError, TypeError) as e:
            raise SettingsError(f"max memory {part!r}: {size.strip()!r} is not a size like 20GiB or 500MB") from e
        if out[dev] <= 0:
            raise SettingsError(f"max memory for {dev} must be more than zero")
    return out


def budgets(devices: list[str] | None = None, max_memory: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes each chosen device may hold: --max-memory where given, else what it has free now
    (CUDA_VISIBLE_DEVICES decides which GPUs exist). No GPU: the CPU."""
    max_memory = max_memory or {}
    if devices is None:
        devices = [f"cuda:{i}" for i in range(gpu_count())] or ["cpu"]
    return {dev: max_memory[dev] if dev in max_memory else free_bytes(dev) for dev in devices}


# --- NotaGen -------------------------------------------------------------------------------------------
def notagen_units(model, batch: int = 1, context: int | None = None, dtype: torch.dtype | None = None) -> list[Unit]:
    """NotaGen's parts in running order with their weight and KV-cache bytes. The first units
    (patch embedding, positions, the whole character-level decoder) are pinned to stage one."""
    from accelerate.utils import compute_module_sizes

    cfg = model.config
    dtype = dtype or next(model.parameters()).dtype
    sizes = compute_module_sizes(model, dtype=dtype)
    item = torch.tensor([], dtype=dtype).element_size()
    context = context or cfg.patch_length
    per_layer_cache = 2 * batch * context * cfg.hidden_size * item  # keys and values
    char_cache = 2 * batch * (cfg.patch_size + 1) * cfg.hidden_size * item * cfg.char_num_layers
    pld = "patch_level_decoder"
    units = [Unit(f"{pld}.patch_embedding", sizes[f"{pld}.patch_embedding"], pinned=True),
             Unit(f"{pld}.base.wte", sizes[f"{pld}.base.wte"], pinned=True),
             Unit(f"{pld}.base.wpe", sizes[f"{pld}.base.wpe"], pinned=True),
             Unit("char_level_decoder", sizes["char_level_decoder"], char_cache, pinned=True)]
    units += [Unit(f"{pld}.base.h.{i}", sizes[f"{pld}.base.h.{i}"], per_layer_cache)
              for i in range(cfg.patch_num_layers)]
    units.append(Unit(f"{pld}.base.ln_f", sizes[f"{pld}.base.ln_f"]))
    return units


def plan_units(units: list[Unit], budget: dict[str, int], placement: str = "auto",
               headroom: float = HEADROOM) -> Plan:
    """A plan for a model given as units, on devices with these budgets (in the order given: the
    first stage goes on the first device)."""
    if placement not in PLACEMENTS:
        raise SettingsError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if not budget:
        raise SettingsError("no devices to place the model on")
    usable = {d: int(b * (1 - headroom)) for d, b in budget.items()}
    total = sum(u.bytes for u in units)
    gpus = [d for d in usable if d != "cpu"] or list(usable)
    fits = [d for d in gpus if total <= usable[d]]
    need = f"{total / 2**30:.2f} GiB with its cache"

    if placement == "single":
        dev = gpus[0]
        if total > usable[dev]:
            raise PlacementError(f"the model needs {need}; {dev} has {usable[dev] / 2**30:.2f} GiB usable: "
                                 "use --placement split or auto")
        return Plan("single", [_stage(dev, units)], f"asked for; needs {need}")
    if placement == "replicate":
        short = [d for d in gpus if d not in fits]
        if short:
            raise PlacementError(f"the model needs {need}, more than {', '.join(short)} can hold: "
                                 "replicate needs a full copy on every device")
        return Plan("replicate", [_stage(d, units) for d in gpus], f"asked for; a copy of {need} on each")
    if placement == "auto" and fits:
        left_out = [d for d in gpus if d not in fits]
        why = f"fits on {', '.join(fits)} ({need})" + (f"; {', '.join(left_out)} too small" if left_out else "")
        if len(fits) == 1:
            return Plan("single", [_stage(fits[0], units)], why)
        return Plan("replicate", [_stage(d, units) for d in fits], why)
    plan = _split(units, gpus, usable, fewest=placement == "auto")
    if plan is not None:
        plan.reason = (f"asked for; {need}" if placement == "split"
                       else f"needs {need}, more than any one device holds")
        return plan
    if "cpu" in usable and "cpu" not in gpus:
        plan = _split(units, gpus + ["cpu"], usable, fewest=True)
        if plan is not None:
            plan.reason = f"needs {need}, more than the GPUs hold together"
            plan.warnings.append("part of the model runs on the CPU (offloaded): expect it to be much slower")
            return plan
    room = sum(usable[d] for d in usable)
    raise PlacementError(f"the model needs {need}; the devices given hold {room / 2**30:.2f} GiB usable "
                         f"together ({', '.join(usable)}): add devices, raise --max-memory, or lower the batch/context")


def _stage(device: str, units: list[Unit]) -> Stage:
    return Stage(device, [u.name for u in units], sum(u.weight for u in units), sum(u.cache for u in units))


def _split(units: list[Unit], devices: list[str], usable: dict[str, int], fewest: bool) -> Plan | None:
    """Balanced contiguous stages on every device given, or (fewest) on the fewest devices, in
    order, whose stages all fit (every boundary costs a hop per step). None when none fit."""
    for k in (range(1, len(devices) + 1) if fewest else [len(devices)]):
        stages = _balanced(units, devices[:k], usable)
        if stages is not None:
            return Plan("split" if k > 1 else "single", stages, "")
    return None


def _balanced(units: list[Unit], devices: list[str], usable: dict[str, int]) -> list[Stage] | None:
    """Contiguous stages with bytes in proportion to each device's budget: boundary i falls where
    the running total comes nearest to its target; the pinned units open the first stage and every
    stage gets at least one unit. None when a stage does not fit its device."""
    from itertools import accumulate

    n, k = len(units), len(devices)
    if k > n:
        return None
    cum = list(accumulate(u.bytes for u in units))
    total, share = cum[-1], sum(usable[d] for d in devices)
    first = max(1, sum(1 for u in units if u.pinned))  # the first stage ends after unit index `first` at the earliest
    cuts: list[int] = []
    for i in range(k - 1):
        target = total * sum(usable[d] for d in devices[: i + 1]) / share
        lo = first if not cuts else cuts[-1] + 1
        hi = n - (k - 1 - i)  # leave a unit for each stage after this one
        if lo > hi:
            return None
        cuts.append(min(range(lo, hi + 1), key=lambda p: abs(cum[p - 1] - target)))
    bounds = [0, *cuts, n]
    stages = [_stage(d, units[a:b]) for d, a, b in zip(devices, bounds, bounds[1:])]
    if any(s.bytes > usable[s.device] for s in stages):
        return None
    return stages


def place_notagen(model, plan: Plan):
    """Moves a NotaGen model's parts to their stages' devices (a single or split plan; for
    replicate, place a copy per stage). The model then runs as before: the patch-level decoder
    hands its hidden state across each stage boundary and back to the first stage."""
    if plan.kind == "replicate":
        raise SettingsError("a replicate plan places one full copy per device: place a copy for each stage")
    for stage in plan.stages:
        for name in stage.units:
            model.get_submodule(name).to(stage.device)
    model.patch_level_decoder.base.split = plan.kind == "split"
    return model


def plan_notagen(model, budget: dict[str, int], placement: str = "auto", batch: int = 1,
                 context: int | None = None, dtype: torch.dtype | None = None) -> Plan:
    return plan_units(notagen_units(model, batch, context, dtype), budget, placement)


# --- MusicGen ------------------------------------------------------------------------------------------
def plan_musicgen(model, budget: dict[str, int], placement: str = "auto", batch: int = 1,
                  frames: int = 1500, dtype: torch.dtype | None = None) -> Plan:
    """MusicGen through accelerate: whole-model sizes for single/replicate; for split,
    `infer_auto_device_map` with decoder layers kept whole, the KV cache for `batch` (x2 for
    guidance) and `frames` counted into each device's budget."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    dtype = dtype or next(model.parameters()).dtype
    sizes = compute_module_sizes(model, dtype=dtype)
    dec = model.config.decoder
    item = torch.tensor([], dtype=dtype).element_size()
    cache = 2 * (2 * batch) * frames * dec.hidden_size * item * dec.num_hidden_layers
    whole = [Unit("(whole model)", sizes[""], cache)]
    if placement != "split":
        try:
            return plan_units(whole, budget, placement)
        except PlacementError:
            if placement != "auto":
                raise
    usable = {d: int(b * (1 - HEADROOM)) for d, b in budget.items()}
    per_layer = cache // max(1, dec.num_hidden_layers)
    # accelerate counts weights only: leave room on each device for the layers' caches it may get
    room = {_accelerate_key(d): max(0, b - per_layer * dec.num_hidden_layers // max(1, len(usable)))
            for d, b in usable.items()}
    device_map = infer_auto_device_map(model, max_memory=room, no_split_module_classes=model._no_split_modules,
                                       dtype=dtype)
    if any(v == "disk" for v in device_map.values()):
        raise PlacementError(f"musicgen needs {(sizes[''] + cache) / 2**30:.2f} GiB with its cache; the devices "
                             f"given cannot hold it: add devices or raise --max-memory")
    by_device: dict[str, list[str]] = {}
    for name, dev in device_map.items():
        by_device.setdefault(_device_name(dev), []).append(name)
    stages = []
    for dev, names in by_device.items():
        weight = sum(sizes[n] for n in names)
        layers = sum(1 for n in names if ".layers." in n) or (dec.num_hidden_layers if names == [""] else 0)
        stages.append(Stage(dev, names, weight, per_layer * layers))
    warnings = ["part of the model runs on the CPU (offloaded): expect it to be much slower"] \
        if "cpu" in by_device and any(d != "cpu" for d in budget) else []
    return Plan("split" if len(stages) > 1 else "single", stages,
                "asked for" if placement == "split" else "too big for one device", warnings)


def _accelerate_key(device: str):
    return int(device.split(":")[1]) if device.startswith("cuda:") else device


def _device_name(dev) -> str:
    return f"cuda:{dev}" if isinstance(dev, int) else str(dev)


# --- one entry point ---------------------------------------------------------------------------------
def plan_for(source, options: PlacementOptions | None = None, musicgen: bool = False, local_only: bool = False) -> Plan:
    """The plan for a model on this machine (or on the devices and budgets the options name), made
    on the meta device from the checkpoint's config before any weight is loaded, with the dtype it
    is loaded as (fp32 on the CPU; bf16 for NotaGen and fp16 for MusicGen on GPUs). --max-memory
    can simulate GPUs (the doctor shows such plans); loaders call plan.check_devices(). source: a NotaGen
    checkpoint or folder, or (musicgen) a MusicGen folder or hub id. The loaders, the CLI and the
    System page all read this plan."""
    o = options or PlacementOptions()
    budget = budgets(parse_devices(o.devices), parse_max_memory(o.max_memory))
    on_gpu = any(d != "cpu" for d in budget)
    dtype = (torch.float16 if musicgen else torch.bfloat16) if on_gpu else torch.float32
    meta = _meta_musicgen(source, dtype, local_only) if musicgen else _meta_notagen(source, dtype)
    plan = (plan_musicgen if musicgen else plan_notagen)(meta, budget, o.placement, batch=o.batch)
    plan.dtype = dtype
    return plan


def _meta_notagen(path, dtype: torch.dtype):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return NotaGenModel(read_config(path)).to(dtype)


def _meta_musicgen(spec: str, dtype: torch.dtype, local_only: bool):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    config = AutoConfig.from_pretrained(str(spec), local_files_only=local_only)  # OSError: not here (the caller says so)
    cls = MusicgenMelodyForConditionalGeneration if config.model_type == "musicgen_melody" else MusicgenForConditionalGeneration
    with init_empty_weights():
        return cls(config).to(dtype)
