#!/usr/bin/env python3
"""Logit and greedy-generation golden files for the demo model, with llama.cpp as the
reference (CPU, 2 threads, n_ctx 2048, all logits kept).

Writes:
  testdata/logits_golden.json    per prompt and position: top-5 [id, logit] and top1-top2 margin
  testdata/generate_golden.json  greedy continuations of chat prompts, with per-step margins

Run with tools/.venv/bin/python tools/gen_llamacpp_golden.py
"""

import llama_cpp
import numpy as np
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import Llama

from golden_util import DEMO_MODEL_SHA256, TESTDATA, check_demo_model, write_json

SEED = 1234
N_CTX = 2048
N_THREADS = 2
TOPK = 5
MAX_NEW_TOKENS = 30
EOS_ID = 2  # <|im_end|>
NEAR_TIE = 0.3

LOGIT_PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +",
    "Shopping list:\n1. Milk\n2. Eggs\n3. Bread\n4.",
    "Once upon a time, in a small village at the edge of a dark forest, there lived a young "
    "girl who",
    "Question: What is 12 plus 7?\nAnswer: 12 plus 7 equals",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Name three primary colors.<|im_end|>\n<|im_start|>assistant\n",
    "Water boils at 100 degrees Celsius, which is 212 degrees",
    "The days of the week are Monday, Tuesday, Wednesday,",
    '{"name": "Alice", "age": 30, "city": "London", "languages": ["English", "',
    "In 1969, Neil Armstrong became the first person to walk on the",
    "fn main() {\n    let v = vec![1, 2, 3];\n    println!(\"{:?}\", v);\n}",
]

CHAT_QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Japan?",
    "How many days are in a week?",
    "How many sides does a triangle have?",
    "What is the largest planet in our solar system?",
    "What is the tallest mountain in the world?",
    "What is the freezing point of water?",
    "What is the boiling point of water in Celsius?",
]


def top_entries(row: np.ndarray):
    """Top-k (id, logit) by descending logit (ties: lower id first) and the top-2 margin."""
    order = np.lexsort((np.arange(row.shape[0]), -row.astype(np.float64)))[:TOPK]
    top = [[int(i), float(row[i])] for i in order]
    return top, float(row[order[0]]) - float(row[order[1]])


def read_chat_template(llm: Llama) -> tuple[str, dict]:
    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    vocab = llm._model
    specials = {
        "bos_token": vocab.token_get_text(int(meta["tokenizer.ggml.bos_token_id"])),
        "eos_token": vocab.token_get_text(int(meta["tokenizer.ggml.eos_token_id"])),
    }
    return template, specials


def render(template: str, specials: dict, messages: list, add_generation_prompt=True) -> str:
    # Same Jinja settings as Hugging Face's apply_chat_template.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **specials
    )


def logits_golden(llm: Llama):
    prompts = []
    for text in LOGIT_PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert 8 <= len(ids) <= 60, (text, len(ids))
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = []
        for row in scores:
            top, margin = top_entries(row)
            positions.append({"top": top, "margin": margin})
        prompts.append({"text": text, "ids": [int(t) for t in ids], "positions": positions})
        print(f"logits: {len(ids):3d} tokens, next {llm.detokenize([positions[-1]['top'][0][0]])!r}"
              f" after {text[-30:]!r}")
    return prompts


def greedy(llm: Llama, prompt_ids: list) -> tuple[list, list]:
    llm.reset()
    llm.eval(prompt_ids)
    generated, margins = [], []
    for _ in range(MAX_NEW_TOKENS):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top, margin = top_entries(row)
        tok = top[0][0]
        generated.append(tok)
        margins.append(margin)
        if tok == EOS_ID:
            break
        llm.eval([tok])
    return generated, margins


def generate_golden(llm: Llama):
    template, specials = read_chat_template(llm)
    cases = []
    clean_total = 0
    for question in CHAT_QUESTIONS:
        messages = [{"role": "user", "content": question}]
        rendered = render(template, specials, messages)
        prompt_ids = [int(t) for t in llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)]
        generated, margins = greedy(llm, prompt_ids)
        clean = next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(margins))
        clean_total += clean
        text = llm.detokenize(generated, special=True).decode("utf-8", errors="replace")
        print(f"generate: {question!r} -> {text!r} ({len(generated)} tokens, {clean} before a near tie)")
        cases.append(
            {
                "messages": messages,
                "rendered": rendered,
                "prompt_ids": prompt_ids,
                "generated": generated,
                "margins": margins,
            }
        )
    print(f"generated tokens before the first step with margin < {NEAR_TIE}, summed: {clean_total}")
    return cases, clean_total


def main():
    model = check_demo_model()
    llm = Llama(
        str(model),
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        seed=SEED,
        verbose=False,
    )
    reference = (
        f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), CPU, n_threads={N_THREADS}, "
        f"n_ctx={N_CTX}, logits_all=True, tokenize(add_bos=False, special=True)"
    )
    prompts = logits_golden(llm)
    out = TESTDATA / "logits_golden.json"
    write_json(out, {"reference": reference, "model_sha256": DEMO_MODEL_SHA256, "prompts": prompts})
    print(f"{out.name}: {len(prompts)} prompts, {sum(len(p['ids']) for p in prompts)} positions, "
          f"{out.stat().st_size} bytes")

    cases, clean_total = generate_golden(llm)
    out = TESTDATA / "generate_golden.json"
    write_json(
        out,
        {
            "reference": reference + f", greedy argmax over the logits, at most {MAX_NEW_TOKENS} "
            f"new tokens, stop after id {EOS_ID}",
            "model_sha256": DEMO_MODEL_SHA256,
            "cases": cases,
        },
    )
    print(f"{out.name}: {len(cases)} cases, {out.stat().st_size} bytes")
    assert clean_total >= 60, clean_total


if __name__ == "__main__":
    main()
