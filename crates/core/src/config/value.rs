//! Small pieces of the config reader: JSON paths, how a given value is quoted back to the user,
//! key suggestions, and durations as written in the file.

use std::time::Duration;

use serde_json::Value;

/// The path of the whole document, for problems that concern no key (invalid JSON, a document
/// that is not an object).
pub const ROOT: &str = "$";

/// `parent.key`, or `key` at the top level.
pub fn at(parent: &str, key: &str) -> String {
    if parent == ROOT || parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A value as it would appear in the file, shortened so that a message stays one line.
pub fn show(v: &Value) -> String {
    const LONGEST: usize = 60;
    match v {
        Value::String(s) if s.chars().count() > LONGEST => {
            let head: String = s.chars().take(LONGEST).collect();
            format!("{}…", Value::String(head))
        }
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::Object(_) => "an object".to_string(),
        other => other.to_string(),
    }
}

/// The accepted key closest to `key`, when it is close enough to be a likely typo.
pub fn suggest<'a>(key: &str, accepted: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    accepted
        .iter()
        .map(|a| (edit_distance(&lower, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 5))
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Durations as written in the file: a whole number with `s`, `m`, `h` or `d` (`90s`, `30m`,
/// `2h`), or `forever` ([`Duration::MAX`]: never demoted for being idle).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "forever" {
        return Ok(Duration::MAX);
    }
    let bad = || {
        format!(
            "expected a duration such as \"90s\", \"30m\", \"2h\" or \"forever\", got {}",
            Value::String(s.to_string())
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("the duration {} is too long", Value::String(s.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_forever() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("forever"), Ok(Duration::MAX));
        for bad in ["30", "m", "30 minutes", "1.5h", "-3s", ""] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("expected a duration"), "{bad}: {e}");
        }
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn paths_nest_keys_and_indices() {
        assert_eq!(at(ROOT, "settings"), "settings");
        let p = at(&index(&at(&index("model_groups", 2), "models"), 0), "layer");
        assert_eq!(p, "model_groups[2].models[0].layer");
    }

    #[test]
    fn values_are_shown_as_written() {
        assert_eq!(show(&Value::String("ten".into())), "\"ten\"");
        assert_eq!(show(&serde_json::json!(-3)), "-3");
        assert_eq!(show(&serde_json::json!([1, 2])), "an array of 2 items");
        assert_eq!(show(&serde_json::json!({"a": 1})), "an object");
        let long = show(&Value::String("x".repeat(100)));
        assert!(long.ends_with('…') && long.len() < 70, "{long}");
    }

    #[test]
    fn typos_get_a_suggestion_and_strangers_none() {
        let keys = ["lens_checkpoint_path", "layer", "batch_size"];
        assert_eq!(
            suggest("lens_checkpont_path", &keys),
            Some("lens_checkpoint_path")
        );
        assert_eq!(suggest("Layer", &keys), Some("layer"));
        assert_eq!(suggest("temperature", &keys), None);
    }
}
