//! `lensd soak`: a long, bounded run of many clients against a running `lensd serve`, watching
//! the server for anything that grows without bound and for requests that do not end once.
//!
//! Warm-up: every model used is analysed once, one generation runs and (with an admin key) the
//! configuration is reloaded; then the server is waited for until idle and sampled. Load:
//! `clients` virtual users run until the time is up, each performing every action once, in an
//! order of its own, then drawing actions at random (seeded): an analysis waited for; a short
//! generation waited for; an analysis cancelled after `queued` or after its first `progress`;
//! a submission after which the connection is dropped (a close frame or a bare TCP close) and
//! opened again; `status`; and, with an admin key, rarely `preload_group` or `unload_group` (to
//! the host) on a WebSocket of their own, or `POST /api/v2/admin/reload`. Every sample period
//! the server's resident memory, descriptors and threads (/proc), its leases and loaded bases
//! and lenses (`/api/v2/memory`), its queue depth and WebSocket connections (`/metrics`) are
//! recorded, and its HTTP connections. With `hostile`, hostile clients run beside the users
//! for the whole load ([`hostile`]). End: the users and hostile clients stop, the server is
//! waited for until idle (bounded), sampled, and asked (admin) how each request whose
//! connection was dropped ended.
//!
//! The run fails, after the report is printed, when any rule of [`RULES`] is broken. Refusals
//! (`queue_full`, `rate_limited`, `client_limit`) are counted as errors by kind, not failures.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::bench_ws::sample as process_sample;
use crate::render::bytes;

mod hostile;
mod table;
mod user;

pub use table::table;

use hostile::HostileReport;
use table::listed;
#[cfg(test)]
use table::windows;

/// One figure of a sample, where the server gave it.
type Figure = fn(&Sample) -> Option<u64>;

use user::{add, ty, Conn, Counts, Ctx, Log, OUTCOMES, SUBMITS, TEXTS, VIOLATIONS};

/// The share of the load treated as warm-up by the slopes.
const WARMUP_FRACTION: f64 = 0.2;
/// Resident growth from the second quarter of the load to the last that fails the run: both
/// the fraction and the bytes must be exceeded. Each quarter is taken at its lower quartile: a
/// running analysis's buffers lift single samples by hundreds of MiB, a leak lifts them all.
const RSS_GROWTH_FRACTION: f64 = 0.10;
const RSS_GROWTH_BYTES: u64 = 32 << 20;
/// Growth of the heap the program holds beyond the weights and the finished requests it keeps
/// that fails the run, between the same quarters and quartiles. The allocator's count moves
/// with what is held, not with fragmentation, so the bound is tight.
const HEAP_GROWTH_BYTES: u64 = 16 << 20;
/// Descriptors and threads at the final idle sample beyond those after warm-up that fail it.
const FD_SLACK: usize = 8;
const THREAD_SLACK: usize = 4;
/// HTTP connections open at the final idle sample beyond those after warm-up that fail it:
/// the sampler's own, and one whose close the server has not yet seen.
const HTTP_SLACK: u64 = 2;

