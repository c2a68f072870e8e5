//! `lensd soak` against a real `lensd serve` on the demo model: a short run with a few clients
//! and the hostile clients among them performs every kind of action, sees every request end
//! exactly once, every hostile client answered as expected, and leaves the server idle with no
//! lease held.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "admin-key-for-the-soak-test";

/// Two groups naming the demo base: the logit lens and a fitted tuned lens, and the logit
/// lens again; each with a model anonymous callers may not see (admins only, keys only).
fn config(dir: &Path) -> std::path::PathBuf {
    let lens = common::fit(dir, "lens", "1e-3");
    let model = common::demo_model();
    let doc = json!({"model_groups": [
        {"group_id": "demo", "group_name": "SmolLM2", "base_model_path": model,
         "models": [{"id": "logit", "name": "Logit", "lens": "logit"},
                    {"id": "tuned", "name": "Tuned", "lens": "tuned", "lens_checkpoint_path": lens},
                    {"id": "hidden-logit", "name": "Hidden", "lens": "logit", "visible": false}]},
        {"group_id": "demo-2", "group_name": "SmolLM2 again", "base_model_path": model,
         "models": [{"id": "logit-2", "name": "Logit", "lens": "logit"},
                    {"id": "backend-logit", "name": "Backend", "lens": "logit", "backend_only": true}]}],
        "settings": {"default_group": "demo", "device_budget": "2GiB", "host_budget": "1GiB"}});
    let cfg = dir.join("model_groups.json");
    std::fs::write(&cfg, doc.to_string()).unwrap();
    cfg
}

