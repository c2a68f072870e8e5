//! One function per subcommand: load what it needs, run the engine, print the result.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lensd_core::LayerSpec;
use lensd_engine::generate::{generate, SamplingParams, TextStream};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::fit::{fit_tuned_lens, FitOptions, FitStage};
use lensd_engine::lens::Lens;
use lensd_engine::{Base, LoadOptions};
use serde_json::json;

use crate::render;
use crate::{Command, Format};

fn load(model: &Path, dtype: crate::Dtype) -> Result<Base> {
    if !model.exists() && model == Path::new(crate::DEMO_MODEL) {
        bail!(
            "the demo model {} is missing: run scripts/fetch-demo-model.sh, or pass --model",
            model.display()
        );
    }
    Ok(Base::load(
        model,
        LoadOptions {
            compute: dtype.into(),
        },
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
            let base = load(&model.model, dtype)?;
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
            format,
        } => {
            let text = match (text, text_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read the text file {}", f.display()))?,
                (None, None) => bail!("give the text to analyze with --text or --text-file"),
            };
            let spec: LayerSpec = layers.parse().map_err(anyhow::Error::msg)?;
            let base = load(&model.model, dtype)?;
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
            let opts = AnalyzeOptions { layers, top_k };
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
        Command::Bench {
            model,
            prompt_tokens,
            decode_tokens,
            lens_tokens,
            reps,
            format,
        } => {
            let opts = crate::bench::BenchOptions {
                prompt_tokens,
                decode_tokens,
                lens_tokens,
                reps,
            };
            load(&model.model, crate::Dtype::Stored)?;
            let r = crate::bench::run(&model.model, &opts)?;
            match format {
                Format::Json => print_json(&r),
                Format::Table => {
                    print!("{}", render::bench(&r));
                    Ok(())
                }
            }
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
            let base = load(&model.model, dtype)?;
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
