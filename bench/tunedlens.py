#!/usr/bin/env python3
"""The tuned-lens side of bench/run.sh: lensd's lens analysis redone with the `tuned-lens`
package on Hugging Face transformers and PyTorch (CPU, float32). Prints one JSON document.

The model is the GGUF (the demo's, or Gemma-3-270M's) dequantized to float32 and saved as
safetensors (once, in --hf-dir); it is loaded from there. The tuned lens is lensd's folder with
its params.safetensors rewritten as the params.pt that the package reads. For the token ids,
layers and top-k of lensd's bench output (--lensd-json), one repetition of a lens is:

- one forward pass with hidden states; layer i < L reads the stream entering block i
  (hidden_states[i]; for Gemma hidden_states[0] is the embedding already scaled by sqrt(d), as
  in lensd) through the lens, layer L is the model's own logits;
- per layer, on the [T, vocab] logits: log-softmax, top-k ids and probabilities, entropy,
  KL(final || lens), the lens rank of the final top-1 token and the next-token cross-entropy.

Before timing, each lens's top-1 grid, top-1 probabilities and entropies are compared with
lensd's; a disagreement beyond a near tie exits with status 1. The median of --reps timed
repetitions is reported, with the model load and the lens load.

Two things the package (0.2.0) does not do for Gemma, done here (see `gemma_final_norm` and
`lens_logits`): find the final norm, and apply a final logit soft-cap.
"""

import argparse
import importlib.metadata
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.models.gemma2.modeling_gemma2 import Gemma2Model
from transformers.models.gemma3.modeling_gemma3 import Gemma3Model, Gemma3TextModel
from transformers.utils import logging as hf_logging
from tuned_lens import model_surgery
from tuned_lens.nn.lenses import LogitLens, TunedLens

TOL = 1e-3
# lensd's analysis with the unembedding in bf16 (rows and matrix rounded to bf16, f32
# accumulation) against the package's f32: the bounds crates/engine/tests/bf16_unembed.rs holds
# it to against lensd's own f32 (top-k probabilities, entropy in nats).
TOL_BF16 = 0.06
TOL_BF16_ENTROPY = 0.12

_package_get_final_norm = model_surgery.get_final_norm


def gemma_final_norm(model):
    """The package's `get_final_norm`, which `LogitLens`/`TunedLens` call through `Unembed`,
    knows OPT, GPT-NeoX, BLOOM, GPT-2, GPT-Neo, GPT-J and `LlamaModel` only, and raises
    NotImplementedError for Gemma's base models (not LlamaModel subclasses in transformers 5).
    For those this returns the model's own final norm (Gemma's RMSNorm, which scales by 1 + w)
    and defers to the package otherwise; nothing else of the package is changed."""
    base = getattr(model, "base_model", None)
    if isinstance(base, (Gemma2Model, Gemma3TextModel)):
        return base.norm
    if isinstance(base, Gemma3Model):
        return base.language_model.norm
    return _package_get_final_norm(model)


model_surgery.get_final_norm = gemma_final_norm


def package_knows_final_norm(model):
    try:
        _package_get_final_norm(model)
    except NotImplementedError:
        return False
    return True


def log(msg):
    print(f"tunedlens: {msg}", file=sys.stderr, flush=True)


def ensure_hf_model(gguf, hf_dir):
    """Saves the GGUF, dequantized to float32, as safetensors (transformers refuses to save a
    model loaded from GGUF until its quantization config is dropped)."""
    if (hf_dir / "config.json").exists() and any(hf_dir.glob("*.safetensors")):
        return
    log(f"dequantizing {gguf.name} to float32 safetensors in {hf_dir}")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        fail("transformers kept some GGUF weights quantized")
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(hf_dir, safe_serialization=True)


def convert_lens(lens_dir, out_dir):
    """Copies config.json and writes params.safetensors' tensors as params.pt."""
    shutil.copy(lens_dir / "config.json", out_dir / "config.json")
    torch.save(load_file(str(lens_dir / "params.safetensors")), out_dir / "params.pt")


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def layer_stats(logits, final_p, final_logp, final_top1, next_ids, k):
    """Statistics of one layer's [T, V] logits, each cell against the final distribution."""
    logp = logits.log_softmax(-1)
    top_logp, top_ids = logp.topk(k, dim=-1)
    final_logit = logits.gather(-1, final_top1[:, None])
    return {
        "top_ids": top_ids,
        "top_probs": top_logp.exp(),
        "entropy": -(logp.exp() * logp).sum(-1),
        "kl": (final_p * (final_logp - logp)).sum(-1),
        "final_rank": 1 + (logits > final_logit).sum(-1),
        "next_token_ce": -logp[:-1].gather(-1, next_ids[:, None])[:, 0],
    }


