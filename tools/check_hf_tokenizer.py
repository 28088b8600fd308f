#!/usr/bin/env python3
"""Check that HF transformers loads a kdengine checkpoint's tokenizer and encodes as kdengine does.

    check_hf_tokenizer.py EXPECTED_IDS.json [--skip-code N] [--save-hf DIR]

EXPECTED_IDS.json (written by tests/test_checkpoint_tokenizer.cpp, ctest hf_tokenizer_checkpoint):
{"checkpoint": DIR, "eot": 50256, "vocab_size": 50257, "cases": [{"text": ..., "ids": [...]}]},
the ids being kdengine's encoding of each text with the tokenizer read back from DIR.

The check: transformers.AutoTokenizer.from_pretrained(DIR) loads, without network access, a GPT-2
tokenizer with the same vocabulary size and end-of-text id, and encodes every text (no special
tokens added) to exactly kdengine's ids. torch is not needed.

With --save-hf DIR, when everything matched: the checkpoint as transformers saves it (config.json,
model.safetensors, and the tokenizer from save_pretrained: HF's tokenizer.json and
tokenizer_config.json), for the C++ test that reads HF's tokenizer.json (ctest
hf_tokenizer_json_read). Exit status: 0 match, 1 mismatch,
2 bad input; with --skip-code N, N when transformers or tokenizers is not installed or the
expected file was not written.
"""

import argparse
import json
import os
import shutil
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("expected")
    ap.add_argument("--skip-code", type=int, default=None)
    ap.add_argument("--save-hf", default=None)
    args = ap.parse_args()
    if args.save_hf:
        shutil.rmtree(args.save_hf, ignore_errors=True)

    def skip(why):
        print(f"SKIP: {why}")
        return args.skip_code if args.skip_code is not None else 1

    try:
        import tokenizers  # noqa: F401  (the fast tokenizer's backend)
        import transformers
    except ImportError as e:
        return skip(f"{e.name} is not installed (tools/setup.sh installs it in .venv)")
    if not os.path.exists(args.expected):
        return skip(f"{args.expected} not written (GPT-2 files or TinyShakespeare missing?)")
    try:
        with open(args.expected, encoding="utf-8") as f:
            exp = json.load(f)
        ckpt, cases = exp["checkpoint"], exp["cases"]
    except (OSError, ValueError, KeyError) as e:
        print(f"{args.expected}: {e}")
        return 2

    os.environ["HF_HUB_OFFLINE"] = "1"
    tok = transformers.AutoTokenizer.from_pretrained(ckpt, local_files_only=True)
    print(f"loaded {type(tok).__name__} from {ckpt} (transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__})")
    bad = 0
    if len(tok) != exp["vocab_size"]:
        print(f"vocabulary size: HF {len(tok)}, kdengine {exp['vocab_size']}")
        bad += 1
    if tok.eos_token_id != exp["eot"]:
        print(f"end-of-text id: HF {tok.eos_token_id}, kdengine {exp['eot']}")
        bad += 1
    tokens = 0
    for i, c in enumerate(cases):
        got = tok.encode(c["text"], add_special_tokens=False)
        tokens += len(got)
        if got != c["ids"]:
            k = next((j for j, (a, b) in enumerate(zip(got, c["ids"])) if a != b),
                     min(len(got), len(c["ids"])))
            print(f"case {i} {c['text'][:60]!r}: first difference at token {k}: "
                  f"HF {got[k:k + 8]}, kdengine {c['ids'][k:k + 8]} "
                  f"(lengths {len(got)} / {len(c['ids'])})")
            bad += 1
    # The ids decode back to each text (every case is valid UTF-8).
    for i, c in enumerate(cases):
        if tok.decode(c["ids"]) != c["text"]:
            print(f"case {i}: HF's decode of kdengine's ids differs from the text")
            bad += 1
    if bad:
        print(f"FAIL: {bad} problem(s)")
        return 1
    print(f"OK: {len(cases)} texts, {tokens} tokens, identical ids")
    if args.save_hf:
        os.makedirs(args.save_hf)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(ckpt, f), args.save_hf)
        tok.save_pretrained(args.save_hf)
        print(f"saved by transformers: {sorted(os.listdir(args.save_hf))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
