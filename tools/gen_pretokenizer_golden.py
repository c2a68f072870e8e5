#!/usr/bin/env python3
"""Golden ids for the BPE pre-tokenizers lensd implements besides the demo model's `smollm`:
`qwen2` (Qwen2, 2.5, 3), `llama-bpe` (Llama-3) and `default` (a GGUF that names none).

No Qwen or Llama-3 GGUF file can be fetched here, so the reference is llama.cpp on the demo
model's own vocabulary and merges with `tokenizer.ggml.pre` replaced: the ids then differ only
through the pre-tokenizer's splitting rules (and, for `llama-bpe`, llama.cpp's rule that a word
that is a token as a whole is not merged), which is what lensd's implementation of those names
must reproduce. The Rust test (crates/engine/tests/pretokenizer_golden.rs) makes the same
change to the demo file's header.

Writes testdata/pretokenizer_golden.json: for each case of testdata/tokenizer_golden.json (by
name, same text and `special`) and a few cases of its own (with their text), llama.cpp's
tokenize(text, add_bos=False, special) under each
pre-tokenizer, and whether llama.cpp adds BOS for each when the file does not say
(`add_bos_default`; the variants have no `tokenizer.ggml.add_bos_token`).

Run with tools/.venv/bin/python tools/gen_pretokenizer_golden.py
(after gen_tokenizer_golden.py)
"""

import json
import tempfile
from pathlib import Path

import gguf
import llama_cpp
from llama_cpp import Llama

from golden_util import DEMO_MODEL_SHA256, TESTDATA, check_demo_model, write_json

PRE_TOKENIZERS = ["qwen2", "llama-bpe", "default"]

# Tokens appended to the vocabulary (GPT-2 byte-level spelling, "Ġ" = space) so that the
# variants differ where their rules differ: the demo vocabulary has no multi-digit tokens
# (qwen2 splits digits one by one, llama-bpe keeps up to three together), and "Ġzzyzx" has no
# merges that lead to it (llama-bpe takes a word that is a token whole, qwen2 merges).
EXTRA_TOKENS = ["12", "123", "45", "456", "Ġzzyzx"]
EXTRA_MERGES = ["1 2", "12 3", "4 5", "45 6"]
EXTRA_CASES = [
    ("digit_groups", "123456 45 12 1234567 9123 x123y 0.456", False),
    ("whole_word_token", "zzyzx zzyzx's Zzyzx  zzyzx\nzzyzx", False),
]


def with_pre(src: Path, pre: str, dst: Path) -> None:
    """Copies `src`'s metadata (no tensors) with `tokenizer.ggml.pre` set to `pre`, the extra
    tokens and merges appended, and without `tokenizer.ggml.add_bos_token`, so that llama.cpp's
    default for `pre` decides BOS."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    extra = {
        "tokenizer.ggml.pre": lambda _: pre,
        "tokenizer.ggml.tokens": lambda v: v + EXTRA_TOKENS,
        "tokenizer.ggml.token_type": lambda v: v + [1] * len(EXTRA_TOKENS),
        "tokenizer.ggml.merges": lambda v: v + EXTRA_MERGES,
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "tokenizer.ggml.add_bos_token"):
            continue
        value = extra.get(key, lambda v: v)(field.contents())
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def main():
    model = check_demo_model()
    corpus = json.loads((TESTDATA / "tokenizer_golden.json").read_text(encoding="utf-8"))
    assert corpus["model_sha256"] == DEMO_MODEL_SHA256
    cases = [(c["name"], c["text"], c["special"]) for c in corpus["cases"]] + EXTRA_CASES
    ids = {name: {} for name, _, _ in cases}
    totals = {}
    add_bos = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_TOKENIZERS:
            path = Path(tmp) / f"demo-{pre}.gguf"
            with_pre(model, pre, path)
            llm = Llama(str(path), vocab_only=True, verbose=False)
            add_bos[pre] = bool(llm.tokenize(b"x", add_bos=True, special=False)[0] == llm.token_bos())
            total = 0
            for name, text, special in cases:
                toks = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
                ids[name][pre] = [int(t) for t in toks]
                total += len(toks)
            totals[pre] = total
            del llm
    differ = {
        pre: sum(1 for c in corpus["cases"] if ids[c["name"]][pre] != c["ids"]) for pre in PRE_TOKENIZERS
    }
    qwen_llama = sum(1 for name, _, _ in cases if ids[name]["qwen2"] != ids[name]["llama-bpe"])
    extra_cases = [
        {"name": name, "text": text, "special": special, "ids": ids[name]} for name, text, special in EXTRA_CASES
    ]
    doc = {
        "model": model.name,
        "model_sha256": DEMO_MODEL_SHA256,
        "reference": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) tokenize(text, "
        "add_bos=False, special) on the demo model's metadata with tokenizer.ggml.pre replaced",
        "corpus": "tokenizer_golden.json",
        "extra_tokens": EXTRA_TOKENS,
        "extra_merges": EXTRA_MERGES,
        "add_bos_default": add_bos,
        "cases": [{"name": c["name"], "ids": ids[c["name"]]} for c in corpus["cases"]] + extra_cases,
    }
    out = TESTDATA / "pretokenizer_golden.json"
    write_json(out, doc)
    for pre in PRE_TOKENIZERS:
        print(f"{pre}: {totals[pre]} tokens, {differ[pre]} of {len(corpus['cases'])} cases differ "
              f"from smollm; add_bos default {add_bos[pre]}")
    print(f"qwen2 and llama-bpe differ on {qwen_llama} cases")
    print(f"{out.name}: {len(cases)} cases, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
