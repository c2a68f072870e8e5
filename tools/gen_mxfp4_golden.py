#!/usr/bin/env python3
"""testdata/mxfp4_golden.safetensors: MXFP4 blocks and scales with transformers' dequantization.

    tools/.venv-original/bin/python tools/gen_mxfp4_golden.py

Random expert tensors in gpt-oss's stored layout (`*_blocks` [E, rows, G, 16] u8, `*_scales`
[E, rows, G] u8, scales around 127 as real checkpoints have them, every nibble value present)
and `transformers.integrations.mxfp4.convert_moe_packed_tensors` of them in f32, which returns
[E, G * 32, rows] (the experts' [in, out] layout). crates/engine/src/weights/mxfp4.rs is checked
against it.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

OUT = Path(__file__).resolve().parent.parent / "testdata" / "mxfp4_golden.safetensors"


def main() -> None:
    g = torch.Generator().manual_seed(20)
    experts, rows, groups = 3, 5, 4
    blocks = torch.randint(0, 256, (experts, rows, groups, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    blocks[0, 0, 0] = torch.arange(16, dtype=torch.uint8) * 17  # every nibble, both halves
    scales = torch.randint(112, 142, (experts, rows, groups), generator=g, dtype=torch.int32).to(torch.uint8)
    scales[0, 0, :2] = torch.tensor([0, 254], dtype=torch.uint8)  # the extremes
    want = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)
    save_file({"blocks": blocks.contiguous(), "scales": scales.contiguous(),
               "dequantized": want.contiguous()}, str(OUT), metadata={"source": "transformers 4.56.2"})
    print(f"wrote {OUT}: {tuple(blocks.shape)} blocks -> {tuple(want.shape)}")


if __name__ == "__main__":
    main()
