//! MXFP4 dequantization against transformers' (`tools/gen_mxfp4_golden.py`): random expert
//! tensors in gpt-oss's stored layout, every nibble value and the extreme scales, equal to the
//! bit (both are exact: a power of two times a value of the 16-entry table).

mod common;

use lensd_engine::weights::mxfp4::dequantize;
use safetensors::SafeTensors;

#[test]
fn dequantized_values_equal_transformers_to_the_bit() {
    let bytes = std::fs::read(common::testdata("mxfp4_golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let blocks = st.tensor("blocks").unwrap();
    let scales = st.tensor("scales").unwrap();
    let want = st.tensor("dequantized").unwrap();
    let (e, rows, groups) = (blocks.shape()[0], blocks.shape()[1], blocks.shape()[2]);
    assert_eq!(blocks.shape()[3], 16);
    assert_eq!(want.shape(), [e, groups * 32, rows]);
    let got = dequantize(blocks.data(), scales.data(), "golden").unwrap();
    let want: Vec<f32> = want
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let cols = groups * 32;
    let mut checked = 0;
    for x in 0..e {
        for r in 0..rows {
            for c in 0..cols {
                // ours: [E, rows, G * 32]; transformers': [E, G * 32, rows]
                let a = got[(x * rows + r) * cols + c];
                let b = want[(x * cols + c) * rows + r];
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "expert {x} row {r} column {c}: {a} vs {b}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, got.len());
    assert!(
        got.iter().any(|v| v.is_infinite()),
        "the scale 254 overflows f32 for |v| >= 2"
    );
}
