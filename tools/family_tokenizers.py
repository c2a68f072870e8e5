"""Tokenizers of the tiny family models written by gen_tiny_families.py.

Three recipes, each shaped like the real family's tokenizer but trained on a short text:

* ``llama3``: byte-level BPE behind the Llama-3 split regex (numbers in runs of up to
  three digits), BOS ``<|begin_of_text|>`` added by the post-processor.
* ``qwen``: byte-level BPE behind the Qwen2 split regex (every digit alone), no BOS.
* ``gemma``: a SentencePiece BPE model (``tokenizer.model``, trained with the
  ``sentencepiece`` package: byte fallback, digits split, no dummy prefix, identity
  normalisation) and the equivalent ``tokenizer.json`` (vocab and merges read from it),
  BOS ``<bos>`` added by the post-processor. llama.cpp's converter reads Gemma
  vocabularies from ``tokenizer.model`` only.

Everything is deterministic: same text, same trainer settings, one thread.
"""

import io
import json
from pathlib import Path

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GemmaTokenizer, PreTrainedTokenizerFast

from gen_tiny_llama import TRAINING_TEXT

VOCAB_SIZE = 512

# Split regexes of the real tokenizers (facts about their tokenizer.json files).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# o200k's split (gpt-oss): case-aware words with contractions, numbers in runs of up to three.
O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Each recipe: special tokens (ids 0.. in this order), the ids the configs name, and the
# text that llama.cpp's converter should record as tokenizer.ggml.pre.
RECIPES = {
    "llama3": {
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": ["<|end_of_text|>", "<|eot_id|>"],
        "pad": None,
        "add_bos_token": True,
        "gguf_pre": "llama-bpe",
        "chat": (
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is Paris.<|eot_id|>"
        ),
    },
    "qwen": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,  # Qwen adds no BOS; config.json still names <|endoftext|> as bos_token_id
        "config_bos": "<|endoftext|>",
        "eos": ["<|im_end|>"],
        "pad": "<|endoftext|>",
        "add_bos_token": False,
        "gguf_pre": "qwen2",
        "chat": (
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
            "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
        ),
    },
    "harmony": {
        # gpt-oss's special tokens (its ids are 199998 and up; here they come first).
        "specials": [
            "<|startoftext|>",
            "<|endoftext|>",
            "<|return|>",
            "<|constrain|>",
            "<|channel|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|call|>",
        ],
        "bos": None,  # gpt-oss adds no BOS; config.json names <|startoftext|>
        "config_bos": "<|startoftext|>",
        "eos": ["<|return|>", "<|call|>"],
        "pad": "<|endoftext|>",
        "add_bos_token": False,
        "gguf_pre": "gpt-4o",
        "chat": (
            "<|start|>user<|message|>What is the capital of France?<|end|>"
            "<|start|>assistant<|channel|>analysis<|message|>A simple fact.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>The capital of France is Paris.<|return|>"
        ),
    },
    "gemma": {
        # SentencePiece ids: pad 0, eos 1, bos 2, unk 3, then these.
        "specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": ["<eos>"],
        "pad": "<pad>",
        "add_bos_token": True,
        "gguf_pre": None,  # SentencePiece vocabulary: the converter writes "default"
        "chat": (
            "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
            "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n"
        ),
    },
}

EXAMPLES = {
    "llama3": [
        "The keeper watched the beam sweep across the water.",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow many layers?<|eot_id|>",
        "print(greet(\"lens\"))  # 42 tokens, $19.99 in 2024",
    ],
    "qwen": [
        "The keeper watched the beam sweep across the water.",
        "<|im_start|>user\nHow many layers does the lens read?<|im_end|>\n",
        "print(greet(\"lens\"))  # 42 tokens, $19.99 in 2024",
    ],
    "harmony": [
        "The keeper watched the beam sweep across the water.",
        "<|start|>user<|message|>How many layers does the lens read?<|end|><|start|>assistant",
        "HTTPServer's don'T 12345 digits/path\n\n  café, 日本, 🦙",
    ],
    "gemma": [
        "The keeper watched the beam sweep across the water.",
        "<start_of_turn>user\nHow many layers does the lens read?<end_of_turn>\n",
        "  Leading spaces, café, naïve, 日本, 🦙 and 12345 digits.",
    ],
}


def training_text(recipe: str) -> str:
    # tiny-llama's text ends with a ChatML exchange; replace it with the family's own.
    base = TRAINING_TEXT.split("<|im_start|>")[0]
    return base + RECIPES[recipe]["chat"]


