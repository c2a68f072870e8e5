//! LoRA adapters in PEFT's layout, applied to a loaded base at run time: each adapted linear map
//! computes `W x + s · B (A x)`, so one copy of the base serves both the plain and the adapted
//! model (docs/talkative.md, "Donors").

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// The low-rank pair of one linear map, f32: `a` is `[r, in]`, `b` is `[out, r]`, already scaled.
#[derive(Debug, Clone)]
pub struct Pair {
    a_t: Tensor,
    b_t: Tensor,
}

impl Pair {
    /// `s · B (A x)` for rows `x`: `[N, in]` → `[N, out]`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.to_dtype(DType::F32)?.matmul(&self.a_t)?.matmul(&self.b_t)
    }

    pub fn bytes(&self) -> u64 {
        ((self.a_t.elem_count() + self.b_t.elem_count()) * 4) as u64
    }
}

/// The adapted maps of one block.
#[derive(Debug, Clone, Default)]
pub struct BlockAdapter {
    pub q: Option<Pair>,
    pub k: Option<Pair>,
    pub v: Option<Pair>,
    pub o: Option<Pair>,
    pub gate: Option<Pair>,
    pub up: Option<Pair>,
    pub down: Option<Pair>,
}

#[derive(Debug, Clone)]
pub struct Adapter {
    pub blocks: Vec<BlockAdapter>,
    pub rank: usize,
    pub scale: f64,
}

#[derive(Debug, Deserialize)]
struct PeftConfig {
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Value>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Value>,
    #[serde(default)]
    peft_type: Option<String>,
}

const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn empty(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(serde_json::Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

impl Adapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir` and checks every
    /// tensor against the base's shapes.
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Adapter> {
        let config_path = dir.join("adapter_config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
        let pc: PeftConfig = serde_json::from_str(&text).map_err(|e| {
            EngineError::format(&config_path, format!("invalid adapter config: {e}"))
        })?;
        let unsupported = |what: String| EngineError::Unsupported {
            path: config_path.clone(),
            what,
        };
        if let Some(t) = &pc.peft_type {
            if t != "LORA" {
                return Err(unsupported(format!("adapter type `{t}` (only LORA)")));
            }
        }
        if pc.use_dora {
            return Err(unsupported("setting `use_dora` (DoRA adapters)".into()));
        }
        if pc.fan_in_fan_out {
            return Err(unsupported("setting `fan_in_fan_out`".into()));
        }
        if pc.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(unsupported(format!(
                "setting `bias: {}` (only `none`)",
                pc.bias.as_deref().unwrap_or_default()
            )));
        }
        if !empty(&pc.modules_to_save) {
            return Err(unsupported(
                "setting `modules_to_save` (fully trained modules)".into(),
            ));
        }
        if !empty(&pc.rank_pattern) || !empty(&pc.alpha_pattern) {
            return Err(unsupported(
                "per-module ranks (`rank_pattern`, `alpha_pattern`)".into(),
            ));
        }
        if pc.r == 0 {
            return Err(EngineError::format(&config_path, "rank `r` is 0"));
        }
        let targets: Vec<String> = match &pc.target_modules {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    EngineError::format(&config_path, "`target_modules` must list names")
                })?,
            serde_json::Value::String(s) => vec![s.clone()],
            _ => {
                return Err(EngineError::format(
                    &config_path,
                    "`target_modules` must list names",
                ))
            }
        };
        if let Some(bad) = targets.iter().find(|t| !MODULES.contains(&t.as_str())) {
            return Err(unsupported(format!(
                "target module `{bad}` (supported: {})",
                MODULES.join(", ")
            )));
        }
        let layers: Option<BTreeSet<usize>> = match &pc.layers_to_transform {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| [n as usize].into()),
            Some(serde_json::Value::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_u64().map(|n| n as usize))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        EngineError::format(&config_path, "`layers_to_transform` must list blocks")
                    })?,
            ),
            Some(_) => {
                return Err(EngineError::format(
                    &config_path,
                    "`layers_to_transform` must list blocks",
                ))
            }
        };
        let scale = if pc.use_rslora {
            pc.lora_alpha / (pc.r as f64).sqrt()
        } else {
            pc.lora_alpha / pc.r as f64
        };

        let st = dir.join("adapter_model.safetensors");
        if !st.exists() {
            return Err(EngineError::format(
                dir,
                "an adapter folder needs adapter_model.safetensors (PEFT's safetensors layout)",
            ));
        }
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&st, &Device::Cpu)
            .map_err(|e| EngineError::format(&st, format!("invalid safetensors file: {e}")))?;
        let mut unused: BTreeSet<&String> = tensors.keys().collect();
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let (qd, kvd) = (cfg.q_width(), cfg.kv_width());
        let dims = |m: &str| match m {
            "q_proj" => (d, qd),
            "k_proj" | "v_proj" => (d, kvd),
            "o_proj" => (qd, d),
            "gate_proj" | "up_proj" => (d, ff),
            _ => (ff, d),
        };
        let mut blocks = vec![BlockAdapter::default(); cfg.n_layers];
        let mut found = 0;
        for (i, block) in blocks.iter_mut().enumerate() {
            if layers.as_ref().is_some_and(|l| !l.contains(&i)) {
                continue;
            }
            for m in &targets {
                let part = if m.ends_with("_proj") && ["q", "k", "v", "o"].contains(&&m[..1]) {
                    "self_attn"
                } else {
                    "mlp"
                };
                let name = |ab: &str| {
                    format!("base_model.model.model.layers.{i}.{part}.{m}.lora_{ab}.weight")
                };
                let (na, nb) = (name("A"), name("B"));
                let (Some(a), Some(b)) = (tensors.get(&na), tensors.get(&nb)) else {
                    return Err(EngineError::format(
                        &st,
                        format!("missing `{na}` or `{nb}` for target `{m}` of block {i}"),
                    ));
                };
                unused.remove(&na);
                unused.remove(&nb);
                let (input, output) = dims(m);
                for (n, t, want) in [(&na, a, [pc.r, input]), (&nb, b, [output, pc.r])] {
                    if t.dims() != want {
                        return Err(EngineError::Shape {
                            path: st.clone(),
                            tensor: n.clone(),
                            expected: want.to_vec(),
                            got: t.dims().to_vec(),
                        });
                    }
                }
                let pair = Pair {
                    a_t: a.to_dtype(DType::F32)?.t()?.contiguous()?,
                    b_t: (b.to_dtype(DType::F32)?.t()? * scale)?.contiguous()?,
                };
                let slot = match m.as_str() {
                    "q_proj" => &mut block.q,
                    "k_proj" => &mut block.k,
                    "v_proj" => &mut block.v,
                    "o_proj" => &mut block.o,
                    "gate_proj" => &mut block.gate,
                    "up_proj" => &mut block.up,
                    _ => &mut block.down,
                };
                *slot = Some(pair);
                found += 1;
            }
        }
        if let Some(extra) = unused.into_iter().next() {
            return Err(EngineError::format(
                &st,
                format!("unexpected tensor `{extra}`: not a LoRA pair of a target module of the base's blocks"),
            ));
        }
        if found == 0 {
            return Err(EngineError::format(&st, "the adapter adapts nothing"));
        }
        Ok(Adapter {
            blocks,
            rank: pc.r,
            scale,
        })
    }

    /// Bytes the adapter's tensors take in memory.
    pub fn bytes(&self) -> u64 {
        self.blocks
            .iter()
            .flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down])
            .flatten()
            .map(Pair::bytes)
            .sum()
    }
}
