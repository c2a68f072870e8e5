//! `lensd bench-sched`: the group-aware policy against first-in-first-out on the same
//! workload: clients choosing models from groups with different bases, on a device that holds
//! one base. Once simulated (the fake engine with the demo model's measured costs, under
//! virtual time) and once on the real demo model.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lensd::service::Service;
use lensd_core::config::Budgets;
use lensd_core::layers::LayerSpec;
use lensd_core::registry::{BaseKey, BaseSpec, ModelRef, Policy, Registry, ResourceKey};
use lensd_core::work::{AnalyzeWork, ClientId, Prompt, RequestEvent, Text, Work};
use lensd_core::ComputeDtype;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::{PolicyKind, QueueConfig, Scheduler};
use lensd_sched::residency::{Options, Residency};
use serde::Serialize;

use crate::bench::median;
use tokio::time::Instant;

#[derive(Debug, Serialize)]
pub struct SchedRow {
    pub workload: &'static str,
    pub policy: &'static str,
    pub requests: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub wait_p50_ms: f64,
    pub wait_p95_ms: f64,
    pub base_swaps: usize,
    /// Runs the row is the median of (each column's median on its own).
    pub runs: usize,
}

/// Each column's median over runs of the same workload and policy.
fn median_row(rows: Vec<SchedRow>) -> SchedRow {
    let col = |f: fn(&SchedRow) -> f64| median(&rows.iter().map(f).collect::<Vec<_>>());
    SchedRow {
        workload: rows[0].workload,
        policy: rows[0].policy,
        requests: rows[0].requests,
        seconds: col(|r| r.seconds),
        requests_per_s: col(|r| r.requests_per_s),
        wait_p50_ms: col(|r| r.wait_p50_ms),
        wait_p95_ms: col(|r| r.wait_p95_ms),
        base_swaps: col(|r| r.base_swaps as f64).round() as usize,
        runs: rows.len(),
    }
}

/// One request of the workload: who, when, which model, how long a text.
struct Planned {
    client: usize,
    at: Duration,
    model: String,
    words: usize,
}

