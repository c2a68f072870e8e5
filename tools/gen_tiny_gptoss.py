#!/usr/bin/env python3
"""testdata/tiny-gptoss: a tiny random GptOssForCausalLM with golden values from transformers.

    tools/.venv-original/bin/python tools/gen_tiny_gptoss.py

(tools/setup-original-venv.sh makes that environment: transformers 4.56.2, the first line with
gpt-oss, and torch 2.8.0 on the CPU.)

Writes testdata/tiny-gptoss/:
  config.json, generation_config.json, model.safetensors   every weight in f32, the experts as
                                                           transformers holds them unquantized
  tokenizer.json, tokenizer_config.json     byte-level BPE behind o200k's split regex, with
                                            gpt-oss's Harmony special tokens
  mxfp4/       the same model as gpt-oss is published: the experts' matrices as MXFP4
               `*_blocks` / `*_scales`, `quantization_config` in config.json, the rest in f32
  bf16/        every weight in bf16, the experts unquantized
  model.gguf   mxfp4/ converted by llama.cpp's own convert_hf_to_gguf.py (family_gguf.py):
               the experts as GGML MXFP4 blocks, gate and up apart, the rest in f32
  golden.safetensors
      input_ids.{s}; hidden.{s}.{i} (i = 0..L, the residual entering block i, L = after the
      last block); normed.{s}; logits.{s}; for every block: mlp_in.{s}.{i} (the router's input),
      router.{s}.{i} (the chosen experts, int64 [T, k], in topk's order) and
      route_weights.{s}.{i} (their softmax weights)
  golden_bf16.safetensors   the same keys computed in f32 from the bf16 weights
  golden.json    configuration, rope frequencies and attention factor, the clamp counts, the
                 window check, MXFP4 checks, versions

The expert weights are drawn as MXFP4 values (a random nibble times a random power of two per
block of 32), so the f32, bf16 and MXFP4 files hold the same expert numbers exactly and one set
of golden values serves the f32 and MXFP4 files. Two experts of every layer have large scales
so that the activation's clamps at +-7 are reached; the script checks that they are.

Everything runs in float32 on the CPU with eager attention, one thread and fixed seeds.
"""

import json
import shutil
import sys

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import GptOssConfig, GptOssForCausalLM
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

import family_gguf
import family_tokenizers as ftok
from golden_util import TESTDATA, write_json

OUT = TESTDATA / "tiny-gptoss"
SEED = 20251207
SEQ_LENGTHS = [7, 12, 1, 20]

CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,  # sliding, full, sliding, full
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 8,
    "num_experts_per_tok": 3,
    "sliding_window": 8,
    "rope_theta": 150000.0,
    # gpt-oss's own settings but for the original length: with head_dim 16 the ramp runs over
    # the first two frequencies, so one is kept, one blended and the others divided by 32.
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 64,
    },
    "max_position_embeddings": 2048,  # 64 x 32, as yarn expects
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

STD = {"norm": 0.1, "embed": 0.4, "head": 0.25, "qk": 0.2, "weight": 0.15, "bias": 0.3,
       "sinks": 1.0, "router": 0.4}

# Scale bytes of the expert blocks. Gate-and-up: 2^-5 .. 2^-3 for most experts (values up to
# 0.75), and 2^-2 .. 2^-1 for the experts listed in LOUD, whose gates and ups pass the clamps.
# Down: 2^-9 .. 2^-7, so that the residual stream stays of order one.
SCALES = {"gate_up": (122, 124), "down": (118, 120)}
LOUD_SCALES = (125, 126)
LOUD = (0, 5)


