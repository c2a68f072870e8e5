//! A server on a machine of two devices: the memory report and `/metrics` give each device's
//! books, its budget, what its driver reports and whether it failed.

mod common;

use axum::http::StatusCode;
use common::{call, server_with, ADMIN};
use lensd_core::residency::DeviceId;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;

#[tokio::test]
async fn each_device_is_reported_and_counted_in_metrics() {
    let s = server_with(
        Limits::default(),
        QueueConfig::default(),
        FakeEngine::with_devices(2, 4 << 30),
    );
    let (st, mem) = call(&s.state, "GET", "/api/v2/memory", Some(ADMIN), None).await;
    assert_eq!(st, StatusCode::OK);
    let devices = mem["devices"].as_array().unwrap();
    let names: Vec<&str> = devices
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cuda:0", "cuda:1"]);
    for d in devices {
        assert_eq!(d["budget"], 3u64 << 30, "{d}");
        assert_eq!(d["driver_total"], 4u64 << 30, "{d}");
        assert_eq!(d["driver_used"], 0, "{d}");
        assert_eq!(d["failed"], false, "{d}");
    }
    assert_eq!(
        mem["tiers"][0]["budget"],
        6u64 << 30,
        "the device tier is both devices"
    );

    s.state
        .residency
        .device_failed(DeviceId(1), "cuda:1 fell off the bus".into())
        .await;
    let (_, mem) = call(&s.state, "GET", "/api/v2/memory", Some(ADMIN), None).await;
    assert_eq!(mem["devices"][1]["failed"], true);
    assert_eq!(mem["devices"][1]["failure"], "cuda:1 fell off the bus");
    assert_eq!(
        mem["tiers"][0]["budget"],
        3u64 << 30,
        "the working device alone"
    );

    let (st, text) = call(&s.state, "GET", "/metrics", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let text = text.as_str().unwrap();
    for line in [
        "lensd_device_failed{device=\"cuda:1\"} 1",
        "lensd_device_failed{device=\"cuda:0\"} 0",
        "lensd_device_budget_bytes{device=\"cuda:0\"} 3221225472",
        "lensd_device_driver_total_bytes{device=\"cuda:0\"} 4294967296",
        "lensd_device_driver_used_bytes{device=\"cuda:0\"} 0",
        "lensd_device_bytes{device=\"cuda:0\"} 0",
        "lensd_tier_budget_bytes{tier=\"device\"} 3221225472",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}
