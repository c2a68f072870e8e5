#!/usr/bin/env python3
"""Golden files for the talkative lens from the original implementation, run as it is.

    tools/.venv-original/bin/python tools/gen_original_talkative_golden.py --original PATH
        [--cases tiny-deployed,tiny-postfix,tiny-lora,tiny-full-donor,demo] [--scratch DIR]

PATH is a local copy of safety-research/talkative-probes at the commit in
tools/original_harness.py (a work tree or a bare git copy). For each case this script

1. builds the original's `Decoder` and `Encoder` (lens/models/) on the case's base with the
   options of the site's checkpoints, or the variation the case names, and sets every trained
   tensor to seeded random values (projections far from the identity, so that a transposed
   matrix gives other numbers);
2. saves the checkpoint with the original's own `lens.utils.checkpoint.save`;
3. loads it back with the original's `LensAnalyzer` (lens/analysis/analyzer_class.py), the
   code the original site served with, and records its output on the committed texts:
   `analyze_all_tokens` at a vanishing temperature (the original divides the logits by the
   temperature, so 0 itself gives NaN; at 1e-6 the Gumbel noise can only flip a choice whose
   top-two logit margin is below about 2e-5, and each step's margin is recorded so that the
   tests skip such near-ties) with token salience and the logit-lens column, and with
   best-of-k under a fixed seed (the k candidates of every position are recorded with their
   reconstruction errors, because lensd cannot replay PyTorch's random stream);
4. converts the checkpoint with tools/convert_talkative.py into
   testdata/talkative/from-original/<case>/lens (the artifact the Rust tests load).

It writes testdata/talkative/from-original/golden.json, the tiny cases' checkpoints
(<case>/checkpoint.pt) and donors. The demo case's checkpoint (2.7 MB, the lens converted from
it is committed) is written to --scratch only.

The texts are tokenized by the analyzer itself (`tokenizer(text)`), without a BOS for both
models, like lensd.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import original_harness as harness  # noqa: E402
from golden_util import write_json  # noqa: E402

OUT = harness.ROOT / "testdata" / "talkative" / "from-original"
TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 12 and 3.5 sit beside words.",
]
DEMO_TEXTS = ["The capital of France is Paris, a city known for art and food."]
TEMPERATURE = 1e-6
SEED = 1234
BEST_OF_K = 4

TINY_PROMPTS = ("Short explanation of <embed>:", "Summary of the text:<text>")
DEMO_PROMPTS = (
    "Short explanation of <embed>. Language, topic, sentiment, claims, speaker, style, etc:",
    "Summary of the text, encapsulating the main points and message, style and details:<text>",
)

# case -> how it differs from the site's checkpoints (per-layer projections at every block,
# no encoder postfix, encoder projection, current token and last-token vector, encoder at
# the explained layer)
CASES = {
    "tiny-deployed": {"model": "tiny", "layer": 1, "patch": True, "donor": None},
    "tiny-postfix": {"model": "tiny", "layer": 0, "patch": 2, "donor": None,
                     "encoder_prompt": "Summary:<text> In short:", "output_layer": 2,
                     "use_projection_layer": False, "add_current_token": False},
    "tiny-lora": {"model": "tiny", "layer": 1, "patch": True, "donor": "lora"},
    "tiny-full-donor": {"model": "tiny", "layer": 1, "patch": True, "donor": "full"},
    "demo": {"model": "demo", "layer": 15, "patch": 2, "donor": None},
}


def case_config(name: str, case: dict, model_dir: Path) -> dict:
    import train_talkative

    dec_prompt, enc_prompt = TINY_PROMPTS if case["model"] == "tiny" else DEMO_PROMPTS
    enc_prompt = case.get("encoder_prompt", enc_prompt)
    cfg = train_talkative.make_config(str(model_dir), case["layer"], case["patch"], 6 if case["model"] == "tiny" else 8)
    cfg["decoder_prompt"] = dec_prompt
    cfg["encoder_prompt"] = enc_prompt
    enc = cfg["trainable_components"]["encoder"]
    enc["soft_prompt_init_text"] = enc_prompt
    enc["output_layer"] = case.get("output_layer", case["layer"])
    enc["add_current_token"] = case.get("add_current_token", True)
    if "use_projection_layer" in case:
        enc["use_projection_layer"] = case["use_projection_layer"]
    return cfg


def randomise(dec, enc, seed: int) -> None:
    """Seeded random values for every trained tensor, at the scale of the base's embeddings."""
    import torch

    g = torch.Generator().manual_seed(seed)
    emb = dec.base.get_input_embeddings().weight
    scale = emb.std().item()
    with torch.no_grad():
        if dec.proj_weight is not None:
            d = dec.proj_weight.shape[-1]
            for i in range(dec.proj_weight.shape[0]):
                dec.proj_weight[i] = torch.eye(d) + torch.randn(d, d, generator=g) / d**0.5
            dec.proj_bias.copy_(torch.randn(dec.proj_bias.shape, generator=g) * scale)
        for p in (dec.prompt_left_emb, dec.prompt_right_emb, enc.soft_prompt_embeddings,
                  enc.soft_prompt_embeddings_postfix):
            if p is not None:
                p.add_(torch.randn(p.shape, generator=g) * 0.5 * scale)
        if enc.proj is not None:
            d = enc.proj.weight.shape[0]
            enc.proj.weight.copy_(torch.eye(d) + torch.randn(d, d, generator=g) / d**0.5)
            enc.proj.bias.copy_(torch.randn(d, generator=g) * 0.1)
        if getattr(enc, "special_last_token_vector", None) is not None:
            enc.special_last_token_vector.copy_(torch.randn(enc.special_last_token_vector.shape, generator=g) * scale)


