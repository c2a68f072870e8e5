//! Gemma-3-270M's SentencePiece tokenizer, read from the GGUF header alone, against llama.cpp
//! (testdata/gemma3-270m/, made by tools/gen_gemma3_golden.py): ids on a corpus of prose,
//! code, whitespace, Unicode, Gemma chat turns and a fuzz; BOS as the file asks; and
//! conversations rendered with lensd's Gemma template. Skips when the model file is absent,
//! unless `LENSD_REQUIRE_GEMMA` is set.

mod common;

use std::sync::OnceLock;

use lensd_engine::chat::{fallback_template, ChatTemplate, Message};
use lensd_engine::tokenizer::Tokenizer;
use lensd_engine::weights::gguf::GgufFile;

const BOS: u32 = 2;

fn tokenizer() -> Option<&'static Tokenizer> {
    static TK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TK.get_or_init(|| {
        let path = common::gemma3_model()?;
        let g = GgufFile::open(&path).expect("the header parses");
        Some(Tokenizer::from_gguf(&g).expect("the tokenizer builds"))
    })
    .as_ref()
}

fn cases() -> Vec<serde_json::Value> {
    let golden = common::json("gemma3-270m/tokenizer_golden.json");
    golden["cases"].as_array().unwrap().clone()
}

#[test]
fn ids_equal_llama_cpp_on_the_golden_corpus() {
    let Some(tk) = tokenizer() else { return };
    let cases = cases();
    assert!(cases.len() > 250, "the corpus should be large");
    let (mut tokens, mut with_bos) = (0, 0);
    let mut mismatches = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let special = case["special"].as_bool().unwrap();
        let mut want = common::ids_of(&case["ids"]);
        let got = if case["add_bos"].as_bool().unwrap() {
            with_bos += 1;
            // llama.cpp adds BOS before a text that already starts with it; lensd does not.
            if want.starts_with(&[BOS, BOS]) {
                want.remove(0);
            }
            tk.encode_prompt(text, special).unwrap()
        } else {
            tk.encode(text, special).unwrap()
        };
        tokens += want.len();
        if got != want {
            mismatches.push(format!("{}: got {got:?}, llama.cpp {want:?}", case["name"]));
        }
    }
    assert!(tokens > 20_000, "corpus covers {tokens} tokens");
    assert!(with_bos >= 5, "{with_bos} cases with BOS");
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "{} cases ({with_bos} with BOS), {tokens} tokens: identical to llama.cpp",
        cases.len()
    );
}

#[test]
fn decoding_gives_back_the_text() {
    let Some(tk) = tokenizer() else { return };
    for case in cases() {
        if case["add_bos"].as_bool().unwrap() {
            continue;
        }
        let text = case["text"].as_str().unwrap();
        let ids = common::ids_of(&case["ids"]);
        // A `▁` written in the text is how pieces spell a space, so it comes back as one.
        let want = text.replace('\u{2581}', " ");
        assert_eq!(tk.decode(&ids).unwrap(), want, "case {}", case["name"]);
    }
}

#[test]
fn the_file_says_how_prompts_begin_and_end() {
    let Some(tk) = tokenizer() else { return };
    assert_eq!(tk.vocab_size(), 262_144);
    assert_eq!(
        (tk.bos_id, tk.eos_id, tk.add_bos),
        (Some(BOS), Some(1), true)
    );
    let eot = tk.token_to_id("<end_of_turn>").unwrap();
    assert_eq!(eot, 106);
    assert!(tk.stop_ids.contains(&1) && tk.stop_ids.contains(&eot));
    // `</s>` is an HTML tag in Gemma's vocabulary (user-defined), but llama.cpp makes every
    // token with that text a control token that ends generation; so does lensd.
    let strike_end = tk.token_to_id("</s>").unwrap();
    assert!(tk.stop_ids.contains(&strike_end) && tk.is_special(strike_end));
    assert_eq!(
        tk.encode("<s>x</s>", true).unwrap(),
        [203, 236781, strike_end]
    );
    assert!(!tk.encode("<s>x</s>", false).unwrap().contains(&strike_end));
    assert_eq!(tk.encode_prompt("Hi", false).unwrap(), [BOS, 10979]);
    assert_eq!(tk.encode_prompt("<bos>Hi", true).unwrap(), [BOS, 10979]);
    assert_eq!(tk.token_text(BOS), "<bos>");
    assert_eq!(tk.token_text(tk.token_to_id("▁Paris").unwrap()), " Paris");
}

#[test]
fn conversations_render_and_get_bos_once() {
    let Some(tk) = tokenizer() else { return };
    let golden = common::json("gemma3-270m/chat_golden.json");
    let template = ChatTemplate::new(
        fallback_template("gemma3").unwrap(),
        tk.token_text(tk.bos_id.unwrap()),
        tk.token_text(tk.eos_id.unwrap()),
    )
    .unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let opened = case["reply_opened"].as_bool().unwrap();
        let rendered = template.render(&messages, opened).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        let ids = tk.encode_prompt(&rendered, true).unwrap();
        assert_eq!(ids, common::ids_of(&case["ids"]), "{rendered:?}");
    }
    // The prompts of the generation golden file, rendered and encoded the same way.
    let golden = common::json("gemma3-270m/generate_golden.json");
    for case in golden["cases"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let rendered = template.render(&messages, true).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        let ids = tk.encode_prompt(&rendered, true).unwrap();
        assert_eq!(ids, common::ids_of(&case["prompt_ids"]), "{rendered:?}");
    }
    for case in golden["plain"].as_array().unwrap() {
        let ids = tk
            .encode_prompt(case["text"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(ids, common::ids_of(&case["prompt_ids"]));
    }
}
