//! Talkative lenses that were never trained, for bases that have no trained one: they run
//! the whole talkative path, and their words mean nothing.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{
    sha256_hex, BaseIdentity, DecoderManifest, EncoderManifest, Manifest, TalkativeLens, FORMAT,
    MANIFEST, TENSORS,
};
use crate::error::{EngineError, Result};

/// The shape of an untrained talkative lens ([`write_untrained`]).
#[derive(Debug, Clone)]
pub struct UntrainedSpec {
    /// The block whose output the lens reads.
    pub layer: usize,
    pub t_text: usize,
    pub patched_layers: usize,
    pub output_layer: usize,
    /// Split at `<embed>`: the decoder's soft prompts start as these texts' token embeddings.
    pub decoder_prompt: String,
    /// Split at `<text>`: the encoder's soft prompts start as these texts' token embeddings.
    pub encoder_prompt: String,
}

impl Default for UntrainedSpec {
    fn default() -> Self {
        UntrainedSpec {
            layer: 0,
            t_text: 8,
            patched_layers: 2,
            output_layer: 0,
            decoder_prompt: "Short explanation of <embed>. Topic, style, meaning:".into(),
            encoder_prompt: "Summary of the text:<text>".into(),
        }
    }
}

/// Writes a talkative lens that was never trained, in the artifact format, for `base`: identity
/// projections with zero biases, soft prompts equal to the embeddings of the prompt texts, a
/// zero last-position vector. It explains nothing; it exercises the whole path on a base that
/// has no trained lens. Returns the manifest.
pub fn write_untrained(
    base: &crate::Base,
    name: &str,
    dir: &Path,
    spec: &UntrainedSpec,
) -> Result<Manifest> {
    let cfg = base.config();
    let d = cfg.d_model;
    let embed = |text: &str| -> Result<Tensor> {
        let ids = base.tokenizer.encode(text, false)?;
        if ids.is_empty() {
            return Ok(Tensor::zeros((0, d), DType::F32, &Device::Cpu)?);
        }
        base.model.embed_unscaled(&ids)
    };
    let split = |prompt: &str, mark: &str| -> Result<(String, String)> {
        prompt
            .split_once(mark)
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .ok_or_else(|| EngineError::Input(format!("the prompt {prompt:?} has no {mark}")))
    };
    let (left, right) = split(&spec.decoder_prompt, "<embed>")?;
    let (prefix, postfix) = split(&spec.encoder_prompt, "<text>")?;
    let p = spec.patched_layers;
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu)?;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "decoder.proj_weight".into(),
        eye.unsqueeze(0)?.repeat((p, 1, 1))?,
    );
    t.insert(
        "decoder.proj_bias".into(),
        Tensor::zeros((p, d), DType::F32, &Device::Cpu)?,
    );
    t.insert("decoder.prompt_left_emb".into(), embed(&left)?);
    t.insert("decoder.prompt_right_emb".into(), embed(&right)?);
    t.insert("encoder.proj.weight".into(), eye);
    t.insert(
        "encoder.proj.bias".into(),
        Tensor::zeros(d, DType::F32, &Device::Cpu)?,
    );
    t.insert("encoder.soft_prompt_embeddings".into(), embed(&prefix)?);
    let post = embed(&postfix)?;
    if post.dim(0)? > 0 {
        t.insert("encoder.soft_prompt_embeddings_postfix".into(), post);
    }
    t.insert(
        "encoder.special_last_token_vector".into(),
        Tensor::zeros(d, DType::F32, &Device::Cpu)?,
    );
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let tpath = dir.join(TENSORS);
    candle_core::safetensors::save(&t, &tpath)?;
    let bytes = lensd_core::files::read(&tpath).map_err(|e| EngineError::io(&tpath, e))?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: 1,
        layer: spec.layer,
        t_text: spec.t_text,
        add_current_token: true,
        decoder: DecoderManifest {
            patched_layers: p,
            prompt: spec.decoder_prompt.clone(),
        },
        encoder: EncoderManifest {
            output_layer: spec.output_layer,
            prompt: spec.encoder_prompt.clone(),
        },
        dtype: "f32".into(),
        base: BaseIdentity {
            name: name.into(),
            d_model: d,
            n_layers: Some(cfg.n_layers),
            vocab_size: Some(cfg.vocab_size),
        },
        content_sha256: sha256_hex(&bytes),
        source: Some(serde_json::json!({"untrained": true})),
    };
    let mpath = dir.join(MANIFEST);
    std::fs::write(
        &mpath,
        serde_json::to_string_pretty(&manifest).expect("a manifest serialises"),
    )
    .map_err(|e| EngineError::io(&mpath, e))?;
    // What was written must read back and fit the base.
    TalkativeLens::load(dir, cfg)?;
    Ok(manifest)
}
