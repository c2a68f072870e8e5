//! `lensd bench-switch`: how long moving between models takes through the residency manager
//! on the demo model, beside the time to merely read the same bytes from disk (the physical
//! limit) and the original site's documented switch times.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use lensd::runtime::trim_heap;

use crate::bench::median;
use lensd::service::Service;
use lensd_core::residency::Tier;
use lensd_engine::lens::fit::{fit_tuned_lens, FitOptions};
use lensd_engine::{Base, ComputeDtype, LoadOptions};
use lensd_sched::residency::PreloadEvent;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct SwitchRow {
    pub switch: &'static str,
    pub bytes: u64,
    /// Median time through the residency manager, milliseconds.
    pub lensd_ms: f64,
    /// Median time to read the same files with a cold page cache, when the switch reads a disk.
    pub raw_read_ms: Option<f64>,
    /// What the original site documented for the same kind of switch.
    pub original: &'static str,
}

/// Drops a file's pages from the page cache so that the next read comes from the disk.
fn evict_page_cache(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    use std::os::fd::AsRawFd;
    // Pages not yet written back cannot be dropped: write them first.
    f.sync_data()
        .with_context(|| format!("cannot write back {}", path.display()))?;
    // SAFETY: a valid descriptor; the call only drops clean cached pages of this file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    ensure!(rc == 0, "posix_fadvise failed on {}", path.display());
    Ok(())
}

fn files_of(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    }
}

/// Milliseconds to read every file of `path` from a cold page cache.
fn raw_read_ms(path: &Path) -> Result<f64> {
    let files = files_of(path);
    for f in &files {
        evict_page_cache(f)?;
    }
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        let mut file = std::fs::File::open(f)?;
        while file.read(&mut buf)? > 0 {}
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn cold(path: &Path) -> Result<()> {
    for f in files_of(path) {
        evict_page_cache(&f)?;
        let (resident, pages) = resident_pages(&f)?;
        // Pages still mapped by a loaded model stay in the page cache: a read would be warm.
        ensure!(
            resident * 100 <= pages,
            "{} keeps {resident} of its {pages} pages in the page cache after eviction: \
             something still maps it, and a read of it would not come from the disk",
            f.display()
        );
    }
    Ok(())
}

/// How many of the file's pages are in the page cache, and how many it has.
fn resident_pages(path: &Path) -> Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: the page size is a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: a fresh read-only mapping of the file, only asked which pages are resident (which
    // reads none of them), then unmapped.
    let rc = unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        ensure!(addr != libc::MAP_FAILED, "cannot map {}", path.display());
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        rc
    };
    ensure!(rc == 0, "mincore failed on {}", path.display());
    Ok((vec.iter().filter(|&&v| v & 1 == 1).count(), pages))
}

/// Fits one small tuned lens and writes it twice with different content, so that the two
/// copies are distinct lenses of the same size.
fn make_lenses(model: &Path, corpus: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(corpus).with_context(|| {
        format!(
            "cannot read {}: run scripts/prepare-demo-corpus.sh first",
            corpus.display()
        )
    })?;
    let base = Base::load(
        model,
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )?;
    let ids = base.tokenizer.encode(&text, false)?;
    let opts = FitOptions {
        max_train_tokens: 2560,
        holdout_tokens: 128,
        ..FitOptions::default()
    };
    let (mut lens, _) = fit_tuned_lens(&base, &ids, &opts, "bench", &mut |_, _, _| {})?;
    let a = dir.join("lens-a");
    lens.save(&a)?;
    lens.config.base_model_name_or_path = "bench copy".into();
    let b = dir.join("lens-b");
    lens.save(&b)?;
    drop(base);
    trim_heap();
    Ok((a, b))
}

