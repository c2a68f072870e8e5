//! Tuned lenses in the tuned-lens package's format: a folder with `config.json` and the
//! translators in `params.pt` (a torch zip archive, read as tensors only: candle's reader
//! interprets the pickle opcodes itself and never runs Python code) or `params.safetensors`
//! (same keys; what lensd writes). Translator `i` maps the stream entering block `i` as
//! `h + h·Wᵢᵀ + bᵢ`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::tuned_mapped::{self, MappedMatrix};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TunedLensConfig {
    #[serde(default)]
    pub base_model_name_or_path: String,
    pub d_model: usize,
    pub num_hidden_layers: usize,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default)]
    pub base_model_revision: Option<String>,
    /// Published lenses spell this key `unemebd_hash`; both are accepted.
    #[serde(default, alias = "unemebd_hash")]
    pub unembed_hash: Option<String>,
    #[serde(default = "linear_kind")]
    pub lens_type: String,
}

fn yes() -> bool {
    true
}
fn linear_kind() -> String {
    "linear_tuned_lens".into()
}

#[derive(Debug)]
pub struct TunedLens {
    pub config: TunedLensConfig,
    /// `(W [d, d] in PyTorch's out × in layout, b [d])` per layer `0..L`.
    translators: Vec<(Matrix, Option<Tensor>)>,
    pub source: PathBuf,
}

/// A translator's `W`: a tensor, or f32 values in a mapping of the lens's file.
#[derive(Debug, Clone)]
enum Matrix {
    Tensor(Tensor),
    Mapped(MappedMatrix),
}

impl Matrix {
    fn elem_count(&self) -> usize {
        match self {
            Matrix::Tensor(t) => t.elem_count(),
            Matrix::Mapped(m) => m.d() * m.d(),
        }
    }

    /// The matrix as a tensor on `device` (a copy of a mapped one).
    fn tensor_on(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Tensor(t) => t.to_device(device),
            Matrix::Mapped(m) => Tensor::from_slice(m.values(), (m.d(), m.d()), device),
        }
    }
}

impl TunedLens {
    pub fn name(&self) -> String {
        let dir = self
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        dir.unwrap_or_else(|| "tuned".into())
    }

    /// Builds a lens from translators; `weights[i]` is `[d, d]`, `biases[i]` is `[d]`.
    pub fn from_parts(config: TunedLensConfig, weights: Vec<Tensor>, biases: Vec<Tensor>) -> Self {
        let translators = weights
            .into_iter()
            .zip(biases)
            .map(|(w, b)| (Matrix::Tensor(w), Some(b)))
            .collect();
        TunedLens {
            config,
            translators,
            source: PathBuf::new(),
        }
    }

    /// Reads and checks a lens folder's `config.json`.
    pub fn read_config(dir: &Path) -> Result<TunedLensConfig> {
        if !dir.is_dir() {
            return Err(EngineError::format(
                dir,
                "a tuned lens is a folder with config.json and params.pt or params.safetensors",
            ));
        }
        let cfg_path = dir.join("config.json");
        let text = lensd_core::files::read_to_string(&cfg_path)
            .map_err(|e| EngineError::io(&cfg_path, e))?;
        let config: TunedLensConfig = serde_json::from_str(&text).map_err(|e| {
            EngineError::format(&cfg_path, format!("invalid tuned-lens config: {e}"))
        })?;
        if config.lens_type != "linear_tuned_lens" {
            return Err(EngineError::unsupported(
                &cfg_path,
                format!(
                    "lens_type `{}` (supported: linear_tuned_lens)",
                    config.lens_type
                ),
            ));
        }
        Ok(config)
    }