/// A fixed pseudo-random workload: `clients` clients each sending `per_client` requests, each
/// client mostly sticking to one group and now and then trying another.
fn plan(clients: usize, per_client: usize, models: &[&str], gap: Duration) -> Vec<Planned> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let mut out = Vec::new();
    for c in 0..clients {
        let home = c % models.len();
        let mut t = Duration::from_millis((next() % 200) as u64);
        for _ in 0..per_client {
            let m = if next() % 4 == 0 {
                next() % models.len()
            } else {
                home
            };
            out.push(Planned {
                client: c,
                at: t,
                model: models[m].to_string(),
                words: 8 + next() % 16,
            });
            t += gap.mul_f64(0.5 + (next() % 100) as f64 / 100.0);
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

fn analyze(model: &str, words: usize, layers: &LayerSpec) -> Work {
    let text = (0..words)
        .map(|i| ["the", "keeper", "wrote", "down", "wind"][i % 5])
        .collect::<Vec<_>>()
        .join(" ");
    Work::Analyze(AnalyzeWork {
        models: vec![model.into()],
        text: Text::Given(Prompt::plain(text)),
        layers: layers.clone(),
        top_k: 3,
        explain: Default::default(),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Submits the planned requests at their times and measures each one's wait for its start.
async fn drive(
    scheduler: &Scheduler,
    planned: &[Planned],
    layers: &LayerSpec,
) -> Result<(f64, Vec<f64>)> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in planned {
        tokio::time::sleep_until(t0 + p.at).await;
        let submitted = Instant::now();
        let (_, mut rx) = scheduler
            .submit(
                &ClientId(format!("client-{}", p.client)),
                analyze(&p.model, p.words, layers),
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tasks.push(tokio::spawn(async move {
            let mut wait = None;
            while let Some(ev) = rx.recv().await {
                if matches!(ev, RequestEvent::Started) {
                    wait = Some(submitted.elapsed());
                }
                if ev.is_terminal() {
                    return (wait, matches!(ev, RequestEvent::Completed { .. }));
                }
            }
            (wait, false)
        }));
    }
    let mut waits = Vec::new();
    for t in tasks {
        let (wait, ok) = t.await?;
        anyhow::ensure!(ok, "a benchmark request did not complete");
        waits.push(wait.unwrap_or_default().as_secs_f64() * 1e3);
    }
    waits.sort_by(f64::total_cmp);
    Ok((t0.elapsed().as_secs_f64(), waits))
}

fn row(
    workload: &'static str,
    policy: PolicyKind,
    seconds: f64,
    waits: &[f64],
    swaps: usize,
) -> SchedRow {
    SchedRow {
        workload,
        policy: match policy {
            PolicyKind::Fifo => "FIFO (the original's)",
            PolicyKind::GroupAware => "lensd group-aware",
        },
        requests: waits.len(),
        seconds,
        requests_per_s: waits.len() as f64 / seconds,
        wait_p50_ms: percentile(waits, 0.5),
        wait_p95_ms: percentile(waits, 0.95),
        base_swaps: swaps,
        runs: 1,
    }
}

/// Simulated: three groups on three bases of the demo model's size, the device holding one.
/// Costs measured on the demo model: a base from disk 195 ms, a lens 51 ms, 0.69 ms per
/// analysis cell.
async fn simulated(policy: PolicyKind, clients: usize, per_client: usize) -> Result<SchedRow> {
    const MB: u64 = 1 << 20;
    let mut reg = Registry::default();
    let models = ["m0", "m1", "m2"];
    for (i, m) in models.iter().enumerate() {
        let key = BaseKey(format!("base-{i}"));
        reg.bases.insert(
            key.clone(),
            BaseSpec {
                path: format!("base-{i}.gguf").into(),
                dtype: ComputeDtype::F32,
                bytes: 513 * MB,
                n_layers: 30,
                d_model: 576,
            },
        );
        reg.policies
            .insert(ResourceKey::Base(key.clone()), Policy::default());
        reg.models.insert(
            m.to_string(),
            ModelRef {
                group: format!("g{i}"),
                base: key,
                lens: None,
                donor: None,
            },
        );
        reg.groups.insert(format!("g{i}"), vec![m.to_string()]);
    }
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_millis(195));
    engine.set_compute_costs(Duration::from_micros(690), Duration::from_millis(16));
    let budgets = Budgets {
        device: 600 * MB,
        host: 0,
    };
    let residency = Residency::start(
        reg.clone(),
        budgets,
        Arc::new(engine.clone()),
        Options::default(),
    );
    let scheduler = Scheduler::start(
        QueueConfig {
            policy,
            per_client: 64,
            ..QueueConfig::default()
        },
        reg,
        residency,
        Arc::new(engine.clone()),
    );
    let planned = plan(clients, per_client, &models, Duration::from_millis(600));
    let (seconds, waits) = drive(&scheduler, &planned, &LayerSpec::All).await?;
    let swaps = engine
        .log()
        .iter()
        .filter(|l| l.starts_with("load base"))
        .count()
        .saturating_sub(1);
    Ok(row("simulated", policy, seconds, &waits, swaps))
}

/// Real: the demo model as two bases (f32 and stored dtypes), the device holding one.
async fn real(
    model: &Path,
    policy: PolicyKind,
    clients: usize,
    per_client: usize,
) -> Result<SchedRow> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("model_groups.json");
    // Room for the larger base and half the smaller: one at a time.
    let probe = lensd_engine::probe::FileProbe::new();
    let bytes = |dtype| -> Result<u64> {
        Ok(probe
            .base_facts(model, dtype)
            .with_context(|| format!("cannot read {}", model.display()))?
            .resident_bytes)
    };
    let (f32_bytes, stored_bytes) = (bytes(ComputeDtype::F32)?, bytes(ComputeDtype::Stored)?);
    let device_budget = f32_bytes.max(stored_bytes) + f32_bytes.min(stored_bytes) / 2;
    let doc = serde_json::json!({
        "model_groups": [
            {"group_id": "f32", "group_name": "f32", "base_model_path": model, "compute_dtype": "f32",
             "models": [{"id": "m0", "name": "logit", "lens": "logit"}]},
            {"group_id": "stored", "group_name": "stored", "base_model_path": model, "compute_dtype": "stored",
             "models": [{"id": "m1", "name": "logit", "lens": "logit"}]}
        ],
        "settings": {"device_budget": format!("{device_budget}B"), "host_budget": "16MiB"}
    });
    std::fs::write(&cfg, doc.to_string())?;
    let service = Service::start_with(
        &cfg,
        QueueConfig {
            policy,
            per_client: 64,
            ..QueueConfig::default()
        },
    )
    .await?;
    let planned = plan(
        clients,
        per_client,
        &["m0", "m1"],
        Duration::from_millis(400),
    );
    let layers: LayerSpec = "0-30:10".parse().map_err(anyhow::Error::msg)?;
    let (seconds, waits) = drive(&service.scheduler, &planned, &layers).await?;
    // Every base that came onto the device after the first is a swap.
    let swaps = service.engine.base_loads().saturating_sub(1);
    Ok(row("demo model", policy, seconds, &waits, swaps))
}

#[derive(Debug, Serialize)]
pub struct SchedReport {
    pub rows: Vec<SchedRow>,
    /// From cancelling a running demo-model analysis to its `cancelled` event.
    pub cancel_ms: f64,
}

/// Cancels a long analysis on the demo model once its first rows arrive and times the stop.
async fn cancel_latency(model: &Path) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("model_groups.json");
    let doc = serde_json::json!({
        "model_groups": [{"group_id": "g", "group_name": "g", "base_model_path": model,
            "models": [{"id": "m", "name": "logit", "lens": "logit"}]}],
        "settings": {"device_budget": "1GiB", "host_budget": "16MiB"}
    });
    std::fs::write(&cfg, doc.to_string())?;
    let service = Service::start(&cfg).await?;
    let (id, mut rx) = service
        .scheduler
        .submit(
            &ClientId("bench".into()),
            analyze("m", 400, &LayerSpec::All),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    while let Some(ev) = rx.recv().await {
        if matches!(ev, RequestEvent::Rows { .. }) {
            break;
        }
    }
    let t = Instant::now();
    service.scheduler.cancel(id).await;
    while let Some(ev) = rx.recv().await {
        if ev.is_terminal() {
            anyhow::ensure!(
                matches!(ev, RequestEvent::Cancelled { .. }),
                "the analysis was not cancelled"
            );
            break;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The simulation once per policy (it is deterministic), the demo-model run `reps` times per
/// policy, alternating, with each column's median reported.
pub fn run(model: &Path, clients: usize, per_client: usize, reps: usize) -> Result<SchedReport> {
    anyhow::ensure!(reps > 0, "reps must be at least 1");
    let model =
        std::fs::canonicalize(model).with_context(|| format!("cannot find {}", model.display()))?;
    let mut rows = Vec::new();
    for policy in [PolicyKind::Fifo, PolicyKind::GroupAware] {
        // Virtual time: the simulation takes no wall-clock time.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?;
        rows.push(rt.block_on(simulated(policy, clients, per_client))?);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (mut fifo, mut aware) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        for (policy, runs) in [
            (PolicyKind::Fifo, &mut fifo),
            (PolicyKind::GroupAware, &mut aware),
        ] {
            runs.push(rt.block_on(real(&model, policy, clients.min(4), per_client.min(4)))?);
        }
    }
    rows.push(median_row(fifo));
    rows.push(median_row(aware));
    let cancel_ms = median(
        &(0..reps)
            .map(|_| rt.block_on(cancel_latency(&model)))
            .collect::<Result<Vec<_>>>()?,
    );
    Ok(SchedReport { rows, cancel_ms })
}
