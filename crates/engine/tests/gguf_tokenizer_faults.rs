//! Tokenizer metadata of GGUF files that lie: merges whose pieces or result are not tokens. The
//! fuzz target `gguf_tokenizer` found that a merge joining two tokens into a piece longer than
//! every token made the tokenizers crate panic; such files are refused naming the merge.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use lensd_engine::tokenizer::Tokenizer;
use lensd_engine::weights::gguf::GgufFile;

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A byte-level BPE GGUF file of metadata only.
fn tokenizer(dir: &std::path::Path, tokens: &[&str], merges: &[&str]) -> Result<Tokenizer, String> {
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
    ];
    let path = dir.join("t.gguf");
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let no_tensors: &[(&str, &QTensor)] = &[];
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &refs, no_tensors).unwrap();
    let g = GgufFile::open(&path).map_err(|e| e.to_string())?;
    Tokenizer::from_gguf(&g).map_err(|e| e.to_string())
}

#[test]
fn a_merge_that_does_not_join_two_tokens_into_a_third_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (tokens, merges, needle) in [
        // The fuzz target's crash: `x` + `yyy` is longer than every token.
        (
            &["x", "yyy", "ab"][..],
            &["x yyy"][..],
            "merge `x yyy`: `xyyy` is not a token",
        ),
        (
            &["a", "b"][..],
            &["a b"][..],
            "merge `a b`: `ab` is not a token",
        ),
        (
            &["a", "ab"][..],
            &["a b"][..],
            "merge `a b`: `b` is not a token",
        ),
    ] {
        let e = tokenizer(dir.path(), tokens, merges)
            .err()
            .expect("refused");
        assert!(e.contains(needle) && e.contains("t.gguf"), "{e}");
    }
    // A sound merge builds, and encodes with it.
    let t = tokenizer(dir.path(), &["a", "b", "ab"], &["a b"]).unwrap();
    assert_eq!(t.encode("ab", false).unwrap(), [2]);
}
