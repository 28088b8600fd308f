#!/usr/bin/env python3
"""Writes the reference fixtures that tests/test_tokenizer.cpp checks the C++ GPT-2 tokenizer
against. The reference is tiktoken (Rust BPE + regex), built here from the same local vocabulary
files (no download) and cross-checked with the HF `tokenizers` byte-level BPE (a separate Rust implementation with its
own regex engine), also built from the local files.

  tests/fixtures/tokenizer_tinyshakespeare.json
      token count, 64-bit FNV-1a of the ids (each as 4 little-endian bytes), the first 500 ids
  tests/fixtures/tokenizer_tricky.json
      [{"text": ..., "ids": [...]}, ...] for hand-picked hard cases

Usage: python tools/make_tokenizer_fixture.py [shared-data-dir]   (default: ../shared/data)
Needs tiktoken and tokenizers; the C++ tests need neither.
"""
import json
import os
import struct
import sys

import tiktoken

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GPT-2's pre-tokenization pattern, as published with the model.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tiktoken(encoder_path):
    with open(encoder_path, encoding="utf-8") as f:
        encoder = json.load(f)
    decoder = {c: b for b, c in byte_to_unicode().items()}
    ranks = {}
    for tok, idx in encoder.items():
        if tok == "<|endoftext|>":
            continue
        ranks[bytes(decoder[c] for c in tok)] = idx
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": encoder["<|endoftext|>"]})


def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for b in b"".join(struct.pack("<i", i) for i in ids):
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


TRICKY = [
    "Hello world",
    "hello  world   with    many spaces",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nline four\n",
    "\n\n\nHello",
    "tabs\tand\t\tmore\ttabs \t mixed",
    "I'm sure you're right, we've said it'll be done, he'd've known, don't, can't, 'tis",
    "UPPER'S CASE'LL NOT MATCH 'S 'T 'RE",
    "''quoted'' ' s 'x '",
    "3.14159 and 1,000,000 and 2024-05-20 and 42nd",
    "Zahlen ¾ ½ Ⅻ ٣٤٥ ১২৩",
    "naïve café résumé Ångström",
    "Combining: e\u0301 a\u0308 n\u0303 (decomposed)",
    "Ελληνικά και русский текст",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "Emoji: 😀👍🏽 👨‍👩‍👧 🇺🇸!!!",
    "<|endoftext|>",
    "before<|endoftext|>after <|endoftext|> spaced",
    "punctuation!!! ??? ... --- ;;; (((x)))",
    "mixed123abc456 x1y2z3",
    "non-breaking\u00a0space and\u2003em space and\u3000ideographic",
    "line\u2028separator and\u0085next line",
    "control \x01\x02 chars \x1c\x1f and del \x7f",
    "url: https://example.com/path?q=1&r=two#frag",
    "code: for (int i = 0; i < n; ++i) { x += y[i]; }",
    "   ",
    "\n",
    " ",
    "a",
    "",
]


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
    encoder_path = os.path.join(data, "gpt2-bpe", "encoder.json")
    merges_path = os.path.join(data, "gpt2-bpe", "vocab.bpe")
    enc = build_tiktoken(encoder_path)

    # A second implementation to confirm the reference itself. No special tokens are registered,
    # so "<|endoftext|>" is ordinary text there too.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    hf = Tokenizer(models.BPE.from_file(encoder_path, merges_path))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()

    def hf_ids(text):
        return hf.encode(text, add_special_tokens=False).ids

    tricky = []
    for text in TRICKY:
        ids = enc.encode_ordinary(text)
        assert ids == hf_ids(text), f"references disagree on {text!r}"
        assert enc.decode(ids) == text
        tricky.append({"text": text, "ids": ids})
    with open(os.path.join(ROOT, "tests", "fixtures", "tokenizer_tricky.json"), "w",
              encoding="utf-8") as f:
        json.dump(tricky, f, ensure_ascii=False, indent=1)
        f.write("\n")

    with open(os.path.join(data, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        text = f.read()
    ids = enc.encode_ordinary(text)
    assert ids == hf_ids(text), "references disagree on TinyShakespeare"
    fixture = {
        "file": "tinyshakespeare/input.txt",
        "bytes": len(text.encode("utf-8")),
        "count": len(ids),
        "fnv1a64_le_int32": f"{fnv1a64(ids):016x}",
        "first": ids[:500],
    }
    with open(os.path.join(ROOT, "tests", "fixtures", "tokenizer_tinyshakespeare.json"), "w") as f:
        json.dump(fixture, f)
        f.write("\n")
    print(f"tinyshakespeare: {len(ids)} tokens, fnv1a64 {fixture['fnv1a64_le_int32']}; "
          f"{len(tricky)} tricky strings")


if __name__ == "__main__":
    main()
