//! The soak's report as text: the users' actions, the hostile clients, the server's figures at
//! start, after warm-up and at the end, the lower quartile of each window, and the rules.

use std::collections::BTreeMap;

use super::*;

pub(super) fn listed<K: std::fmt::Display>(m: &BTreeMap<K, usize>) -> String {
    let v: Vec<String> = m
        .iter()
        .filter(|e| *e.1 > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The lower quartile of resident memory and the heap figures in each of `n` equal windows
/// of the load, in MiB, as a table.
pub(super) fn windows(r: &SoakReport, n: usize) -> String {
    let minutes = |i: usize| r.load_seconds * i as f64 / n as f64 / 60.0;
    let mut s = String::from("\nlower quartile of each window, MiB:\n\n| minutes |");
    (0..n).for_each(|i| s += &format!(" {:.0}–{:.0} |", minutes(i), minutes(i + 1)));
    s += &format!("\n|---|{}\n", "---:|".repeat(n));
    let rows: [(&str, Figure); 4] = [
        ("resident", |x| Some(x.rss_bytes)),
        ("heap in use", |x| x.heap_in_use_bytes),
        ("heap free (kept)", |x| x.heap_free_bytes),
        ("finished requests kept", |x| x.finished_kept_bytes),
    ];
    for (name, f) in rows {
        s += &format!("| {name} |");
        for i in 0..n {
            let (from, to) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            s += &match quartile(r, from, to, f) {
                Some(b) => format!(" {:.0} |", b as f64 / 1048576.0),
                None => " – |".into(),
            };
        }
        s += "\n";
    }
    s
}

/// The report as text: the counts, the server at start, after warm-up and at the end, the
/// growth figures, the rules and the verdict.
pub fn table(r: &SoakReport) -> String {
    let (served, secs) = (r.requests_served, r.load_seconds);
    let mut s = format!(
        "soak of {}: {} clients, seed {}, {secs:.0} s of load (and {:.1} s to finish)\n",
        r.url, r.clients, r.seed, r.wind_down_seconds
    );
    s += &format!(
        "requests: {} submitted, {served} served\n\n",
        r.requests_submitted
    );
    s += &format!(
        "| action | {} |\n|---|{}\n",
        OUTCOMES.join(" | "),
        "---:|".repeat(6)
    );
    for (action, c) in &r.actions {
        let cells: Vec<String> = OUTCOMES
            .iter()
            .map(|o| c.get(o).unwrap_or(&0).to_string())
            .collect();
        s += &format!("| {action} | {} |\n", cells.join(" | "));
    }
    s += &format!("\nerrors by kind: {}\n", listed(&r.errors));
    s += &format!("violations: {}\n\n", listed(&r.violations));
    if let Some(h) = &r.hostile {
        s += &h.table();
    }
    s += "| server | start | after warm-up | end |\n|---|---:|---:|---:|\n";
    let all = [&r.server_start, &r.server_after_warmup, &r.server_end];
    let mut row = |name: &str, f: &dyn Fn(&Sample) -> String| {
        s += &format!("| {name} | {} |\n", all.map(f).join(" | "));
    };
    row("resident", &|x| bytes(x.rss_bytes));
    let opt = |v: Option<u64>| v.map_or("?".into(), bytes);
    row("heap in use", &|x| opt(x.heap_in_use_bytes));
    row("heap free (kept)", &|x| opt(x.heap_free_bytes));
    row("accounted", &|x| opt(x.accounted_bytes));
    row("finished requests kept", &|x| opt(x.finished_kept_bytes));
    row("descriptors", &|x| x.open_fds.to_string());
    row("threads", &|x| x.threads.to_string());
    row("HTTP connections", &|x| {
        x.http_connections.map_or("?".into(), |n| n.to_string())
    });
    row("leases", &|x| {
        x.leases.map_or("?".into(), |n| n.to_string())
    });
    let med = |m: Option<u64>| m.map_or("–".into(), bytes);
    let (q2, q4) = (med(r.rss_second_quarter_p25), med(r.rss_last_quarter_p25));
    let (h2, h4) = (
        med(r.heap_unaccounted_second_quarter_p25),
        med(r.heap_unaccounted_last_quarter_p25),
    );
    let slope = |k: &str, unit: f64| match r.slopes_per_minute.get(k).copied().flatten() {
        Some(x) => format!("{:+.2}", x / unit),
        None => "–".into(),
    };
    let slopes = format!(
        "resident {} MiB, heap beyond what is accounted {} MiB, descriptors {}, threads {}",
        slope("rss_bytes", 1048576.0),
        slope("heap_unaccounted_bytes", 1048576.0),
        slope("open_fds", 1.0),
        slope("threads", 1.0)
    );
    s += &format!(
        "\n{} samples; most leases {}, longest queue {}\n",
        r.samples.len(),
        r.max_leases,
        r.max_queue_depth
    );
    s += &format!("resident, lower quartile: second quarter {q2}, last quarter {q4}\n");
    s += &format!(
        "heap beyond what is accounted, lower quartile: second quarter {h2}, last quarter {h4}\n"
    );
    s += &format!("slopes per minute after warm-up: {slopes}\n");
    s += &windows(r, 10);
    s += &format!(
        "idle at the end: {} (after {:.1} s)\n\nrules:\n",
        r.idle_at_end, r.idle_wait_seconds
    );
    RULES.iter().for_each(|rule| s += &format!("- {rule}\n"));
    r.faults.iter().for_each(|f| s += &format!("fault: {f}\n"));
    match r.passed {
        true => s + "verdict: passed\n",
        false => s + &format!("verdict: FAILED: {}\n", r.failures.join("; ")),
    }
}
