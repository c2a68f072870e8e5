//! BOS exactly as the file says: a file that asks for a BOS token it does not name (or names
//! one outside its vocabulary) is refused with the file's name; a `tokenizer.json` whose
//! post-processor adds BOS gets it unless `tokenizer_config.json` says otherwise.

mod common;

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use lensd_engine::tokenizer::Tokenizer;
use lensd_engine::weights::gguf::GgufFile;
use lensd_engine::{Base, EngineError, LoadOptions};

/// A SentencePiece vocabulary of `n` tokens: `<unk> <s> </s>`, 256 byte tokens, `▁` and
/// filler pieces.
fn spm_metadata(n: usize) -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    tokens.push("▁".into());
    types.push(1);
    while tokens.len() < n {
        tokens.push(format!("p{}", tokens.len()));
        types.push(1);
    }
    let scores = (0..n).map(|i| Value::F32(-(i as f32))).collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.scores".into(), Value::Array(scores)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ]
}

fn write_header(path: &Path, meta: &[(String, Value)]) {
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let no_tensors: &[(&str, &QTensor)] = &[];
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &refs, no_tensors).unwrap();
}

fn tokenizer_of(path: &Path) -> lensd_engine::Result<Tokenizer> {
    Tokenizer::from_gguf(&GgufFile::open(path).unwrap())
}

fn assert_names(e: &EngineError, path: &Path, needles: &[&str]) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "error lacks `{n}`: {msg}");
    }
}

#[test]
fn a_model_that_asks_for_a_bos_it_does_not_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no-bos.gguf");
    // The tiny llama's weights with a tokenizer whose header says add_bos_token but names no BOS.
    common::write_tiny_gguf(&p, |meta, _| {
        meta.extend(spm_metadata(512));
        meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
        meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(2)));
    });
    let e = match Base::load(&p, LoadOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("{} loaded", p.display()),
    };
    assert_names(
        &e,
        &p,
        &["add_bos_token` is true", "bos_token_id` is missing"],
    );
}

#[test]
fn bos_by_default_without_an_id_or_outside_the_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // No add_bos_token: llama.cpp adds BOS to SentencePiece vocabularies by default.
    let p = dir.path().join("default.gguf");
    write_header(&p, &spm_metadata(300));
    let e = tokenizer_of(&p).err().expect("refused");
    assert_names(
        &e,
        &p,
        &["absent", "by default", "bos_token_id` is missing"],
    );

    let p = dir.path().join("outside.gguf");
    let mut meta = spm_metadata(300);
    meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(300)));
    write_header(&p, &meta);
    let e = tokenizer_of(&p).err().expect("refused");
    assert_names(
        &e,
        &p,
        &["bos_token_id` is 300", "vocabulary of 300 tokens"],
    );
}

#[test]
fn bos_follows_the_gguf_flags() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flags.gguf");
    let mut meta = spm_metadata(300);
    meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(1)));
    write_header(&p, &meta);
    let tk = tokenizer_of(&p).unwrap();
    assert!(
        tk.add_bos,
        "SentencePiece vocabularies get BOS when the file does not say"
    );
    // add_space_prefix defaults to true for SentencePiece: "▁" (id 259) before the text.
    assert_eq!(tk.encode_prompt("a", false).unwrap(), [1, 259, 97 + 3]);
    assert_eq!(tk.encode_prompt("<s>a", true).unwrap(), [1, 259, 100]);

    meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    meta.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
    write_header(&p, &meta);
    let tk = tokenizer_of(&p).unwrap();
    assert!(!tk.add_bos);
    assert_eq!(tk.encode_prompt("a", false).unwrap(), [100]);
}

/// The tiny llama's `tokenizer.json` (no post-processor) in a scratch folder, optionally with
/// a post-processor that puts `<|im_start|>` (id 0) first and a `tokenizer_config.json`.
fn hf_folder(post_bos: bool, config: Option<serde_json::Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::testdata("tiny-llama/tokenizer.json")).unwrap();
    let mut tk: serde_json::Value = serde_json::from_str(&text).unwrap();
    if post_bos {
        tk["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {
                "<|im_start|>": {"id": "<|im_start|>", "ids": [0], "tokens": ["<|im_start|>"]}
            }
        });
    }
    std::fs::write(dir.path().join("tokenizer.json"), tk.to_string()).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.path().join("tokenizer_config.json"), c.to_string()).unwrap();
    }
    dir
}

#[test]
fn a_tokenizer_json_post_processor_adds_bos_unless_the_config_says_no() {
    let load = |dir: &tempfile::TempDir| {
        Tokenizer::from_json_file(&dir.path().join("tokenizer.json"), None, vec![1], false)
    };
    let dir = hf_folder(true, None);
    let tk = load(&dir).unwrap();
    assert_eq!((tk.add_bos, tk.bos_id), (true, Some(0)));
    let ids = tk.encode_prompt("hello", false).unwrap();
    assert_eq!(ids[0], 0);
    assert_eq!(ids[1..], tk.encode("hello", false).unwrap()[..]);

    let dir = hf_folder(true, Some(serde_json::json!({"add_bos_token": false})));
    assert!(!load(&dir).unwrap().add_bos);

    let dir = hf_folder(false, None);
    assert!(!load(&dir).unwrap().add_bos);
}

#[test]
fn a_tokenizer_config_that_asks_for_a_bos_it_does_not_name_is_refused() {
    let dir = hf_folder(false, Some(serde_json::json!({"add_bos_token": true})));
    let path = dir.path().join("tokenizer.json");
    let e = Tokenizer::from_json_file(&path, None, vec![1], false)
        .err()
        .expect("refused");
    assert_names(
        &e,
        &dir.path().join("tokenizer_config.json"),
        &["add_bos_token` is true", "no BOS token is named"],
    );
    // Naming it in tokenizer_config.json is enough.
    let dir = hf_folder(
        false,
        Some(serde_json::json!({"add_bos_token": true, "bos_token": {"content": "<|im_start|>"}})),
    );
    let tk = Tokenizer::from_json_file(&dir.path().join("tokenizer.json"), None, vec![1], false)
        .unwrap();
    assert_eq!((tk.add_bos, tk.bos_id), (true, Some(0)));
}