/// What makes a run fail.
pub const RULES: [&str; 9] = [
    "every request on a connection that stayed open has exactly one terminal event (completed, error or cancelled) within the stall limit, no event after it, and `status` no longer lists it",
    "every request whose connection was dropped has ended by the end (checked with the admin key)",
    "no connection fails or closes unasked, no error has error_type `internal`, the server process lives",
    "resident memory: the lower quartile of the samples of the last quarter of the load exceeds that of the second quarter (after a warm-up of 20 %) by at most 10 % or at most 32 MiB",
    "heap in use beyond the accounted bytes and the finished requests kept (where the server counts its heap): the lower quartile of the last quarter exceeds that of the second by at most 16 MiB",
    "within the idle wait after the load the server becomes idle: nothing queued, no WebSocket connection open, no lease held",
    "then descriptors are at most 8, threads at most 4 and HTTP connections (`lensd_http_connections`) at most 2 above the idle sample after warm-up",
    "with --hostile, every kind of hostile client made attempts and every hostile answer is the expected one: an aborted upgrade that reads its answer reads 101; a message of 2× `max_message_bytes` is answered `payload_too_large` and the session goes on, one over 4× is answered so and the connection closes; every probe of a hidden or made-up model (switch, model info, analysis) is answered `unknown_model`; a wrong key is answered 401 or 429 `rate_limited`, an anonymous call from the same address 200; hostile connections are accepted",
    "with --hostile, no hostile client gets more than its share: a slow reader is closed within the output timeout + 30 s of connecting, a partial header within the header timeout + 30 s; at most 10 wrong keys from one address are answered 401 within any minute (the 11th's answer came less than 60 s after the 1st was sent: a failure), and a storm of more than 10 sees 429",
];

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub url: String,
    pub pid: u32,
    pub duration: Duration,
    pub clients: usize,
    pub sample_every: Duration,
    pub seed: u64,
    /// Models the analyses name; empty: every logit and tuned model the server lists.
    pub models: Vec<String>,
    /// An admin key, for preloads, unloads, reloads and the status of dropped requests.
    pub admin_key: Option<String>,
    /// An answer later than this is a failure.
    pub stall: Duration,
    /// The longest wait for the server to become idle, after warm-up and at the end.
    pub idle_timeout: Duration,
    /// Run the hostile clients beside the users.
    pub hostile: bool,
    /// The server's header and WebSocket output timeouts, which bound how long a partial header
    /// and a slow reader may stay open.
    pub header_timeout: Duration,
    pub ws_output_timeout: Duration,
}

/// The server at one moment. `t_s` counts from the start of the command.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_bytes: u64,
    pub open_fds: usize,
    pub threads: usize,
    /// The memory report's heap figures (glibc's count) and its accounted bytes; `None` when
    /// it did not answer or the server's C library gives no count.
    pub heap_in_use_bytes: Option<u64>,
    pub heap_free_bytes: Option<u64>,
    pub accounted_bytes: Option<u64>,
    /// Accounted weights that are mapped, not in the heap.
    pub mapped_weight_bytes: Option<u64>,
    /// The events of finished requests the server keeps, as JSON bytes (`/metrics`).
    pub finished_kept_bytes: Option<u64>,
    /// Leases over every base and lens; `None` when the memory report did not answer.
    pub leases: Option<u64>,
    /// Bases and lenses on the device or host tier.
    pub loaded: Option<usize>,
    pub queue_depth: Option<u64>,
    pub connections: Option<u64>,
    /// HTTP connections open, WebSockets and the sampler's own included (`/metrics`).
    pub http_connections: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    pub url: String,
    pub clients: usize,
    pub seed: u64,
    pub models: Vec<String>,
    pub groups: Vec<String>,
    pub admin: bool,
    pub load_seconds: f64,
    /// From the end of the load until every user had finished its last action.
    pub wind_down_seconds: f64,
    /// Submissions sent: analyses, generations, cancelled and dropped requests.
    pub requests_submitted: usize,
    /// Submissions that reached `completed`.
    pub requests_served: usize,
    pub actions: BTreeMap<&'static str, Counts>,
    /// Refusals and failed requests by `error_type`.
    pub errors: BTreeMap<String, usize>,
    pub violations: BTreeMap<&'static str, usize>,
    /// Dropped requests whose end could not be asked for (no admin key).
    pub dropped_unverified: usize,
    /// The first faults seen.
    pub faults: Vec<String>,
    /// What the hostile clients saw, when they ran.
    pub hostile: Option<HostileReport>,
    pub server_start: Sample,
    pub server_after_warmup: Sample,
    pub server_end: Sample,
    pub idle_at_end: bool,
    pub idle_wait_seconds: f64,
    pub max_leases: u64,
    pub max_queue_depth: u64,
    /// The lower quartiles of resident memory in the second and the last quarter of the load.
    pub rss_second_quarter_p25: Option<u64>,
    pub rss_last_quarter_p25: Option<u64>,
    /// The same for the heap in use beyond the accounted bytes and the finished requests kept.
    pub heap_unaccounted_second_quarter_p25: Option<u64>,
    pub heap_unaccounted_last_quarter_p25: Option<u64>,
    /// Least-squares slopes per minute over the samples after the warm-up fifth of the load.
    pub slopes_per_minute: BTreeMap<&'static str, Option<f64>>,
    pub rules: Vec<&'static str>,
    pub passed: bool,
    pub failures: Vec<String>,
    /// The samples taken during the load, which starts at `load_started_s`.
    pub load_started_s: f64,
    pub samples: Vec<Sample>,
}

