"""Probe for issue 20: the character step over a static cache, eager against torch.compile
(inductor), NotaGen-small size, random weights. Not a benchmark yet (bench.notagen_speed is);
kept so the next step starts from the measured prototype.

    PYTHONPATH=. .venv/bin/python tools/compile_probe.py bf16 1 freeze
"""
import torch, time, sys

from engine.symbolic.config import PRESETS
from engine.symbolic.model import NotaGenModel
torch.set_num_threads(2)
dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
rows = int(sys.argv[2])
import torch._inductor.config as ic
ic.freezing = len(sys.argv) > 3 and sys.argv[3] == "freeze"
m = NotaGenModel(PRESETS["notagen-small"]).init_weights(seed=0).to(dtype=dt).eval()
char = m.char_level_decoder
P = 17
st = char.base.transformer
caches = st.new_caches(rows, P, "cpu", dt)
for c in caches: c.ensure(P)
def step(x, t):
    pos = t.expand(rows)
    mask = (torch.arange(P) <= t)[None, None, None, :]
    h = st.step(x, caches, pos, P, mask)
    return char.base.lm_head(h).float().softmax(-1)
x = torch.randn(rows, 768, dtype=dt)
with torch.inference_mode():
    def bench(fn, label):
        for i in range(3): fn(x, torch.tensor([i]))
        t0 = time.perf_counter(); n = 0
        for rep in range(20):
            for i in range(16):
                fn(x, torch.tensor([i])); n += 1
        print(label, f"{(time.perf_counter()-t0)/n*1000:.3f} ms/step")
    def eager_int(x, t):
        ti = int(t)
        return char.step(x, caches, ti).float().softmax(-1)
    bench(eager_int, "eager int-pos")
    m.prepare_for_generation()
    bench(eager_int, "eager packed")
    for mm in m.modules():
        if hasattr(mm, "packed"): mm.packed = None
        if hasattr(mm, "packed_head"): mm.packed_head = None
    bench(step, "eager static")
    t0 = time.perf_counter()
    c = torch.compile(step, fullgraph=True, dynamic=False)
    c(x, torch.tensor([0]))
    print("compile s", time.perf_counter() - t0)
    bench(c, "compiled static")
