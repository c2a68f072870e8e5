//! gpt-oss's Harmony chat format against the `openai-harmony` package: the rendering of every
//! conversation in testdata/harmony/golden.json (made by tools/gen_harmony_golden.py), the
//! messages recovered from its completions, and errors on malformed input.

use lensd_core::work::ChatMessage;
use lensd_engine::chat::harmony::{
    self, find_special, parse_completion, render, render_chat, AssistantMessage, Channel,
    Completion, Ending, HarmonyMessage, ReasoningEffort, RenderOptions, SystemMessage,
};
use lensd_engine::EngineError;
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/harmony/golden.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn str_or_none(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn channel(v: &Value) -> Channel {
    let name = v.as_str().unwrap();
    Channel::parse(name).unwrap_or_else(|| panic!("unknown channel {name}"))
}

fn system_of(v: &Value) -> Option<SystemMessage> {
    if v.is_null() {
        return None;
    }
    Some(SystemMessage {
        model_identity: str_or_none(&v["model_identity"]),
        knowledge_cutoff: str_or_none(&v["knowledge_cutoff"]),
        current_date: str_or_none(&v["current_date"]),
        reasoning_effort: v["reasoning_effort"]
            .as_str()
            .map(|e| ReasoningEffort::parse(e).unwrap()),
        valid_channels: v["valid_channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(channel)
            .collect(),
        channel_required: v["channel_required"].as_bool().unwrap(),
    })
}

fn messages_of(v: &Value) -> Vec<HarmonyMessage> {
    let messages = v.as_array().unwrap().iter().map(|m| {
        let content = m["content"].as_str().unwrap().to_string();
        match m["role"].as_str().unwrap() {
            "developer" => HarmonyMessage::Developer(content),
            "user" => HarmonyMessage::User(content),
            "assistant" => HarmonyMessage::Assistant(AssistantMessage {
                channel: channel(&m["channel"]),
                content,
            }),
            other => panic!("role {other}"),
        }
    });
    messages.collect()
}

fn options_of(case: &Value) -> RenderOptions {
    RenderOptions {
        system: system_of(&case["system"]),
        generation_prompt: case["generation_prompt"].as_bool().unwrap(),
        keep_analysis: case["keep_analysis"].as_bool().unwrap(),
    }
}

fn render_cases() -> Vec<Value> {
    golden()["render"].as_array().unwrap().clone()
}

fn parse_cases() -> Vec<Value> {
    golden()["parse"].as_array().unwrap().clone()
}

fn case<'a>(cases: &'a [Value], name: &str) -> &'a Value {
    cases
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no golden case {name}"))
}

