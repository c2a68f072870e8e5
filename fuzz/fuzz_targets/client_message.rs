//! WebSocket messages (and REST bodies, which share their types): any text is either a
//! message whose requests turn into work or an error that names the problem, never a panic.
#![no_main]

use lensd_server::protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
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