def lens_logits(model, lens, h, layer):
    """The lens's logits at one layer. The package's `Unembed` is lm_head(final_norm(h)) and
    never applies a final logit soft-cap; a model that has one (Gemma-2's
    `final_logit_softcapping`; Gemma-3 has none) gets it here, c * tanh(logits / c), as lensd
    applies it in every lens."""
    logits = lens(h, idx=layer)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def analyze(model, lens, input_ids, layers, k):
    """One repetition: the forward pass and every layer's lens statistics."""
    with torch.inference_mode():
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        final = out.logits[0]
        final_logp = final.log_softmax(-1)
        against = (final_logp.exp(), final_logp, final.argmax(-1), input_ids[0, 1:])
        n_blocks = len(out.hidden_states) - 1
        stats = []
        for layer in layers:
            logits = (lens_logits(model, lens, out.hidden_states[layer][0], layer)
                      if layer < n_blocks else final)
            stats.append(layer_stats(logits, *against, k))
    return stats


def compare_cells(stats, ref, layers):
    """Yields (layer, position, our top-2 ids, our top-2 probs, lensd's id, prob, entropies)."""
    for li, layer in enumerate(layers):
        s = stats[li]
        for pos in range(s["top_ids"].shape[0]):
            yield (layer, pos, s["top_ids"][pos, :2].tolist(), s["top_probs"][pos, :2].tolist(),
                   ref["top1"][li][pos], ref["top1_prob"][li][pos],
                   float(s["entropy"][pos]), ref["entropy"][li][pos])


def agreement(name, stats, ref, layers, tol=TOL, tol_entropy=TOL):
    """Compares the top-1 grid, top-1 probabilities and entropies with lensd's, within `tol`
    and `tol_entropy`; exits on failure."""
    tokens = stats[0]["top_ids"].shape[0]
    for key in ("top1", "top1_prob", "entropy"):
        if len(ref[key]) != len(layers) or any(len(row) != tokens for row in ref[key]):
            fail(f"{name} lens: lensd's `{key}` grid is not {len(layers)} layers x {tokens}")
    same = near_tie = 0
    bad, prob_diffs, ent_diffs = [], [], []
    for layer, pos, ids, probs, ref_id, ref_prob, ent, ref_ent in compare_cells(stats, ref, layers):
        cell = (f"{name} lens, layer {layer}, position {pos}: tuned-lens top-1 {ids[0]} "
                f"p={probs[0]:.6f} (top-2 {ids[1]} p={probs[1]:.6f}, entropy {ent:.6f}); "
                f"lensd top-1 {ref_id} p={ref_prob:.6f} (entropy {ref_ent:.6f})")
        if ids[0] == ref_id:
            same += 1
            prob_diffs.append((abs(probs[0] - ref_prob), cell))
        elif probs[0] - probs[1] < tol or ref_id == ids[1]:
            near_tie += 1
        else:
            bad.append((probs[0] - probs[1], cell))
        ent_diffs.append((abs(ent - ref_ent), cell))
    max_prob = max(prob_diffs, default=(0.0, None))
    max_ent = max(ent_diffs, default=(0.0, None))
    if bad:
        fail(f"top-1 differs beyond a near tie at {len(bad)} cells; worst: {max(bad)[1]}")
    if max_prob[0] >= tol:
        fail(f"top-1 probability differs by {max_prob[0]:.2e} at {max_prob[1]}")
    if max_ent[0] >= tol_entropy:
        fail(f"entropy differs by {max_ent[0]:.2e} at {max_ent[1]}")
    return {"cells": len(layers) * tokens, "same_top1": same, "near_tie_mismatches": near_tie,
            "max_top1_prob_diff": max_prob[0], "max_entropy_diff": max_ent[0], "tolerance": tol,
            "entropy_tolerance": tol_entropy}


def fail(msg):
    log(f"FAILED: {msg}")
    sys.exit(1)


def grids(name, stats):
    """lensd's per-lens grids (top1, top1_prob, entropy), layer by position."""
    return {"lens": name,
            "top1": [s["top_ids"][:, 0].tolist() for s in stats],
            "top1_prob": [s["top_probs"][:, 0].tolist() for s in stats],
            "entropy": [s["entropy"].tolist() for s in stats]}


