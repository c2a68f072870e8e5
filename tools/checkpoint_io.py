"""Reading PyTorch checkpoints without running pickled code, and lens tensors in safetensors.

Used by tools/convert_talkative.py (docs/talkative.md, "Converting the original checkpoints").
Only Python and numpy are needed: torch is never imported. A PyTorch checkpoint is a zip
archive holding `<prefix>/data.pkl` (a pickle) and `<prefix>/data/<key>` (the raw bytes of each
storage). The pickle is read with an unpickler that only knows an explicit list of globals
and refuses any other Python object by name before anything is called.
"""

import collections
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np


class Refusal(Exception):
    """The input cannot be converted; the message says why (without the file name)."""


# ---- tensors and storages -------------------------------------------------------------------

# torch storage type name -> (our dtype name, numpy dtype of the raw elements). bf16 has no
# numpy dtype: its elements are kept as raw uint16 and written back as BF16.
STORAGE_TYPES = {
    "FloatStorage": ("f32", np.dtype("<f4")),
    "HalfStorage": ("f16", np.dtype("<f2")),
    "BFloat16Storage": ("bf16", np.dtype("<u2")),
    "DoubleStorage": ("f64", np.dtype("<f8")),
    "LongStorage": ("i64", np.dtype("<i8")),
    "IntStorage": ("i32", np.dtype("<i4")),
    "ShortStorage": ("i16", np.dtype("<i2")),
    "CharStorage": ("i8", np.dtype("i1")),
    "ByteStorage": ("u8", np.dtype("u1")),
    "BoolStorage": ("bool", np.dtype("?")),
}

# our dtype name -> safetensors dtype name
SAFETENSORS_DTYPES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "f64": "F64",
    "i64": "I64",
    "i32": "I32",
    "i16": "I16",
    "i8": "I8",
    "u8": "U8",
    "bool": "BOOL",
}

LENS_DTYPES = ("f32", "f16", "bf16")


class StorageType:
    """Stands for a torch.*Storage class named in the pickle."""

    __slots__ = ("name", "dtype", "np_dtype")

    def __init__(self, name):
        self.name = name
        self.dtype, self.np_dtype = STORAGE_TYPES[name]

    def __reduce__(self):  # never pickled again
        raise TypeError("StorageType is not picklable")

    def __setstate__(self, state):  # a pickle's BUILD must not rewrite it
        raise Refusal("its pickle tries to set the state of a storage or tensor")


class Storage:
    __slots__ = ("key", "dtype", "array")

    def __init__(self, key, dtype, array):
        self.key = key
        self.dtype = dtype
        self.array = array  # 1-D numpy array of the raw elements (bf16 as uint16)

    def __setstate__(self, state):  # a pickle's BUILD must not rewrite it
        raise Refusal("its pickle tries to set the state of a storage or tensor")


class Tensor:
    """A tensor rebuilt from a checkpoint: a C-contiguous numpy array and our dtype name."""

    __slots__ = ("dtype", "array")

    def __init__(self, dtype, array):
        self.dtype = dtype
        self.array = array

    @property
    def shape(self):
        return tuple(self.array.shape)

    def __repr__(self):
        return f"Tensor({self.dtype}, {list(self.shape)})"

    def __setstate__(self, state):  # a pickle's BUILD must not rewrite it
        raise Refusal("its pickle tries to set the state of a storage or tensor")


