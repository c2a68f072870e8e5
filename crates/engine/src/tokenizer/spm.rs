//! SentencePiece-style vocabularies, as GGUF files with `tokenizer.ggml.model = "llama"` carry
//! them (Gemma, Llama-2, Mistral): pieces with scores, spaces written as `▁` (U+2581), and
//! byte tokens `<0xXX>` for characters no piece covers.
//!
//! Encoding reproduces llama.cpp's, id for id:
//! 1. Control, unknown and user-defined tokens are cut out of the text as whole pieces, the
//!    longest token text first, each at every occurrence left to right. User-defined tokens are
//!    always cut out; control and unknown tokens only when special tokens are recognised.
//! 2. Each remaining run of text gets a leading space when the file says `add_space_prefix`
//!    and the run starts the text or follows a token of step 1; then `' '` becomes `▁`.
//! 3. The run starts as one symbol per character. Repeatedly, among adjacent pairs whose
//!    concatenation is a piece, the pair whose piece has the highest score is merged (the
//!    leftmost on ties), until no pair forms a piece.
//! 4. Each final symbol is its piece, or else (a character no piece covers) its UTF-8 bytes as
//!    byte tokens; a byte without one gives the unknown token for the whole character.
//!
//! The `tokenizers` crate could not do this exactly: its BPE ranks merges of pairs, not of
//! resulting pieces, so two pairs that form pieces of equal score are not taken leftmost
//! first, and llama.cpp's longest-first cutting of special tokens is not its leftmost match.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// How SentencePiece writes a space inside pieces.
pub const SPACE: char = '\u{2581}';

/// GGUF token types (`tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    pub fn from_gguf(t: i32) -> Self {
        match t {
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Undefined,
        }
    }

    /// Tokens cut out of the text whole, before the pieces are merged.
    fn is_whole(self) -> bool {
        matches!(
            self,
            TokenKind::Control | TokenKind::Unknown | TokenKind::UserDefined
        )
    }

    /// Tokens that are written in text only when special tokens are recognised.
    pub fn is_special(self) -> bool {
        matches!(self, TokenKind::Control | TokenKind::Unknown)
    }
}

/// One vocabulary entry, as the GGUF file lists it.
#[derive(Clone, Debug)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: TokenKind,
}

pub struct Spm {
    pieces: Vec<Piece>,
    /// Text to id; where two tokens share a text, the later one (as in llama.cpp).
    ids: HashMap<String, u32>,
    /// The byte token of each byte value, where the vocabulary has one.
    bytes: [Option<u32>; 256],
    unknown: Option<u32>,
    add_space_prefix: bool,
    /// Tokens cut out whole (step 1), longest text first, lower id first among equal lengths.
    whole: Vec<u32>,
}