def engine_name():
    v = importlib.metadata.version
    return f"tuned-lens {v('tuned-lens')} + transformers {v('transformers')} + " \
           f"torch {torch.__version__.split('+')[0]} (CPU)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the GGUF file lensd read")
    ap.add_argument("--hf-dir", type=Path, default=Path("bench/results/hf-model"))
    ap.add_argument("--lens", type=Path, required=True, help="tuned lens folder in lensd's format")
    ap.add_argument("--lensd-json", type=Path, required=True, help="`lensd bench --format json`")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dump-grids", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    bench = json.loads(a.lensd_json.read_text())
    spec = bench.get("analysis") or ({"tokens": 64, "layers": list(range(31)), "top_k": 5}
                                     if a.dump_grids else None)
    if spec is None:
        fail(f"{a.lensd_json} has no `analysis` section")
    if spec.get("dtype", "f32") != "f32":
        fail(f"lensd computed in {spec['dtype']}; this comparison needs its f32 analysis")
    tokens, layers, k = spec["tokens"], spec["layers"], spec["top_k"]
    if len(bench["ids"]) < tokens:
        fail(f"{a.lensd_json} has {len(bench['ids'])} ids, fewer than {tokens}")
    input_ids = torch.tensor([bench["ids"][:tokens]])

    ensure_hf_model(a.model, a.hf_dir)
    model, model_load = timed(lambda: AutoModelForCausalLM.from_pretrained(
        str(a.hf_dir), dtype=torch.float32).eval())
    if max(layers) > model.config.num_hidden_layers:
        fail(f"layer {max(layers)} is past the model's {model.config.num_hidden_layers} blocks")
    with tempfile.TemporaryDirectory(prefix="tuned-lens-pt-") as pt_dir:
        convert_lens(a.lens, Path(pt_dir))
        tuned, lens_load = timed(
            lambda: TunedLens.from_model_and_pretrained(model, lens_resource_id=pt_dir).eval())
    lenses = [("logit", LogitLens.from_model(model).eval()), ("tuned", tuned)]
    log(f"model loaded in {model_load:.3f} s, tuned lens in {lens_load:.3f} s")

    refs = {r["lens"]: r for r in bench.get("analysis", {}).get("lenses", [])}
    refs.setdefault("tuned", refs.get(a.lens.name))
    # lensd's analyses with a bf16 unembedding, where its CPU has AVX-512 BF16.
    refs_bf16 = {r["lens"]: r for r in (bench.get("analysis_bf16") or {}).get("lenses", [])}
    checked, checked_bf16, dumped = {}, {}, []
    for name, lens in lenses:
        stats = analyze(model, lens, input_ids, layers, k)
        if a.dump_grids:
            dumped.append(grids(name, stats))
        elif refs.get(name) is None:
            fail(f"{a.lensd_json} has no `{name}` lens")
        else:
            checked[name] = agreement(name, stats, refs[name], layers)
            log(f"{name} lens agrees with lensd: {checked[name]}")
            if name in refs_bf16:
                checked_bf16[name] = agreement(f"{name} (lensd's bf16 unembedding)", stats,
                                               refs_bf16[name], layers, TOL_BF16,
                                               TOL_BF16_ENTROPY)
                log(f"{name} lens agrees with lensd's bf16 unembedding: {checked_bf16[name]}")
    if a.dump_grids:
        doc = {"ids": bench["ids"], "analysis": {**spec, "dtype": "f32", "lenses": dumped}}
        a.dump_grids.write_text(json.dumps(doc))
        log(f"wrote {a.dump_grids}")
        return

    results = []
    cells = len(layers) * tokens
    for name, lens in lenses:
        secs = [timed(lambda: analyze(model, lens, input_ids, layers, k))[1]
                for _ in range(a.reps)]
        med = statistics.median(secs)
        log(f"{name} lens: median {med:.3f} s over {a.reps} reps")
        results.append({"lens": name, "seconds": secs, "median_seconds": med,
                        "tokens_per_s": tokens / med, "cells_per_s": cells / med,
                        "agreement": checked[name],
                        "agreement_bf16": checked_bf16.get(name)})
    print(json.dumps({
        "engine": engine_name(), "threads": a.threads, "reps": a.reps, "tokens": tokens,
        "layers": len(layers), "top_k": k, "model_load_seconds": model_load,
        "lens_load_seconds": lens_load,
        "final_norm": "package" if package_knows_final_norm(model) else "model's own (wrapped)",
        "final_logit_softcapping": getattr(model.config, "final_logit_softcapping", None),
        "lenses": results}))


if __name__ == "__main__":
    main()
