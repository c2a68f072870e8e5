//! `lensd bench-memory` on the demo model: each layout in a fresh process, with the base
//! shared by every group that names it and each lens accounted to the byte.

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn lenses_add_their_bytes_and_groups_share_one_base() {
    let dir = tempfile::tempdir().unwrap();
    let lens = common::fit(dir.path(), "lens", "1e-3");
    let out = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .current_dir(common::root())
        .args([
            "bench-memory",
            "--lens",
            lens.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let layout = |r: &Value| {
        (
            r["layout"]["groups"].as_u64().unwrap(),
            r["layout"]["lenses"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        rows.iter().map(layout).collect::<Vec<_>>(),
        [(1, 0), (1, 1), (1, 2), (1, 4), (1, 8), (4, 8)]
    );
    let base = rows[0]["accounted_bytes"].as_u64().unwrap();
    let lens_bytes = rows[1]["lens_bytes"].as_u64().unwrap();
    assert!(
        lens_bytes > 30 * 1024 * 1024,
        "the demo lens is about 38 MiB"
    );
    for r in &rows {
        let (groups, lenses) = layout(r);
        assert_eq!(r["bases_resident"], 1, "one base for {groups} groups: {r}");
        assert_eq!(r["lenses_resident"].as_u64(), Some(lenses), "{r}");
        assert_eq!(
            r["accounted_bytes"].as_u64().unwrap(),
            base + lenses * lens_bytes,
            "accounted to the byte: {r}"
        );
        // What the process really holds moves with what is accounted.
        let rss = r["rss_delta"].as_u64().unwrap() as f64;
        let accounted = r["accounted_bytes"].as_u64().unwrap() as f64;
        assert!(
            rss > 0.9 * accounted && rss < accounted + 64.0 * 1024.0 * 1024.0,
            "{r}"
        );
        // Four groups would hold four bases in the original's design, one here.
        let original = r["original_design"].as_u64().unwrap();
        let ours = r["rss_delta"].as_u64().unwrap();
        if groups == 4 {
            assert!(original > ours + 2 * base, "{r}");
        }
    }
}