class Opaque:
    """Stands for a numpy object of a saved RNG state (or a torch dtype); the converter drops
    these, so they are kept as inert data and never turned into real numpy objects."""

    __slots__ = ("what", "args", "state")

    def __init__(self, what, args=()):
        self.what = what
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.what}>"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """numpy version of torch._utils._rebuild_tensor_v2: a strided view of the storage, copied."""
    if not isinstance(storage, Storage):
        raise Refusal(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise Refusal(f"a tensor has the storage offset {storage_offset!r}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise Refusal(f"a tensor has the size {size!r} and stride {stride!r}")
    for v in size + stride:
        if not _is_int(v) or v < 0:
            raise Refusal(f"a tensor has the size {size!r} and stride {stride!r}")
    numel = 1
    for s in size:
        numel *= s
    n = storage.array.shape[0]
    if numel == 0:
        return Tensor(storage.dtype, np.zeros(size, dtype=storage.array.dtype))
    last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= n:
        raise Refusal(
            f"a tensor of size {list(size)} (offset {storage_offset}, stride {list(stride)}) "
            f"reaches past the end of storage data/{storage.key}, which holds {n} elements"
        )
    item = storage.array.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[storage_offset:],
        shape=size,
        strides=tuple(st * item for st in stride),
        writeable=False,
    )
    return Tensor(storage.dtype, np.ascontiguousarray(view).copy())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, Tensor):
        raise Refusal("a parameter holds no tensor")
    return data


def _np_reconstruct(cls, shape, dtype_code):
    return Opaque("numpy.ndarray", (shape, dtype_code))


def _np_dtype(*args):
    return Opaque("numpy.dtype", args)


def _np_scalar(*args):
    return Opaque("numpy scalar", args)


def _codecs_encode(text, encoding="utf-8"):
    # pickle protocol 2 stores bytes as _codecs.encode(str, "latin1"); nothing else is allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refusal(f"it calls _codecs.encode with {encoding!r}, which is not how bytes are stored")
    return text.encode("latin1")


def _plain_set(items=()):
    return set(items)


def _plain_frozenset(items=()):
    return frozenset(items)


_NDARRAY_MARKER = Opaque("numpy.ndarray class")

ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "ndarray"): _NDARRAY_MARKER,
    ("numpy", "dtype"): _np_dtype,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): _plain_set,
    ("builtins", "frozenset"): _plain_frozenset,
}
for _name in STORAGE_TYPES:
    ALLOWED_GLOBALS[("torch", _name)] = StorageType(_name)
# torch dtypes (e.g. a config's model dtype saved as torch.bfloat16) are kept as names.
for _name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
              "uint8", "bool"):
    ALLOWED_GLOBALS[("torch", _name)] = Opaque(f"torch.{_name}")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise Refusal(
                f"it holds the Python object {module}.{name}, not a tensor or plain data; "
                "nothing was run"
            )
        return found

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], StorageType) or not isinstance(pid[2], str)
                or not _is_int(pid[4])):
            raise Refusal(f"it holds the persistent id {pid!r}, which is not a tensor storage")
        return self._load_storage(pid[1], pid[2], pid[4])


# ---- reading the zip ------------------------------------------------------------------------


def load_checkpoint(path):
    """Read a PyTorch zip checkpoint; return its object with tensors as Tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise Refusal(f"cannot read it: {e.strerror or e}")
    if not zipfile.is_zipfile(path):
        if head[:2] == b"PK":
            raise Refusal("it starts like a zip archive but has no readable central directory: "
                          "the file is truncated or damaged")
        if head[:1] == b"\x80":
            raise Refusal("it is not a zip archive: it looks like the legacy (pre-1.6) torch.save "
                          "format, which is not supported; re-save it with torch.save's default")
        raise Refusal("it is not a zip archive, so not a PyTorch checkpoint")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load_from_zip(zf)
    except Refusal:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise Refusal(f"the zip archive is damaged ({e})")


