//! The header parser on files built here field by field (every value type, versions 1 to 3,
//! MXFP4 tensors, other alignments), on a real header cut at every length and corrupted at
//! random, and on hostile counts and lengths.

use std::io::Cursor;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, Value};
use rand::{Rng, SeedableRng};

use super::*;

/// A GGUF file built field by field: any version, alignment, value and tensor type (candle's
/// writer has version 2, alignment 32 and its own types only).
pub(crate) struct Writer {
    version: u32,
    alignment: u64,
    meta: Vec<(String, Value)>,
    /// Name, shape (outermost first), GGML type, data.
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Writer {
    pub(crate) fn new(version: u32) -> Self {
        Writer {
            version,
            alignment: DEFAULT_ALIGNMENT,
            meta: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub(crate) fn meta(mut self, key: &str, v: Value) -> Self {
        self.meta.push((key.into(), v));
        self
    }

    /// Sets `general.alignment` (a u32) and lays the data out by it.
    pub(crate) fn aligned(mut self, alignment: u32) -> Self {
        self.alignment = alignment.into();
        self.meta("general.alignment", Value::U32(alignment))
    }

    pub(crate) fn tensor(mut self, name: &str, shape: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), shape.to_vec(), ty, data));
        self
    }

    fn length(&self, out: &mut Vec<u8>, n: u64) {
        if self.version == 1 {
            out.extend((n as u32).to_le_bytes());
        } else {
            out.extend(n.to_le_bytes());
        }
    }

    fn string(&self, out: &mut Vec<u8>, s: &str) {
        self.length(out, s.len() as u64);
        out.extend(s.as_bytes());
    }

    fn value(&self, out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.extend(x.to_le_bytes()),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(u8::from(*x)),
            Value::String(s) => self.string(out, s),
            Value::Array(items) => {
                out.extend(items.first().map_or(0, type_of).to_le_bytes());
                self.length(out, items.len() as u64);
                for item in items {
                    self.value(out, item);
                }
            }
        }
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let align = |n: usize| n.next_multiple_of(self.alignment as usize);
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        self.length(&mut out, self.tensors.len() as u64);
        self.length(&mut out, self.meta.len() as u64);
        for (k, v) in &self.meta {
            self.string(&mut out, k);
            out.extend(type_of(v).to_le_bytes());
            self.value(&mut out, v);
        }
        let mut offset = 0;
        for (name, shape, ty, data) in &self.tensors {
            self.string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                self.length(&mut out, d);
            }
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = align(offset + data.len());
        }
        out.resize(align(out.len()), 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(align(out.len()), 0);
        }
        out
    }
}

fn type_of(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn parse(bytes: &[u8]) -> Result<GgufHeader> {
    read(bytes, bytes.len() as u64)
}

fn corrupt_msg(bytes: &[u8]) -> String {
    match parse(bytes) {
        Err(HeaderError::Corrupt(m)) => m,
        other => panic!("expected a corrupt header, got {other:?}"),
    }
}

/// The header as candle reads it, for the types candle knows, equals ours.
fn assert_same_as_candle(bytes: &[u8], h: &GgufHeader) {
    let c = Content::read(&mut Cursor::new(bytes)).expect("candle reads it");
    assert_eq!(c.tensor_data_offset, h.data_offset);
    assert_eq!(c.metadata.len(), h.metadata.len());
    for (k, v) in &c.metadata {
        assert_eq!(format!("{v:?}"), format!("{:?}", h.metadata[k]), "{k}");
    }
    assert_eq!(c.tensor_infos.len(), h.tensors.len());
    for (name, t) in &c.tensor_infos {
        let ours = &h.tensors[name];
        assert_eq!(ours.dtype, GgufDType::Ggml(t.ggml_dtype), "{name}");
        assert_eq!(ours.shape, t.shape, "{name}");
        assert_eq!(ours.offset, t.offset, "{name}");
    }
}

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60_000)),
        ("i16", Value::I16(-30_000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(1.5e-5)),
        ("f64", Value::F64(-2.25e300)),
        ("yes", Value::Bool(true)),
        ("no", Value::Bool(false)),
        ("text", Value::String("héllo, ✓".into())),
        ("empty", Value::String(String::new())),
        ("ids", Value::Array(vec![Value::I32(-1), Value::I32(7)])),
        (
            "tokens",
            Value::Array(vec![
                Value::String("<s>".into()),
                Value::String("▁a".into()),
            ]),
        ),
        (
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::U16(1), Value::U16(2)]),
                Value::Array(vec![Value::U16(3)]),
            ]),
        ),
        ("none", Value::Array(vec![])),
    ]
}