def make_full_donor(tiny_dir: Path, out: Path) -> Path:
    """A fine-tune of the tiny llama: every weight moved by a seeded 5 % of its own scale."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(77)
    w = load_file(str(tiny_dir / "model.safetensors"))
    moved = {k: (v + 0.05 * v.std() * torch.randn(v.shape, generator=g)).contiguous()
             for k, v in sorted(w.items())}
    save_file(moved, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        shutil.copy(tiny_dir / name, out / name)
    return out


def lora_for_original(tiny_dir: Path, scratch: Path) -> Path:
    """testdata/talkative/donor with its base pointing at the prepared tiny folder."""
    src = harness.ROOT / "testdata" / "talkative" / "donor"
    out = scratch / "lora-donor"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_dir)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def margins_of(logits) -> list[list[float]]:
    """Top-1 minus top-2 logit at each generated step, per row: [B][t]."""
    top = logits.float().topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]).tolist()


def run_case(name: str, case: dict, scratch: Path) -> dict:
    import torch
    from lens.analysis.analyzer_class import LensAnalyzer
    from lens.utils import checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import train_talkative

    model_dir = (harness.prepare_tiny(scratch / "tiny") if case["model"] == "tiny"
                 else harness.prepare_demo(scratch / "demo"))
    cfg = case_config(name, case, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    dec, enc = train_talkative.build(cfg, base, tok)
    randomise(dec, enc, seed=sum(map(ord, name)))

    case_out = OUT / name
    case_out.mkdir(parents=True, exist_ok=True)
    ckpt = (case_out if case["model"] == "tiny" else scratch / name) / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(ckpt, {"decoder": dec, "encoder": enc}, None, 0, config=cfg)
    del dec, enc, base

    donor_arg = None
    donor_rel = None
    if case["donor"] == "lora":
        donor_arg = str(lora_for_original(model_dir, scratch))
        donor_rel = "testdata/talkative/donor"
    elif case["donor"] == "full":
        donor_path = make_full_donor(model_dir, case_out / "full-donor")
        donor_arg = str(donor_path)
        donor_rel = str(donor_path.relative_to(harness.ROOT))

    an = LensAnalyzer(str(ckpt), device="cpu", comparison_tl_checkpoint=False, batch_size=64,
                      different_activations_orig=donor_arg, initialise_on_cpu=True)
    harness.use_current_llama_branch(an.decoder)
    if case["donor"] == "lora" and not hasattr(an.orig_model.model, "peft_config"):
        sys.exit(f"{name}: the analyzer did not load the LoRA donor as an adapter")

    # Watch the decoder: record every generated sequence and its logit margins.
    seen: list[dict] = []
    generate = an.decoder.generate_soft_kv_cached_nondiff

    def watched(*args, **kwargs):
        kwargs["return_logits"] = True
        gen = generate(*args, **kwargs)
        seen.append({"ids": gen.hard_token_ids.tolist(), "margins": margins_of(gen.raw_lm_logits)})
        return gen

    an.decoder.generate_soft_kv_cached_nondiff = watched

    texts = TINY_TEXTS if case["model"] == "tiny" else DEMO_TEXTS
    out = {"model": case["model"], "layer": case["layer"], "donor": donor_rel,
           "config": {k: cfg[k] for k in ("layer_l", "t_text", "decoder_prompt", "encoder_prompt")},
           "trainable_components": cfg["trainable_components"], "texts": []}
    for text in texts:
        ids = an.tokenizer(text).input_ids
        seen.clear()
        df = an.analyze_all_tokens(text, seed=SEED, batch_size=64, temperature=TEMPERATURE,
                                   no_kl=True, calculate_token_salience=True,
                                   logit_lens_analysis=True, return_structured=True)
        assert len(seen) == 1, "one decoder batch expected"
        rows = []
        for j, r in enumerate(df.to_dict("records")):
            rows.append({
                "position": r["position"], "token": r["token"], "explanation": r["explanation"],
                "explanation_structured": r["explanation_structured"],
                "explanation_ids": seen[0]["ids"][j], "decoder_margins": seen[0]["margins"][j],
                "mse": r["mse"], "relative_rmse": r["relative_rmse"],
                "token_salience": r["token_salience"], "logit_lens_top": r["logit_lens_top"],
            })
        # The analyzer's own KL path: record what it does.
        try:
            an.analyze_all_tokens(text, seed=SEED, batch_size=64, temperature=TEMPERATURE, no_kl=False)
            kl_note = "computed"
        except Exception as e:  # noqa: BLE001 - the failure itself is the finding
            kl_note = f"{type(e).__name__}: {e}"
        # best-of-k under a fixed seed
        seen.clear()
        dfk = an.analyze_all_tokens(
            text, seed=SEED, batch_size=64, no_kl=True, calculate_token_salience=True,
            optimize_explanations_config={"best_of_k": BEST_OF_K, "use_batched": True,
                                          "temperature": 1.0, "n_groups_per_rollout": 64})
        assert len(seen) == 1, "one decoder batch of all candidates expected"
        cands = torch.tensor(seen[0]["ids"])
        A = an.orig_model.get_all_activations_at_layer(torch.tensor(ids), an.layer)
        best_rows = []
        for j, r in enumerate(dfk.to_dict("records")):
            cj = cands[j * BEST_OF_K:(j + 1) * BEST_OF_K]
            mses = an._get_mse_for_explanation_batch(cj, A[j], j, torch.tensor([ids]))
            best_rows.append({
                "position": r["position"], "candidates": cj.tolist(),
                "candidate_mses": mses.tolist(), "mse": r["mse"],
                "explanation": r["explanation"], "token_salience": r["token_salience"],
            })
        out["texts"].append({"text": text, "ids": ids, "rows": rows, "kl": kl_note,
                             "best_of_k": {"k": BEST_OF_K, "seed": SEED, "temperature": 1.0,
                                           "rows": best_rows}})

    lens_out = case_out / "lens"
    if lens_out.exists():
        shutil.rmtree(lens_out)
    base_config = model_dir / "config.json"
    subprocess.run([sys.executable, str(harness.ROOT / "tools" / "convert_talkative.py"), str(ckpt),
                    "--out", str(lens_out), "--base-config", str(base_config),
                    "--name", "tiny-llama" if case["model"] == "tiny" else "SmolLM2-135M-Instruct"],
                   check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--original", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--scratch")
    args = ap.parse_args()
    scratch = harness.scratch_dir(args.scratch)
    harness.import_original(args.original, scratch)
    import torch
    import transformers

    torch.set_num_threads(2)
    golden_path = OUT / "golden.json"
    golden = json.loads(golden_path.read_text()) if golden_path.is_file() else {"cases": {}}
    for name in args.cases.split(","):
        if name not in CASES:
            sys.exit(f"unknown case {name!r}; cases: {', '.join(CASES)}")
        print(f"== {name}", flush=True)
        golden["cases"][name] = run_case(name, CASES[name], scratch)
    golden["original"] = {"repository": harness.ORIGINAL_REPO, "commit": harness.ORIGINAL_COMMIT}
    golden["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__}
    golden["temperature"] = TEMPERATURE
    golden["cases"] = dict(sorted(golden["cases"].items()))
    write_json(golden_path, golden)


if __name__ == "__main__":
    main()