def _load_from_zip(zf):
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        if not pkls:
            raise Refusal("it is a zip archive without <prefix>/data.pkl, so not a PyTorch checkpoint")
        raise Refusal(f"it holds several pickles ({', '.join(sorted(pkls))})")
    prefix = pkls[0][: -len("data.pkl")]
    big_endian = False
    if prefix + "byteorder" in names:
        order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise Refusal(f"its byteorder entry says {order!r}")
        big_endian = order == "big"
    storages = {}

    def load_storage(stype, key, numel):
        if key in storages:
            st = storages[key]
            if st.dtype != stype.dtype:
                raise Refusal(f"storage data/{key} is used as both {st.dtype} and {stype.dtype}")
            return st
        entry = prefix + "data/" + key
        if "/" in key or ".." in key or entry not in names:
            raise Refusal(f"it names the storage data/{key}, which the archive does not hold")
        raw = zf.read(entry)
        dt = stype.np_dtype
        if big_endian:
            dt = dt.newbyteorder(">")
        if len(raw) != numel * dt.itemsize:
            raise Refusal(f"storage data/{key} holds {len(raw)} bytes, but {numel} {stype.dtype} "
                          f"elements need {numel * dt.itemsize}")
        arr = np.frombuffer(raw, dtype=dt)
        if big_endian:
            arr = arr.astype(dt.newbyteorder("<"))
        st = Storage(key, stype.dtype, arr)
        storages[key] = st
        return st

    data = zf.read(pkls[0])
    unpickler = _RestrictedUnpickler(io.BytesIO(data), load_storage)
    try:
        return unpickler.load()
    except Refusal:
        raise
    except Exception as e:  # a malformed pickle: anything else the unpickler raised
        raise Refusal(f"its {pkls[0]} is not a valid checkpoint pickle ({type(e).__name__}: {e})")


# ---- safetensors --------------------------------------------------------------------------


def safetensors_bytes(tensors):
    """Serialise {name: Tensor} as safetensors: u64 header length, JSON header (names sorted,
    padded with spaces to a multiple of 8 bytes), then the data in the same order."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        raw = np.ascontiguousarray(t.array).astype(t.array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


_SAFETENSORS_NP = {
    "F32": ("f32", "<f4"), "F16": ("f16", "<f2"), "BF16": ("bf16", "<u2"), "F64": ("f64", "<f8"),
    "I64": ("i64", "<i8"), "I32": ("i32", "<i4"), "I16": ("i16", "<i2"), "I8": ("i8", "i1"),
    "U8": ("u8", "u1"), "BOOL": ("bool", "?"),
}


def read_safetensors(path):
    """Read a safetensors file into {name: Tensor} (bf16 as raw uint16)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in header.items():
        dtype, npdt = _SAFETENSORS_NP[info["dtype"]]
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[base + a: base + b], dtype=np.dtype(npdt)).reshape(info["shape"])
        out[name] = Tensor(dtype, arr.copy())
    return out



# ---- lens dtypes ----------------------------------------------------------------------------


def _filled(dtype, shape, identity=False):
    """A zero (or identity) tensor in one of the lens dtypes, for a part the checkpoint lacks."""
    a = np.eye(shape[0], dtype=np.float32) if identity else np.zeros(shape, dtype=np.float32)
    if dtype == "f32":
        return Tensor("f32", a.astype("<f4"))
    if dtype == "f16":
        return Tensor("f16", a.astype("<f2"))
    # bf16: the upper half of the f32 bits (exact for 0 and 1)
    return Tensor("bf16", np.ascontiguousarray((a.astype("<f4").view("<u4") >> 16).astype("<u2")))


def _as_f32(t):
    if t.dtype == "bf16":
        return (t.array.astype("<u4") << 16).view("<f4")
    return t.array.astype("<f4")


def cast(t, dtype):
    """`t` in another lens dtype, rounding to nearest (ties to even)."""
    if t.dtype == dtype:
        return t
    a = _as_f32(t)
    if dtype == "f32":
        return Tensor("f32", np.ascontiguousarray(a))
    if dtype == "f16":
        with np.errstate(over="ignore"):
            h = a.astype("<f2")
        if not np.isfinite(h).all() and np.isfinite(a).all():
            raise Refusal("a lens tensor has values beyond f16's range; convert to bf16 or f32")
        return Tensor("f16", np.ascontiguousarray(h))
    bits = a.view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return Tensor("bf16", np.ascontiguousarray(rounded.astype("<u2")))
