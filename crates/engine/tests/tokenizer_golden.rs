//! The GGUF-built tokenizer against llama.cpp's ids on a corpus of prose, code, whitespace,
//! Unicode and chat text (testdata/tokenizer_golden.json, made by tools/gen_tokenizer_golden.py).

mod common;

use lensd_engine::ComputeDtype;

#[test]
fn ids_equal_llama_cpp_on_the_golden_corpus() {
    let base = common::demo(ComputeDtype::Stored);
    let golden = common::json("tokenizer_golden.json");
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() > 100, "the corpus should be large");
    let mut tokens = 0;
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let special = case["special"].as_bool().unwrap();
        let want = common::ids_of(&case["ids"]);
        let got = base.tokenizer.encode(text, special).unwrap();
        tokens += want.len();
        if got != want {
            mismatches.push(format!("{}: got {got:?}, llama.cpp {want:?}", case["name"]));
        }
    }
    assert!(tokens > 20_000, "corpus covers {tokens} tokens");
    assert!(
        mismatches.is_empty(),
        "{} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn decoding_gives_back_the_text() {
    let base = common::demo(ComputeDtype::Stored);
    let golden = common::json("tokenizer_golden.json");
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = common::ids_of(&case["ids"]);
        assert_eq!(
            base.tokenizer.decode(&ids).unwrap(),
            text,
            "case {}",
            case["name"]
        );
    }
}

#[test]
fn special_tokens_are_recognised_only_when_asked() {
    let base = common::demo(ComputeDtype::Stored);
    let tk = &base.tokenizer;
    let im_start = tk.token_to_id("<|im_start|>").unwrap();
    assert_eq!(im_start, 1);
    let with = tk.encode("<|im_start|>user", true).unwrap();
    assert_eq!(with[0], im_start);
    let without = tk.encode("<|im_start|>user", false).unwrap();
    assert!(
        !without.contains(&im_start) && without.len() > 3,
        "{without:?}"
    );
    assert!(tk.stop_ids.contains(&2), "<|im_end|> ends generation");
}
