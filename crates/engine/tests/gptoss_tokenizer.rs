//! gpt-oss's tokenizer (o200k_base with the Harmony special tokens) as lensd loads it from the
//! `tokenizer.json` that scripts/fetch-gptoss-tokenizer.sh builds, against transformers and
//! tiktoken (testdata/gptoss-tokenizer/golden.json, made by tools/gen_gptoss_tokenizer.py): ids
//! on a corpus of prose, code, whitespace, Unicode, special tokens and a fuzz, with special
//! tokens parsed and not; decoding; the special ids; and Harmony conversations rendered by
//! lensd, against openai-harmony's ids (testdata/harmony/golden.json). Skips when the file is
//! absent, unless `LENSD_REQUIRE_GPTOSS_TOKENIZER` is set.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use lensd_engine::chat::harmony::{
    render, AssistantMessage, Channel, HarmonyMessage, ReasoningEffort, RenderOptions,
    SystemMessage,
};
use lensd_engine::tokenizer::Tokenizer;
use serde_json::Value;

const START: u32 = 200_006;
const MESSAGE: u32 = 200_008;
const CHANNEL: u32 = 200_005;
const END: u32 = 200_007;
const RETURN: u32 = 200_002;
const CALL: u32 = 200_012;
const STARTOFTEXT: u32 = 199_998;
const ENDOFTEXT: u32 = 199_999;
/// o200k_base's 199,998 ranks and the 21 special tokens 199998..=200018; the model has 201,088
/// embedding rows, but the published tokenizer names none past 200018.
const VOCAB_SIZE: usize = 200_019;

/// `LENSD_GPTOSS_TOKENIZER` or models/gpt-oss-tokenizer/tokenizer.json, or `None` when it is
/// absent: its tests skip, saying so, unless `LENSD_REQUIRE_GPTOSS_TOKENIZER` is set (as
/// scripts/test.sh sets it), where its absence fails them.
fn tokenizer_path() -> Option<PathBuf> {
    let p = std::env::var_os("LENSD_GPTOSS_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("models/gpt-oss-tokenizer/tokenizer.json"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("LENSD_REQUIRE_GPTOSS_TOKENIZER").is_none(),
        "LENSD_REQUIRE_GPTOSS_TOKENIZER is set but {} is missing: run \
         scripts/fetch-gptoss-tokenizer.sh first",
        p.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (run scripts/fetch-gptoss-tokenizer.sh; set \
         LENSD_REQUIRE_GPTOSS_TOKENIZER=1 to fail instead)",
        p.display()
    );
    None
}

/// Loaded as a gpt-oss checkpoint's would be: config.json names `<|return|>` as EOS and no
/// BOS, and tokenizer_config.json does not ask for one.
fn tokenizer() -> Option<&'static Tokenizer> {
    static TK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TK.get_or_init(|| {
        let path = tokenizer_path()?;
        Some(Tokenizer::from_json_file(&path, None, vec![RETURN], false).expect("it loads"))
    })
    .as_ref()
}

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| common::json("gptoss-tokenizer/golden.json"))
}

fn cases() -> &'static [Value] {
    golden()["cases"].as_array().unwrap()
}

