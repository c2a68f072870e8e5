#!/usr/bin/env python3
"""Trains a talkative lens for the demo model with the original implementation's own code.

    tools/.venv-original/bin/python tools/train_talkative.py --original PATH --out DIR
        [--steps N] [--batch B] [--layer L] [--patched P] [--resume]

PATH is a local copy of safety-research/talkative-probes at the commit in
tools/original_harness.py. The model classes (`Decoder`, `Encoder`, `OrigWrapper`), the loss
(`lens.training.loop.train_step`) and the checkpoint writer (`lens.utils.checkpoint.save`) are
the original's, imported from that copy. This script supplies what its 5,000-line distributed
training script would (that script needs hydra, wandb, deepspeed and GPUs): the data, the
optimizer and the schedules, with the settings of the original's frozen-base configurations
(conf/gemma2_CHAT_9b_frozen_nopostfix.yaml, the site's checkpoints) except where noted:

* base frozen; trained: the decoder's per-layer projections (identity at start) and soft
  prompt, the encoder's projection (identity at start), soft prompt and last-token vector;
* the decoder's and encoder's prompts are the site's (without Gemma's `<bos>`), the encoder
  reads the output of the explained layer (`output_layer` = `layer_l`) and gets the current
  token (`add_current_token`), no encoder postfix;
* t_text = 8 tokens, generated with straight-through Gumbel-softmax (`generate_soft_kv_cached`);
  the Gumbel temperature is 5.0 for the first 10 % of steps, then follows a cosine to 0.1;
* loss: the normalised reconstruction MSE (weight 1) plus the LM regulariser (KL of the
  decoder's next-token distributions to the base's after a natural prefix; weight 0.05);
  no functional KL, no entropy term, no resample ablation;
* AdamW, learning rate 1e-3 for every trained tensor (the configs' encoder multiplier of 0.1
  suits their millions of samples, not a run of a few thousand), 20 warm-up steps, cosine to
  1e-5; gradients clipped at norm 1;
* differences forced by size: the decoder patches the first P = 4 blocks instead of all 30,
  so that the lens is a few megabytes; batches of 16 positions instead of 256 x 16.

Data: windows of 64 tokens of the docstrings of this Python's standard library (modules,
classes and functions, in sorted module order), and a position from 5 to 63 in each. The held-out
text of tools/talkative_quality.py (data/demo-corpus.txt: Python's documentation topics and
Debian's licences) is never read here.

Checkpoints: DIR/checkpoint.pt (the original's format, with the optimizer state) every
--save-every steps and at the end; --resume continues from it, with the same data order.
DIR/log.jsonl has one line of training figures per --log-every steps.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import original_harness as harness  # noqa: E402

DECODER_PROMPT = "Short explanation of <embed>. Language, topic, sentiment, claims, speaker, style, etc:"
ENCODER_PROMPT = "Summary of the text, encapsulating the main points and message, style and details:<text>"
LM_PREFIX = "Short explanation of something. Language, topic, sentiment, claims, speaker, style, etc:"
WINDOW = 64
MIN_POS = 5


def stdlib_docstrings() -> list[str]:
    """Docstrings (>= 200 characters) of the standard library's modules, classes and functions."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    out.append(doc)
    return out


def make_config(model_dir: str, layer: int, patched: int, t_text: int) -> dict:
    """The checkpoint's `config`, in the shape of the original's (what its analyzer reads)."""
    return {
        "model_name": model_dir,
        "tokenizer_name": model_dir,
        "layer_l": layer,
        "t_text": t_text,
        "decoder_prompt": DECODER_PROMPT,
        "encoder_prompt": ENCODER_PROMPT,
        "lm_loss_natural_prefix": LM_PREFIX,
        "model_dtype": "float32",
        "gumbel_tau_schedule": {"start_value": 5.0, "end_value": 0.1,
                                "type": "cosine_decay_after_constant"},
        "verbose_samples": {"tuned_lens_checkpoint_path_or_name": None},
        "trainable_components": {
            "decoder": {
                "base_model": False, "projection_layer": True, "eye_init": True,
                "output_head": False, "pos_embeddings": False, "use_flash_attention": False,
                "use_checkpointing": False, "use_kv_cache": True,
                "patch_all_layers": patched, "per_layer_projections": True,
                "use_dropout": False, "use_gumbel_for_LMorig": False,
                "subtract_add_pos_embeddings": False, "extra_pos_embeddings": False,
            },
            "encoder": {
                "base_model": False, "pos_embeddings": False, "use_base_model": True,
                "projection_layer": True, "trainable_soft_prompt": True, "eye_init": True,
                "output_layer": layer, "soft_prompt_init_text": ENCODER_PROMPT,
                "use_dropout": False, "subtract_add_pos_embeddings": False,
                "extra_pos_embeddings": False, "special_last_token_vector": True,
                "add_current_token": True,
            },
        },
    }


