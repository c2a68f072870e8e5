//! Checkpoints of the families that lensd cannot run as they are: each refusal names the file
//! and the problem (an unsupported family, an unknown rotary scaling, a missing shard, a shard
//! whose tensors disagree with the configuration, other unsupported settings).

mod common;

use std::path::{Path, PathBuf};

use lensd_engine::{Base, ComputeDtype, LoadOptions};
use serde_json::{json, Value};

/// A copy of a tiny family's checkpoint (shards, index, config, tokenizer) in a scratch folder.
fn copy_of(family: &str) -> (tempfile::TempDir, PathBuf) {
    let src = common::testdata(&format!("tiny-{family}"));
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if p.is_file() && (name.ends_with(".json") || name.ends_with(".safetensors")) {
            std::fs::copy(&p, dir.path().join(&name)).unwrap();
        }
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Loading `dir` fails with a message that names `file` and every one of `needles`.
fn refused(dir: &Path, file: &Path, needles: &[&str]) {
    let err = match Base::load(
        dir,
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    ) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&file.display().to_string()),
        "the error does not name {}: {err}",
        file.display()
    );
    for n in needles {
        assert!(err.contains(n), "the error does not say {n:?}: {err}");
    }
}

/// `lensd inspect`, which reads headers only, reports the configuration it cannot run with the
/// same words.
fn inspect_says(dir: &Path, needles: &[&str]) {
    let r = lensd_engine::inspect::inspect(dir).unwrap();
    assert!(r.config.is_none(), "inspect read a configuration");
    let why = r.unsupported.unwrap_or_default();
    for n in needles {
        assert!(why.contains(n), "inspect: {why:?} does not say {n:?}");
    }
}

#[test]
fn an_unsupported_family_is_named() {
    let (_t, dir) = copy_of("qwen2");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), json!("mixtral"));
        c.insert("architectures".into(), json!(["MixtralForCausalLM"]));
    });
    refused(
        &dir,
        &dir.join("config.json"),
        &[
            "MixtralForCausalLM",
            "mixtral",
            "supported: LlamaForCausalLM",
        ],
    );
    inspect_says(&dir, &["MixtralForCausalLM"]);
}

#[test]
fn an_unknown_rope_scaling_type_is_named_in_either_spelling() {
    let (_t, dir) = copy_of("llama3");
    edit_config(&dir, |c| {
        c.insert(
            "rope_parameters".into(),
            json!({"rope_type": "longrope", "factor": 4.0, "rope_theta": 10000.0}),
        );
    });
    refused(
        &dir,
        &dir.join("config.json"),
        &["longrope", "rope_parameters"],
    );
    inspect_says(&dir, &["longrope"]);
    edit_config(&dir, |c| {
        c.remove("rope_parameters");
        c.insert("rope_theta".into(), json!(10000.0));
        c.insert(
            "rope_scaling".into(),
            json!({"type": "dynamic", "factor": 2.0}),
        );
    });
    refused(&dir, &dir.join("config.json"), &["dynamic", "rope_scaling"]);
    // A known type without its parameters is named too.
    edit_config(&dir, |c| {
        c.insert(
            "rope_scaling".into(),
            json!({"rope_type": "llama3", "factor": 8.0}),
        );
    });
    refused(
        &dir,
        &dir.join("config.json"),
        &["original_max_position_embeddings", "is missing", "llama3"],
    );
}

#[test]
fn settings_the_forward_cannot_honour_are_refused_not_ignored() {
    let (_t, dir) = copy_of("qwen2");
    edit_config(&dir, |c| {
        c.insert("use_sliding_window".into(), json!(true));
    });
    refused(&dir, &dir.join("config.json"), &["use_sliding_window"]);

    let (_t, dir) = copy_of("llama3");
    edit_config(&dir, |c| {
        c.insert("mlp_bias".into(), json!(true));
    });
    refused(&dir, &dir.join("config.json"), &["mlp_bias"]);
    edit_config(&dir, |c| {
        c.insert("mlp_bias".into(), json!(false));
        c.insert("hidden_act".into(), json!("relu"));
    });
    refused(&dir, &dir.join("config.json"), &["relu", "hidden_act"]);

    let (_t, dir) = copy_of("gemma3");
    edit_config(&dir, |c| {
        let n = c["num_hidden_layers"].as_u64().unwrap() as usize;
        let mut types = vec![json!("full_attention"); n];
        types[2] = json!("chunked_attention");
        c.insert("layer_types".into(), json!(types));
    });
    refused(
        &dir,
        &dir.join("config.json"),
        &["chunked_attention", "layer_types[2]"],
    );
}

#[test]
fn a_missing_shard_named_by_the_index_is_named() {
    let (_t, dir) = copy_of("gemma2");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    refused(
        &dir,
        &dir.join("model.safetensors.index.json"),
        &["model-00002-of-00002.safetensors", "missing"],
    );
}

#[test]
fn a_shard_whose_tensors_disagree_with_the_config_is_named() {
    let (_t, dir) = copy_of("qwen3");
    // The configuration says the MLP is wider than the tensors in the shards.
    edit_config(&dir, |c| {
        let ff = c["intermediate_size"].as_u64().unwrap();
        c.insert("intermediate_size".into(), json!(ff + 8));
    });
    refused(&dir, &dir, &["mlp.gate_proj.weight", "expected"]);

    // A shard holding a tensor of another shape than the config implies.
    let (_t, dir) = copy_of("qwen3");
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let name = "model.layers.1.self_attn.k_norm.weight";
    let shard = dir.join(index["weight_map"][name].as_str().unwrap());
    let mut tensors = candle_core::safetensors::load(&shard, &candle_core::Device::Cpu).unwrap();
    let t = tensors.remove(name).unwrap();
    tensors.insert(name.into(), t.narrow(0, 0, 8).unwrap());
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    refused(&dir, &dir, &[name, "[8]", "[16]"]);
}
