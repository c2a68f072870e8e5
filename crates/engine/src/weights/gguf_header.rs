//! The header of a GGUF file, read by lensd itself: version, metadata, tensor table, and where
//! the tensor data starts. candle's reader refuses the tensor types it cannot compute with,
//! MXFP4 among them (type 39, llama.cpp's storage for gpt-oss's experts); here every type lensd
//! can read is named, and the caller decides what it loads and how.
//!
//! The header's numbers are untrusted. Every count and length is checked against the bytes left
//! in the file, and against the fixed limits below, before anything is allocated for it, so a
//! hostile header gives an error naming the key or tensor and the byte, never a panic or an
//! allocation the file's bytes do not back.
//!
//! Layout, little-endian: `GGUF`; a u32 version; the tensor count; the metadata count; each
//! metadata entry as (key, u32 value type, value); each tensor as (name, u32 dimension count,
//! the dimensions innermost first, u32 GGML type, u64 offset into the data); padding up to
//! `general.alignment` (32 when unset); the data. Counts, string and array lengths and
//! dimensions are u64 from version 2 on and u32 in version 1.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Shape;

const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Far above any model's: the largest mixtures of experts have a few thousand tensors.
const MAX_TENSORS: u64 = 1 << 20;
/// Metadata values in all, each array element counting one: the largest vocabularies (262k
/// tokens, with their scores, types and merges) need about 1.5 million. Each value costs 32
/// bytes of memory, so this bounds a header's memory whatever the file's size.
const MAX_VALUES: u64 = 1 << 23;
/// Arrays of arrays; GGUF files in use nest none.
const MAX_DEPTH: usize = 16;
/// Chat templates and embedded tokenizer files are a few MB at most.
const MAX_STRING: u64 = 1 << 30;
const MAX_ALIGNMENT: u64 = 1 << 30;

/// The GGML type number of MXFP4.
const MXFP4: u32 = 39;
/// Bytes of an MXFP4 block of 32 values: an E8M0 scale, then 16 bytes of E2M1 pairs.
const MXFP4_BLOCK_BYTES: usize = 17;
const MXFP4_BLOCK: usize = 32;

/// How a tensor's values are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufDType {
    /// A type candle computes with (floats, the legacy quants and the K-quants).
    Ggml(GgmlDType),
    /// Blocks of 32 values in 17 bytes: an E8M0 scale byte, then 16 bytes of 4-bit E2M1 values.
    Mxfp4,
}

impl GgufDType {
    /// The dtype of GGML type number `ty`, or `None` for a type lensd does not read.
    pub fn from_ggml_type(ty: u32) -> Option<Self> {
        use GgmlDType::*;
        let d = match ty {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            MXFP4 => return Some(GgufDType::Mxfp4),
            _ => return None,
        };
        Some(GgufDType::Ggml(d))
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            GgufDType::Ggml(d) => d.block_size(),
            GgufDType::Mxfp4 => MXFP4_BLOCK,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgufDType::Ggml(d) => d.type_size(),
            GgufDType::Mxfp4 => MXFP4_BLOCK_BYTES,
        }
    }

    /// F32, F16 and BF16: one value per element, no blocks.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            GgufDType::Ggml(GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        )
    }

    /// Quantized blocks that lensd's kernels multiply in f32 as stored: a base computed in
    /// `f32` on the CPU keeps such a matrix as the file has it.
    pub fn wide(self) -> bool {
        match self {
            GgufDType::Ggml(d) => super::quant_product::block_type(d).is_some(),
            GgufDType::Mxfp4 => false,
        }
    }
}

/// The names `lensd inspect` prints: candle's for its types (`Q4K`, `BF16`), `MXFP4`.
impl fmt::Debug for GgufDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufDType::Ggml(d) => write!(f, "{d:?}"),
            GgufDType::Mxfp4 => f.write_str("MXFP4"),
        }
    }
}

impl fmt::Display for GgufDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// ggml's names for the types it has and lensd does not read, for errors.
fn unread_type_name(ty: u32) -> Option<&'static str> {
    Some(match ty {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => return None,
    })
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    pub dtype: GgufDType,
    /// Outermost dimension first (the file lists the innermost first).
    pub shape: Shape,
    /// From the start of the tensor data.
    pub offset: u64,
}

