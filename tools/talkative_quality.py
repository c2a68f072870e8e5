#!/usr/bin/env python3
"""How well a talkative lens of the demo model reconstructs held-out activations.

    tools/.venv-original/bin/python tools/talkative_quality.py --original PATH
        --checkpoint CKPT [--examples 20] [--json OUT]

PATH is a local copy of safety-research/talkative-probes (tools/original_harness.py); CKPT a
checkpoint of tools/train_talkative.py (the original's format). The lens runs in the
original's own classes, which lensd matches to about 1e-6 (crates/engine/tests/
talkative_original.rs), greedily (temperature 1e-6, as in the golden files).

Held-out text: data/demo-corpus.txt (scripts/prepare-demo-corpus.sh: Python's documentation
topics and Debian's licences), which the trainer never reads; its token stream is cut into
64-token windows and 16 windows spread evenly over it are taken, with every 4th position from
5 on (240 positions). Statistics for the baselines come from the training corpus (the
standard library's docstrings), 256 windows spread evenly over it, positions from 5 on.

For each of
  * the trained lens,
  * the untrained lens: the same architecture at the original's initialisation (identity
    projections, soft prompts equal to the prompt texts' embeddings, zero last-token vector),
  * the mean baseline: every activation predicted by the training activations' mean,
  * the current-token baseline: the training mean of the activations at that token id
    (the overall mean for ids never seen),
it reports over the held-out positions
  * FVE = 1 - MSE / Var, MSE the mean squared error over positions and dimensions, Var the
    held-out activations' variance about their own mean, averaged over dimensions;
  * relative RMSE, the mean over positions of sqrt(mse_p) / sqrt(mean_j A_pj^2) (the
    analyzer's and lensd's per-row figure);
  * KL: the mean over positions of KL(P || Q) in nats, P the model's next-token distribution
    at the position, Q the same with the layer's output at that position replaced by the
    reconstruction.
It then prints --examples explanations of held-out positions, every (240 / examples)-th
position, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import original_harness as harness  # noqa: E402

WINDOW = 64
HELD_OUT_WINDOWS = 16
MIN_POS = 5
POSITIONS = range(MIN_POS, WINDOW, 4)
TRAIN_WINDOWS = 256


def spread(n_total: int, n: int) -> list[int]:
    return [i * n_total // n for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--original", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--scratch")
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--held-out-windows", type=int, default=HELD_OUT_WINDOWS,
                    help="fewer for a quick check; the documented figures use the default")
    ap.add_argument("--train-windows", type=int, default=TRAIN_WINDOWS)
    args = ap.parse_args()

    scratch = harness.scratch_dir(args.scratch)
    harness.import_original(args.original, scratch)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import train_talkative

    torch.set_num_threads(args.threads)
    corpus = harness.ROOT / "data" / "demo-corpus.txt"
    if not corpus.is_file():
        sys.exit(f"{corpus} is missing: run scripts/prepare-demo-corpus.sh")
    model_dir = harness.prepare_demo(scratch / "demo")
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    for p in base.parameters():
        p.requires_grad_(False)

    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = dict(state["config"])
    cfg["model_name"] = str(model_dir)
    layer, t_text = cfg["layer_l"], cfg["t_text"]
    trained = train_talkative.build(cfg, base, tok)
    trained[0].load_state_dict(state["models"]["decoder"], strict=False)
    trained[1].load_state_dict(state["models"]["encoder"], strict=False)
    untrained = train_talkative.build(cfg, base, tok)
    for m in (*trained, *untrained):
        m.eval()

    captured = {}
    hook = base.model.layers[layer].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("a", (out[0] if isinstance(out, tuple) else out).detach()))

    all_layers = base.model.layers

    def activations(ids: torch.Tensor) -> torch.Tensor:
        # Only the blocks up to the layer run (no unembedding): the hook keeps the output.
        base.model.layers = all_layers[: layer + 1]
        try:
            with torch.no_grad():
                base.model(input_ids=ids, use_cache=False)
        finally:
            base.model.layers = all_layers
        return captured["a"]

    def windows_of(text: str) -> torch.Tensor:
        stream = tok(text, add_special_tokens=False).input_ids
        n = len(stream) // WINDOW
        return torch.tensor(stream[: n * WINDOW]).view(n, WINDOW)

    # Baseline statistics from the training corpus.
    train_w = windows_of("\n\n".join(train_talkative.stdlib_docstrings()))
    train_w = train_w[spread(len(train_w), args.train_windows)]
    d = base.config.hidden_size
    sums = torch.zeros(base.config.vocab_size, d, dtype=torch.float64)
    counts = torch.zeros(base.config.vocab_size, dtype=torch.float64)
    for chunk in train_w.split(16):
        # positions from MIN_POS on, as in training and evaluation (the first positions of a
        # window carry the model's attention-sink activations, hundreds of times larger)
        a = activations(chunk)[:, MIN_POS:].double().reshape(-1, d)
        at = chunk[:, MIN_POS:].reshape(-1)
        sums.index_add_(0, at, a)
        counts.index_add_(0, at, torch.ones(at.numel(), dtype=torch.float64))
    mean_act = (sums.sum(0) / counts.sum()).float()
    per_token = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], mean_act.double()).float()

    # Held-out positions.
    held = windows_of(corpus.read_text(encoding="utf-8"))
    held = held[spread(len(held), args.held_out_windows)]
    rows = [(w, p) for w in range(len(held)) for p in POSITIONS]
    acts_all = torch.cat([activations(chunk) for chunk in held.split(8)])  # [W, 64, d]
    A = torch.stack([acts_all[w, p] for w, p in rows])
    ids_at = torch.tensor([int(held[w, p]) for w, p in rows])
    hook.remove()

    def lens_reconstruct(dec, enc):
        outs, expls = [], []
        for start in range(0, len(rows), 48):
            a = A[start:start + 48]
            cur = ids_at[start:start + 48]
            with torch.no_grad():
                gen = dec.generate_soft_kv_cached_nondiff(a, max_length=t_text, gumbel_tau=0.1,
                                                          temperature=1e-6)
                outs.append(enc(gen.generated_text_embeddings, current_token_ids=cur
                                if enc.config.add_current_token else None))
            expls.extend(gen.hard_token_ids.tolist())
        return torch.cat(outs), expls

    # P for every held-out position, once: the model's own next-token distributions.
    with torch.no_grad():
        clean = [torch.log_softmax(base(input_ids=held[w:w + 1]).logits[0].float(), -1)
                 for w in range(len(held))]

    def kl_of(recon: torch.Tensor) -> float:
        """Mean KL(P || Q), Q with the layer's output at the position replaced by `recon`.

        The positions of one window run as one batch, each row patched at its own position
        (attention is causal, so the tokens after it do not matter)."""
        total = 0.0
        layer_mod = base.model.layers[layer]
        per = len(POSITIONS)
        for w in range(len(held)):
            pos = torch.tensor(list(POSITIONS))
            r = recon[w * per:(w + 1) * per]

            def swap(_m, _i, out):
                h = out[0] if isinstance(out, tuple) else out
                h = h.clone()
                h[torch.arange(per), pos] = r
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handle = layer_mod.register_forward_hook(swap)
            try:
                with torch.no_grad():
                    logits = base(input_ids=held[w:w + 1].expand(per, -1)).logits
            finally:
                handle.remove()
            logq = torch.log_softmax(logits[torch.arange(per), pos].float(), -1)
            logp = clean[w][pos]
            total += float((logp.exp() * (logp - logq)).sum())
        return total / len(rows)

    var = A.var(dim=0, unbiased=False).mean().item()

    def figures(recon: torch.Tensor) -> dict:
        err = (A - recon).pow(2)
        mse = err.mean().item()
        rel = (err.mean(-1).sqrt() / A.pow(2).mean(-1).sqrt()).mean().item()
        return {"fve": 1 - mse / var, "mse": mse, "relative_rmse": rel, "kl": kl_of(recon)}

    results = {}
    trained_recon, trained_expl = lens_reconstruct(*trained)
    results["trained lens"] = figures(trained_recon)
    untrained_recon, _ = lens_reconstruct(*untrained)
    results["untrained lens"] = figures(untrained_recon)
    results["mean baseline"] = figures(mean_act.expand_as(A))
    results["current-token baseline"] = figures(per_token[ids_at])

    print(f"held-out positions: {len(rows)} (layer {layer}, activation variance {var:.4f}); "
          f"checkpoint step {state.get('step')}")
    print("| predictor | FVE | relative RMSE | KL (nats) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['fve']:.3f} | {r['relative_rmse']:.3f} | {r['kl']:.3f} |")

    every = max(1, len(rows) // args.examples)
    print()
    print("| text before the position | token | explanation | relative RMSE |")
    print("|---|---|---|---|")
    examples = []
    for i in range(0, len(rows), every)[: args.examples]:
        w, p = rows[i]
        before = tok.decode(held[w, max(0, p - 10):p].tolist())
        token = tok.decode([int(held[w, p])])
        expl = tok.decode(trained_expl[i])
        err = (A[i] - trained_recon[i]).pow(2).mean().sqrt() / A[i].pow(2).mean().sqrt()
        examples.append({"before": before, "token": token, "explanation": expl,
                         "relative_rmse": err.item()})

        def cell(s: str) -> str:
            return json.dumps(s, ensure_ascii=False)[1:-1].replace("|", "\\|")

        print(f"| {cell(before)} | {cell(token)} | {cell(expl)} | {err.item():.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"positions": len(rows), "variance": var,
                                               "step": state.get("step"), "results": results,
                                               "examples": examples}, indent=1) + "\n")


if __name__ == "__main__":
    main()
