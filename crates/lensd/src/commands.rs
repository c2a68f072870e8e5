//! One function per subcommand: load what it needs, run the engine, print the result.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lensd::runtime::LocalEngine;
use lensd_core::config::{Budgets, Config, Resolved};
use lensd_core::{ByteSize, LayerSpec};
use lensd_engine::donor::Donor;
use lensd_engine::generate::{generate, SamplingParams, TextStream};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::fit::{fit_tuned_lens, FitOptions, FitStage};
use lensd_engine::lens::talkative::{ExplainOptions, TalkativeLens};
use lensd_engine::lens::Lens;
use lensd_engine::lora::Adapter;
use lensd_engine::probe::FileProbe;
use lensd_engine::{Base, DeviceSpec, LoadOptions};
use serde::Serialize;
use serde_json::json;

use crate::render;
use crate::{Command, Format};

/// Prints `value` as one JSON document or as the table `table` renders.
fn emit<T: serde::Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        Format::Json => print_json(value),
        Format::Table => {
            print!("{}", table(value));
            Ok(())
        }
    }
}

fn load(model: &Path, dtype: crate::Dtype) -> Result<Base> {
    load_on(model, dtype, DeviceSpec::Cpu)
}

/// [`load`] onto `device`.
fn load_on(model: &Path, dtype: crate::Dtype, device: DeviceSpec) -> Result<Base> {
    if !model.exists() && model == Path::new(crate::DEMO_MODEL) {
        bail!(
            "the demo model {} is missing: run scripts/fetch-demo-model.sh, or pass --model",
            model.display()
        );
    }
    let device = lensd_engine::device::open(device)?;
    Ok(Base::load_onto(
        model,
        LoadOptions {
            compute: dtype.into(),
        },
        &device,
        &mut |_, _| {},
    )?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Inspect { path, format } => {
            let r = lensd_engine::inspect::inspect(&path)?;
            match format {
                Format::Json => print_json(&r),
                Format::Table => {
                    print!("{}", render::inspect(&r));
                    Ok(())
                }
            }
        }
        Command::Tokenize {
            model,
            text,
            special,
            format,
        } => {
            let base = load(&model.model, crate::Dtype::Stored)?;
            let ids = base.tokenizer.encode(&text, special)?;
            let tokens: Vec<String> = ids.iter().map(|&i| base.tokenizer.token_text(i)).collect();
            match format {
                Format::Json => print_json(&json!({ "ids": ids, "tokens": tokens })),
                Format::Table => {
                    for (id, t) in ids.iter().zip(&tokens) {
                        println!("{id:>8}  {}", render::visible(t));
                    }
                    println!("{} tokens", ids.len());
                    Ok(())
                }
            }
        }
        Command::Generate {
            model,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            dtype,
            format,
        } => {
            let base = load_on(&model.model, dtype, model.device)?;
            let text = if chat {
                base.chat_prompt(&prompt)?
            } else {
                prompt
            };
            let ids = base.tokenizer.encode_prompt(&text, chat)?;
            let params = SamplingParams {
                max_tokens,
                temperature,
                top_k,
                top_p,
                seed,
            };
            let mut stream = TextStream::new(&base);
            let stream_out = format == Format::Table;
            let g = generate(&base, &ids, &params, &mut |id| {
                if stream_out {
                    if let Some(piece) = stream.push(id) {
                        print!("{piece}");
                        let _ = std::io::stdout().flush();
                    }
                }
                ControlFlow::Continue(())
            })?;
            match format {
                Format::Json => print_json(&json!({
                    "ids": g.ids,
                    "text": g.text,
                    "stop": g.stop,
                    "prompt_tokens": g.prompt_tokens,
                })),
                Format::Table => {
                    println!();
                    let n = g.ids.len();
                    eprintln!(
                        "[{} prompt tokens in {:.2}s; {n} generated in {:.2}s ({:.1} tok/s); stop: {:?}]",
                        g.prompt_tokens,
                        g.prefill_seconds,
                        g.decode_seconds,
                        n as f64 / g.decode_seconds.max(1e-9),
                        g.stop
                    );
                    Ok(())
                }
            }
        }
        Command::Analyze {
            model,
            lens,
            text,
            text_file,
            chat,
            special,
            top_k,
            layers,
            dtype,
            unembed,
            format,
        } => {
            let text = match (text, text_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read the text file {}", f.display()))?,
                (None, None) => bail!("give the text to analyze with --text or --text-file"),
            };
            let spec: LayerSpec = layers.parse().map_err(anyhow::Error::msg)?;
            let base = load_on(&model.model, dtype, model.device)?;
            let layers = spec
                .resolve(base.config().n_layers)
                .map_err(anyhow::Error::msg)?;
            let text = if chat { base.chat_prompt(&text)? } else { text };
            let ids = base.tokenizer.encode_prompt(&text, special || chat)?;
            let lenses = lens
                .iter()
                .map(|l| {
                    Lens::open(l, base.config()).with_context(|| format!("cannot use lens `{l}`"))
                })
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Lens> = lenses.iter().collect();
            let opts = AnalyzeOptions {
                unembed,
                ..AnalyzeOptions::new(layers, top_k)
            };
            let res = analyze(
                &base,
                &refs,
                &ids,
                &opts,
                &mut |_| ControlFlow::Continue(()),
            )?;
            match format {
                Format::Json if res.len() == 1 => print_json(&res[0]),
                Format::Json => print_json(&res),
                Format::Table => {
                    for a in &res {
                        print!("{}", render::analysis(a));
                    }
                    Ok(())
                }
            }
        }
        Command::Explain {
            model,
            lens,
            donor,
            text,
            text_file,
            chat,
            best_of_k,
            temperature,
            seed,
            no_salience,
            no_kl,
            format,
        } => {
            let text = match (text, text_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read the text file {}", f.display()))?,
                (None, None) => bail!("give the text to explain with --text or --text-file"),
            };
            let base = load(&model.model, crate::Dtype::F32)?;
            let talkative = TalkativeLens::load(&lens, base.config())
                .with_context(|| format!("cannot use the talkative lens {}", lens.display()))?;
            // A LoRA adapter applies to the base; a full model (a fine-tune of the base) is
            // loaded beside it, in the same dtype.
            let (adapter, full) = match donor.as_deref() {
                None => (None, None),
                Some(d) => match FileProbe::new().donor_kind(d) {
                    Ok(lensd_core::config::DonorKind::Model) => (
                        None,
                        Some(load(d, crate::Dtype::F32).context("cannot use the donor")?),
                    ),
                    _ => (
                        Some(Adapter::load(d, base.config()).context("cannot use the donor")?),
                        None,
                    ),
                },
            };
            let text = if chat { base.chat_prompt(&text)? } else { text };
            let ids = base.tokenizer.encode_prompt(&text, chat)?;
            let positions: Vec<usize> = (0..ids.len()).collect();
            let opts = ExplainOptions {
                best_of_k,
                temperature,
                seed,
                salience: !no_salience,
                kl: !no_kl,
                batch_positions: (32 / best_of_k.max(1)).max(1),
            };
            let mut done = 0;
            let rows = talkative.explain(
                &base.model,
                &ids,
                &positions,
                match (&full, &adapter) {
                    (Some(m), _) => Some(Donor::Model(&m.model)),
                    (None, a) => a.as_ref().map(Donor::Adapter),
                },
                base.space_id()?,
                &opts,
                &mut |rows| {
                    done += rows.len();
                    eprint!("\rexplained {done}/{}   ", ids.len());
                    true
                },
            )?;
            eprintln!();
            let rows: Vec<lensd_core::analysis::Explanation> = base
                .describe(&talkative, rows)
                .into_iter()
                .map(Into::into)
                .collect();
            match format {
                Format::Json => print_json(&rows),
                Format::Table => {
                    print!("{}", render::explanations(&rows));
                    Ok(())
                }
            }
        }
        Command::CheckConfig {
            file,
            format,
            device,
        } => check_config(&file, format, &device.0),
        Command::Serve {
            config,
            device,
            addr,
            data,
            keys,
            allow_origins,
            max_text_chars,
            max_tokens,
            unembed,
            max_new_tokens,
            rate_per_minute,
            max_connections,
            retention_days,
            users_may_preload,
            shutdown_grace,
            web_dir,
            http,
        } => {
            let limits = lensd_server::limits::Limits {
                max_text_chars,
                max_new_tokens: max_new_tokens as usize,
                requests_per_minute: rate_per_minute,
                max_connections,
                shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
                ..Default::default()
            };
            let options = crate::serve::ServeOptions {
                config,
                devices: device.0,
                addr,
                data,
                keys,
                allow_origins,
                limits,
                retention_days,
                users_may_preload,
                max_tokens,
                unembed,
                web_dir,
                http,
            };
            tokio::runtime::Runtime::new()?.block_on(crate::serve::run(options))
        }
        Command::BenchSched {
            model,
            clients,
            requests,
            reps,
            format,
        } => {
            load(&model.model, crate::Dtype::Stored)?;
            let report = crate::bench_sched::run(&model.model, clients, requests, reps)?;
            match format {
                Format::Json => print_json(&report),
                Format::Table => {
                    print!("{}", render::sched(&report.rows));
                    println!(
                        "\ncancelling a running analysis on the demo model: {:.0} ms to its cancelled event",
                        report.cancel_ms
                    );
                    Ok(())
                }
            }
        }
        Command::BenchMemory {
            model,
            lens,
            one,
            format,
        } => {
            if let Some(layout) = one {
                let layout = crate::bench_memory::parse_layout(&layout)?;
                let runtime = tokio::runtime::Runtime::new()?;
                let m =
                    runtime.block_on(crate::bench_memory::measure(&model.model, &lens, layout))?;
                return print_json(&m);
            }
            load(&model.model, crate::Dtype::Stored)?;
            let model = std::fs::canonicalize(&model.model)?;
            let lens = std::fs::canonicalize(&lens)
                .with_context(|| format!("cannot find the lens {}", lens.display()))?;
            let rows = crate::bench_memory::run(&model, &lens)?;
            emit(format, &rows, |r| render::memory(r))
        }
        Command::BenchWs {
            url,
            pid,
            clients,
            messages,
            submits,
            model_id,
            timeout,
            format,
        } => {
            let opts = crate::bench_ws::WsOptions {
                url,
                pid,
                clients,
                messages,
                submits,
                model: model_id,
                timeout: std::time::Duration::from_secs(timeout),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let r = runtime.block_on(crate::bench_ws::run(opts))?;
            emit(format, &r, render::ws)
        }
        Command::Soak {
            url,
            pid,
            minutes,
            clients,
            sample_seconds,
            seed,
            model_ids,
            admin_key,
            stall_seconds,
            idle_seconds,
            hostile,
            header_timeout,
            ws_output_timeout,
            out,
            format,
        } => {
            let seconds = |s: f64| std::time::Duration::from_secs_f64(s.max(0.0));
            let opts = crate::soak::SoakOptions {
                url,
                pid,
                duration: std::time::Duration::from_secs_f64(minutes.max(0.0) * 60.0),
                clients: clients.max(1),
                sample_every: std::time::Duration::from_secs_f64(sample_seconds.max(0.1)),
                seed,
                models: model_ids,
                admin_key,
                stall: std::time::Duration::from_secs(stall_seconds),
                idle_timeout: std::time::Duration::from_secs(idle_seconds),
                hostile,
                header_timeout: seconds(header_timeout),
                ws_output_timeout: seconds(ws_output_timeout),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let r = runtime.block_on(crate::soak::run(opts))?;
            if let Some(path) = out {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            emit(format, &r, crate::soak::table)?;
            if !r.passed {
                bail!("the soak failed: {}", r.failures.join("; "));
            }
            Ok(())
        }
        Command::BenchSwitch {
            model,
            corpus,
            reps,
            format,
        } => {
            load(&model.model, crate::Dtype::Stored)?;
            // The allocator as `lensd serve` sets it, whose switches this measures: a lens's
            // translators (1.3 MiB each for the demo) are then mapped blocks of their own.
            lensd::runtime::map_large_blocks();
            let runtime = tokio::runtime::Runtime::new()?;
            let rows = runtime.block_on(crate::bench_switch::run(&model.model, &corpus, reps))?;
            match format {
                Format::Json => print_json(&rows),
                Format::Table => {
                    print!("{}", render::switches(&rows));
                    Ok(())
                }
            }
        }
        Command::Bench {
            model,
            prompt_tokens,
            decode_tokens,
            lens_tokens,
            lens,
            only,
            dtype,
            unembed,
            reps,
            format,
        } => {
            let opts = crate::bench::BenchOptions {
                prompt_tokens,
                decode_tokens,
                lens_tokens,
                reps,
                unembed,
            };
            if let Some(part) = only {
                let t = crate::bench::part(&model.model, part, dtype.into(), &opts)?;
                return print_json(&t);
            }
            load(&model.model, crate::Dtype::Stored)?;
            let r = crate::bench::run(&model.model, lens.as_deref(), &opts)?;
            match format {
                Format::Json => print_json(&r),
                Format::Table => {
                    print!("{}", render::bench(&r));
                    Ok(())
                }
            }
        }
        Command::InitTalkative {
            model,
            out,
            layer,
            t_text,
            patched_layers,
            output_layer,
        } => {
            let base = load(&model.model, crate::Dtype::F32)?;
            let name = model
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec = lensd_engine::lens::talkative::UntrainedSpec {
                layer,
                t_text,
                patched_layers,
                output_layer: output_layer.unwrap_or(layer),
                ..Default::default()
            };
            lensd_engine::lens::talkative::write_untrained(&base, &name, &out, &spec)?;
            eprintln!("wrote an untrained talkative lens to {}", out.display());
            Ok(())
        }
        Command::FitLens {
            model,
            corpus,
            out,
            seq_len,
            max_tokens,
            holdout_tokens,
            ridge,
            dtype,
            format,
        } => {
            let text = std::fs::read_to_string(&corpus)
                .with_context(|| format!("cannot read the corpus {}", corpus.display()))?;
            let base = load_on(&model.model, dtype, model.device)?;
            let ids = base.tokenizer.encode(&text, false)?;
            eprintln!("corpus: {} characters, {} tokens", text.len(), ids.len());
            let opts = FitOptions {
                seq_len,
                max_train_tokens: max_tokens,
                holdout_tokens,
                ridge,
                ..FitOptions::default()
            };
            let name = model
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut last = None;
            let (lens, report) =
                fit_tuned_lens(&base, &ids, &opts, &name, &mut |stage, done, total| {
                    let label = match stage {
                        FitStage::Collect => "collecting hidden states",
                        FitStage::Solve => "solving",
                        FitStage::Evaluate => "evaluating on held-out text",
                    };
                    if last != Some(stage) || done == total || done % 8 == 0 {
                        eprint!("\r{label}: {done}/{total}   ");
                        if done == total {
                            eprintln!();
                        }
                    }
                    last = Some(stage);
                })?;
            lens.save(&out)?;
            let report_path = out.join("fit_report.json");
            std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("cannot write {}", report_path.display()))?;
            match format {
                Format::Json => print_json(&report),
                Format::Table => {
                    print!("{}", render::fit_report(&report));
                    println!("wrote {}", out.display());
                    Ok(())
                }
            }
        }
    }
}

/// `check-config`: parse, then (when the document itself is sound) check the files it names.
fn check_config(file: &Path, format: Format, devices: &[DeviceSpec]) -> Result<()> {
    let engine = LocalEngine::on(devices)?;
    let gpus = devices.iter().any(|d| *d != DeviceSpec::Cpu);
    let (checked, report) =
        lensd::service::read_config(file, &FileProbe::new().on_gpus(gpus), &engine.device_list())?;
    let summary = checked.map(|c| ConfigSummary::new(&c.config, &c.resolved, c.budgets));
    let errors = report.errors().count();
    let warnings = report.issues.len() - errors;
    match format {
        Format::Json => {
            let mut v = json!({ "issues": report.issues, "errors": errors, "warnings": warnings });
            if let Some(s) = &summary {
                if let (Some(out), serde_json::Value::Object(fields)) =
                    (v.as_object_mut(), serde_json::to_value(s)?)
                {
                    out.extend(fields);
                }
            }
            print_json(&v)?;
        }
        Format::Table => {
            print!("{report}");
            if let Some(s) = &summary {
                if !report.issues.is_empty() {
                    println!();
                }
                print!("{s}");
            }
            println!(
                "{errors} error{}, {warnings} warning{}",
                plural(errors),
                plural(warnings)
            );
        }
    }
    if errors > 0 {
        bail!("{} has {errors} error{}", file.display(), plural(errors));
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The configured budgets; the machine's memory is read only when one of them is unset.

#[derive(Serialize)]
struct ConfigSummary {
    groups: usize,
    models: usize,
    /// Distinct bases by content, full donors included: groups and donors naming the same
    /// weights share one entry.
    bases: Vec<BaseSummary>,
    /// Distinct lens files by content.
    lenses: Vec<LensSummary>,
    budgets: Budgets,
}

#[derive(Serialize)]
struct BaseSummary {
    content_id: String,
    path: String,
    n_layers: usize,
    d_model: usize,
    resident_bytes: u64,
    groups: Vec<String>,
    /// Models whose full donor (`different_activations_orig_path`) this base is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    donor_for: Vec<String>,
}

#[derive(Serialize)]
struct LensSummary {
    content_id: String,
    kind: &'static str,
    path: String,
    bytes: u64,
    models: Vec<String>,
}

impl ConfigSummary {
    fn new(config: &Config, resolved: &Resolved, budgets: Budgets) -> Self {
        let mut bases: Vec<BaseSummary> = Vec::new();
        let mut lenses: Vec<LensSummary> = Vec::new();
        for g in &config.groups {
            if let Some(b) = resolved.bases.get(&g.id) {
                match bases.iter_mut().find(|s| s.content_id == b.content_id) {
                    Some(s) => s.groups.push(g.id.clone()),
                    None => bases.push(BaseSummary {
                        content_id: b.content_id.clone(),
                        path: g.base_path.display().to_string(),
                        n_layers: b.n_layers,
                        d_model: b.d_model,
                        resident_bytes: b.resident_bytes,
                        groups: vec![g.id.clone()],
                        donor_for: Vec::new(),
                    }),
                }
            }
            for m in &g.models {
                if let (Some(d), Some(path)) = (resolved.donors.get(&m.id), &m.donor) {
                    match bases.iter_mut().find(|s| s.content_id == d.content_id) {
                        Some(s) => s.donor_for.push(m.id.clone()),
                        None => bases.push(BaseSummary {
                            content_id: d.content_id.clone(),
                            path: path.display().to_string(),
                            n_layers: d.n_layers,
                            d_model: d.d_model,
                            resident_bytes: d.resident_bytes,
                            groups: Vec::new(),
                            donor_for: vec![m.id.clone()],
                        }),
                    }
                }
            }
            for m in &g.models {
                let (Some(l), Some(path)) = (resolved.lenses.get(&m.id), &m.lens_path) else {
                    continue;
                };
                match lenses.iter_mut().find(|s| s.content_id == l.content_id) {
                    Some(s) => s.models.push(m.id.clone()),
                    None => lenses.push(LensSummary {
                        content_id: l.content_id.clone(),
                        kind: m.lens.as_str(),
                        path: path.display().to_string(),
                        bytes: l.bytes,
                        models: vec![m.id.clone()],
                    }),
                }
            }
        }
        ConfigSummary {
            groups: config.groups.len(),
            models: config.groups.iter().map(|g| g.models.len()).sum(),
            bases,
            lenses,
            budgets,
        }
    }
}

impl std::fmt::Display for ConfigSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} groups, {} models", self.groups, self.models)?;
        writeln!(f, "bases ({} distinct):", self.bases.len())?;
        for b in &self.bases {
            let mut users = Vec::new();
            if !b.groups.is_empty() {
                users.push(format!("groups {}", b.groups.join(", ")));
            }
            if !b.donor_for.is_empty() {
                users.push(format!("donor of {}", b.donor_for.join(", ")));
            }
            writeln!(
                f,
                "  {:<30}  {:>10}  {} layers, d_model {}  {}  ({})",
                b.content_id,
                ByteSize(b.resident_bytes).to_string(),
                b.n_layers,
                b.d_model,
                b.path,
                users.join("; ")
            )?;
        }
        writeln!(f, "lens files ({} distinct):", self.lenses.len())?;
        for l in &self.lenses {
            writeln!(
                f,
                "  {}  {:>10}  {}  {}  (models {})",
                l.content_id,
                ByteSize(l.bytes).to_string(),
                l.kind,
                l.path,
                l.models.join(", ")
            )?;
        }
        writeln!(
            f,
            "budgets: device {}, host {}",
            ByteSize(self.budgets.device),
            ByteSize(self.budgets.host)
        )
    }
}
