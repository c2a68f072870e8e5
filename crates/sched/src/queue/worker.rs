//! The compute worker of one device: takes the next request from the queue, leases its base
//! and lenses, runs it on the engine one sub-batch at a time, and streams its events. One
//! worker per device means one computation at a time, which small CPUs need.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant as StdInstant;

/// The cancellation reason, and error type, of a request stopped by its compute limit.
pub const COMPUTE_LIMIT: &str = "compute_limit";

use lensd_core::engine::Engine;
use lensd_core::registry::{BaseKey, ResourceKey};
use lensd_core::residency::Tier;
use lensd_core::work::{
    ComputeEvent, Job, JobFailure, JobOutput, Prompt, Remaining, RequestEvent, Text, Work,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::state::{Finished, Task};
use super::Command;
use crate::residency::{EntryState, PreloadEvent, Residency};

pub(crate) struct Worker {
    pub commands: mpsc::Sender<Command>,
    pub residency: Residency,
    pub engine: Arc<dyn Engine>,
    pub start: Instant,
}

impl Worker {
    pub async fn run(self) {
        loop {
            let on_device = self.on_device().await;
            let (reply, next) = oneshot::channel();
            if self
                .commands
                .send(Command::Next {
                    on_device: on_device.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                break;
            }
            let Ok(task) = next.await else { break };
            let id = task.id;
            let switched = !on_device.contains(&task.base);
            let (outcome, load_ms) = self.serve(task).await;
            let switch_cost_ms = if switched { load_ms } else { None };
            if self
                .commands
                .send(Command::Finished {
                    id,
                    outcome,
                    switch_cost_ms,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    }

    async fn on_device(&self) -> BTreeSet<BaseKey> {
        match self.residency.report().await {
            Ok(rep) => rep
                .entries
                .into_iter()
                .filter(|e| e.tier == Tier::Device && e.state == EntryState::Ready)
                .filter_map(|e| match e.resource {
                    ResourceKey::Base(b) => Some(b),
                    ResourceKey::Lens(_) => None,
                })
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Runs one request to its single terminal event. Returns how it ended and, when its
    /// weights had to be brought in, how long that took.
    async fn serve(&self, task: Task) -> (Finished, Option<u64>) {
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
            return (Finished::Failed, None);
        }
        send(RequestEvent::Started);

        // Lease the weights, reporting loads, and give up if cancelled meanwhile.
        let (progress_tx, mut progress) = mpsc::unbounded_channel();
        let t = Instant::now();
        let acquire = self.residency.acquire_all(&task.models, Some(progress_tx));
        tokio::pin!(acquire);
        let mut loaded = false;
        let lease = loop {
            tokio::select! {
                lease = &mut acquire => break lease,
                Some(ev) = progress.recv() => {
                    if let PreloadEvent::Loading { resource, bytes_done, bytes_total } = ev {
                        loaded = true;
                        send(RequestEvent::Loading { resource: resource.to_string(), bytes_done, bytes_total });
                    }
                }
                _ = task.cancel.cancelled() => {
                    send(cancelled(false));
                    return (Finished::Failed, None);
                }
            }
        };
        let load_ms = loaded.then(|| t.elapsed().as_millis() as u64);
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                send(RequestEvent::Error {
                    error_type: "unavailable".into(),
                    message: e.to_string(),
                });
                return (Finished::Failed, load_ms);
            }
        };

        let job = match self.job(&task) {
            Ok(job) => job,
            Err(message) => {
                send(RequestEvent::Error {
                    error_type: "invalid_request".into(),
                    message,
                });
                return (Finished::Failed, load_ms);
            }
        };
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
        let result = match tokio::spawn(self.engine.run(job, sink)).await {
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
                let finished = match &output {
                    JobOutput::Generation { prompt, text, .. } => {
                        Finished::Generated(format!("{prompt}{text}"))
                    }
                    JobOutput::Analysis { .. } => Finished::Done,
                };
                send(RequestEvent::Completed { output });
                (finished, load_ms)
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
                (Finished::Failed, load_ms)
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
                (Finished::Failed, load_ms)
            }
            Err(JobFailure::Cancelled) => {
                send(cancelled(partial));
                (Finished::Failed, load_ms)
            }
            Err(JobFailure::Limit(message)) => {
                send(RequestEvent::Error {
                    error_type: "limit_exceeded".into(),
                    message,
                });
                (Finished::Failed, load_ms)
            }
            Err(JobFailure::Invalid(message)) => {
                send(RequestEvent::Error {
                    error_type: "invalid_request".into(),
                    message,
                });
                (Finished::Failed, load_ms)
            }
            Err(JobFailure::Engine(message)) => {
                send(RequestEvent::Error {
                    error_type: "engine_error".into(),
                    message,
                });
                (Finished::Failed, load_ms)
            }
            Err(JobFailure::Internal(message)) => {
                tracing::error!(request = task.id, %message, "the engine panicked");
                send(RequestEvent::Error {
                    error_type: "internal".into(),
                    message,
                });
                (Finished::Failed, load_ms)
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
