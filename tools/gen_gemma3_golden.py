#!/usr/bin/env python3
"""Golden files for Gemma-3-270M (models/gemma-3-270m-q4_k_m.gguf, from scripts/fetch-gemma3.sh),
with llama.cpp as the reference (CPU, 2 threads, n_ctx 2048, all logits kept).

Writes testdata/gemma3-270m/:
  tokenizer_golden.json  llama.cpp tokenize(text, add_bos, special) on a corpus of prose, code,
                         whitespace, Unicode, Gemma chat turns and special-token text, and a
                         seeded Unicode fuzz
  logits_golden.json     per prompt (BOS first) and position: top-5 [id, logit] and top1-top2 margin
  generate_golden.json   greedy continuations of chat prompts (and of plain text under `plain`),
                         with per-step margins
  chat_golden.json       conversations rendered in Gemma's turn format, and their ids

The GGUF file carries no chat template (`tokenizer.chat_template` is absent), so conversations
are rendered with llama.cpp's built-in `gemma` format (llama_chat_apply_template), which folds
a system message into the first user turn. That format writes no BOS; llama.cpp adds it when
tokenizing. `rendered` is the text lensd renders, with the BOS text `<bos>` first.

Run with tools/.venv/bin/python tools/gen_gemma3_golden.py [--no-cross-check]
"""

import ctypes
import random
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

import gen_tokenizer_golden as demo_corpus
from gen_llamacpp_golden import top_entries
from golden_util import GEMMA3_MODEL_SHA256, TESTDATA, check_gemma3_model, write_json

OUT = TESTDATA / "gemma3-270m"
N_CTX = 2048
N_THREADS = 2
SEED = 1234
MAX_NEW_TOKENS = 40
NEAR_TIE = 0.3
BOS, EOS, END_OF_TURN = 2, 1, 106
FUZZ_SEED = 2718
FUZZ_CASES = 100

# Text that exercises Gemma's vocabulary in particular: its control tokens, its user-defined
# tokens (runs of spaces, newlines and tabs, HTML tags, image markers), which llama.cpp always
# cuts out whole, and text that merely looks like a token.
GEMMA_SPECIAL_CASES = {
    "gemma_chat": "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
    "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n",
    "gemma_chat_open": "<bos><start_of_turn>user\nYou are terse.\n\nName a colour.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "gemma_controls": "<pad><eos><bos><unk><mask><unused0><unused42> [multimodal]",
    "gemma_partial_markup": "<start_of_turn <end_of_turn> start_of_turn> <bos <eos>>",
    "gemma_image": "<start_of_image>a photo<end_of_image> of <start_of_image>",
}
GEMMA_TEXT_CASES = {
    "html_tags": "<table><tr><td>1</td><td>2</td></tr></table>\n<h1>Title</h1> <strong>bold</strong> "
    "<em>it</em> <s>old</s> <a>link</a> <code>x = 1</code> <div><span>nested</span></div>",
    "html_attributes": '<table class="wide"><td colspan=2>cell</td></table><br/><p>para</p>',
    "space_runs": "|".join("x" + " " * k + "y" for k in (1, 2, 3, 29, 30, 31, 45, 61)),
    "newline_runs_long": "a" + "\n" * 35 + "b" + "\n" * 3 + "c\n\n \n\n" + "d",
    "tab_runs": "t" + "\t" * 33 + "u\t\tv \t w\t",
    "mixed_indent": "def f():\n\tif x:\n\t\treturn  1\n    else:\n        return   2\n",
    "leading_trailing": "   three leading, two trailing  ",
    "lower_eighth_block": "\u2581\u2581 literal blocks \u2581word \u2581",
    "byte_token_text": "<0x41><0xE2><0x0A> and <0x00>",
    "sentencepiece_edge": "\u00a0nbsp \u3000ideographic \u200bzero-width \ufeffbom",
}

# Texts encoded with BOS (add_bos true). llama.cpp adds a second BOS when the text starts
# with `<bos>` and special tokens are recognised; lensd does not (see the Rust test).
BOS_CASES = [
    ("bos_plain", "Hello world", False),
    ("bos_empty", "", False),
    ("bos_chat", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", True),
    ("bos_written", "<bos>Hello", True),
    ("bos_written_plain", "<bos>Hello", False),
]

LOGIT_PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +",
    "Shopping list:\n1. Milk\n2. Eggs\n3. Bread\n4.",
    "Once upon a time, in a small village at the edge of a dark forest, there lived a young "
    "girl who",
    "Question: What is 12 plus 7?\nAnswer: 12 plus 7 equals",
    "<start_of_turn>user\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n",
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
    "Write a haiku about the sea.",
]

