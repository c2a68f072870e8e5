//! Plain-text renderings of results for `--format table`.

use std::fmt::Write;

use lensd_core::analysis::Explanation;
use lensd_core::Analysis;
use lensd_engine::inspect::InspectReport;
use lensd_engine::lens::fit::FitReport;

use crate::bench::BenchReport;
use crate::bench_memory::MemoryRow;
use crate::bench_sched::SchedRow;
use crate::bench_switch::SwitchRow;
use crate::bench_ws::WsReport;

/// Widest a grid cell's token may be, in characters.
const CELL: usize = 8;
/// Widest a grid line may be before positions wrap into another block.
const LINE: usize = 132;

/// Makes whitespace and control characters visible in a token.
pub fn visible(t: &str) -> String {
    t.chars()
        .map(|c| match c {
            ' ' => '␣',
            '\n' => '⏎',
            '\t' => '⇥',
            c if c.is_control() => '·',
            c => c,
        })
        .collect()
}

fn clip(s: &str, n: usize) -> String {
    let v: Vec<char> = s.chars().collect();
    if v.len() <= n {
        s.to_string()
    } else {
        let mut c: String = v[..n - 1].iter().collect();
        c.push('…');
        c
    }
}

fn pad(s: &str, n: usize) -> String {
    let len = s.chars().count();
    format!("{s}{}", " ".repeat(n.saturating_sub(len)))
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

pub fn inspect(r: &InspectReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} ({}, {})", r.path, r.format, r.architecture);
    if let Some(c) = &r.config {
        let _ = writeln!(
            s,
            "layers {}  width {}  heads {}/{} kv  head dim {}  ffn {}  vocab {}  context {}  rope base {} ({:?})  tied head: {}",
            c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size,
            c.max_positions, c.rope.theta, c.rope_style, c.tied_embeddings
        );
        let _ = writeln!(
            s,
            "family {}: {}",
            c.family.name(),
            family_options(c).join(", ")
        );
    }
    if let Some(u) = &r.unsupported {
        let _ = writeln!(s, "cannot run: {u}");
    }
    let _ = writeln!(
        s,
        "tokenizer: {}  chat template: {}",
        r.tokenizer.as_deref().unwrap_or("none"),
        if r.chat_template { "yes" } else { "no" }
    );
    let _ = writeln!(
        s,
        "\n{:<10} {:>7} {:>12} {:>14}  dtypes",
        "kind", "tensors", "bytes", "parameters"
    );
    for k in &r.kinds {
        let dtypes: Vec<String> = k.dtypes.iter().map(|(d, n)| format!("{n}×{d}")).collect();
        let _ = writeln!(
            s,
            "{:<10} {:>7} {:>12} {:>14}  {}",
            k.kind,
            k.tensors,
            bytes(k.bytes),
            k.elements,
            dtypes.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "{:<10} {:>7} {:>12}",
        "total",
        r.tensor_count,
        bytes(r.tensor_bytes)
    );
    let _ = writeln!(
        s,
        "\nfile: {} ({} bytes)",
        bytes(r.file_bytes),
        r.file_bytes
    );
    let _ = writeln!(
        s,
        "resident when loaded: stored dtype {}, f32 {}, bf16 {}",
        bytes(r.resident_stored),
        bytes(r.resident_f32),
        bytes(r.resident_bf16)
    );
    if r.resident_f32_widened != r.resident_f32 {
        let _ = writeln!(
            s,
            "(f32 keeps the quantized matrices as stored on the CPU; on a GPU it widens them: {})",
            bytes(r.resident_f32_widened)
        );
    }
    s
}

/// The options a family sets, in words, for `lensd inspect`.
fn family_options(c: &lensd_engine::ModelConfig) -> Vec<String> {
    use lensd_engine::config::{Activation, RopeScaling};
    let mut o = vec![match (&c.moe, c.activation) {
        (Some(m), _) => format!(
            "{} experts, {} per token (clamped SwiGLU, limit {})",
            m.n_experts, m.top_k, m.limit
        ),
        (None, Activation::Silu) => "SiLU-gated MLP".to_string(),
        (None, Activation::GeluTanh) => "GeGLU (tanh GELU)".to_string(),
    }];
    match &c.rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => o.push(format!("linear rope scaling ×{factor}")),
        RopeScaling::Llama3 { factor, .. } => o.push(format!("llama3 rope scaling ×{factor}")),
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            ..
        } => o.push(format!(
            "yarn rope scaling ×{factor} from {original_max_positions} positions"
        )),
    }
    if c.attn_sinks {
        o.push("attention sinks".into());
    }
    if let Some(r) = &c.sliding_rope {
        o.push(format!("sliding layers' rope base {}", r.theta));
    }
    if c.embed_scale != 1.0 {
        o.push(format!("embeddings ×{}", c.embed_scale));
    }
    if c.qkv_bias {
        o.push("q/k/v biases".into());
    }
    if c.o_bias {
        o.push("output bias".into());
    }
    if c.qk_norm {
        o.push("per-head q/k norm".into());
    }
    if c.sandwich_norms {
        o.push("norms after attention and MLP".into());
    }
    if let Some(cap) = c.attn_softcap {
        o.push(format!("attention soft-cap {cap}"));
    }
    if let Some(cap) = c.final_softcap {
        o.push(format!("final soft-cap {cap}"));
    }
    if let Some(w) = c.sliding_window {
        let n = c.sliding_layers.iter().filter(|&&s| s).count();
        o.push(format!(
            "sliding window {w} on {n} of {} layers",
            c.n_layers
        ));
    }
    o.push(format!("query scale {:.5}", c.query_scale));
    o
}

