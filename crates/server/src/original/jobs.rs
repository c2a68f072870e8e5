//! Requests made over the original's REST routes (`/analyze`, the slim API), which clients poll
//! by id: each is run as a session of the original's dialect would run it, and its messages
//! are folded into the status record that `/status/{id}` and `/api/slim/status/{id}` read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::ws::Out;

/// Finished jobs kept for polling, at most this many (the oldest go first).
const KEPT_FINISHED: usize = 1000;

/// What a job's messages are folded into when it completes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Analysis,
    Generation,
    /// The reply of a chat turn, without the prompt: the slim API's `send_message`.
    Message,
}

#[derive(Debug, Clone, Default)]
pub struct Record {
    /// `queued`, `processing`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at: Option<OffsetDateTime>,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    /// Who may read it.
    pub owner: String,
}

impl Record {
    /// Seconds from start to end, once both are known.
    pub fn processing_time(&self) -> Option<f64> {
        Some((self.completed_at? - self.started_at?).as_seconds_f64())
    }
}

#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Arc<Mutex<Record>>>,
    finished: VecDeque<String>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        let r = self.lock().records.get(id).cloned()?;
        let r = r.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(r)
    }

    /// Starts a record owned by `owner`; the frames sent on the returned channel fill it. Keep
    /// it under its request id with [`Jobs::keep`] once the request is queued.
    pub(crate) fn start(
        self: &Arc<Self>,
        owner: &str,
        kind: Kind,
    ) -> (mpsc::Sender<Out>, Arc<Mutex<Record>>) {
        let (tx, mut rx) = mpsc::channel::<Out>(64);
        let record = Arc::new(Mutex::new(Record {
            status: "queued".into(),
            created_at: Some(OffsetDateTime::now_utc()),
            owner: owner.to_string(),
            ..Record::default()
        }));
        let jobs = self.clone();
        let filled = record.clone();
        tokio::spawn(async move {
            let mut id = None;
            while let Some(frame) = rx.recv().await {
                let Out::Json(v) = frame else { continue };
                if id.is_none() {
                    id = v["request_id"].as_str().map(String::from);
                }
                if fold(
                    &mut filled.lock().unwrap_or_else(|e| e.into_inner()),
                    &v,
                    kind,
                ) {
                    break;
                }
            }
            if let Some(id) = id {
                jobs.finished(id);
            }
        });
        (tx, record)
    }

    /// Keeps `record` for polling under `id`.
    pub(crate) fn keep(&self, id: &str, record: Arc<Mutex<Record>>) {
        self.lock().records.insert(id.to_string(), record);
    }

    fn finished(&self, id: String) {
        let mut inner = self.lock();
        inner.finished.push_back(id);
        while inner.finished.len() > KEPT_FINISHED {
            if let Some(old) = inner.finished.pop_front() {
                inner.records.remove(&old);
            }
        }
    }

    /// Drops every record (the original's `/reset`) whose owner `keep` does not keep.
    pub fn clear(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        inner
            .records
            .retain(|_, r| keep(&r.lock().unwrap_or_else(|e| e.into_inner()).owner));
        let Inner { records, finished } = &mut *inner;
        finished.retain(|id| records.contains_key(id));
    }
}

/// Applies one frame of the original's dialect to a record; true when the job has ended.
fn fold(r: &mut Record, v: &Value, kind: Kind) -> bool {
    let now = Some(OffsetDateTime::now_utc());
    match v["type"].as_str().unwrap_or("") {
        "processing" => {
            r.status = "processing".into();
            r.started_at = now;
            false
        }
        "completed" | "generation_complete" => {
            r.status = "completed".into();
            r.completed_at = now;
            r.started_at = r.started_at.or(now);
            r.result = Some(match kind {
                Kind::Message => {
                    let result = &v["result"];
                    json!({
                        "response": result["completions"][0],
                        "thinking": result["thinking"][0],
                        "metadata": result["metadata"],
                    })
                }
                _ => v["result"].clone(),
            });
            true
        }
        "error" | "generation_error" => {
            r.status = "failed".into();
            r.completed_at = now;
            r.error = v["error"].as_str().map(String::from);
            true
        }
        "request_cancelled" | "interrupted" => {
            r.status = "cancelled".into();
            r.completed_at = now;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_fold_into_the_originals_states() {
        let mut r = Record::default();
        assert!(!fold(
            &mut r,
            &json!({"type": "queued", "request_id": "r-1"}),
            Kind::Analysis
        ));
        assert!(!fold(
            &mut r,
            &json!({"type": "processing"}),
            Kind::Analysis
        ));
        assert_eq!(r.status, "processing");
        let done =
            json!({"type": "completed", "result": {"data": [{"position": 0}], "metadata": {}}});
        assert!(fold(&mut r, &done, Kind::Analysis));
        assert_eq!(r.status, "completed");
        assert_eq!(r.result.as_ref().unwrap()["data"][0]["position"], 0);
        assert!(r.processing_time().unwrap() >= 0.0);

        let mut m = Record::default();
        let reply = json!({"type": "generation_complete",
            "result": {"completions": ["Paris."], "metadata": {"model_id": "m"}}});
        assert!(fold(&mut m, &reply, Kind::Message));
        assert_eq!(
            m.result.unwrap(),
            json!({"response": "Paris.", "thinking": null, "metadata": {"model_id": "m"}})
        );
        // gpt-oss's thinking comes beside its reply.
        let mut t = Record::default();
        let reply = json!({"type": "generation_complete", "result": {"completions": ["Paris."],
            "thinking": ["A capital; answer briefly."], "metadata": {}}});
        assert!(fold(&mut t, &reply, Kind::Message));
        let result = t.result.unwrap();
        assert_eq!(
            (&result["response"], &result["thinking"]),
            (&json!("Paris."), &json!("A capital; answer briefly."))
        );

        let mut f = Record::default();
        assert!(fold(
            &mut f,
            &json!({"type": "generation_error", "error": "boom"}),
            Kind::Generation
        ));
        assert_eq!(
            (f.status.as_str(), f.error.as_deref()),
            ("failed", Some("boom"))
        );
    }
}
