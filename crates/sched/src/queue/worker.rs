//! The compute worker of one device: takes the next request the queue hands it, leases its
//! base and lenses on its device, runs it on the engine one sub-batch at a time, and streams
//! its events. One worker per device means one computation at a time on each, which small CPUs
//! need. A worker whose device is lost says so and stops.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant as StdInstant;

/// The cancellation reason, and error type, of a request stopped by its compute limit.
pub const COMPUTE_LIMIT: &str = "compute_limit";

use lensd_core::engine::Engine;
use lensd_core::residency::DeviceId;
use lensd_core::work::{
    ComputeEvent, Job, JobFailure, JobOutput, Prompt, Remaining, RequestEvent, Text, Work,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::state::{Finished, Task};
use super::{Command, Timing};
use crate::residency::{PreloadEvent, Residency};

pub(crate) struct Worker {
    pub device: DeviceId,
    pub commands: mpsc::Sender<Command>,
    pub residency: Residency,
    pub engine: Arc<dyn Engine>,
    pub start: Instant,
}

impl Worker {
    pub async fn run(self) {
        loop {
            let (reply, next) = oneshot::channel();
            let device = self.device;
            if self
                .commands
                .send(Command::Next { device, reply })
                .await
                .is_err()
            {
                break;
            }
            let Ok(task) = next.await else { break };
            let id = task.id;
            let resident = task.resident;
            let (outcome, mut timing) = self.serve(task).await;
            if resident {
                timing.switch_cost_ms = None;
            }
            let failed = outcome == Finished::Failed;
            if self
                .commands
                .send(Command::Finished {
                    id,
                    outcome,
                    timing,
                })
                .await
                .is_err()
            {
                break;
            }
            if let Some(why) = failed.then(|| self.engine.device_lost(device)).flatten() {
                tracing::error!(%device, %why, "device lost; its worker stops");
                self.residency.device_failed(device, why).await;
                let _ = self.commands.send(Command::DeviceLost { device }).await;
                break;
            }
        }
    }

    /// Runs one request to its single terminal event. Returns how it ended and how its time
    /// went: when weights had to be read, how many bytes in how long, and how long it computed.
    async fn serve(&self, task: Task) -> (Finished, Timing) {
        let events = task.events.clone();
        let send = |ev: RequestEvent| {
            let _ = events.send(ev);
        };
        let cancelled = |partial: bool| RequestEvent::Cancelled {
            partial,
            reason: task.cancel.reason(),
        };
        if task.cancel.is_cancelled() {
            send(cancelled(false));
            return (Finished::Failed, Timing::default());
        }
        send(RequestEvent::Started);

        // Lease the weights, reporting loads, and give up if cancelled meanwhile.
        let (progress_tx, mut progress) = mpsc::unbounded_channel();
        let t = Instant::now();
        let acquire = self
            .residency
            .acquire_on(&task.models, self.device, Some(progress_tx));
        tokio::pin!(acquire);
        let mut loaded = BTreeSet::new();
        let mut loaded_bytes = 0;
        let lease = loop {
            tokio::select! {
                lease = &mut acquire => break lease,
                Some(ev) = progress.recv() => {
                    if let PreloadEvent::Loading { resource, bytes_done, bytes_total } = ev {
                        if loaded.insert(resource.clone()) {
                            loaded_bytes += bytes_total;
                        }
                        send(RequestEvent::Loading { resource: resource.to_string(), bytes_done, bytes_total });
                    }
                }
                _ = task.cancel.cancelled() => {
                    send(cancelled(false));
                    return (Finished::Failed, Timing::default());
                }
            }
        };
        let load_ms = (!loaded.is_empty()).then(|| t.elapsed().as_millis() as u64);
        let mut timing = Timing {
            switch_cost_ms: load_ms,
            service_ms: None,
            loaded: load_ms.map(|ms| (loaded_bytes, ms)),
        };
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                send(RequestEvent::Error {
                    error_type: "unavailable".into(),
                    message: e.to_string(),
                });
                return (Finished::Failed, timing);
            }
        };

        let job = match self.job(&task) {
            Ok(job) => job,
            Err(message) => {
                send(RequestEvent::Error {
                    error_type: "invalid_request".into(),
                    message,
                });
                return (Finished::Failed, timing);
            }
        };
        let computing = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let sink = {
            let events = events.clone();
            let cancel = task.cancel.clone();
            let sent = sent.clone();
            let deadline = task
                .deadline_ms
                .map(|ms| self.start + std::time::Duration::from_millis(ms));
            let began = StdInstant::now();
            let compute_until = task
                .compute_limit_ms
                .map(|ms| Instant::now() + std::time::Duration::from_millis(ms));
            Box::new(move |ev: ComputeEvent| {
                let progress = |done: u64, total: u64, remaining: Remaining| {
                    let elapsed = began.elapsed().as_secs_f64();
                    let eta_ms = match remaining {
                        Remaining::AtRate => (done > 0 && elapsed > 0.0).then(|| {
                            ((total - done.min(total)) as f64 * elapsed / done as f64 * 1e3) as u64
                        }),
                        Remaining::Ms(ms) => Some(ms),
                        Remaining::Unknown => None,
                    };
                    RequestEvent::Progress {
                        done,
                        total,
                        eta_ms,
                    }
                };
                let evs = match ev {
                    ComputeEvent::Tokens(tokens) => vec![RequestEvent::Tokens { tokens }],
                    ComputeEvent::Rows {
                        chunk,
                        done,
                        total,
                        remaining,
                    } => {
                        sent.fetch_add(1, Ordering::SeqCst);
                        vec![
                            RequestEvent::Rows { chunk },
                            progress(done, total, remaining),
                        ]
                    }
                    ComputeEvent::Token {
                        id,
                        text,
                        done,
                        total,
                    } => {
                        sent.fetch_add(1, Ordering::SeqCst);
                        vec![
                            RequestEvent::Token { id, text },
                            progress(done, total, Remaining::AtRate),
                        ]
                    }
                };
                for e in evs {
                    let _ = events.send(e);
                }
                let late = deadline.is_some_and(|d| Instant::now() >= d);
                if late {
                    cancel.cancel("deadline");
                } else if compute_until.is_some_and(|d| Instant::now() >= d) {
                    cancel.cancel(COMPUTE_LIMIT);
                }
                if cancel.is_cancelled() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
        };
        // On its own task, so that a panic in the engine fails this request alone and the
        // worker goes on with the next.
        let result = match tokio::spawn(self.engine.run(self.device, job, sink)).await {
            Ok(result) => result,
            Err(e) => Err(match e.try_into_panic() {
                Ok(payload) => JobFailure::from_panic(payload.as_ref()),
                Err(e) => JobFailure::Internal(format!("the computation was stopped: {e}")),
            }),
        };
        drop(lease);
        let partial = sent.load(Ordering::SeqCst) > 0;
        match result {
            Ok(output) => {
                timing.service_ms = Some(computing.elapsed().as_millis() as u64);
                let finished = match &output {
                    JobOutput::Generation { prompt, text, .. } => {
                        Finished::Generated(format!("{prompt}{text}"))
                    }
                    JobOutput::Analysis { .. } => Finished::Done,
                };
                send(RequestEvent::Completed { output });
                (finished, timing)
            }
            Err(JobFailure::Cancelled) if task.cancel.reason() == COMPUTE_LIMIT => {
                let limit = task.compute_limit_ms.unwrap_or(0) as f64 / 1e3;
                send(RequestEvent::Error {
                    error_type: COMPUTE_LIMIT.into(),
                    message: format!(
                        "the request used its {limit} s of compute, the most allowed for it{}; \
                         ask for less (a shorter text, fewer layers, lenses or candidates)",
                        if partial {
                            "; the rows sent so far are partial"
                        } else {
                            ""
                        }
                    ),
                });
                (Finished::Failed, timing)
            }
            Err(JobFailure::Cancelled) if task.cancel.reason() == "deadline" => {
                send(RequestEvent::Error {
                    error_type: "deadline_exceeded".into(),
                    message: format!(
                        "the request's deadline passed while it ran{}",
                        if partial {
                            "; the rows sent so far are partial"
                        } else {
                            ""
                        }
                    ),
                });
                (Finished::Failed, timing)
            }
            Err(JobFailure::Cancelled) => {
                send(cancelled(partial));
                (Finished::Failed, timing)
            }
            Err(JobFailure::Limit(message)) => {
                send(RequestEvent::Error {
                    error_type: "limit_exceeded".into(),
                    message,
                });
                (Finished::Failed, timing)
            }
            Err(JobFailure::Invalid(message)) => {
                send(RequestEvent::Error {
                    error_type: "invalid_request".into(),
                    message,
                });
                (Finished::Failed, timing)
            }
            Err(JobFailure::Engine(message)) => {
                send(RequestEvent::Error {
                    error_type: "engine_error".into(),
                    message,
                });
                (Finished::Failed, timing)
            }
            Err(JobFailure::Internal(message)) => {
                tracing::error!(request = task.id, %message, "the engine panicked");
                send(RequestEvent::Error {
                    error_type: "internal".into(),
                    message,
                });
                (Finished::Failed, timing)
            }
        }
    }

    fn job(&self, task: &Task) -> Result<Job, String> {
        Ok(match &task.work {
            Work::Analyze(a) => {
                let text = match &a.text {
                    Text::Given(p) => p.clone(),
                    // A generation's text is already rendered, special tokens included.
                    Text::Generated { request } => Prompt::Rendered {
                        text: task
                            .generated
                            .clone()
                            .ok_or_else(|| format!("the generation {request} left no text"))?,
                    },
                };
                Job::Analyze {
                    base: task.base.clone(),
                    lenses: task.lenses.clone(),
                    text,
                    layers: a.layers.clone(),
                    top_k: a.top_k,
                    explain: a.explain.clone(),
                }
            }
            Work::Generate(g) => Job::Generate {
                base: task.base.clone(),
                lens: task.lenses.first().and_then(|l| l.lens.clone()),
                donor: task.lenses.first().and_then(|l| l.donor.clone()),
                prompt: g.prompt.clone(),
                sampling: g.sampling.clone(),
            },
        })
    }
}