#[test]
fn renders_every_golden_conversation_as_openai_harmony_does() {
    let cases = render_cases();
    assert!(cases.len() >= 15, "{} render cases", cases.len());
    let mut differ = Vec::new();
    for case in &cases {
        let got = render(&messages_of(&case["messages"]), &options_of(case)).unwrap();
        let want = case["text"].as_str().unwrap();
        if got != want {
            differ.push(format!(
                "{}:\n  got  {got:?}\n  want {want:?}",
                case["name"]
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// The special tokens written in the rendered text, in order, against the ids openai-harmony
/// rendered: lensd's tokenizer gives those ids to that text.
#[test]
fn special_tokens_in_the_text_are_where_openai_harmony_put_its_ids() {
    let names = [
        (200002_u64, "<|return|>"),
        (200005, "<|channel|>"),
        (200006, "<|start|>"),
        (200007, "<|end|>"),
        (200008, "<|message|>"),
    ];
    let golden = golden();
    let first_special = golden["special_tokens_from"].as_u64().unwrap();
    for case in golden["render"].as_array().unwrap() {
        let mut text = render(&messages_of(&case["messages"]), &options_of(case)).unwrap();
        let mut in_text = Vec::new();
        while let Some(token) = find_special(&text) {
            in_text.push(token.to_string());
            let at = text.find(token).unwrap();
            text.replace_range(..at + token.len(), "");
        }
        let in_ids: Vec<String> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .filter(|&t| t >= first_special)
            .map(|t| {
                let (_, name) = names.iter().find(|(id, _)| *id == t).unwrap();
                name.to_string()
            })
            .collect();
        assert!(in_ids.len() >= 4, "{}", case["name"]);
        assert_eq!(in_text, in_ids, "{}", case["name"]);
    }
}

#[test]
fn golden_cases_cover_the_rules_they_are_named_for() {
    // Guards against a regenerated golden file that no longer tests what the names say.
    let cases = render_cases();
    let text = |name: &str| case(&cases, name)["text"].as_str().unwrap().to_string();
    let dropped = text("several_user_turns_previous_analysis_dropped");
    let kept = text("previous_analysis_kept_on_request");
    assert!(!dropped.contains("<|channel|>analysis"), "{dropped}");
    assert!(kept.contains("<|channel|>analysis"), "{kept}");
    let two_turns = text("two_turns_only_first_analysis_dropped");
    assert!(!two_turns.contains("thinking about q1") && two_turns.contains("thinking about q2"));
    assert!(text("default_system").ends_with(harmony::GENERATION_PROMPT));
    assert!(text("conversation_ending_with_final_without_generation_prompt").ends_with("<|end|>"));
    assert!(text("high_effort_date_and_developer").contains("Reasoning: high"));
    assert!(!text("no_reasoning_effort").contains("Reasoning:"));
}

#[test]
fn lensd_chat_messages_render_as_developer_user_and_reply() {
    let cases = render_cases();
    // A lensd `system` message is the developer's instructions.
    let golden = case(&cases, "no_reasoning_effort");
    let chat = [
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "Name a colour."),
    ];
    assert_eq!(
        render_chat(&chat, &options_of(golden)).unwrap(),
        golden["text"].as_str().unwrap()
    );
    let golden = case(&cases, "developer_without_system");
    let chat = [
        ChatMessage::new("developer", "Reply in French."),
        ChatMessage::new("user", "Good morning"),
    ];
    assert_eq!(
        render_chat(&chat, &options_of(golden)).unwrap(),
        golden["text"].as_str().unwrap()
    );
    // An assistant message is a reply, on `final`.
    let chat = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello."),
    ];
    let options = RenderOptions {
        system: None,
        generation_prompt: false,
        keep_analysis: false,
    };
    assert_eq!(
        render_chat(&chat, &options).unwrap(),
        "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello.<|end|>"
    );
}

fn input_error(result: lensd_engine::Result<String>) -> String {
    match result {
        Err(EngineError::Input(msg)) => msg,
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn bad_messages_and_options_are_refused_by_name() {
    let options = RenderOptions::default();
    let chat = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("tool", "{}"),
    ];
    let msg = input_error(render_chat(&chat, &options));
    assert!(
        msg.contains("messages[1]") && msg.contains("\"tool\""),
        "{msg}"
    );

    for token in [
        "<|end|>",
        "<|start|>",
        "<|return|>",
        "<|reserved_200013|>",
        "<|endoftext|>",
    ] {
        let messages = [
            HarmonyMessage::User("fine".into()),
            HarmonyMessage::analysis(format!("before {token} after")),
        ];
        let msg = input_error(render(&messages, &options));
        assert!(msg.contains("messages[1]") && msg.contains(token), "{msg}");
    }
    // Lookalikes that are not gpt-oss tokens stay text.
    for text in [
        "<|reserved_201089|>",
        "<|reserved_0200000|>",
        "<|reserved_2000000000000|>",
        "<|<|>|>",
        "<|End|>",
        "<|end",
        "end|>",
    ] {
        let messages = [HarmonyMessage::User(text.into())];
        let rendered = render(&messages, &options).unwrap();
        assert!(rendered.contains(text), "{rendered}");
    }

    let system = SystemMessage {
        current_date: Some("2025-06-28<|end|>".into()),
        ..SystemMessage::default()
    };
    let options = RenderOptions {
        system: Some(system),
        ..RenderOptions::default()
    };
    let msg = input_error(render(&[], &options));
    assert!(msg.contains("system") && msg.contains("<|end|>"), "{msg}");

    match ReasoningEffort::parse("extreme") {
        Err(EngineError::Input(msg)) => assert!(msg.contains("\"extreme\""), "{msg}"),
        other => panic!("{other:?}"),
    }
}

fn ending_of(v: &Value) -> Ending {
    match v.as_str().unwrap() {
        "return" => Ending::Return,
        "end" => Ending::End,
        "truncated" => Ending::Truncated,
        other => panic!("ending {other}"),
    }
}

#[test]
fn parses_every_golden_completion_as_openai_harmony_does() {
    let cases = parse_cases();
    assert!(cases.len() >= 10, "{} parse cases", cases.len());
    let mut errors = 0;
    for case in &cases {
        let name = &case["name"];
        let got = parse_completion(case["text"].as_str().unwrap());
        if case.get("error").is_some() {
            // openai-harmony refuses it: so does lensd.
            errors += 1;
            match got {
                Err(EngineError::Template(msg)) => assert!(msg.contains("message"), "{msg}"),
                other => panic!(
                    "{name}: openai-harmony says {}, got {other:?}",
                    case["error"]
                ),
            }
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<AssistantMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| AssistantMessage {
                channel: channel(&m["channel"]),
                content: m["content"].as_str().unwrap().to_string(),
            })
            .collect();
        assert_eq!(got.messages, want, "{name}");
        assert_eq!(got.ending, ending_of(&case["ending"]), "{name}");
    }
    assert!(
        errors >= 2,
        "the golden file should hold refused completions"
    );
}

fn parsed(name: &str) -> Completion {
    let cases = parse_cases();
    parse_completion(case(&cases, name)["text"].as_str().unwrap()).unwrap()
}

#[test]
fn thinking_and_reply_are_separated() {
    let c = parsed("analysis_then_final");
    assert_eq!(
        c.thinking().as_deref(),
        Some("User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.")
    );
    assert_eq!(c.reply().as_deref(), Some("2 + 2 = 4."));
    assert_eq!(c.ending, Ending::Return);

    let c = parsed("final_only");
    assert_eq!(c.thinking(), None);
    assert_eq!(c.reply().as_deref(), Some("Hello! How can I help?"));

    let c = parsed("several_analyses_and_a_commentary");
    assert_eq!(
        c.thinking().as_deref(),
        Some("First thought.\nSecond thought.")
    );
    assert_eq!(c.reply().as_deref(), Some("Result."));

    let c = parsed("truncated_in_final");
    assert_eq!(c.ending, Ending::Truncated);
    assert_eq!(c.reply().as_deref(), Some("The answer is forty-two,"));

    let c = parsed("truncated_in_analysis");
    assert_eq!((c.ending, c.reply()), (Ending::Truncated, None));
    assert!(c.thinking().unwrap().starts_with("Let me think"));

    let c = parsed("analysis_only_closed_with_end");
    assert_eq!((c.ending, c.reply()), (Ending::End, None));
}

/// A completion appended to its prompt reads as the conversation with the parsed messages
/// added (`<|return|>` stored as `<|end|>`, as Harmony keeps history).
#[test]
fn a_parsed_completion_renders_back_into_the_history() {
    let history = vec![
        HarmonyMessage::Developer("Answer briefly.".into()),
        HarmonyMessage::User("What is 2 + 2?".into()),
    ];
    let prompt = render(&history, &RenderOptions::default()).unwrap();
    for name in [
        "analysis_then_final",
        "several_analyses_and_a_commentary",
        "unicode",
    ] {
        let cases = parse_cases();
        let completion = case(&cases, name)["text"].as_str().unwrap();
        let mut all = history.clone();
        let parsed = parse_completion(completion).unwrap();
        all.extend(parsed.messages.into_iter().map(HarmonyMessage::Assistant));
        let options = RenderOptions {
            generation_prompt: false,
            keep_analysis: true,
            ..RenderOptions::default()
        };
        let stored = completion.strip_suffix("<|return|>").unwrap().to_string() + "<|end|>";
        assert_eq!(
            render(&all, &options).unwrap(),
            format!("{prompt}{stored}"),
            "{name}"
        );
    }
}

#[test]
fn malformed_completions_are_errors_that_say_what_was_found() {
    let cases = [
        ("", "message 1 (counting from 1) stops inside its header"),
        (
            "<|channel|>analysis<|message|>x<|end|><|start|>",
            "message 2 (counting from 1) stops inside its header",
        ),
        (
            "<|message|>x<|return|>",
            "message 1 (counting from 1) has no <|channel|>",
        ),
        (
            "<|channel|>thinking<|message|>x<|end|>",
            "channel \"thinking\"",
        ),
        ("<|channel|><|message|>x", "channel \"\""),
        (
            "<|channel|>analysis<|message|>x<|end|>junk",
            "the text \"junk\"",
        ),
        (
            "<|channel|>analysis<|message|>x<|end|><|message|>",
            "<|message|>; after <|end|>",
        ),
        (
            "<|channel|>final<|message|>x<|return|><|start|>assistant",
            "<|start|> after <|return|>",
        ),
        (
            "<|channel|>final<|message|>x<|return|> ",
            "after <|return|>",
        ),
        (
            "<|channel|>analysis<|message|>x<|end|><|start|>user<|message|>hi<|end|>",
            "from \"user\"",
        ),
        (
            "<|channel|>analysis<|message|>x<|end|><|start|><|channel|>final<|message|>y",
            "no role",
        ),
        (
            "<|channel|>final<|message|>a<|start|>b<|return|>",
            "holds <|start|>",
        ),
        (
            "<|channel|>final<|message|>a<|call|>",
            "<|call|>, a tool call",
        ),
        (
            "<|channel|>analysis<|channel|>final<|message|>",
            "has <|channel|> in its header",
        ),
        (
            " to=functions.f<|channel|>commentary<|message|>{}<|call|>",
            "tool recipients",
        ),
        (
            "<|channel|>commentary to=functions.f<|message|>{}<|call|>",
            "tool recipients",
        ),
        (
            "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}",
            "<|constrain|>",
        ),
        (
            "<|channel|>final<|message|>x<|endoftext|>",
            "holds <|endoftext|>",
        ),
    ];
    for (text, want) in cases {
        match parse_completion(text) {
            Err(EngineError::Template(msg)) => {
                assert!(msg.contains(want), "{text:?}: {msg:?} lacks {want:?}")
            }
            other => panic!("{text:?}: expected an error, got {other:?}"),
        }
    }
}

/// Arbitrary mixtures of markers, fragments of markers and multi-byte text never panic, and
/// whatever parses keeps every byte of content.
#[test]
fn parsing_never_panics() {
    let parts = [
        "<|start|>",
        "<|end|>",
        "<|message|>",
        "<|channel|>",
        "<|return|>",
        "<|call|>",
        "assistant",
        "analysis",
        "final",
        "<|",
        "|>",
        "<|end",
        "é",
        "🦀",
        " ",
        "x",
        "<|reserved_200100|>",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut ok = 0;
    for _ in 0..20_000 {
        let mut text = String::new();
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        for _ in 0..(state >> 60) {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            text.push_str(parts[(state >> 33) as usize % parts.len()]);
        }
        let _ = find_special(&text);
        if let Ok(c) = parse_completion(&text) {
            ok += 1;
            let content: usize = c.messages.iter().map(|m| m.content.len()).sum();
            assert!(content <= text.len(), "{text:?}");
        }
    }
    assert!(ok > 0, "some random completions should parse");
}

/// Special tokens are found in time linear in the text, even in one made of "<|".
#[test]
fn a_text_full_of_openings_is_scanned_quickly() {
    let mut text = "<|".repeat(1 << 20);
    text.push_str("é<|end|>");
    let started = std::time::Instant::now();
    assert_eq!(find_special(&text), Some("<|end|>"));
    let err = parse_completion(&text).unwrap_err().to_string();
    assert!(err.contains("has <|end|> in its header"), "{err}");
    // Quadratic scanning would take hours here; linear takes milliseconds.
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}
