"""In-process A/B of three bit-exact per-step trims (clipping's skipped no-op, acting without the
log-probability, CPU replay writes through NumPy views): blocks of train steps alternate between
the code as it is and the old behaviours patched back in; median of paired block ratios.

    python benchmarks/step_trims_ab.py HIDDEN THREADS BLOCKS STEPS    # e.g. 64 1 12 300
"""
import math
import statistics
import sys
import tempfile
import time

import torch
from common import REPO_ROOT
import dynsac.sac.agent as agent_mod
from dynsac.sac.networks import GaussianPolicy
from dynsac.config import load_config
from dynsac.training import SACTrainer
h, threads, blocks, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
new_clip = agent_mod.clipped_grad_norm
def old_clip(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    if len(grads) == 1: total = torch.linalg.vector_norm(grads[0])
    else: total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    finite = math.isfinite(total.item())
    if finite and max_norm is not None:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return total, finite, False
new_act = GaussianPolicy.sample_action
d=tempfile.mkdtemp()
cfg=load_config(str(REPO_ROOT / "configs/pendulum.yaml"),[f"training.hidden_sizes=[{h},{h}]","training.eval_interval=0","training.checkpoint_interval=0",f"logging.dir={d}/r","logging.progress=off","training.learning_starts=300",f"training.torch_threads={threads}"])
tr=SACTrainer(cfg)
buf=tr.buffer
def mode(old):
    agent_mod.clipped_grad_norm = old_clip if old else new_clip
    GaussianPolicy.sample_action = (lambda self, obs, ctx=None: self.sample(obs, ctx)[0]) if old else new_act
    if old: buf._host_views = lambda: None
    else: buf.__dict__.pop("_host_views", None)
for _ in range(800): tr.train_step()
ratios=[]
for b in range(blocks):
    t={}
    for old in ((False, True) if b % 2 == 0 else (True, False)):
        mode(old); s=time.perf_counter()
        for _ in range(steps): tr.train_step()
        t[old]=time.perf_counter()-s
    ratios.append(t[True]/t[False])
print(f"[{h}] threads {threads}: old/new time per step, median of {blocks} paired blocks: {statistics.median(ratios):.3f} "
      f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f}); new {t[False]/steps*1e3:.3f} ms/step")