def make_model(special: dict, overrides=None) -> GptOssForCausalLM:
    kwargs = {**CONFIG, **(overrides or {})}
    cfg = GptOssConfig(
        vocab_size=ftok.VOCAB_SIZE,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"][0],
        pad_token_id=special["pad"],
        **kwargs,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(cfg)
    model.eval()
    return model


def mxfp4_tensor(gen, kind: str, experts: int, rows: int, cols: int):
    """(blocks [E, rows, cols/32, 16] u8, scales [E, rows, cols/32] u8)."""
    groups = cols // 32
    nibbles = torch.randint(0, 16, (experts, rows, groups, 32), generator=gen)
    blocks = (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)
    lo, hi = SCALES[kind]
    scales = torch.randint(lo, hi + 1, (experts, rows, groups), generator=gen)
    if kind == "gate_up":
        loud = torch.randint(LOUD_SCALES[0], LOUD_SCALES[1] + 1, (experts, rows, groups), generator=gen)
        for e in LOUD:
            scales[e] = loud[e]
    return blocks.contiguous(), scales.to(torch.uint8).contiguous()


def dequantize(blocks, scales):
    """Our own reading of the blocks: [E, rows, cols] float32 (out x in)."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    lo = lut[(blocks & 0x0F).long()]
    hi = lut[(blocks >> 4).long()]
    vals = torch.stack([lo, hi], dim=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * torch.pow(2.0, scales.float() - 127.0)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)


def init_weights(model) -> dict:
    """Random weights; returns the MXFP4 form of the experts, by parameter name."""
    gen = torch.Generator().manual_seed(SEED + 1)
    cfg = model.config
    packed = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                e, n_in, n_out = p.shape
                kind = "gate_up" if name.endswith("gate_up_proj") else "down"
                blocks, scales = mxfp4_tensor(gen, kind, e, n_out, n_in)
                values = dequantize(blocks, scales)  # [E, out, in]
                p.copy_(values.transpose(1, 2))
                packed[name] = (blocks, scales)
                continue
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + STD["norm"] * noise)
            elif name == "model.embed_tokens.weight":
                p.copy_(STD["embed"] * noise)
            elif name == "lm_head.weight":
                p.copy_(STD["head"] * noise)
            elif name.endswith("self_attn.sinks"):
                p.copy_(STD["sinks"] * noise)
            elif name.endswith("mlp.router.weight"):
                p.copy_(STD["router"] * noise)
            elif name.endswith(("bias", "_bias")):
                p.copy_(STD["bias"] * noise)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(STD["qk"] * noise)
            else:
                p.copy_(STD["weight"] * noise)
    assert len(packed) == 2 * cfg.num_hidden_layers
    return packed


def run_sequence(model, ids: torch.Tensor):
    """hidden[0..L], normed, logits, and per block the router's input, choices and weights."""
    layers = model.model.layers
    captured = {}
    handles = []

    def pre_hook(idx):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            captured[("hidden", idx)] = h.detach()[0].clone()

        return hook

    def router_hook(idx):
        def hook(module, args, output):
            scores, indices = output
            captured[("mlp_in", idx)] = args[0].detach()[0].clone()
            captured[("router", idx)] = indices.detach().clone()
            captured[("route_weights", idx)] = torch.gather(scores, 1, indices).detach().clone()

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layer.mlp.router.register_forward_hook(router_hook(i)))
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
    logits = out.logits.detach()[0].clone()
    with torch.no_grad():
        manual = model.lm_head(captured["normed"])
    assert torch.allclose(manual, logits, atol=1e-5)
    return captured, logits


def compute_goldens(model, seqs) -> dict:
    golden = {}
    n = model.config.num_hidden_layers
    for s, ids in enumerate(seqs):
        cap, logits = run_sequence(model, ids)
        golden[f"input_ids.{s}"] = ids.contiguous()
        for i in range(n + 1):
            golden[f"hidden.{s}.{i}"] = cap[("hidden", i)].float().contiguous()
        for i in range(n):
            golden[f"mlp_in.{s}.{i}"] = cap[("mlp_in", i)].float().contiguous()
            golden[f"router.{s}.{i}"] = cap[("router", i)].contiguous()
            golden[f"route_weights.{s}.{i}"] = cap[("route_weights", i)].float().contiguous()
        golden[f"normed.{s}"] = cap["normed"].float().contiguous()
        golden[f"logits.{s}"] = logits.float().contiguous()
    return golden