fn f32_data(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn every_value_type_reads_back_as_written_and_as_candle_reads_it() {
    let mut w = Writer::new(3);
    for (k, v) in every_value() {
        w = w.meta(k, v);
    }
    let bytes = w.tensor("t", &[2, 3], 0, f32_data(6)).bytes();
    let h = parse(&bytes).unwrap();
    for (k, v) in every_value() {
        assert_eq!(format!("{v:?}"), format!("{:?}", h.metadata[k]), "{k}");
    }
    assert_same_as_candle(&bytes, &h);
}

#[test]
fn versions_one_two_and_three_read_alike() {
    let write = |version| {
        let mut w = Writer::new(version);
        for (k, v) in every_value() {
            w = w.meta(k, v);
        }
        w.tensor("a", &[2, 3], 0, f32_data(6))
            .tensor("b", &[1, 32], 8, vec![1; 34])
            .tensor("c", &[5], 1, vec![2; 10])
            .bytes()
    };
    let v3 = parse(&write(3)).unwrap();
    for version in [1, 2] {
        let bytes = write(version);
        let h = parse(&bytes).unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.tensors, v3.tensors);
        assert_eq!(
            format!("{:?}", h.metadata.get("nested")),
            format!("{:?}", v3.metadata.get("nested"))
        );
        assert_same_as_candle(&bytes, &h);
    }
    assert_eq!(v3.tensors["a"].shape.dims(), &[2, 3]);
    assert_eq!(v3.tensors["b"].dtype, GgufDType::Ggml(GgmlDType::Q8_0));
    assert_eq!(v3.tensors["b"].bytes(), 34);
}

#[test]
fn an_mxfp4_tensor_is_named_with_its_blocks_of_32_values_in_17_bytes() {
    let bytes = Writer::new(3)
        .meta("general.architecture", Value::String("gpt-oss".into()))
        .tensor(
            "blk.0.ffn_up_exps.weight",
            &[2, 3, 64],
            MXFP4,
            vec![7; 2 * 3 * 2 * 17],
        )
        .tensor("blk.0.attn_q.weight", &[4, 4], 0, f32_data(16))
        .bytes();
    let h = parse(&bytes).unwrap();
    let t = &h.tensors["blk.0.ffn_up_exps.weight"];
    assert_eq!(t.dtype, GgufDType::Mxfp4);
    assert_eq!(t.shape.dims(), &[2, 3, 64]);
    assert_eq!((t.elements(), t.bytes()), (384, 204));
    assert_eq!((t.dtype.block_size(), t.dtype.type_size()), (32, 17));
    assert_eq!(t.dtype.to_string(), "MXFP4");
    assert_eq!(format!("{:?}", t.dtype), "MXFP4");
    assert!(!t.dtype.is_float());
    assert_eq!(h.tensors["blk.0.attn_q.weight"].offset, 224);
    assert_eq!(h.data_offset % 32, 0);
    // candle refuses the file for this one tensor.
    let e = Content::read(&mut Cursor::new(&bytes)).unwrap_err();
    assert!(e.to_string().contains("39"), "{e}");
}

#[test]
fn ggml_types_keep_candles_names_and_sizes() {
    for ty in (0..64).filter(|&t| t != MXFP4) {
        let Some(d) = GgufDType::from_ggml_type(ty) else {
            continue;
        };
        let GgufDType::Ggml(g) = d else {
            panic!("type {ty}")
        };
        assert_eq!(d.to_string(), format!("{g:?}"));
        assert_eq!(
            (d.block_size(), d.type_size()),
            (g.block_size(), g.type_size())
        );
    }
    assert_eq!(
        GgufDType::from_ggml_type(12).map(|d| d.to_string()),
        Some("Q4K".into())
    );
}

