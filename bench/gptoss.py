#!/usr/bin/env python3
"""The transformers side of bench/gptoss.sh: greedy decoding and a full logit-lens analysis of a
gpt-oss checkpoint (the tiny random one by default) with Hugging Face transformers on PyTorch
(CPU, float32, eager attention), timed as `lensd bench --only` times them, and the share of
that time spent in the mixture of experts (router included), from hooks around each block's
MLP. Prints one JSON document.

- decode: after a prompt of --prompt-tokens tokens (prefill not timed), --decode-tokens greedy
  steps with the KV cache;
- analysis: one forward pass with hidden states over --lens-tokens tokens, then for every layer
  the final norm, the head, log-softmax, top-5, entropy and KL(final || lens).
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


class ExpertClock:
    """Seconds spent inside the blocks' MLPs (router and experts)."""

    def __init__(self, model):
        self.seconds = 0.0
        self._t = None
        for layer in model.model.layers:
            layer.mlp.register_forward_pre_hook(self._start)
            layer.mlp.register_forward_hook(self._stop)

    def _start(self, *_):
        self._t = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t


def decode(model, prompt, n):
    with torch.no_grad():
        out = model(input_ids=prompt[None, :], use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[0, -1].argmax()
        t = time.perf_counter()
        for _ in range(n):
            out = model(input_ids=nxt.view(1, 1), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[0, -1].argmax()
        return time.perf_counter() - t


def analysis(model, ids):
    with torch.no_grad():
        t = time.perf_counter()
        out = model(input_ids=ids[None, :], output_hidden_states=True, use_cache=False)
        final = torch.log_softmax(out.logits[0].float(), -1)
        final_p = final.exp()
        for h in out.hidden_states[:-1]:
            logp = torch.log_softmax(model.lm_head(model.model.norm(h[0])).float(), -1)
            p = logp.exp()
            torch.topk(logp, 5, dim=-1)
            -(p * logp).sum(-1)
            (final_p * (final - logp)).sum(-1)
        return time.perf_counter() - t


def timed(reps, clock, f):
    seconds, inside = [], 0.0
    for _ in range(reps):
        before = clock.seconds
        seconds.append(f())
        inside += clock.seconds - before
    return {"seconds": seconds, "median_seconds": statistics.median(seconds),
            "expert_share": inside / sum(seconds)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="testdata/tiny-gptoss")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--lens-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    clock = ExpertClock(model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (a.prompt_tokens,), generator=gen)
    text = torch.randint(0, vocab, (a.lens_tokens,), generator=gen)
    decode(model, prompt, 4)  # warm-up
    print(json.dumps({
        "engine": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "decode": timed(a.reps, clock, lambda: decode(model, prompt, a.decode_tokens)),
        "analysis": timed(a.reps, clock, lambda: analysis(model, text)),
    }))


if __name__ == "__main__":
    main()
