"""Shared set-up for running the original talkative-lens implementation as a reference.

The original is safety-research/talkative-probes at ORIGINAL_COMMIT. It is never copied into
this repository: the scripts that use this module take the path of a local copy (a work tree,
or a bare git copy, which is then exported to a temporary folder) and import its `lens`
package from there, unchanged. tools/setup-original-venv.sh makes the Python environment its
modules need.

What this module adds around the original, and why:

* Model folders in the layout `AutoModelForCausalLM.from_pretrained` and `LensAnalyzer` read:
  the tiny llama of testdata/ with a tokenizer_config.json (the analyzer needs a pad token and
  a start-of-turn token), and the demo model converted from its GGUF file (weights dequantized
  to f32 by transformers' GGUF loader; tokenizer rebuilt from the GGUF vocabulary with the
  `smollm` pre-tokenizer, no BOS added, `<|im_end|>` as end and pad, as llama.cpp and lensd
  read that file).
* `use_current_llama_branch`: the original's Decoder has three code paths for the patched
  first pass. Its LLaMA branch calls `LlamaModel._update_causal_mask` and leaves rotary
  embeddings to the layers; transformers removed both in 4.53.0, the release that added
  `transformers.masking_utils`, which the same module imports at its top. So that branch
  cannot run under any transformers release the module imports under. Its Qwen2/Gemma branch
  does the same patching (every layer i < P overwrites the placeholder row with proj_i(A))
  with the current transformers API, and a LLaMA layer takes the same arguments as a Qwen2
  layer, so the Decoder is pointed at that branch for LLaMA bases.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ORIGINAL_REPO = "safety-research/talkative-probes"
ORIGINAL_COMMIT = "7de72fe824d3773d11a37363dfe663a71a14b047"

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "testdata" / "tiny-llama"
DEMO_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def original_tree(path: str | Path, scratch: Path) -> Path:
    """The `talkative_autoencoder` folder of the original at ORIGINAL_COMMIT.

    `path` is a work tree or a bare git copy of the repository. A git copy is checked for the
    commit; a bare one is exported into `scratch` with `git archive`.
    """
    path = Path(path)
    work = path / "talkative_autoencoder"
    git_dir = None
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        git_dir = path
    elif (path / ".git").exists():
        git_dir = path / ".git"
    if git_dir is not None:
        head = subprocess.run(
            ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if head != ORIGINAL_COMMIT:
            sys.exit(f"{path}: HEAD is {head}, expected {ORIGINAL_COMMIT} of {ORIGINAL_REPO}")
        if not work.is_dir():
            out = scratch / "original"
            out.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", f"--git-dir={git_dir}", "archive", ORIGINAL_COMMIT, "talkative_autoencoder"],
                check=True, capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
            work = out / "talkative_autoencoder"
    if not (work / "lens" / "models" / "decoder.py").is_file():
        sys.exit(f"{path}: no talkative_autoencoder/lens/models/decoder.py; "
                 f"give a copy of {ORIGINAL_REPO} at {ORIGINAL_COMMIT}")
    return work


def import_original(path: str | Path, scratch: Path) -> Path:
    """Puts the original's `lens` package on sys.path and returns its folder."""
    work = original_tree(path, scratch)
    sys.path.insert(0, str(work))
    return work


def use_current_llama_branch(decoder) -> bool:
    """Points a Decoder on a LLaMA base at its Qwen2/Gemma patching branch (module docstring)."""
    model_type = getattr(decoder.base.config, "model_type", "")
    if model_type == "llama":
        decoder.is_qwen2 = True
        return True
    return False


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def prepare_tiny(out: Path) -> Path:
    """testdata/tiny-llama as a transformers folder with a tokenizer_config.json."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(TINY / name, out / name)
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "add_bos_token": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    })
    return out


def prepare_demo(out: Path) -> Path:
    """The demo GGUF as a transformers folder: f32 weights and the GGUF's own tokenization."""
    import torch
    from tokenizers import pre_tokenizers, processors
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    if not DEMO_GGUF.is_file():
        sys.exit(f"{DEMO_GGUF} is missing: run scripts/fetch-demo-model.sh")
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(DEMO_GGUF.parent), gguf_file=DEMO_GGUF.name, torch_dtype=torch.float32)
    model.config.bos_token_id = 1
    model.config.eos_token_id = 2
    model.config.pad_token_id = 2
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(str(DEMO_GGUF.parent), gguf_file=DEMO_GGUF.name)
    backend = tok.backend_tokenizer
    # The `smollm` pre-tokenizer splits every numeric character on its own before the GPT-2
    # byte-level split; the file says add_bos_token = false.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    fixed = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fixed.chat_template = tok.chat_template
    fixed.save_pretrained(out)
    return out


def scratch_dir(keep: str | None) -> Path:
    """A folder for prepared models and exported sources: `keep` if given, else a new temp dir."""
    if keep:
        p = Path(keep)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return Path(tempfile.mkdtemp(prefix="lensd-original-"))
