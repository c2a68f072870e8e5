#!/usr/bin/env python3
"""Compare the llama.cpp golden files with an independent float32 forward pass.

Loads the demo GGUF with transformers (weights dequantized to float32), recomputes the
logits for testdata/logits_golden.json and the greedy continuations for
testdata/generate_golden.json, and prints how far the two implementations agree.
Writes nothing.

Run with tools/.venv/bin/python tools/compare_llamacpp_hf.py
"""

import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from golden_util import TESTDATA, check_demo_model

NEAR_TIE = 0.3


def main():
    model_path = check_demo_model()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent),
        gguf_file=model_path.name,
        dtype=torch.float32,
        attn_implementation="eager",
    ).eval()

    def logits(ids):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()

    golden = json.loads((TESTDATA / "logits_golden.json").read_text())
    n = agree = 0
    diffs = []
    flipped_margins = []
    for prompt in golden["prompts"]:
        rows = logits(prompt["ids"])
        for pos, row in zip(prompt["positions"], rows):
            n += 1
            if int(np.argmax(row)) == pos["top"][0][0]:
                agree += 1
            else:
                flipped_margins.append(pos["margin"])
            diffs += [abs(float(row[i]) - v) for i, v in pos["top"]]
    print(f"logits: top-1 agrees at {agree} of {n} positions; llama.cpp margins where it "
          f"differs: {[round(m, 4) for m in flipped_margins]}")
    print(f"logits: |llama.cpp - float32| over the golden top-5: max {max(diffs):.3f}, "
          f"mean {np.mean(diffs):.3f}")

    golden = json.loads((TESTDATA / "generate_golden.json").read_text())
    for case in golden["cases"]:
        ids = list(case["prompt_ids"])
        out = []
        for _ in range(len(case["generated"])):
            tok = int(np.argmax(logits(ids)[-1]))
            out.append(tok)
            ids.append(tok)
            if tok == 2:
                break
        same = 0
        while same < min(len(out), len(case["generated"])) and out[same] == case["generated"][same]:
            same += 1
        clean = next((i for i, m in enumerate(case["margins"]) if m < NEAR_TIE), len(case["margins"]))
        print(f"generate: {case['messages'][0]['content']!r}: same first {same} tokens "
              f"(golden has {clean} before a near tie)")


if __name__ == "__main__":
    main()
