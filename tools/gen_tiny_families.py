#!/usr/bin/env python3
"""Build tiny random models of the families lensd's engine supports, with golden values.

For each family in FAMILIES this writes testdata/<name>/:
  config.json, generation_config.json          as transformers 5.24 writes them
  model-0000k-of-0000n.safetensors, model.safetensors.index.json   (f32, sharded)
  tokenizer.json, tokenizer_config.json        (+ tokenizer.model for Gemma)
  golden.safetensors       input_ids.{s}, hidden.{s}.{i} (i = 0..L), normed.{s}, logits.{s}
  bf16/                    the same model with every weight in bf16 (one shard)
  golden_bf16.safetensors  the same keys, computed in f32 from the bf16 weights
  model.gguf               the f32 model converted by llama.cpp's convert_hf_to_gguf.py
  golden_gguf.safetensors  (Gemma only) the same keys with query_pre_attn_scalar = head_dim,
                           the attention scale llama.cpp uses, since GGUF cannot carry it
  golden.json              config highlights, sliding layers, rope frequencies, GGUF
                           metadata and tensor names, tokenizer examples, checks, versions
and for tiny-gemma2 also a tuned lens (family_tuned_lens.py).

Everything runs in float32 on the CPU with eager attention, one thread, fixed seeds and
deterministic algorithms; a rerun writes byte-identical files. Every golden file is
checked against an independent float64 NumPy forward pass (family_reference.py).

Run with tools/.venv/bin/python tools/gen_tiny_families.py [name ...]
"""

import copy
import json
import os
import shutil
import sys
import time

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import family_gguf
import family_tuned_lens
import family_reference as ref
import family_tokenizers as ftok
from golden_util import ROOT, TESTDATA, write_json

SEQ_LENGTHS = [7, 12, 1, 20]
SEED = 20250301

ARCHS = {
    "LlamaForCausalLM": (LlamaConfig, LlamaForCausalLM),
    "Qwen2ForCausalLM": (Qwen2Config, Qwen2ForCausalLM),
    "Qwen3ForCausalLM": (Qwen3Config, Qwen3ForCausalLM),
    "Gemma2ForCausalLM": (Gemma2Config, Gemma2ForCausalLM),
    "Gemma3ForCausalLM": (Gemma3TextConfig, Gemma3ForCausalLM),
}

# Standard deviations of the random weights. Larger than transformers' 0.02 so that
# activations are O(1) and every feature (rope scaling, biases, norms, soft-caps, the
# window) moves the numbers visibly. Gemma norm weights are the w of (1 + w).
STD = {"norm": 0.1, "embed": 0.3, "head": 0.25, "qk": 0.15, "bias": 0.3, "weight": 0.15}

LLAMA3_COMMON = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 256,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}

