"""GGUF conversion of the tiny family models with llama.cpp's own converter.

The converter is `convert_hf_to_gguf.py` (and its `conversion/` package and `gguf-py/`)
from the llama-cpp-python 0.3.36 source distribution, the llama.cpp that the venv
compiles. The sdist is fetched once with pip into tools/.build/sdist/ (git-ignored) and
unpacked into a temporary folder for each run; nothing of it is committed or copied.

The converter runs in a subprocess (it imports its own, newer `gguf-py`; the checks
below use the pinned `gguf` package). Its only change is the vocabulary step for the
byte-level BPE tokenizers: `get_vocab_base_pre` identifies a pre-tokenizer by hashing
the token ids of a fixed text, and a 512-token tokenizer trained here has no known
hash, so the method is wrapped to return the pre-tokenizer the tiny tokenizer really
uses (its split regex is the real family's) when the original raises
NotImplementedError. Gemma vocabularies come from a real SentencePiece tokenizer.model
and need no change.
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from golden_util import ROOT

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_DIR = ROOT / "tools" / ".build" / "sdist"
SDIST = SDIST_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"

DRIVER = r"""
import sys
from pathlib import Path
llama_cpp_dir, pre_name = sys.argv[1], sys.argv[2]
sys.path.insert(0, llama_cpp_dir)
sys.path.insert(1, str(Path(llama_cpp_dir) / "gguf-py"))
from conversion.base import TextModel
original = TextModel.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        if pre_name == "-":
            raise
        return pre_name

TextModel.get_vocab_base_pre = get_vocab_base_pre
import runpy
sys.argv = [str(Path(llama_cpp_dir) / "convert_hf_to_gguf.py")] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def fetch_sdist() -> Path:
    if not SDIST.exists():
        SDIST_DIR.mkdir(parents=True, exist_ok=True)
        # The llama-cpp-python sdist only; its build dependencies come as wheels.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--no-binary", "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
             "-d", str(SDIST_DIR)],
            check=True,
        )
    return SDIST


class LlamaCppSource:
    """Context manager: the converter's files unpacked into a temporary folder."""

    def __enter__(self) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix="lensd-llama-cpp-")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(fetch_sdist()) as tar:
            members = [
                m for m in tar.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)
            ]
            tar.extractall(self._tmp.name, members=members, filter="data")
        return Path(self._tmp.name) / prefix

    def __exit__(self, *exc):
        self._tmp.cleanup()


def convert(llama_cpp: Path, model_dir: Path, outfile: Path, pre_name) -> str:
    cmd = [
        sys.executable, "-c", DRIVER, str(llama_cpp), pre_name or "-",
        str(model_dir), "--outfile", str(outfile), "--outtype", "f32",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"convert_hf_to_gguf.py failed for {model_dir}")
    return res.stderr


def _value(field):
    """A GGUF metadata value as plain Python (strings decoded, arrays as lists)."""
    from gguf import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    part = field.parts[field.data[0]]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def read_gguf(path: Path):
    """(metadata dict, {tensor name: (shape as stored, type name, float64 data)})."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = _value(field)
    tensors = {}
    for t in reader.tensors:
        data = np.array(t.data, dtype=np.float64)
        # GGUF lists dimensions fastest first; numpy's shape is the reverse.
        tensors[t.name] = ([int(x) for x in t.shape], t.tensor_type.name, data)
    return meta, tensors


def summarise_meta(meta: dict) -> dict:
    """Metadata without the long vocabulary arrays (their length instead)."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, list) and len(v) > 16:
            out[k] = f"[{len(v)} items]"
        else:
            out[k] = v
    return out