#[test]
fn ids_equal_transformers_on_the_golden_corpus() {
    let Some(tk) = tokenizer() else { return };
    let cases = cases();
    assert!(cases.len() > 400, "{} cases", cases.len());
    let (mut tokens, mut plain_cases) = (0, 0);
    let mut mismatches = Vec::new();
    for case in cases {
        let name = &case["name"];
        let text = case["text"].as_str().unwrap();
        let want = common::ids_of(&case["ids"]);
        tokens += want.len();
        let got = tk.encode(text, true).unwrap();
        if got != want {
            mismatches.push(format!("{name}: got {got:?}, transformers {want:?}"));
        }
        // No BOS: the prompt's ids are the text's.
        let prompt = tk.encode_prompt(text, true).unwrap();
        if prompt != want {
            mismatches.push(format!("{name}: prompt {prompt:?}, transformers {want:?}"));
        }
        if case.get("plain_ids").is_some() {
            plain_cases += 1;
            let want = common::ids_of(&case["plain_ids"]);
            tokens += want.len();
            let got = tk.encode(text, false).unwrap();
            if got != want {
                mismatches.push(format!(
                    "{name} (specials as text): got {got:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(tokens > 20_000, "the corpus covers {tokens} tokens");
    assert!(
        plain_cases >= 40,
        "{plain_cases} cases with special-token text"
    );
    assert!(
        mismatches.is_empty(),
        "{} differences on {} cases:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "{} cases ({plain_cases} also with special tokens as text), {tokens} tokens: identical \
         to transformers",
        cases.len()
    );
}

#[test]
fn the_corpus_was_checked_against_tiktoken_and_covers_what_it_should() {
    // Guards against a regenerated golden file that no longer tests what this file says.
    let golden = golden();
    assert_eq!(golden["vocab_size"], VOCAB_SIZE);
    let cases = cases();
    let by_tiktoken = cases.iter().filter(|c| c["tiktoken"] == true).count();
    let skipped: Vec<&Value> = cases.iter().filter(|c| c["tiktoken"].is_null()).collect();
    assert_eq!(by_tiktoken + skipped.len(), cases.len());
    assert!(
        skipped.len() <= 3,
        "{} cases not compared with tiktoken",
        skipped.len()
    );
    for case in skipped {
        assert!(case["tiktoken_skipped"].is_string(), "{}", case["name"]);
    }
    let count = |prefix: &str| {
        cases
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with(prefix))
            .count()
    };
    for (prefix, at_least) in [
        ("prose_", 5),
        ("code_", 5),
        ("digits_", 5),
        ("whitespace_", 20),
        ("accents_", 5),
        ("scripts_", 5),
        ("emoji_", 5),
        ("special_", 30),
        ("harmony_render_", 15),
        ("harmony_parse_", 10),
        ("salad_", 30),
        ("fuzz_", 200),
    ] {
        assert!(
            count(prefix) >= at_least,
            "{} {prefix} cases",
            count(prefix)
        );
    }
}

#[test]
fn decoding_gives_back_the_text() {
    let Some(tk) = tokenizer() else { return };
    for case in cases() {
        let ids = common::ids_of(&case["ids"]);
        let text = case["text"].as_str().unwrap();
        assert_eq!(tk.decode(&ids).unwrap(), text, "case {}", case["name"]);
    }
    // Id sequences that need not make whole characters, as transformers decodes them: a lone
    // byte of a multi-byte character becomes U+FFFD, ids past the vocabulary are dropped.
    let decodings = golden()["decode"].as_array().unwrap();
    assert!(decodings.len() >= 40);
    for d in decodings {
        let ids = common::ids_of(&d["ids"]);
        let want = d["text"].as_str().unwrap();
        assert_eq!(tk.decode(&ids).unwrap(), want, "ids {ids:?}");
        if let [id] = ids[..] {
            assert_eq!(tk.token_text(id), want, "token {id}");
        }
    }
}

#[test]
fn the_special_tokens_have_harmony_ids() {
    let Some(tk) = tokenizer() else { return };
    assert_eq!(tk.vocab_size(), VOCAB_SIZE);
    for (text, id) in [
        ("<|start|>", START),
        ("<|message|>", MESSAGE),
        ("<|channel|>", CHANNEL),
        ("<|end|>", END),
        ("<|return|>", RETURN),
        ("<|call|>", CALL),
        ("<|startoftext|>", STARTOFTEXT),
        ("<|endoftext|>", ENDOFTEXT),
    ] {
        assert_eq!(tk.token_to_id(text), Some(id), "{text}");
    }
    let specials = golden()["special_tokens"].as_object().unwrap();
    assert_eq!(specials.len(), 21);
    for (text, id) in specials {
        let id = id.as_u64().unwrap() as u32;
        assert_eq!(tk.token_to_id(text), Some(id), "{text}");
        assert!(tk.is_special(id), "{text} is a control token");
        assert_eq!(tk.encode(text, true).unwrap(), [id]);
        assert!(tk.encode(text, false).unwrap().len() > 1, "{text} as text");
        assert_eq!(tk.token_text(id), *text);
    }
    assert!(!tk.is_special(0) && !tk.is_special(STARTOFTEXT - 1));
    // o200k_harmony's names past 200018 are not tokens of the file: they stay text.
    assert_eq!(tk.token_to_id("<|reserved_200500|>"), None);
    // tokenizer_config.json names <|startoftext|> as BOS but asks for none.
    assert_eq!(
        (tk.bos_id, tk.eos_id, tk.add_bos),
        (Some(STARTOFTEXT), Some(RETURN), false)
    );
    assert!(!tk.encode_prompt("Hi", true).unwrap().contains(&STARTOFTEXT));
    for stop in [RETURN, CALL, ENDOFTEXT] {
        assert!(tk.stop_ids.contains(&stop), "{stop} ends generation");
    }
}

fn system_of(v: &Value) -> Option<SystemMessage> {
    let text = |key: &str| v[key].as_str().map(str::to_string);
    let channels = v.get("valid_channels")?.as_array()?;
    Some(SystemMessage {
        model_identity: text("model_identity"),
        knowledge_cutoff: text("knowledge_cutoff"),
        current_date: text("current_date"),
        reasoning_effort: v["reasoning_effort"]
            .as_str()
            .map(|e| ReasoningEffort::parse(e).unwrap()),
        valid_channels: channels
            .iter()
            .map(|c| Channel::parse(c.as_str().unwrap()).unwrap())
            .collect(),
        channel_required: v["channel_required"].as_bool().unwrap(),
    })
}

fn message_of(m: &Value) -> HarmonyMessage {
    let content = m["content"].as_str().unwrap().to_string();
    match m["role"].as_str().unwrap() {
        "developer" => HarmonyMessage::Developer(content),
        "user" => HarmonyMessage::User(content),
        "assistant" => HarmonyMessage::Assistant(AssistantMessage {
            channel: Channel::parse(m["channel"].as_str().unwrap()).unwrap(),
            content,
        }),
        other => panic!("role {other}"),
    }
}

#[test]
fn harmony_conversations_rendered_by_lensd_get_openai_harmonys_ids() {
    let Some(tk) = tokenizer() else { return };
    let harmony = common::json("harmony/golden.json");
    let cases = harmony["render"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut tokens = 0;
    for case in cases {
        let name = &case["name"];
        let messages: Vec<HarmonyMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(message_of)
            .collect();
        let options = RenderOptions {
            system: system_of(&case["system"]),
            generation_prompt: case["generation_prompt"].as_bool().unwrap(),
            keep_analysis: case["keep_analysis"].as_bool().unwrap(),
        };
        let text = render(&messages, &options).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
        let want = common::ids_of(&case["tokens"]);
        assert_eq!(tk.encode_prompt(&text, true).unwrap(), want, "{name}");
        assert_eq!(tk.decode(&want).unwrap(), text, "{name}");
        tokens += want.len();
    }
    // Completions as the model writes them, encoded from their text.
    for case in harmony["parse"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = common::ids_of(&case["tokens"]);
        assert_eq!(tk.encode(text, true).unwrap(), want, "{}", case["name"]);
        tokens += want.len();
    }
    assert!(tokens > 1_000, "{tokens} tokens");
}
