//! Byte-level BPE vocabularies from GGUF files (`tokenizer.ggml.model = "gpt2"`), built with
//! the `tokenizers` crate. What differs between families is the pre-tokenizer
//! (`tokenizer.ggml.pre`): the regular expressions that cut the text into words before the
//! merges, which are llama.cpp's for each name.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer as HfTokenizer};

use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

/// Llama-3's split: case-insensitive English contractions, letters with at most one leading
/// non-letter, numbers of up to three digits, punctuation runs with their newlines, newline
/// runs, and other whitespace that does not precede a word.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama-3's, but every digit is a word of its own.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// o200k's split (GPT-4o, gpt-oss): words with their case and contractions, numbers in runs of
/// up to three digits, punctuation with trailing newlines and slashes.
const O200K: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split, which `ByteLevel` applies itself when asked to.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// llama.cpp's splits for a BPE file that names no pre-tokenizer (or `default`), applied one
/// after the other, each inside the words of the one before.
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];

/// Pre-tokenizers (`tokenizer.ggml.pre`) whose splitting rules are implemented here, as
/// llama.cpp names them (several names share one rule).
pub const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt-2",
    "gpt2",
    "smollm",
    "qwen2",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "gpt-4o",
];

/// What a pre-tokenizer name implies.
pub struct PreTokenizer {
    pub split: PreTokenizerWrapper,
    /// A word that is a token as a whole is taken as is, without merges (Llama-3).
    pub ignore_merges: bool,
    /// Whether llama.cpp adds BOS when the file does not say (`tokenizer.ggml.add_bos_token`).
    pub default_add_bos: bool,
}

fn regex(pattern: &str) -> PreTokenizerWrapper {
    Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .expect("the built-in split patterns compile")
    .into()
}

/// The pre-tokenizer called `name`, or `None` when lensd does not know it.
pub fn pre_tokenizer(name: &str) -> Option<PreTokenizer> {
    // After the splits, map bytes to GPT-2's printable characters without splitting again.
    let bytes_only = || ByteLevel::new(false, true, false).into();
    let with_regexes = |patterns: &[&str]| -> PreTokenizerWrapper {
        let mut steps: Vec<PreTokenizerWrapper> = patterns.iter().map(|p| regex(p)).collect();
        steps.push(bytes_only());
        Sequence::new(steps).into()
    };
    let plain = |split| PreTokenizer {
        split,
        ignore_merges: false,
        default_add_bos: false,
    };
    Some(match name {
        "default" => plain(with_regexes(DEFAULT)),
        "gpt-2" | "gpt2" => plain(ByteLevel::new(false, true, true).into()),
        // Every numeric character is a word before the GPT-2 split.
        "smollm" => plain(
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
        ),
        "qwen2" => plain(with_regexes(&[QWEN2])),
        "gpt-4o" => plain(with_regexes(&[O200K])),
        "llama-bpe" | "llama3" | "llama-v3" => PreTokenizer {
            split: with_regexes(&[LLAMA3]),
            ignore_merges: true,
            default_add_bos: true,
        },
        _ => return None,
    })
}

/// The BPE model of a GGUF file's `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`, with
/// its pre-tokenizer and byte-level decoder; no added tokens yet. Also returns whether llama.cpp
/// adds BOS by default for this pre-tokenizer.
pub fn from_gguf(g: &GgufFile, tokens: &[&str]) -> Result<(HfTokenizer, bool)> {
    let path = g.path();
    let name = match g.get("tokenizer.ggml.pre") {
        Some(_) => g.get_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let pre = pre_tokenizer(name).ok_or_else(|| {
        EngineError::unsupported(
            path,
            format!(
                "pre-tokenizer `{name}` (supported: {})",
                SUPPORTED_PRE.join(", ")
            ),
        )
    })?;
    let texts = super::string_array(g, "tokenizer.ggml.merges")?;
    // The vocabulary's map and the merges' pairs are made on two threads.
    let (vocab, merges): (Vocab, Result<Vec<(String, String)>>) = rayon::join(
        || {
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), i as u32))
                .collect()
        },
        || {
            texts
                .iter()
                .map(|m| {
                    let (a, b) = split_merge(path, m)?;
                    Ok((a.to_string(), b.to_string()))
                })
                .collect()
        },
    );
    let merges = merges?;
    // Each merge must join two tokens into a third. The tokenizers crate checks that each
    // piece is a token, but copies the merged piece into a buffer as long as the longest token
    // first, and panics when it is longer: that is checked here.
    let longest = tokens.iter().map(|t| t.len()).max().unwrap_or(0);
    if merges.iter().any(|(a, b)| a.len() + b.len() > longest) {
        return Err(bad_merge(path, tokens, &texts));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(
            |e| match e.downcast_ref::<tokenizers::models::bpe::Error>() {
                Some(tokenizers::models::bpe::Error::MergeTokenOutOfVocabulary(_)) => {
                    bad_merge(path, tokens, &texts)
                }
                _ => EngineError::format(path, format!("cannot build the BPE vocabulary: {e}")),
            },
        )?;
    let mut tk = HfTokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre.split));
    tk.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    Ok((tk, pre.default_add_bos))
}