impl Sample {
    /// Heap in use beyond the weights and lenses held there (those not mapped) and the
    /// finished requests kept.
    fn heap_unaccounted(&self) -> Option<u64> {
        let in_heap = self
            .accounted_bytes?
            .saturating_sub(self.mapped_weight_bytes.unwrap_or(0));
        let held = in_heap + self.finished_kept_bytes.unwrap_or(0);
        Some(self.heap_in_use_bytes?.saturating_sub(held))
    }
}

/// A connection to `addr` from the loopback address `from`, or from where the system picks.
async fn connect_from(from: Option<IpAddr>, addr: &str) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let to = tokio::net::lookup_host(addr)
        .await?
        .find(SocketAddr::is_ipv4);
    let to = to.ok_or_else(|| std::io::Error::other(format!("{addr} has no IPv4 address")))?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// One HTTP/1.1 exchange on a connection of its own: the status and the body.
async fn http(addr: &str, method: &str, path: &str, key: Option<&str>) -> Result<(u16, String)> {
    http_from(None, addr, method, path, key).await
}

/// [`http`] from the loopback address `from`.
async fn http_from(
    from: Option<IpAddr>,
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = connect_from(from, addr).await?;
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("no answer to {method} {path} within 30 s"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("a malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let status = status.context("an HTTP answer without a status")?;
    // The server sends a Content-Length and closes: the body is the rest.
    Ok((status, body.to_string()))
}

/// The server now; `None` when its process is gone. /proc is read first, so that the
/// sampler's own HTTP connections are not among the descriptors.
async fn sample(addr: &str, o: &SoakOptions, t0: Instant) -> Option<Sample> {
    let p = process_sample(Some(o.pid))?;
    let mut s = Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_bytes: p.rss_bytes,
        open_fds: p.open_fds,
        threads: p.threads,
        ..Sample::default()
    };
    let key = o.admin_key.as_deref();
    if let Ok((200, body)) = http(addr, "GET", "/api/v2/memory", key).await {
        if let Ok(m) = serde_json::from_str::<Value>(&body) {
            let entries = m["entries"].as_array().cloned().unwrap_or_default();
            s.leases = Some(entries.iter().filter_map(|e| e["leases"].as_u64()).sum());
            s.loaded = Some(entries.iter().filter(|e| e["tier"] != "disk").count());
            s.heap_in_use_bytes = m["process_heap_in_use_bytes"].as_u64();
            s.heap_free_bytes = m["process_heap_free_bytes"].as_u64();
            s.accounted_bytes = m["accounted_bytes"].as_u64();
            s.mapped_weight_bytes = m["process_mapped_weight_bytes"].as_u64();
        }
    }
    if let Ok((200, body)) = http(addr, "GET", "/metrics", None).await {
        let gauge = |name: &str| {
            body.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(' ')?;
                v.trim().parse::<f64>().ok().map(|x| x as u64)
            })
        };
        s.queue_depth = gauge("lensd_queue_depth");
        s.connections = gauge("lensd_websocket_connections");
        s.http_connections = gauge("lensd_http_connections");
        s.finished_kept_bytes = gauge("lensd_finished_kept_bytes");
    }
    Some(s)
}