impl GgufTensor {
    pub fn elements(&self) -> u64 {
        self.shape
            .dims()
            .iter()
            .fold(1u64, |n, &d| n.saturating_mul(d as u64))
    }

    /// Bytes of the tensor's whole blocks (the parser refuses tables whose sizes overflow).
    pub fn bytes(&self) -> u64 {
        (self.elements() / self.dtype.block_size() as u64)
            .saturating_mul(self.dtype.type_size() as u64)
    }
}

/// A parsed header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, GgufTensor>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Where the tensor data starts: the header's end rounded up to the alignment.
    pub data_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The bytes break the format, or end too soon. The message names the entry and the byte.
    #[error("{0}")]
    Corrupt(String),
    /// Well formed, but not what lensd reads: another version, a tensor type it lacks.
    #[error("{0}")]
    Unsupported(String),
    #[error("{error} (at byte {at} of the GGUF header)")]
    Io { at: u64, error: std::io::Error },
}

impl HeaderError {
    /// The error with `what` (the entry being read) in front.
    fn within(self, what: impl fmt::Display) -> Self {
        match self {
            HeaderError::Corrupt(m) => HeaderError::Corrupt(format!("{what}: {m}")),
            HeaderError::Unsupported(m) => HeaderError::Unsupported(format!("{what}: {m}")),
            io => io,
        }
    }
}

type Result<T> = std::result::Result<T, HeaderError>;

fn corrupt(at: u64, msg: impl fmt::Display) -> HeaderError {
    HeaderError::Corrupt(format!("{msg} (at byte {at})"))
}

/// A key or tensor name as an error shows it: a hostile one may be a gigabyte of anything.
fn shown(name: &str) -> String {
    const MAX: usize = 80;
    let mut s: String = name
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if name.chars().nth(MAX).is_some() {
        s.push('…');
    }
    s
}