def interleave_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows of a Hugging Face checkpoint (rotary pairs j and j + hd/2 of each head)
    reordered so that each pair is adjacent (rows 2j and 2j + 1), the layout llama.cpp
    expects for Llama models; used to check the converted files."""
    hd = w.shape[0] // n_head
    order = []
    for h in range(n_head):
        for j in range(hd // 2):
            order += [h * hd + j, h * hd + hd // 2 + j]
    return w[np.array(order)]


# Hugging Face tensor name (after "model.layers.{i}.") -> GGUF name (after "blk.{i}.").
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

# Metadata each family needs, beyond the common ones.
REQUIRED = {
    "llama": ["rope.dimension_count", "rope.freq_base"],
    "qwen2": ["rope.freq_base"],
    "qwen3": ["rope.freq_base", "attention.key_length", "attention.value_length"],
    "gemma2": [
        "attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping",
        "attention.key_length", "attention.value_length",
    ],
    "gemma3": [
        "attention.sliding_window", "rope.freq_base", "rope.freq_base_swa",
        "rope.scaling.type", "rope.scaling.factor", "attention.key_length",
        "attention.value_length",
    ],
}
COMMON = [
    "block_count", "context_length", "embedding_length", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
]


def hf_to_gguf_name(name: str, gemma: bool) -> str:
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    parts = name.split(".")
    i, rest = parts[2], ".".join(parts[3:])
    if rest == "post_attention_layernorm.weight":
        # Llama/Qwen: the norm before the MLP; Gemma: the norm after attention.
        return f"blk.{i}." + ("post_attention_norm.weight" if gemma else "ffn_norm.weight")
    return f"blk.{i}." + LAYER_NAMES[rest]


def check_file(path: Path, model, hf: dict, recipe: str) -> dict:
    """Check model.gguf against the checkpoint: metadata values, every tensor's data
    (with the converter's documented changes), nothing missing or extra."""
    meta, tensors = read_gguf(path)
    cfg = model.config
    arch = meta["general.architecture"]
    gemma = arch.startswith("gemma")
    for key in COMMON + REQUIRED[arch]:
        assert f"{arch}.{key}" in meta, f"{path}: no {arch}.{key}"
    assert meta[f"{arch}.block_count"] == cfg.num_hidden_layers
    assert meta[f"{arch}.embedding_length"] == cfg.hidden_size
    assert meta[f"{arch}.attention.head_count"] == cfg.num_attention_heads
    assert meta[f"{arch}.attention.head_count_kv"] == cfg.num_key_value_heads
    assert meta["general.file_type"] == 0  # ALL_F32
    if gemma:
        assert meta[f"{arch}.attention.sliding_window"] == cfg.sliding_window
        assert meta[f"{arch}.attention.key_length"] == cfg.head_dim
    if arch == "gemma2":
        assert meta["gemma2.attn_logit_softcapping"] == cfg.attn_logit_softcapping
        assert meta["gemma2.final_logit_softcapping"] == cfg.final_logit_softcapping
    rp = cfg.rope_parameters
    if arch == "gemma3":
        assert meta["gemma3.rope.freq_base"] == rp["full_attention"]["rope_theta"]
        assert meta["gemma3.rope.freq_base_swa"] == rp["sliding_attention"]["rope_theta"]
        assert meta["gemma3.rope.scaling.type"] == "linear"
        assert meta["gemma3.rope.scaling.factor"] == rp["full_attention"]["factor"]
    elif arch == "gemma2":
        # The Gemma-2 converter writes no rope base; llama.cpp then uses its default,
        # 10000, which is what the tiny model (and every real Gemma-2) has.
        assert f"{arch}.rope.freq_base" not in meta and rp["rope_theta"] == 10000.0
    else:
        assert meta[f"{arch}.rope.freq_base"] == rp["rope_theta"]
    if rp.get("rope_type") == "linear":
        assert meta[f"{arch}.rope.scaling.type"] == "linear"
        assert meta[f"{arch}.rope.scaling.factor"] == rp["factor"]

    interleaved = arch == "llama"
    seen = set()
    for name, value in hf.items():
        gname = hf_to_gguf_name(name, gemma)
        assert gname in tensors, f"{path}: {name} -> {gname} missing"
        seen.add(gname)
        expected = value.astype(np.float32)
        if gemma and name.endswith("norm.weight"):
            expected = (value + 1.0).astype(np.float32)
        if interleaved and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            expected = interleave_rows(expected, heads)
        shape, ttype, data = tensors[gname]
        assert ttype == "F32", (gname, ttype)
        assert shape == list(reversed(value.shape)), (gname, shape, value.shape)
        assert np.array_equal(data.reshape(-1).astype(np.float32), expected.reshape(-1)), gname
    extra = sorted(set(tensors) - seen)
    if rp.get("rope_type") == "llama3":
        assert extra == ["rope_freqs.weight"], extra
        factors = tensors["rope_freqs.weight"][2]
        import family_reference as ref

        base = rp["rope_theta"] ** (-np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
        want = base / ref.inv_freq(rp, cfg.head_dim)
        assert np.allclose(factors, want, rtol=1e-6), (factors, want)
    else:
        assert extra == [], extra
    return {
        "file_bytes": path.stat().st_size,
        "metadata": summarise_meta(meta),
        "tensors": {n: [tensors[n][0], tensors[n][1]] for n in sorted(tensors)},
        "norms_stored_as_1_plus_w": gemma,
        "qk_rows_interleaved": interleaved,
    }


def llama_cpp_check(path: Path, golden: dict, examples: list) -> dict:
    """Run llama.cpp (the venv's llama-cpp-python) on model.gguf: its logits against the
    golden values the GGUF can reproduce, and its tokenizer against golden.json's ids."""
    try:
        from llama_cpp import Llama
    except ImportError as e:  # the venv is still compiling it, or it failed to build
        return {"skipped": f"llama_cpp not importable: {e}"}
    llm = Llama(
        model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1,
        logits_all=True, verbose=False, type_k=0, type_v=0, flash_attn=False, swa_full=True,
    )
    worst, per_seq = 0.0, []
    s = 0
    while f"input_ids.{s}" in golden:
        ids = golden[f"input_ids.{s}"].tolist()
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float64)
        d = float(np.abs(scores - golden[f"logits.{s}"].double().numpy()).max())
        per_seq.append(d)
        worst = max(worst, d)
        s += 1
    tok_equal = []
    for ex in examples:
        add_bos = len(ex["ids"]) > len(ex["ids_without_special"])
        got = llm.tokenize(ex["text"].encode("utf-8"), add_bos=add_bos, special=True)
        tok_equal.append(got == ex["ids"])
    del llm
    return {"max_abs_logit_diff": worst, "per_sequence": per_seq, "tokenizer_examples_equal": tok_equal}
