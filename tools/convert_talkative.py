#!/usr/bin/env python3
"""Convert a checkpoint of the original talkative-lens training code into a lensd artifact.

    python3 tools/convert_talkative.py CHECKPOINT_OR_FOLDER --out FOLDER
        [--name NAME] [--base-config CONFIG_JSON] [--dtype f32|f16|bf16]

Writes FOLDER/talkative.json and FOLDER/lens.safetensors as specified in docs/talkative.md
("The artifact", "Converting the original checkpoints"). A folder argument means its newest
`*.pt` file.

Only Python and numpy are needed: torch is never imported (tools/checkpoint_io.py reads the
checkpoint). A PyTorch checkpoint is a zip archive holding `<prefix>/data.pkl` (a pickle) and
`<prefix>/data/<key>` (the raw bytes of each storage). The pickle is read with an unpickler that only knows an explicit list of globals
(the tensor rebuild function, storage types, OrderedDict and the pieces numpy uses to pickle
an RNG state) and refuses any other Python object by name before anything is called, so a
hostile checkpoint cannot run code.

Exit status: 0 when the artifact was written, 2 when the input was refused (one line on
stderr names the file and what was wrong), 1 for usage errors.
"""

import argparse
import collections
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_io import (  # noqa: E402
    LENS_DTYPES,
    Refusal,
    Tensor,
    _filled,
    _is_int,
    cast,
    load_checkpoint,
    safetensors_bytes,
)

FORMAT = "lensd.talkative"
VERSION = 1


# ---- the artifact ---------------------------------------------------------------------------


def build_manifest(*, layer, t_text, add_current_token, patched_layers, decoder_prompt,
                   output_layer, encoder_prompt, dtype, base, content_sha256, source=None):
    """The talkative.json object, keys in the order of docs/talkative.md."""
    m = {
        "format": FORMAT,
        "version": VERSION,
        "layer": layer,
        "t_text": t_text,
        "add_current_token": add_current_token,
        "decoder": {"patched_layers": patched_layers, "prompt": decoder_prompt},
        "encoder": {"output_layer": output_layer, "prompt": encoder_prompt},
        "dtype": dtype,
        "base": base,
        "content_sha256": content_sha256,
    }
    if source is not None:
        m["source"] = source
    return m