# Gemma-3-270M is a pretrained (not instruction-tuned) model: in the chat format it mostly
# repeats the question. Plain-text continuations show it answering.
PLAIN_PROMPTS = [
    "The capital of France is",
    "The three primary colors are",
    "def add(a, b):\n",
    "Once upon a time, there was a",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And of Spain?"},
    ],
    [
        {"role": "user", "content": "Write <end_of_turn> literally, with \"quotes\" & ünïcödé."},
        {"role": "assistant", "content": "Line one\nLine two"},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Spaces around  "},
    ],
]


def build_tokenizer_cases():
    """(name, text, special, add_bos): the demo corpus, Gemma's own cases, a fresh fuzz."""
    cases = [(n, t, s, False) for n, t, s in demo_corpus.build_cases()]
    for name, text in GEMMA_SPECIAL_CASES.items():
        cases.append((name + "_special", text, True, False))
        cases.append((name + "_plain", text, False, False))
    for name, text in GEMMA_TEXT_CASES.items():
        cases.append((name, text, False, False))
    everything = "\n\n".join(list(GEMMA_SPECIAL_CASES.values()) + list(GEMMA_TEXT_CASES.values()))
    cases.append(("gemma_all_in_one_special", everything, True, False))
    rng = random.Random(FUZZ_SEED)
    for i in range(FUZZ_CASES):
        cases.append((f"gemma_fuzz_{i:03d}", demo_corpus.fuzz_text(rng), rng.random() < 0.5, False))
    cases.extend((n, t, s, True) for n, t, s in BOS_CASES)
    return cases


def tokenizer_golden(model):
    llm = Llama(str(model), vocab_only=True, verbose=False)
    cases, total = [], 0
    for name, text, special, add_bos in build_tokenizer_cases():
        ids = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)]
        cases.append({"name": name, "text": text, "special": special, "add_bos": add_bos, "ids": ids})
        total += len(ids)
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names))
    by_name = {c["name"]: c["ids"] for c in cases}
    # What the corpus is meant to show, checked: control tokens only on request, user-defined
    # tokens always, BOS doubled by llama.cpp when the text writes it.
    assert by_name["gemma_chat_special"][0] == 105, by_name["gemma_chat_special"]
    assert 105 not in by_name["gemma_chat_plain"]
    assert 168 in by_name["html_tags"] and 167 in by_name["space_runs"]
    assert by_name["bos_written"][:2] == [BOS, BOS]
    write_json(
        OUT / "tokenizer_golden.json",
        {
            "model": model.name,
            "model_sha256": GEMMA3_MODEL_SHA256,
            "reference": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) "
            "tokenize(text, add_bos=add_bos, special=special)",
            "cases": cases,
        },
    )
    print(f"tokenizer_golden.json: {len(cases)} cases, {total} tokens")
    return cases


def cross_check(model, cases) -> None:
    """Informational: Hugging Face's tokenizer built from the same GGUF file."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    differ = []
    for c in cases:
        if c["add_bos"]:
            continue
        ids = tok(c["text"], add_special_tokens=False, split_special_tokens=not c["special"])
        if ids["input_ids"] != c["ids"]:
            differ.append(c["name"])
    n = sum(1 for c in cases if not c["add_bos"])
    print(f"cross-check with HF tokenizers (from the GGUF): {n - len(differ)} of {n} cases agree")
    if differ:
        print("  differing cases: " + ", ".join(differ), file=sys.stderr)


def gemma_format(messages, add_generation_prompt) -> str:
    """llama.cpp's built-in `gemma` chat format."""
    arr = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role = role
        arr[i].content = content
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(
        b"gemma", arr, len(messages), add_generation_prompt, buf, len(buf)
    )
    assert 0 < n < len(buf), n
    return buf.raw[:n].decode("utf-8")


def tokenize_rendered(llm: Llama, formatted: str) -> list:
    """Ids of a conversation as llama.cpp feeds it: BOS, then the formatted turns."""
    ids = [int(t) for t in llm.tokenize(formatted.encode("utf-8"), add_bos=True, special=True)]
    # The same ids come from the text lensd renders, which writes the BOS text itself.
    again = llm.tokenize(("<bos>" + formatted).encode("utf-8"), add_bos=False, special=True)
    assert [int(t) for t in again] == ids
    return ids


def chat_golden(llm: Llama):
    cases = []
    for messages in CONVERSATIONS:
        opened = messages[-1]["role"] != "assistant"
        formatted = gemma_format(messages, opened)
        ids = tokenize_rendered(llm, formatted)
        cases.append(
            {"messages": messages, "reply_opened": opened, "rendered": "<bos>" + formatted, "ids": ids}
        )
        print(f"chat: {len(messages)} turns -> {len(ids)} tokens, opened={opened}")
    write_json(
        OUT / "chat_golden.json",
        {
            "reference": "llama.cpp's built-in `gemma` chat format (llama_chat_apply_template), "
            "`<bos>` written first; llama.cpp tokenize(add_bos=True, special=True) of the format's text",
            "model_sha256": GEMMA3_MODEL_SHA256,
            "cases": cases,
        },
    )


