//! Layer selections as users write them: `all`, `5`, `0,10,20`, `20-30`, `0-30:5`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerSpec {
    All,
    List(Vec<LayerRange>),
}

/// Layers `start..=end` taking every `step`-th.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRange {
    pub start: usize,
    pub end: usize,
    pub step: usize,
}

impl std::str::FromStr for LayerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "all" {
            return Ok(LayerSpec::All);
        }
        let mut ranges = Vec::new();
        for part in s.split(',') {
            ranges.push(parse_range(part.trim()).map_err(|e| {
                format!(
                    "invalid layer selection `{s}`: {e} (examples: all, 5, 0,10,20, 20-30, 0-30:5)"
                )
            })?);
        }
        Ok(LayerSpec::List(ranges))
    }
}

fn parse_num(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a layer number"))
}

fn parse_range(part: &str) -> Result<LayerRange, String> {
    let (range, step) = match part.split_once(':') {
        Some((r, st)) => (r, parse_num(st)?),
        None => (part, 1),
    };
    if step == 0 {
        return Err("a step of 0 selects nothing".into());
    }
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (parse_num(a)?, parse_num(b)?),
        None => {
            let n = parse_num(range)?;
            (n, n)
        }
    };
    if end < start {
        return Err(format!("range {start}-{end} runs backwards"));
    }
    Ok(LayerRange { start, end, step })
}

impl LayerSpec {
    /// The selected layers, sorted and without repeats, for a model with layers `0..=max`.
    /// Names the first layer beyond `max`.
    pub fn resolve(&self, max: usize) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        match self {
            LayerSpec::All => out.extend(0..=max),
            LayerSpec::List(ranges) => {
                for r in ranges {
                    if r.end > max {
                        return Err(format!(
                            "layer {} does not exist: this model has layers 0..={max}",
                            r.end
                        ));
                    }
                    out.extend((r.start..=r.end).step_by(r.step));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(s: &str, max: usize) -> Result<Vec<usize>, String> {
        s.parse::<LayerSpec>()?.resolve(max)
    }

    #[test]
    fn selections_resolve_to_sorted_unique_layers() {
        assert_eq!(layers("all", 3).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(layers("", 2).unwrap(), vec![0, 1, 2]);
        assert_eq!(layers("5", 30).unwrap(), vec![5]);
        assert_eq!(layers("20,0,10,10", 30).unwrap(), vec![0, 10, 20]);
        assert_eq!(layers("28-30", 30).unwrap(), vec![28, 29, 30]);
        assert_eq!(layers("0-30:10", 30).unwrap(), vec![0, 10, 20, 30]);
        assert_eq!(layers("0-4:2, 3", 30).unwrap(), vec![0, 2, 3, 4]);
    }

    #[test]
    fn bad_selections_name_the_problem() {
        let e = layers("31", 30).unwrap_err();
        assert!(e.contains("layer 31") && e.contains("0..=30"), "{e}");
        let e = layers("5-2", 30).unwrap_err();
        assert!(e.contains("backwards"), "{e}");
        let e = layers("x", 30).unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        let e = layers("0-10:0", 30).unwrap_err();
        assert!(e.contains("step of 0"), "{e}");
    }
}
