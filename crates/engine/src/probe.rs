//! Facts about bases, lenses and donors read from their files without loading any weights, for
//! checking a configuration before anything is loaded; and the machine's memory size, from which
//! default budgets are derived.
//!
//! A base is identified by the content of its weight files, not by its path, so that two groups
//! naming the same checkpoint (or copies of it) share one loaded copy. Hashing a multi-gigabyte
//! file takes seconds, so each file's hash is cached by (canonical path, length, modification
//! time): probing an unchanged file again costs a `stat`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use lensd_core::config::{BaseFacts, DonorKind, LensFacts, Probe};
use lensd_core::{ComputeDtype, LensKind};

use crate::error::{EngineError, Result};
use crate::hub;
use crate::inspect::{gguf_resident, hf_resident};
use crate::lens::talkative::{self, TalkativeLens};
use crate::lens::TunedLens;
use crate::lora::Adapter;
use crate::weights::gguf::{self, GgufFile};
use crate::weights::safetensors::HfCheckpoint;

/// Reads headers of real files and hashes their content.
#[derive(Default)]
pub struct FileProbe {
    hashes: Mutex<HashMap<FileKey, blake3::Hash>>,
    hashed_bytes: AtomicU64,
    /// Bases compute on GPUs, where an `f32` base widens every matrix.
    gpus: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileProbe {
    pub fn new() -> Self {
        Self::default()
    }

    /// A probe for bases computed on GPUs (`true`) or on the CPU (the default): their `f32`
    /// bytes differ, as only the CPU multiplies quantized matrices in f32 as stored.
    pub fn on_gpus(mut self, gpus: bool) -> Self {
        self.gpus = gpus;
        self
    }

    /// Bytes read for hashing so far. Probing unchanged files again adds nothing.
    pub fn hashed_bytes(&self) -> u64 {
        self.hashed_bytes.load(Ordering::Relaxed)
    }

    /// The facts of the base at `path` (a GGUF file or a Hugging Face folder) for `dtype`.
    /// A Hugging Face hub id (`owner/name[@revision]`) is read from the local hub cache.
    pub fn base_facts(&self, path: &Path, dtype: ComputeDtype) -> Result<BaseFacts> {
        let path = &hub::locate(path)?;
        let meta = fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::format(
                    path,
                    "no such file or folder: name a GGUF file, a Hugging Face checkpoint folder, \
                     or a Hugging Face model id (owner/name) downloaded with `lensd pull`",
                )
            } else {
                EngineError::io(path, e)
            }
        })?;
        if !meta.is_dir() {
            // Says what a pipe or device is, instead of reading it as a model.
            lensd_core::files::open(path).map_err(|e| EngineError::io(path, e))?;
        }
        let (cfg, resident, files) = if meta.is_dir() {
            let ck = HfCheckpoint::open(path)?;
            if !path.join("tokenizer.json").is_file() {
                return Err(EngineError::format(
                    path,
                    "no tokenizer.json in the folder: a Hugging Face base needs config.json, \
                     safetensors weights and tokenizer.json",
                ));
            }
            let mut shards = ck.files().to_vec();
            shards.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            let mut files = vec![path.join("config.json")];
            files.extend(shards);
            (ck.config()?, hf_resident(&ck), files)
        } else if gguf::is_gguf(path) {
            let g = GgufFile::open(path)?;
            (g.config()?, gguf_resident(&g), vec![path.to_path_buf()])
        } else {
            return Err(EngineError::format(
                path,
                "neither a GGUF file nor a Hugging Face checkpoint folder (config.json, \
                 safetensors weights and tokenizer.json)",
            ));
        };
        let mut h = blake3::Hasher::new();
        for f in &files {
            h.update(self.file_hash(f)?.as_bytes());
        }
        Ok(BaseFacts {
            content_id: format!("{}-{}", short(&h.finalize()), dtype.as_str()),
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            resident_bytes: match dtype {
                ComputeDtype::F32 if self.gpus => resident.f32_widened,
                _ => resident.of(dtype),
            },
            shape: crate::donor::shape_of(&cfg).2,
        })
    }

    /// What a model's `different_activations_orig_path` names, told from its files: a folder
    /// with `adapter_config.json` is a PEFT LoRA adapter; a folder with `config.json`, or a GGUF
    /// file, is a full model (then read with [`FileProbe::base_facts`]). A hub id is read from
    /// the local hub cache.
    pub fn donor_kind(&self, spec: &Path) -> Result<DonorKind> {
        let path = &hub::locate(spec)?;
        let meta = fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::format(path, format!("no such file or folder: {DONOR_FORMS}"))
            } else {
                EngineError::io(path, e)
            }
        })?;
        let model = if meta.is_dir() {
            path.join("config.json").is_file()
        } else {
            gguf::is_gguf(path)
        };
        if meta.is_dir() && path.join("adapter_config.json").is_file() {
            Ok(DonorKind::Adapter)
        } else if model {
            Ok(DonorKind::Model)
        } else {
            Err(EngineError::format(
                path,
                format!("neither a LoRA adapter nor a model: {DONOR_FORMS}"),
            ))
        }
    }

    /// The facts of a lens of `kind` at `path`. A logit lens has no files and no facts.
    pub fn lens_facts(&self, kind: LensKind, path: &Path) -> Result<LensFacts> {
        self.lens_facts_with(kind, path, None)
    }

    /// The facts of a lens and, for a talkative lens, its donor adapter.
    pub fn lens_facts_with(
        &self,
        kind: LensKind,
        path: &Path,
        donor: Option<&Path>,
    ) -> Result<LensFacts> {
        match kind {
            LensKind::Tuned => self.tuned(path),
            LensKind::Talkative => self.talkative(path, donor),
            LensKind::Logit => Err(EngineError::Input(format!(
                "{}: a logit lens has no files to read",
                path.display()
            ))),
        }
    }

    fn tuned(&self, dir: &Path) -> Result<LensFacts> {
        // A missing folder is reported as missing, a pipe as a pipe, not as a file of the
        // wrong kind.
        if let Err(e) = lensd_core::files::folder(dir) {
            // A plain file is told apart by the lens's own reader, naming what a lens is.
            if !dir.is_file() {
                return Err(EngineError::io(dir, e));
            }
        }
        let cfg = TunedLens::read_config(dir)?;
        let cfg_path = dir.join("config.json");
        // The loader prefers params.safetensors when both exist; hash what it would read.
        let params = ["params.safetensors", "params.pt"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                EngineError::format(dir, "neither params.safetensors nor params.pt is present")
            })?;
        let mut h = blake3::Hasher::new();
        h.update(self.file_hash(&cfg_path)?.as_bytes());
        h.update(self.file_hash(&params)?.as_bytes());
        // Translators are held as f32 whatever the file stores: a [d, d] matrix per layer
        // and, with `bias`, a [d] vector.
        let d = cfg.d_model as u64;
        let per_layer = d * d + if cfg.bias { d } else { 0 };
        Ok(LensFacts {
            content_id: short(&h.finalize()),
            d_model: Some(cfg.d_model),
            n_layers: Some(cfg.num_hidden_layers),
            layer: None,
            bytes: cfg.num_hidden_layers as u64 * per_layer * 4,
        })
    }

    /// A talkative lens folder (docs/talkative.md), read whole: its tensors are small and any
    /// problem is best reported when the configuration is checked. Its LoRA donor, when the
    /// model names one, is part of the lens: its bytes count and its files are in the identity.
    fn talkative(&self, dir: &Path, donor: Option<&Path>) -> Result<LensFacts> {
        lensd_core::files::folder(dir).map_err(|e| EngineError::io(dir, e))?;
        let lens = TalkativeLens::open(dir)?;
        let mut h = blake3::Hasher::new();
        for f in [talkative::MANIFEST, talkative::TENSORS] {
            h.update(self.file_hash(&dir.join(f))?.as_bytes());
        }
        let mut bytes = lens.bytes();
        if let Some(donor) = donor {
            let donor = &hub::locate(donor)?;
            if !donor.is_dir() {
                return Err(EngineError::format(
                    donor,
                    "the donor (different_activations_orig_path) must be a folder with a PEFT \
                     LoRA adapter (adapter_config.json, adapter_model.safetensors), or the \
                     Hugging Face id (owner/name) of one downloaded with `lensd pull`",
                ));
            }
            let adapter = Adapter::open(donor)?;
            h.update(b"donor");
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                h.update(self.file_hash(&donor.join(f))?.as_bytes());
            }
            bytes += adapter.bytes();
        }
        Ok(LensFacts {
            content_id: short(&h.finalize()),
            d_model: Some(lens.manifest.base.d_model),
            n_layers: lens.manifest.base.n_layers,
            layer: Some(lens.manifest.layer),
            bytes,
        })
    }

    /// The blake3 hash of one file's bytes, from the cache when the file is unchanged.
    fn file_hash(&self, path: &Path) -> Result<blake3::Hash> {
        let canonical = fs::canonicalize(path).map_err(|e| EngineError::io(path, e))?;
        let meta = fs::metadata(&canonical).map_err(|e| EngineError::io(path, e))?;
        let key = FileKey {
            path: canonical,
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        if let Some(h) = self.lock().get(&key) {
            return Ok(*h);
        }
        // Hashed outside the lock: another probe of a different file need not wait.
        let h = hash_file(&key.path, key.len).map_err(|e| EngineError::io(path, e))?;
        self.hashed_bytes.fetch_add(key.len, Ordering::Relaxed);
        self.lock().insert(key, h);
        Ok(h)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, blake3::Hash>> {
        // The map holds only finished hashes, so a panic elsewhere cannot leave it half-written.
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a donor may be, for messages.
const DONOR_FORMS: &str = "the donor (different_activations_orig_path) is a PEFT LoRA adapter \
    folder (adapter_config.json, adapter_model.safetensors), a full model of the base's shapes \
    (a folder with config.json, safetensors weights and tokenizer.json, or a GGUF file), or the \
    Hugging Face id (owner/name) of either, downloaded with `lensd pull`";

impl Probe for FileProbe {
    fn base(&self, path: &Path, dtype: ComputeDtype) -> std::result::Result<BaseFacts, String> {
        self.base_facts(path, dtype).map_err(|e| e.to_string())
    }

    fn lens(
        &self,
        kind: LensKind,
        path: &Path,
        donor: Option<&Path>,
    ) -> std::result::Result<LensFacts, String> {
        self.lens_facts_with(kind, path, donor)
            .map_err(|e| e.to_string())
    }

    fn donor_kind(&self, path: &Path) -> std::result::Result<DonorKind, String> {
        FileProbe::donor_kind(self, path).map_err(|e| e.to_string())
    }
}

fn hash_file(path: &Path, len: u64) -> std::io::Result<blake3::Hash> {
    // Read in chunks, not mapped: a file truncated while it is hashed is then an error, not a
    // bus error.
    let file = lensd_core::files::open(path)?;
    let mut buf = vec![0u8; (8 << 20).min(len as usize).max(1)];
    let mut h = blake3::Hasher::new();
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf[..want], done)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended at byte {done} of {len} while it was hashed"),
            ));
        }
        h.update_rayon(&buf[..n]);
        done += n as u64;
    }
    Ok(h.finalize())
}

/// `blake3:` and the first 16 hex digits: 64 bits tell apart any set of checkpoints one
/// server will see, and stay short enough to read in a table.
fn short(h: &blake3::Hash) -> String {
    format!("blake3:{}", &h.to_hex()[..16])
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), from which the default
/// budgets are derived.
pub fn machine_memory() -> Result<u64> {
    let path = Path::new("/proc/meminfo");
    let text = fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    mem_total(&text).ok_or_else(|| EngineError::format(path, "no readable `MemTotal:` line"))
}

/// `MemTotal:  16384 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_reads_kibibytes() {
        let text = "MemTotal:       24570100 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(24_570_100 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn this_machine_reports_its_memory() {
        // Every Linux machine that runs lensd has /proc/meminfo; a few MiB at least.
        assert!(machine_memory().unwrap() > 64 << 20);
    }
}
