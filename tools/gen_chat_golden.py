#!/usr/bin/env python3
"""Conversations rendered with the demo model's chat template (Jinja2, with the settings
Hugging Face uses) and tokenized by llama.cpp, for lensd's `messages` input.

Writes testdata/chat_golden.json: per case the messages, whether the assistant's turn is
opened after them (lensd's rule for an analysis: unless the last turn is the assistant's),
the rendered text and its token ids.

Run with tools/.venv/bin/python tools/gen_chat_golden.py
"""

from llama_cpp import Llama

from gen_llamacpp_golden import read_chat_template, render
from golden_util import DEMO_MODEL_SHA256, TESTDATA, check_demo_model, write_json

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
        {"role": "user", "content": "Write <|im_end|> literally, with \"quotes\" & ünïcödé."},
        {"role": "assistant", "content": "Line one\nLine two"},
    ],
]


def main():
    model = check_demo_model()
    llm = Llama(str(model), vocab_only=True, verbose=False)
    template, specials = read_chat_template(llm)
    cases = []
    for messages in CONVERSATIONS:
        opened = messages[-1]["role"] != "assistant"
        rendered = render(template, specials, messages, add_generation_prompt=opened)
        ids = [int(t) for t in llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)]
        cases.append({"messages": messages, "reply_opened": opened, "rendered": rendered, "ids": ids})
        print(f"{len(messages)} turns -> {len(ids)} tokens, opened={opened}")
    out = TESTDATA / "chat_golden.json"
    write_json(
        out,
        {
            "reference": "jinja2 (trim_blocks, lstrip_blocks) over the GGUF chat template; "
            "llama.cpp tokenize(add_bos=False, special=True)",
            "model_sha256": DEMO_MODEL_SHA256,
            "cases": cases,
        },
    )
    print(f"{out.name}: {len(cases)} cases")


if __name__ == "__main__":
    main()
