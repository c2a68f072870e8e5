#!/usr/bin/env python3
"""The llama.cpp side of bench/run.sh: the same measurements as `lensd bench` on the same GGUF
file, text and thread count, through llama-cpp-python. Prints one JSON document with the median
of each measurement.

Before timing, it checks that it does the same work as lensd: it reads lensd's ids as they are
(BOS first where the GGUF asks for one), its greedy continuation of the prompt must equal
lensd's (stored dtype, the same quantized weights) for at least the first MIN_SAME_DECODE
tokens, and its top-1 at each position of the lens text must equal lensd's final layer there,
except at near ties (llama.cpp quantizes activations for its quantized matrix products; lensd's
analysis is f32). What counts as a near tie depends on the architecture: see TOLERANCES.

- prefill: evaluate the prompt's ids from an empty cache;
- decode: greedy tokens one at a time after the prompt (end-of-turn ignored);
- lens cells: llama.cpp exposes no hidden states, so its peer figure is the output layer alone:
  a prompt evaluated with logits kept at every position, one cell per position.
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
from llama_cpp import Llama


MIN_SAME_DECODE = 32


@dataclass(frozen=True)
class Tolerance:
    """When a top-1 of llama.cpp's that differs from lensd's f32 one is still the same work."""

    # A differing top-1 is a near tie when llama.cpp's own probability of its top-1 exceeds
    # its probability of lensd's by less than this...
    near_tie_prob: float | None = None
    # ... or, when set instead, its own logit of its top-1 exceeds that of lensd's by less.
    near_tie_logits: float | None = None
    # The fraction of positions whose top-1 must be equal, near ties or not.
    min_same_top1: float = 0.0
    # How far llama.cpp's probability of lensd's top-1 may be from lensd's own, anywhere.
    max_top1_prob_diff: float = 1.0


# By the GGUF's `general.architecture`; the demo model (llama) keeps the probability rule. On
# Gemma-3-270M llama.cpp quantizes activations for its quantized products and computes GELU
# from a float16 table, which moves its logits by up to about 3 (0.28 on average) from a float32
# forward (tools/gen_gemma3_f32_golden.py measures it against transformers' float32, which
# lensd's f32 equals within 1e-4): a top-1 whose logit is within 3 of llama.cpp's own is a tie
# for these numerics. So that a broken forward cannot hide behind that margin, nine positions in
# ten must agree and llama.cpp's probability of lensd's top-1 must stay within 0.1 of lensd's
# (0.04 was measured on the bench's text).
TOLERANCES = {"gemma3": Tolerance(near_tie_logits=3.0, min_same_top1=0.9, max_top1_prob_diff=0.1)}
DEFAULT = Tolerance(near_tie_prob=0.05)


def timed(reps, f):
    seconds = [f() for _ in range(reps)]
    return {"seconds": seconds, "median_seconds": statistics.median(seconds)}


def fail(msg):
    print(f"llamacpp: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def check_bos(llm, ids):
    """lensd's ids must start as llama.cpp would start them: with BOS where the GGUF asks."""
    if llm._model.add_bos_token() and ids[0] != llm.token_bos():
        fail(f"the model adds BOS ({llm.token_bos()}) but lensd's ids start with {ids[0]}")


