#!/usr/bin/env python3
"""Independent float32 logits of Gemma-3-270M for the prompts of the llama.cpp golden file.

transformers loads models/gemma-3-270m-q4_k_m.gguf with every tensor dequantized to float32
and runs eager attention in float32; this is the reference for lensd's `f32` compute dtype,
which dequantizes the same blocks. llama.cpp (testdata/gemma3-270m/logits_golden.json) differs
from both by quantizing activations, caching keys in f16 and computing GELU from an f16 table.

Writes testdata/gemma3-270m/f32_logits_golden.json: per prompt the ids (from the llama.cpp
golden) and per position the top 5 [id, logit] pairs, sorted by descending logit (ties by
lower id), with the top-1 minus top-2 margin; and under `generate`, for the prompt ids of each
case of the llama.cpp generation golden, the greedy float32 continuation (at most 40 tokens,
stopping after <end_of_turn> or <eos>) with each step's margin. Also prints how far llama.cpp
is from it.

Run with tools/.venv/bin/python tools/gen_gemma3_f32_golden.py (about 2 minutes).
"""

import json

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from golden_util import TESTDATA, check_gemma3_model, write_json

OUT = TESTDATA / "gemma3-270m" / "f32_logits_golden.json"

def main():
    path = check_gemma3_model()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    llama = json.loads((TESTDATA / "gemma3-270m" / "logits_golden.json").read_text())
    prompts = []
    diffs = []
    for p in llama["prompts"]:
        with torch.no_grad():
            rows = model(input_ids=torch.tensor([p["ids"]]), use_cache=False).logits[0].numpy()
        positions = []
        for row, want in zip(rows, p["positions"]):
            # Partial sort first: the vocabulary has 262,144 entries.
            cand = np.argpartition(-row, 8)[:8]
            best = sorted(cand.tolist(), key=lambda i: (-row[i], i))[:5]
            top = [[i, round(float(row[i]), 5)] for i in best]
            positions.append({"top": top, "margin": round(top[0][1] - top[1][1], 5)})
            diffs += [abs(float(row[i]) - v) for i, v in want["top"]]
        prompts.append({"text": p["text"], "ids": p["ids"], "positions": positions})
    generate = []
    stops = {1, 106}
    for case in json.loads((TESTDATA / "gemma3-270m" / "generate_golden.json").read_text())["cases"]:
        ids = list(case["prompt_ids"])
        out, margins = [], []
        with torch.no_grad():
            result = model(input_ids=torch.tensor([ids]), use_cache=True)
            for _ in range(40):
                row = result.logits[0, -1]
                top2 = torch.topk(row, 2)
                tok = int(top2.indices[0])
                out.append(tok)
                margins.append(round(float(top2.values[0] - top2.values[1]), 5))
                if tok in stops:
                    break
                result = model(
                    input_ids=torch.tensor([[tok]]),
                    past_key_values=result.past_key_values,
                    use_cache=True,
                )
        generate.append({"prompt_ids": case["prompt_ids"], "generated": out, "margins": margins})
    write_json(
        OUT,
        {
            "reference": "transformers "
            + transformers.__version__
            + ", torch "
            + torch.__version__
            + ", GGUF dequantized to float32, eager attention, CPU",
            "prompts": prompts,
            "generate": generate,
        },
    )
    print(
        f"llama.cpp vs float32 over llama.cpp's top-5: max {max(diffs):.3f}, "
        f"mean {np.mean(diffs):.3f}; wrote {OUT}"
    )

if __name__ == "__main__":
    main()
