#!/usr/bin/env python3
"""Tests of tools/convert_talkative.py. They need only Python 3 and numpy (no torch).

    python3 tools/test_convert_talkative.py        (or: python3 -m unittest discover -s tools
                                                     -p 'test_convert_talkative.py')

The inputs are in testdata/talkative/ (written by tools/talkative_reference.py with torch):
original/checkpoint.pt holds the same lens as testdata/talkative/lens/, original/malicious.pt
calls posix.system from its pickle, and variants/ holds small broken or bf16 checkpoints. The
other broken inputs (truncated, not a zip, ...) are made here in a temporary folder.
"""

import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
DATA = ROOT / "testdata" / "talkative"
CHECKPOINT = DATA / "original" / "checkpoint.pt"
MALICIOUS = DATA / "original" / "malicious.pt"
VARIANTS = DATA / "variants"
BASE_CONFIG = ROOT / "testdata" / "tiny-llama" / "config.json"
PWNED = Path("/tmp/lensd-pwned")

sys.path.insert(0, str(TOOLS))
import checkpoint_io as cio  # noqa: E402
import convert_talkative as conv  # noqa: E402


def run(*args):
    """Run the converter as a program; return (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, str(TOOLS / "convert_talkative.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


class ConverterTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="convert-talkative-")
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def assertRefused(self, path, *needles, extra=(), shown=None):
        out = self.tmp / "out-refused"
        code, stdout, stderr = run(path, "--out", out, *extra)
        self.assertEqual(code, 2, f"stdout={stdout!r} stderr={stderr!r}")
        lines = stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith(f"refusing {shown or path}: "), lines[0])
        for needle in needles:
            self.assertIn(needle, lines[0])
        self.assertFalse((out / "talkative.json").exists())
        self.assertFalse((out / "lens.safetensors").exists())
        return lines[0]

    def assertSameTensors(self, got_path, want_path):
        got = cio.read_safetensors(got_path)
        want = cio.read_safetensors(want_path)
        self.assertEqual(sorted(got), sorted(want))
        for name in want:
            self.assertEqual(got[name].dtype, want[name].dtype, name)
            self.assertEqual(got[name].shape, want[name].shape, name)
            self.assertEqual(got[name].array.tobytes(), want[name].array.tobytes(), name)

    # ---- the committed checkpoint -------------------------------------------------------------

    def test_checkpoint_gives_the_committed_lens(self):
        out = self.tmp / "lens"
        code, stdout, stderr = run(CHECKPOINT, "--out", out, "--base-config", BASE_CONFIG)
        self.assertEqual(code, 0, stderr)
        self.assertEqual(stderr, "")
        self.assertSameTensors(out / "lens.safetensors", DATA / "lens" / "lens.safetensors")
        # Same bytes, so the same content_sha256.
        self.assertEqual((out / "lens.safetensors").read_bytes(),
                         (DATA / "lens" / "lens.safetensors").read_bytes())
        got, want = read_json(out / "talkative.json"), read_json(DATA / "lens" / "talkative.json")
        self.assertEqual(got.pop("source"), {"converted_from": "checkpoint.pt", "step": 1000})
        want.pop("source", None)
        self.assertEqual(got, want)
        self.assertEqual(list(got), ["format", "version", "layer", "t_text", "add_current_token",
                                     "decoder", "encoder", "dtype", "base", "content_sha256"])

    def test_checkpoints_of_the_original_give_the_committed_lenses(self):
        # Written by the original's own code (tools/gen_original_talkative_golden.py); the Rust
        # test crates/engine/tests/talkative_original.rs checks the committed lenses against
        # the original analyzer's output, so a change of the key mapping or of a projection's
        # orientation fails here.
        root = DATA / "from-original"
        cases = sorted(p.parent.name for p in root.glob("*/checkpoint.pt"))
        self.assertEqual(cases, ["tiny-deployed", "tiny-full-donor", "tiny-lora", "tiny-postfix"])
        for case in cases:
            out = self.tmp / case
            code, _, stderr = run(root / case / "checkpoint.pt", "--out", out,
                                  "--base-config", BASE_CONFIG, "--name", "tiny-llama")
            self.assertEqual(code, 0, f"{case}: {stderr}")
            for name in ("lens.safetensors", "talkative.json"):
                self.assertEqual((out / name).read_bytes(),
                                 (root / case / "lens" / name).read_bytes(), f"{case}: {name}")
        # The variation without an encoder projection or with a postfix: identity and rows.
        m = read_json(root / "tiny-postfix" / "lens" / "talkative.json")
        self.assertEqual((m["add_current_token"], m["decoder"]["patched_layers"],
                          m["encoder"]["output_layer"], m["layer"]), (False, 2, 2, 0))
        t = cio.read_safetensors(root / "tiny-postfix" / "lens" / "lens.safetensors")
        w = t["encoder.proj.weight"].array
        self.assertTrue((w == cio.np.eye(w.shape[0], dtype=w.dtype)).all())
        self.assertFalse(t["encoder.proj.bias"].array.any())
        self.assertEqual(t["encoder.soft_prompt_embeddings_postfix"].shape[0], 7)

    def test_dtype_option_rounds_to_nearest(self):
        ckpt = DATA / "from-original" / "tiny-deployed" / "checkpoint.pt"
        want = cio.read_safetensors(DATA / "from-original" / "tiny-deployed" / "lens" / "lens.safetensors")
        for dtype, rel in (("f16", 2.0 ** -11), ("bf16", 2.0 ** -8)):
            out = self.tmp / dtype
            code, _, stderr = run(ckpt, "--out", out, "--base-config", BASE_CONFIG, "--dtype", dtype)
            self.assertEqual(code, 0, stderr)
            self.assertEqual(read_json(out / "talkative.json")["dtype"], dtype)
            got = cio.read_safetensors(out / "lens.safetensors")
            self.assertEqual(sorted(got), sorted(want))
            for name, w in want.items():
                g = cio._as_f32(got[name])
                self.assertEqual(got[name].dtype, dtype)
                err = cio.np.abs(g - w.array) - rel * cio.np.abs(w.array)
                self.assertTrue((err <= 1e-7).all(), f"{dtype} {name}")
        # ties go to even: 1 + 2^-8 is halfway between two bf16 values
        t = cio.Tensor("f32", cio.np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8], dtype="<f4"))
        self.assertEqual(cio.cast(t, "bf16").array.tolist(), [0x3F80, 0x3F82])

    def test_artifact_format(self):
        out = self.tmp / "lens"
        code, _, stderr = run(CHECKPOINT, "--out", out)
        self.assertEqual(code, 0, stderr)
        m = read_json(out / "talkative.json")
        self.assertEqual(m["format"], "lensd.talkative")
        self.assertEqual(m["version"], 1)
        self.assertEqual((m["layer"], m["t_text"], m["add_current_token"]), (0, 6, True))
        self.assertEqual(m["decoder"], {"patched_layers": 2,
                                        "prompt": "Short explanation of <embed>:"})
        self.assertEqual(m["encoder"], {"output_layer": 1, "prompt": "Summary of the text:<text>"})
        self.assertEqual(m["dtype"], "f32")
        # Without --base-config only what the checkpoint knows.
        self.assertEqual(m["base"], {"name": "tiny-llama", "d_model": 64})
        blob = (out / "lens.safetensors").read_bytes()
        import hashlib

        self.assertEqual(m["content_sha256"], hashlib.sha256(blob).hexdigest())
        # The safetensors layout: u64 length, JSON header padded to 8 bytes, sorted names,
        # contiguous offsets covering all data.
        (n,) = struct.unpack("<Q", blob[:8])
        self.assertEqual(n % 8, 0)
        header = json.loads(blob[8:8 + n])
        names = list(header)
        self.assertEqual(names, sorted(names))
        self.assertEqual(set(names), {
            "decoder.proj_weight", "decoder.proj_bias", "decoder.prompt_left_emb",
            "decoder.prompt_right_emb", "encoder.proj.weight", "encoder.proj.bias",
            "encoder.soft_prompt_embeddings", "encoder.soft_prompt_embeddings_postfix",
            "encoder.special_last_token_vector"})
        offset = 0
        for name in names:
            self.assertEqual(header[name]["dtype"], "F32")
            a, b = header[name]["data_offsets"]
            self.assertEqual(a, offset)
            count = 1
            for s in header[name]["shape"]:
                count *= s
            self.assertEqual(b - a, 4 * count)
            offset = b
        self.assertEqual(8 + n + offset, len(blob))
        self.assertEqual(header["decoder.proj_weight"]["shape"], [2, 64, 64])
        self.assertEqual(header["encoder.soft_prompt_embeddings"]["shape"], [4, 64])

    def test_name_option(self):
        out = self.tmp / "lens"
        code, _, stderr = run(CHECKPOINT, "--out", out, "--name", "my-base")
        self.assertEqual(code, 0, stderr)
        self.assertEqual(read_json(out / "talkative.json")["base"]["name"], "my-base")

    def test_folder_means_newest_checkpoint(self):
        folder = self.tmp / "ckpts"
        folder.mkdir()
        shutil.copy(CHECKPOINT, folder / "new.pt")
        shutil.copy(MALICIOUS, folder / "old.pt")
        (folder / "notes.txt").write_text("not a checkpoint")
        os.utime(folder / "old.pt", (1_000_000, 1_000_000))
        os.utime(folder / "new.pt", (2_000_000, 2_000_000))
        os.utime(folder / "notes.txt", (3_000_000, 3_000_000))
        out = self.tmp / "lens"
        code, _, stderr = run(folder, "--out", out)
        self.assertEqual(code, 0, stderr)
        self.assertEqual(read_json(out / "talkative.json")["source"],
                         {"converted_from": "new.pt", "step": 1000})
        # Now the hostile one is the newest.
        os.utime(folder / "old.pt", (4_000_000, 4_000_000))
        self.assertRefused(folder, "posix.system", shown=folder / "old.pt")

    def test_empty_folder(self):
        folder = self.tmp / "empty"
        folder.mkdir()
        self.assertRefused(folder, "no *.pt")

    # ---- hostile and damaged files ------------------------------------------------------------

    def test_malicious_pickle_is_not_run(self):
        if PWNED.exists():
            PWNED.unlink()
        line = self.assertRefused(MALICIOUS, "posix.system", "not a tensor or plain data",
                                  "nothing was run")
        self.assertIn("malicious.pt", line)
        self.assertFalse(PWNED.exists(), "the pickle's command ran")

    def test_other_globals_are_refused_by_name(self):
        cases = {
            b"cbuiltins\neval\n(X\x03\x00\x00\x001+1tR.": "builtins.eval",
            b"\x80\x02csubprocess\nPopen\n(X\x04\x00\x00\x00truetR.": "subprocess.Popen",
            b"\x80\x02ctorch\nload\n(X\x01\x00\x00\x00xtR.": "torch.load",
            b"\x80\x02cnumpy\nload\n(X\x01\x00\x00\x00xtR.": "numpy.load",
        }
        for pkl, name in cases.items():
            path = self.tmp / "evil.pt"
            write_zip(path, {"evil/data.pkl": pkl, "evil/byteorder": b"little"})
            with self.assertRaises(conv.Refusal) as ctx:
                conv.load_checkpoint(path)
            self.assertIn(f"the Python object {name},", str(ctx.exception))

    def test_truncated_file(self):
        data = CHECKPOINT.read_bytes()
        path = self.tmp / "truncated.pt"
        path.write_bytes(data[: len(data) // 2])
        self.assertRefused(path, "truncated")

    def test_not_a_zip(self):
        path = self.tmp / "text.pt"
        path.write_text("hello, this is not a checkpoint\n")
        self.assertRefused(path, "not a zip archive")

    def test_legacy_torch_format(self):
        path = self.tmp / "legacy.pt"
        path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        self.assertRefused(path, "legacy")

    def test_zip_without_pickle(self):
        path = self.tmp / "other.pt"
        write_zip(path, {"other/readme.txt": b"hello"})
        self.assertRefused(path, "data.pkl", "not a PyTorch checkpoint")

    def test_missing_file(self):
        self.assertRefused(self.tmp / "nope.pt", "no such file")

    def test_short_storage(self):
        path = self.tmp / "short.pt"
        with zipfile.ZipFile(CHECKPOINT) as src:
            entries = {i.filename: src.read(i.filename) for i in src.infolist()}
        entries["checkpoint/data/0"] = entries["checkpoint/data/0"][:12]
        write_zip(path, entries)
        self.assertRefused(path, "storage data/0 holds 12 bytes")

    def test_tensor_past_its_storage(self):
        # A hand-made pickle of one tensor of 10 floats over a storage of 4.
        pkl = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(("
               + unicode("storage") + b"ctorch\nFloatStorage\n" + unicode("0") + unicode("cpu")
               + binint(4) + b"tQ" + binint(0) + b"(" + binint(10) + b"t(" + binint(1) + b"t"
               + b"\x89ccollections\nOrderedDict\n)RtR.")
        path = self.tmp / "oob.pt"
        write_zip(path, {"oob/data.pkl": pkl, "oob/data/0": b"\0" * 16})
        with self.assertRaises(conv.Refusal) as ctx:
            conv.load_checkpoint(path)
        self.assertIn("reaches past the end of storage data/0", str(ctx.exception))
        # The same with 4 elements loads.
        pkl_ok = pkl.replace(b"(" + binint(10) + b"t", b"(" + binint(4) + b"t")
        write_zip(path, {"oob/data.pkl": pkl_ok, "oob/data/0": struct.pack("<4f", 1, 2, 3, 4)})
        t = conv.load_checkpoint(path)
        self.assertEqual(t.dtype, "f32")
        self.assertEqual(t.array.tolist(), [1.0, 2.0, 3.0, 4.0])
        # BUILD must not rewrite a rebuilt tensor: (None, {"array": "x"}) as its state.
        pkl_build = pkl_ok[:-1] + b"N}" + unicode("array") + unicode("x") + b"s\x86b."
        write_zip(path, {"oob/data.pkl": pkl_build, "oob/data/0": struct.pack("<4f", 1, 2, 3, 4)})
        with self.assertRaises(conv.Refusal) as ctx:
            conv.load_checkpoint(path)
        self.assertIn("set the state", str(ctx.exception))

    # ---- broken checkpoints -------------------------------------------------------------------

    def test_missing_encoder_tensor(self):
        self.assertRefused(VARIANTS / "missing_encoder_key.pt",
                           "models.encoder lacks special_last_token_vector")

    def test_bad_shape(self):
        self.assertRefused(VARIANTS / "bad_shape.pt",
                           "models.encoder.soft_prompt_embeddings has shape [2, 9]", "d = 8")

    def test_patched_layers_mismatch(self):
        self.assertRefused(VARIANTS / "p_mismatch.pt", "patch_all_layers is 3",
                           "proj_weight has shape [2, 8, 8]")

    def test_missing_config_keys(self):
        self.assertRefused(VARIANTS / "missing_config.pt", "config lacks",
                           "t_text", "trainable_components.encoder.output_layer")

    def test_mixed_dtypes(self):
        self.assertRefused(VARIANTS / "mixed_dtype.pt", "do not share one dtype",
                           "encoder.proj.bias is f16")

    def test_base_config_mismatch(self):
        self.assertRefused(VARIANTS / "bf16.pt", "d = 8", "hidden_size is 64",
                           extra=("--base-config", BASE_CONFIG))

    def test_missing_models(self):
        path = self.tmp / "nomodels.pt"
        pkl = pickle.dumps({"step": 3, "config": {}}, protocol=2)
        write_zip(path, {"nomodels/data.pkl": pkl})
        self.assertRefused(path, "no models dict", "config, step")
        pkl = pickle.dumps({"models": {"decoder": {}}, "config": {}}, protocol=2)
        write_zip(path, {"nomodels/data.pkl": pkl})
        self.assertRefused(path, "no models.encoder")
        config = {"layer_l": 0, "t_text": 1, "decoder_prompt": "", "encoder_prompt": "",
                  "model_name": "m", "trainable_components": {
                      "decoder": {"patch_all_layers": False},
                      "encoder": {"output_layer": 0, "add_current_token": False}}}
        pkl = pickle.dumps({"models": {"decoder": {}, "encoder": {}}, "config": config}, protocol=2)
        write_zip(path, {"nomodels/data.pkl": pkl})
        self.assertRefused(path, "models.decoder lacks proj_weight", "and proj.weight")
        pkl = pickle.dumps({"models": {"encoder": {}}, "config": {}}, protocol=2)
        write_zip(path, {"nomodels/data.pkl": pkl})
        self.assertRefused(path, "no models.decoder")

    # ---- bf16, views, zero-row prompts --------------------------------------------------------

    def test_bf16_views_and_zero_rows(self):
        out = self.tmp / "bf16"
        code, _, stderr = run(VARIANTS / "bf16.pt", "--out", out)
        self.assertEqual(code, 0, stderr)
        m = read_json(out / "talkative.json")
        self.assertEqual(m["dtype"], "bf16")
        self.assertEqual(m["decoder"]["patched_layers"], 2)  # patch_all_layers = true
        self.assertIs(m["add_current_token"], False)
        self.assertEqual(m["base"], {"name": "tiny-llama", "d_model": 8})
        self.assertEqual(m["source"], {"converted_from": "bf16.pt", "step": 12})
        # Written by safetensors.torch from the same torch tensors, made contiguous.
        self.assertSameTensors(out / "lens.safetensors", VARIANTS / "bf16_expected.safetensors")
        got = cio.read_safetensors(out / "lens.safetensors")
        self.assertEqual(got["decoder.prompt_left_emb"].shape, (0, 8))
        self.assertNotIn("encoder.soft_prompt_embeddings_postfix", got)
        self.assertNotIn("decoder.base.model.norm.weight", got)

    def test_no_torch(self):
        self.assertNotIn("torch", sys.modules)


def unicode(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def binint(v):
    return b"J" + struct.pack("<i", v)


def write_zip(path, entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    Path(path).write_bytes(buf.getvalue())


if __name__ == "__main__":
    unittest.main()
