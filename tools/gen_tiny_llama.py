#!/usr/bin/env python3
"""Build the tiny random Llama test model and its forward-pass golden values.

Writes into testdata/tiny-llama/:
  config.json, model.safetensors   tiny LlamaForCausalLM (float32, HF tensor names)
  tokenizer.json                   small byte-level BPE tokenizer
  golden.safetensors               input ids, per-layer hidden states, normed, logits
  golden.json                      tokenizer examples and library versions

Everything is deterministic (fixed seeds, float32, CPU, eager attention).
Run with tools/.venv/bin/python tools/gen_tiny_llama.py
"""

import inspect
import os

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from golden_util import ROOT, TESTDATA, write_json

OUT = TESTDATA / "tiny-llama"

SEED = 20240611
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]
SEQ_LENGTHS = [7, 12, 1]

# Training text for the tokenizer. Written for this project; it only has to be
# varied enough for a few hundred byte-pair merges.
TRAINING_TEXT = """\
The lighthouse keeper climbed the spiral stairs every evening at dusk. She wiped
the salt from the glass, trimmed the wick, and watched the beam sweep across the
water. Ships passed in the night, and none of them ever knew her name.

In the morning the harbour smelled of tar and fresh bread. Fishermen argued about
the weather, the price of nets, and whether the old pier would survive another
winter. Children raced along the sea wall, counting gulls: one, two, three, four.

A transformer reads a sequence of tokens and writes a new vector for each one.
Every layer adds a little information to the residual stream. A lens looks at
that stream halfway through and asks: what would the model say if it stopped
here? The logit lens answers with the unembedding alone; the tuned lens first
applies a small learned affine map for each layer.

def greet(name):
    return "Hello, " + name + "!"

for i in range(10):
    print(i, i * i, greet("world"))

fn main() {
    let total: u64 = (1..=100).sum();
    println!("total = {}", total);
}

{"layer": 3, "top": [[42, 7.5], [17, 6.25]], "entropy": 1.875}

Numbers matter too: 0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 50 100 256 1024 2048.
Prices like $3.50 and $19.99, dates like 2024-06-11, times like 09:45.
Questions? Answers! Lists; colons: dashes - and underscores_in_names.

<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
The capital of France is Paris.<|im_end|>
"""

TOKENIZER_EXAMPLES = [
    "The keeper watched the beam sweep across the water.",
    "<|im_start|>user\nHow many layers does the lens read?<|im_end|>\n",
    "print(greet(\"lens\"))  # 42 tokens, $19.99",
]


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the text so that pair counts comfortably exceed min_frequency.
    tok.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    return tok


def build_model(vocab_size: int, bos_id: int, eos_id: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(cfg)

    # Re-initialise with larger weights than the HF default (std 0.02) so that
    # activations are O(1) and every block changes the residual stream visibly.
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight":
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    model.eval()
    return model


def run_sequence(model: LlamaForCausalLM, ids: torch.Tensor):
    """Return (hidden[0..L], normed, logits) for one unbatched sequence."""
    layers = model.model.layers
    captured = {}
    handles = []

    def pre_hook(idx):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            captured[idx] = h.detach()[0].clone()
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
    # Input of the final norm = output of the last block (before normalisation).
    handles.append(model.model.norm.register_forward_pre_hook(pre_hook(len(layers)), with_kwargs=True))

    def norm_out(module, args, output):
        captured["normed"] = output.detach()[0].clone()

    handles.append(model.model.norm.register_forward_hook(norm_out))
    try:
        with torch.no_grad():
            out = model(input_ids=ids[None, :], output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    hidden = [captured[i] for i in range(len(layers) + 1)]
    # Cross-check the hooks against output_hidden_states (entries 0..L-1 are
    # block inputs; HF's last entry is already normalised).
    hs = out.hidden_states
    for i in range(len(layers)):
        assert torch.equal(hs[i][0], hidden[i]), f"hidden {i} mismatch"
    assert torch.allclose(hs[-1][0], captured["normed"]), "final normed mismatch"
    assert not torch.allclose(hidden[-1], captured["normed"])
    logits = out.logits.detach()[0].clone()
    manual = model.lm_head(captured["normed"])
    assert torch.allclose(manual, logits, atol=1e-5)
    return hidden, captured["normed"], logits


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    tok = train_tokenizer()
    special_ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
    vocab_size = tok.get_vocab_size()
    assert vocab_size == VOCAB_SIZE, vocab_size
    tok.save(str(OUT / "tokenizer.json"))

    model = build_model(vocab_size, special_ids["<|im_start|>"], special_ids["<|im_end|>"])
    save_kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True
    model.save_pretrained(str(OUT), **save_kwargs)

    # Check the saved checkpoint: standard names, float32, identical values.
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        expected |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        expected |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    state = model.state_dict()
    with safe_open(str(OUT / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert names == expected, sorted(names ^ expected)
        for n in names:
            t = f.get_tensor(n)
            assert t.dtype == torch.float32, (n, t.dtype)
            assert torch.equal(t, state[n]), n

    # Golden sequences: random ids with a fixed generator, each run alone.
    gen = torch.Generator().manual_seed(SEED + 2)
    golden = {}
    summary = []
    for s, length in enumerate(SEQ_LENGTHS):
        ids = torch.randint(0, vocab_size, (length,), generator=gen, dtype=torch.int64)
        hidden, normed, logits = run_sequence(model, ids)
        golden[f"input_ids.{s}"] = ids.contiguous()
        for i, h in enumerate(hidden):
            golden[f"hidden.{s}.{i}"] = h.float().contiguous()
        golden[f"normed.{s}"] = normed.float().contiguous()
        golden[f"logits.{s}"] = logits.float().contiguous()
        rms = [float(h.pow(2).mean().sqrt()) for h in hidden]
        summary.append((s, length, [round(r, 3) for r in rms], float(logits.std())))
    save_file(golden, str(OUT / "golden.safetensors"), metadata={"format": "pt"})

    examples = []
    for text in TOKENIZER_EXAMPLES:
        enc = tok.encode(text)
        assert tok.decode(enc.ids, skip_special_tokens=False) == text
        examples.append({"text": text, "ids": enc.ids, "tokens": enc.tokens})
    meta = {
        "model": "tiny-llama (random weights)",
        "seed": SEED,
        "special_tokens": special_ids,
        "sequence_lengths": SEQ_LENGTHS,
        "hidden_note": "hidden.{s}.{i}: i=0 embedding output, i=1..L-1 inputs of blocks 1..L-1, "
        "i=L output of the last block before the final norm",
        "tokenizer": examples,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
    }
    write_json(OUT / "golden.json", meta)

    for s, length, rms, lstd in summary:
        print(f"seq {s}: T={length} hidden rms per layer {rms} logits std {lstd:.3f}")
    for p in sorted(OUT.iterdir()):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
