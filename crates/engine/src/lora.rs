//! LoRA adapters in PEFT's layout, applied to a loaded base at run time: each adapted linear map
//! computes `W x + s · B (A x)`, so one copy of the base serves both the plain and the adapted
//! model (docs/talkative.md, "Donors").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

    fn to_device(&self, device: &Device) -> candle_core::Result<Pair> {
        Ok(Pair {
            a_t: self.a_t.to_device(device)?,
            b_t: self.b_t.to_device(device)?,
        })
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
    /// From block 0 to the last adapted block.
    pub blocks: Vec<BlockAdapter>,
    pub rank: usize,
    pub scale: f64,
    pub path: PathBuf,
}

impl Adapter {
    /// The same adapter with its pairs in `device`'s memory.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Adapter> {
        let pair = |p: &Option<Pair>| p.as_ref().map(|p| p.to_device(device)).transpose();
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(BlockAdapter {
                    q: pair(&b.q)?,
                    k: pair(&b.k)?,
                    v: pair(&b.v)?,
                    o: pair(&b.o)?,
                    gate: pair(&b.gate)?,
                    up: pair(&b.up)?,
                    down: pair(&b.down)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Adapter {
            blocks,
            rank: self.rank,
            scale: self.scale,
            path: self.path.clone(),
        })
    }
}

impl BlockAdapter {
    fn slot(&mut self, module: &str) -> &mut Option<Pair> {
        match module {
            "q_proj" => &mut self.q,
            "k_proj" => &mut self.k,
            "v_proj" => &mut self.v,
            "o_proj" => &mut self.o,
            "gate_proj" => &mut self.gate,
            "up_proj" => &mut self.up,
            _ => &mut self.down,
        }
    }
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

/// Splits `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`.
fn parse_name(name: &str) -> Option<(usize, &str, &str)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (block, rest) = rest.split_once('.')?;
    let (part, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let ab = rest.strip_suffix(".weight")?.strip_prefix("lora_")?;
    let expected_part = if module.starts_with(['q', 'k', 'v', 'o']) {
        "self_attn"
    } else {
        "mlp"
    };
    (part == expected_part && MODULES.contains(&module) && (ab == "A" || ab == "B")).then_some((
        block.parse().ok()?,
        module,
        ab,
    ))
}

impl Adapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir`; shapes are
    /// checked against each other here and against a base by [`Adapter::check`].
    pub fn open(dir: &Path) -> Result<Adapter> {
        let config_path = dir.join("adapter_config.json");
        let text = lensd_core::files::read_to_string(&config_path)
            .map_err(|e| EngineError::io(&config_path, e))?;
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
        if let Some(b) = pc.bias.as_deref().filter(|b| *b != "none") {
            return Err(unsupported(format!("setting `bias: {b}` (only `none`)")));
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
        let tensors = crate::weights::tensor_file::read_safetensors(&st)?;
        // (block, module) → its A and B, as they are found.
        type Found<'a> = (Option<&'a Tensor>, Option<&'a Tensor>);
        let mut pairs: BTreeMap<(usize, &str), Found> = BTreeMap::new();
        for (name, t) in &tensors {
            let Some((block, module, ab)) = parse_name(name) else {
                return Err(EngineError::format(
                    &st,
                    format!("unexpected tensor `{name}`: not a LoRA matrix of a llama block's linear map"),
                ));
            };
            if !targets.iter().any(|m| m == module) {
                return Err(EngineError::format(
                    &st,
                    format!(
                        "tensor `{name}` adapts `{module}`, which `target_modules` does not list"
                    ),
                ));
            }
            let slot = pairs.entry((block, module)).or_default();
            if ab == "A" {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        if pairs.is_empty() {
            return Err(EngineError::format(&st, "the adapter adapts nothing"));
        }
        let n_blocks = pairs.keys().map(|(b, _)| b + 1).max().unwrap_or(0);
        let mut blocks = vec![BlockAdapter::default(); n_blocks];
        for ((block, module), (a, b)) in pairs {
            let name = |ab: &str| {
                let part = if module.starts_with(['q', 'k', 'v', 'o']) {
                    "self_attn"
                } else {
                    "mlp"
                };
                format!("base_model.model.model.layers.{block}.{part}.{module}.lora_{ab}.weight")
            };
            let (Some(a), Some(b)) = (a, b) else {
                return Err(EngineError::format(
                    &st,
                    format!("`{}` and `{}` must come in pairs", name("A"), name("B")),
                ));
            };
            let (ra, rb) = (a.dims(), b.dims());
            if ra.len() != 2 || rb.len() != 2 || ra[0] != pc.r || rb[1] != pc.r {
                return Err(EngineError::format(
                    &st,
                    format!(
                        "`{}` is {ra:?} and `{}` is {rb:?}; rank {} needs A [{}, in] and B [out, {}]",
                        name("A"),
                        name("B"),
                        pc.r,
                        pc.r,
                        pc.r
                    ),
                ));
            }
            let pair = Pair {
                a_t: a.to_dtype(DType::F32)?.t()?.contiguous()?,
                b_t: (b.to_dtype(DType::F32)?.t()? * scale)?.contiguous()?,
            };
            let slot = blocks[block].slot(module);
            *slot = Some(pair);
        }
        Ok(Adapter {
            blocks,
            rank: pc.r,
            scale,
            path: dir.to_path_buf(),
        })
    }

    /// Checks that every adapted map exists in the base with the adapter's shapes.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        let st = self.path.join("adapter_model.safetensors");
        if self.blocks.len() > cfg.n_layers {
            return Err(EngineError::LensMismatch {
                path: st,
                msg: format!(
                    "the adapter adapts block {} but the base has blocks 0..{}",
                    self.blocks.len() - 1,
                    cfg.n_layers
                ),
            });
        }
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let (qd, kvd) = (cfg.q_width(), cfg.kv_width());
        for (i, b) in self.blocks.iter().enumerate() {
            for (module, pair, (input, output)) in [
                ("q_proj", &b.q, (d, qd)),
                ("k_proj", &b.k, (d, kvd)),
                ("v_proj", &b.v, (d, kvd)),
                ("o_proj", &b.o, (qd, d)),
                ("gate_proj", &b.gate, (d, ff)),
                ("up_proj", &b.up, (d, ff)),
                ("down_proj", &b.down, (ff, d)),
            ] {
                let Some(p) = pair else { continue };
                if cfg.moe.is_some() && matches!(module, "gate_proj" | "up_proj" | "down_proj") {
                    return Err(EngineError::LensMismatch {
                        path: st.clone(),
                        msg: format!(
                            "block {i}'s `{module}`: the base's MLP is a mixture of experts, \
                             which a LoRA adapter on the MLP does not apply to"
                        ),
                    });
                }
                let (got_in, got_out) = (p.a_t.dim(0)?, p.b_t.dim(1)?);
                if (got_in, got_out) != (input, output) {
                    return Err(EngineError::LensMismatch {
                        path: st.clone(),
                        msg: format!(
                            "block {i}'s `{module}` maps {got_in} → {got_out}, the base's maps {input} → {output}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// [`Adapter::open`] and [`Adapter::check`].
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Adapter> {
        let a = Adapter::open(dir)?;
        a.check(cfg)?;
        Ok(a)
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
