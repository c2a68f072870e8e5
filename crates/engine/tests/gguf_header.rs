//! lensd's GGUF header parser reads every GGUF file in the repository as candle's reader does
//! (metadata, tensor table, start of the data), through both ways a file is opened; and reads
//! the files candle refuses for their MXFP4 tensors.

mod common;

use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use lensd_engine::weights::gguf::{GgufDType, GgufFile};

/// `testdata/*/model.gguf`, the demo model, and Gemma-3-270M when it is present.
fn repository_ggufs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::root().join("testdata"))
        .unwrap()
        .map(|e| e.unwrap().path().join("model.gguf"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.push(common::demo_model());
    files.extend(common::gemma3_model());
    files
}

fn assert_same_as_candle(path: &Path, g: &GgufFile, c: &Content) {
    let at = path.display();
    assert_eq!(g.tensor_data_offset(), c.tensor_data_offset, "{at}");
    assert_eq!(g.metadata().len(), c.metadata.len(), "{at}");
    for (k, v) in &c.metadata {
        let ours = g.get(k).unwrap_or_else(|| panic!("{at}: `{k}` missing"));
        assert_eq!(format!("{ours:?}"), format!("{v:?}"), "{at}: `{k}`");
    }
    assert_eq!(g.tensor_infos().len(), c.tensor_infos.len(), "{at}");
    for (name, t) in &c.tensor_infos {
        let ours = &g.tensor_infos()[name];
        assert_eq!(ours.dtype, GgufDType::Ggml(t.ggml_dtype), "{at}: {name}");
        assert_eq!(ours.shape, t.shape, "{at}: {name}");
        assert_eq!(ours.offset, t.offset, "{at}: {name}");
        assert_eq!(ours.dtype.to_string(), format!("{:?}", t.ggml_dtype));
    }
}

#[test]
fn every_gguf_in_the_repository_reads_as_candle_reads_it() {
    let files = repository_ggufs();
    assert!(files.len() >= 7, "{files:?}");
    let mut compared = 0;
    for path in &files {
        let header_only = GgufFile::open(path).unwrap();
        let whole = GgufFile::read(path, &mut |_, _| {}).unwrap();
        let mut f = BufReader::new(std::fs::File::open(path).unwrap());
        match Content::read(&mut f) {
            Ok(c) => {
                assert_same_as_candle(path, &header_only, &c);
                assert_same_as_candle(path, &whole, &c);
                compared += 1;
            }
            // candle knows no MXFP4: such a file is read here, with its experts in MXFP4.
            Err(e) => {
                assert!(e.to_string().contains("39"), "{}: {e}", path.display());
                let mxfp4 = whole
                    .tensor_infos()
                    .iter()
                    .filter(|(_, t)| t.dtype == GgufDType::Mxfp4)
                    .inspect(|(name, t)| {
                        assert!(name.contains("_exps."), "{name}");
                        assert_eq!(GgufFile::tensor_bytes(t), t.elements() / 32 * 17);
                    })
                    .count();
                assert!(mxfp4 > 0, "{}", path.display());
            }
        }
    }
    assert!(compared >= 7, "{compared} of {files:?}");
}

#[test]
fn a_file_candle_refuses_for_mxfp4_is_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::testdata("tiny-llama3/model.gguf");
    let mut bytes = std::fs::read(&src).unwrap();
    // Retype one f32 matrix as MXFP4 in place: its 64 × 64 values then need 2,176 bytes,
    // fewer than its 16,384, so the file still holds them.
    let g = GgufFile::open(&src).unwrap();
    let name = "blk.0.ffn_up.weight";
    assert_eq!(g.tensor_infos()[name].shape.dims()[1] % 32, 0);
    let entry = find(&bytes, name.as_bytes()) + name.len();
    let n_dims = u32::from_le_bytes(bytes[entry..entry + 4].try_into().unwrap()) as usize;
    let ty = entry + 4 + 8 * n_dims;
    assert_eq!(bytes[ty..ty + 4], 0u32.to_le_bytes());
    bytes[ty..ty + 4].copy_from_slice(&39u32.to_le_bytes());
    let path = dir.path().join("mxfp4.gguf");
    std::fs::write(&path, &bytes).unwrap();

    let e = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap_err();
    assert!(e.to_string().contains("unknown dtype for tensor 39"), "{e}");
    let g = GgufFile::open(&path).unwrap();
    let t = &g.tensor_infos()[name];
    assert_eq!(t.dtype, GgufDType::Mxfp4);
    assert_eq!(GgufFile::tensor_bytes(t), t.elements() / 32 * 17);
    let r = lensd_engine::inspect::inspect(&path).unwrap();
    let mlp = r.kinds.iter().find(|k| k.kind == "mlp").unwrap();
    assert_eq!(mlp.dtypes.get("MXFP4"), Some(&1), "{:?}", mlp.dtypes);
    assert_eq!(
        r.config.map(|c| c.n_layers),
        Some(g.get_usize("llama.block_count").unwrap())
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("the tensor's name is in the header")
}