/// A layers × positions grid with the lens's top-1 token in each cell, followed by the mean
/// KL to the final output per layer.
pub fn analysis(a: &Analysis) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lens: {}  ({} tokens, {} layers; cell = top-1 token, kl = mean KL(final ‖ lens) in nats)",
        a.lens,
        a.tokens.len(),
        a.layers.len()
    );
    let per_block = ((LINE - 7) / (CELL + 1)).max(1);
    let kl = a.mean_kl_per_layer();
    let n = a.tokens.len();
    for start in (0..n).step_by(per_block) {
        let end = (start + per_block).min(n);
        let mut head = format!("{:>5} │", "layer");
        for t in &a.tokens[start..end] {
            head.push_str(&pad(&clip(&visible(&t.text), CELL), CELL + 1));
        }
        if end == n {
            head.push_str("│    kl");
        }
        let _ = writeln!(s, "{}", head.trim_end());
        let _ = writeln!(s, "{}", "─".repeat(head.trim_end().chars().count()));
        for (row, (_, k)) in a.layers.iter().zip(&kl) {
            let mut line = format!("{:>5} │", row.layer);
            for c in &row.positions[start..end] {
                let tok = c.top.first().map(|t| visible(&t.token)).unwrap_or_default();
                line.push_str(&pad(&clip(&tok, CELL), CELL + 1));
            }
            if end == n {
                let _ = write!(line, "│{k:>6.2}");
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
        s.push('\n');
    }
    s
}

/// A talkative lens's explanations: one line per position with its scores.
pub fn explanations(rows: &[Explanation]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4}  {:<12} {:>8} {:>10} {:>8}  explanation (salience per word)",
        "pos", "token", "rel rmse", "mse", "kl"
    );
    for e in rows {
        let kl = e
            .kl_divergence
            .map_or_else(|| "—".to_string(), |k| format!("{k:.3}"));
        let words: Vec<String> = e
            .explanation_structured
            .iter()
            .enumerate()
            .map(|(j, w)| match e.token_salience.get(j) {
                Some(v) => format!("{}({v:+.2})", visible(w)),
                None => visible(w),
            })
            .collect();
        let _ = writeln!(
            s,
            "{:>4}  {:<12} {:>8.3} {:>10.4} {:>8}  {}",
            e.position,
            clip(&visible(&e.token), 12),
            e.relative_rmse,
            e.mse,
            kl,
            words.join(" ")
        );
    }
    s
}

pub fn fit_report(r: &FitReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fitted on {} tokens, compared on {} held-out tokens (collect {:.1}s, solve {:.1}s, evaluate {:.1}s)",
        r.train_tokens, r.holdout_tokens, r.collect_seconds, r.solve_seconds, r.eval_seconds
    );
    let _ = writeln!(
        s,
        "{:>5}  {:>10} {:>10}  {:>10} {:>10}",
        "layer", "KL logit", "KL tuned", "top1 logit", "top1 tuned"
    );
    for l in &r.layers {
        let _ = writeln!(
            s,
            "{:>5}  {:>10.3} {:>10.3}  {:>10.3} {:>10.3}",
            l.layer, l.kl_logit, l.kl_tuned, l.top1_logit, l.top1_tuned
        );
    }
    let (kl, kt) = r.mean_kl();
    let _ = writeln!(s, "{:>5}  {kl:>10.3} {kt:>10.3}", "mean");
    s
}

