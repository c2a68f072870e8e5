//! Weight files from the header only, as `lensd inspect` and the config check read them: any
//! bytes (a GGUF file, or a safetensors file in a model folder) give a report or an error,
//! never a panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a scratch folder");
    // The first byte chooses the layout, so both parsers see every input.
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let path = if kind % 2 == 0 {
        dir.path().join("model.gguf")
    } else {
        let config = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":16,"rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":64,"tie_word_embeddings":true}"#;
        std::fs::write(dir.path().join("config.json"), config).expect("written");
        dir.path().join("model.safetensors")
    };
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(body))
        .expect("written");
    let target = if kind % 2 == 0 {
        path
    } else {
        dir.path().to_path_buf()
    };
    let _ = lensd_engine::inspect::inspect(&target);
});
