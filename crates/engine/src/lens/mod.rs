//! Lenses: maps from a layer's residual stream to a distribution over the vocabulary.
//! `logit` unembeds the stream as it is; `tuned` first applies the layer's affine translator.
//! Both then apply the base's final norm and unembedding, as the model does at its output.

pub mod analyze;
pub mod device_stats;
pub mod fit;
pub mod stats;
mod stream;
pub mod talkative;
pub mod tuned;
mod tuned_mapped;

use std::path::Path;

use candle_core::Tensor;

use crate::config::ModelConfig;
use crate::error::Result;
pub use tuned::TunedLens;

pub enum Lens {
    Logit,
    Tuned(TunedLens),
}

impl Lens {
    /// `logit`, or a tuned-lens folder checked against the base's shape.
    pub fn open(spec: &str, cfg: &ModelConfig) -> Result<Lens> {
        if spec == "logit" {
            return Ok(Lens::Logit);
        }
        let dir = Path::new(spec);
        if dir.join(talkative::MANIFEST).is_file() {
            return Err(crate::EngineError::Input(format!(
                "{spec} is a talkative lens: it explains positions in words rather than filling \
                 layers × positions; use `lensd explain --lens {spec}`"
            )));
        }
        Ok(Lens::Tuned(TunedLens::load(dir, cfg)?))
    }

    pub fn name(&self) -> String {
        match self {
            Lens::Logit => "logit".into(),
            Lens::Tuned(t) => t.name(),
        }
    }

    /// The same lens with its weights in `device`'s memory.
    pub fn to_device(&self, device: &candle_core::Device) -> candle_core::Result<Lens> {
        Ok(match self {
            Lens::Logit => Lens::Logit,
            Lens::Tuned(t) => Lens::Tuned(t.to_device(device)?),
        })
    }

    /// Whether the lens reads layer `layer` as it is (no translator): at the final layer, as the
    /// model reads its own output.
    pub fn reads_as_the_model(&self, layer: usize) -> bool {
        match self {
            Lens::Logit => true,
            Lens::Tuned(t) => !t.translates(layer),
        }
    }

    /// Moves rows `[R, d]` of layer `layer`'s residual stream into the final layer's basis.
    pub fn transform(&self, layer: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Lens::Logit => Ok(h.clone()),
            Lens::Tuned(t) => t.transform(layer, h),
        }
    }
}