def _train_bpe(recipe: str) -> Tokenizer:
    r = RECIPES[recipe]
    split = {"llama3": LLAMA3_SPLIT, "harmony": O200K_SPLIT}.get(recipe, QWEN2_SPLIT)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=r["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([training_text(recipe)] * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def _train_sentencepiece(recipe: str) -> bytes:
    lines = training_text(recipe).split("\n") * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        control_symbols=["<mask>"],
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _sentencepiece_vocab_merges(sp: spm.SentencePieceProcessor):
    """The SentencePiece BPE model as a byte-fallback BPE vocabulary and merge list.

    SentencePiece merges the adjacent pair whose joined piece has the highest score
    (score = -rank); a BPE merge list ordered by the joined piece's rank does the same."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i):
            continue
        piece = sp.id_to_piece(i)
        if piece in RECIPES["gemma"]["specials"]:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((i, vocab[left], vocab[right], left, right))
    merges.sort()
    return vocab, [(left, right) for _, _, _, left, right in merges]


def _rewrite_tokenizer_config(out: Path, recipe: str) -> None:
    """transformers 5 leaves add_bos_token, add_eos_token and added_tokens_decoder out of
    tokenizer_config.json; the real families' files have them, and llama.cpp's converter
    reads them (added_tokens_decoder marks a SentencePiece vocabulary's special tokens as
    control tokens, which llama.cpp then matches in text when asked to parse specials)."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["add_bos_token"] = RECIPES[recipe]["add_bos_token"]
    cfg["add_eos_token"] = False
    added = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    cfg["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in added
    }
    if RECIPES[recipe]["bos"] is None:
        cfg["bos_token"] = None
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(out: Path, recipe: str) -> dict:
    """Write tokenizer.json, tokenizer_config.json (and tokenizer.model for Gemma) into
    `out`. Returns the special token ids: bos, eos (list), pad, and the full table."""
    r = RECIPES[recipe]
    out.mkdir(parents=True, exist_ok=True)
    if recipe == "gemma":
        blob = _train_sentencepiece(recipe)
        (out / "tokenizer.model").write_bytes(blob)
        sp = spm.SentencePieceProcessor(model_proto=blob)
        assert sp.get_piece_size() == VOCAB_SIZE
        for i, s in enumerate(r["specials"]):
            assert sp.id_to_piece(i) == s, (i, s)
        vocab, merges = _sentencepiece_vocab_merges(sp)
        hf = GemmaTokenizer(
            vocab=vocab,
            merges=merges,
            add_bos_token=True,
            add_eos_token=False,
            extra_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        )
    else:
        tok = _train_bpe(recipe)
        kwargs = {"eos_token": r["eos"][0], "add_bos_token": r["add_bos_token"]}
        if r["bos"] is not None:
            kwargs["bos_token"] = r["bos"]
        if r["pad"] is not None:
            kwargs["pad_token"] = r["pad"]
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    hf.save_pretrained(str(out))
    _rewrite_tokenizer_config(out, recipe)

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    table = {s: tok.token_to_id(s) for s in r["specials"]}
    assert list(table.values()) == list(range(len(table))), table
    if recipe == "gemma":
        check_sentencepiece_agrees(out)
    bos = r["bos"] or r.get("config_bos")
    return {
        "bos": table[bos],
        "eos": [table[e] for e in r["eos"]],
        "pad": table[r["pad"]] if r["pad"] else None,
        "table": table,
    }


def fuzz_texts(n: int, seed: int) -> list:
    """Deterministic texts for comparing two tokenizers: words, digits, spacing,
    accents, other scripts, emoji, and the Gemma chat markers."""
    import random

    rnd = random.Random(seed)
    pieces = [
        "the", " the", "keeper", " lens", "  ", "   ", "\n", "\n\n", "\t", "0", "12", "345",
        "café", "naïve", "日本語", "🦙", "👩‍💻", "Ω", "—", "'s", " don't", "$3.50", "{", "}",
        "<start_of_turn>", "<end_of_turn>", "ing", "tion", " a", "A", "Z", "\u00a0",
    ]
    out = []
    for _ in range(n):
        k = rnd.randint(1, 12)
        s = "".join(rnd.choice(pieces) for _ in range(k))
        if rnd.random() < 0.3:
            s += "".join(chr(rnd.randint(0x20, 0x2FFF)) for _ in range(rnd.randint(1, 6)))
        out.append(s)
    return out


def check_sentencepiece_agrees(out: Path) -> int:
    """tokenizer.json must tokenize exactly as tokenizer.model does (without BOS)."""
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = [training_text("gemma")] + EXAMPLES["gemma"] + fuzz_texts(400, 5)
    n = 0
    for t in texts:
        a = sp.encode(t)
        b = tok.encode(t, add_special_tokens=False).ids
        assert a == b, (t, a, b)
        n += len(a)
    return n


def tokenizer_examples(out: Path, recipe: str) -> list:
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    examples = []
    for text in EXAMPLES[recipe]:
        enc = tok.encode(text, add_special_tokens=True)
        plain = tok.encode(text, add_special_tokens=False)
        examples.append(
            {"text": text, "add_special_tokens": True, "ids": enc.ids, "tokens": enc.tokens,
             "ids_without_special": plain.ids}
        )
    return examples