def manifest_text(manifest):
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def write_artifact(out_dir, manifest_fields, tensors):
    """Write lens.safetensors and talkative.json into out_dir; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blob = safetensors_bytes(tensors)
    manifest = build_manifest(content_sha256=hashlib.sha256(blob).hexdigest(), **manifest_fields)
    for name, content in (("lens.safetensors", blob),
                          ("talkative.json", manifest_text(manifest).encode("utf-8"))):
        tmp = out_dir / (name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, out_dir / name)
    return manifest


# ---- from a checkpoint to the artifact ------------------------------------------------------

DECODER_TENSORS = ["proj_weight", "proj_bias", "proj.weight", "proj.bias",
                   "prompt_left_emb", "prompt_right_emb"]
ENCODER_TENSORS = ["proj.weight", "proj.bias", "soft_prompt_embeddings",
                   "soft_prompt_embeddings_postfix", "special_last_token_vector"]
CONFIG_KEYS = [
    "layer_l",
    "t_text",
    "decoder_prompt",
    "encoder_prompt",
    "model_name",
    "trainable_components.decoder.patch_all_layers",
    "trainable_components.encoder.output_layer",
    "trainable_components.encoder.add_current_token",
]
# Options that the original's checkpoints always record (its config holds every option) and
# a hand-written checkpoint may leave out: then the projections' kind is told by the tensors,
# and the encoder's projection and last-token vector must be there.
CONFIG_DEFAULTS = {
    "trainable_components.decoder.per_layer_projections": None,
    "trainable_components.encoder.use_projection_layer": True,
    "trainable_components.encoder.special_last_token_vector": True,
}


def _ignored(key):
    # docs/talkative.md: prompt_ids and anything containing "base" (the wrapped base model's
    # own weights) are not part of the lens.
    return key == "prompt_ids" or "base" in key


def _state_dict(obj, part):
    models = obj.get("models")
    if not isinstance(models, dict):
        keys = ", ".join(sorted(map(str, obj))) or "none"
        raise Refusal(f"it has no models dict (its top-level keys are: {keys})")
    sd = models.get(part)
    if not isinstance(sd, dict):
        keys = ", ".join(sorted(map(str, models))) or "none"
        raise Refusal(f"it has no models.{part} (models holds: {keys})")
    return sd


def _collect(sd, part, wanted, optional=()):
    found = {}
    for key, value in sd.items():
        if not isinstance(key, str):
            raise Refusal(f"models.{part} has the non-string key {key!r}")
        if key in wanted:
            if not isinstance(value, Tensor):
                raise Refusal(f"models.{part}.{key} is a {type(value).__name__}, not a tensor")
            found[key] = value
        elif not _ignored(key):
            raise Refusal(f"models.{part} holds {key}, which is not a lens tensor "
                          f"(expected {', '.join(wanted)})")
    missing = [k for k in wanted if k not in found and k not in optional]
    if missing:
        raise Refusal(f"models.{part} lacks {', '.join(missing)}")
    return found


def _config_value(config, dotted):
    cur = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def _shape(t):
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def convert(obj, name=None, base_config=None, source_name=None, dtype_out=None):
    """From an unpickled checkpoint to (manifest fields, {artifact name: Tensor})."""
    if not isinstance(obj, dict):
        raise Refusal(f"it holds a {type(obj).__name__}, not a dict with models and config")
    dec = _collect(_state_dict(obj, "decoder"), "decoder", DECODER_TENSORS, DECODER_TENSORS)
    enc = _collect(_state_dict(obj, "encoder"), "encoder", ENCODER_TENSORS, ENCODER_TENSORS)

    config = obj.get("config")
    if not isinstance(config, dict):
        raise Refusal("it has no config dict")
    values, missing = {}, []
    for key in CONFIG_KEYS:
        try:
            values[key] = _config_value(config, key)
        except KeyError:
            missing.append(key)
    if missing:
        raise Refusal(f"its config lacks {', '.join(missing)}")
    for key, default in CONFIG_DEFAULTS.items():
        try:
            values[key] = _config_value(config, key)
        except KeyError:
            values[key] = default

    def want_int(key, low):
        v = values[key]
        if not _is_int(v) or v < low:
            raise Refusal(f"config {key} is {v!r}, not an integer >= {low}")
        return v

    def want_bool(key):
        v = values[key]
        if not isinstance(v, bool):
            raise Refusal(f"config {key} is {v!r}, not true or false")
        return v

    layer = want_int("layer_l", 0)
    t_text = want_int("t_text", 1)
    add_current = want_bool("trainable_components.encoder.add_current_token")
    if values["trainable_components.decoder.per_layer_projections"] is None:
        if "proj_weight" not in dec and "proj.weight" not in dec:
            raise Refusal("models.decoder lacks proj_weight (per-layer projections) "
                          "and proj.weight (one projection)")
        values["trainable_components.decoder.per_layer_projections"] = "proj_weight" in dec
    per_layer = want_bool("trainable_components.decoder.per_layer_projections")
    enc_proj = want_bool("trainable_components.encoder.use_projection_layer")
    special = want_bool("trainable_components.encoder.special_last_token_vector")
    for key in ("decoder_prompt", "encoder_prompt", "model_name"):
        if not isinstance(values[key], str):
            raise Refusal(f"config {key} is {values[key]!r}, not a string")
    n_layers = base_config[0] if base_config is not None else None

    # Which blocks the decoder patches: `true` is every block, an integer k the first k
    # (0 and `false`: only the input row, which is block 0's input).
    pal = values["trainable_components.decoder.patch_all_layers"]
    if pal is True and per_layer:
        # the original makes one projection per block of the base
        patched = dec["proj_weight"].shape[0] if "proj_weight" in dec else 0
    elif pal is True:
        if n_layers is None:
            raise Refusal("config trainable_components.decoder.patch_all_layers is true (every "
                          "block): give --base-config so that the number of blocks is known")
        patched = n_layers
    elif pal is False:
        patched = 1
    elif _is_int(pal) and pal >= 0:
        patched = max(pal, 1)
    else:
        raise Refusal(f"config trainable_components.decoder.patch_all_layers is {pal!r}, "
                      "not true, false or an integer >= 0")

    # The decoder's projections: per-layer ([P, d, d]) or one nn.Linear used at every block.
    if per_layer:
        for key in ("proj_weight", "proj_bias"):
            if key not in dec:
                raise Refusal(f"models.decoder lacks {key} (per_layer_projections is true)")
        pw, pb = dec["proj_weight"], dec["proj_bias"]
        if len(pw.shape) != 3 or pw.shape[1] != pw.shape[2] or pw.shape[0] < 1 or pw.shape[1] < 1:
            raise Refusal(f"models.decoder.proj_weight has shape {_shape(pw)}, expected [P, d, d]")
        n_proj, d = pw.shape[0], pw.shape[1]
        if patched != n_proj:
            raise Refusal(f"config trainable_components.decoder.patch_all_layers is {pal!r} "
                          f"(P = {patched}), but models.decoder.proj_weight has shape {_shape(pw)} "
                          f"({n_proj} projections)")
        if pb.shape != (n_proj, d):
            raise Refusal(f"models.decoder.proj_bias has shape {_shape(pb)}, expected "
                          f"[{n_proj}, {d}] (d = {d} from models.decoder.proj_weight {_shape(pw)})")
    else:
        for key in ("proj.weight", "proj.bias"):
            if key not in dec:
                raise Refusal(f"models.decoder lacks {key} (per_layer_projections is false)")
        w, b = dec["proj.weight"], dec["proj.bias"]
        if len(w.shape) != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
            raise Refusal(f"models.decoder.proj.weight has shape {_shape(w)}, expected [d, d]")
        d = w.shape[0]
        if b.shape != (d,):
            raise Refusal(f"models.decoder.proj.bias has shape {_shape(b)}, expected [{d}]")
        # The one projection is applied entering each patched block: P copies.
        pw = Tensor(w.dtype, np.ascontiguousarray(np.broadcast_to(w.array, (patched, d, d))))
        pb = Tensor(b.dtype, np.ascontiguousarray(np.broadcast_to(b.array, (patched, d))))
    extra = [k for k in (("proj.weight", "proj.bias") if per_layer else ("proj_weight", "proj_bias"))
             if k in dec]
    if extra:
        raise Refusal(f"models.decoder holds {', '.join(extra)} beside the "
                      f"{'per-layer' if per_layer else 'single'} projection that "
                      f"per_layer_projections = {str(per_layer).lower()} uses")

    for part, group, key in (("decoder", dec, "prompt_left_emb"), ("decoder", dec, "prompt_right_emb"),
                             ("encoder", enc, "soft_prompt_embeddings"),
                             ("encoder", enc, "soft_prompt_embeddings_postfix")):
        if key in group and (len(group[key].shape) != 2 or group[key].shape[1] != d):
            raise Refusal(f"models.{part}.{key} has shape {_shape(group[key])}, expected [n, {d}] "
                          f"(d = {d} from the decoder's projection)")
    has_proj = [k for k in ("proj.weight", "proj.bias") if k in enc]
    if enc_proj and len(has_proj) != 2:
        lacking = [k for k in ("proj.weight", "proj.bias") if k not in enc]
        raise Refusal(f"models.encoder lacks {', '.join(lacking)} (use_projection_layer is true)")
    if not enc_proj and has_proj:
        raise Refusal(f"models.encoder holds {', '.join(has_proj)} but use_projection_layer is false")
    if enc_proj:
        if enc["proj.weight"].shape != (d, d):
            raise Refusal(f"models.encoder.proj.weight has shape {_shape(enc['proj.weight'])}, "
                          f"expected [{d}, {d}] (d = {d} from the decoder's projection)")
        if enc["proj.bias"].shape != (d,):
            raise Refusal(f"models.encoder.proj.bias has shape {_shape(enc['proj.bias'])}, "
                          f"expected [{d}]")
    if special and "special_last_token_vector" not in enc:
        raise Refusal("models.encoder lacks special_last_token_vector "
                      "(special_last_token_vector is true)")
    if not special and "special_last_token_vector" in enc:
        raise Refusal("models.encoder holds special_last_token_vector but its config option "
                      "special_last_token_vector is false")
    if special and enc["special_last_token_vector"].shape != (d,):
        raise Refusal(f"models.encoder.special_last_token_vector has shape "
                      f"{_shape(enc['special_last_token_vector'])}, expected [{d}]")

    present = {"decoder.proj_weight": pw, "decoder.proj_bias": pb}
    for key in ("prompt_left_emb", "prompt_right_emb"):
        if key in dec:
            present["decoder." + key] = dec[key]
    for key in ENCODER_TENSORS:
        if key in enc:
            present["encoder." + key] = enc[key]
    dtypes = {t.dtype for t in present.values()}
    if len(dtypes) != 1:
        counts = collections.Counter(t.dtype for t in present.values())
        common = max(sorted(counts), key=lambda k: counts[k])
        odd = ", ".join(f"{n} is {t.dtype}" for n, t in sorted(present.items())
                        if t.dtype != common)
        raise Refusal(f"the lens tensors do not share one dtype: {odd}, the others {common}")
    dtype = dtypes.pop()
    if dtype not in LENS_DTYPES:
        raise Refusal(f"the lens tensors are {dtype}; only f32, f16 and bf16 are supported")

    # What the original builds when an option is off: no prompt text on one side of <embed>
    # (no rows), no encoder soft prompt, no encoder projection (the identity), no last-token
    # vector (zero).
    tensors = dict(present)
    for key in ("decoder.prompt_left_emb", "decoder.prompt_right_emb",
                "encoder.soft_prompt_embeddings"):
        tensors.setdefault(key, _filled(dtype, (0, d)))
    if not enc_proj:
        tensors["encoder.proj.weight"] = _filled(dtype, (d, d), identity=True)
        tensors["encoder.proj.bias"] = _filled(dtype, (d,))
    if not special:
        tensors["encoder.special_last_token_vector"] = _filled(dtype, (d,))

    if dtype_out is not None and dtype_out != dtype:
        tensors = {k: cast(t, dtype_out) for k, t in tensors.items()}
        dtype = dtype_out

    out_l = values["trainable_components.encoder.output_layer"]
    if not _is_int(out_l) or out_l < -2:
        raise Refusal(f"config trainable_components.encoder.output_layer is {out_l!r}, "
                      "not a block index, -1 (the last block) or -2")
    if out_l == -2:
        raise Refusal("config trainable_components.encoder.output_layer is -2 (the encoder reads "
                      "its input embeddings without running a block), which lensd does not support")
    if out_l == -1:
        if n_layers is None:
            raise Refusal("config trainable_components.encoder.output_layer is -1 (the last "
                          "block): give --base-config so that the number of blocks is known")
        out_l = n_layers - 1
    output_layer = out_l

    base = {"name": name if name is not None else values["model_name"], "d_model": d}
    if base_config is not None:
        n_layers, vocab, hidden = base_config
        if hidden != d:
            raise Refusal(f"the lens has d = {d} but the base config's hidden_size is {hidden}")
        for what, v in (("layer_l", layer), ("output_layer", output_layer)):
            if v >= n_layers:
                raise Refusal(f"config {what} = {v} but the base has {n_layers} blocks")
        if patched > n_layers:
            raise Refusal(f"the decoder patches {patched} blocks but the base has {n_layers}")
        base["n_layers"] = n_layers
        base["vocab_size"] = vocab

    source = {"converted_from": source_name} if source_name else {}
    step = obj.get("step")
    if _is_int(step):
        source["step"] = step
    fields = dict(
        layer=layer,
        t_text=t_text,
        add_current_token=add_current,
        patched_layers=patched,
        decoder_prompt=values["decoder_prompt"],
        output_layer=output_layer,
        encoder_prompt=values["encoder_prompt"],
        dtype=dtype,
        base=base,
        source=source or None,
    )
    return fields, tensors


def read_base_config(path):
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
        return int(cfg["num_hidden_layers"]), int(cfg["vocab_size"]), int(cfg["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Refusal(f"cannot read num_hidden_layers, vocab_size and hidden_size ({e})")


def pick_checkpoint(path):
    """A file is itself; a folder means its newest *.pt (ties broken by name)."""
    path = Path(path)
    if path.is_dir():
        cands = [p for p in path.glob("*.pt") if p.is_file()]
        if not cands:
            raise Refusal("the folder holds no *.pt file")
        return max(cands, key=lambda p: (p.stat().st_mtime_ns, p.name))
    if not path.exists():
        raise Refusal("no such file or folder")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a .pt checkpoint of the original code, or a folder of them")
    ap.add_argument("--out", required=True, help="folder for talkative.json and lens.safetensors")
    ap.add_argument("--name", help="base.name in the manifest (default: config model_name)")
    ap.add_argument("--base-config",
                    help="the base's Hugging Face config.json: checks d and the layer indices, "
                         "and records n_layers and vocab_size in the manifest")
    ap.add_argument("--dtype", choices=LENS_DTYPES,
                    help="store the tensors in this dtype (default: the checkpoint's)")
    args = ap.parse_args(argv)

    shown = args.checkpoint
    try:
        ckpt = pick_checkpoint(args.checkpoint)
        shown = str(ckpt)
        base_config = None
        if args.base_config:
            try:
                base_config = read_base_config(args.base_config)
            except Refusal as e:
                shown = args.base_config
                raise e
        obj = load_checkpoint(ckpt)
        fields, tensors = convert(obj, name=args.name, base_config=base_config,
                                  source_name=ckpt.name, dtype_out=args.dtype)
        manifest = write_artifact(args.out, fields, tensors)
    except Refusal as e:
        print(f"refusing {shown}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # anything unforeseen in a hostile or odd file is a refusal too
        print(f"refusing {shown}: could not convert it ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in sorted(tensors.items()))
    print(f"wrote {args.out}: {manifest['dtype']}, d = {manifest['base']['d_model']}, "
          f"P = {manifest['decoder']['patched_layers']}; {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