/// A merge's two pieces: llama.cpp splits at the first space after the first byte, so that a
/// merge whose left side is a space-like piece still parses.
fn split_merge<'m>(path: &std::path::Path, m: &'m str) -> Result<(&'m str, &'m str)> {
    m.bytes()
        .skip(1)
        .position(|b| b == b' ')
        .map(|at| (&m[..at + 1], &m[at + 2..]))
        .ok_or_else(|| EngineError::format(path, format!("merge `{m}` is not two tokens")))
}

/// The error naming the first merge of `texts` whose pieces or result are not tokens (the
/// slow search, run once a merge is known to be bad).
fn bad_merge(path: &std::path::Path, tokens: &[&str], texts: &[&str]) -> EngineError {
    let vocab: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    for m in texts {
        let (a, b) = match split_merge(path, m) {
            Ok(pair) => pair,
            Err(e) => return e,
        };
        for piece in [a, b, &format!("{a}{b}")] {
            if !vocab.contains(piece) {
                return EngineError::format(
                    path,
                    format!("merge `{a} {b}`: `{piece}` is not a token of the vocabulary"),
                );
            }
        }
    }
    EngineError::format(path, "a merge does not join two tokens into a third")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};

    /// The words `name` cuts `text` into, before any byte mapping.
    fn words(patterns: &[&str], text: &str) -> Vec<String> {
        let steps: Vec<PreTokenizerWrapper> = patterns.iter().map(|p| regex(p)).collect();
        let seq = Sequence::new(steps);
        let mut s = PreTokenizedString::from(text);
        seq.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(w, _, _)| w.to_string())
            .collect()
    }

    #[test]
    fn llama3_keeps_up_to_three_digits_together() {
        assert_eq!(
            words(&[LLAMA3], "in 1234567 ways"),
            ["in", " ", "123", "456", "7", " ways"]
        );
    }

    #[test]
    fn qwen2_splits_every_digit() {
        assert_eq!(words(&[QWEN2], "x=2024"), ["x", "=", "2", "0", "2", "4"]);
    }

    #[test]
    fn contractions_are_case_insensitive() {
        for p in [LLAMA3, QWEN2] {
            assert_eq!(words(&[p], "DON'T you'Ll"), ["DON", "'T", " you", "'Ll"]);
        }
    }

    #[test]
    fn whitespace_before_a_word_stays_with_the_word() {
        for p in [LLAMA3, QWEN2] {
            // The last space of a run goes to the word; newlines group with the run.
            assert_eq!(words(&[p], "a   b"), ["a", "  ", " b"]);
            assert_eq!(words(&[p], "a\n\n  b"), ["a", "\n\n", " ", " b"]);
            assert_eq!(words(&[p], "end  "), ["end", "  "]);
            // A non-letter may lead a word: punctuation, or a tab.
            assert_eq!(words(&[p], "(x)\tfoo"), ["(x", ")", "\tfoo"]);
            // Punctuation takes its trailing newlines.
            assert_eq!(words(&[p], "ok.\n\nNext"), ["ok", ".\n\n", "Next"]);
        }
    }

    #[test]
    fn letters_of_every_script_are_words() {
        assert_eq!(
            words(&[QWEN2], "héllo мир 世界"),
            ["héllo", " мир", " 世界"]
        );
    }

    #[test]
    fn default_applies_its_splits_in_turn() {
        // Punctuation runs first, then the GPT-2 words, then digit runs cut in threes.
        assert_eq!(
            words(DEFAULT, "a+b=12345!"),
            ["a", "+", "b", "=", "123", "45", "!"]
        );
    }

    #[test]
    fn every_supported_name_builds() {
        for name in SUPPORTED_PRE {
            assert!(pre_tokenizer(name).is_some(), "{name}");
        }
        assert!(pre_tokenizer("tekken").is_none());
        assert!(pre_tokenizer("llama-bpe").unwrap().ignore_merges);
    }
}
