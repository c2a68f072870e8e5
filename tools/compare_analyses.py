#!/usr/bin/env python3
"""Compares two `lensd analyze --format json` outputs of the same text: a reference (CPU, f32)
and a candidate (a GPU in bf16), by the rules of crates/engine/tests/bf16_compute.rs:

- the same top-1 in every cell whose reference top-two margin (log p1 - log p2) is >= 0.5;
- every cell's entropy within 0.35 nats and KL to the final layer within 0.15 x (1 + KL);
- the median cell's entropy within 0.02 nats and KL within 0.015 x (1 + KL).

Prints one JSON line with what was compared and the largest differences; exits 1 when a rule
is broken. Standard library only, so it runs with any Python 3.
"""

import json
import math
import sys

MARGIN = 0.5
ENTROPY_MAX = 0.35
KL_MAX = 0.15
ENTROPY_MEDIAN = 0.02
KL_MEDIAN = 0.015


def load(path):
    with open(path) as f:
        return json.load(f)


def compare(ref, cand):
    if [t["id"] for t in ref["tokens"]] != [t["id"] for t in cand["tokens"]]:
        return {"error": "the two analyses tokenized the text differently"}, False
    out = {"cells": 0, "top1_compared": 0, "max_entropy_diff": 0.0, "max_kl_diff": 0.0,
           "broken": []}
    des, dks = [], []
    for rl, cl in zip(ref["layers"], cand["layers"]):
        for p, (r, c) in enumerate(zip(rl["positions"], cl["positions"])):
            out["cells"] += 1
            where = f"layer {rl['layer']} position {p}"
            top = r["top"]
            if len(top) >= 2 and top[1]["prob"] > 0:
                margin = math.log(top[0]["prob"]) - math.log(top[1]["prob"])
            else:
                margin = math.inf
            if margin >= MARGIN:
                out["top1_compared"] += 1
                if top[0]["id"] != c["top"][0]["id"]:
                    out["broken"].append(f"{where}: top-1 {top[0]['id']} vs {c['top'][0]['id']} "
                                         f"with a margin of {margin:.2f}")
            de = abs(r["entropy"] - c["entropy"])
            dk = abs(r["kl_to_final"] - c["kl_to_final"])
            des.append(de)
            dks.append(dk / (1 + r["kl_to_final"]))
            out["max_entropy_diff"] = max(out["max_entropy_diff"], de)
            out["max_kl_diff"] = max(out["max_kl_diff"], dk)
            if de > ENTROPY_MAX:
                out["broken"].append(f"{where}: entropy {r['entropy']} vs {c['entropy']}")
            if dk > KL_MAX * (1 + r["kl_to_final"]):
                out["broken"].append(f"{where}: KL {r['kl_to_final']} vs {c['kl_to_final']}")
    if des:
        out["median_entropy_diff"] = sorted(des)[len(des) // 2]
        out["median_kl_rel_diff"] = sorted(dks)[len(dks) // 2]
        if out["median_entropy_diff"] > ENTROPY_MEDIAN:
            out["broken"].append(f"median entropy difference {out['median_entropy_diff']}")
        if out["median_kl_rel_diff"] > KL_MEDIAN:
            out["broken"].append(f"median KL difference / (1 + KL) {out['median_kl_rel_diff']}")
    return out, not out["broken"]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_analyses.py REFERENCE.json CANDIDATE.json")
    result, ok = compare(load(sys.argv[1]), load(sys.argv[2]))
    result["broken"] = result.get("broken", [])[:20]
    print(json.dumps(result))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
