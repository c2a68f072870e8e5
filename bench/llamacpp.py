#!/usr/bin/env python3
"""The llama.cpp side of bench/run.sh: the same measurements as `lensd bench` on the same GGUF
file, text and thread count, through llama-cpp-python. Prints one JSON document.

- prefill: evaluate the prompt's ids from an empty cache;
- decode: greedy tokens one at a time after the prompt (end-of-turn ignored);
- lens cells: llama.cpp exposes no hidden states, so its peer figure is the output layer alone:
  a prompt evaluated with logits kept at every position, one cell per position.
"""

import argparse
import json
import time

import numpy as np
from llama_cpp import Llama


def best_of(reps, f):
    best = float("inf")
    for _ in range(reps):
        best = min(best, f())
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="JSON file with the prompt ids")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--lens-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    ids = json.load(open(a.ids))["ids"]
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

    def decode():
        llm.reset()
        llm.eval(prompt)
        nxt = last_argmax()
        t = time.perf_counter()
        for _ in range(a.decode_tokens):
            llm.eval([nxt])
            nxt = last_argmax()
        return time.perf_counter() - t

    p = best_of(a.reps, prefill)
    d = best_of(a.reps, decode)
    del llm

    full = Llama(a.model, n_ctx=1024, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                 logits_all=True, verbose=False)

    def all_logits():
        full.reset()
        t = time.perf_counter()
        full.eval(lens_ids)
        _ = np.array(full.scores[: len(lens_ids)])
        return time.perf_counter() - t

    c = best_of(a.reps, all_logits)
    print(json.dumps({
        "engine": "llama.cpp (llama-cpp-python)",
        "threads": a.threads,
        "load_seconds": load,
        "prefill_tokens_per_s": a.prompt_tokens / p,
        "decode_tokens_per_s": a.decode_tokens / d,
        "output_cells_per_s": len(lens_ids) / c,
    }))


if __name__ == "__main__":
    main()
