"""An independent float64 forward pass for the tiny family models (NumPy only).

It reads a checkpoint folder with the `safetensors` package and config.json with `json`,
and never touches transformers, so a mistake in how gen_tiny_families.py drives
transformers (or in transformers itself) shows up as a disagreement. It implements the
families' rules as lensd must: RMSNorm with w (Llama, Qwen) or 1 + w (Gemma), the Gemma
embedding scale √d, q/k biases (Qwen2), per-head q/k norms (Qwen3, Gemma-3), rotary
embeddings in halves (Hugging Face layout) with default, linear and llama3 frequencies,
per-layer-type rope parameters (Gemma-3), query_pre_attn_scalar, sliding windows
(a query at position p sees keys at positions p - W + 1 .. p), attention and final logit
soft-capping (c · tanh(x / c)), SiLU and tanh-GELU gated MLPs, tied or untied heads.

`forward` returns the same quantities as golden.safetensors plus statistics of how much
the soft-caps bend (share of attention scores beyond the cap, largest logit before the
final cap).
"""

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def load_checkpoint(folder: Path):
    cfg = json.loads((folder / "config.json").read_text())
    tensors = {}
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for f in files:
        for k, v in load_file(str(folder / f)).items():
            tensors[k] = v.astype(np.float64)
    return cfg, tensors


