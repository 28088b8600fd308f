#!/usr/bin/env python3
"""kdengine's CPU training step against the same step in PyTorch eager (fp32), side by side.

Both sides build the same models and run the same step on the same shapes, taking turns in one
run so that both see the same machine load:

  models   GPT-2 (learned positions, pre-LayerNorm blocks, causal attention, GELU tanh MLP, final
           LayerNorm, LM head tied to the token embedding), initialised normal(0, 0.02) with the
           residual projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2 n_layer), biases 0.
  step     zero grads; teacher forward under no_grad (frozen, eval); student forward;
           loss = 0.5 CE + 0.5 T^2 KL(p_T || q_T), T = 2, averaged over the tokens (CE only
           without a teacher); backward; global-norm clipping at 1.0; AdamW (lr 1e-4, betas
           0.9/0.95, eps 1e-8, weight decay 0.1 on 2-D weights).
  kdengine bench_cpu_step (bench/bench_cpu_step.cpp), the same step through the engine's ops,
           run as a subprocess for each of its turns (its own warm-up steps are not timed).

Each round times `--steps` PyTorch steps, then one bench_cpu_step run of `--steps` steps. The
report gives each side's tokens/s per round, the medians, and kdengine / PyTorch.

Usage (PyTorch needed; not part of the test suite):
  python3 tools/compare_cpu_torch.py --bench build/bench/bench_cpu_step \\
      --student 2,4,64 --teacher 4,4,128 --vocab 256 --batch 16 --seq 64
  python3 tools/compare_cpu_torch.py --bench build/bench/bench_cpu_step \\
      --student 4,4,256 --teacher 6,8,512 --vocab 50257 --batch 4 --seq 128 --steps 5
  ... --teacher none      the CE-only (teacher pretraining) step

Threads: --threads (default: the cores this process may use) for both sides
(torch.set_num_threads, and bench_cpu_step --threads). OpenMP's wait policy is read when a
program loads; --omp-wait-policy (default passive, what kdengine picks for itself when the
variable is unset) is set for both sides before PyTorch is imported.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time


def dims(text):
    if text == "none":
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected L,H,C or none, got {text!r}")
    layer, head, embd = (int(p) for p in parts)
    if layer < 1 or head < 1 or embd < 1 or embd % head:
        raise argparse.ArgumentTypeError(f"bad dimensions {text!r}")
    return layer, head, embd


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", required=True, help="path to the bench_cpu_step executable")
    p.add_argument("--student", type=dims, default=(2, 4, 64), help="L,H,C (default 2,4,64)")
    p.add_argument("--teacher", type=dims, default=(4, 4, 128),
                   help="L,H,C or none for the CE-only step (default 4,4,128)")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each side's timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: the cores available (default)")
    p.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active", "unset"])
    return p.parse_args()


ARGS = parse_args()
if ARGS.omp_wait_policy != "unset":
    os.environ["OMP_WAIT_POLICY"] = ARGS.omp_wait_policy

import torch  # noqa: E402  (after the OpenMP environment is set)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Block(nn.Module):
    def __init__(self, n_head, n_embd):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, vocab, block):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.h = nn.ModuleList(Block(n_head, n_embd) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        proj_std = 0.02 / math.sqrt(2 * n_layer)
        for name, prm in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight"):
                nn.init.normal_(prm, 0.0, proj_std)
            elif name.endswith(".weight") and prm.dim() == 2:
                nn.init.normal_(prm, 0.0, 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(prm)
            # LayerNorm weights stay 1

    def forward(self, idx):
        pos = torch.arange(idx.shape[1])
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied LM head


class TorchStep:
    def __init__(self, a):
        torch.manual_seed(0)
        self.student = GPT(*a.student, a.vocab, a.seq)
        self.teacher = GPT(*a.teacher, a.vocab, a.seq).eval() if a.teacher else None
        if self.teacher:
            for prm in self.teacher.parameters():
                prm.requires_grad_(False)
        decay = [p for p in self.student.parameters() if p.dim() == 2]
        no_decay = [p for p in self.student.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
        g = torch.Generator().manual_seed(3)
        self.inputs = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        self.targets = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        self.temperature = 2.0

    def run(self):
        self.opt.zero_grad(set_to_none=True)
        V = self.student.wte.weight.shape[0]
        if self.teacher:
            with torch.no_grad():
                t_logits = self.teacher(self.inputs)
        z = self.student(self.inputs).view(-1, V)
        ce = F.cross_entropy(z, self.targets.view(-1))
        if self.teacher:
            T = self.temperature
            lq = F.log_softmax(z / T, dim=-1)
            lp = F.log_softmax(t_logits.view(-1, V) / T, dim=-1)
            kl = F.kl_div(lq, lp, reduction="batchmean", log_target=True)
            loss = 0.5 * ce + 0.5 * T * T * kl
        else:
            loss = ce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        return loss.item()


def time_torch(step, a):
    for _ in range(a.warmup):
        step.run()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step.run()
    return a.batch * a.seq * a.steps / (time.perf_counter() - t0)


def run_engine(a, threads):
    teacher = ",".join(map(str, a.teacher)) if a.teacher else "none"
    cmd = [a.bench, "--student", ",".join(map(str, a.student)), "--teacher", teacher,
           "--vocab", str(a.vocab), "--batch", str(a.batch), "--seq", str(a.seq),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(threads),
           "--benchmark_format=json"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"compare_cpu_torch: {' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    bench = json.loads(res.stdout)["benchmarks"][0]
    return float(bench["tokens_per_s"])


def main():
    a = ARGS
    threads = a.threads if a.threads > 0 else len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    step = TorchStep(a)
    kind = "KD" if a.teacher else "CE-only"
    print(f"{kind} step: student {a.student}, teacher {a.teacher}, V={a.vocab}, B={a.batch}, "
          f"T={a.seq}; {threads} threads; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"torch {torch.__version__}")
    engine, pytorch = [], []
    for r in range(a.rounds):
        pytorch.append(time_torch(step, a))
        engine.append(run_engine(a, threads))
        print(f"round {r + 1}: kdengine {engine[-1]:10.0f} tok/s   pytorch {pytorch[-1]:10.0f} "
              f"tok/s   ratio {engine[-1] / pytorch[-1]:.2f}", flush=True)
    e, p = statistics.median(engine), statistics.median(pytorch)
    print(f"median: kdengine {e:.0f} tok/s, pytorch {p:.0f} tok/s, kdengine/pytorch {e / p:.2f} "
          f"(per-round ratios {min(x / y for x, y in zip(engine, pytorch)):.2f}.."
          f"{max(x / y for x, y in zip(engine, pytorch)):.2f})")


if __name__ == "__main__":
    main()
