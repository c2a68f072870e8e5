//! One job on a device's compute thread: an analysis (every lens that fills layers ×
//! positions from one forward pass, then each talkative lens's explanations) or a generation.

use std::sync::Arc;

use lensd_core::analysis::{Analysis, Explanation, RowsChunk, TokenInfo};
use lensd_core::engine::ComputeSink;
use lensd_core::registry::BaseKey;
use lensd_core::residency::{DeviceId, Place};
use lensd_core::work::{ComputeEvent, Job, JobFailure, JobOutput, Remaining};
use lensd_engine::donor::Donor;
use lensd_engine::generate::{generate_with, SamplingParams, StopReason, TextStream};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::talkative::ExplainOptions;
use lensd_engine::lens::Lens;
use lensd_engine::lora::Adapter;
use lensd_engine::Base;

use super::{Held, LocalEngine};

/// Most tokens of the logit lens named beside an explanation, as the original named them.
const LOGIT_LENS_TOP: usize = 10;

impl LocalEngine {
    /// A loaded base (a group's or a full donor's) at `place`, which the job's lease keeps.
    fn loaded_base(&self, key: &BaseKey, place: Place) -> Result<Arc<Base>, JobFailure> {
        self.base_at(key, place).ok_or_else(|| {
            JobFailure::Engine(format!(
                "base {} is not loaded at {place}; the job ran without its lease",
                key.0
            ))
        })
    }

