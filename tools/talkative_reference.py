#!/usr/bin/env python3
"""Reference implementation of the talkative lens (docs/talkative.md) and its golden files.

Builds a random talkative lens and a random LoRA donor for the tiny llama in
testdata/tiny-llama, runs the algorithm of docs/talkative.md ("The algorithm") with PyTorch,
Hugging Face transformers and peft, and writes testdata/talkative/:

  lens/{talkative.json, lens.safetensors}         the lens, as the spec's artifact
  donor/{adapter_config.json, adapter_model.safetensors}
                                                  a PEFT LoRA adapter (r 4, q/v/down_proj)
  golden.json                                     rows of both cases, encoder scores, tolerances
  golden.safetensors                              activations and reconstructions per case
  original/checkpoint.pt                          the same lens in the original training
                                                  code's checkpoint layout (torch.save)
  original/malicious.pt                           a torch-zip file whose pickle calls
                                                  posix.system (hand-made, never loaded)
  variants/*.pt, variants/bf16_expected.safetensors
                                                  small checkpoints for the converter's tests

Everything is deterministic (fixed seeds, float32, CPU, eager attention, one thread).
Run with tools/.venv/bin/python tools/talkative_reference.py
"""

import hashlib
import io
import json
import math
import os
import struct
import warnings
import zipfile

import numpy as np
import peft
import tokenizers
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

import convert_talkative as conv
from golden_util import ROOT, TESTDATA, sha256_file, write_json

TINY = TESTDATA / "tiny-llama"
OUT = TESTDATA / "talkative"

SEED = 20250807
TEXT = "Every layer adds a little to the residual stream."

# The lens (docs/talkative.md "The artifact").
LAYER = 0
T_TEXT = 6
ADD_CURRENT_TOKEN = True
P = 2  # decoder.patched_layers
OUTPUT_LAYER = 1  # encoder.output_layer
N_L, N_R = 3, 2  # decoder soft prompt rows left and right of the placeholder
N_P, N_Q = 4, 2  # encoder soft prompt rows before and after the explanation
DECODER_PROMPT = "Short explanation of <embed>:"
ENCODER_PROMPT = "Summary of the text:<text>"
BASE = {"name": "tiny-llama", "d_model": 64, "n_layers": 3, "vocab_size": 512}
SOURCE = {"converted_from": "checkpoint.pt", "step": 1000}

# The donor (docs/talkative.md "Donors").
LORA_R = 4
LORA_ALPHA = 8
LORA_TARGETS = ["q_proj", "v_proj", "down_proj"]
LORA_STD = 0.12  # std of A and B; s * B A then has std 2 * 2 * 0.12^2 ~ 0.06 vs 0.15 for W

ENCODER_SCORE_POSITIONS = [0, 9, 18]
ENCODER_SCORE_LISTS = 2

# Tolerances for the Rust tests, explained in tools/README.md ("talkative/").
TOLERANCES = {
    "margin_min": 1e-3,
    "activation_abs": 1e-4,
    "reconstruction_abs": 2e-4,
    "mse_rel": 1e-4,
    "relative_rmse_rel": 1e-4,
    "salience_abs": 1e-4,
    "kl_abs": 1e-4,
    "kl_rel": 1e-4,
}

MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
                 "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


# ---- models ---------------------------------------------------------------------------------


def load_base(dtype=torch.float32):
    model = LlamaForCausalLM.from_pretrained(str(TINY), attn_implementation="eager",
                                             dtype=torch.float32)
    model = model.to(dtype)
    model.eval()
    return model


def block_out(out):
    return out[0] if isinstance(out, tuple) else out


def run_with_activations(model, layers, ids, patch=None):
    """Forward over ids; return (output of block LAYER [s, d], logits [s, V]).
    patch=(p, vec) replaces row p of block LAYER's output by vec."""
    captured = {}

    def hook(module, args, out):
        h = block_out(out)
        if patch is not None:
            h = h.clone()
            h[0, patch[0]] = patch[1]
        captured["a"] = h.detach()[0].clone()
        if patch is not None:
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        return None

    handle = layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(input_ids=ids[None, :], use_cache=False)
    finally:
        handle.remove()
    return captured["a"], out.logits.detach()[0].clone()


