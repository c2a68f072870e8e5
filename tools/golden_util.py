"""Small helpers shared by the golden-file generators in tools/."""

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
DEMO_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_demo_model() -> Path:
    if not DEMO_MODEL.exists():
        raise SystemExit(f"missing {DEMO_MODEL}; run scripts/fetch-demo-model.sh first")
    digest = sha256_file(DEMO_MODEL)
    if digest != DEMO_MODEL_SHA256:
        raise SystemExit(f"{DEMO_MODEL} has sha256 {digest}, expected {DEMO_MODEL_SHA256}")
    return DEMO_MODEL


GEMMA3_MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
GEMMA3_MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def check_gemma3_model() -> Path:
    if not GEMMA3_MODEL.exists():
        raise SystemExit(f"missing {GEMMA3_MODEL}; run scripts/fetch-gemma3.sh first")
    digest = sha256_file(GEMMA3_MODEL)
    if digest != GEMMA3_MODEL_SHA256:
        raise SystemExit(f"{GEMMA3_MODEL} has sha256 {digest}, expected {GEMMA3_MODEL_SHA256}")
    return GEMMA3_MODEL


def _is_flat(v) -> bool:
    """True for lists whose items are scalars or lists of scalars."""
    if not isinstance(v, list):
        return False
    for x in v:
        if isinstance(x, dict):
            return False
        if isinstance(x, list) and any(isinstance(y, (list, dict)) for y in x):
            return False
    return True


def _fmt(v, indent: int) -> str:
    pad = " " * indent
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [
            f'{pad} {json.dumps(k, ensure_ascii=False)}: {_fmt(x, indent + 1)}' for k, x in v.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, list) and not _is_flat(v):
        items = [f"{pad} {_fmt(x, indent + 1)}" for x in v]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def write_json(path: Path, obj) -> None:
    """Write JSON that is readable but compact: scalar lists stay on one line."""
    text = _fmt(obj, 0) + "\n"
    assert json.loads(text) == obj
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
