//! What a weights file holds, read from its header alone: architecture, layer count, bytes per
//! kind of tensor, and the memory the base would take in each compute dtype.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::weights::gguf::{self, GgufFile};
use crate::weights::safetensors::HfCheckpoint;
pub use crate::weights::Resident;

#[derive(Debug, Clone, Serialize)]
pub struct KindSize {
    pub kind: &'static str,
    pub tensors: usize,
    pub bytes: u64,
    pub elements: u64,
    /// Tensor count per stored dtype.
    pub dtypes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub format: &'static str,
    pub architecture: String,
    /// Absent when the file describes an architecture lensd does not run.
    pub config: Option<ModelConfig>,
    pub unsupported: Option<String>,
    pub file_bytes: u64,
    pub tensor_count: usize,
    pub tensor_bytes: u64,
    pub kinds: Vec<KindSize>,
    /// Bytes of weights once loaded with each compute dtype.
    pub resident_stored: u64,
    /// `f32` on the CPU, where quantized matrices the kernels read stay as stored.
    pub resident_f32: u64,
    /// `f32` on a GPU, every matrix widened.
    pub resident_f32_widened: u64,
    pub resident_bf16: u64,
    pub tokenizer: Option<String>,
    pub chat_template: bool,
}

/// The role of a tensor, from its name in either naming scheme.
pub fn tensor_kind(name: &str) -> &'static str {
    if name.contains("token_embd") || name.contains("embed_tokens") {
        "embedding"
    } else if name.starts_with("output.") || name.starts_with("lm_head") {
        "head"
    } else if name.contains("norm") {
        "norm"
    } else if name.contains("attn") {
        "attention"
    } else if name.contains("ffn") || name.contains("mlp") {
        "mlp"
    } else {
        "other"
    }
}

struct Entry {
    name: String,
    dtype: String,
    elements: u64,
    bytes: u64,
    /// Kept as stored in `f32` on the CPU ([`crate::weights::Linear::Wide`]).
    wide: bool,
}

/// The resident bytes of a GGUF file's weights, from its tensor table: the tensors the model
/// loads when its configuration is supported, every tensor otherwise.
pub fn gguf_resident(g: &GgufFile) -> Resident {
    match g.config() {
        Ok(cfg) => g.resident(&cfg),
        Err(_) => resident(&gguf_entries(g)),
    }
}

/// The resident bytes of a Hugging Face checkpoint's weights, from its safetensors headers
/// (tensors the text model does not use, such as a vision tower, are not counted).
pub fn hf_resident(ck: &HfCheckpoint) -> Resident {
    match ck.config() {
        Ok(cfg) => ck.resident(&cfg),
        Err(_) => resident(&hf_entries(ck)),
    }
}

/// Every tensor's bytes, for files whose architecture lensd cannot run.
fn resident(entries: &[Entry]) -> Resident {
    let mut r = Resident {
        stored: 0,
        f32: 0,
        f32_widened: 0,
        bf16: 0,
    };
    for e in entries {
        // Norms are always held as f32; matrices keep their stored bytes, widen to f32 (on the
        // CPU only those the kernels do not multiply from their blocks) or become bf16.
        let norm = tensor_kind(&e.name) == "norm";
        r.stored += if norm { e.elements * 4 } else { e.bytes };
        r.f32 += if e.wide && !norm {
            e.bytes
        } else {
            e.elements * 4
        };
        r.f32_widened += e.elements * 4;
        r.bf16 += e.elements * if norm { 4 } else { 2 };
    }
    r
}

fn gguf_entries(g: &GgufFile) -> Vec<Entry> {
    g.tensor_infos()
        .iter()
        .map(|(name, info)| Entry {
            name: name.clone(),
            dtype: info.dtype.to_string(),
            // MXFP4 too: 32 values per 17-byte block, as many as the shape says.
            elements: info.elements(),
            bytes: GgufFile::tensor_bytes(info),
            wide: info.dtype.wide(),
        })
        .collect()
}