# ---- the lens -------------------------------------------------------------------------------


def make_lens(d, emb_std, dtype=torch.float32):
    """Random lens tensors with the artifact's names."""
    gen = torch.Generator().manual_seed(SEED)
    eye = torch.eye(d)

    def near_identity():
        return eye + 0.3 * torch.randn(d, d, generator=gen) / math.sqrt(d)

    t = {
        "decoder.proj_weight": torch.stack([near_identity() for _ in range(P)]),
        "decoder.proj_bias": 0.02 * torch.randn(P, d, generator=gen),
        "decoder.prompt_left_emb": emb_std * torch.randn(N_L, d, generator=gen),
        "decoder.prompt_right_emb": emb_std * torch.randn(N_R, d, generator=gen),
        "encoder.proj.weight": near_identity(),
        "encoder.proj.bias": 0.02 * torch.randn(d, generator=gen),
        "encoder.soft_prompt_embeddings": emb_std * torch.randn(N_P, d, generator=gen),
        "encoder.soft_prompt_embeddings_postfix": emb_std * torch.randn(N_Q, d, generator=gen),
        "encoder.special_last_token_vector": 0.02 * torch.randn(d, generator=gen),
    }
    return {k: v.to(dtype).contiguous() for k, v in t.items()}


def to_conv_tensor(t):
    dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[t.dtype]
    arr = t.contiguous().view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 \
        else t.contiguous().numpy()
    return conv.Tensor(dtype, arr.copy())


def write_lens(lens):
    out = OUT / "lens"
    fields = dict(
        layer=LAYER, t_text=T_TEXT, add_current_token=ADD_CURRENT_TOKEN, patched_layers=P,
        decoder_prompt=DECODER_PROMPT, output_layer=OUTPUT_LAYER, encoder_prompt=ENCODER_PROMPT,
        dtype="f32", base=BASE, source=SOURCE,
    )
    manifest = conv.write_artifact(out, fields, {k: to_conv_tensor(v) for k, v in lens.items()})
    # Check the file with the safetensors package (our writer is in convert_talkative.py).
    assert manifest["content_sha256"] == sha256_file(out / "lens.safetensors")
    with safe_open(str(out / "lens.safetensors"), "pt") as f:
        assert set(f.keys()) == set(lens), sorted(f.keys())
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), lens[k]), k


def decoder_inputs(lens, a):
    projs = [lens["decoder.proj_weight"][i] @ a + lens["decoder.proj_bias"][i] for i in range(P)]
    x = torch.cat([lens["decoder.prompt_left_emb"], projs[0][None], lens["decoder.prompt_right_emb"]])
    return x, projs


