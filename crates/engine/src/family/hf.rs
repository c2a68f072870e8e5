//! Typed reading of a Hugging Face `config.json` object: every getter names the key and the
//! file when a value is missing or of the wrong type, and the rotary settings are read in both
//! the older (`rope_theta` + `rope_scaling`) and the newer (`rope_parameters`) spelling.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{Activation, Family, ModelConfig, Rope, RopeScaling};
use crate::error::{EngineError, Result};

pub(crate) struct HfFields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
    /// The embedding's row count, when the tensors are known.
    vocab_rows: Option<usize>,
}

impl<'a> HfFields<'a> {
    pub(crate) fn new(
        path: &'a Path,
        map: &'a Map<String, Value>,
        vocab_rows: Option<usize>,
    ) -> Self {
        HfFields {
            path,
            map,
            vocab_rows,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.path
    }

    /// The value of `key` as written, `null` included.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The value of `key`, treating JSON `null` as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, what: &str, v: &Value) -> EngineError {
        EngineError::format(self.path, format!("`{key}` must be {what}, not {v}"))
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.bad(key, "a non-negative integer", v))
            })
            .transpose()
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| EngineError::format(self.path, format!("`{key}` is missing")))
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.bad(key, "a number", v)))
            .transpose()
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.bad(key, "true or false", v)))
            .transpose()
            .map(|b| b.unwrap_or(default))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string", v)))
            .transpose()
    }

    /// Fails naming `key` when it is set to something other than `allowed` (absent is fine).
    pub(crate) fn refuse_unless(&self, key: &str, allowed: &Value, what: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if v != allowed => Err(EngineError::unsupported(
                self.path,
                format!("{what} (`{key}`: {v})"),
            )),
            _ => Ok(()),
        }
    }

    /// The sizes every family has, with the family's defaults for what may be left out.
    pub(crate) fn sizes(
        &self,
        family: Family,
        default_head_dim: Option<usize>,
        default_tied: bool,
    ) -> Result<ModelConfig> {
        let d_model = self.usize("hidden_size")?;
        let n_heads = self.usize("num_attention_heads")?;
        let head_dim = match self.opt_usize("head_dim")? {
            Some(h) => h,
            None => default_head_dim.unwrap_or(d_model.checked_div(n_heads).unwrap_or(0)),
        };
        let vocab_size = match (self.opt_usize("vocab_size")?, self.vocab_rows) {
            (Some(v), _) => v,
            (None, Some(rows)) => rows,
            (None, None) => self.usize("vocab_size")?,
        };
        let mut cfg = ModelConfig::plain(
            family,
            self.usize("num_hidden_layers")?,
            d_model,
            n_heads,
            self.usize_or("num_key_value_heads", n_heads)?,
            head_dim,
            self.usize("intermediate_size")?,
            vocab_size,
        );
        cfg.rms_eps = self.f64_or("rms_norm_eps", 1e-6)?;
        cfg.max_positions = self.usize_or("max_position_embeddings", 2048)?;
        cfg.tied_embeddings = self.bool_or("tie_word_embeddings", default_tied)?;
        Ok(cfg)
    }

    /// The MLP's activation from the first of `keys` that is set, which must be one of
    /// `allowed`.
    pub(crate) fn activation(
        &self,
        keys: &[&str],
        allowed: &[(&str, Activation)],
        default: Activation,
    ) -> Result<Activation> {
        for key in keys {
            if let Some(name) = self.opt_str(key)? {
                return allowed
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, a)| *a)
                    .ok_or_else(|| {
                        let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                        EngineError::unsupported(
                            self.path,
                            format!(
                                "activation `{name}` in `{key}` (supported: {})",
                                names.join(", ")
                            ),
                        )
                    });
            }
        }
        Ok(default)
    }

    /// The rotary embedding of the full-attention layers: `rope_parameters` (newer configs;
    /// for Gemma-3 its `full_attention` entry) or `rope_theta` with `rope_scaling`.
    pub(crate) fn rope(&self, default_theta: f64) -> Result<Rope> {
        self.rope_of_kind("full_attention", default_theta)
    }

    /// The rotary embedding of layers of `kind` (`full_attention` or `sliding_attention`) when
    /// `rope_parameters` gives one per kind; otherwise the model's single rotary embedding.
    pub(crate) fn rope_of_kind(&self, kind: &str, default_theta: f64) -> Result<Rope> {
        if let Some(params) = self.get("rope_parameters") {
            let obj = params
                .as_object()
                .ok_or_else(|| self.bad("rope_parameters", "an object", params))?;
            let (key, obj) = match obj.get(kind).and_then(|v| v.as_object()) {
                Some(per_kind) => (format!("rope_parameters.{kind}"), per_kind),
                None => ("rope_parameters".to_string(), obj),
            };
            let theta = match obj.get("rope_theta").filter(|v| !v.is_null()) {
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| self.bad(&format!("{key}.rope_theta"), "a number", v))?,
                None => self.f64_or("rope_theta", default_theta)?,
            };
            return Ok(Rope {
                theta,
                scaling: self.scaling(&key, obj)?,
            });
        }
        let theta = self.f64_or("rope_theta", default_theta)?;
        let scaling = match self.get("rope_scaling") {
            None => RopeScaling::None,
            Some(v) => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| self.bad("rope_scaling", "an object or null", v))?;
                self.scaling("rope_scaling", obj)?
            }
        };
        Ok(Rope { theta, scaling })
    }

    /// A scaling object (`rope_type` or `type`, with its parameters). Types the forward does not
    /// implement are refused by name.
    fn scaling(&self, key: &str, obj: &Map<String, Value>) -> Result<RopeScaling> {
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .filter(|v| !v.is_null());
        let kind = match kind {
            None => "default",
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.bad(&format!("{key}.rope_type"), "a string", v))?,
        };
        let num = |name: &str| -> Result<f64> {
            let full = format!("{key}.{name}");
            match obj.get(name).filter(|v| !v.is_null()) {
                Some(v) => v.as_f64().ok_or_else(|| self.bad(&full, "a number", v)),
                None => Err(EngineError::format(
                    self.path,
                    format!("`{full}` is missing (needed by rotary scaling `{kind}`)"),
                )),
            }
        };
        let opt = |name: &str| -> Result<Option<f64>> {
            match obj.get(name).filter(|v| !v.is_null()) {
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| self.bad(&format!("{key}.{name}"), "a number", v)),
                None => Ok(None),
            }
        };
        // A scaling type that changes attention magnitudes would be silently wrong here; YaRN
        // is the one that has an attention factor.
        if let Some(v) = obj.get("attention_factor").filter(|v| !v.is_null()) {
            if kind != "yarn" && v.as_f64() != Some(1.0) {
                return Err(EngineError::unsupported(
                    self.path,
                    format!("`{key}.attention_factor` {v} (only 1 is supported)"),
                ));
            }
        }
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => {
                let original = num("original_max_position_embeddings")?;
                Ok(RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_positions: original as usize,
                })
            }
            "yarn" => {
                let factor = num("factor")?;
                // transformers falls back on the context length and on betas of 32 and 1.
                let original = match opt("original_max_position_embeddings")? {
                    Some(n) => n as usize,
                    None => self.usize("max_position_embeddings")?,
                };
                let truncate = match obj.get("truncate").filter(|v| !v.is_null()) {
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| self.bad(&format!("{key}.truncate"), "true or false", v))?,
                    None => true,
                };
                let attention_factor = match opt("attention_factor")? {
                    Some(a) => a,
                    None => RopeScaling::yarn_attention_factor(
                        factor,
                        opt("mscale")?,
                        opt("mscale_all_dim")?,
                    ),
                };
                Ok(RopeScaling::Yarn {
                    factor,
                    beta_fast: opt("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                    beta_slow: opt("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
                    original_max_positions: original,
                    truncate,
                    attention_factor,
                })
            }
            other => Err(EngineError::unsupported(
                self.path,
                format!(
                    "rotary scaling type `{other}` in `{key}` (supported: default, linear, llama3, \
                     yarn)"
                ),
            )),
        }
    }

    /// Per-layer attention kinds from `layer_types` (newer configs), `true` = sliding.
    pub(crate) fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<bool>>> {
        let Some(v) = self.get("layer_types") else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.bad("layer_types", "a list", v))?;
        if list.len() != n_layers {
            return Err(EngineError::format(
                self.path,
                format!(
                    "`layer_types` has {} entries for {n_layers} layers",
                    list.len()
                ),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(EngineError::unsupported(
                    self.path,
                    format!(
                        "layer type {t} at `layer_types[{i}]` (supported: full_attention, \
                         sliding_attention)"
                    ),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