def build(cfg: dict, base, tok):
    """The original's Decoder and Encoder on the shared, frozen base, prompts set."""
    from lens.models.decoder import Decoder, DecoderConfig
    from lens.models.encoder import Encoder, EncoderConfig

    tc = cfg["trainable_components"]
    dec = Decoder(DecoderConfig(model_name=cfg["model_name"], **tc["decoder"]), base_to_use=base)
    harness.use_current_llama_branch(dec)
    enc = Encoder(EncoderConfig(model_name=cfg["model_name"], **tc["encoder"]), base_to_use=base)
    dec.set_prompt(cfg["decoder_prompt"], tok)
    enc.set_soft_prompt_from_text(tc["encoder"]["soft_prompt_init_text"], tok)
    return dec, enc


def schedule(step: int, total: int, warmup: int = 20, lr: float = 1e-3, floor: float = 1e-5):
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def tau_at(step: int, total: int, start: float = 5.0, end: float = 0.1) -> float:
    hold = total // 10
    if step < hold:
        return start
    t = (step - hold) / max(1, total - hold)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--original", required=True, help="local copy of the original repository")
    ap.add_argument("--out", required=True, help="folder for checkpoint.pt and log.jsonl")
    ap.add_argument("--scratch", help="folder for the prepared model (default: a temp folder)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--patched", type=int, default=4)
    ap.add_argument("--t-text", type=int, default=8)
    ap.add_argument("--lm-weight", type=float, default=0.05)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    scratch = harness.scratch_dir(args.scratch)
    harness.import_original(args.original, scratch)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lens.models.orig import OrigWrapper
    from lens.training.loop import train_step
    from lens.utils import checkpoint

    torch.set_num_threads(args.threads)
    model_dir = harness.prepare_demo(scratch / "demo")
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)

    cfg = make_config(str(model_dir), args.layer, args.patched, args.t_text)
    cfg["base_model_name"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    dec, enc = build(cfg, base, tok)
    dec.train()
    enc.train()
    orig = OrigWrapper(str(model_dir), base_to_use=base)
    params = [p for m in (dec, enc) for p in m.parameters() if p.requires_grad]
    names = [n for m in (dec, enc) for n, p in m.named_parameters() if p.requires_grad]
    print(f"trained tensors: {names}; {sum(p.numel() for p in params):,} values", flush=True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    step = 0
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        dec.load_state_dict(state["models"]["decoder"], strict=False)
        enc.load_state_dict(state["models"]["encoder"], strict=False)
        opt.load_state_dict(state["optim"])
        step = int(state["step"])
        print(f"resumed at step {step}", flush=True)

    # Data: the token stream of the docstrings, cut into windows; the order is fixed by the
    # seed, so a resumed run sees the same batches as an uninterrupted one.
    docs = stdlib_docstrings()
    stream = tok("\n\n".join(docs), add_special_tokens=False).input_ids
    n_windows = len(stream) // WINDOW
    windows = torch.tensor(stream[: n_windows * WINDOW]).view(n_windows, WINDOW)
    print(f"{len(docs)} docstrings, {len(stream):,} tokens, {n_windows} windows", flush=True)
    prefix_ids = tok(LM_PREFIX, add_special_tokens=False, return_tensors="pt").input_ids

    def batch_for(s: int):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + s)
        rows = torch.randint(0, n_windows, (args.batch,), generator=g)
        pos = torch.randint(MIN_POS, WINDOW, (args.batch,), generator=g)
        ids = windows[rows]
        with torch.no_grad():
            hs = base(input_ids=ids, output_hidden_states=True).hidden_states[args.layer + 1]
        a = hs[torch.arange(args.batch), pos]
        return {"A": a, "token_pos_A": pos, "input_ids_A": ids,
                "layer_idx": torch.full((args.batch,), args.layer)}

    log = open(out / "log.jsonl", "a")
    t0 = time.time()
    while step < args.steps:
        lr = schedule(step, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        tau = tau_at(step, args.steps)
        batch = batch_for(step)
        torch.manual_seed(args.seed * 7919 + step)
        losses = train_step(
            batch, {"dec": dec, "enc": enc, "orig": orig},
            _loss_fns={"tau": tau, "t_text": args.t_text, "alpha": 1.0, "kl_base_weight": 0.0,
                       "entropy_weight": 0.0, "mse_weight": 1.0, "lm_base_weight": args.lm_weight},
            lm_loss_natural_prefix=LM_PREFIX, tokenizer=tok, cached_prefix_ids=prefix_ids,
            resample_ablation=False, do_kl_computation=False, do_lm_computation=True,
        )
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            row = {"step": step, "lr": lr, "tau": tau, "total": losses["total"].item(),
                   "normalised_mse": losses["mse"].item(), "lm_kl": losses["lm"].item(),
                   "fve_batch": losses["fraction_variance_explained"].item(),
                   "seconds": round(time.time() - t0, 1)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
        if step % args.save_every == 0 or step == args.steps:
            tmp = out / "checkpoint.pt.tmp"
            checkpoint.save(tmp, {"decoder": dec, "encoder": enc}, opt, step, config=cfg)
            os.replace(tmp, ckpt_path)
    print("done", flush=True)


if __name__ == "__main__":
    main()
