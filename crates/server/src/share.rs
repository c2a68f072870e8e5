//! The read-only share page of a stored result: one self-contained HTML5 document, with its
//! style inline and no scripts or outside resources, so that a link to it shows the same thing
//! anywhere and a saved copy still works offline.
//!
//! Every string that came from a user or a model (ids, text, tokens, model names, errors) goes
//! through [`escape`] before it reaches the page.

use std::fmt::{self, Write};

use lensd_core::analysis::{Analysis, Cell};
use lensd_core::work::JobOutput;
use serde_json::Value;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::store::StoredResult;

/// The page of a stored result.
pub fn render(r: &StoredResult) -> String {
    let mut out = String::new();
    write_result(&mut out, r).expect("writing to a String cannot fail");
    out
}

/// The page for an id that the store does not hold.
pub fn not_found(id: &str) -> String {
    let mut out = String::new();
    let id = escape(id);
    write_page(&mut out, "Result not found", |out| {
        writeln!(out, "<h1>Result not found</h1>")?;
        writeln!(
            out,
            "<p>There is no stored result with id <code>{id}</code>. Check the link; results \
             are removed after a retention period.</p>"
        )
    })
    .expect("writing to a String cannot fail");
    out
}

/// Escapes text for use in element content and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A token as shown in a cell: whitespace that would otherwise vanish gets a visible sign.
/// The result still needs [`escape`].
fn visible(token: &str) -> String {
    token
        .chars()
        .map(|c| match c {
            ' ' => '␣',
            '\n' => '⏎',
            '\t' => '⇥',
            '\r' => '␍',
            c => c,
        })
        .collect()
}

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em;
       color: #1f2328; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1.2em; }
