#!/usr/bin/env python3
"""Generates kdengine's reference fixtures with PyTorch and Hugging Face transformers.

The C++ tests read only the files written here; they never need torch. Run it again only when a
fixture's definition changes, and commit the results:

    python tools/make_reference.py [--out tests/fixtures]

It writes:
  gpt2_tiny/                       a tiny random GPT2LMHeadModel, saved with save_pretrained
  gpt2_tiny_expected.safetensors   logits, gradients and the parameter change of two AdamW steps
  gpt2_tiny_expected.json          the batch, the scalars and the hyperparameters
  kd_loss_expected.safetensors     KD-loss inputs and the gradient of every case
  kd_loss_expected.json            the scalars of every case
  dtypes.safetensors               F16 and BF16 tensors next to their exact F32 values

Every reference value is computed in float64 from the fp32 inputs that the tests read.
"""

import argparse
import copy
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

SEED = 1234

# The tiny model: a vocabulary that is not a power of two, head size 12.
VOCAB, BLOCK, N_EMBD, N_LAYER, N_HEAD = 317, 32, 48, 2, 4
B, T = 2, 32
MASKED = [(0, 3), (0, 17), (1, 0), (1, 22), (1, 31)]  # (b, t) whose target is -1
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
STEPS = 2

# The KD-loss fixture: N rows of V logits; the teacher has VT >= V columns, read on its first V.
KD_N, KD_V, KD_VT = 24, 101, 104
KD_MASKED_ROWS = [2, 7, 13, 20]
KD_CE_WEIGHT, KD_KD_WEIGHT, KD_BETA = 0.5, 0.8, 0.5
KD_TEMPERATURES = [0.5, 1.0, 2.0, 4.0]
KD_DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]


def write_json(path, obj):
    """One top-level member per line (lists stay on one line), with a list of objects one per line."""
    def value(v):
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return "[\n  " + ",\n  ".join(json.dumps(x) for x in v) + "\n ]"
        return json.dumps(v)
    lines = [f" {json.dumps(k)}: {value(v)}" for k, v in obj.items()]
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def kd_name(hf_name):
    """kdengine's parameter name: HF's without the "transformer." prefix."""
    return hf_name.removeprefix("transformer.")


def tiny_model():
    torch.manual_seed(SEED)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=BLOCK,
        n_ctx=BLOCK,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="eager")
    # Larger-than-default random values everywhere (LayerNorm and biases included), so that a
    # mistake in any parameter's use shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0.0, 0.15)
            else:
                p.normal_(0.0, 0.05)
    return model.eval()


def make_gpt2(out):
    model = tiny_model()
    model.save_pretrained(os.path.join(out, "gpt2_tiny"))

    gen = torch.Generator().manual_seed(SEED + 1)
    seq = torch.randint(0, VOCAB, (B, T + 1), generator=gen)
    tokens, targets = seq[:, :T].clone(), seq[:, 1:].clone()
    for b, t in MASKED:
        targets[b, t] = -1

    ref = copy.deepcopy(model).double()
    params = dict(ref.named_parameters())  # the tied LM head appears once, as wte
    groups = [
        {"params": [p for p in params.values() if p.dim() == 2], "weight_decay": ADAMW["weight_decay"]},
        {"params": [p for p in params.values() if p.dim() != 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])

    tensors, steps, max_norm = {}, [], None
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        logits = ref(tokens).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
        loss.backward()
        if step == 1:
            tensors["step1.logits"] = logits.detach().float()
            for name, p in params.items():
                tensors["step1.grad." + kd_name(name)] = p.grad.float()
            # Clip at half the first norm, so that clipping is active.
            norm = torch.sqrt(sum((p.grad**2).sum() for p in params.values())).item()
            max_norm = float(torch.tensor(0.5 * norm, dtype=torch.float32))
        pre_clip = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm).item()
        assert pre_clip > max_norm, "clipping must be active in every step"
        before = {name: p.detach().clone() for name, p in params.items()}
        opt.step()
        # The step itself, exact in float64: fp32 parameters could not resolve it finely.
        for name, p in params.items():
            tensors[f"step{step}.delta.{kd_name(name)}"] = (p.detach() - before[name]).float()
        steps.append({"loss": loss.item(), "pre_clip_norm": pre_clip})

    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out, "gpt2_tiny_expected.safetensors"), metadata={"format": "pt"})
    meta = {
        "description": "One batch through the tiny GPT-2: mean cross-entropy over the targets "
        "that are not -1, its gradients, then clip_grad_norm_(max_norm) and torch.optim.AdamW "
        "(2-D weights decay, biases and LayerNorm do not), twice on the same batch. stepN.delta.* "
        "is the parameter change of step N. Computed in float64 from the fp32 checkpoint "
        "gpt2_tiny/.",
        "B": B,
        "T": T,
        "tokens": tokens.reshape(-1).tolist(),
        "targets": targets.reshape(-1).tolist(),
        "max_norm": max_norm,
        "lr": ADAMW["lr"],
        "beta1": ADAMW["betas"][0],
        "beta2": ADAMW["betas"][1],
        "eps": ADAMW["eps"],
        "weight_decay": ADAMW["weight_decay"],
        "steps": steps,
    }
    write_json(os.path.join(out, "gpt2_tiny_expected.json"), meta)