    /// Runs a job on `device`'s compute thread, with the copies of its base, donor and lenses
    /// that the job's lease keeps there.
    pub(super) fn run_blocking(
        &self,
        device: DeviceId,
        job: Job,
        mut events: ComputeSink,
    ) -> Result<JobOutput, JobFailure> {
        let at = Place::Device(device);
        match job {
            Job::Analyze {
                base,
                lenses,
                text,
                layers,
                top_k,
                explain,
            } => {
                let base = self.loaded_base(&base, at)?;
                let mut held = Vec::with_capacity(lenses.len());
                let mut donors = Vec::with_capacity(lenses.len());
                for l in &lenses {
                    held.push(match &l.lens {
                        Some(k) => self.lens_at(k, at).ok_or_else(|| {
                            JobFailure::Engine(format!("lens {} is not loaded", k.0))
                        })?,
                        None => Arc::new(Held::Cells(Lens::Logit)),
                    });
                    donors.push(
                        l.donor
                            .as_ref()
                            .map(|d| self.loaded_base(d, at))
                            .transpose()?,
                    );
                }
                let (rendered, special) = base.render(&text, false).map_err(failure)?;
                let ids = base
                    .tokenizer
                    .encode_prompt(&rendered, special)
                    .map_err(failure)?;
                self.check_tokens(ids.len())?;
                // Talkative lenses explain every position, or those of the last turns asked for.
                let first = match explain.last_messages {
                    Some(n) => base.last_turns_start(&text, &ids, n).map_err(failure)?,
                    None => 0,
                };
                let positions: Vec<usize> = (first..ids.len()).collect();
                let layers = layers
                    .resolve(base.config().n_layers)
                    .map_err(JobFailure::Invalid)?;
                let tokens: Vec<TokenInfo> = ids
                    .iter()
                    .map(|&id| TokenInfo {
                        id,
                        text: base.tokenizer.token_text(id),
                    })
                    .collect();
                if events(ComputeEvent::Tokens(tokens.clone())).is_break() {
                    return Err(JobFailure::Cancelled);
                }
                // Lenses that fill layers × positions share one forward pass; each talkative
                // lens then explains every position. Progress counts cells and explained
                // positions together; the time left is estimated per kind, since a position
                // costs far more than a cell.
                let cell_lenses: Vec<(usize, &Lens)> = held
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| match h.as_ref() {
                        Held::Cells(l) => Some((i, l)),
                        Held::Talkative(..) => None,
                    })
                    .collect();
                let talkative = held.len() - cell_lenses.len();
                let cells_total = (cell_lenses.len() * layers.len() * ids.len()) as u64;
                let total = cells_total + (talkative * positions.len()) as u64;
                let mut analyses: Vec<Option<Analysis>> = vec![None; held.len()];
                let positions_total = (talkative * positions.len()) as u64;
                if !cell_lenses.is_empty() {
                    let refs: Vec<&Lens> = cell_lenses.iter().map(|(_, l)| *l).collect();
                    let opts = AnalyzeOptions {
                        unembed: self.unembed(),
                        ..AnalyzeOptions::new(layers, top_k)
                    };
                    let found = analyze(&base, &refs, &ids, &opts, &mut |p| {
                        let mut chunk = p.chunk.clone();
                        chunk.lens = cell_lenses[chunk.lens].0;
                        // Cells cost alike; explanations still to come have no rate yet.
                        let remaining = if positions_total > 0 {
                            Remaining::Unknown
                        } else {
                            Remaining::AtRate
                        };
                        events(ComputeEvent::Rows {
                            chunk,
                            done: p.rows_done as u64,
                            total,
                            remaining,
                        })
                    })
                    .map_err(failure)?;
                    for ((i, _), a) in cell_lenses.iter().zip(found) {
                        analyses[*i] = Some(a);
                    }
                }
                let mut done = cells_total;
                let mut explained = 0u64;
                let explaining = std::time::Instant::now();
                let space = base.space_id().map_err(failure)?;
                let opts = ExplainOptions {
                    best_of_k: explain.best_of_k,
                    temperature: explain.temperature,
                    seed: explain.seed,
                    salience: explain.salience,
                    kl: explain.kl,
                    batch_positions: explain
                        .batch_positions
                        .unwrap_or(32 / explain.best_of_k)
                        .max(1),
                };
                for (i, h) in held.iter().enumerate() {
                    let Held::Talkative(talkative) = h.as_ref() else {
                        continue;
                    };
                    let (lens, adapter) = talkative.as_ref();
                    let donor = donor_of(donors[i].as_deref(), adapter.as_ref());
                    // The logit lens's top tokens at the lens's layer, per position.
                    let logit_tops: Vec<Vec<String>> = if explain.logit_lens_top {
                        let opts = AnalyzeOptions::new(vec![lens.tap()], LOGIT_LENS_TOP);
                        let found = analyze(&base, &[&Lens::Logit], &ids, &opts, &mut |_| {
                            std::ops::ControlFlow::Continue(())
                        })
                        .map_err(failure)?;
                        found
                            .into_iter()
                            .next()
                            .and_then(|a| a.layers.into_iter().next())
                            .map(|row| {
                                row.positions
                                    .into_iter()
                                    .map(|c| c.top.into_iter().map(|t| t.token).collect())
                                    .collect()
                            })
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let mut explanations = Vec::with_capacity(positions.len());
                    lens.explain(
                        &base.model,
                        &ids,
                        &positions,
                        donor,
                        space,
                        &opts,
                        &mut |rows| {
                            let named: Vec<Explanation> = base
                                .describe(lens, rows.to_vec())
                                .into_iter()
                                .map(|e| {
                                    let mut e = Explanation::from(e);
                                    // As many tokens as the explanation has, at most ten.
                                    let n = e.explanation_ids.len().clamp(1, LOGIT_LENS_TOP);
                                    e.logit_lens_top = logit_tops.get(e.position).map(|top| {
                                        top.iter().take(n).cloned().collect::<Vec<_>>().join(" ")
                                    });
                                    e
                                })
                                .collect();
                            done += rows.len() as u64;
                            explained += rows.len() as u64;
                            // Positions so far tell the rate of those left.
                            let per = explaining.elapsed().as_secs_f64() / explained as f64;
                            let left = (positions_total - explained) as f64 * per * 1e3;
                            let chunk = RowsChunk {
                                lens: i,
                                first_position: rows.first().map_or(0, |r| r.position),
                                layers: Vec::new(),
                                explanations: named.clone(),
                            };
                            explanations.extend(named);
                            events(ComputeEvent::Rows {
                                chunk,
                                done,
                                total,
                                remaining: Remaining::Ms(left as u64),
                            })
                            .is_continue()
                        },
                    )
                    .map_err(failure)?;
                    analyses[i] = Some(Analysis {
                        lens: String::new(),
                        tokens: tokens.clone(),
                        layers: Vec::new(),
                        explanations,
                    });
                }
                // Results name the models the request named.
                let analyses = analyses
                    .into_iter()
                    .zip(&lenses)
                    .map(|(a, l)| {
                        let mut a = a.expect("every lens ran");
                        a.lens = l.model.clone();
                        a
                    })
                    .collect();
                Ok(JobOutput::Analysis { analyses })
            }
            Job::Generate {
                base,
                lens,
                donor,
                prompt,
                sampling,
            } => {
                let base = self.loaded_base(&base, at)?;
                // A talkative lens's donor generates: the model the lens explains.
                let held = match &lens {
                    Some(k) => Some(self.lens_at(k, at).ok_or_else(|| {
                        JobFailure::Engine(format!("lens {} is not loaded", k.0))
                    })?),
                    None => None,
                };
                let full = donor
                    .as_ref()
                    .map(|d| self.loaded_base(d, at))
                    .transpose()?;
                let adapter = held.as_deref().and_then(|h| match h {
                    Held::Talkative(t) => t.1.as_ref(),
                    Held::Cells(_) => None,
                });
                let donor = donor_of(full.as_deref(), adapter);
                let (prompt, special) = base.render(&prompt, true).map_err(failure)?;
                let ids = base
                    .tokenizer
                    .encode_prompt(&prompt, special)
                    .map_err(failure)?;
                self.check_tokens(ids.len())?;
                let params = SamplingParams {
                    max_tokens: sampling.max_tokens,
                    temperature: sampling.temperature,
                    top_k: sampling.top_k,
                    top_p: sampling.top_p,
                    seed: sampling.seed,
                };
                let mut stream = TextStream::new(&base);
                let mut done = 0u64;
                let total = sampling.max_tokens as u64;
                let g = generate_with(&base, &ids, &params, donor, &mut |id| {
                    done += 1;
                    let text = stream.push(id).unwrap_or_default();
                    events(ComputeEvent::Token {
                        id,
                        text,
                        done,
                        total,
                    })
                })
                .map_err(failure)?;
                if g.stop == StopReason::Cancelled {
                    return Err(JobFailure::Cancelled);
                }
                let stop = match g.stop {
                    StopReason::Stop => "stop",
                    StopReason::MaxTokens => "max_tokens",
                    StopReason::Cancelled => "cancelled",
                };
                let (reply, thinking) = match base.split_reply(&prompt, &g.text) {
                    Some((reply, thinking)) => (Some(reply), thinking),
                    None => (None, None),
                };
                Ok(JobOutput::Generation {
                    prompt,
                    ids: g.ids,
                    text: g.text,
                    stop: stop.into(),
                    reply,
                    thinking,
                })
            }
        }
    }
}

/// A model's donor: its full donor model when it has one, else its lens's LoRA adapter.
fn donor_of<'a>(full: Option<&'a Base>, adapter: Option<&'a Adapter>) -> Option<Donor<'a>> {
    match (full, adapter) {
        (Some(b), _) => Some(Donor::Model(&b.model)),
        (None, a) => a.map(Donor::Adapter),
    }
}

fn failure(e: lensd_engine::EngineError) -> JobFailure {
    match e {
        lensd_engine::EngineError::Cancelled => JobFailure::Cancelled,
        lensd_engine::EngineError::Input(m) => JobFailure::Invalid(m),
        other => JobFailure::Engine(other.to_string()),
    }
}