    /// Loads a lens for a base of shape `cfg`, refusing one made for another shape.
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let config = Self::read_config(dir)?;
        let cfg_path = dir.join("config.json");
        if config.d_model != cfg.d_model {
            return Err(EngineError::lens(
                &cfg_path,
                format!(
                    "d_model is {} but the base's width is {}",
                    config.d_model, cfg.d_model
                ),
            ));
        }
        if config.num_hidden_layers != cfg.n_layers {
            return Err(EngineError::lens(
                &cfg_path,
                format!(
                    "num_hidden_layers is {} but the base has {} layers",
                    config.num_hidden_layers, cfg.n_layers
                ),
            ));
        }
        Self::open_with(dir, config)
    }

    /// Loads a lens whose fit to its base was checked elsewhere (by the config check).
    pub fn open(dir: &Path) -> Result<Self> {
        let config = Self::read_config(dir)?;
        Self::open_with(dir, config)
    }

    fn open_with(dir: &Path, config: TunedLensConfig) -> Result<Self> {
        let st = dir.join("params.safetensors");
        let pt = dir.join("params.pt");
        if st.is_file() {
            let (d, layers) = (config.d_model, config.num_hidden_layers);
            if let Some(mapped) = tuned_mapped::open(&st, d, layers, config.bias)? {
                let translators = mapped
                    .into_iter()
                    .map(|(w, b)| (Matrix::Mapped(w), b))
                    .collect();
                return Ok(TunedLens {
                    config,
                    translators,
                    source: dir.to_path_buf(),
                });
            }
        }
        let (params_path, tensors) = if st.is_file() {
            let t = crate::weights::tensor_file::read_safetensors(&st)?;
            (st, t)
        } else if pt.is_file() {
            let t = candle_core::pickle::read_all(&pt).map_err(|e| {
                EngineError::format(&pt, format!("not a readable torch archive: {e}"))
            })?;
            (pt, t.into_iter().collect::<HashMap<_, _>>())
        } else {
            return Err(EngineError::format(
                dir,
                "neither params.safetensors nor params.pt is present",
            ));
        };
        let translators = read_translators(&params_path, &config, tensors)?;
        Ok(TunedLens {
            config,
            translators,
            source: dir.to_path_buf(),
        })
    }

    /// Writes `config.json` and `params.safetensors` (f32) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let cfg_path = dir.join("config.json");
        let json = serde_json::to_string_pretty(&self.config).expect("config serialises");
        std::fs::write(&cfg_path, json).map_err(|e| EngineError::io(&cfg_path, e))?;
        let mut map = HashMap::new();
        for (i, (w, b)) in self.translators.iter().enumerate() {
            map.insert(
                format!("{i}.weight"),
                w.tensor_on(&Device::Cpu)?.to_dtype(DType::F32)?,
            );
            if let Some(b) = b {
                map.insert(format!("{i}.bias"), b.to_dtype(DType::F32)?);
            }
        }
        let path = dir.join("params.safetensors");
        candle_core::safetensors::save(&map, &path)
            .map_err(|e| EngineError::format(&path, format!("cannot write: {e}")))?;
        Ok(())
    }

    /// The same lens with its translators in `device`'s memory.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<TunedLens> {
        let translators = self
            .translators
            .iter()
            .map(|(w, b)| {
                let w = match w {
                    // A mapped translator stays in its mapping on the CPU.
                    Matrix::Mapped(_) if device.is_cpu() => w.clone(),
                    _ => Matrix::Tensor(w.tensor_on(device)?),
                };
                Ok((w, b.as_ref().map(|b| b.to_device(device)).transpose()?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(TunedLens {
            config: self.config.clone(),
            translators,
            source: self.source.clone(),
        })
    }

    /// Whether layer `layer` has a translator (every layer below `L` does).
    pub fn translates(&self, layer: usize) -> bool {
        layer < self.translators.len()
    }

    /// `h + h·Wᵀ + b` for layers below `L`; the final layer is the model's own output.
    pub fn transform(&self, layer: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        let Some((w, b)) = self.translators.get(layer) else {
            return Ok(h.clone());
        };
        let on_cpu = h.device().is_cpu() && h.dtype() == DType::F32;
        match w {
            Matrix::Mapped(m) if on_cpu => tuned_mapped::affine(h, m.values(), b.as_ref()),
            Matrix::Mapped(_) => candle_core::bail!("a mapped translator is multiplied on the CPU"),
            Matrix::Tensor(w) => {
                // On the CPU, the same product as a mapped translator's, to the same bits.
                if on_cpu {
                    if let Some(y) =
                        tuned_mapped::with_cpu_f32(w, |w| tuned_mapped::affine(h, w, b.as_ref()))
                    {
                        return y;
                    }
                }
                let y = (h + h.matmul(&w.t()?)?)?;
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }

    /// Whether the translators lie in a mapping of the lens's file (still shared with the page
    /// cache, or copied into lensd's memory after the file changed).
    pub fn is_mapped(&self) -> bool {
        self.translators
            .iter()
            .any(|(w, _)| matches!(w, Matrix::Mapped(_)))
    }

    /// Whether the translators are mapped and still the page cache's.
    pub fn is_shared_with_the_file(&self) -> bool {
        self.translators.iter().any(|(w, _)| match w {
            Matrix::Mapped(m) => m.is_shared_with_the_file(),
            Matrix::Tensor(_) => false,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.translators
            .iter()
            .map(|(w, b)| {
                let n = w.elem_count() + b.as_ref().map_or(0, |b| b.elem_count());
                (n * 4) as u64
            })
            .sum()
    }
}

fn read_translators(
    path: &Path,
    config: &TunedLensConfig,
    mut tensors: HashMap<String, Tensor>,
) -> Result<Vec<(Matrix, Option<Tensor>)>> {
    let d = config.d_model;
    let mut out = Vec::with_capacity(config.num_hidden_layers);
    let mut take = |name: String, shape: &[usize]| -> Result<Tensor> {
        let t = tensors
            .remove(&name)
            .ok_or_else(|| EngineError::format(path, format!("tensor `{name}` is missing")))?;
        if t.dims() != shape {
            return Err(EngineError::Shape {
                path: path.to_path_buf(),
                tensor: name,
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        match t.dtype() {
            DType::F32 => Ok(t),
            DType::F16 | DType::BF16 | DType::F64 => Ok(t.to_dtype(DType::F32)?),
            other => Err(EngineError::unsupported(
                path,
                format!("dtype {other:?} of tensor `{name}`"),
            )),
        }
    };
    for i in 0..config.num_hidden_layers {
        let w = take(format!("{i}.weight"), &[d, d])?;
        let b = if config.bias {
            Some(take(format!("{i}.bias"), &[d])?)
        } else {
            None
        };
        out.push((Matrix::Tensor(w), b));
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(EngineError::lens(
            path,
            format!(
                "unexpected tensor `{extra}`: a lens for {} layers has translators 0..{}",
                config.num_hidden_layers, config.num_hidden_layers
            ),
        ));
    }
    Ok(out)
}
