//! Donors: the model whose activations a talkative lens explains (and whose replies the
//! group's model generates) when it is not the base itself — the original's
//! `different_activations_orig_path`. A donor is either a LoRA adapter applied to the base at
//! run time, or a full model of the same architecture and shapes (a fine-tune, an abliterated
//! model) loaded as a base of its own. The talkative decoder and encoder always run on the
//! group's base.

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

/// Whether a full donor model of `donor` can stand in for a base of `base`: same family and
/// every shape equal. The error lists each difference as "donor vs base".
pub fn same_shapes(donor: &ModelConfig, base: &ModelConfig) -> std::result::Result<(), String> {
    let mut diffs = Vec::new();
    if donor.family != base.family {
        diffs.push(format!(
            "family {} vs {}",
            donor.family.name(),
            base.family.name()
        ));
    }
    for (what, a, b) in [
        ("layers", donor.n_layers, base.n_layers),
        ("width (d_model)", donor.d_model, base.d_model),
        ("attention heads", donor.n_heads, base.n_heads),
        ("key/value heads", donor.n_kv_heads, base.n_kv_heads),
        ("head dimension", donor.head_dim, base.head_dim),
        ("feed-forward width", donor.d_ff, base.d_ff),
        ("vocabulary", donor.vocab_size, base.vocab_size),
    ] {
        if a != b {
            diffs.push(format!("{what} {a} vs {b}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "differs from the base (donor vs base): {}",
            diffs.join(", ")
        ))
    }
}
