#!/usr/bin/env python3
"""The kdengine GPU benchmark's training steps, written in plain PyTorch, timed the same way.

Same models (GPT-2 written by hand below: no transformers needed), same batch shapes and the same
loss as bench/gpu/bench_step.cpp:

  pretrain_124m        GPT-2 124M, plain CE
  kd_124m_from_350m    GPT-2 124M student, GPT-2 350M teacher
  kd_6l384_from_124m   6-layer 384-dim student, GPT-2 124M teacher

KD loss: 0.5 * CE + 0.5 * T^2 * KL(p_T || q_T) with T = 2, summed over the supervised tokens and
divided by their count (the engine's normalisation). Student: fp32 master weights under bf16
autocast, SDPA causal attention, fused AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1 on 2-D
weights), global-norm clipping at 1.0. Teacher: bf16 weights, eval mode, no grad.

Timing: CUDA events around whole optimizer steps (zero_grad, teacher forward, student forward,
loss, backward, clip, AdamW step, and one .item() to read the loss: the engine also syncs once per
step), after warm-up steps; mean over the timed steps. Each case runs in eager mode and with
torch.compile.

Usage:
  python3 tools/compare_torch.py --bench-json step.json       # on the GPU, after
      build/bench/gpu_bench_step --benchmark_out=step.json --benchmark_out_format=json
  python3 tools/compare_torch.py --device cpu --tiny --no-compile   # a quick smoke run
Prints tokens/s per case and mode and, given the bench JSON, kdengine's tokens/s over PyTorch's.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, n_layer, n_head, n_embd, vocab_size=50257, block_size=1024):
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.vocab_size = vocab_size
        self.block_size = block_size

    def params(self):
        C, V, L = self.n_embd, self.vocab_size, self.n_layer
        per_layer = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * 4 * C + 4 * C + 4 * C * C + C
        return V * C + self.block_size * C + L * per_layer + 2 * C


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, proj_std if name.endswith("proj.weight") else 0.02)

    def forward(self, idx):
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # LM head tied to wte


def kd_loss(logits, teacher_logits, targets, ce_weight, kd_weight, temperature):
    """Sum over supervised rows of ce_weight*CE + kd_weight*T^2*KL(p_T||q_T), over their count."""
    V = logits.shape[-1]
    z = logits.float().view(-1, V)
    y = targets.view(-1)
    mask = (y >= 0).float()
    rows = mask.sum().clamp(min=1.0)
    ce = F.cross_entropy(z, y, ignore_index=-1, reduction="sum")
    loss = ce_weight * ce
    if teacher_logits is not None:
        t = teacher_logits[..., :V].float().reshape(-1, V)
        logq = F.log_softmax(z / temperature, dim=-1)
        logp = F.log_softmax(t / temperature, dim=-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        loss = loss + kd_weight * temperature * temperature * (kl * mask).sum()
    return loss / rows


CASES = {
    "pretrain_124m": (Config(12, 12, 768), None),
    "kd_124m_from_350m": (Config(12, 12, 768), Config(24, 16, 1024)),
    "kd_6l384_from_124m": (Config(6, 6, 384), Config(12, 12, 768)),
}
TINY = {
    "pretrain_124m": (Config(2, 2, 128, 301, 64), None),
    "kd_124m_from_350m": (Config(2, 2, 128, 301, 64), Config(2, 4, 256, 320, 64)),
    "kd_6l384_from_124m": (Config(1, 1, 64, 301, 64), Config(2, 2, 128, 301, 64)),
}


def run_case(name, scfg, tcfg, B, T, device, compiled, warmup, steps):
    torch.manual_seed(0)
    student = GPT2(scfg).to(device)
    teacher = None
    if tcfg is not None:
        teacher = GPT2(tcfg).to(device=device, dtype=torch.bfloat16).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    decay = [p for p in student.parameters() if p.dim() == 2]
    no_decay = [p for p in student.parameters() if p.dim() != 2]
    fused = device == "cuda"
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    s_fwd, t_fwd, loss_fn = student, teacher, kd_loss
    if compiled:
        s_fwd = torch.compile(student)
        t_fwd = torch.compile(teacher) if teacher is not None else None
        loss_fn = torch.compile(kd_loss)
    ce_w, kd_w, temp = (0.5, 0.5, 2.0) if teacher is not None else (1.0, 0.0, 1.0)

    g = torch.Generator(device="cpu").manual_seed(3)
    batches = [(torch.randint(0, scfg.vocab_size, (B, T), generator=g).to(device),
                torch.randint(0, scfg.vocab_size, (B, T), generator=g).to(device))
               for _ in range(4)]
    amp_device = "cuda" if device == "cuda" else "cpu"

    def step(i):
        x, y = batches[i % 4]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(amp_device, dtype=torch.bfloat16):
            tlog = None
            if t_fwd is not None:
                with torch.no_grad():
                    tlog = t_fwd(x)
            logits = s_fwd(x)
            loss = loss_fn(logits, tlog, y, ce_w, kd_w, temp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        return loss.item()  # the one sync per step

    for i in range(warmup):
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(steps):
            last = step(i)
        e1.record()
        e1.synchronize()
        sec = e0.elapsed_time(e1) * 1e-3 / steps
    else:
        t0 = time.perf_counter()
        for i in range(steps):
            last = step(i)
        sec = (time.perf_counter() - t0) / steps
    if not math.isfinite(last):
        raise RuntimeError(f"{name}: non-finite loss {last}")
    tokens = B * T
    flops = (6 * scfg.params() + 6 * scfg.n_layer * scfg.n_embd * T) * tokens
    if tcfg is not None:
        flops += (2 * tcfg.params() + 2 * tcfg.n_layer * tcfg.n_embd * T) * tokens
    return {"tokens_per_s": tokens / sec, "step_ms": sec * 1e3, "tflops": flops / sec * 1e-12,
            "loss": last}


def read_bench(path):
    """tokens_per_s of each case in a Google Benchmark JSON written by gpu_bench_step."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data.get("benchmarks", []):
        for case in CASES:
            if "/" + case in b.get("name", "") and "tokens_per_s" in b:
                out[case] = float(b["tokens_per_s"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-json", help="gpu_bench_step's --benchmark_out JSON")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny models and batches (smoke test)")
    ap.add_argument("--no-compile", action="store_true", help="eager mode only")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch; use --device cpu --tiny for a smoke run")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cases = TINY if args.tiny else CASES
    B, T = (2, 64) if args.tiny else (args.batch, args.seq)
    ours = read_bench(args.bench_json) if args.bench_json else {}
    modes = [False] if args.no_compile else [False, True]
    results = []
    print(f"torch {torch.__version__} on {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
          + f", B={B} T={T}, warmup {args.warmup}, {args.steps} timed steps")
    print(f"{'case':<22}{'mode':<10}{'tokens/s':>12}{'step ms':>10}{'TFLOP/s':>10}"
          f"{'kdengine/torch':>16}")
    for name in args.cases.split(","):
        if name not in cases:
            sys.exit(f"unknown case {name}; known: {', '.join(cases)}")
        scfg, tcfg = cases[name]
        for compiled in modes:
            r = run_case(name, scfg, tcfg, B, T, args.device, compiled,
                         args.warmup + (2 if compiled else 0), args.steps)
            mode = "compile" if compiled else "eager"
            ratio = ours[name] / r["tokens_per_s"] if name in ours else float("nan")
            print(f"{name:<22}{mode:<10}{r['tokens_per_s']:>12.0f}{r['step_ms']:>10.2f}"
                  f"{r['tflops']:>10.1f}{ratio:>16.3f}")
            results.append({"case": name, "mode": mode, **r,
                            "kdengine_tokens_per_s": ours.get(name), "ratio": ratio})
            if args.device == "cuda":
                torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