/// Reads the header from `src`, positioned at the file's first byte; `len` is the file's length,
/// which bounds every count and length in it.
pub fn read<R: Read>(src: R, len: u64) -> Result<GgufHeader> {
    let mut r = Reader {
        src,
        pos: 0,
        len,
        wide: true,
    };
    let magic: [u8; 4] = r.array("the magic number")?;
    if &magic != b"GGUF" {
        return Err(corrupt(0, "the file does not start with `GGUF`"));
    }
    let version = r.u32("the version")?;
    match version {
        1 => r.wide = false,
        2 | 3 => {}
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(HeaderError::Unsupported(format!(
                "big-endian GGUF file (version {}); lensd reads little-endian ones",
                v.swap_bytes()
            )))
        }
        v => {
            return Err(HeaderError::Unsupported(format!(
                "GGUF version {v} (lensd reads versions 1, 2 and 3)"
            )))
        }
    }
    let counts_at = r.pos;
    let n_tensors = r.length("the tensor count")?;
    let n_meta = r.length("the metadata count")?;
    if n_tensors > MAX_TENSORS {
        return Err(corrupt(
            counts_at,
            format!("the header declares {n_tensors} tensors; lensd reads at most {MAX_TENSORS}"),
        ));
    }
    if n_meta > MAX_VALUES {
        return Err(corrupt(
            counts_at,
            format!(
                "the header declares {n_meta} metadata entries; lensd reads at most {MAX_VALUES}"
            ),
        ));
    }
    // The least each entry can take: a metadata entry an empty key, a type and a byte; a tensor
    // an empty name, no dimensions, a type and an offset.
    let prefix = r.prefix();
    let least = n_meta * (prefix + 4 + 1) + n_tensors * (prefix + 4 + 4 + 8);
    if least > r.remaining() {
        return Err(corrupt(
            counts_at,
            format!(
                "the header declares {n_tensors} tensors and {n_meta} metadata entries, at least \
                 {least} bytes, but the file has {} bytes after the counts (truncated or corrupt)",
                r.remaining()
            ),
        ));
    }

    let mut budget = MAX_VALUES;
    let mut metadata = HashMap::new();
    for i in 0..n_meta {
        let at = r.pos;
        let key = r
            .string("the key")
            .map_err(|e| e.within(format_args!("metadata entry {i}")))?;
        let value = r
            .u32("the value type")
            .and_then(|ty| r.value(ty, 0, &mut budget))
            .map_err(|e| e.within(format_args!("metadata `{}`", shown(&key))))?;
        if metadata.contains_key(&key) {
            return Err(corrupt(
                at,
                format!("metadata `{}` appears twice", shown(&key)),
            ));
        }
        metadata.insert(key, value);
    }

    let mut tensors = HashMap::new();
    for i in 0..n_tensors {
        let at = r.pos;
        let name = r
            .string("the name")
            .map_err(|e| e.within(format_args!("tensor {i}")))?;
        let tensor = r
            .tensor()
            .map_err(|e| e.within(format_args!("tensor `{}`", shown(&name))))?;
        if tensors.contains_key(&name) {
            return Err(corrupt(
                at,
                format!("tensor `{}` appears twice", shown(&name)),
            ));
        }
        tensors.insert(name, tensor);
    }

    let alignment = alignment(&metadata)?;
    let data_offset = r.pos.checked_next_multiple_of(alignment).ok_or_else(|| {
        corrupt(
            r.pos,
            format!("the header's end aligned to {alignment} bytes is past 2^64"),
        )
    })?;
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// `general.alignment`: a power of two, 32 when absent.
fn alignment(metadata: &HashMap<String, Value>) -> Result<u64> {
    let Some(v) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let n: i128 = match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => x.into(),
        Value::I64(x) => x.into(),
        _ => {
            return Err(HeaderError::Corrupt(format!(
                "metadata `general.alignment` is {}, not an integer",
                type_name(v)
            )))
        }
    };
    match u64::try_from(n) {
        Ok(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
        _ => Err(HeaderError::Corrupt(format!(
            "metadata `general.alignment` is {n}; it must be a power of two up to {MAX_ALIGNMENT}"
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::U8(_) => "a u8",
        Value::I8(_) => "an i8",
        Value::U16(_) => "a u16",
        Value::I16(_) => "an i16",
        Value::U32(_) => "a u32",
        Value::I32(_) => "an i32",
        Value::U64(_) => "a u64",
        Value::I64(_) => "an i64",
        Value::F32(_) => "an f32",
        Value::F64(_) => "an f64",
        Value::Bool(_) => "a bool",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    }
}

/// The name of value type number `ty` (a known one).
fn value_type_name(ty: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ];
    NAMES.get(ty as usize).copied().unwrap_or("unknown")
}

/// The header's bytes, counted as they are read.
struct Reader<R> {
    src: R,
    pos: u64,
    /// The file's length.
    len: u64,
    /// Lengths, counts and dimensions are u64 (version 2 on), not u32.
    wide: bool,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Bytes of a count or length.
    fn prefix(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let at = self.pos;
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(corrupt(
                at,
                format!(
                    "{what} needs {n} bytes but the file ends {} bytes later (truncated?)",
                    self.remaining()
                ),
            ));
        }
        self.src.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(
                    at,
                    format!(
                        "the file ended while {what} was read, though it had {} bytes when \
                         opened (truncated or replaced in place?)",
                        self.len
                    ),
                )
            } else {
                HeaderError::Io { at, error: e }
            }
        })?;
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count, length or dimension: u64, or u32 in version 1.
    fn length(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.length(what)?;
        if n > MAX_STRING {
            return Err(corrupt(
                at,
                format!("{what} is {n} bytes long, past lensd's limit of {MAX_STRING}"),
            ));
        }
        if n > self.remaining() {
            return Err(corrupt(
                at,
                format!(
                    "{what} is {n} bytes long but the file has {} bytes left (truncated or \
                     corrupt)",
                    self.remaining()
                ),
            ));
        }
        // Bounded by the bytes left in the file, checked above.
        let mut b = vec![0u8; n as usize];
        self.fill(&mut b, what)?;
        // Writers in use end some strings with NULs, and not all of them write valid UTF-8;
        // candle reads both this way too.
        while b.last() == Some(&0) {
            b.pop();
        }
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// The least bytes a value of type `ty` takes, or `None` for an unknown type.
    fn least_bytes(&self, ty: u32) -> Option<u64> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => self.prefix(),
            9 => 4 + self.prefix(),
            _ => return None,
        })
    }

    /// A value of type `ty`, `depth` arrays deep; each value spends one of `budget`.
    fn value(&mut self, ty: u32, depth: usize, budget: &mut u64) -> Result<Value> {
        let at = self.pos;
        if *budget == 0 {
            return Err(corrupt(
                at,
                format!("the metadata holds more than {MAX_VALUES} values, lensd's limit"),
            ));
        }
        *budget -= 1;
        Ok(match ty {
            0 => Value::U8(self.u8("a u8")?),
            1 => Value::I8(i8::from_le_bytes(self.array("an i8")?)),
            2 => Value::U16(u16::from_le_bytes(self.array("a u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("an i16")?)),
            4 => Value::U32(self.u32("a u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("an i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("an f32")?)),
            7 => match self.u8("a bool")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(corrupt(at, format!("a bool is {b}, neither 0 nor 1"))),
            },
            8 => Value::String(self.string("a string")?),
            9 => Value::Array(self.array_value(depth, budget)?),
            10 => Value::U64(self.u64("a u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("an i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("an f64")?)),
            t => return Err(corrupt(at, format!("unknown value type {t}"))),
        })
    }

    fn array_value(&mut self, depth: usize, budget: &mut u64) -> Result<Vec<Value>> {
        let at = self.pos;
        if depth >= MAX_DEPTH {
            return Err(corrupt(
                at,
                format!("arrays nested deeper than {MAX_DEPTH}"),
            ));
        }
        let ty = self.u32("an array's element type")?;
        let Some(least) = self.least_bytes(ty) else {
            return Err(corrupt(at, format!("an array of unknown value type {ty}")));
        };
        let n = self.length("an array's length")?;
        if n > *budget {
            return Err(corrupt(
                at,
                format!("an array of {n} values passes lensd's limit of {MAX_VALUES} in all"),
            ));
        }
        let needs = n.saturating_mul(least);
        if needs > self.remaining() {
            return Err(corrupt(
                at,
                format!(
                    "an array of {n} {} values needs at least {needs} bytes but the file has {} \
                     left (truncated or corrupt)",
                    value_type_name(ty),
                    self.remaining()
                ),
            ));
        }
        // Grown as elements arrive: the file's bytes back each one.
        let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
        for i in 0..n {
            let v = self
                .value(ty, depth + 1, budget)
                .map_err(|e| e.within(format_args!("element {i}")))?;
            items.push(v);
        }
        Ok(items)
    }

    /// A tensor's entry after its name.
    fn tensor(&mut self) -> Result<GgufTensor> {
        let at = self.pos;
        let n_dims = self.u32("the dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(corrupt(
                at,
                format!("{n_dims} dimensions; GGUF tensors have at most {MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.length("a dimension")?);
        }
        // The product of the nonzero dimensions bounds every partial product, in any order.
        let addressable = dims
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .is_some_and(|n| usize::try_from(n).is_ok());
        if !addressable {
            return Err(corrupt(
                at,
                format!("dimensions {dims:?} hold more elements than can be addressed"),
            ));
        }
        let elements = dims.iter().product::<u64>();
        let mut dims: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
        dims.reverse();
        let ty_at = self.pos;
        let ty = self.u32("the GGML type")?;
        let dtype = match (GgufDType::from_ggml_type(ty), unread_type_name(ty)) {
            (Some(d), _) => d,
            (None, Some(name)) => {
                return Err(HeaderError::Unsupported(format!(
                    "GGML type {ty} ({name}); lensd reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
                     Q5_1, Q8_0, Q8_1, the K-quants and MXFP4"
                )))
            }
            (None, None) => return Err(corrupt(ty_at, format!("unknown GGML type {ty}"))),
        };
        let blocks = elements / dtype.block_size() as u64;
        if blocks.checked_mul(dtype.type_size() as u64).is_none() {
            return Err(corrupt(
                at,
                format!("{elements} elements of {dtype} take more than 2^64 bytes"),
            ));
        }
        let offset = self.u64("the data offset")?;
        Ok(GgufTensor {
            dtype,
            shape: Shape::from(dims),
            offset,
        })
    }
}

#[cfg(test)]
#[path = "gguf_header_tests.rs"]
pub(crate) mod tests;