FAMILIES = {
    # Llama-3.1-style rope: with head_dim 16 and theta 1e4 the wavelengths 2π·θ^(2i/16) are
    # 6.3, 19.9, 62.8, 199, ... ; original_max_position_embeddings 64 with low/high
    # frequency factors 1 and 4 puts the band edges at 64 and 16: frequency 0 untouched,
    # 1 and 2 interpolated, 3..7 divided by the factor.
    "tiny-llama3": {
        "arch": "LlamaForCausalLM",
        "tokenizer": "llama3",
        "seed": SEED + 10,
        "config": {
            **LLAMA3_COMMON,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    },
    # The same weights as tiny-llama3 (plus its own random lm_head), linear rope factor 2.
    "tiny-llama3-linear": {
        "arch": "LlamaForCausalLM",
        "tokenizer": "llama3",
        "seed": SEED + 10,
        "same_weights_as": "tiny-llama3",
        "config": {
            **LLAMA3_COMMON,
            "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        },
    },
    "tiny-qwen2": {
        "arch": "Qwen2ForCausalLM",
        "tokenizer": "qwen",
        "seed": SEED + 20,
        "config": {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 256,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "sliding_window": 4,  # ignored: use_sliding_window is false (config.json: null)
            "max_window_layers": 3,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    },
    "tiny-qwen3": {
        "arch": "Qwen3ForCausalLM",
        "tokenizer": "qwen",
        "seed": SEED + 30,
        "std": {"norm": 0.3},
        "config": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,  # hidden / heads = 12
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 256,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_bias": False,
            "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    },
    "tiny-gemma2": {
        "arch": "Gemma2ForCausalLM",
        "tokenizer": "gemma",
        "seed": SEED + 40,
        "bos_first": True,
        "std": {"norm": 0.3, "embed": 0.4, "qk": 0.35},
        "config": {
            "hidden_size": 48,  # √48 = 6.93 (not an integer) scales the embeddings
            "intermediate_size": 96,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,
            "query_pre_attn_scalar": 24,
            "sliding_window": 4,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 8.0,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
    "tiny-gemma3": {
        "arch": "Gemma3ForCausalLM",
        "tokenizer": "gemma",
        "seed": SEED + 50,
        "bos_first": True,
        "std": {"norm": 0.3, "embed": 0.5},
        "config": {
            "hidden_size": 48,
            "intermediate_size": 40,  # not 48: keeps the MLP matrices non-square
            "num_hidden_layers": 7,  # sliding 0-4, global 5, sliding 6
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,
            "query_pre_attn_scalar": 24,
            "sliding_window": 4,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
    },
}


def make_model(spec: dict, special: dict, overrides=None):
    cfg_cls, model_cls = ARCHS[spec["arch"]]
    kwargs = copy.deepcopy(spec["config"])
    kwargs.update(overrides or {})
    eos = special["eos"]
    cfg = cfg_cls(
        vocab_size=ftok.VOCAB_SIZE,
        bos_token_id=special["bos"],
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=special["pad"],
        **kwargs,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(spec["seed"])
    model = model_cls(cfg)
    model.eval()
    return model


def init_weights(model, spec: dict, gemma: bool) -> None:
    std = {**STD, **spec.get("std", {})}
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(std["norm"] * noise if gemma else 1.0 + std["norm"] * noise)
            elif name == "model.embed_tokens.weight":
                p.copy_(std["embed"] * noise)
            elif name == "lm_head.weight":
                p.copy_(std["head"] * noise)
            elif name.endswith(".bias"):
                p.copy_(std["bias"] * noise)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(std["qk"] * noise)
            else:
                p.copy_(std["weight"] * noise)


def copy_weights(dst, src, spec: dict) -> None:
    """dst gets src's tensors; an lm_head that src lacks (tied) gets its own noise."""
    src_state = {k: v for k, v in src.named_parameters()}
    gen = torch.Generator().manual_seed(spec["seed"] + 2)
    with torch.no_grad():
        for name, p in sorted(dst.named_parameters()):
            if name in src_state:
                p.copy_(src_state[name])
            else:
                assert name == "lm_head.weight", name
                p.copy_(STD["head"] * torch.randn(p.shape, generator=gen))


def final_softcap(model, logits):
    cap = getattr(model.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def run_sequence(model, ids: torch.Tensor):
    """(hidden[0..L], normed, logits) of one unbatched sequence."""
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
    hs = out.hidden_states
    assert len(hs) == len(layers) + 1, len(hs)
    for i in range(len(layers)):
        assert torch.equal(hs[i][0], hidden[i]), f"hidden {i} differs from output_hidden_states"
    assert torch.allclose(hs[-1][0], captured["normed"]), "final normed mismatch"
    assert not torch.allclose(hidden[-1], captured["normed"])
    logits = out.logits.detach()[0].clone()
    with torch.no_grad():
        manual = final_softcap(model, model.lm_head(captured["normed"]))
    assert torch.allclose(manual, logits, atol=1e-5)
    return hidden, captured["normed"], logits


def golden_ids(spec: dict, special: dict, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for length in SEQ_LENGTHS:
        ids = torch.randint(0, ftok.VOCAB_SIZE, (length,), generator=gen, dtype=torch.int64)
        if spec.get("bos_first"):
            ids[0] = special["bos"]
        seqs.append(ids)
    return seqs


def compute_goldens(model, seqs) -> dict:
    golden = {}
    for s, ids in enumerate(seqs):
        hidden, normed, logits = run_sequence(model, ids)
        golden[f"input_ids.{s}"] = ids.contiguous()
        for i, h in enumerate(hidden):
            golden[f"hidden.{s}.{i}"] = h.float().contiguous()
        golden[f"normed.{s}"] = normed.float().contiguous()
        golden[f"logits.{s}"] = logits.float().contiguous()
    return golden


def save_golden(golden: dict, path, note: str) -> None:
    # One metadata entry only: safetensors does not keep the order of several.
    save_file(golden, str(path), metadata={"note": note})


def compare_reference(cfg: dict, tensors: dict, golden: dict, n_layers: int) -> dict:
    """Largest |float32 golden - float64 reference| per quantity, over all sequences."""
    worst = {"hidden": 0.0, "normed": 0.0, "logits": 0.0}
    stats = None
    for s in range(len(SEQ_LENGTHS)):
        ids = golden[f"input_ids.{s}"].numpy()
        hidden, normed, logits, st = ref.forward(cfg, tensors, ids)
        if s == len(SEQ_LENGTHS) - 1:
            stats = st
        for i in range(n_layers + 1):
            d = np.abs(golden[f"hidden.{s}.{i}"].double().numpy() - hidden[i]).max()
            worst["hidden"] = max(worst["hidden"], float(d))
        worst["normed"] = max(worst["normed"], float(np.abs(golden[f"normed.{s}"].double().numpy() - normed).max()))
        worst["logits"] = max(worst["logits"], float(np.abs(golden[f"logits.{s}"].double().numpy() - logits).max()))
    return {"max_abs_deviation": worst, "stats": stats}


def check_window(spec, special, model, golden) -> dict:
    """The sliding window must matter: the same weights with a huge window give other
    logits for every sequence longer than the window, the same for the others."""
    window = model.config.sliding_window
    big = make_model(spec, special, {"sliding_window": 10**6})
    big.load_state_dict(model.state_dict())
    diffs = {}
    for s, length in enumerate(SEQ_LENGTHS):
        _, _, logits = run_sequence(big, golden[f"input_ids.{s}"])
        d = float((logits - golden[f"logits.{s}"]).abs().max())
        diffs[str(length)] = d
        if length > window:
            assert d > 1e-2, f"window {window} does not change seq of length {length}: {d}"
        else:
            assert d < 1e-5, (length, d)
    return diffs


def shard_size(model) -> int:
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return total // 2 + 1


def save_checkpoint(model, out, tok_dir, max_shard) -> list:
    model.save_pretrained(str(out), max_shard_size=max_shard)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        if (tok_dir / name).exists() and tok_dir != out:
            shutil.copyfile(tok_dir / name, out / name)
    return sorted(p.name for p in out.glob("model*.safetensors"))


def check_saved(model, out, shards) -> None:
    """The shards hold exactly the model's tensors (tied head omitted), in float32."""
    state = model.state_dict()
    names = set()
    for f in shards:
        with safe_open(str(out / f), "pt") as fh:
            for n in fh.keys():
                t = fh.get_tensor(n)
                assert t.dtype == torch.float32, (n, t.dtype)
                assert torch.equal(t, state[n]), n
                names.add(n)
    expected = set(state) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    assert names == expected, sorted(names ^ expected)


def rope_frequencies(model) -> dict:
    """inv_freq as transformers computed it, per layer type where the family has several."""
    rot = model.model.rotary_emb
    if hasattr(rot, "inv_freq"):
        return {"all": [float(x) for x in rot.inv_freq]}
    return {t: [float(x) for x in getattr(rot, f"{t}_inv_freq")] for t in rot.layer_types}


def config_highlights(out) -> dict:
    cfg = json.loads((out / "config.json").read_text())
    keys = [
        "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps",
        "tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta",
        "rope_local_base_freq", "layer_types", "sliding_window", "sliding_window_pattern",
        "use_sliding_window", "max_window_layers", "query_pre_attn_scalar",
        "attn_logit_softcapping", "final_logit_softcapping", "hidden_act", "hidden_activation",
        "attention_bias", "bos_token_id", "eos_token_id", "pad_token_id", "dtype",
    ]
    return {k: cfg[k] for k in keys if k in cfg}


def versions() -> dict:
    from importlib.metadata import version

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "gguf": version("gguf"),
        "sentencepiece": version("sentencepiece"),
        "numpy": np.__version__,
        "llama-cpp-python (converter source)": family_gguf.LLAMA_CPP_PYTHON,
    }


def write_bf16(spec, out, model, seqs, golden, cfg_json) -> dict:
    """bf16/ and golden_bf16.safetensors: bf16 weights, f32 arithmetic."""
    bf16_dir = out / "bf16"
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    save_checkpoint(model_bf16, bf16_dir, out, "1GB")
    _, model_cls = ARCHS[spec["arch"]]
    widened = model_cls.from_pretrained(str(bf16_dir), dtype=torch.float32, attn_implementation="eager")
    widened.eval()
    for (n, a), (_, b) in zip(sorted(widened.state_dict().items()), sorted(model.state_dict().items())):
        assert torch.equal(a, b.to(torch.bfloat16).float()), n
    golden_bf16 = compute_goldens(widened, seqs)
    save_golden(golden_bf16, out / "golden_bf16.safetensors", f"{out.name} bf16 weights, f32 arithmetic")
    n_layers = model.config.num_hidden_layers
    checks = {"float64_bf16": compare_reference(cfg_json, ref.bf16_rounded(bf16_dir), golden_bf16, n_layers)}
    assert checks["float64_bf16"]["max_abs_deviation"]["logits"] < 1e-4, checks
    checks["bf16_vs_f32_max_abs_logit_diff"] = max(
        float((golden_bf16[f"logits.{s}"] - golden[f"logits.{s}"]).abs().max()) for s in range(len(seqs))
    )
    return checks


def write_gguf(spec, special, out, llama_cpp, model, seqs, golden, cfg_json, tensors):
    """model.gguf (llama.cpp's converter), its checks, and for Gemma the golden values
    it can reproduce: GGUF has no query_pre_attn_scalar, llama.cpp uses head_dim."""
    recipe = spec["tokenizer"]
    family_gguf.convert(llama_cpp, out, out / "model.gguf", ftok.RECIPES[recipe]["gguf_pre"])
    checks, golden_gguf = {}, None
    if recipe == "gemma":
        hd = model.config.head_dim
        plain = make_model(spec, special, {"query_pre_attn_scalar": hd})
        plain.load_state_dict(model.state_dict())
        golden_gguf = compute_goldens(plain, seqs)
        save_golden(golden_gguf, out / "golden_gguf.safetensors", f"{out.name} with query_pre_attn_scalar = head_dim = {hd}")
        cfg_plain = {**cfg_json, "query_pre_attn_scalar": hd}
        checks["float64_gguf"] = compare_reference(cfg_plain, tensors, golden_gguf, model.config.num_hidden_layers)
        assert checks["float64_gguf"]["max_abs_deviation"]["logits"] < 1e-4, checks
        checks["gguf_vs_golden_max_abs_logit_diff"] = max(
            float((golden_gguf[f"logits.{s}"] - golden[f"logits.{s}"]).abs().max()) for s in range(len(seqs))
        )
    info = family_gguf.check_file(out / "model.gguf", model, tensors, recipe)
    checks["llama_cpp"] = family_gguf.llama_cpp_check(
        out / "model.gguf", golden_gguf or golden, ftok.tokenizer_examples(out, recipe)
    )
    return golden_gguf, checks, info


def build_family(name: str, spec: dict, llama_cpp, built: dict) -> dict:
    t0 = time.time()
    out = TESTDATA / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    recipe = spec["tokenizer"]
    special = ftok.write_tokenizer(out, recipe)
    gemma = recipe == "gemma"

    model = make_model(spec, special)
    if "same_weights_as" in spec:
        copy_weights(model, built[spec["same_weights_as"]], spec)
    else:
        init_weights(model, spec, gemma)
    built[name] = model
    n_layers = model.config.num_hidden_layers

    shards = save_checkpoint(model, out, out, shard_size(model))
    shards = [s for s in shards if s != "model.safetensors"]
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").exists(), shards
    check_saved(model, out, shards)
    cfg_json, tensors = ref.load_checkpoint(out)

    lens_info = None
    if name == "tiny-gemma2":
        lens_info = family_tuned_lens.train_and_save(model, out)
    seq_seed, seqs = SEED + 2, None
    for attempt in range(200):
        seqs = golden_ids(spec, special, seq_seed + attempt)
        golden = compute_goldens(model, seqs)
        if lens_info is None or family_tuned_lens.separated(model, out, golden):
            seq_seed += attempt
            break
    else:
        raise SystemExit("no golden sequences with separated top-5 lens probabilities")
    save_golden(golden, out / "golden.safetensors", f"{name} f32, transformers {transformers.__version__}")
    checks = {"float64": compare_reference(cfg_json, tensors, golden, n_layers)}
    assert checks["float64"]["max_abs_deviation"]["logits"] < 1e-4, checks
    longest = golden[f"input_ids.{len(SEQ_LENGTHS) - 1}"].numpy()
    checks["feature_ablations_max_abs_logit_change"] = ref.ablations(cfg_json, tensors, longest)
    for feature, change in checks["feature_ablations_max_abs_logit_change"].items():
        assert change > 0.05, f"{name}: switching off {feature} changes the logits by only {change}"
    if model.config.to_dict().get("sliding_window") and "sliding_attention" in model.config.layer_types:
        checks["logits_change_with_huge_window"] = check_window(spec, special, model, golden)
    if lens_info is not None:
        lens_info.update(family_tuned_lens.write_golden(model, out, golden))

    checks.update(write_bf16(spec, out, model, seqs, golden, cfg_json))
    _, gguf_checks, gguf_info = write_gguf(spec, special, out, llama_cpp, model, seqs, golden, cfg_json, tensors)
    checks.update(gguf_checks)

    meta = {
        "model": f"{name} (random weights)",
        "architecture": spec["arch"],
        "seed": spec["seed"],
        "golden_sequence_seed": seq_seed,
        "sequence_lengths": SEQ_LENGTHS,
        "bos_first": bool(spec.get("bos_first")),
        "special_tokens": special["table"],
        "config": config_highlights(out),
        "layer_types": list(getattr(model.config, "layer_types", None) or ["full_attention"] * n_layers),
        "sliding_layers": [
            i for i, t in enumerate(getattr(model.config, "layer_types", None) or []) if t == "sliding_attention"
        ],
        "rope_inv_freq": rope_frequencies(model),
        "shards": shards,
        "hidden_note": "hidden.{s}.{i}: i < L the residual stream entering block i (i = 0: the "
        "embeddings, times sqrt(hidden_size) for Gemma); i = L the last block's output before "
        "the final norm. logits after the final soft-cap where the family has one.",
        "checks": significant(checks),
        "gguf": gguf_info,
        "tokenizer": ftok.tokenizer_examples(out, recipe),
        "versions": versions(),
    }
    rp = model.config.rope_parameters
    if rp.get("rope_type") == "llama3":
        meta["llama3_rope_bands"] = ref.rope_bands(rp, model.config.hidden_size // model.config.num_attention_heads)
    if lens_info is not None:
        meta["tuned_lens"] = significant(lens_info)
    write_json(out / "golden.json", meta)
    return {"seconds": time.time() - t0, "bytes": folder_bytes(out)}


def significant(obj, digits=3):
    """Diagnostic numbers rounded, so that golden.json does not change with the last bits
    of another machine's float64 or llama.cpp arithmetic."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: significant(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [significant(v, digits) for v in obj]
    return obj


def folder_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(FAMILIES)
    for n in names:
        if n not in FAMILIES:
            raise SystemExit(f"unknown family {n}; choose from {', '.join(FAMILIES)}")
        dep = FAMILIES[n].get("same_weights_as")
        if dep and dep not in names:
            names.insert(names.index(n), dep)
    built, report = {}, {}
    with family_gguf.LlamaCppSource() as llama_cpp:
        for n in names:
            report[n] = build_family(n, FAMILIES[n], llama_cpp, built)
            print(f"{n}: {report[n]['bytes'] / 1e6:.2f} MB in {report[n]['seconds']:.1f} s", flush=True)
    for n, r in report.items():
        out = TESTDATA / n
        print(f"{out.relative_to(ROOT)}: {r['bytes']} bytes")
        meta = json.loads((out / "golden.json").read_text())
        print("  checks:", json.dumps(meta["checks"]))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