def bf16_rounded(folder: Path):
    """The bf16 checkpoint's tensors are stored as BF16, which numpy cannot read:
    read them through torch only to get the bits, then widen to float64."""
    import torch
    from safetensors.torch import load_file as load_torch

    out = {}
    for k, v in load_torch(str(folder / "model.safetensors")).items():
        out[k] = v.to(torch.float64).numpy()
    return out


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _rms(x, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def inv_freq(rope: dict, head_dim: int) -> np.ndarray:
    """Inverse frequencies for one rope parameter set, computed in float64."""
    theta = float(rope["rope_theta"])
    base = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return base
    if kind == "linear":
        return base / float(rope["factor"])
    if kind == "llama3":
        factor = float(rope["factor"])
        lo, hi = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old = float(rope["original_max_position_embeddings"])
        out = []
        for f in base:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:  # short wavelengths: untouched
                out.append(f)
            elif wavelen > old / lo:  # long wavelengths: divided by the factor
                out.append(f / factor)
            else:  # in between: interpolate between the two
                s = (old / wavelen - lo) / (hi - lo)
                out.append((1 - s) * f / factor + s * f)
        return np.array(out)
    raise ValueError(f"rope_type {kind} not implemented")


def rope_bands(rope: dict, head_dim: int) -> list:
    """For llama3 rope: which band each frequency falls in."""
    theta = float(rope["rope_theta"])
    base = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    old = float(rope["original_max_position_embeddings"])
    lo, hi = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    bands = []
    for f in base:
        w = 2 * math.pi / f
        bands.append("untouched" if w < old / hi else "scaled" if w > old / lo else "interpolated")
    return bands


class Family:
    """The per-family rules, read from config.json."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        mt = cfg["model_type"]
        self.gemma = mt in ("gemma2", "gemma3_text")
        self.L = cfg["num_hidden_layers"]
        self.d = cfg["hidden_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or self.d // self.nh
        self.eps = cfg["rms_norm_eps"]
        self.qk_norm = mt in ("qwen3", "gemma3_text")
        self.layer_types = cfg.get("layer_types") or ["full_attention"] * self.L
        self.window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        if self.gemma:
            self.scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
        else:
            self.scale = self.hd**-0.5
        self.attn_cap = cfg.get("attn_logit_softcapping")
        self.final_cap = cfg.get("final_logit_softcapping")
        self.act = _gelu_tanh if self.gemma else _silu
        self.plain_norm = False
        rp = cfg["rope_parameters"]
        if "full_attention" in rp or "sliding_attention" in rp:
            self.inv = {t: inv_freq(rp[t], self.hd) for t in rp}
        else:
            self.inv = {t: inv_freq(rp, self.hd) for t in set(self.layer_types)}

    def norm(self, x, w):
        return _rms(x, self.eps) * ((1.0 + w) if self.gemma and not self.plain_norm else w)


def _rotate(x, pos, inv):
    """x [heads, T, hd], halves layout: pairs (j, j + hd/2)."""
    ang = pos[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)
    sin = np.concatenate([np.sin(ang)] * 2, -1)
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def forward(cfg: dict, t: dict, ids, window_override=None, ablate=()):
    """`ablate` switches features off one by one, to show that each one matters:
    "norm_1_plus_w" (use w), "embed_scale", "qk_norm", "bias", "untied_head" (use the
    embeddings as the head)."""
    fam = Family(cfg)
    fam.plain_norm = "norm_1_plus_w" in ablate
    if "qk_norm" in ablate:
        fam.qk_norm = False
    if "bias" in ablate:
        t = {k: v for k, v in t.items() if not k.endswith(".bias")}
    ids = np.asarray(ids)
    T = len(ids)
    emb = t["model.embed_tokens.weight"]
    x = emb[ids]
    if fam.gemma and "embed_scale" not in ablate:
        x = x * math.sqrt(fam.d)
    pos = np.arange(T, dtype=np.float64)
    hidden = [x]
    beyond, total = 0, 0
    for i in range(fam.L):
        p = f"model.layers.{i}."
        ltype = fam.layer_types[i]
        h = fam.norm(x, t[p + "input_layernorm.weight"])
        q = h @ t[p + "self_attn.q_proj.weight"].T
        k = h @ t[p + "self_attn.k_proj.weight"].T
        v = h @ t[p + "self_attn.v_proj.weight"].T
        if p + "self_attn.q_proj.bias" in t:
            q = q + t[p + "self_attn.q_proj.bias"]
            k = k + t[p + "self_attn.k_proj.bias"]
            v = v + t[p + "self_attn.v_proj.bias"]
        q = q.reshape(T, fam.nh, fam.hd).transpose(1, 0, 2)
        k = k.reshape(T, fam.nkv, fam.hd).transpose(1, 0, 2)
        v = v.reshape(T, fam.nkv, fam.hd).transpose(1, 0, 2)
        if fam.qk_norm:
            q = fam.norm(q, t[p + "self_attn.q_norm.weight"])
            k = fam.norm(k, t[p + "self_attn.k_norm.weight"])
        q = _rotate(q, pos, fam.inv[ltype])
        k = _rotate(k, pos, fam.inv[ltype])
        group = fam.nh // fam.nkv
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        s = q @ k.transpose(0, 2, 1) * fam.scale
        if fam.attn_cap:
            beyond += int((np.abs(np.tril(s)) > fam.attn_cap).sum())
            total += fam.nh * T * (T + 1) // 2
            s = fam.attn_cap * np.tanh(s / fam.attn_cap)
        qi = np.arange(T)[:, None]
        ki = np.arange(T)[None, :]
        allowed = ki <= qi
        window = window_override if window_override is not None else fam.window
        if ltype == "sliding_attention" and window is not None:
            allowed &= ki > qi - window
        s = np.where(allowed[None], s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        a = np.exp(s)
        a = a / a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(T, fam.nh * fam.hd)
        o = o @ t[p + "self_attn.o_proj.weight"].T
        if fam.gemma:
            o = fam.norm(o, t[p + "post_attention_layernorm.weight"])
            x = x + o
            h = fam.norm(x, t[p + "pre_feedforward_layernorm.weight"])
        else:
            x = x + o
            h = fam.norm(x, t[p + "post_attention_layernorm.weight"])
        g = h @ t[p + "mlp.gate_proj.weight"].T
        u = h @ t[p + "mlp.up_proj.weight"].T
        m = (fam.act(g) * u) @ t[p + "mlp.down_proj.weight"].T
        if fam.gemma:
            m = fam.norm(m, t[p + "post_feedforward_layernorm.weight"])
        x = x + m
        hidden.append(x)
    normed = fam.norm(x, t["model.norm.weight"])
    head = emb if "untied_head" in ablate else t.get("lm_head.weight", emb)
    raw = normed @ head.T
    logits = fam.final_cap * np.tanh(raw / fam.final_cap) if fam.final_cap else raw
    stats = {
        "attn_scores_beyond_cap": (beyond / total) if total else None,
        "max_abs_logit_before_final_cap": float(np.abs(raw).max()),
    }
    return hidden, normed, logits, stats


def ablations(cfg: dict, t: dict, ids) -> dict:
    """Largest |logit change| when one feature of the family is switched off (float64).
    Every entry must be well above the golden tolerance, or the tiny model would not test
    that feature."""
    _, _, base, _ = forward(cfg, t, ids)
    fam = Family(cfg)
    variants = {}
    rp = cfg["rope_parameters"]
    if rp.get("rope_type") in ("llama3", "linear"):
        variants["rope_scaling"] = ({**cfg, "rope_parameters": {"rope_type": "default", "rope_theta": rp["rope_theta"]}}, ())
    if "full_attention" in rp:
        full = rp["full_attention"]
        variants["rope_scaling_global"] = (
            {**cfg, "rope_parameters": {**rp, "full_attention": {"rope_type": "default", "rope_theta": full["rope_theta"]}}}, ())
        variants["rope_local_theta_equals_global"] = (
            {**cfg, "rope_parameters": {**rp, "sliding_attention": {"rope_type": "default", "rope_theta": full["rope_theta"]}}}, ())
    if any(k.endswith(".bias") for k in t):
        variants["qkv_bias"] = (cfg, ("bias",))
    if "lm_head.weight" in t:
        variants["untied_head"] = (cfg, ("untied_head",))
    if fam.qk_norm:
        variants["qk_norm"] = (cfg, ("qk_norm",))
    if fam.gemma:
        variants["norm_1_plus_w"] = (cfg, ("norm_1_plus_w",))
        variants["embed_scale"] = (cfg, ("embed_scale",))
        variants["query_pre_attn_scalar"] = ({**cfg, "query_pre_attn_scalar": fam.hd}, ())
    if fam.attn_cap:
        variants["attn_logit_softcapping"] = ({**cfg, "attn_logit_softcapping": None}, ())
    if fam.final_cap:
        variants["final_logit_softcapping"] = ({**cfg, "final_logit_softcapping": None}, ())
    if fam.window and "sliding_attention" in fam.layer_types:
        variants["sliding_window"] = ({**cfg, "sliding_window": None}, ())
    out = {}
    for name, (c, abl) in variants.items():
        _, _, logits, _ = forward(c, t, ids, ablate=abl)
        out[name] = float(np.abs(logits - base).max())
    return out