pub fn bench(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({} threads; prefill {} tokens, decode {} tokens, lens {} tokens × all layers; median of {})",
        r.model, r.threads, r.prompt_tokens, r.decode_tokens, r.lens_tokens, r.reps
    );
    let _ = writeln!(
        s,
        "{:<7} {:>8} {:>12} {:>12} {:>14} {:>12}",
        "dtype", "load s", "prefill t/s", "decode t/s", "lens cells/s", "weights"
    );
    for d in &r.results {
        let _ = writeln!(
            s,
            "{:<7} {:>8.3} {:>12.1} {:>12.1} {:>14.0} {:>12}",
            d.dtype,
            d.load_seconds,
            d.prefill_tokens_per_s,
            d.decode_tokens_per_s,
            d.lens_cells_per_s,
            bytes(d.weight_bytes_owned + d.weight_bytes_mapped)
        );
    }
    for a in std::iter::once(&r.analysis).chain(&r.analysis_bf16) {
        let _ = writeln!(
            s,
            "analyses in {}, unembedding in {} (forward pass included):",
            a.dtype, a.unembed
        );
        for l in &a.lenses {
            let _ = writeln!(
                s,
                "{:<7} {:>8.3} s {:>10.1} tokens/s {:>10.0} cells/s",
                l.lens, l.timings.median_seconds, l.tokens_per_s, l.cells_per_s
            );
        }
    }
    s
}

pub fn memory(rows: &[MemoryRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<7} {:>7} {:>12} {:>12} {:>16} {:>16}",
        "groups", "lenses", "resident", "accounted", "separate copies", "original design"
    );
    for r in rows {
        let m = &r.measured;
        let _ = writeln!(
            s,
            "{:<7} {:>7} {:>12} {:>12} {:>16} {:>16}",
            m.layout.groups,
            m.layout.lenses,
            bytes(r.rss_delta),
            bytes(m.accounted_bytes),
            bytes(r.separate_copies),
            bytes(r.original_design)
        );
    }
    s
}

pub fn ws(r: &WsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} clients connected in {:.2} s",
        r.clients, r.connect_seconds
    );
    if let (Some(b), Some(c)) = (r.server_before, r.server_connected) {
        let _ = writeln!(
            s,
            "server: {} → {} resident ({:.1} KiB per connection), {} → {} descriptors, {} → {} threads",
            bytes(b.rss_bytes),
            bytes(c.rss_bytes),
            r.bytes_per_connection.unwrap_or(0.0) / 1024.0,
            b.open_fds,
            c.open_fds,
            b.threads,
            c.threads
        );
    }
    let l = &r.message_latency;
    let _ = writeln!(
        s,
        "{} status round trips: {:.0} messages/s, p50 {:.2} ms, p99 {:.2} ms",
        r.messages, r.messages_per_s, l.p50_ms, l.p99_ms
    );
    let q = &r.submit_to_queued;
    let _ = writeln!(
        s,
        "{} analyses: submit → queued p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; {} cancelled, {} completed, {} failed, {} without exactly one terminal event; refused {:?}",
        r.submitted, q.p50_ms, q.p95_ms, q.p99_ms, r.cancelled, r.completed, r.failed, r.without_one_terminal, r.refused
    );
    s
}

pub fn switches(rows: &[SwitchRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| switch | bytes | lensd | raw read of the same bytes | original (documented) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    for r in rows {
        let raw = r
            .raw_read_ms
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} ms | {raw} | {} |",
            r.switch,
            bytes(r.bytes),
            r.lensd_ms,
            r.original
        );
    }
    s
}

pub fn sched(rows: &[SchedRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| workload | policy | requests | seconds | requests/s | wait p50 | wait p95 | base swaps |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.2} | {:.0} ms | {:.0} ms | {} |",
            r.workload,
            r.policy,
            r.requests,
            r.seconds,
            r.requests_per_s,
            r.wait_p50_ms,
            r.wait_p95_ms,
            r.base_swaps
        );
    }
    s
}
