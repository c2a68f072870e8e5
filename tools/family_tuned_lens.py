"""A tuned lens for tiny-gemma2, trained and saved by the tuned-lens package, and its
golden values (called by gen_tiny_families.py).

What the package does with Gemma-2 (tuned-lens 0.2.0, read from its source):
* `model_surgery.get_final_norm` knows OPT, GPT-NeoX, BLOOM, GPT-2, GPT-Neo, GPT-J and
  `LlamaModel` only; for `Gemma2Model` (not a LlamaModel subclass in transformers 5) it
  raises NotImplementedError, so `TunedLens.from_model` and `LogitLens.from_model` fail.
  Here it is wrapped to return `model.model.norm` (the Gemma2RMSNorm, with its 1 + w) for
  Gemma-2 and to defer to the original otherwise. `get_unembedding_matrix` already works
  (`get_output_embeddings()`, the tied lm_head).
* `Unembed.forward(h)` is `unembedding(final_norm(h))`: no final logit soft-cap. The
  package's lens logits are therefore the model's logits before its soft-cap.
lensd applies the family's soft-cap in every lens, so the golden values here are computed
from the package's own logits with the cap applied afterwards: c · tanh(logits / c). The
lens is trained the same way (the KL of the capped lens logits to the model's capped
output).
"""

import json

import torch
from safetensors.torch import save_file
from transformers.models.gemma2.modeling_gemma2 import Gemma2Model
from tuned_lens import model_surgery
from tuned_lens.nn import LogitLens, TunedLens

SEED = 4242
STEPS = 300
BATCH = 8
SEQ_LEN = 48
TOPK = 5
MIN_GAP = 5e-4  # smallest allowed gap between adjacent top-5 log-probabilities

_original_get_final_norm = model_surgery.get_final_norm


def _get_final_norm(model):
    if isinstance(getattr(model, "base_model", None), Gemma2Model):
        return model.base_model.norm
    return _original_get_final_norm(model)


def _package_refuses_gemma2(model) -> bool:
    try:
        _original_get_final_norm(model)
    except NotImplementedError:
        return True
    return False


def _cap(model, logits: torch.Tensor) -> torch.Tensor:
    c = model.config.final_logit_softcapping
    return c * torch.tanh(logits / c)


def train_and_save(model, out) -> dict:
    refuses = _package_refuses_gemma2(model)
    model_surgery.get_final_norm = _get_final_norm
    torch.manual_seed(SEED)
    lens = TunedLens.from_model(model)
    lens.config.base_model_name_or_path = "tiny-gemma2"
    n_layers = model.config.num_hidden_layers
    assert len(lens) == n_layers

    gen = torch.Generator().manual_seed(SEED)
    vocab = model.config.vocab_size
    bos = model.config.bos_token_id
    opt = torch.optim.SGD(lens.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / STEPS)
    model.requires_grad_(False)
    losses = []
    for step in range(STEPS):
        ids = torch.randint(0, vocab, (BATCH, SEQ_LEN), generator=gen)
        ids[:, 0] = bos
        with torch.no_grad():
            o = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        target = o.logits.float().log_softmax(-1)  # already soft-capped by the model
        losses = []
        for i, h in enumerate(o.hidden_states[:-1]):
            logp = _cap(model, lens(h, idx=i)).log_softmax(-1)
            loss = (target.exp() * (target - logp)).sum(-1).mean()
            loss.backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"  tuned lens step {step:4d} KL per translator: " + " ".join(f"{x:.4f}" for x in losses))
    lens.eval()
    lens_dir = out / "tuned-lens"
    lens.save(lens_dir)
    loaded = TunedLens.from_model_and_pretrained(model, str(lens_dir))
    for a, b in zip(lens.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    state = torch.load(lens_dir / "params.pt", weights_only=True)
    for i in range(n_layers):
        assert state[f"{i}.weight"].abs().max() > 0 and state[f"{i}.bias"].abs().max() > 0
    return {
        "package_get_final_norm_refuses_gemma2": refuses,
        "package_applies_final_softcap": False,  # checked in write_golden
        "training": {"steps": STEPS, "batch": BATCH, "seq_len": SEQ_LEN, "seed": SEED,
                     "final_kl_per_translator": [round(x, 4) for x in losses]},
        "lens_config": json.loads((lens_dir / "config.json").read_text()),
    }


def _stats(lens_logits, final_logits):
    logp = lens_logits.double().log_softmax(-1)
    final_logp = final_logits.double().log_softmax(-1)
    p = logp.exp()
    top_p, top_i = p.topk(TOPK, dim=-1)
    entropy = -(p * logp).sum(-1)
    kl = (final_logp.exp() * (final_logp - logp)).sum(-1)
    gap = (top_p.log()[:, :-1] - top_p.log()[:, 1:]).min()
    return top_i.to(torch.int64), top_p.float(), entropy.float(), kl.float(), float(gap)


def _all_cells(model, out, golden):
    """Yield (key prefix, s, i, stats) for every cell of both lenses."""
    lens = TunedLens.from_model_and_pretrained(model, str(out / "tuned-lens"))
    logit_lens = LogitLens.from_model(model)
    n_layers = model.config.num_hidden_layers
    s = 0
    while f"input_ids.{s}" in golden:
        final = golden[f"logits.{s}"]
        for i in range(n_layers + 1):
            h = golden[f"hidden.{s}.{i}"]
            with torch.no_grad():
                if i < n_layers:
                    yield "", s, i, _stats(_cap(model, lens(h, idx=i)), final)
                raw = logit_lens(h, idx=i)
                if i == n_layers:
                    # The package's logit lens at the last layer is the model before its
                    # soft-cap: it does not apply the cap itself.
                    normed = golden[f"normed.{s}"]
                    assert torch.allclose(raw, model.lm_head(normed), atol=1e-5)
                    assert not torch.allclose(raw, final, atol=1e-2)
                    assert torch.allclose(_cap(model, raw), final, atol=1e-5)
                yield "logit_", s, i, _stats(_cap(model, raw), final)
        s += 1


def separated(model, out, golden) -> bool:
    return all(st[4] >= MIN_GAP for _, _, _, st in _all_cells(model, out, golden))


def write_golden(model, out, golden) -> dict:
    res = {}
    min_gap = float("inf")
    kl = {"": {}, "logit_": {}}
    for prefix, s, i, (ti, tp, ent, k, gap) in _all_cells(model, out, golden):
        res[f"{prefix}topk_ids.{s}.{i}"] = ti.contiguous()
        res[f"{prefix}topk_probs.{s}.{i}"] = tp.contiguous()
        res[f"{prefix}entropy.{s}.{i}"] = ent.contiguous()
        res[f"{prefix}kl.{s}.{i}"] = k.contiguous()
        min_gap = min(min_gap, gap)
        kl[prefix].setdefault(i, []).append(k)
    n_layers = model.config.num_hidden_layers
    s = 0
    while f"logit_kl.{s}.{n_layers}" in res:
        assert res[f"logit_kl.{s}.{n_layers}"].abs().max() < 1e-5
        s += 1
    assert min_gap >= MIN_GAP, min_gap
    save_file(res, str(out / "tuned_lens_golden.safetensors"), metadata={"note": "softcapped lens logits"})
    mean = {
        name: {str(i): round(float(torch.cat(v).mean()), 4) for i, v in sorted(kl[p].items())}
        for name, p in (("tuned", ""), ("logit", "logit_"))
    }
    return {"min_adjacent_top5_logprob_gap": min_gap, "mean_kl_by_layer": mean}