dl.meta dt { color: #59636e; } dl.meta dd { margin: 0; }
pre.text { white-space: pre-wrap; word-break: break-word; background: #f6f8fa;
           padding: .8em; border-radius: 6px; }
.notice { border-left: 4px solid #d1242f; background: #fff5f5; padding: .6em 1em; }
.scroll { overflow-x: auto; }
table.lens { border-collapse: collapse; font: 13px/1.3 ui-monospace, monospace; }
table.lens th, table.lens td { border: 1px solid #d1d9e0; padding: 2px 5px; white-space: nowrap;
       max-width: 9em; overflow: hidden; text-overflow: ellipsis; }
table.lens thead th { background: #f6f8fa; position: sticky; top: 0; }
table.lens tbody th { background: #f6f8fa; text-align: right; }
.dark { color: #fff; }
";

/// Writes the document around `body`.
fn write_page(
    out: &mut String,
    title: &str,
    body: impl FnOnce(&mut String) -> fmt::Result,
) -> fmt::Result {
    writeln!(out, "<!DOCTYPE html>")?;
    writeln!(out, "<html lang=\"en\">")?;
    writeln!(out, "<head>")?;
    writeln!(out, "<meta charset=\"utf-8\">")?;
    // The page needs nothing beyond its own inline style; the policy makes sure of it even if
    // some escaped text were ever misread by a browser.
    writeln!(
        out,
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">"
    )?;
    writeln!(
        out,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    // Shared results hold user text: reachable by link, not meant for search engines.
    writeln!(out, "<meta name=\"robots\" content=\"noindex\">")?;
    writeln!(out, "<title>{}</title>", escape(title))?;
    writeln!(out, "<style>{STYLE}</style>")?;
    writeln!(out, "</head>")?;
    writeln!(out, "<body>")?;
    body(out)?;
    writeln!(out, "</body>")?;
    writeln!(out, "</html>")
}

fn write_result(out: &mut String, r: &StoredResult) -> fmt::Result {
    let title = format!("lensd {} {}", r.kind, r.id);
    write_page(out, &title, |out| {
        writeln!(
            out,
            "<h1>lensd {} <code>{}</code></h1>",
            escape(&r.kind),
            escape(&r.id)
        )?;
        write_meta(out, r)?;
        write_input(out, &r.input)?;

        let completed = r.outcome == "completed";
        if !completed {
            writeln!(out, "<div class=\"notice\">")?;
            writeln!(out, "<p><strong>{}</strong></p>", escape(&r.outcome))?;
            if let Some(error) = &r.error {
                writeln!(out, "<p>{}</p>", escape(error))?;
            }
            writeln!(out, "</div>")?;
        }
        match &r.output {
            Some(output) => {
                if !completed {
                    writeln!(out, "<h2>Partial output</h2>")?;
                }
                write_output(out, output)
            }
            None if completed => writeln!(out, "<p>No output was stored.</p>"),
            None => Ok(()),
        }
    })
}

fn write_meta(out: &mut String, r: &StoredResult) -> fmt::Result {
    let models: Vec<String> = r.models.iter().map(|m| escape(m)).collect();
    writeln!(out, "<dl class=\"meta\">")?;
    writeln!(
        out,
        "<dt>Request</dt><dd><code>{}</code></dd>",
        escape(&r.id)
    )?;
    writeln!(out, "<dt>Kind</dt><dd>{}</dd>", escape(&r.kind))?;
    writeln!(out, "<dt>Models</dt><dd>{}</dd>", models.join(", "))?;
    writeln!(out, "<dt>Created</dt><dd>{}</dd>", created(r.created_at))?;
    writeln!(out, "<dt>Outcome</dt><dd>{}</dd>", escape(&r.outcome))?;
    if let Some(timings) = r.timings.as_object().filter(|t| !t.is_empty()) {
        let parts: Vec<String> = timings
            .iter()
            .map(|(name, value)| format!("{} {}", escape(name), escape(&plain(value))))
            .collect();
        writeln!(out, "<dt>Timings</dt><dd>{}</dd>", parts.join(" · "))?;
    }
    writeln!(out, "</dl>")
}

/// Unix seconds as a UTC date and time.
fn created(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        // Out of the representable range: still show what was stored.
        .unwrap_or_else(|| format!("{unix} (unix seconds)"))
}

/// The input text, then whatever else the request held, as its options.
fn write_input(out: &mut String, input: &Value) -> fmt::Result {
    let (text, key) = input_text(input);
    if let Some(text) = text {
        writeln!(out, "<h2>Input</h2>")?;
        writeln!(out, "<pre class=\"text\">{}</pre>", escape(&text))?;
    }
    let mut rest = input.clone();
    if let (Some(key), Some(fields)) = (key, rest.as_object_mut()) {
        fields.remove(key);
    }
    let empty = rest.is_null() || rest.as_object().is_some_and(|o| o.is_empty());
    if !empty {
        writeln!(out, "<h2>Options</h2>")?;
        writeln!(out, "<pre class=\"text\">{}</pre>", escape(&pretty(&rest)))?;
    }
    Ok(())
}

/// The text of a request and the field it sits in: `text` (a string, or an object with its
/// own `text` or chat `messages`, as the analyze request's text source is) or `prompt` for a
/// generation. A conversation shows one `role: content` paragraph per turn.
fn input_text(input: &Value) -> (Option<String>, Option<&'static str>) {
    for key in ["text", "prompt"] {
        match input.get(key) {
            Some(Value::String(s)) => return (Some(s.clone()), Some(key)),
            Some(nested) => {
                if let Some(s) = nested.get("text").and_then(Value::as_str) {
                    return (Some(s.to_string()), Some(key));
                }
                if let Some(turns) = nested.get("messages").and_then(Value::as_array) {
                    let text = turns
                        .iter()
                        .map(|t| {
                            let field = |f: &str| t.get(f).and_then(Value::as_str).unwrap_or("");
                            format!("{}: {}", field("role"), field("content"))
                        })
                        .collect::<Vec<_>>()
                        .join("\n\n");
                    return (Some(text), Some(key));
                }
            }
            None => {}
        }
    }
    (None, None)
}

fn write_output(out: &mut String, output: &Value) -> fmt::Result {
    match serde_json::from_value::<JobOutput>(output.clone()) {
        Ok(JobOutput::Analysis { analyses }) => {
            if analyses.is_empty() {
                writeln!(out, "<p>No lens rows.</p>")?;
            }
            analyses.iter().try_for_each(|a| write_analysis(out, a))
        }
        Ok(JobOutput::Generation {
            prompt,
            ids,
            text,
            stop,
            reply,
            thinking,
        }) => {
            writeln!(out, "<h2>Prompt</h2>")?;
            writeln!(out, "<pre class=\"text\">{}</pre>", escape(&prompt))?;
            if let Some(thinking) = thinking {
                writeln!(out, "<h2>Thinking</h2>")?;
                writeln!(out, "<pre class=\"text\">{}</pre>", escape(&thinking))?;
            }
            match reply {
                Some(reply) => {
                    writeln!(out, "<h2>Reply</h2>")?;
                    writeln!(out, "<pre class=\"text\">{}</pre>", escape(&reply))?;
                }
                None => {
                    writeln!(out, "<h2>Generated text</h2>")?;
                    writeln!(out, "<pre class=\"text\">{}</pre>", escape(&text))?;
                }
            }
            writeln!(
                out,
                "<p>{} tokens; stopped by {}.</p>",
                ids.len(),
                escape(&stop)
            )
        }
        // Partial results may be in a shape of their own; show them as they were stored.
        Err(_) => writeln!(out, "<pre class=\"text\">{}</pre>", escape(&pretty(output))),
    }
}

/// One lens as a table: a row per layer, a column per token position, each cell the lens's
/// most likely token, shaded by its probability.
fn write_analysis(out: &mut String, a: &Analysis) -> fmt::Result {
    writeln!(out, "<h2>Lens <code>{}</code></h2>", escape(&a.lens))?;
    if !a.explanations.is_empty() {
        return write_explanations(out, a);
    }
    // Partial rows may cover fewer positions than there are tokens, or arrive before them.
    let columns = a
        .layers
        .iter()
        .map(|row| row.positions.len())
        .chain([a.tokens.len()])
        .max()
        .unwrap_or(0);
    writeln!(out, "<div class=\"scroll\"><table class=\"lens\">")?;
    write!(out, "<thead><tr><th>layer</th>")?;
    for position in 0..columns {
        match a.tokens.get(position) {
            Some(t) => write!(
                out,
                "<th title=\"position {position}, token id {}\">{}</th>",
                t.id,
                escape(&visible(&t.text))
            )?,
            None => write!(out, "<th>{position}</th>")?,
        }
    }
    writeln!(out, "</tr></thead>")?;
    writeln!(out, "<tbody>")?;
    for row in &a.layers {
        write!(out, "<tr><th>{}</th>", row.layer)?;
        for position in 0..columns {
            match row.positions.get(position) {
                Some(cell) => write_cell(out, cell)?,
                None => write!(out, "<td></td>")?,
            }
        }
        writeln!(out, "</tr>")?;
    }
    writeln!(out, "</tbody></table></div>")
}

/// A talkative lens as a table: a row per position with its explanation, each word shaded by
/// its salience (red: the reconstruction needs it, green: it hurts), and the scores.
fn write_explanations(out: &mut String, a: &Analysis) -> fmt::Result {
    writeln!(out, "<div class=\"scroll\"><table class=\"explanations\">")?;
    writeln!(
        out,
        "<thead><tr><th>position</th><th>token</th><th>explanation</th>\
         <th>relative RMSE</th><th>MSE</th><th>KL</th></tr></thead><tbody>"
    )?;
    for e in &a.explanations {
        write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>",
            e.position,
            escape(&visible(&e.token))
        )?;
        for (j, word) in e.explanation_structured.iter().enumerate() {
            let style = match e.token_salience.get(j) {
                Some(&s) if s > 0.0 => {
                    format!(" style=\"background:rgba(220,38,38,{:.2})\"", shade(s))
                }
                Some(&s) if s < 0.0 => {
                    format!(" style=\"background:rgba(22,163,74,{:.2})\"", shade(-s))
                }
                _ => String::new(),
            };
            let title = e
                .token_salience
                .get(j)
                .map(|s| format!(" title=\"salience {s:.3}\""))
                .unwrap_or_default();
            write!(
                out,
                "<span class=\"word\"{style}{title}>{}</span> ",
                escape(word)
            )?;
        }
        let kl = e
            .kl_divergence
            .map_or_else(|| "—".to_string(), |k| format!("{k:.3}"));
        writeln!(
            out,
            "</td><td>{:.3}</td><td>{:.4}</td><td>{kl}</td></tr>",
            e.relative_rmse, e.mse
        )?;
    }
    writeln!(out, "</tbody></table></div>")
}

fn write_cell(out: &mut String, cell: &Cell) -> fmt::Result {
    let Some(top) = cell.top.first() else {
        return write!(out, "<td></td>");
    };
    let p = shade(top.prob);
    // Dark enough a background needs light text to stay readable.
    let class = if p > 0.55 { " class=\"dark\"" } else { "" };
    write!(
        out,
        "<td{class} style=\"background:rgba(31,111,235,{p:.2})\" \
         title=\"p={:.4} · entropy {:.2} · KL to final {:.2} · final token rank {}\">{}</td>",
        top.prob,
        cell.entropy,
        cell.kl_to_final,
        cell.final_rank,
        escape(&visible(&top.token))
    )
}

/// Background opacity for a probability: proportional, kept within [0, 1].
fn shade(prob: f32) -> f32 {
    if prob.is_nan() {
        0.0
    } else {
        prob.clamp(0.0, 1.0)
    }
}

/// A JSON scalar without quotes around strings; anything else as compact JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lensd_core::analysis::{LayerRow, TokenInfo, TopToken};
    use serde_json::json;

    fn cell(token: &str, prob: f32) -> Cell {
        Cell {
            top: vec![
                TopToken {
                    id: 7,
                    token: token.to_string(),
                    prob,
                },
                TopToken {
                    id: 8,
                    token: "runner-up".to_string(),
                    prob: (1.0 - prob) / 2.0,
                },
            ],
            entropy: 1.5,
            kl_to_final: 0.25,
            final_rank: 2,
            next_token_ce: Some(3.0),
        }
    }

    fn analysis_output(tokens: &[&str], rows: &[(usize, &[(&str, f32)])]) -> Value {
        let analysis = Analysis {
            lens: "smollm2-135m-tuned".to_string(),
            tokens: tokens
                .iter()
                .enumerate()
                .map(|(i, t)| TokenInfo {
                    id: 100 + i as u32,
                    text: t.to_string(),
                })
                .collect(),
            layers: rows
                .iter()
                .map(|(layer, cells)| LayerRow {
                    layer: *layer,
                    positions: cells.iter().map(|(t, p)| cell(t, *p)).collect(),
                })
                .collect(),
            explanations: Vec::new(),
        };
        serde_json::to_value(JobOutput::Analysis {
            analyses: vec![analysis],
        })
        .unwrap()
    }

    fn stored(kind: &str, input: Value, output: Option<Value>) -> StoredResult {
        StoredResult {
            id: "r-3f9c0a1b2c4d5e6f".to_string(),
            kind: kind.to_string(),
            models: vec!["smollm2-135m-tuned".to_string()],
            client: "web".to_string(),
            created_at: 1_741_346_100, // 2025-03-07 11:15:00 UTC
            input,
            outcome: "completed".to_string(),
            output,
            error: None,
            partial: false,
            timings: json!({"wait_ms": 4, "compute_ms": 120}),
        }
    }

    #[test]
    fn an_analysis_page_shows_every_top_token_and_layer() {
        let output = analysis_output(
            &["The", " capital", " of"],
            &[
                (0, &[("alpha", 0.1), ("bravo", 0.2), ("charlie", 0.3)]),
                (15, &[("delta", 0.4), ("echo", 0.5), ("foxtrot", 0.6)]),
                (30, &[("golf", 0.7), ("hotel", 0.8), ("india", 0.95)]),
            ],
        );
        let page = render(&stored(
            "analysis",
            json!({"text": "The capital of", "top_k": 5}),
            Some(output),
        ));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        for token in [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        ] {
            assert!(page.contains(&format!(">{token}</td>")), "missing {token}");
        }
        for layer in [0, 15, 30] {
            assert!(
                page.contains(&format!("<tr><th>{layer}</th>")),
                "missing layer {layer}"
            );
        }
        // Only the top-1 token of each cell is shown.
        assert!(!page.contains("runner-up"));
        assert!(page.contains("r-3f9c0a1b2c4d5e6f"));
        assert!(page.contains("smollm2-135m-tuned"));
        assert!(page.contains("2025-03-07 11:15:00 UTC"));
        assert!(page.contains("<pre class=\"text\">The capital of</pre>"));
        assert!(page.contains("&quot;top_k&quot;: 5"));
        assert!(page.contains("compute_ms 120"));
    }

    #[test]
    fn a_talkative_lens_shows_its_explanations_with_salience() {
        let analysis = Analysis {
            lens: "talk".to_string(),
            tokens: vec![TokenInfo {
                id: 5,
                text: " Paris".into(),
            }],
            layers: Vec::new(),
            explanations: vec![lensd_core::analysis::Explanation {
                position: 0,
                token: " Paris".into(),
                explanation: " city <b> [ Paris]".into(),
                explanation_structured: vec![" city".into(), "<b>".into(), "[ Paris]".into()],
                explanation_ids: vec![1, 2],
                mse: 0.5,
                relative_rmse: 0.25,
                token_salience: vec![0.5, -0.25],
                kl_divergence: Some(0.125),
                logit_lens_top: None,
            }],
        };
        let output = serde_json::to_value(JobOutput::Analysis {
            analyses: vec![analysis],
        })
        .unwrap();
        let page = render(&stored("analysis", json!({"text": " Paris"}), Some(output)));
        assert!(page.contains("<td>␣Paris</td>"), "{page}");
        assert!(page.contains(
            "<span class=\"word\" style=\"background:rgba(220,38,38,0.50)\" title=\"salience 0.500\"> city</span>"
        ));
        assert!(page.contains(
            "<span class=\"word\" style=\"background:rgba(22,163,74,0.25)\" title=\"salience -0.250\">&lt;b&gt;</span>"
        ));
        assert!(page.contains("<span class=\"word\">[ Paris]</span>"));
        assert!(page.contains("<td>0.250</td><td>0.5000</td><td>0.125</td>"));
        assert!(!page.contains("<b>"));
    }

    #[test]
    fn cells_carry_probability_in_title_and_shade_by_it() {
        let output = analysis_output(&["a", "b"], &[(3, &[("low", 0.1), ("high", 0.9)])]);
        let page = render(&stored("analysis", json!({"text": "a b"}), Some(output)));
        assert!(page.contains(
            "<td style=\"background:rgba(31,111,235,0.10)\" title=\"p=0.1000 · entropy 1.50 \
             · KL to final 0.25 · final token rank 2\">low</td>"
        ));
        assert!(page.contains(
            "<td class=\"dark\" style=\"background:rgba(31,111,235,0.90)\" title=\"p=0.9000"
        ));
    }

    #[test]
    fn whitespace_in_tokens_is_made_visible() {
        let output = analysis_output(&[" Paris\n"], &[(1, &[(" the end\n", 0.5)])]);
        let page = render(&stored(
            "analysis",
            json!({"text": " Paris\n"}),
            Some(output),
        ));
        assert!(page.contains(">␣the␣end⏎</td>"));
        assert!(page.contains(">␣Paris⏎</th>"));
    }

    #[test]
    fn user_text_and_tokens_are_escaped() {
        let output = analysis_output(&["<script>"], &[(0, &[("<script>alert(1)</script>", 0.5)])]);
        let mut r = stored(
            "analysis",
            json!({"text": "<script>alert('x')</script> & \"quotes\""}),
            Some(output),
        );
        r.id = "r-<b>".to_string();
        r.models = vec!["<img src=x>".to_string()];
        let page = render(&r);
        // The page has no scripts or images of its own, so any such tag came from the input.
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quotes&quot;"));
        assert!(page.contains(">&lt;script&gt;alert(1)&lt;/script&gt;</td>"));
        assert!(page.contains("r-&lt;b&gt;"));
    }

    #[test]
    fn a_generation_page_shows_prompt_and_text() {
        let output = serde_json::to_value(JobOutput::Generation {
            prompt: "What is the capital of France?".to_string(),
            ids: vec![504, 3575, 282, 4649, 314, 7042, 30],
            text: "The capital of France is Paris.".to_string(),
            stop: "eos".to_string(),
            reply: None,
            thinking: None,
        })
        .unwrap();
        let page = render(&stored(
            "generation",
            json!({"prompt": "What is the capital of France?", "max_tokens": 40}),
            Some(output),
        ));
        assert!(page.contains("<pre class=\"text\">The capital of France is Paris.</pre>"));
        assert!(page.contains("<pre class=\"text\">What is the capital of France?</pre>"));
        assert!(page.contains("7 tokens; stopped by eos."));
        assert!(page.contains("&quot;max_tokens&quot;: 40"));
        assert!(!page.contains("class=\"notice\""));
    }

    #[test]
    fn an_error_page_shows_outcome_message_and_partial_rows() {
        let output = analysis_output(&["x", "y"], &[(0, &[("kilo", 0.5)])]);
        let mut r = stored("analysis", json!({"text": "x y"}), Some(output));
        r.outcome = "error".to_string();
        r.error = Some("engine failed: out of memory <after 1 row>".to_string());
        let page = render(&r);
        assert!(page.contains("<strong>error</strong>"));
        assert!(page.contains("engine failed: out of memory &lt;after 1 row&gt;"));
        assert!(page.contains("<h2>Partial output</h2>"));
        assert!(page.contains(">kilo</td>"));
        // The missing position of the partial row is an empty cell.
        assert!(page.contains(">kilo</td><td></td></tr>"));
    }

    #[test]
    fn a_cancelled_page_without_output_shows_the_outcome() {
        let mut r = stored("generation", json!({"prompt": "Hi"}), None);
        r.outcome = "cancelled".to_string();
        let page = render(&r);
        assert!(page.contains("<strong>cancelled</strong>"));
        assert!(!page.contains("Partial output"));
    }

    #[test]
    fn a_conversation_shows_each_turn_escaped() {
        let input = json!({"text": {"kind": "given", "form": "chat", "messages": [
            {"role": "user", "content": "Hi <b>"},
            {"role": "assistant", "content": "Hello"}]}, "top_k": 5});
        let page = render(&stored("analysis", input, None));
        assert!(
            page.contains("user: Hi &lt;b&gt;\n\nassistant: Hello"),
            "{page}"
        );
        assert!(
            !page.contains("messages"),
            "the turns are shown as text: {page}"
        );
    }

    #[test]
    fn output_in_another_shape_is_shown_as_escaped_json() {
        let mut r = stored(
            "analysis",
            json!({"text": "x"}),
            Some(json!({"rows": ["<i>"]})),
        );
        r.outcome = "cancelled".to_string();
        let page = render(&r);
        assert!(page.contains("&quot;rows&quot;"));
        assert!(page.contains("&lt;i&gt;"));
        assert!(!page.contains("<i>"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let output = analysis_output(&["a"], &[(0, &[("b", 0.5)])]);
        let page = render(&stored("analysis", json!({"text": "a"}), Some(output)));
        for outside in [
            "<script", "<link", "<img", "src=", "href=", "@import", "url(",
        ] {
            assert!(!page.contains(outside), "page contains {outside}");
        }
    }

    #[test]
    fn not_found_names_the_escaped_id() {
        let page = not_found("r-<script>x</script>");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<code>r-&lt;script&gt;x&lt;/script&gt;</code>"));
        assert!(!page.contains("<script"));
    }
}
