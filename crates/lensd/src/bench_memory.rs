//! `lensd bench-memory`: the process's resident memory with one base and 1, 2, 4 or 8 lenses
//! resident, and with several groups naming the same base, each layout measured in a fresh
//! process. Beside each: what separate copies of base and lens per model would take, and what
//! the original site's design holds (one base per group, one copy of each lens).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use lensd::runtime::{resident_bytes, trim_heap};
use lensd::service::Service;
use lensd_core::registry::ResourceKey;
use serde::{Deserialize, Serialize};

/// One layout: `groups` groups naming the same base, with `lenses` tuned lenses spread over
/// them (and a logit lens in each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub groups: usize,
    pub lenses: usize,
}

/// The layouts measured, the first (base alone) being the reference for the others.
pub const LAYOUTS: [Layout; 6] = [
    Layout {
        groups: 1,
        lenses: 0,
    },
    Layout {
        groups: 1,
        lenses: 1,
    },
    Layout {
        groups: 1,
        lenses: 2,
    },
    Layout {
        groups: 1,
        lenses: 4,
    },
    Layout {
        groups: 1,
        lenses: 8,
    },
    Layout {
        groups: 4,
        lenses: 8,
    },
];

/// What one fresh process measured with a layout resident.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub layout: Layout,
    /// Resident memory before the service started and with everything loaded.
    pub rss_before: u64,
    pub rss_loaded: u64,
    /// Bytes lensd's residency manager accounts for.
    pub accounted_bytes: u64,
    pub bases_resident: usize,
    pub lenses_resident: usize,
    pub base_bytes: u64,
    pub lens_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct MemoryRow {
    #[serde(flatten)]
    pub measured: Measured,
    /// `rss_loaded - rss_before`.
    pub rss_delta: u64,
    /// One base and one lens per model, as a process per model would hold (the base-alone
    /// layout's delta plus each lens's accounted bytes).
    pub separate_copies: u64,
    /// One base per group plus every lens (the base-alone layout's delta per group): the
    /// original's design, where groups never share a base.
    pub original_design: u64,
}

fn lens_copies(lens: &Path, dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let config = std::fs::read_to_string(lens.join("config.json"))
        .with_context(|| format!("cannot read {}/config.json", lens.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&config)?;
    let params = lens.join("params.safetensors");
    ensure!(
        params.is_file(),
        "{} has no params.safetensors (fit the demo lens with scripts/demo.sh)",
        lens.display()
    );
    (0..n)
        .map(|i| {
            let out = dir.join(format!("lens-{i}"));
            std::fs::create_dir_all(&out)?;
            // Distinct content, so that each copy is a lens of its own.
            config["base_model_name_or_path"] = format!("bench copy {i}").into();
            std::fs::write(out.join("config.json"), config.to_string())?;
            std::fs::copy(&params, out.join("params.safetensors"))?;
            Ok(out)
        })
        .collect()
}

fn write_config(dir: &Path, model: &Path, lenses: &[PathBuf], groups: usize) -> Result<PathBuf> {
    let groups_json: Vec<serde_json::Value> = (0..groups)
        .map(|g| {
            let mut models = vec![
                serde_json::json!({"id": format!("g{g}-logit"), "name": "logit", "lens": "logit"}),
            ];
            for (i, p) in lenses.iter().enumerate().filter(|(i, _)| i % groups == g) {
                models.push(
                    serde_json::json!({"id": format!("tuned-{i}"), "name": format!("tuned {i}"),
                    "lens": "tuned", "lens_checkpoint_path": p}),
                );
            }
            serde_json::json!({"group_id": format!("g{g}"), "group_name": format!("group {g}"),
                "base_model_path": model, "compute_dtype": "f32", "models": models})
        })
        .collect();
    let doc = serde_json::json!({
        "model_groups": groups_json,
        "settings": {"device_budget": "4GiB", "host_budget": "1GiB"}
    });
    let path = dir.join("model_groups.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    Ok(path)
}

/// Loads one layout in this process and measures it.
pub async fn measure(model: &Path, lens: &Path, layout: Layout) -> Result<Measured> {
    ensure!(layout.groups > 0, "a layout needs at least one group");
    let rss_before = resident_bytes().context("cannot read /proc/self/statm")?;
    let dir = tempfile::tempdir()?;
    let lenses = lens_copies(lens, dir.path(), layout.lenses)?;
    let cfg = write_config(dir.path(), model, &lenses, layout.groups)?;
    let service = Service::start(&cfg).await?;
    let registry = service.registry().await;
    let mut leases = Vec::new();
    for g in 0..layout.groups {
        let models = registry
            .groups
            .get(&format!("g{g}"))
            .context("the written config lost a group")?
            .clone();
        leases.push(service.residency.acquire_all(&models, None).await?);
    }
    trim_heap();
    let rss_loaded = resident_bytes().context("cannot read /proc/self/statm")?;
    let report = service.residency.report().await?;
    ensure!(
        report.invariant_violations.is_empty(),
        "residency bookkeeping broke: {:?}",
        report.invariant_violations
    );
    let resident = |base: bool| {
        report.entries.iter().filter(move |e| {
            e.bytes > 0 && e.leases > 0 && matches!(e.resource, ResourceKey::Base(_)) == base
        })
    };
    let measured = Measured {
        layout,
        rss_before,
        rss_loaded,
        accounted_bytes: report.accounted_bytes,
        bases_resident: resident(true).count(),
        lenses_resident: resident(false).count(),
        base_bytes: resident(true).map(|e| e.bytes).max().unwrap_or(0),
        lens_bytes: resident(false).map(|e| e.bytes).max().unwrap_or(0),
    };
    drop(leases);
    Ok(measured)
}

/// Measures every layout, each in a fresh child process of this executable.
pub fn run(model: &Path, lens: &Path) -> Result<Vec<MemoryRow>> {
    let exe = std::env::current_exe()?;
    let mut measured = Vec::new();
    for layout in LAYOUTS {
        let out = Command::new(&exe)
            .args(["bench-memory", "--model"])
            .arg(model)
            .arg("--lens")
            .arg(lens)
            .arg("--one")
            .arg(format!("{},{}", layout.groups, layout.lenses))
            .output()
            .context("cannot start a measuring process")?;
        if !out.status.success() {
            bail!(
                "measuring {layout:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let m: Measured = serde_json::from_slice(&out.stdout)
            .context("a measuring process wrote something other than its JSON")?;
        measured.push(m);
    }
    let reference = measured[0]
        .rss_loaded
        .saturating_sub(measured[0].rss_before);
    Ok(measured
        .into_iter()
        .map(|m| {
            let models = m.layout.lenses.max(1) as u64;
            MemoryRow {
                rss_delta: m.rss_loaded.saturating_sub(m.rss_before),
                separate_copies: models * reference + m.layout.lenses as u64 * m.lens_bytes,
                original_design: m.layout.groups as u64 * reference
                    + m.layout.lenses as u64 * m.lens_bytes,
                measured: m,
            }
        })
        .collect())
}

/// Parses `--one G,N`.
pub fn parse_layout(s: &str) -> Result<Layout> {
    let (g, n) = s
        .split_once(',')
        .context("expected GROUPS,LENSES such as 4,8")?;
    Ok(Layout {
        groups: g.trim().parse().context("GROUPS is not a number")?,
        lenses: n.trim().parse().context("LENSES is not a number")?,
    })
}