/// A stretch of the input: text still to be split into pieces, or a token already found.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A symbol of the run being merged: a byte range of the text, linked to its neighbours.
/// Merged-away symbols keep `len == 0`.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols into a piece of `score`; `len` is the bytes the
/// two covered when it was found, so that stale candidates can be recognised.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Candidate {
    /// The heap pops the greatest: the highest score, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
            .then_with(|| other.len.cmp(&self.len))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl Spm {
    /// `unknown` is the file's unknown-token id, if it names one; otherwise the first token
    /// of kind [`TokenKind::Unknown`] serves.
    pub fn new(mut pieces: Vec<Piece>, unknown: Option<u32>, add_space_prefix: bool) -> Self {
        let mut ids = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter_mut().enumerate() {
            if p.text.is_empty() {
                // An empty text would match everywhere; llama.cpp renames such tokens so.
                p.text = format!("[EMPTY_{i}]");
            }
            if p.score.is_nan() {
                p.score = f32::NEG_INFINITY;
            }
            ids.insert(p.text.clone(), i as u32);
        }
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = ids
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| {
                    // Vocabularies without byte tokens may still hold single ASCII bytes.
                    (b < 0x80)
                        .then(|| ids.get(&(b as u8 as char).to_string()))
                        .flatten()
                })
                .copied();
        }
        let unknown = unknown.or_else(|| {
            pieces
                .iter()
                .position(|p| p.kind == TokenKind::Unknown)
                .map(|i| i as u32)
        });
        let mut whole: Vec<u32> = (0..pieces.len() as u32)
            .filter(|&i| pieces[i as usize].kind.is_whole())
            .collect();
        whole.sort_by_key(|&i| std::cmp::Reverse(pieces[i as usize].text.len()));
        Spm {
            pieces,
            ids,
            bytes,
            unknown,
            add_space_prefix,
            whole,
        }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&Piece> {
        self.pieces.get(id as usize)
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Token ids of `text`; with `special`, control tokens written in it become their ids.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut after_token = true;
        for fragment in self.partition(text, special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_token = true;
                }
                Fragment::Text(t) => {
                    let mut run = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && after_token {
                        run.push(SPACE);
                    }
                    run.extend(t.chars().map(|c| if c == ' ' { SPACE } else { c }));
                    self.encode_run(&run, &mut out)?;
                    after_token = false;
                }
            }
        }
        Ok(out)
    }

    /// Step 1: cuts the tokens of `self.whole` out of `text`.
    fn partition<'a>(&self, text: &'a str, special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return vec![];
        }
        for &id in &self.whole {
            let piece = &self.pieces[id as usize];
            if !special && piece.kind.is_special() {
                continue;
            }
            let needle = piece.text.as_str();
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                let Fragment::Text(t) = f else {
                    next.push(f);
                    continue;
                };
                let mut rest = 0;
                for (at, _) in t.match_indices(needle) {
                    if at > rest {
                        next.push(Fragment::Text(&t[rest..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = at + needle.len();
                }
                if rest < t.len() {
                    next.push(Fragment::Text(&t[rest..]));
                }
            }
            frags = next;
        }
        frags
    }

    /// Steps 3 and 4 on one run of text whose spaces are already `▁`.
    fn encode_run(&self, run: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let n = run.chars().count();
        let mut syms: Vec<Symbol> = run
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
            })
            .collect();
        let mut heap = BinaryHeap::new();
        for i in 1..syms.len() {
            self.offer(run, &syms, i - 1, i, &mut heap);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (c.left, c.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != c.len {
                continue; // one side has changed since this candidate was found
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(after) = syms[r].next {
                syms[after].prev = Some(l);
            }
            if let Some(before) = syms[l].prev {
                self.offer(run, &syms, before, l, &mut heap);
            }
            if let Some(after) = syms[l].next {
                self.offer(run, &syms, l, after, &mut heap);
            }
        }
        let mut at = (!syms.is_empty()).then_some(0);
        while let Some(i) = at {
            let s = &syms[i];
            self.emit(&run[s.start..s.start + s.len], out)?;
            at = s.next;
        }
        Ok(())
    }

    /// Queues the merge of symbols `l` and `r` when their text together is a piece.
    fn offer(
        &self,
        run: &str,
        syms: &[Symbol],
        l: usize,
        r: usize,
        heap: &mut BinaryHeap<Candidate>,
    ) {
        let len = syms[l].len + syms[r].len;
        let text = &run[syms[l].start..syms[l].start + len];
        if let Some(&id) = self.ids.get(text) {
            heap.push(Candidate {
                score: self.pieces[id as usize].score,
                left: l,
                right: r,
                len,
            });
        }
    }

    /// Step 4. Merged symbols are always pieces; only single characters can fall back.
    fn emit(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        if let Some(&id) = self.ids.get(text) {
            out.push(id);
            return Ok(());
        }
        if text.bytes().all(|b| self.bytes[b as usize].is_some()) {
            out.extend(text.bytes().filter_map(|b| self.bytes[b as usize]));
            return Ok(());
        }
        match self.unknown {
            Some(unk) => {
                out.push(unk);
                Ok(())
            }
            None => Err(format!(
                "the character {text:?} is in no piece, the vocabulary has no byte token for \
                 all of its bytes {:02X?}, and no unknown token",
                text.as_bytes()
            )),
        }
    }

    /// The bytes token `id` stands for: normal pieces with `▁` as a space, byte tokens as
    /// their byte, every other kind (control, user-defined, unknown) as its text.
    pub fn piece_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(p) = self.pieces.get(id as usize) else {
            return;
        };
        match p.kind {
            TokenKind::Normal => {
                for c in p.text.chars() {
                    let c = if c == SPACE { ' ' } else { c };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            TokenKind::Byte => match byte_of(&p.text) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(p.text.as_bytes()),
            },
            _ => out.extend_from_slice(p.text.as_bytes()),
        }
    }

    /// Text of `ids`, with the leading space the encoder adds removed when the vocabulary
    /// adds one (as SentencePiece and llama.cpp decode). Bytes that are not valid UTF-8
    /// become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.piece_bytes(id, &mut bytes);
        }
        let start = usize::from(self.add_space_prefix && bytes.first() == Some(&b' '));
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// The byte `<0xXX>` stands for.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(entries: &[(&str, f32, TokenKind)], byte_tokens: bool) -> Vec<Piece> {
        let mut v: Vec<Piece> = entries
            .iter()
            .map(|&(t, s, k)| Piece {
                text: t.to_string(),
                score: s,
                kind: k,
            })
            .collect();
        if byte_tokens {
            v.extend((0..=255u8).map(|b| Piece {
                text: format!("<0x{b:02X}>"),
                score: 0.0,
                kind: TokenKind::Byte,
            }));
        }
        v
    }

    use TokenKind::{Control, Normal, Unknown, UserDefined};

    /// ids 0..: <unk> <s> </s> ▁ a b c ab bc abc ▁a <x> then 256 byte tokens from 12.
    fn tiny(add_space_prefix: bool) -> Spm {
        let v = vocab(
            &[
                ("<unk>", 0.0, Unknown),
                ("<s>", 0.0, Control),
                ("</s>", 0.0, Control),
                ("▁", -1.0, Normal),
                ("a", -2.0, Normal),
                ("b", -2.0, Normal),
                ("c", -2.0, Normal),
                ("ab", -3.0, Normal),
                ("bc", -3.0, Normal),
                ("abc", -1.5, Normal),
                ("▁a", -2.5, Normal),
                ("<x>", 0.0, UserDefined),
            ],
            true,
        );
        Spm::new(v, Some(0), add_space_prefix)
    }

    const BYTES: u32 = 12;

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let spm = tiny(false);
        // "ab" and "bc" both score -3: "ab" is further left, so "abc" = ab + c.
        assert_eq!(spm.encode("abc", false).unwrap(), vec![9]);
        // In "abcbc": ab (left 0) first, then ab+c = abc, then b+c = bc.
        assert_eq!(spm.encode("abcbc", false).unwrap(), vec![9, 8]);
        // "bab": b+a is no piece; a+b is.
        assert_eq!(spm.encode("bab", false).unwrap(), vec![5, 7]);
    }

    #[test]
    fn the_higher_score_wins_over_position() {
        let v = vocab(
            &[
                ("x", -1.0, Normal),
                ("y", -1.0, Normal),
                ("xy", -5.0, Normal),
                ("yy", -2.0, Normal),
            ],
            false,
        );
        let spm = Spm::new(v, None, false);
        // "xyy": yy (-2) beats xy (-5) although xy is further left.
        assert_eq!(spm.encode("xyy", false).unwrap(), vec![0, 3]);
    }

    #[test]
    fn characters_without_a_piece_fall_back_to_bytes() {
        let spm = tiny(false);
        let ids = spm.encode("aé", false).unwrap();
        assert_eq!(ids, vec![4, BYTES + 0xC3, BYTES + 0xA9]);
        assert_eq!(spm.decode(&ids), "aé");
        // A lone byte token of a multi-byte character decodes to U+FFFD.
        assert_eq!(spm.decode(&[BYTES + 0xC3]), "\u{FFFD}");
    }

    #[test]
    fn bytes_without_tokens_give_the_unknown_token() {
        let v = vocab(
            &[
                ("<unk>", 0.0, Unknown),
                ("a", -1.0, Normal),
                ("<0x61>", 0.0, TokenKind::Byte),
            ],
            false,
        );
        let spm = Spm::new(v.clone(), None, false);
        assert_eq!(spm.encode("aé€a", false).unwrap(), vec![1, 0, 0, 1]);
        let no_unk = Spm::new(v[1..].to_vec(), None, false);
        let err = no_unk.encode("é", false).unwrap_err();
        assert!(err.contains("no unknown token"), "{err}");
    }

    #[test]
    fn add_space_prefix_on_and_off() {
        let on = tiny(true);
        let off = tiny(false);
        assert_eq!(off.encode("a b", false).unwrap(), vec![4, 3, 5]);
        assert_eq!(on.encode("a b", false).unwrap(), vec![10, 3, 5]);
        assert_eq!(on.decode(&[10, 3, 5]), "a b");
        assert_eq!(off.decode(&[10, 3, 5]), " a b");
        // The prefix also follows a special token, and not text after text.
        assert_eq!(on.encode("<s>a", true).unwrap(), vec![1, 10]);
        assert_eq!(off.encode("<s>a", true).unwrap(), vec![1, 4]);
        assert_eq!(on.encode("", false).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn control_tokens_only_when_special_user_defined_always() {
        let spm = tiny(false);
        assert_eq!(spm.encode("a<s>b", true).unwrap(), vec![4, 1, 5]);
        let plain = spm.encode("a<s>b", false).unwrap();
        assert!(!plain.contains(&1) && plain.len() > 3, "{plain:?}");
        assert_eq!(spm.decode(&plain), "a<s>b");
        assert_eq!(spm.encode("a<x>b", false).unwrap(), vec![4, 11, 5]);
        assert_eq!(spm.encode("<x><x>", true).unwrap(), vec![11, 11]);
        assert_eq!(spm.decode(&[1, 4, 11, 2]), "<s>a<x></s>");
    }

    #[test]
    fn longer_whole_tokens_are_cut_first() {
        let v = vocab(
            &[
                ("<a>", 0.0, Control),
                ("x<a>y", 0.0, UserDefined),
                ("x", -1.0, Normal),
                ("y", -1.0, Normal),
            ],
            false,
        );
        let spm = Spm::new(v, None, false);
        assert_eq!(spm.encode("<a>x<a>y", true).unwrap(), vec![0, 1]);
    }

    #[test]
    fn spaces_become_the_space_piece_and_back() {
        let spm = tiny(false);
        let ids = spm.encode("  a", false).unwrap();
        assert_eq!(ids, vec![3, 10]);
        assert_eq!(spm.decode(&ids), "  a");
        // A newline has no piece here: its byte token.
        assert_eq!(spm.encode("\n", false).unwrap(), vec![BYTES + 10]);
    }
}