def clamp_counts(model, seqs) -> dict:
    """How often the experts' gate passes +7 and their up passes +-7, over the golden
    sequences: the clamps must be exercised."""
    counts = {"gate_above": 0, "up_outside": 0, "values": 0}
    limit = model.model.layers[0].mlp.experts.limit

    def hook(module, args, kwargs):
        h = args[0].reshape(-1, module.hidden_size)
        idx = kwargs["router_indices"]
        for e in range(module.num_experts):
            rows = (idx == e).any(dim=1)
            if not rows.any():
                continue
            gu = h[rows] @ module.gate_up_proj[e] + module.gate_up_proj_bias[e]
            gate, up = gu[..., ::2], gu[..., 1::2]
            counts["gate_above"] += int((gate > limit).sum())
            counts["up_outside"] += int((up.abs() > limit).sum())
            counts["values"] += gate.numel()

    handles = [l.mlp.experts.register_forward_pre_hook(hook, with_kwargs=True) for l in model.model.layers]
    try:
        for ids in seqs:
            with torch.no_grad():
                model(input_ids=ids[None, :], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert counts["gate_above"] > 0 and counts["up_outside"] > 0, counts
    return counts


def check_window(special, model, golden) -> dict:
    """The window must matter: a huge window changes every sequence longer than it."""
    window = model.config.sliding_window
    big = make_model(special, {"sliding_window": 10**6})
    big.load_state_dict(model.state_dict())
    diffs = {}
    for s, length in enumerate(SEQ_LENGTHS):
        _, logits = run_sequence(big, golden[f"input_ids.{s}"])
        d = float((logits - golden[f"logits.{s}"]).abs().max())
        diffs[str(length)] = d
        if length > window:
            assert d > 1e-2, f"window {window} does not change a sequence of {length}: {d}"
        else:
            assert d < 1e-5, (length, d)
    return diffs


def check_sinks(special, model, golden) -> float:
    """Sinks must matter: setting them to -inf (no sink) changes the logits."""
    other = make_model(special)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in other.model.layers:
            layer.self_attn.sinks.fill_(-1e30)
    _, logits = run_sequence(other, golden["input_ids.3"])
    d = float((logits - golden["logits.3"]).abs().max())
    assert d > 1e-2, d
    return d


def write_mxfp4(model, packed: dict, out) -> dict:
    """The model in the published layout: experts as *_blocks / *_scales, the rest as is."""
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, t in model.state_dict().items():
        if name in packed:
            blocks, scales = packed[name]
            state[f"{name}_blocks"] = blocks
            state[f"{name}_scales"] = scales
            # transformers' own dequantization gives back the parameter exactly.
            back = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)
            assert torch.equal(back, t), name
        else:
            state[name] = t.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((OUT / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(OUT / f, out / f)
    return {"tensors": len(state), "bytes": (out / "model.safetensors").stat().st_size}


def check_transformers_reads_mxfp4(model, out) -> str:
    """transformers' own loader, dequantizing on the CPU, reads the MXFP4 folder back into
    the same parameters."""
    try:
        from transformers import Mxfp4Config

        back = GptOssForCausalLM.from_pretrained(
            str(out), quantization_config=Mxfp4Config(dequantize=True), torch_dtype=torch.float32
        )
    except Exception as e:  # noqa: BLE001 - recorded in golden.json, not fatal
        return f"not checked: {type(e).__name__}: {e}"
    want = model.state_dict()
    for name, t in back.state_dict().items():
        assert torch.equal(t.float(), want[name].float()), name
    return "transformers' loader (Mxfp4Config(dequantize=True)) gives every parameter exactly"


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    special = ftok.write_tokenizer(OUT, "harmony")
    model = make_model(special)
    packed = init_weights(model)
    model.save_pretrained(str(OUT), safe_serialization=True)
    with safe_open(str(OUT / "model.safetensors"), "pt") as fh:
        for n in fh.keys():
            assert torch.equal(fh.get_tensor(n), model.state_dict()[n]), n

    gen = torch.Generator().manual_seed(SEED + 2)
    seqs = [torch.randint(0, ftok.VOCAB_SIZE, (n,), generator=gen, dtype=torch.int64) for n in SEQ_LENGTHS]
    golden = compute_goldens(model, seqs)
    save_file(golden, str(OUT / "golden.safetensors"), metadata={"note": "transformers f32"})

    mx = write_mxfp4(model, packed, OUT / "mxfp4")
    mx["transformers"] = check_transformers_reads_mxfp4(model, OUT / "mxfp4")

    with family_gguf.LlamaCppSource() as llama_cpp:
        family_gguf.convert(llama_cpp, OUT / "mxfp4", OUT / "model.gguf", "gpt-4o")
    gguf_meta, gguf_tensors = family_gguf.read_gguf(OUT / "model.gguf")
    mx["gguf"] = {
        "architecture": gguf_meta["general.architecture"],
        "expert_types": sorted({t for n, (_, t, _) in gguf_tensors.items() if "_exps.weight" in n}),
        "tensors": len(gguf_tensors),
    }
    assert mx["gguf"]["expert_types"] == ["MXFP4"], mx["gguf"]

    bf16 = make_model(special)
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    bf16.save_pretrained(str(OUT / "bf16"), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(OUT / f, OUT / "bf16" / f)
    widened = make_model(special)
    widened.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
    save_file(compute_goldens(widened, seqs), str(OUT / "golden_bf16.safetensors"),
              metadata={"note": "transformers f32 from the bf16 weights"})

    magnitude = max(float(golden[k].abs().max()) for k in golden if k.startswith("hidden."))
    assert magnitude < 50, magnitude
    rot = model.model.rotary_emb
    info = {
        "config": json.loads((OUT / "config.json").read_text()),
        "inv_freq": [float(x) for x in rot.inv_freq],
        "attention_scaling": float(rot.attention_scaling),
        "clamps": clamp_counts(model, seqs),
        "largest_residual_value": magnitude,
        "window_logit_change": check_window(special, model, golden),
        "no_sink_logit_change": check_sinks(special, model, golden),
        "mxfp4": mx,
        "special_tokens": special["table"],
        "tokenizer_examples": ftok.tokenizer_examples(OUT, "harmony"),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
    }
    write_json(OUT / "golden.json", info)
    print(json.dumps({k: info[k] for k in ("attention_scaling", "clamps", "largest_residual_value", "window_logit_change",
                                            "no_sink_logit_change", "mxfp4")}, indent=1))


if __name__ == "__main__":
    main()
