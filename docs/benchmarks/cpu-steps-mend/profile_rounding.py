"""Torch-profiler table of 20 iterations (16-35) of the rounding stage of ``benchmarks.vs_brecq``,
ours, ``compile`` mode, fp32, 2 threads. Run from the repository root:

    python docs/benchmarks/cpu-steps-mend/profile_rounding.py
"""
import os
import sys

import torch

sys.path.insert(0, os.getcwd())
import mgrq.recon.trainer as trainer  # noqa: E402
from benchmarks.vs_brecq import Clock, OurSide  # noqa: E402
from mgrq import zoo  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
ours = OurSide(zoo.create_model("tiny_vit"), torch.randn(256, 1, 32, 32), 40)
prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
count = [0]
orig = trainer.UnitTrainer.update


def update(tr, total):
    orig(tr, total)
    count[0] += 1
    if count[0] == 15:
        prof.start()
    if count[0] == 35:
        prof.stop()


trainer.UnitTrainer.update = update
ours.run("rounding", "compile", "highest", Clock("wall"))
trainer.UnitTrainer.update = orig
avg = prof.key_averages()
print(avg.table(sort_by="self_cpu_time_total", row_limit=25))
mm = sum(e.self_cpu_time_total for e in avg if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 20 / 1e3
graphs = sum(e.self_cpu_time_total for e in avg if e.key.startswith("## Call CompiledFxGraph")) / 20 / 1e3
total = sum(e.self_cpu_time_total for e in avg) / 20 / 1e3
print(f"per iteration: {total:.1f} ms in all, matrix products {mm:.1f} ms, inductor's compiled graphs (self) {graphs:.1f} ms")