/// Every tensor of a checkpoint. MXFP4 blocks (`*_blocks`, bytes) count two parameters a
/// byte and their scales (`*_scales`) none.
fn hf_entries(ck: &HfCheckpoint) -> Vec<Entry> {
    ck.tensor_table()
        .into_iter()
        .map(|(name, dtype, shape, bytes)| {
            let elements = shape.iter().product::<usize>() as u64;
            let (dtype, elements) = match dtype.as_str() {
                "U8" if name.ends_with("_blocks") => ("MXFP4".to_string(), elements * 2),
                "U8" if name.ends_with("_scales") => ("E8M0 scales".to_string(), 0),
                _ => (dtype, elements),
            };
            Entry {
                name,
                dtype,
                elements,
                bytes,
                wide: false,
            }
        })
        .collect()
}

pub fn inspect(path: &Path) -> Result<InspectReport> {
    // A Hugging Face hub id (`owner/name[@revision]`) reads its snapshot in the local cache.
    let path = &crate::hub::locate(path)?;
    let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
    if !meta.is_dir() {
        // Says what a pipe or device is, instead of waiting on it or calling it no model.
        lensd_core::files::open(path).map_err(|e| EngineError::io(path, e))?;
    }
    if meta.is_dir() {
        inspect_hf(path)
    } else if gguf::is_gguf(path) {
        inspect_gguf(path, meta.len())
    } else {
        Err(EngineError::format(
            path,
            "neither a GGUF file nor a Hugging Face checkpoint folder",
        ))
    }
}

fn inspect_gguf(path: &Path, file_bytes: u64) -> Result<InspectReport> {
    let g = GgufFile::open(path)?;
    let entries = gguf_entries(&g);
    let architecture = g.architecture().unwrap_or("unknown").to_string();
    let (config, unsupported) = match g.config() {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let tokenizer = g.get_str("tokenizer.ggml.model").ok().map(|m| {
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        format!("{m} (pre-tokenizer {pre})")
    });
    let chat_template = g.get_str("tokenizer.chat_template").is_ok();
    Ok(report(
        path,
        "gguf",
        architecture,
        (config, unsupported),
        file_bytes,
        entries,
        gguf_resident(&g),
        tokenizer,
        chat_template,
    ))
}

fn inspect_hf(dir: &Path) -> Result<InspectReport> {
    let ck = HfCheckpoint::open(dir)?;
    let file_bytes = ck
        .files()
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let entries = hf_entries(&ck);
    let (config, unsupported) = match ck.config() {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let tokenizer = dir
        .join("tokenizer.json")
        .is_file()
        .then(|| "tokenizer.json".to_string());
    let chat_template = lensd_core::files::read_to_string(&dir.join("tokenizer_config.json"))
        .map(|t| t.contains("\"chat_template\""))
        .unwrap_or(false);
    let architecture = match &config {
        Some(c) => c.architecture.clone(),
        None => ck
            .json
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string(),
    };
    Ok(report(
        dir,
        "safetensors",
        architecture,
        (config, unsupported),
        file_bytes,
        entries,
        hf_resident(&ck),
        tokenizer,
        chat_template,
    ))
}

#[allow(clippy::too_many_arguments)]
fn report(
    path: &Path,
    format: &'static str,
    architecture: String,
    (config, unsupported): (Option<ModelConfig>, Option<String>),
    file_bytes: u64,
    entries: Vec<Entry>,
    resident: Resident,
    tokenizer: Option<String>,
    chat_template: bool,
) -> InspectReport {
    let mut kinds: BTreeMap<&'static str, KindSize> = BTreeMap::new();
    for e in &entries {
        let kind = tensor_kind(&e.name);
        let k = kinds.entry(kind).or_insert_with(|| KindSize {
            kind,
            tensors: 0,
            bytes: 0,
            elements: 0,
            dtypes: BTreeMap::new(),
        });
        k.tensors += 1;
        k.bytes += e.bytes;
        k.elements += e.elements;
        *k.dtypes.entry(e.dtype.clone()).or_default() += 1;
    }
    let order = ["embedding", "attention", "mlp", "norm", "head", "other"];
    let mut kinds: Vec<KindSize> = kinds.into_values().collect();
    kinds.sort_by_key(|k| order.iter().position(|o| *o == k.kind));
    InspectReport {
        path: path.display().to_string(),
        format,
        architecture,
        config,
        unsupported,
        file_bytes,
        tensor_count: entries.len(),
        tensor_bytes: entries.iter().map(|e| e.bytes).sum(),
        kinds,
        resident_stored: resident.stored,
        resident_f32: resident.f32,
        resident_f32_widened: resident.f32_widened,
        resident_bf16: resident.bf16,
        tokenizer,
        chat_template,
    }
}
