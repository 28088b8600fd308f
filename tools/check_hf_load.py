#!/usr/bin/env python3
"""Checks that a kdengine checkpoint loads in Hugging Face transformers.

    python tools/check_hf_load.py CHECKPOINT_DIR [--expected FILE]

Loads CHECKPOINT_DIR with GPT2LMHeadModel.from_pretrained and fails when any key is missing,
unexpected or mismatched. With --expected (a safetensors file holding "tokens" [B, T], token ids
stored as F32, and "logits" [B, T, V], kdengine's output for them) it also runs the model in float64
and compares the logits: relative error ||hf - kd|| / ||hf|| must be below 1e-5.

The test Checkpoint.WritesACheckpointForTheHFLoadCheck (tests/test_checkpoint.cpp) writes such a
pair into the build directory: <build>/hf_check/ckpt and <build>/hf_check/expected.safetensors.
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import sys

import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a directory with config.json and model.safetensors")
    parser.add_argument("--expected", help="safetensors file with kdengine's tokens and logits")
    args = parser.parse_args()

    model, info = GPT2LMHeadModel.from_pretrained(
        args.checkpoint, output_loading_info=True, attn_implementation="eager")
    ok = True
    for kind, keys in info.items():
        keys = list(keys)
        print(f"{kind}: {keys if keys else 'none'}")
        ok = ok and not keys
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    print(f"lm_head tied to wte: {tied}")
    ok = ok and tied

    if args.expected:
        expected = load_file(args.expected)
        tokens = expected["tokens"].long()
        kd_logits = expected["logits"].double()
        with torch.no_grad():
            hf_logits = model.double().eval()(tokens).logits
        err = ((hf_logits - kd_logits).norm() / hf_logits.norm()).item()
        print(f"logits {tuple(hf_logits.shape)}: relative error {err:.3g}")
        ok = ok and err < 1e-5

    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
