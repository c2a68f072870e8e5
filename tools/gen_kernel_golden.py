#!/usr/bin/env python3
"""Golden rows for lensd-kernels: blocks of every type the kernels cover, taken from real GGUF
files, with llama.cpp's dequantization of them (gguf-py's `quants.dequantize`, the Python
reference of llama.cpp's repository).

The demo model (Q4_1, Q8_0) and Gemma-3-270M (Q4_K, Q5_0, Q6_K, Q8_0) hold five of the seven
types; Q4_0 and Q5_K come from the demo model requantized by llama.cpp's own quantizer
(`llama_model_quantize`, Q4_0 and Q5_K_M) into a temporary folder.

For each type, three rows (first, middle, last) of the first matrix of that type are written to
testdata/kernels/llamacpp_dequant.safetensors as `<type>.blocks` (u8, one row of blocks each)
and `<type>.values` (f32), with the file and tensor in the metadata.

Run with tools/.venv/bin/python tools/gen_kernel_golden.py (after scripts/fetch-demo-model.sh
and scripts/fetch-gemma3.sh).
"""

import json
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors.numpy import save_file

from golden_util import TESTDATA, check_demo_model, check_gemma3_model

OUT = TESTDATA / "kernels" / "llamacpp_dequant.safetensors"
TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]


def requantize(src: Path, dst: Path, ftype: int) -> Path:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantize {src} to {dst}")
    return dst


def first_matrix(path: Path, qtype):
    for t in GGUFReader(path).tensors:
        if t.tensor_type == qtype and len(t.shape) == 2:
            return t
    return None


def main():
    demo = check_demo_model()
    gemma = check_gemma3_model()
    tensors, meta = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = [
            demo,
            gemma,
            requantize(demo, Path(tmp) / "demo-Q4_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
            requantize(demo, Path(tmp) / "demo-Q5_K_M.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M),
        ]
        for qtype in TYPES:
            found = next(
                ((p, t) for p in sources if (t := first_matrix(p, qtype)) is not None), None
            )
            if found is None:
                raise SystemExit(f"no {qtype.name} matrix in {sources}")
            path, t = found
            rows = t.data.reshape(t.data.shape[0], -1)
            picked = [0, rows.shape[0] // 2, rows.shape[0] - 1]
            blocks = np.ascontiguousarray(rows[picked]).astype(np.uint8)
            values = np.stack([dequantize(b, qtype).reshape(-1) for b in blocks]).astype(np.float32)
            tensors[f"{qtype.name}.blocks"] = blocks
            tensors[f"{qtype.name}.values"] = values
            source = path.name if path in (demo, gemma) else f"{path.name} (llama.cpp's quantizer)"
            meta[qtype.name] = json.dumps({"file": source, "tensor": t.name, "rows": picked})
            print(f"{qtype.name}: {t.name} of {source}, rows {picked}, {values.shape[1]} values")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