/// Samples until the server is idle (nothing queued, no lease, no WebSocket connection and,
/// given `base`, descriptors, threads and HTTP connections within the slack of it) or the idle
/// timeout passes.
async fn wait_idle(
    addr: &str,
    o: &SoakOptions,
    t0: Instant,
    base: Option<&Sample>,
) -> Result<(Sample, bool)> {
    let deadline = Instant::now() + o.idle_timeout;
    loop {
        let s = sample(addr, o, t0)
            .await
            .with_context(|| format!("the server process {} has ended", o.pid))?;
        let idle = s.queue_depth.unwrap_or(0) == 0
            && s.leases == Some(0)
            && s.connections.unwrap_or(0) == 0
            && base.is_none_or(|b| {
                s.open_fds <= b.open_fds + FD_SLACK
                    && s.threads <= b.threads + THREAD_SLACK
                    && s.http_connections.unwrap_or(0)
                        <= b.http_connections.unwrap_or(0) + HTTP_SLACK
            });
        if idle || Instant::now() >= deadline {
            return Ok((s, idle));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Lists the groups with the models the analyses may name, then analyses with every one of
/// them, generates and (with the admin key) reloads, each of which must succeed.
async fn warm_up(addr: &str, o: &SoakOptions) -> Result<Vec<(String, Vec<String>)>> {
    let mut c = Conn::open(&o.url, None, o.stall).await?;
    c.send(json!({"type": "list_model_groups"})).await?;
    let list = c.until(|v| ty(v) == "model_groups_list").await?;
    let mut groups = Vec::new();
    for g in list["groups"].as_array().into_iter().flatten() {
        let models: Vec<String> = g["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| match o.models.is_empty() {
                true => m["lens"] == "logit" || m["lens"] == "tuned",
                false => o.models.iter().any(|x| m["id"] == x.as_str()),
            })
            .filter_map(|m| m["id"].as_str().map(String::from))
            .collect();
        if let (Some(id), false) = (g["group_id"].as_str(), models.is_empty()) {
            groups.push((id.to_string(), models));
        }
    }
    let all: Vec<&String> = groups.iter().flat_map(|g| &g.1).collect();
    if let Some(m) = o.models.iter().find(|m| !all.contains(m)) {
        bail!("the server lists no model `{m}` that this client may use");
    }
    let Some(first) = all.first() else {
        bail!("the server lists no logit or tuned model; name the models with --model-id");
    };
    let mut warm: Vec<Value> = all
        .iter()
        .map(|m| json!({"type": "analyze", "models": [m], "text": TEXTS[0]}))
        .collect();
    warm.push(json!({"type": "generate", "model_id": first, "prompt": TEXTS[0], "max_tokens": 8}));
    for msg in warm {
        let Some(id) = c.submit("warm-up", msg.clone()).await? else {
            bail!("the warm-up request {msg} was refused: {:?}", c.log.errors);
        };
        let end = c.terminal(&id).await?;
        ensure!(
            ty(&end) == "completed",
            "the warm-up request {msg} ended with {end}"
        );
    }
    let _ = c.ws.close(None).await;
    if let Some(key) = &o.admin_key {
        let mut admin = Conn::open(&o.url, Some(key), o.stall).await?;
        let _ = admin.ws.close(None).await;
        let (status, body) = http(addr, "POST", "/api/v2/admin/reload", Some(key)).await?;
        ensure!(
            status == 200,
            "the warm-up reload was answered {status}: {body}"
        );
    }
    Ok(groups)
}

/// Samples every period until the load's deadline (the users' last actions after it are
/// not load); whether the server process ended.
async fn sampler(addr: String, o: SoakOptions, t0: Instant, until: Instant) -> (Vec<Sample>, bool) {
    let mut samples = Vec::new();
    while Instant::now() < until {
        match sample(&addr, &o, t0).await {
            Some(s) => samples.push(s),
            None => return (samples, true),
        }
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(o.sample_every.min(left)).await;
    }
    (samples, false)
}

fn lower_quartile(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get((v.len().max(1) - 1) / 4).copied()
}

/// Least-squares slope of `y` per minute of `t_s`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (points.len() >= 3 && sxx > 0.0).then(|| sxy / sxx * 60.0)
}

/// Where a sample lies in the load: 0 at its start, 1 at its end.
fn load_fraction(r: &SoakReport, s: &Sample) -> f64 {
    (s.t_s - r.load_started_s) / r.load_seconds.max(1e-9)
}

/// The lower quartile of a figure over the samples from `from` to `to` of the load.
fn quartile(r: &SoakReport, from: f64, to: f64, f: Figure) -> Option<u64> {
    let inside = r.samples.iter();
    let inside = inside.filter(|s| (from..to).contains(&load_fraction(r, s)));
    lower_quartile(inside.filter_map(f).collect())
}

/// Fills in the growth figures and the verdict.
fn judge(r: &mut SoakReport, server_gone: bool) {
    let rss = |s: &Sample| Some(s.rss_bytes);
    let heap: Figure = Sample::heap_unaccounted;
    r.rss_second_quarter_p25 = quartile(r, 0.25, 0.5, rss);
    r.rss_last_quarter_p25 = quartile(r, 0.75, f64::INFINITY, rss);
    r.heap_unaccounted_second_quarter_p25 = quartile(r, 0.25, 0.5, heap);
    r.heap_unaccounted_last_quarter_p25 = quartile(r, 0.75, f64::INFINITY, heap);
    let steady: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| load_fraction(r, s) >= WARMUP_FRACTION)
        .collect();
    let fit = |f: fn(&Sample) -> Option<f64>| {
        slope(
            &steady
                .iter()
                .filter_map(|s| Some((s.t_s, f(s)?)))
                .collect::<Vec<_>>(),
        )
    };
    r.slopes_per_minute = BTreeMap::from([
        ("rss_bytes", fit(|s| Some(s.rss_bytes as f64))),
        (
            "heap_unaccounted_bytes",
            fit(|s| Some(s.heap_unaccounted()? as f64)),
        ),
        ("open_fds", fit(|s| Some(s.open_fds as f64))),
        ("threads", fit(|s| Some(s.threads as f64))),
    ]);
    r.max_leases = r.samples.iter().filter_map(|s| s.leases).max().unwrap_or(0);
    r.max_queue_depth = r
        .samples
        .iter()
        .filter_map(|s| s.queue_depth)
        .max()
        .unwrap_or(0);
    let mut f: Vec<String> = r
        .violations
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{n} × {k}"))
        .collect();
    if let Some(n) = r.errors.get("internal") {
        f.push(format!("{n} errors of type `internal`"));
    }
    if server_gone {
        f.push("the server process ended during the run".into());
    }
    if let (Some(q2), Some(q4)) = (r.rss_second_quarter_p25, r.rss_last_quarter_p25) {
        let growth = q4.saturating_sub(q2);
        if growth as f64 > q2 as f64 * RSS_GROWTH_FRACTION && growth > RSS_GROWTH_BYTES {
            f.push(format!(
                "resident memory grew from {} (lower quartile of the second quarter) to {} (of the last), by more than 10 % and 32 MiB",
                bytes(q2),
                bytes(q4)
            ));
        }
    }
    if let (Some(q2), Some(q4)) = (
        r.heap_unaccounted_second_quarter_p25,
        r.heap_unaccounted_last_quarter_p25,
    ) {
        if q4.saturating_sub(q2) > HEAP_GROWTH_BYTES {
            f.push(format!(
                "heap in use beyond the accounted bytes and the finished requests kept grew from {} (lower quartile of the second quarter) to {} (of the last), by more than 16 MiB",
                bytes(q2),
                bytes(q4)
            ));
        }
    }
    let (w, e) = (&r.server_after_warmup, &r.server_end);
    if e.open_fds > w.open_fds + FD_SLACK {
        f.push(format!(
            "{} descriptors at the end, {} after warm-up (slack {FD_SLACK})",
            e.open_fds, w.open_fds
        ));
    }
    if e.threads > w.threads + THREAD_SLACK {
        f.push(format!(
            "{} threads at the end, {} after warm-up (slack {THREAD_SLACK})",
            e.threads, w.threads
        ));
    }
    let http = |x: &Sample| x.http_connections.unwrap_or(0);
    if http(e) > http(w) + HTTP_SLACK {
        f.push(format!(
            "{} HTTP connections open at the end, {} after warm-up (slack {HTTP_SLACK})",
            http(e),
            http(w)
        ));
    }
    if e.leases != Some(0) {
        f.push(format!("leases held at the end: {:?}", e.leases));
    }
    if e.queue_depth.unwrap_or(0) > 0 || e.connections.unwrap_or(0) > 0 {
        f.push(format!(
            "not idle at the end: {:?} queued, {:?} WebSocket connections",
            e.queue_depth, e.connections
        ));
    }
    if let Some(h) = &r.hostile {
        f.extend(h.failures());
    }
    r.passed = f.is_empty();
    r.failures = f;
}