fn write_config(dir: &Path, model: &Path, a: &Path, b: &Path) -> Result<PathBuf> {
    let tuned = |id: &str, p: &Path| serde_json::json!({"id": id, "name": id, "lens": "tuned", "lens_checkpoint_path": p});
    // The same file in two compute dtypes is two bases.
    let doc = serde_json::json!({
        "model_groups": [
            {"group_id": "f32", "group_name": "f32", "base_model_path": model, "compute_dtype": "f32",
             "models": [{"id": "f32-logit", "name": "logit", "lens": "logit"}, tuned("a", a), tuned("b", b)]},
            {"group_id": "stored", "group_name": "stored", "base_model_path": model, "compute_dtype": "stored",
             "models": [{"id": "stored-logit", "name": "logit", "lens": "logit"}]}
        ],
        "settings": {"device_budget": "600MiB", "host_budget": "1GiB"}
    });
    let path = dir.join("model_groups.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    Ok(path)
}

async fn timed_acquire(service: &Service, model: &str) -> Result<f64> {
    let t = Instant::now();
    let lease = service.residency.acquire(model).await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(lease);
    Ok(ms)
}

pub async fn run(model: &Path, corpus: &Path, reps: usize) -> Result<Vec<SwitchRow>> {
    ensure!(reps > 0, "reps must be at least 1");
    let model = &std::fs::canonicalize(model)
        .with_context(|| format!("cannot find {}", model.display()))?;
    let dir = tempfile::tempdir()?;
    let (a, b) = make_lenses(model, corpus, dir.path())?;
    let cfg = write_config(dir.path(), model, &a, &b)?;
    let lens_bytes: u64 = files_of(&a)
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    let model_bytes = model.metadata()?.len();
    let mut times: [Vec<f64>; 5] = Default::default();
    let mut raw: [Vec<f64>; 2] = Default::default();
    for _ in 0..reps {
        // A fresh service each round, so that every "from disk" really reads the disk.
        let service = Service::start(&cfg).await?;
        cold(model)?;
        times[0].push(timed_acquire(&service, "f32-logit").await?);
        cold(&a)?;
        times[1].push(timed_acquire(&service, "a").await?);
        // Lens b straight to the host, then switching to it.
        let mut events = service.residency.preload("f32", Tier::Host).await?;
        while let Some(ev) = events.recv().await {
            match ev {
                PreloadEvent::Done { .. } => break,
                PreloadEvent::Failed { error, .. } => {
                    anyhow::bail!("preloading the lens failed: {error}")
                }
                _ => {}
            }
        }
        times[4].push(timed_acquire(&service, "b").await?);
        // The f32 base waits on the host; coming back is a relabel.
        service.residency.unload("f32", Tier::Host).await?;
        times[3].push(timed_acquire(&service, "f32-logit").await?);
        // Both dtypes keep the file's blocks, mapped where they can be: the f32 base is freed
        // before the stored one is read, or its mapping would keep the file's pages cached.
        service.residency.unload("f32", Tier::Disk).await?;
        cold(model)?;
        times[2].push(timed_acquire(&service, "stored-logit").await?);
        service.residency.unload("stored", Tier::Disk).await?;
        drop(service);
        raw[0].push(raw_read_ms(model)?);
        raw[1].push(raw_read_ms(&a)?);
    }
    Ok(vec![
        SwitchRow {
            switch: "lens, from host (within a group)",
            bytes: lens_bytes,
            lensd_ms: median(&times[4]),
            raw_read_ms: None,
            original: "about 10 s",
        },
        SwitchRow {
            switch: "lens, from disk, cold page cache (within a group)",
            bytes: lens_bytes,
            lensd_ms: median(&times[1]),
            raw_read_ms: Some(median(&raw[1])),
            original: "about 10 s",
        },
        SwitchRow {
            switch: "base, from host (between groups)",
            bytes: model_bytes,
            lensd_ms: median(&times[3]),
            raw_read_ms: None,
            original: "1-2 min",
        },
        SwitchRow {
            switch: "base f32, from disk, cold page cache",
            bytes: model_bytes,
            lensd_ms: median(&times[0]),
            raw_read_ms: Some(median(&raw[0])),
            original: "1-2 min",
        },
        SwitchRow {
            switch: "base stored (Q4_1), from disk, cold page cache",
            bytes: model_bytes,
            lensd_ms: median(&times[2]),
            raw_read_ms: Some(median(&raw[0])),
            original: "1-2 min",
        },
    ])
}
