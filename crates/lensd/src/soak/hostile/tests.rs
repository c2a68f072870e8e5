//! The hostile clients' bookkeeping: outcomes, shares and the report.

use super::*;

#[test]
fn answers_within_a_minute_count_from_one_sending_to_a_later_answer() {
    let t0 = Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    // Ten answers in the first seconds, the eleventh sent 59.5 s after the first was
    // sent and answered half a second later: 60 s after, so not within the minute.
    let mut answered: Vec<_> = (0..10)
        .map(|i| (at(i as f64), at(i as f64 + 0.1)))
        .collect();
    answered.push((at(59.5), at(60.0)));
    assert_eq!(most_in_a_minute(&answered), 10);
    // Answered a little sooner, it is the eleventh within a minute.
    answered.last_mut().unwrap().1 = at(59.9);
    assert_eq!(most_in_a_minute(&answered), 11);
    assert_eq!(most_in_a_minute(&[]), 0);
}

#[test]
fn a_kind_without_attempts_and_each_violation_fail() {
    let mut r = HostileReport {
        violations: VIOLATIONS.iter().map(|v| (*v, 0)).collect(),
        ..HostileReport::default()
    };
    for (kind, _) in KINDS {
        add(r.kinds.entry(kind).or_default(), "attempted", 3);
    }
    assert!(r.failures().is_empty(), "{:?}", r.failures());
    r.kinds.remove("partial_header");
    add(&mut r.violations, "probe_not_unknown_model", 2);
    let f = r.failures().join("\n");
    assert!(f.contains("partial_header clients made no attempt"), "{f}");
    assert!(f.contains("2 × hostile probe_not_unknown_model"), "{f}");
    let text = r.table();
    assert!(
        text.contains("| partial_header | 127.0.0.4 | 0 | none |"),
        "{text}"
    );
}

#[test]
fn seen_keeps_the_shortest_and_longest_close() {
    let mut s = Seen::new("partial_header");
    for secs in [10.2, 10.0, 11.5] {
        s.closed_after(Duration::from_secs_f64(secs));
    }
    let mut r = HostileReport::default();
    r.absorb(s);
    assert_eq!(r.closed_after_seconds["partial_header"], [10.0, 11.5]);
}

#[test]
fn a_padded_message_has_the_size_asked_and_is_json() {
    let Message::Text(t) = padded(1000) else {
        panic!("not text")
    };
    assert_eq!(t.len(), 1000);
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "status");
}