def check_outputs(lensd, decoded, scores, tol):
    """Compares greedy ids and per-position top-1 with lensd's; returns the agreement."""
    stored = next(r for r in lensd["results"] if r["dtype"] == "stored")
    theirs = stored["decode_ids"]
    same = 0
    while same < min(len(decoded), len(theirs)) and decoded[same] == theirs[same]:
        same += 1
    if same < min(MIN_SAME_DECODE, len(theirs)):
        fail(f"greedy decode differs from lensd's at token {same}: {decoded[same]} vs {theirs[same]}")
    logit = next(l for l in lensd["analysis"]["lenses"] if l["lens"] == "logit")
    final, final_prob = logit["top1"][-1], logit["top1_prob"][-1]
    differ, near, max_gap, max_prob_diff = 0, 0, 0.0, 0.0
    for pos, want in enumerate(final):
        row = np.asarray(scores[pos], dtype=np.float64)
        p = softmax(row)
        max_prob_diff = max(max_prob_diff, abs(p[want] - final_prob[pos]))
        top = int(np.argmax(row))
        if top == want:
            continue
        differ += 1
        gap = row[top] - row[want]
        max_gap = max(max_gap, gap)
        if (p[top] - p[want] < tol.near_tie_prob if tol.near_tie_prob is not None
                else gap < tol.near_tie_logits):
            near += 1
        else:
            fail(f"top-1 at position {pos} is {top} (p={p[top]:.3f}); lensd says {want} "
                 f"(llama.cpp gives it p={p[want]:.3f}, {gap:.2f} logits below)")
    if len(final) - differ < tol.min_same_top1 * len(final):
        fail(f"top-1 equals lensd's at {len(final) - differ} of {len(final)} positions, fewer than "
             f"{tol.min_same_top1:.0%}")
    if max_prob_diff > tol.max_top1_prob_diff:
        fail(f"llama.cpp's probability of lensd's top-1 differs from lensd's by "
             f"{max_prob_diff:.3f}, more than {tol.max_top1_prob_diff}")
    return {"decode_same_prefix": same, "decode_tokens": len(theirs), "positions": len(final),
            "top1_differ": differ, "top1_differ_near_ties": near,
            "top1_differ_max_logit_gap": max_gap, "top1_prob_max_diff": max_prob_diff,
            "tolerance": vars(tol)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lensd-json", required=True, help="lensd bench's JSON (ids and outputs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--lens-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    lensd = json.load(open(a.lensd_json))
    ids = lensd["ids"]
    prompt = ids[: a.prompt_tokens]
    lens_ids = ids[: a.lens_tokens]
    assert len(prompt) == a.prompt_tokens and len(lens_ids) == a.lens_tokens, "not enough ids"

    t = time.perf_counter()
    llm = Llama(a.model, n_ctx=1024, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                logits_all=False, verbose=False)
    load = time.perf_counter() - t
    arch = llm.metadata.get("general.architecture", "")
    tol = TOLERANCES.get(arch, DEFAULT)
    check_bos(llm, ids)

    def prefill():
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        return time.perf_counter() - t

    def last_argmax():
        n = llm.n_vocab()
        row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n,))
        return int(np.argmax(row))

    decoded = []

    def decode():
        llm.reset()
        llm.eval(prompt)
        nxt = last_argmax()
        decoded.clear()
        t = time.perf_counter()
        for _ in range(a.decode_tokens):
            decoded.append(nxt)
            llm.eval([nxt])
            nxt = last_argmax()
        return time.perf_counter() - t

    decode()
    decoded_once = list(decoded)
    p = timed(a.reps, prefill)
    d = timed(a.reps, decode)
    del llm

    full = Llama(a.model, n_ctx=1024, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                 logits_all=True, verbose=False)

    scores = []

    def all_logits():
        full.reset()
        t = time.perf_counter()
        full.eval(lens_ids)
        scores[:] = [np.array(full.scores[: len(lens_ids)])]
        return time.perf_counter() - t

    all_logits()
    agreement = check_outputs(lensd, decoded_once, scores[0], tol)
    c = timed(a.reps, all_logits)
    import llama_cpp
    print(json.dumps({
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "architecture": arch,
        "threads": a.threads,
        "reps": a.reps,
        "load_seconds": load,
        "prefill": p,
        "decode": d,
        "output_cells": c,
        "prefill_tokens_per_s": a.prompt_tokens / p["median_seconds"],
        "decode_tokens_per_s": a.decode_tokens / d["median_seconds"],
        "output_cells_per_s": len(lens_ids) / c["median_seconds"],
        "agreement": agreement,
    }))


if __name__ == "__main__":
    main()
