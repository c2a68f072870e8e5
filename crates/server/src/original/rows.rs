//! lensd's results in the original's shapes: an analysis as `result.data` rows (one per
//! explained position) with `result.metadata`, and a generation's completions.

use lensd_core::analysis::{Analysis, Cell};
use serde_json::{json, Map, Value};

/// How a model's analysis becomes rows.
pub struct RowsOf<'a> {
    /// The analysis of the model the request named.
    pub lens: &'a Analysis,
    /// The analysis of the group's tuned lens at the same layer, when its top tokens were
    /// asked for.
    pub tuned: Option<&'a Analysis>,
    /// Keep `explanation_structured`.
    pub structured: bool,
    /// KL was asked for; when it was not, rows carry the original's `-1.0`.
    pub kl: bool,
}

/// The top token of a cell.
fn top(cell: &Cell) -> Option<&str> {
    cell.top.first().map(|t| t.token.as_str())
}

/// The tuned lens's top token at `position`, from the one layer it was read at.
fn tuned_top(tuned: Option<&Analysis>, position: usize) -> Option<&str> {
    tuned
        .and_then(|a| a.layers.first())
        .and_then(|row| row.positions.get(position))
        .and_then(top)
}

/// `result.data`: a talkative lens's explanations, or for a logit or tuned lens the top tokens
/// of its one layer at each position (`explanation` is them joined, `logit_lens_top` or
/// `tuned_lens_top` the first).
pub fn data(r: &RowsOf, lens_kind: &str) -> Vec<Value> {
    if !r.lens.explanations.is_empty() {
        return r
            .lens
            .explanations
            .iter()
            .map(|e| {
                let mut row = Map::new();
                row.insert("position".into(), json!(e.position));
                row.insert("token".into(), json!(e.token));
                row.insert("explanation".into(), json!(e.explanation));
                row.insert(
                    "kl_divergence".into(),
                    json!(if r.kl {
                        e.kl_divergence.unwrap_or(-1.0)
                    } else {
                        -1.0
                    }),
                );
                row.insert("mse".into(), json!(e.mse));
                row.insert("relative_rmse".into(), json!(e.relative_rmse));
                if r.structured {
                    row.insert(
                        "explanation_structured".into(),
                        json!(e.explanation_structured),
                    );
                }
                if let Some(t) = &e.logit_lens_top {
                    row.insert("logit_lens_top".into(), json!(t));
                }
                if let Some(t) = tuned_top(r.tuned, e.position) {
                    row.insert("tuned_lens_top".into(), json!(t));
                }
                // Always present, as in the original: empty when salience was not asked for.
                row.insert("token_salience".into(), json!(e.token_salience));
                Value::Object(row)
            })
            .collect();
    }
    let Some(layer) = r.lens.layers.first() else {
        return Vec::new();
    };
    let column = if lens_kind == "tuned" {
        "tuned_lens_top"
    } else {
        "logit_lens_top"
    };
    layer
        .positions
        .iter()
        .enumerate()
        .map(|(position, cell)| {
            let words: Vec<&str> = cell.top.iter().map(|t| t.token.as_str()).collect();
            let mut row = Map::new();
            row.insert("position".into(), json!(position));
            row.insert(
                "token".into(),
                json!(r.lens.tokens.get(position).map_or("", |t| t.text.as_str())),
            );
            row.insert("explanation".into(), json!(words.join(" ")));
            if r.structured {
                row.insert("explanation_structured".into(), json!(words));
            }
            if let Some(t) = top(cell) {
                row.insert(column.into(), json!(t));
            }
            if let Some(t) = tuned_top(r.tuned, position).filter(|_| column != "tuned_lens_top") {
                row.insert("tuned_lens_top".into(), json!(t));
            }
            Value::Object(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lensd_core::analysis::{Explanation, LayerRow, TokenInfo, TopToken};

    fn cell(t: &str) -> Cell {
        Cell {
            top: vec![TopToken {
                id: 1,
                token: t.into(),
                prob: 0.5,
            }],
            entropy: 1.0,
            kl_to_final: 0.5,
            final_rank: 1,
            next_token_ce: None,
        }
    }

    fn explained(position: usize) -> Explanation {
        Explanation {
            position,
            token: " mat".into(),
            explanation: "floor rug [ mat]".into(),
            explanation_structured: vec!["floor".into(), "rug".into(), "[ mat]".into()],
            explanation_ids: vec![3, 4],
            mse: 0.25,
            relative_rmse: 0.5,
            token_salience: vec![0.5, 0.25],
            kl_divergence: None,
            logit_lens_top: Some(" rug".into()),
        }
    }

    #[test]
    fn explanations_become_the_originals_rows() {
        let lens = Analysis {
            lens: "talk".into(),
            tokens: vec![],
            layers: vec![],
            explanations: vec![explained(3)],
        };
        let tuned = Analysis {
            lens: "tuned".into(),
            tokens: vec![],
            layers: vec![LayerRow {
                layer: 4,
                positions: vec![cell("a"), cell("b"), cell("c"), cell(" carpet")],
            }],
            explanations: vec![],
        };
        let rows = data(
            &RowsOf {
                lens: &lens,
                tuned: Some(&tuned),
                structured: true,
                kl: false,
            },
            "talkative",
        );
        assert_eq!(
            rows,
            vec![
                json!({"position": 3, "token": " mat", "explanation": "floor rug [ mat]",
                "kl_divergence": -1.0, "mse": 0.25, "relative_rmse": 0.5,
                "explanation_structured": ["floor", "rug", "[ mat]"], "token_salience": [0.5, 0.25],
                "logit_lens_top": " rug", "tuned_lens_top": " carpet"})
            ]
        );
    }

    #[test]
    fn a_logit_lens_gives_its_top_tokens_per_position() {
        let lens = Analysis {
            lens: "logit".into(),
            tokens: vec![TokenInfo {
                id: 1,
                text: "The".into(),
            }],
            layers: vec![LayerRow {
                layer: 2,
                positions: vec![cell(" cat")],
            }],
            explanations: vec![],
        };
        let rows = data(
            &RowsOf {
                lens: &lens,
                tuned: None,
                structured: false,
                kl: true,
            },
            "logit",
        );
        assert_eq!(
            rows,
            vec![
                json!({"position": 0, "token": "The", "explanation": " cat", "logit_lens_top": " cat"})
            ]
        );
    }
}