#[test]
fn an_alignment_other_than_32_places_the_data() {
    for alignment in [1u32, 8, 64, 4096] {
        let bytes = Writer::new(3)
            .aligned(alignment)
            .meta("name", Value::String("x".into()))
            .tensor("a", &[3], 0, f32_data(3))
            .tensor("b", &[5], 0, f32_data(5))
            .bytes();
        let h = parse(&bytes).unwrap();
        assert_eq!(h.alignment, u64::from(alignment));
        assert_eq!(h.data_offset % u64::from(alignment), 0);
        assert_eq!(
            h.tensors["b"].offset,
            12u64.next_multiple_of(alignment.into())
        );
        assert_same_as_candle(&bytes, &h);
    }
    // Without the key: 32.
    let h = parse(&Writer::new(3).tensor("a", &[3], 0, f32_data(3)).bytes()).unwrap();
    assert_eq!((h.alignment, h.data_offset % 32), (32, 0));
}

#[test]
fn an_alignment_that_is_no_power_of_two_is_refused_naming_the_key() {
    for v in [
        Value::U32(0),
        Value::U32(48),
        Value::I32(-32),
        Value::U64(1 << 40),
        Value::String("32".into()),
    ] {
        let m = corrupt_msg(&Writer::new(3).meta("general.alignment", v.clone()).bytes());
        assert!(m.contains("`general.alignment`"), "{v:?}: {m}");
    }
}

