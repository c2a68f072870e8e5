//! The `qwen2`, `llama-bpe` and `default` pre-tokenizers against llama.cpp
//! (testdata/pretokenizer_golden.json, made by tools/gen_pretokenizer_golden.py). The
//! reference ran on the demo model's vocabulary with `tokenizer.ggml.pre` replaced and a few
//! tokens appended; these tests make the same change to the demo file's header.

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use lensd_engine::tokenizer::Tokenizer;
use lensd_engine::weights::gguf::GgufFile;

/// The demo file's metadata, no tensors, as the generator rewrote it for `pre`.
fn variant(pre: &str, golden: &serde_json::Value, dir: &std::path::Path) -> Tokenizer {
    let demo = GgufFile::open(&common::demo_model()).unwrap();
    let strings = |key: &str| -> Vec<Value> {
        golden[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Value::String(s.as_str().unwrap().to_string()))
            .collect()
    };
    let append = |v: &Value, extra: Vec<Value>| match v {
        Value::Array(items) => Value::Array(items.iter().cloned().chain(extra).collect()),
        other => panic!("not an array: {other:?}"),
    };
    let n_extra = golden["extra_tokens"].as_array().unwrap().len();
    let mut meta: Vec<(String, Value)> = Vec::new();
    for (k, v) in demo.metadata() {
        let v = match k.as_str() {
            "tokenizer.ggml.add_bos_token" => continue,
            "tokenizer.ggml.pre" => Value::String(pre.to_string()),
            "tokenizer.ggml.tokens" => append(v, strings("extra_tokens")),
            "tokenizer.ggml.merges" => append(v, strings("extra_merges")),
            "tokenizer.ggml.token_type" => append(v, vec![Value::I32(1); n_extra]),
            _ => v.clone(),
        };
        meta.push((k.clone(), v));
    }
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let path = dir.join(format!("demo-{pre}.gguf"));
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let no_tensors: &[(&str, &QTensor)] = &[];
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &refs, no_tensors).unwrap();
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
}

#[test]
fn ids_equal_llama_cpp_for_each_pre_tokenizer() {
    let golden = common::json("pretokenizer_golden.json");
    let corpus = common::json("tokenizer_golden.json");
    let texts: std::collections::HashMap<&str, (&str, bool)> = corpus["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let text = c["text"].as_str().unwrap();
            (
                c["name"].as_str().unwrap(),
                (text, c["special"].as_bool().unwrap()),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for pre in ["qwen2", "llama-bpe", "default"] {
        let tk = variant(pre, &golden, dir.path());
        let want_bos = golden["add_bos_default"][pre].as_bool().unwrap();
        assert_eq!(tk.add_bos, want_bos, "{pre}: BOS by default");
        let (mut cases, mut tokens) = (0, 0);
        let mut mismatches = Vec::new();
        for case in golden["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let (text, special) = match case.get("text") {
                Some(t) => (t.as_str().unwrap(), case["special"].as_bool().unwrap()),
                None => texts[name],
            };
            let want = common::ids_of(&case["ids"][pre]);
            let got = tk.encode(text, special).unwrap();
            cases += 1;
            tokens += want.len();
            if got != want {
                mismatches.push(format!("{pre} {name}: got {got:?}, llama.cpp {want:?}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} cases differ:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
        report.push(format!("{pre}: {cases} cases, {tokens} tokens"));
    }
    eprintln!("identical to llama.cpp: {}", report.join("; "));
}