def install_patch_hooks(model, projs, state):
    """Pre-hooks on blocks i < P: while state["patch"], row N_L of the residual entering
    block i is replaced by proj_i(a)."""
    handles = []
    for i in range(P):
        def hook(module, args, kwargs, i=i):
            if not state["patch"]:
                return None
            if args:
                h = args[0].clone()
                h[0, N_L] = projs[i]
                return (h,) + tuple(args[1:]), kwargs
            h = kwargs["hidden_states"].clone()
            h[0, N_L] = projs[i]
            kwargs = dict(kwargs, hidden_states=h)
            return args, kwargs
        handles.append(model.model.layers[i].register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def decode(model, lens, a, forced=None):
    """Greedy decoding of T_TEXT tokens with a KV cache. Returns (ids, margins, step logits).
    forced: feed these ids instead of the argmax (to score another dtype on the same path)."""
    emb = model.model.embed_tokens.weight
    x, projs = decoder_inputs(lens, a)
    state = {"patch": True}
    handles = install_patch_hooks(model, projs, state)
    ids, margins, step_logits = [], [], []
    try:
        with torch.no_grad():
            out = model(inputs_embeds=x[None], use_cache=True)
            state["patch"] = False
            cache = out.cache
            for step in range(T_TEXT):
                logits = out.logits[0, -1]
                top = torch.topk(logits, 2)
                best = int(torch.argmax(logits))  # the first (lowest id) maximum
                margins.append(float(top.values[0] - top.values[1]))
                step_logits.append(logits.clone())
                tok = best if forced is None else forced[step]
                ids.append(tok)
                if step + 1 < T_TEXT:
                    out = model(inputs_embeds=emb[tok][None, None], cache=cache, use_cache=True)
                    cache = out.cache
    finally:
        for h in handles:
            h.remove()
    return ids, margins, step_logits


def decode_without_cache(model, lens, a, ids):
    """The same logits from one pass over [prompt; E(ids[:-1])] (checks the cached path)."""
    emb = model.model.embed_tokens.weight
    x, projs = decoder_inputs(lens, a)
    x = torch.cat([x, emb[torch.tensor(ids[:-1], dtype=torch.long)]])
    state = {"patch": True}
    handles = install_patch_hooks(model, projs, state)
    try:
        with torch.no_grad():
            out = model(inputs_embeds=x[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    m = N_L + 1 + N_R
    return out.logits[0, m - 1:]


class _Stop(Exception):
    def __init__(self, h):
        self.h = h


def encoder_inputs(model, lens, expl_ids, current):
    emb = model.model.embed_tokens.weight
    parts = [lens["encoder.soft_prompt_embeddings"], emb[torch.tensor(expl_ids, dtype=torch.long)],
             lens["encoder.soft_prompt_embeddings_postfix"]]
    if ADD_CURRENT_TOKEN:
        parts.append(emb[current][None])
    x = torch.cat(parts).clone()
    x[-1] = x[-1] + lens["encoder.special_last_token_vector"]
    return x


def encode(model, lens, expl_ids, current, full=False):
    """Â for one explanation. Blocks after OUTPUT_LAYER are not run (a hook raises after it);
    full=True runs the whole model instead and reads the same block's output."""
    x = encoder_inputs(model, lens, expl_ids, current)
    captured = {}

    def hook(module, args, out):
        h = block_out(out).detach()[0, -1].clone()
        if full:
            captured["h"] = h
            return None
        raise _Stop(h)

    handle = model.model.layers[OUTPUT_LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.model(inputs_embeds=x[None], use_cache=False)
        h = captured["h"]
    except _Stop as stop:
        h = stop.h
    finally:
        handle.remove()
    return lens["encoder.proj.weight"] @ h + lens["encoder.proj.bias"]


def scores(a, a_hat):
    a = a.double()
    diff = a - a_hat.double()
    mse = float((diff * diff).mean())
    rel = math.sqrt(mse) / math.sqrt(float((a * a).mean()))
    return mse, rel


def kl_divergence(logits_p, logits_q):
    lp = torch.log_softmax(logits_p.double(), -1)
    lq = torch.log_softmax(logits_q.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


# ---- the donor ------------------------------------------------------------------------------


def make_donor(model):
    """Random LoRA tensors named as PEFT saves them; B is random (not PEFT's zero init)."""
    gen = torch.Generator().manual_seed(SEED + 10)
    tensors = {}
    for i, layer in enumerate(model.model.layers):
        for name in LORA_TARGETS:
            parent = MODULE_PARENT[name]
            lin = getattr(getattr(layer, parent), name)
            prefix = f"base_model.model.model.layers.{i}.{parent}.{name}"
            tensors[prefix + ".lora_A.weight"] = LORA_STD * torch.randn(
                LORA_R, lin.in_features, generator=gen)
            tensors[prefix + ".lora_B.weight"] = LORA_STD * torch.randn(
                lin.out_features, LORA_R, generator=gen)
    return tensors


def write_donor(tensors):
    out = OUT / "donor"
    out.mkdir(parents=True, exist_ok=True)
    cfg = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS,
                     lora_dropout=0.0, bias="none", use_rslora=False, task_type="CAUSAL_LM",
                     base_model_name_or_path="tiny-llama").to_dict()
    # PEFT's own save_pretrained writes target_modules in set order, which is not stable.
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def load_donor_model(donor_dir, tensors, dtype=torch.float32):
    """The base with the donor applied by peft; checks that peft took every tensor."""
    base = load_base()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(donor_dir))
    for w in caught:
        msg = str(w.message).lower()
        assert "missing" not in msg and "unexpected" not in msg, w.message
    model.eval()
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    assert set(state) == set(tensors), sorted(set(state) ^ set(tensors))
    for k, v in tensors.items():
        assert torch.equal(state[k], v), k
    n_lora = 0
    for name, module in model.named_modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict) and module.scaling:
            assert module.scaling["default"] == LORA_ALPHA / LORA_R, (name, module.scaling)
            n_lora += 1
    assert n_lora == len(tensors) // 2, n_lora
    model = model.to(dtype)
    return model, model.get_base_model().model.layers


def merged_donor_model(tensors):
    """W' = W + (alpha / r) B A written into a plain copy of the base (checks peft's reading
    of the format against the spec's formula)."""
    model = load_base()
    s = LORA_ALPHA / LORA_R
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for name in LORA_TARGETS:
                parent = MODULE_PARENT[name]
                prefix = f"base_model.model.model.layers.{i}.{parent}.{name}"
                lin = getattr(getattr(layer, parent), name)
                lin.weight += s * tensors[prefix + ".lora_B.weight"] @ tensors[prefix + ".lora_A.weight"]
    return model


# ---- one case -------------------------------------------------------------------------------


def explain(case, act_model, act_layers, base_model, lens, ids, tok, space_id, forced=None):
    """All rows of one case. act_model computes activations and KL (donor when the case has
    one); base_model runs the decoder and encoder."""
    acts, clean_logits = run_with_activations(act_model, act_layers, ids)
    rows, recons, extra = [], [], {"cache_diff": 0.0, "step_logits": []}
    for p in range(ids.shape[0]):
        a = acts[p]
        expl, margins, step_logits = decode(base_model, lens, a,
                                            forced=None if forced is None else forced[p])
        extra["step_logits"].append(torch.stack(step_logits))
        if forced is None:
            nocache = decode_without_cache(base_model, lens, a, expl)
            extra["cache_diff"] = max(extra["cache_diff"],
                                      float((nocache - torch.stack(step_logits)).abs().max()))
        cur = int(ids[p])
        a_hat = encode(base_model, lens, expl, cur)
        mse, rel = scores(a, a_hat)
        salience = []
        for j in range(T_TEXT):
            swapped = list(expl)
            swapped[j] = space_id
            mse_j, _ = scores(a, encode(base_model, lens, swapped, cur))
            salience.append((mse_j - mse) / mse)
        _, patched_logits = run_with_activations(act_model, act_layers, ids, patch=(p, a_hat))
        kl = kl_divergence(clean_logits[p], patched_logits[p])
        structured = [tok.decode([e], skip_special_tokens=False) for e in expl]
        # As the original analyzer: the tokens decoded together, then the current token.
        explanation = tok.decode(expl, skip_special_tokens=False)
        if ADD_CURRENT_TOKEN:
            structured.append("[" + tok.decode([cur], skip_special_tokens=False) + "]")
            explanation += structured[-1]
        rows.append({
            "position": p,
            "token_id": cur,
            "explanation_ids": expl,
            "decoder_margins": margins,
            "mse": mse,
            "relative_rmse": rel,
            "token_salience": salience,
            "kl_divergence": kl,
            "explanation_structured": structured,
            "explanation": explanation,
        })
        recons.append(a_hat)
    return rows, acts, torch.stack(recons), extra


# ---- original checkpoints for the converter -------------------------------------------------


class OrigDecoder(torch.nn.Module):
    """The decoder's state-dict layout in the original training code."""

    def __init__(self, t, prompt_ids):
        super().__init__()
        self.proj_weight = torch.nn.Parameter(t["decoder.proj_weight"].clone())
        self.proj_bias = torch.nn.Parameter(t["decoder.proj_bias"].clone())
        self.prompt_left_emb = torch.nn.Parameter(t["decoder.prompt_left_emb"].clone())
        self.prompt_right_emb = torch.nn.Parameter(t["decoder.prompt_right_emb"].clone())
        self.register_buffer("prompt_ids", prompt_ids.clone())


class OrigEncoder(torch.nn.Module):
    def __init__(self, t):
        super().__init__()
        w = t["encoder.proj.weight"]
        self.proj = torch.nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(w)
            self.proj.bias.copy_(t["encoder.proj.bias"])
        self.soft_prompt_embeddings = torch.nn.Parameter(t["encoder.soft_prompt_embeddings"].clone())
        if "encoder.soft_prompt_embeddings_postfix" in t:
            self.soft_prompt_embeddings_postfix = torch.nn.Parameter(
                t["encoder.soft_prompt_embeddings_postfix"].clone())
        self.special_last_token_vector = torch.nn.Parameter(
            t["encoder.special_last_token_vector"].clone())


def original_config(patch_all_layers=P, output_layer=OUTPUT_LAYER, add_current=ADD_CURRENT_TOKEN):
    return {
        "model_name": "tiny-llama",
        "model_dtype": "float32",
        "layer_l": LAYER,
        "t_text": T_TEXT,
        "decoder_prompt": DECODER_PROMPT,
        "encoder_prompt": ENCODER_PROMPT,
        "trainable_components": {
            "decoder": {"patch_all_layers": patch_all_layers, "soft_prompts": True},
            "encoder": {"output_layer": output_layer, "add_current_token": add_current,
                        "soft_prompts": True},
        },
        "training": {"lr": 1e-4, "batch_size": 32, "steps": 1000, "seed": SEED},
    }


def write_original_checkpoint(lens, tok):
    torch.manual_seed(SEED + 20)
    np.random.seed(SEED + 20)
    prompt_ids = torch.tensor(tok.encode(DECODER_PROMPT, add_special_tokens=False).ids,
                              dtype=torch.long)
    dec = OrigDecoder(lens, prompt_ids)
    enc = OrigEncoder(lens)
    # A realistic optimizer state: Adam over copies of the parameters after two steps.
    params = [p.detach().clone().requires_grad_(True)
              for p in list(dec.parameters()) + list(enc.parameters())]
    opt = torch.optim.Adam(params, lr=1e-4)
    gen = torch.Generator().manual_seed(SEED + 21)
    for _ in range(2):
        for p in params:
            p.grad = 0.01 * torch.randn(p.shape, generator=gen)
        opt.step()
    ckpt = {
        "step": SOURCE["step"],
        "epoch": 3,
        "models": {"decoder": dec.state_dict(), "encoder": enc.state_dict()},
        "optim": opt.state_dict(),
        "rng_states": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        "config": original_config(),
        "metrics": {"train/mse": [0.91, 0.62, 0.48], "val/relative_rmse": 0.7, "val/kl": 0.35},
    }
    out = OUT / "original"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(out / "checkpoint.pt"))


def write_malicious():
    """A torch-zip file whose data.pkl is GLOBAL posix.system + REDUCE. Built byte by byte;
    never loaded here."""
    cmd = b"echo pwned > /tmp/lensd-pwned"
    pkl = (b"\x80\x02"                       # PROTO 2
           + b"cposix\nsystem\n"             # GLOBAL 'posix system'
           + b"X" + struct.pack("<I", len(cmd)) + cmd  # BINUNICODE
           + b"\x85"                         # TUPLE1
           + b"R"                            # REDUCE
           + b".")                           # STOP
    entries = [("malicious/data.pkl", pkl), ("malicious/byteorder", b"little"),
               ("malicious/version", b"3\n")]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    (OUT / "original" / "malicious.pt").write_bytes(buf.getvalue())


def small_lens(seed, d=8, n_proj=2, n_l=2, n_r=1, n_p=2, n_q=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    t = {
        "decoder.proj_weight": torch.randn(n_proj, d, d, generator=gen),
        "decoder.proj_bias": torch.randn(n_proj, d, generator=gen),
        "decoder.prompt_left_emb": torch.randn(n_l, d, generator=gen),
        "decoder.prompt_right_emb": torch.randn(n_r, d, generator=gen),
        "encoder.proj.weight": torch.randn(d, d, generator=gen),
        "encoder.proj.bias": torch.randn(d, generator=gen),
        "encoder.soft_prompt_embeddings": torch.randn(n_p, d, generator=gen),
        "encoder.special_last_token_vector": torch.randn(d, generator=gen),
    }
    if n_q is not None:
        t["encoder.soft_prompt_embeddings_postfix"] = torch.randn(n_q, d, generator=gen)
    return {k: v.to(dtype) for k, v in t.items()}


def small_checkpoint(t, config, drop_encoder=()):
    dec = OrigDecoder(t, torch.arange(3))
    enc = OrigEncoder(t)
    enc_sd = enc.state_dict()
    for k in drop_encoder:
        del enc_sd[k]
    return {"step": 7, "models": {"decoder": dec.state_dict(), "encoder": enc_sd},
            "config": config}


def write_variants():
    out = OUT / "variants"
    out.mkdir(parents=True, exist_ok=True)

    # bf16.pt: a valid bf16 lens with no left prompt rows, no postfix, P from
    # patch_all_layers = true, and tensors that are views (storage offsets, a transpose).
    t = small_lens(SEED + 30, n_l=0, n_q=None, dtype=torch.bfloat16)
    flat = torch.randn(5 + 2 * 8 * 8, generator=torch.Generator().manual_seed(SEED + 31))
    flat = flat.to(torch.bfloat16)
    expected = {k: v.clone().contiguous() for k, v in t.items()}
    expected["decoder.proj_weight"] = flat[5:].view(2, 8, 8).clone()
    dec = OrigDecoder(t, torch.arange(3))
    enc = OrigEncoder(t)
    dec_sd, enc_sd = dec.state_dict(), enc.state_dict()
    dec_sd["proj_weight"] = flat[5:].view(2, 8, 8)  # offset 5 into a shared storage
    dec_sd["base.model.norm.weight"] = torch.ones(8, dtype=torch.bfloat16)  # ignored
    enc_sd["proj.weight"] = expected["encoder.proj.weight"].t().contiguous().t()  # stride (1, 8)
    assert not enc_sd["proj.weight"].is_contiguous()
    torch.save({"step": 12, "models": {"decoder": dec_sd, "encoder": enc_sd},
                "config": original_config(patch_all_layers=True, add_current=False)},
               str(out / "bf16.pt"))
    save_file(expected, str(out / "bf16_expected.safetensors"), metadata={"format": "pt"})

    t = small_lens(SEED + 32)
    torch.save(small_checkpoint(t, original_config(), drop_encoder=["special_last_token_vector"]),
               str(out / "missing_encoder_key.pt"))
    bad = dict(t)
    bad["encoder.soft_prompt_embeddings"] = torch.randn(
        2, 9, generator=torch.Generator().manual_seed(SEED + 33))
    torch.save(small_checkpoint(bad, original_config()), str(out / "bad_shape.pt"))
    torch.save(small_checkpoint(t, original_config(patch_all_layers=3)), str(out / "p_mismatch.pt"))
    cfg = original_config()
    del cfg["t_text"]
    del cfg["trainable_components"]["encoder"]["output_layer"]
    torch.save(small_checkpoint(t, cfg), str(out / "missing_config.pt"))
    ck = small_checkpoint(t, original_config())
    ck["models"]["encoder"]["proj.bias"] = t["encoder.proj.bias"].to(torch.float16)
    torch.save(ck, str(out / "mixed_dtype.pt"))


def check_conversion():
    """Convert original/checkpoint.pt with convert_talkative.py and compare with lens/."""
    obj = conv.load_checkpoint(OUT / "original" / "checkpoint.pt")
    fields, tensors = conv.convert(obj, base_config=(3, 512, 64), source_name="checkpoint.pt")
    blob = conv.safetensors_bytes(tensors)
    assert blob == (OUT / "lens" / "lens.safetensors").read_bytes(), "converted lens differs"
    manifest = conv.build_manifest(content_sha256=hashlib.sha256(blob).hexdigest(), **fields)
    assert conv.manifest_text(manifest) == (OUT / "lens" / "talkative.json").read_text()


# ---- main -----------------------------------------------------------------------------------


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    ids_list = tok.encode(TEXT, add_special_tokens=False).ids
    ids = torch.tensor(ids_list, dtype=torch.long)
    space = tok.encode(" ", add_special_tokens=False).ids
    eos_id = tok.token_to_id("<|im_end|>")
    space_id = space[0] if len(space) == 1 else eos_id

    base = load_base()
    d = base.config.hidden_size
    emb_std = float(base.model.embed_tokens.weight.detach().std())
    lens = make_lens(d, emb_std)
    write_lens(lens)

    donor_tensors = make_donor(base)
    donor_dir = write_donor(donor_tensors)
    donor_model, donor_layers = load_donor_model(donor_dir, donor_tensors)

    # Checks of the building blocks before the cases.
    x = encoder_inputs(base, lens, ids_list[:T_TEXT], int(ids[0]))
    assert x.shape[0] == N_P + T_TEXT + N_Q + 1
    early = encode(base, lens, ids_list[:T_TEXT], int(ids[0]))
    full = encode(base, lens, ids_list[:T_TEXT], int(ids[0]), full=True)
    assert torch.equal(early, full), "encoder early stop differs from a full forward"
    plain_acts, _ = run_with_activations(base, base.model.layers, ids)
    with torch.no_grad():
        hs = base(input_ids=ids[None], output_hidden_states=True, use_cache=False).hidden_states
    assert torch.equal(hs[LAYER + 1][0], plain_acts), "hook output is not hidden_states[layer+1]"
    merged = merged_donor_model(donor_tensors)
    merged_acts, merged_logits = run_with_activations(merged, merged.model.layers, ids)
    donor_acts, donor_logits = run_with_activations(donor_model, donor_layers, ids)
    merge_diff = max(float((merged_acts - donor_acts).abs().max()),
                     float((merged_logits - donor_logits).abs().max()))
    assert merge_diff < 1e-4, merge_diff
    fresh = load_base()
    for (n1, p1), (n2, p2) in zip(base.named_parameters(), fresh.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), f"base changed: {n1}"

    cases = [("base", False, base, base.model.layers), ("donor", True, donor_model, donor_layers)]
    golden_tensors = {"ids": ids.clone()}
    out_cases, results = [], {}
    for name, has_donor, act_model, act_layers in cases:
        rows, acts, recons, extra = explain(name, act_model, act_layers, base, lens, ids, tok,
                                            space_id)
        assert extra["cache_diff"] < 1e-4, extra["cache_diff"]
        results[name] = (rows, acts, recons, extra)
        golden_tensors[f"{name}.activations"] = acts.contiguous()
        golden_tensors[f"{name}.reconstructions"] = recons.contiguous()
        out_cases.append({"name": name, "donor": has_donor, "temperature": 0, "best_of_k": 1,
                          "salience": True, "kl": True, "rows": rows})

    # Encoder scores for fixed explanation lists (independent of decoding).
    gen = torch.Generator().manual_seed(SEED + 40)
    fixed = {p: [torch.randint(0, BASE["vocab_size"], (T_TEXT,), generator=gen).tolist()
                 for _ in range(ENCODER_SCORE_LISTS)] for p in ENCODER_SCORE_POSITIONS}
    encoder_scores = []
    for name, _, _, _ in cases:
        acts = results[name][1]
        for p in ENCODER_SCORE_POSITIONS:
            for expl in fixed[p]:
                mse, rel = scores(acts[p], encode(base, lens, expl, int(ids[p])))
                encoder_scores.append({"case": name, "position": p, "explanation_ids": expl,
                                       "mse": mse, "relative_rmse": rel})

    # The same computation in float64 on the same explanations: how far float32 is from it.
    dev = float64_deviation(lens, ids, tok, space_id, donor_dir, donor_tensors, results)

    save_file(golden_tensors, str(OUT / "golden.safetensors"), metadata={"format": "pt"})
    golden = {
        "text": TEXT,
        "ids": ids_list,
        "space_id": space_id,
        "eos_id": eos_id,
        "lens": "lens",
        "donor": "donor",
        "model": "../tiny-llama",
        "cases": out_cases,
        "encoder_scores": encoder_scores,
        "tolerances": TOLERANCES,
        "float64_deviation": dev,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
    }
    write_json(OUT / "golden.json", golden)

    write_original_checkpoint(lens, tok)
    write_malicious()
    write_variants()
    check_conversion()

    # Summary.
    print(f"text: {len(ids_list)} tokens; space id {space_id} ({space}); eos id {eos_id}")
    for name, (rows, acts, recons, extra) in results.items():
        mse = sum(r["mse"] for r in rows) / len(rows)
        kl = sum(r["kl_divergence"] for r in rows) / len(rows)
        margins = [m for r in rows for m in r["decoder_margins"]]
        print(f"case {name}: mean mse {mse:.5f}, mean relative_rmse "
              f"{sum(r['relative_rmse'] for r in rows) / len(rows):.4f}, mean KL {kl:.5f}, "
              f"min decoder margin {min(margins):.5f} (steps under {TOLERANCES['margin_min']}: "
              f"{sum(m < TOLERANCES['margin_min'] for m in margins)}), "
              f"KV-cache vs full pass {extra['cache_diff']:.2e}")
    act_diff = float((results["base"][1] - results["donor"][1]).abs().max())
    print(f"donor vs base activations: max abs diff {act_diff:.4f}; "
          f"peft vs merged W + s·BA {merge_diff:.2e}")
    assert act_diff > 0.05, "the donor hardly changes the activations"
    print("float32 vs float64:", json.dumps(dev))
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}: {os.path.getsize(p)} bytes")


def float64_deviation(lens, ids, tok, space_id, donor_dir, donor_tensors, results):
    """Redo both cases in float64 with the float32 explanations forced; return the largest
    deviations of the float32 results (they bound what a correct float32 port can differ)."""
    base64 = load_base(torch.float64)
    lens64 = {k: v.double() for k, v in lens.items()}
    donor64, donor64_layers = load_donor_model(donor_dir, donor_tensors, torch.float64)
    dev = {"activation_abs": 0.0, "reconstruction_abs": 0.0, "decoder_logit_abs": 0.0,
           "mse_rel": 0.0, "relative_rmse_rel": 0.0, "salience_abs": 0.0, "kl_abs": 0.0}
    for name, act_model, act_layers in (("base", base64, base64.model.layers),
                                        ("donor", donor64, donor64_layers)):
        rows32, acts32, recons32, extra32 = results[name]
        forced = [r["explanation_ids"] for r in rows32]
        rows, acts, recons, extra = explain(name, act_model, act_layers, base64, lens64, ids, tok,
                                            space_id, forced=forced)

        def upd(key, v):
            dev[key] = max(dev[key], v)

        upd("activation_abs", float((acts - acts32.double()).abs().max()))
        upd("reconstruction_abs", float((recons - recons32.double()).abs().max()))
        for s32, s64 in zip(extra32["step_logits"], extra["step_logits"]):
            upd("decoder_logit_abs", float((s32.double() - s64).abs().max()))
        for r32, r64 in zip(rows32, rows):
            upd("mse_rel", abs(r32["mse"] - r64["mse"]) / r64["mse"])
            upd("relative_rmse_rel", abs(r32["relative_rmse"] - r64["relative_rmse"])
                / r64["relative_rmse"])
            upd("salience_abs", max(abs(a - b) for a, b in
                                    zip(r32["token_salience"], r64["token_salience"])))
            upd("kl_abs", abs(r32["kl_divergence"] - r64["kl_divergence"]))
    return {k: float(f"{v:.2g}") for k, v in dev.items()}


if __name__ == "__main__":
    main()
