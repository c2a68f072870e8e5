//! The metadata a GGUF file's tokenizer and chat template are built from, as a downloaded model
//! would carry it: fuzzer-chosen vocabularies (SentencePiece or byte-level BPE), scores, token
//! types, merges, special ids and a Jinja chat template, written as a real GGUF file. Building
//! the tokenizer, encoding and decoding, and rendering the template (untrusted code) give text
//! or an error, never a panic, and the rendering stays within its time and memory limits.
#![no_main]

use std::io::Write;

use lensd_engine::chat::{ChatTemplate, Message};
use lensd_engine::tokenizer::Tokenizer;
use lensd_engine::weights::gguf::GgufFile;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const STRING: u32 = 8;
const ARRAY: u32 = 9;

struct Kv(Vec<u8>, u64);

impl Kv {
    fn key(&mut self, k: &str, ty: u32) {
        self.1 += 1;
        self.0.extend((k.len() as u64).to_le_bytes());
        self.0.extend(k.as_bytes());
        self.0.extend(ty.to_le_bytes());
    }
    fn str_value(&mut self, s: &str) {
        self.0.extend((s.len() as u64).to_le_bytes());
        self.0.extend(s.as_bytes());
    }
    fn string(&mut self, k: &str, s: &str) {
        self.key(k, STRING);
        self.str_value(s);
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.0.extend(v.to_le_bytes());
    }
    fn strings(&mut self, k: &str, items: &[String]) {
        self.key(k, ARRAY);
        self.0.extend(STRING.to_le_bytes());
        self.0.extend((items.len() as u64).to_le_bytes());
        for s in items {
            self.str_value(s);
        }
    }
    fn numbers(&mut self, k: &str, ty: u32, items: &[[u8; 4]]) {
        self.key(k, ARRAY);
        self.0.extend(ty.to_le_bytes());
        self.0.extend((items.len() as u64).to_le_bytes());
        for b in items {
            self.0.extend(b);
        }
    }
}

fn short_string(u: &mut Unstructured, max: usize) -> Result<String> {
    let n = u.int_in_range(0..=max)?;
    let mut s = String::new();
    for _ in 0..n {
        s.push(u.arbitrary::<char>()?);
    }
    Ok(s)
}

/// A GGUF file of metadata only (no tensors), its contents chosen by `u`.
fn gguf(u: &mut Unstructured) -> Result<(Vec<u8>, String)> {
    let mut kv = Kv(Vec::new(), 0);
    kv.string("general.architecture", *u.choose(&["llama", "qwen2", "gemma3"])?);
    let model = *u.choose(&["llama", "gpt2", "bert", ""])?;
    kv.string("tokenizer.ggml.model", model);
    let n = u.int_in_range(0..=64)?;
    let mut tokens: Vec<String> = Vec::with_capacity(n);
    for i in 0..n {
        tokens.push(match u.int_in_range(0..=5)? {
            0 => format!("<0x{:02X}>", i % 256),
            1 => "<s>".into(),
            2 => "</s>".into(),
            3 => "<|im_end|>".into(),
            _ => short_string(u, 6)?,
        });
    }
    if u.arbitrary()? {
        kv.strings("tokenizer.ggml.tokens", &tokens);
    }
    if u.arbitrary()? {
        let k = if u.arbitrary()? { n } else { u.int_in_range(0..=70)? };
        let scores: Vec<[u8; 4]> = (0..k)
            .map(|_| u.arbitrary::<f32>().map(f32::to_le_bytes))
            .collect::<Result<_>>()?;
        kv.numbers("tokenizer.ggml.scores", 6, &scores);
    }
    if u.arbitrary()? {
        let k = if u.arbitrary()? { n } else { u.int_in_range(0..=70)? };
        let types: Vec<[u8; 4]> = (0..k)
            .map(|_| u.int_in_range(-2i32..=7).map(i32::to_le_bytes))
            .collect::<Result<_>>()?;
        kv.numbers("tokenizer.ggml.token_type", 5, &types);
    }
    if u.arbitrary()? {
        let m = u.int_in_range(0..=32)?;
        let mut merges = Vec::with_capacity(m);
        for _ in 0..m {
            let a = if n > 0 { &tokens[u.int_in_range(0..=n - 1)?] } else { "a" };
            let b = if n > 0 { &tokens[u.int_in_range(0..=n - 1)?] } else { "b" };
            merges.push(if u.arbitrary()? { format!("{a} {b}") } else { short_string(u, 8)? });
        }
        kv.strings("tokenizer.ggml.merges", &merges);
    }
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if u.arbitrary()? {
            let id = if u.arbitrary()? { u.int_in_range(0..=70)? } else { u.arbitrary()? };
            kv.u32(key, id);
        }
    }
    if u.arbitrary()? {
        kv.string("tokenizer.ggml.pre", *u.choose(&["default", "qwen2", "llama-bpe", "smollm", "x"])?);
    }
    let template = match u.int_in_range(0..=3)? {
        0 => "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}\
              {% if add_generation_prompt %}<|assistant|>{% endif %}"
            .to_string(),
        _ => {
            let n = u.int_in_range(0..=512)?;
            String::from_utf8_lossy(u.bytes(n)?).into_owned()
        }
    };
    kv.string("tokenizer.chat_template", &template);
    let mut file = Vec::new();
    file.extend(b"GGUF");
    file.extend(3u32.to_le_bytes());
    file.extend(0u64.to_le_bytes());
    file.extend(kv.1.to_le_bytes());
    file.extend(kv.0);
    Ok((file, template))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((bytes, template)) = gguf(&mut u) else {
        return;
    };
    let text = String::from_utf8_lossy(u.take_rest()).into_owned();
    let dir = tempfile::tempdir().expect("a scratch folder");
    let path = dir.path().join("m.gguf");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("written");
    let Ok(g) = GgufFile::read(&path, &mut |_, _| {}) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        for special in [false, true] {
            if let Ok(ids) = t.encode(&text, special) {
                let _ = t.decode(&ids);
                for id in ids.iter().take(8) {
                    let _ = t.token_text(*id);
                }
            }
        }
        let _ = t.decode(&[0, 1, 2, u32::MAX]);
    }
    if let Ok(chat) = ChatTemplate::new(&template, "<s>".into(), "</s>".into()) {
        let conversation = [
            Message::new("system", "be brief"),
            Message::new("user", text.as_str()),
            Message::new("assistant", "ok"),
        ];
        let _ = chat.render(&conversation, true);
    }
});