def logits_golden(llm: Llama, reference: str):
    prompts = []
    for text in LOGIT_PROMPTS:
        ids = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]
        assert ids[0] == BOS and 8 <= len(ids) <= 60, (text, len(ids))
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = []
        for row in scores:
            top, margin = top_entries(row)
            positions.append({"top": top, "margin": margin})
        prompts.append({"text": text, "ids": ids, "positions": positions})
        nxt = llm.detokenize([positions[-1]["top"][0][0]]).decode("utf-8", errors="replace")
        print(f"logits: {len(ids):3d} tokens, next {nxt!r} (margin {positions[-1]['margin']:.2f})"
              f" after {text[-30:]!r}")
    # Sanity: the model knows where the Eiffel Tower is.
    paris = llm.detokenize([prompts[0]["positions"][-1]["top"][0][0]]).decode()
    assert paris.strip() == "Paris", paris
    write_json(
        OUT / "logits_golden.json",
        {"reference": reference + ", tokenize(add_bos=True, special=True)",
         "model_sha256": GEMMA3_MODEL_SHA256, "prompts": prompts},
    )
    n = sum(len(p["ids"]) for p in prompts)
    low = sum(1 for p in prompts for q in p["positions"] if q["margin"] < NEAR_TIE)
    print(f"logits_golden.json: {len(prompts)} prompts, {n} positions ({low} with margin < {NEAR_TIE})")


def greedy(llm: Llama, prompt_ids: list):
    llm.reset()
    llm.eval(prompt_ids)
    generated, margins = [], []
    for _ in range(MAX_NEW_TOKENS):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top, margin = top_entries(row)
        tok = top[0][0]
        generated.append(tok)
        margins.append(margin)
        if tok in (EOS, END_OF_TURN):
            break
        llm.eval([tok])
    return generated, margins


def clean_steps(margins) -> int:
    """Steps before the first near tie: the ones a comparison can rely on."""
    return next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(margins))


def generate_golden(llm: Llama, reference: str):
    cases, clean_total = [], 0
    for question in CHAT_QUESTIONS:
        messages = [{"role": "user", "content": question}]
        formatted = gemma_format(messages, True)
        prompt_ids = tokenize_rendered(llm, formatted)
        generated, margins = greedy(llm, prompt_ids)
        clean = clean_steps(margins)
        clean_total += clean
        text = llm.detokenize(generated, special=True).decode("utf-8", errors="replace")
        print(f"generate: {question!r} -> {text!r} ({len(generated)} tokens, {clean} before a near tie)")
        cases.append(
            {
                "messages": messages,
                "rendered": "<bos>" + formatted,
                "prompt_ids": prompt_ids,
                "generated": generated,
                "margins": margins,
            }
        )
    plain, plain_clean = [], 0
    for text in PLAIN_PROMPTS:
        prompt_ids = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)]
        generated, margins = greedy(llm, prompt_ids)
        plain_clean += clean_steps(margins)
        out = llm.detokenize(generated, special=True).decode("utf-8", errors="replace")
        print(f"generate (plain): {text!r} -> {out!r} ({clean_steps(margins)} before a near tie)")
        plain.append({"text": text, "prompt_ids": prompt_ids, "generated": generated, "margins": margins})
    write_json(
        OUT / "generate_golden.json",
        {
            "reference": reference + ", llama.cpp's built-in `gemma` chat format, "
            f"tokenize(add_bos=True, special=True), greedy argmax over the logits, at most "
            f"{MAX_NEW_TOKENS} new tokens, stop after id {END_OF_TURN} (<end_of_turn>) or {EOS} (<eos>)",
            "model_sha256": GEMMA3_MODEL_SHA256,
            "cases": cases,
            "plain": plain,
        },
    )
    print(f"plain continuations: {plain_clean} tokens before a near tie")
    print(f"generate_golden.json: {len(cases)} cases; generated tokens before the first step "
          f"with margin < {NEAR_TIE}, summed: {clean_total}")
    assert clean_total >= 60, clean_total


def main():
    model = check_gemma3_model()
    OUT.mkdir(parents=True, exist_ok=True)
    cases = tokenizer_golden(model)
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
        f"n_ctx={N_CTX}, logits_all=True"
    )
    chat_golden(llm)
    logits_golden(llm, reference)
    generate_golden(llm, reference)
    if "--no-cross-check" not in sys.argv:
        cross_check(model, cases)


if __name__ == "__main__":
    main()