#[test]
fn unread_tensor_types_are_refused_naming_the_tensor_and_the_type() {
    let bytes = Writer::new(3).tensor("w", &[32], 20, vec![0; 18]).bytes();
    match parse(&bytes) {
        Err(HeaderError::Unsupported(m)) => {
            assert!(
                m.contains("tensor `w`") && m.contains("type 20 (IQ4_NL)"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let m = corrupt_msg(&Writer::new(3).tensor("w", &[32], 200, vec![]).bytes());
    assert!(
        m.contains("tensor `w`") && m.contains("unknown GGML type 200"),
        "{m}"
    );
}

/// The first bytes of a version 3 header declaring `tensors` tensors and `meta` entries.
fn counts(tensors: u64, meta: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(meta.to_le_bytes());
    b
}

/// `counts(0, 1)` and a key, followed by `rest` (the value type and value).
fn one_key(key: &str, rest: &[u8]) -> Vec<u8> {
    let mut b = counts(0, 1);
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(rest);
    b
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn huge_counts_and_lengths_are_refused_at_once_naming_what() {
    let array_of =
        |ty: u32, n: u64| le(&[&9u32.to_le_bytes(), &ty.to_le_bytes(), &n.to_le_bytes()]);
    // An array of one array of one array ... 40 deep.
    let mut nested = 9u32.to_le_bytes().to_vec();
    for _ in 0..40 {
        nested.extend(le(&[&9u32.to_le_bytes(), &1u64.to_le_bytes()]));
    }
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (counts(u64::MAX, 0), &["18446744073709551615 tensors"]),
        (counts(0, u64::MAX), &["metadata entries"]),
        (
            counts(1000, 1000),
            &["1000 tensors", "truncated or corrupt"],
        ),
        (
            one_key("long-enough", &[]),
            &["metadata `long-enough`", "value type", "truncated"],
        ),
        (
            le(&[&counts(0, 1), &u64::MAX.to_le_bytes(), &[0; 16]]),
            &["metadata entry 0", "18446744073709551615 bytes"],
        ),
        (
            one_key(
                "s",
                &le(&[&8u32.to_le_bytes(), &(1u64 << 40).to_le_bytes()]),
            ),
            &["metadata `s`", "1099511627776 bytes"],
        ),
        (
            one_key("a", &array_of(0, 1 << 40)),
            &["metadata `a`", "limit of 8388608"],
        ),
        (
            one_key("a", &array_of(12, 1 << 20)),
            &["metadata `a`", "needs at least 8388608 bytes"],
        ),
        (
            one_key("a", &array_of(8, 1 << 22)),
            &["metadata `a`", "4194304 string values"],
        ),
        (
            one_key("a", &array_of(13, 1)),
            &["metadata `a`", "unknown value type 13"],
        ),
        (
            one_key("n", &nested),
            &["metadata `n`", "nested deeper than 16"],
        ),
        (
            one_key("b", &le(&[&7u32.to_le_bytes(), &[2]])),
            &["metadata `b`", "bool is 2"],
        ),
        (
            one_key("t", &99u32.to_le_bytes()),
            &["metadata `t`", "unknown value type 99"],
        ),
    ];
    for (bytes, needles) in cases {
        let start = Instant::now();
        let m = corrupt_msg(&bytes);
        assert!(start.elapsed() < Duration::from_secs(1), "{m}");
        assert!(m.contains("(at byte "), "{m}");
        for n in needles {
            assert!(m.contains(n), "`{n}` missing from: {m}");
        }
    }
}

#[test]
fn bad_tensor_entries_are_refused_naming_the_tensor() {
    let tensor = |dims: &[u64]| {
        let mut b = counts(1, 0);
        b.extend(1u64.to_le_bytes());
        b.push(b'w');
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len() + 64, 0);
        b
    };
    let m = corrupt_msg(&tensor(&[1, 1, 1, 1, 1]));
    assert!(
        m.contains("tensor `w`") && m.contains("5 dimensions"),
        "{m}"
    );
    let m = corrupt_msg(&tensor(&[1 << 40, 1 << 40]));
    assert!(
        m.contains("tensor `w`") && m.contains("more elements"),
        "{m}"
    );
    // A zero dimension does not hide an overflowing product from the shape.
    let m = corrupt_msg(&tensor(&[0, 1 << 40, 1 << 40]));
    assert!(m.contains("tensor `w`"), "{m}");
    assert_eq!(
        parse(&tensor(&[0, 1 << 40])).unwrap().tensors["w"].elements(),
        0
    );
    let b = tensor(&[4]);
    let m = corrupt_msg(&b[..b.len() - 64 - 5]);
    assert!(
        m.contains("tensor `w`: the data offset") && m.contains("truncated"),
        "{m}"
    );
}

#[test]
fn repeated_keys_and_tensors_are_refused() {
    let m = corrupt_msg(
        &Writer::new(3)
            .meta("k", Value::U8(1))
            .meta("k", Value::U8(2))
            .bytes(),
    );
    assert!(m.contains("metadata `k` appears twice"), "{m}");
    let m = corrupt_msg(
        &Writer::new(3)
            .tensor("t", &[1], 0, f32_data(1))
            .tensor("t", &[1], 0, f32_data(1))
            .bytes(),
    );
    assert!(m.contains("tensor `t` appears twice"), "{m}");
    // A long or odd name is shown cut short.
    let key = format!("a\nb{}", "x".repeat(10_000));
    let m = corrupt_msg(
        &Writer::new(3)
            .meta(&key, Value::U8(1))
            .meta(&key, Value::U8(2))
            .bytes(),
    );
    assert!(
        m.len() < 200 && m.contains("a\u{fffd}bxxx") && m.contains("x…`"),
        "{m}"
    );
}

#[test]
fn other_magics_and_versions_are_refused_by_name() {
    let m = corrupt_msg(b"GGML\x03\0\0\0");
    assert!(m.contains("`GGUF`"), "{m}");
    for (version, needle) in [
        (4u32, "version 4"),
        (0, "version 0"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend([0; 16]);
        match parse(&b) {
            Err(HeaderError::Unsupported(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

fn real_header() -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/tiny-llama3/model.gguf");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_real_header_cut_at_every_length_is_an_error_naming_the_byte() {
    let bytes = real_header();
    let whole = parse(&bytes).unwrap();
    assert_same_as_candle(&bytes, &whole);
    let mut first_ok = None;
    for cut in 0..whole.data_offset as usize {
        let short = &bytes[..cut];
        // The file as short as that, and a file that shrank after its length was taken.
        let results = [read(short, cut as u64), read(short, bytes.len() as u64)];
        for r in results {
            match r {
                Ok(h) => {
                    first_ok.get_or_insert(cut);
                    assert_eq!(h.tensors, whole.tensors);
                    assert_eq!(h.data_offset, whole.data_offset);
                }
                Err(HeaderError::Corrupt(m)) => {
                    assert!(
                        first_ok.is_none(),
                        "cut at {cut} fails after shorter cuts read: {m}"
                    );
                    assert!(
                        m.contains("(at byte ") && m.contains("truncated"),
                        "{cut}: {m}"
                    );
                }
                Err(e) => panic!("cut at {cut}: {e:?}"),
            }
        }
    }
    let end = first_ok.expect("the header ends before the data");
    assert!(end as u64 > whole.data_offset - whole.alignment, "{end}");
}

#[test]
fn random_corruption_of_a_real_header_gives_headers_or_errors() {
    let good = real_header();
    let end = parse(&good).unwrap().data_offset as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut refused = 0;
    for _ in 0..3000 {
        let mut b = good[..end].to_vec();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..end);
            b[at] = if rng.random() { rng.random() } else { 0xff };
        }
        if parse(&b).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0);
}
