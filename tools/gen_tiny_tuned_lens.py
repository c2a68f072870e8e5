#!/usr/bin/env python3
"""Train a small tuned lens for the tiny Llama model and write lens golden values.

Needs testdata/tiny-llama/ from gen_tiny_llama.py. Writes:
  testdata/tiny-llama/tuned-lens/config.json, params.pt   (tuned-lens package format)
  testdata/tiny-llama/tuned_lens_golden.safetensors

Golden keys, for sequence s (0..2, the sequences of golden.safetensors):
  topk_ids.{s}.{i} (I64 [T,5]), topk_probs.{s}.{i}, entropy.{s}.{i}, kl.{s}.{i}
      tuned lens, translator i reading hidden.{s}.{i}, i = 0..L-1
  logit_topk_ids.{s}.{i}, logit_topk_probs.{s}.{i}, logit_entropy.{s}.{i}, logit_kl.{s}.{i}
      logit lens (final norm + lm_head only), i = 0..L
Entropies and KL divergences are in nats; kl = KL(p_final || p_lens), where
p_final is the softmax of the model's own logits at the same position.

Run with tools/.venv/bin/python tools/gen_tiny_tuned_lens.py
"""

import json
import os
from importlib.metadata import version

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaForCausalLM
from tuned_lens.nn import LogitLens, TunedLens

from golden_util import ROOT, TESTDATA

MODEL_DIR = TESTDATA / "tiny-llama"
LENS_DIR = MODEL_DIR / "tuned-lens"
GOLDEN = MODEL_DIR / "tuned_lens_golden.safetensors"

SEED = 777
STEPS = 300
BATCH = 8
SEQ_LEN = 48
TOPK = 5


def kl_loss(target_logp: torch.Tensor, lens_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(target || lens), in nats."""
    lens_logp = lens_logits.log_softmax(-1)
    return (target_logp.exp() * (target_logp - lens_logp)).sum(-1).mean()


def train(model, lens: TunedLens) -> None:
    """A short run of the tuned-lens objective: match the model's final output
    distribution at the same position, layer by layer (the package's own training
    recipe: KL loss, SGD with Nesterov momentum, gradient clipping at 1.0)."""
    gen = torch.Generator().manual_seed(SEED)
    vocab = model.config.vocab_size
    opt = torch.optim.SGD(lens.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / STEPS)
    for step in range(STEPS):
        ids = torch.randint(0, vocab, (BATCH, SEQ_LEN), generator=gen)
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        target = out.logits.float().log_softmax(-1)
        hidden = out.hidden_states[:-1]  # block inputs 0..L-1
        losses = []
        for i, h in enumerate(hidden):
            loss = kl_loss(target, lens(h, idx=i))
            loss.backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step:4d} KL per translator: " + " ".join(f"{x:.4f}" for x in losses))


def lens_stats(lens_logits: torch.Tensor, final_logits: torch.Tensor):
    logp = lens_logits.double().log_softmax(-1)
    final_logp = final_logits.double().log_softmax(-1)
    p = logp.exp()
    top_p, top_i = p.topk(TOPK, dim=-1)
    entropy = -(p * logp).sum(-1)
    kl = (final_logp.exp() * (final_logp - logp)).sum(-1)
    return top_i.to(torch.int64), top_p.float(), entropy.float(), kl.float()


def main():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    model = LlamaForCausalLM.from_pretrained(
        str(MODEL_DIR), attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    model.requires_grad_(False)
    n_layers = model.config.num_hidden_layers

    lens = TunedLens.from_model(model)
    lens.config.base_model_name_or_path = "tiny-llama"
    assert len(lens) == n_layers
    train(model, lens)
    lens.eval()
    lens.save(LENS_DIR)

    # The saved lens must load back through the package and give the same outputs.
    loaded = TunedLens.from_model_and_pretrained(model, str(LENS_DIR))
    for a, b in zip(lens.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    state = torch.load(LENS_DIR / "params.pt", weights_only=True)
    for i in range(n_layers):
        w, b = state[f"{i}.weight"], state[f"{i}.bias"]
        print(f"translator {i}: |W|_F = {w.norm():.4f}  |b| = {b.norm():.4f}")
        assert w.abs().max() > 0 and b.abs().max() > 0
    logit_lens = LogitLens.from_model(model)

    out = {}
    with safe_open(str(MODEL_DIR / "golden.safetensors"), "pt") as f:
        n_seq = len([k for k in f.keys() if k.startswith("input_ids.")])
        for s in range(n_seq):
            ids = f.get_tensor(f"input_ids.{s}")
            final = f.get_tensor(f"logits.{s}")
            with torch.no_grad():
                check = model(input_ids=ids[None], use_cache=False).logits[0]
            assert torch.allclose(check, final, atol=1e-5), "model differs from golden.safetensors"
            for i in range(n_layers + 1):
                h = f.get_tensor(f"hidden.{s}.{i}")
                with torch.no_grad():
                    if i < n_layers:
                        ti, tp, ent, kl = lens_stats(loaded(h, idx=i), final)
                        out[f"topk_ids.{s}.{i}"] = ti
                        out[f"topk_probs.{s}.{i}"] = tp
                        out[f"entropy.{s}.{i}"] = ent
                        out[f"kl.{s}.{i}"] = kl
                    ti, tp, ent, kl = lens_stats(logit_lens(h, idx=i), final)
                out[f"logit_topk_ids.{s}.{i}"] = ti
                out[f"logit_topk_probs.{s}.{i}"] = tp
                out[f"logit_entropy.{s}.{i}"] = ent
                out[f"logit_kl.{s}.{i}"] = kl
            # Sanity: the logit lens at the last layer is the model itself.
            assert out[f"logit_kl.{s}.{n_layers}"].abs().max() < 1e-5
            assert torch.equal(
                out[f"logit_topk_ids.{s}.{n_layers}"], final.topk(TOPK, dim=-1).indices
            )
            for i in range(n_layers):
                print(
                    f"seq {s} layer {i}: mean KL tuned {out[f'kl.{s}.{i}'].mean():.4f} "
                    f"logit {out[f'logit_kl.{s}.{i}'].mean():.4f}"
                )
    out = {k: v.contiguous() for k, v in out.items()}
    # One metadata entry only: safetensors does not keep the order of several entries,
    # which would make reruns differ byte-wise.
    versions = (
        f"tuned-lens {version('tuned-lens')}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    save_file(out, str(GOLDEN), metadata={"versions": versions})

    with open(LENS_DIR / "config.json") as f:
        print("lens config:", json.load(f))
    for p in [LENS_DIR / "config.json", LENS_DIR / "params.pt", GOLDEN]:
        print(f"{p.relative_to(ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
