//! Every example in docs/protocol.md parses as the message it illustrates, and every client
//! message type has an example.

use std::collections::BTreeSet;

use lensd_server::protocol::{ClientMessage, EventFrame, ServerMessage};

fn blocks(tag: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    let fence = format!("```json {tag}\n");
    doc.split(&fence)
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap().to_string())
        .collect()
}

#[test]
fn every_client_example_parses_and_every_client_message_has_one() {
    let examples = blocks("client");
    let mut kinds = BTreeSet::new();
    for e in &examples {
        let m: ClientMessage = serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        let back = serde_json::to_value(&m).unwrap();
        kinds.insert(back["type"].as_str().unwrap().to_string());
    }
    let all = [
        "auth",
        "list_model_groups",
        "switch_model",
        "switch_model_grouped",
        "preload_group",
        "unload_group",
        "get_model_info",
        "analyze",
        "generate",
        "generate_and_analyze",
        "cancel_request",
        "interrupt",
        "status",
    ];
    assert_eq!(kinds, all.iter().map(|s| s.to_string()).collect());
}

#[test]
fn every_server_example_parses_as_a_message_or_a_request_event() {
    let examples = blocks("server");
    assert!(examples.len() >= 20, "{} examples", examples.len());
    let mut kinds = BTreeSet::new();
    for e in &examples {
        let v: serde_json::Value =
            serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        if v.get("request_id").is_some() && serde_json::from_str::<ServerMessage>(e).is_err() {
            let f: EventFrame = serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"));
            let back = serde_json::to_value(&f).unwrap();
            assert_eq!(
                (&back["type"], &back["request_id"]),
                (&v["type"], &v["request_id"]),
                "round trip of {e}"
            );
        } else {
            let m: ServerMessage =
                serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"));
            let _ = m;
        }
        kinds.insert(v["type"].as_str().unwrap().to_string());
    }
    for k in [
        "queued",
        "position",
        "started",
        "loading",
        "tokens",
        "rows",
        "progress",
        "token",
        "completed",
        "error",
        "cancelled",
        "server_shutdown",
        "queue_update",
        "model_groups_list",
    ] {
        assert!(kinds.contains(k), "no example of `{k}`");
    }
}

#[test]
fn every_original_dialect_example_parses_and_every_message_has_one() {
    use lensd_server::original::messages::ClientMessage as Original;
    let mut kinds = BTreeSet::new();
    for e in blocks("original-client") {
        let v: serde_json::Value =
            serde_json::from_str(&e).unwrap_or_else(|err| panic!("{e}: {err}"));
        let _: Original = serde_json::from_str(&e).unwrap_or_else(|err| panic!("{e}: {err}"));
        kinds.insert(v["type"].as_str().unwrap().to_string());
    }
    let all = [
        "analyze",
        "cancel_request",
        "clear_device",
        "generate",
        "generate_and_analyze",
        "get_model_info",
        "interrupt",
        "list_model_groups",
        "list_models",
        "load_group",
        "load_model",
        "ping",
        "preload_group",
        "status",
        "switch_model",
        "switch_model_grouped",
        "unload_group",
    ];
    assert_eq!(kinds, all.iter().map(|s| s.to_string()).collect());
}
