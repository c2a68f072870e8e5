//! Donors: the model whose activations a talkative lens explains (and whose replies the
//! group's model generates) when it is not the base itself — the original's
//! `different_activations_orig_path`. A donor is either a LoRA adapter applied to the base at
//! run time, or a full model of the same architecture and shapes (a fine-tune, an abliterated
//! model) loaded as a base of its own. The talkative decoder and encoder always run on the
//! group's base.

use lensd_core::config::{shape_differences, Shape};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::lora::Adapter;
use crate::model::Model;

#[derive(Clone, Copy)]
pub enum Donor<'a> {
    Adapter(&'a Adapter),
    Model(&'a Model),
}

impl<'a> Donor<'a> {
    /// The model to run for the donor's activations and the adapter to apply to it, given the
    /// group's base.
    pub fn resolve(donor: Option<Donor<'a>>, base: &'a Model) -> (&'a Model, Option<&'a Adapter>) {
        match donor {
            None => (base, None),
            Some(Donor::Adapter(a)) => (base, Some(a)),
            Some(Donor::Model(m)) => (m, None),
        }
    }

    /// Whether the donor fits a base of `cfg`.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        match self {
            Donor::Adapter(a) => a.check(cfg),
            Donor::Model(m) => same_shapes(&m.cfg, cfg)
                .map_err(|e| crate::EngineError::Input(format!("the donor model {e}"))),
        }
    }
}

/// What a full donor must share with the base it stands in for, in the config check's terms.
pub fn shape_of(c: &ModelConfig) -> (usize, usize, Shape) {
    (
        c.n_layers,
        c.d_model,
        Shape {
            architecture: c.family.name().into(),
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            d_ff: c.d_ff,
            vocab_size: c.vocab_size,
        },
    )
}

/// Whether a full donor model of `donor` can stand in for a base of `base`: same family and
/// every shape equal, the rule of the config check. The error lists each difference as
/// "donor vs base".
pub fn same_shapes(donor: &ModelConfig, base: &ModelConfig) -> std::result::Result<(), String> {
    let ((dl, dw, ds), (bl, bw, bs)) = (shape_of(donor), shape_of(base));
    let diffs = shape_differences((dl, dw, &ds), (bl, bw, &bs));
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "differs from the base (donor vs base): {}",
            diffs.join(", ")
        ))
    }
}