pub async fn run(o: SoakOptions) -> Result<SoakReport> {
    let addr = o
        .url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next());
    let addr = addr.context("--url must be ws://HOST:PORT/ws")?.to_string();
    let t0 = Instant::now();
    let start = sample(&addr, &o, t0)
        .await
        .with_context(|| format!("cannot read /proc/{}: is the server running?", o.pid))?;
    let groups = warm_up(&addr, &o).await?;
    let plan = match o.hostile {
        true => Some(hostile::prepare(&addr, &o).await?),
        false => None,
    };
    let (after_warmup, _) = wait_idle(&addr, &o, t0, None).await?;
    let load_started = Instant::now();
    let ctx = Arc::new(Ctx {
        o: o.clone(),
        addr: addr.clone(),
        models: groups.iter().flat_map(|g| g.1.clone()).collect(),
        groups,
        deadline: load_started + o.duration,
    });
    let sampling = tokio::spawn(sampler(addr.clone(), o.clone(), t0, ctx.deadline));
    let users: Vec<_> = (0..o.clients)
        .map(|k| tokio::spawn(user::run(k, ctx.clone())))
        .collect();
    let hostile = plan.map(|p| tokio::spawn(hostile::run(ctx.clone(), p)));
    let mut log = Log::default();
    for u in users {
        log.merge(u.await?);
    }
    let hostile = match hostile {
        Some(h) => Some(h.await??),
        None => None,
    };
    let wind_down_seconds = ctx.deadline.elapsed().as_secs_f64();
    let (samples, server_gone) = sampling.await?;
    let waited = Instant::now();
    let (end, idle) = match server_gone {
        true => (Sample::default(), false),
        false => wait_idle(&addr, &o, t0, Some(&after_warmup)).await?,
    };
    let idle_wait_seconds = waited.elapsed().as_secs_f64();
    let mut dropped_unverified = 0;
    for id in std::mem::take(&mut log.dropped) {
        let Some(key) = o.admin_key.as_deref() else {
            dropped_unverified += 1;
            continue;
        };
        let status = match http(&addr, "GET", &format!("/api/v2/requests/{id}"), Some(key)).await {
            Ok((200, body)) => {
                serde_json::from_str::<Value>(&body).unwrap_or_default()["status"].take()
            }
            _ => Value::Null,
        };
        match status["state"].as_str() {
            Some("completed" | "cancelled" | "error") => log.end(
                "disconnect",
                &json!({"type": status["state"], "error_type": status["error_type"]}),
            ),
            _ => add(&mut log.violations, "dropped_not_ended", 1),
        }
    }
    VIOLATIONS
        .iter()
        .for_each(|v| add(&mut log.violations, v, 0));
    let submits = |outcome: &str| -> usize {
        let counts = SUBMITS.iter().filter_map(|a| log.actions.get(a));
        counts.filter_map(|c| c.get(outcome)).sum()
    };
    let mut r = SoakReport {
        url: o.url.clone(),
        clients: o.clients,
        seed: o.seed,
        models: ctx.models.clone(),
        groups: ctx.groups.iter().map(|g| g.0.clone()).collect(),
        admin: o.admin_key.is_some(),
        load_seconds: o.duration.as_secs_f64(),
        wind_down_seconds,
        requests_submitted: submits("attempted"),
        requests_served: submits("completed"),
        dropped_unverified,
        hostile,
        server_start: start,
        server_after_warmup: after_warmup,
        server_end: end,
        idle_at_end: idle,
        idle_wait_seconds,
        rules: RULES.to_vec(),
        load_started_s: load_started.duration_since(t0).as_secs_f64(),
        samples,
        ..SoakReport::default()
    };
    (r.actions, r.errors, r.violations, r.faults) =
        (log.actions, log.errors, log.violations, log.faults);
    judge(&mut r, server_gone);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100 s load sampled every second with resident memory from `rss`, idle at both ends.
    fn report(rss: impl Fn(f64) -> u64) -> SoakReport {
        let idle = Sample {
            rss_bytes: 600 << 20,
            open_fds: 16,
            threads: 8,
            leases: Some(0),
            queue_depth: Some(0),
            connections: Some(0),
            http_connections: Some(1),
            ..Sample::default()
        };
        let samples = (0..100)
            .map(|i| Sample {
                t_s: 10.0 + i as f64,
                rss_bytes: rss(i as f64),
                ..idle.clone()
            })
            .collect();
        SoakReport {
            load_started_s: 10.0,
            load_seconds: 100.0,
            server_after_warmup: idle.clone(),
            server_end: idle,
            samples,
            ..SoakReport::default()
        }
    }

    #[test]
    fn transient_peaks_pass_and_a_steady_climb_fails() {
        // Every third sample is 300 MiB higher, as while a long analysis runs.
        let mut r = report(|t| {
            (700 << 20)
                + if (t as u64).is_multiple_of(3) {
                    300 << 20
                } else {
                    0
                }
        });
        judge(&mut r, false);
        assert!(r.passed, "{:?}", r.failures);
        let mut r = report(|t| (700 << 20) + (t as u64) * (2 << 20));
        judge(&mut r, false);
        assert!(!r.passed);
        assert!(
            r.failures[0].contains("resident memory grew"),
            "{:?}",
            r.failures
        );
        let per_minute = r.slopes_per_minute["rss_bytes"].unwrap();
        assert!((per_minute - 120.0 * 1048576.0).abs() < 1.0, "{per_minute}");
    }

    #[test]
    fn the_table_gives_each_windows_lower_quartile() {
        // 100 samples over 100 s, resident memory 700 MiB plus one MiB per second.
        let r = report(|t| (700 << 20) + ((t as u64) << 20));
        let text = windows(&r, 4);
        assert!(
            text.contains("| minutes | 0–0 | 0–1 | 1–1 | 1–2 |"),
            "{text}"
        );
        // Window two holds seconds 25..50: its lower quartile is the seventh, 731 MiB.
        assert!(
            text.contains("| resident | 706 | 731 | 756 | 781 |"),
            "{text}"
        );
        assert!(text.contains("| heap in use | – | – | – | – |"), "{text}");
    }

    #[test]
    fn a_small_climb_within_either_bound_passes() {
        // 40 MiB over 700 MiB: more than 32 MiB, less than 10 %.
        let mut r = report(|t| (700 << 20) + if t >= 50.0 { 40 << 20 } else { 0 });
        judge(&mut r, false);
        assert!(r.passed, "{:?}", r.failures);
    }

    #[test]
    fn heap_growth_beyond_what_is_kept_fails_with_flat_resident_memory() {
        // Heap in use climbs 50 MiB while resident memory stays put (freed blocks reused).
        let with_heap = |kept: fn(f64) -> u64| {
            let mut r = report(|_| 800 << 20);
            for (i, s) in r.samples.iter_mut().enumerate() {
                let t = i as f64;
                s.accounted_bytes = Some(500 << 20);
                s.finished_kept_bytes = Some(kept(t));
                s.heap_in_use_bytes = Some((600 << 20) + (t * 0.5 * 1048576.0) as u64);
            }
            judge(&mut r, false);
            r
        };
        let r = with_heap(|_| 4 << 20);
        assert!(!r.passed);
        assert!(r.failures[0].contains("heap in use"), "{:?}", r.failures);
        let per_minute = r.slopes_per_minute["heap_unaccounted_bytes"].unwrap();
        assert!((per_minute / 1048576.0 - 30.0).abs() < 0.1, "{per_minute}");
        // The same climb made of finished requests kept passes.
        let r = with_heap(|t| (t * 0.5 * 1048576.0) as u64);
        assert!(r.passed, "{:?}", r.failures);
    }

    #[test]
    fn the_end_must_be_idle_and_close_to_the_warm_up() {
        let mut r = report(|_| 700 << 20);
        r.server_end.open_fds = 16 + FD_SLACK + 1;
        r.server_end.threads = 8 + THREAD_SLACK;
        r.server_end.leases = Some(1);
        r.server_end.connections = Some(2);
        r.server_end.http_connections = Some(1 + HTTP_SLACK + 1);
        add(&mut r.violations, "without_one_terminal", 1);
        judge(&mut r, true);
        let text = r.failures.join("\n");
        for expected in [
            "descriptors",
            "leases held",
            "not idle",
            "without_one_terminal",
            "ended",
            "HTTP connections open at the end",
        ] {
            assert!(text.contains(expected), "no {expected} in {text}");
        }
        assert!(!text.contains("threads"), "{text}");
    }

    #[test]
    fn hostile_failures_fail_the_run_and_are_reported() {
        let mut r = report(|_| 700 << 20);
        r.hostile = Some(HostileReport::default());
        judge(&mut r, false);
        // No kind made an attempt.
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 6, "{:?}", r.failures);
        assert!(
            r.failures[0].contains("made no attempt"),
            "{:?}",
            r.failures
        );
        assert!(table(&r).contains("| hostile | from | attempted | outcomes |"));
        let mut r = report(|_| 700 << 20);
        judge(&mut r, false);
        assert!(r.passed, "{:?}", r.failures);
        assert!(!table(&r).contains("| hostile |"));
    }
}
