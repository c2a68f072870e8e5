//! Prometheus metrics: one recorder per process, and the names the server records.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const QUEUE_DEPTH: &str = "lensd_queue_depth";
pub const WAIT_SECONDS: &str = "lensd_request_wait_seconds";
pub const COMPUTE_SECONDS: &str = "lensd_request_compute_seconds";
pub const REQUESTS: &str = "lensd_requests_total";
pub const BASE_LOADS: &str = "lensd_base_loads_total";
pub const SWITCH_SECONDS: &str = "lensd_switch_seconds";
pub const TIER_BYTES: &str = "lensd_tier_bytes";
pub const TIER_BUDGET: &str = "lensd_tier_budget_bytes";
/// Per device, labelled `device` by its name (`cpu`, `cuda:0`): bytes counted on it, its
/// budget, what its driver says is used and has in all (where known), and 1 once it failed.
pub const DEVICE_BYTES: &str = "lensd_device_bytes";
pub const DEVICE_BUDGET: &str = "lensd_device_budget_bytes";
pub const DEVICE_DRIVER_USED: &str = "lensd_device_driver_used_bytes";
pub const DEVICE_DRIVER_TOTAL: &str = "lensd_device_driver_total_bytes";
pub const DEVICE_FAILED: &str = "lensd_device_failed";
pub const CONNECTIONS: &str = "lensd_websocket_connections";
/// HTTP connections open (WebSockets included), and those ended by the connection layer.
pub const HTTP_CONNECTIONS: &str = "lensd_http_connections";
pub const HTTP_EVICTED: &str = "lensd_http_connections_evicted_total";
pub const HTTP_REFUSED: &str = "lensd_http_connections_refused_total";
pub const HTTP_TIMED_OUT: &str = "lensd_http_connections_timed_out_total";
/// WebSocket sessions closed because their client read nothing.
pub const WS_STALLED: &str = "lensd_websocket_stalled_total";
pub const AUTH_THROTTLED: &str = "lensd_auth_throttled_total";
pub const RESULTS_UNSAVED: &str = "lensd_results_unsaved_total";
pub const RESIDENT_BYTES: &str = "lensd_process_resident_bytes";
pub const HEAP_IN_USE: &str = "lensd_heap_in_use_bytes";
pub const HEAP_FREE: &str = "lensd_heap_free_bytes";
pub const FINISHED_KEPT_BYTES: &str = "lensd_finished_kept_bytes";

/// The process's recorder, installed on first use; `None` if another recorder was installed.
pub fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(%e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}
