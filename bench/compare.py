#!/usr/bin/env python3
"""Prints the markdown table of bench/run.sh: lensd's numbers beside llama.cpp's, as ratios."""

import json
import sys


def main():
    lensd = json.load(open(sys.argv[1]))
    peer = json.load(open(sys.argv[2]))
    by = {r["dtype"]: r for r in lensd["results"]}
    q, f = by["stored"], by["f32"]
    rows = [
        ("prefill tokens/s", "stored (Q4_1)", q["prefill_tokens_per_s"], peer["prefill_tokens_per_s"]),
        ("prefill tokens/s", "f32", f["prefill_tokens_per_s"], peer["prefill_tokens_per_s"]),
        ("decode tokens/s", "stored (Q4_1)", q["decode_tokens_per_s"], peer["decode_tokens_per_s"]),
        ("decode tokens/s", "f32", f["decode_tokens_per_s"], peer["decode_tokens_per_s"]),
        ("logit-lens cells/s (lensd: all 31 layers, top-5 + stats; llama.cpp: output logits only)",
         "f32", f["lens_cells_per_s"], peer["output_cells_per_s"]),
        ("logit-lens cells/s (same)", "stored (Q4_1)", q["lens_cells_per_s"], peer["output_cells_per_s"]),
    ]
    print(f"model `{lensd['model']}`, {lensd['threads']} threads (llama.cpp {peer['threads']}); "
          f"prompt {lensd['prompt_tokens']} tokens, decode {lensd['decode_tokens']}, "
          f"lens text {lensd['lens_tokens']} tokens; best of {lensd['reps']}\n")
    print("| measure | lensd dtype | lensd | llama.cpp | lensd ÷ llama.cpp |")
    print("|---|---|---:|---:|---:|")
    for name, dtype, ours, theirs in rows:
        print(f"| {name} | {dtype} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
    print(f"\nload: lensd stored {q['load_seconds']:.3f} s, f32 {f['load_seconds']:.3f} s; "
          f"llama.cpp {peer['load_seconds']:.3f} s")


if __name__ == "__main__":
    main()
