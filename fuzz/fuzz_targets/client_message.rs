//! WebSocket messages (and REST bodies, which share their types), in lensd's protocol and in
//! the original site's dialect: any text is either a message whose requests turn into work or
//! an error that names the problem, never a panic.
#![no_main]

use lensd_server::original::messages::{self as original, ClientMessage as Original};
use lensd_server::protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;

/// The original's messages as far as they go without a server: options planned, texts read.
fn plan_original(msg: Original) {
    let analysis = |a: &original::AnalyzeMessage| {
        let o = a.options.clone().unwrap_or_default();
        if let Ok(plan) = o.plan(Some(512)) {
            let _ = original::prompt(&a.text, plan.chat);
        }
    };
    match msg {
        Original::Analyze(a) => analysis(&a),
        Original::Generate(g) => {
            let _ = g.plan("m".into(), 0);
        }
        Original::GenerateAndAnalyze { generation, .. } => {
            let _ = generation.plan("m".into(), 0);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = serde_json::from_str::<Original>(text) {
        plan_original(msg);
    }
    let Ok(msg) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    match msg {
        ClientMessage::Analyze(a) => {
            if let Ok(given) = a.given() {
                let _ = a.work(given);
            }
        }
        ClientMessage::Generate(g) => {
            let _ = g.work();
        }
        ClientMessage::GenerateAndAnalyze { generate, .. } => {
            let _ = generate.work();
        }
        _ => {}
    }
});
