#!/usr/bin/env python3
"""The llama.cpp side of bench/run.sh: the same measurements as `lensd bench` on the same GGUF
file, text and thread count, through llama-cpp-python. Prints one JSON document with the median
of each measurement.

Before timing, it checks that it does the same work as lensd: its greedy continuation of the
prompt must equal lensd's (stored dtype, the same quantized weights) for at least the first
MIN_SAME_DECODE tokens, and its top-1 at each position of the lens text must equal lensd's
final layer there, except where llama.cpp's own top two are within NEAR_TIE in probability
(llama.cpp quantizes activations for its quantized matrix products; lensd's analysis is f32).

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

import numpy as np
from llama_cpp import Llama


MIN_SAME_DECODE = 32
NEAR_TIE = 0.05


def timed(reps, f):
    seconds = [f() for _ in range(reps)]
    return {"seconds": seconds, "median_seconds": statistics.median(seconds)}


def fail(msg):
    print(f"llamacpp: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def check_outputs(lensd, decoded, scores):
    """Compares greedy ids and per-position top-1 with lensd's; returns the agreement."""
    stored = next(r for r in lensd["results"] if r["dtype"] == "stored")
    theirs = stored["decode_ids"]
    same = 0
    while same < min(len(decoded), len(theirs)) and decoded[same] == theirs[same]:
        same += 1
    if same < min(MIN_SAME_DECODE, len(theirs)):
        fail(f"greedy decode differs from lensd's at token {same}: {decoded[same]} vs {theirs[same]}")
    final = next(l for l in lensd["analysis"]["lenses"] if l["lens"] == "logit")["top1"][-1]
    differ, near = 0, 0
    for pos, want in enumerate(final):
        p = softmax(np.asarray(scores[pos], dtype=np.float64))
        top = np.argsort(p)[::-1][:2]
        if int(top[0]) == want:
            continue
        differ += 1
        if p[top[0]] - p[want] < NEAR_TIE:
            near += 1
        else:
            fail(f"top-1 at position {pos} is {int(top[0])} (p={p[top[0]]:.3f}); lensd says {want} "
                 f"(llama.cpp gives it p={p[want]:.3f})")
    return {"decode_same_prefix": same, "decode_tokens": len(theirs), "positions": len(final),
            "top1_differ": differ, "top1_differ_near_ties": near}


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
    agreement = check_outputs(lensd, decoded_once, scores[0])
    c = timed(a.reps, all_logits)
    import llama_cpp
    print(json.dumps({
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
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