#[test]
fn a_short_soak_with_hostile_clients_performs_every_action_and_every_request_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let keys = dir.path().join("keys.json");
    let doc = json!({"keys": [{"key": ADMIN_KEY, "role": "admin", "name": "soak"}]});
    std::fs::write(&keys, doc.to_string()).unwrap();
    // The users are all anonymous at 127.0.0.1, one client for the compute quota.
    let roles = dir.path().join("roles.json");
    let doc = json!({"anonymous": {"compute_seconds_per_minute": null}});
    std::fs::write(&roles, doc.to_string()).unwrap();
    // Short header and output timeouts, so that partial headers and slow readers are closed
    // many times within the load.
    let server = Server::start_with(
        &cfg,
        &dir.path().join("data"),
        &[
            "--keys",
            keys.to_str().unwrap(),
            "--role-limits",
            roles.to_str().unwrap(),
            "--header-timeout",
            "2",
            "--ws-output-timeout",
            "2",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(["soak", "--url", &format!("ws://{}/ws", server.addr)])
        .args(["--pid", &server.child.id().to_string()])
        .args([
            "--minutes",
            "0.5",
            "--clients",
            "3",
            "--sample-seconds",
            "1",
        ])
        .args([
            "--stall-seconds",
            "120",
            "--idle-seconds",
            "60",
            "--format",
            "json",
        ])
        .args([
            "--hostile",
            "--header-timeout",
            "2",
            "--ws-output-timeout",
            "2",
        ])
        .env("LENSD_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "{}\n{r:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["passed"], true, "{r:#}");
    let count = |action: &str, outcome: &str| r["actions"][action][outcome].as_u64().unwrap_or(0);
    for (action, outcome) in [
        ("analyze", "completed"),
        ("generate", "completed"),
        ("cancel", "cancelled"),
        ("disconnect", "accepted"),
        ("status", "completed"),
        ("preload", "completed"),
        ("unload", "completed"),
        ("reload", "completed"),
    ] {
        assert!(count(action, outcome) >= 1, "no {action} {outcome}: {r:#}");
    }
    // Every dropped request was found ended through the API.
    let disconnect_ended: u64 = ["completed", "cancelled", "failed"]
        .iter()
        .map(|o| count("disconnect", o))
        .sum();
    assert_eq!(disconnect_ended, count("disconnect", "accepted"), "{r:#}");
    for (kind, n) in r["violations"].as_object().unwrap() {
        assert_eq!(n, 0, "{kind}: {r:#}");
    }
    assert_eq!(r["violations"].as_object().unwrap().len(), 6);
    assert_eq!(r["errors"].get("internal"), None, "{r:#}");
    assert!(r["requests_served"].as_u64().unwrap() >= 3, "{r:#}");
    assert_eq!(r["idle_at_end"], true, "{r:#}");
    assert_eq!(r["server_end"]["leases"], 0);
    assert!(r["max_leases"].as_u64().unwrap() >= 1, "{r:#}");
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 10, "{r:#}");
    assert!(samples.iter().all(|s| s["rss_bytes"].as_u64().unwrap() > 0));
    assert!(r["rss_last_quarter_p25"].as_u64().is_some(), "{r:#}");
    // The server counts its heap (glibc), and the weights it holds are part of it, but for
    // those mapped from their files.
    for s in samples {
        let (heap, accounted) = (&s["heap_in_use_bytes"], &s["accounted_bytes"]);
        let mapped = s["mapped_weight_bytes"].as_u64().unwrap();
        let in_heap = accounted.as_u64().map(|a| a.saturating_sub(mapped));
        assert!(
            heap.as_u64() >= in_heap && accounted.as_u64() > Some(0),
            "{s}"
        );
    }
    assert!(
        r["heap_unaccounted_last_quarter_p25"].as_u64().is_some(),
        "{r:#}"
    );
    assert!(samples
        .iter()
        .all(|s| s["http_connections"].as_u64() >= Some(1)));
    hostile_as_expected(&r["hostile"], &r);
    server.stop();
}

/// Every kind of hostile client ran and met the answers it should, and none got more than
/// its share.
fn hostile_as_expected(h: &Value, r: &Value) {
    let count = |kind: &str, outcome: &str| h["kinds"][kind][outcome].as_u64().unwrap_or(0);
    for (kind, outcome) in [
        ("aborted_upgrade", "attempted"),
        ("aborted_upgrade", "reset_after_101"),
        ("slow_reader", "attempted"),
        ("slow_reader", "closed"),
        ("partial_header", "attempted"),
        ("partial_header", "closed"),
        ("oversize", "attempted"),
        ("oversize", "twice_answered"),
        ("oversize", "session_went_on"),
        ("oversize", "over_4x_answered"),
        ("oversize", "over_4x_closed"),
        ("hidden_probe", "attempted"),
        ("hidden_probe", "hidden_id"),
        ("hidden_probe", "made_up_id"),
        ("auth_storm", "attempted"),
        ("auth_storm", "401"),
        ("auth_storm", "429"),
        ("auth_storm", "anonymous_200"),
    ] {
        assert!(count(kind, outcome) >= 1, "no {kind} {outcome}: {r:#}");
    }
    for (kind, n) in h["violations"].as_object().unwrap() {
        assert_eq!(n, 0, "{kind}: {r:#}");
    }
    assert_eq!(
        count("hidden_probe", "unknown_model"),
        count("hidden_probe", "attempted")
    );
    let auth = count("auth_storm", "401") + count("auth_storm", "429");
    assert_eq!(auth, count("auth_storm", "attempted"), "{r:#}");
    assert!(h["most_401_in_a_minute"].as_u64().unwrap() <= 10, "{r:#}");
    let mut hidden: Vec<&str> = h["hidden_models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    hidden.sort_unstable();
    assert_eq!(hidden, ["backend-logit", "hidden-logit"], "{r:#}");
    // Closed after the server's 2 s timeouts, within their bounds.
    for kind in ["slow_reader", "partial_header"] {
        let [shortest, longest] = [0, 1].map(|i| h["closed_after_seconds"][kind][i].as_f64());
        assert!(shortest >= Some(1.5), "{kind}: {r:#}");
        assert!(
            longest <= h["close_bound_seconds"][kind].as_f64(),
            "{kind}: {r:#}"
        );
    }
}