def kl_rows(log_a, log_b):
    """KL(a || b) of every row, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def make_kd(out):
    gen = torch.Generator().manual_seed(SEED + 2)
    student = (2.0 * torch.randn(KD_N, KD_V, generator=gen)).float()
    teacher = (2.0 * torch.randn(KD_N, KD_VT, generator=gen)).float()
    teacher[:, KD_V:] += 5.0  # padding columns: large, and never read
    targets = torch.randint(0, KD_V, (KD_N,), generator=gen)
    targets[KD_MASKED_ROWS] = -1
    mask = targets >= 0
    rows = int(mask.sum())

    tensors = {"student": student, "teacher": teacher}
    cases = []
    for div in KD_DIVERGENCES:
        for temp in KD_TEMPERATURES:
            for t2 in (True, False):
                s = student.double().requires_grad_()
                t = teacher[:, :KD_V].double()
                log_q = F.log_softmax(s / temp, dim=-1)
                log_p = F.log_softmax(t / temp, dim=-1)
                fkl = F.kl_div(log_q, log_p.exp(), reduction="none").sum(-1)  # KL(p || q)
                if div == "forward_kl":
                    d = fkl
                elif div == "reverse_kl":
                    d = F.kl_div(log_p, log_q.exp(), reduction="none").sum(-1)  # KL(q || p)
                else:
                    log_m = torch.logsumexp(
                        torch.stack([log_p + math.log(KD_BETA), log_q + math.log(1 - KD_BETA)]), 0)
                    jsd = KD_BETA * kl_rows(log_p, log_m) + (1 - KD_BETA) * kl_rows(log_q, log_m)
                    d = jsd / (KD_BETA * (1 - KD_BETA))  # kdengine's normalisation
                ce = F.cross_entropy(s, targets, ignore_index=-1, reduction="none")
                scale = temp * temp if t2 else 1.0
                per_row = KD_CE_WEIGHT * ce + KD_KD_WEIGHT * scale * d
                loss = per_row[mask].sum() / rows
                loss.backward()
                name = f"{div}.T{temp:g}.{'t2' if t2 else 'not2'}"
                tensors["dlogits." + name] = s.grad.float()
                cases.append({
                    "name": name,
                    "divergence": div,
                    "temperature": temp,
                    "t2_scaling": t2,
                    "loss": loss.item(),
                    "sum_loss": per_row[mask].sum().item(),
                    "sum_ce": ce[mask].sum().item(),
                    "sum_kd": d[mask].sum().item(),
                    "sum_kl": fkl[mask].sum().item(),
                    "sum_teacher_entropy": -(log_p.exp() * log_p).sum(-1)[mask].sum().item(),
                    "sum_student_entropy": -(log_q.exp() * log_q).sum(-1)[mask].sum().item(),
                })

    save_file(tensors, os.path.join(out, "kd_loss_expected.safetensors"), metadata={"format": "pt"})
    meta = {
        "description": "kd_loss reference: p_T = softmax(teacher[:, :V] / T), q_T = softmax("
        "student / T); loss = sum over rows with target >= 0 of ce_weight * CE(student, target) + "
        "kd_weight * s(T) * D(p_T, q_T), divided by the number of such rows; s(T) = T^2 with "
        "t2_scaling, else 1. dlogits is d loss / d student (0 on masked rows). Sums are over the "
        "unmasked rows, unnormalised.",
        "divergences": {
            "forward_kl": "KL(p || q) = sum p (log p - log q)",
            "reverse_kl": "KL(q || p) = sum q (log q - log p)",
            "jsd": "m = beta p + (1 - beta) q; D = (beta KL(p || m) + (1 - beta) KL(q || m)) / "
            "(beta (1 - beta)), which tends to KL(p || q) as beta -> 0 and KL(q || p) as beta -> 1",
        },
        "N": KD_N,
        "V": KD_V,
        "Vt": KD_VT,
        "targets": targets.tolist(),
        "ce_weight": KD_CE_WEIGHT,
        "kd_weight": KD_KD_WEIGHT,
        "beta": KD_BETA,
        "cases": cases,
    }
    write_json(os.path.join(out, "kd_loss_expected.json"), meta)


def make_dtypes(out):
    """F16 and BF16 values (normal, subnormal, zero, infinite, NaN) next to their fp32 values."""
    gen = torch.Generator().manual_seed(SEED + 3)
    special = torch.tensor([0.0, -0.0, 1.0, -2.0, 0.5, 65504.0, -65504.0, 6.103515625e-05,
                            5.960464477539063e-08, -5.960464477539063e-08, 3.0e-06,
                            float("inf"), float("-inf"), float("nan")])
    scales = torch.pow(10.0, torch.linspace(-7.0, 4.0, 242))
    values = torch.cat([special, scales * torch.randn(242, generator=gen)])
    tensors = {}
    for name, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        low = values.to(dtype).reshape(16, 16)
        tensors[name] = low
        tensors[name + "_as_f32"] = low.float()
    save_file(tensors, os.path.join(out, "dtypes.safetensors"), metadata={"format": "pt"})


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    make_gpt2(args.out)
    make_kd(args.out)
    make_dtypes(args.out)


if __name__ == "__main__":
    main()
