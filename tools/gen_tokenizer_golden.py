#!/usr/bin/env python3
"""Tokenizer golden file for the demo model, with llama.cpp as the reference.

Writes testdata/tokenizer_golden.json: a list of cases {name, text, special, ids}, where
ids = llama.cpp tokenize(text, add_bos=False, special=special).

Run with tools/.venv/bin/python tools/gen_tokenizer_golden.py [--no-cross-check]
"""

import random
import sys

import llama_cpp
from llama_cpp import Llama

from golden_util import DEMO_MODEL_SHA256, TESTDATA, check_demo_model, write_json

OUT = TESTDATA / "tokenizer_golden.json"
FUZZ_SEED = 4242
FUZZ_CASES = 100
SALAD_SEED = 99

PROSE = """\
The ferry left the mainland a little after six. Most of the passengers were commuters who \
had made the crossing so many times that they no longer looked at the water; they read, \
dozed, or stared at their phones while the engine hummed beneath the deck. A few tourists \
stood at the rail with their collars turned up, trying to photograph the gannets that \
dropped like arrows into the grey swell.

Marguerite was neither a commuter nor a tourist. She had come to the island to sort out her \
late uncle's workshop, a task she had been putting off since the spring. The lawyer's letter \
described it as "a quantity of clocks, tools and miscellaneous apparatus," which, knowing her \
uncle, could mean anything from a shelf of alarm clocks to a half-built orrery.

When she finally unlocked the door, the smell of oil and old paper met her first. Hundreds of \
clocks covered the walls, and every one of them had stopped at a different time. She walked \
slowly along the benches, reading the labels he had written in his cramped, careful hand: \
"escapement, needs cleaning," "do NOT wind," "for Ada, when she is older."

It took her three weeks to catalogue everything. By the end she could tell a deadbeat \
escapement from a verge, and she had learned that her uncle kept meticulous notes, though \
never in the obvious place. The notebook for the tower clock was inside the tower clock. The \
notes on the ship's chronometer were folded into a biscuit tin labelled "string (various)."

On her last evening she wound the largest clock, the one with the painted moon, and set it \
going. The tick filled the room. Outside, the ferry sounded its horn twice, and she realised \
she was in no hurry at all to catch it."""

PYTHON_CODE = '''\
import dataclasses
from typing import Iterable


@dataclasses.dataclass
class Interval:
    """A half-open interval [start, end) on the integers."""

    start: int
    end: int

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def overlaps(self, other: "Interval") -> bool:
        return self.start < other.end and other.start < self.end


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for iv in sorted(intervals, key=lambda x: (x.start, x.end)):
        if out and out[-1].end >= iv.start:
            out[-1] = Interval(out[-1].start, max(out[-1].end, iv.end))
        else:
            out.append(iv)
    return out


if __name__ == "__main__":
    ivs = [Interval(5, 9), Interval(1, 3), Interval(2, 6), Interval(12, 12)]
    merged = merge(ivs)
    print(f"{len(merged)} intervals, total length {sum(map(len, merged))}")
    assert merged[0] == Interval(1, 9), merged  # 0x1F & ~0b101 ** 2 // 3 != -1
'''

RUST_CODE = '''\
use std::collections::HashMap;
use std::fmt;

/// Counts how often each word appears, ignoring ASCII case.
#[derive(Debug, Default)]
pub struct WordCount {
    counts: HashMap<String, usize>,
}

impl WordCount {
    pub fn add(&mut self, text: &str) {
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            *self.counts.entry(word.to_ascii_lowercase()).or_insert(0) += 1;
        }
    }

    pub fn top(&self, n: usize) -> Vec<(&str, usize)> {
        let mut v: Vec<_> = self.counts.iter().map(|(k, &c)| (k.as_str(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

impl fmt::Display for WordCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (word, count) in self.top(3) {
            writeln!(f, "{word:>12} {count:>4}")?;
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut wc = WordCount::default();
    wc.add("the cat and the hat; THE end");
    println!("{wc}");
    let bytes: &[u8; 4] = b"\\x00\\xff";
    let _ = (bytes, 1_000_000u64 << 3, 'a'..='z', r#"raw "str""#);
    Ok(())
}
'''

JSON_TEXT = """\
{
  "id": "req-0042",
  "model": "smollm2-135m",
  "params": {"temperature": 0.0, "top_k": 5, "max_tokens": 30, "stop": ["\\n\\n", "</s>"]},
  "layers": [0, 7, 15, 29],
  "scores": [-1.5e-3, 2.75, 1e10, null, true, false],
  "nested": {"a": {"b": {"c": [[], {}, [[1]]]}}},
  "escaped": "tab\\tquote\\" backslash\\\\ unicode\\u00e9 \\ud83d\\ude00"
}"""

SHELL_TEXT = """\
#!/usr/bin/env bash
set -euo pipefail
for f in "${@:-*.log}"; do
  n=$(grep -c 'ERROR' "$f" 2>/dev/null || echo 0)
  [[ $n -gt 0 ]] && printf '%-20s %5d\\n' "$f" "$n"
done | sort -k2 -nr | head -n 10 > /tmp/report.txt
echo "exit=$? pid=$$ args=$# home=${HOME:?unset}" && cat <<'EOF' | tr a-z A-Z
done
EOF"""

WHITESPACE_CASES = {
    "spaces_runs": "a b  c   d    e     f      g       h",
    "leading_spaces": "    indented by four\n        and by eight",
    "trailing_spaces": "trailing spaces here   \nand here \n",
    "tabs": "col1\tcol2\t\tcol4\n\tindented\t\t\ttabs\t",
    "newline_runs": "one\ntwo\n\nthree\n\n\nfour\n\n\n\n\nfive",
    "crlf": "line one\r\nline two\r\n\r\nline four\r\n",
    "mixed_whitespace": " \t \n \r\n\t\t  \n\n   x  \t y\u00a0z\u2003w\u3000v",
    "only_spaces": "          ",
    "single_space": " ",
    "single_newline": "\n",
    "empty": "",
    "space_before_punct": "wait , what ?  really !",
}

NUMBER_CASES = {
    "prices": "The laptop costs $1,299.99, the mouse $24.50 and shipping is \u20ac7 (or \u00a35.99).",
    "decimals": "pi = 3.14159, e = 2.71828, sqrt(2) = 1.41421356237, -0.0001 and +42.",
    "years_dates": "Founded in 1887, rebuilt in 1946, restored 2003\u20132011; due 2024-06-30T18:45:00Z.",
    "long_digits": "12345678901234567890 000123 1000000 1e-9 0xDEADBEEF 255.255.255.0 v1.2.3",
    "math": "2+2=4, 7*8=56, 10/4=2.5, 3^2=9, 5%3=2, |x|<=1, a!=b, x>=y",
    "phone_ids": "Call +1 (555) 010-9999 or 555.0100; order #A-7731/B; ISBN 978-3-16-148410-0.",
}

CONTRACTION_CASES = {
    "contractions": "I don't think it's ready; we'll see. They're late, you've heard, she'd left.",
    "contractions_caps": "I'LL BE THERE. DON'T WAIT. IT'S FINE, WE'RE OK, YOU'VE GOT THIS, HE'D KNOW.",
    "possessives_quotes": "James's book, the dogs' bowls, 'single quoted', \u2018curly\u2019 and \u201cdouble\u201d.",
}

UNICODE_CASES = {
    "french": "L'\u00e9t\u00e9 dernier, nous sommes all\u00e9s \u00e0 la mer. \u00c7a co\u00fbte cher, "
    "mais la for\u00eat pr\u00e8s du ch\u00e2teau \u00e9tait magnifique. O\u00f9 est No\u00ebl ?",
    "german": "Die Stra\u00dfe vor dem B\u00e4ckerhaus ist gr\u00fcn gestrichen. \u00dcbermorgen "
    "f\u00e4hrt der Zug nach M\u00fcnchen. Gr\u00f6\u00dfenordnung, Fu\u00dfg\u00e4nger\u00fcberweg, \u1e9e.",
    "vietnamese": "Ti\u1ebfng Vi\u1ec7t c\u00f3 nhi\u1ec1u d\u1ea5u thanh. H\u00f4m nay tr\u1eddi "
    "\u0111\u1eb9p, ch\u00fang t\u00f4i \u0111i ch\u1ee3 mua c\u00e1 v\u00e0 rau.",
    "greek": "\u0397 \u03b8\u03ac\u03bb\u03b1\u03c3\u03c3\u03b1 \u03ae\u03c4\u03b1\u03bd "
    "\u03ae\u03c1\u03b5\u03bc\u03b7 \u03c3\u03ae\u03bc\u03b5\u03c1\u03b1. \u0391\u03b2\u03b3 "
    "\u03b1\u03b2\u03b3 \u03c0 \u2248 3.14, \u03a3\u03c9\u03ba\u03c1\u03ac\u03c4\u03b7\u03c2.",
    "cyrillic": "\u041c\u043e\u0441\u043a\u0432\u0430 \u2014 \u0441\u0442\u043e\u043b\u0438\u0446\u0430. "
    "\u0421\u0435\u0433\u043e\u0434\u043d\u044f \u0445\u043e\u043b\u043e\u0434\u043d\u043e, "
    "\u043d\u043e \u0441\u043e\u043b\u043d\u0435\u0447\u043d\u043e. \u0401\u0436 \u0438 "
    "\u0449\u0451\u0442\u043a\u0430. \u0423\u043a\u0440\u0430\u0457\u043d\u0430, \u0491\u0430\u043d\u043e\u043a.",
    "chinese": "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u3002"
    "\u8fd9\u4e2a\u6a21\u578b\u6709\u4e09\u5341\u5c42\u3002\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "japanese": "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002\u4eca\u65e5\u306f"
    "\u96e8\u304c\u964d\u3063\u3066\u3044\u307e\u3059\u3002\u30ab\u30bf\u30ab\u30ca\u3068"
    "\u3072\u3089\u304c\u306a\u3001\u6f22\u5b57\u3002\uff8a\uff9d\uff76\uff78\u3082\u3002",
    "korean": "\uc548\ub155\ud558\uc138\uc694. \uc624\ub298\uc740 \ub0a0\uc528\uac00 "
    "\ub9d1\uc2b5\ub2c8\ub2e4. \ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc744 \ud1a0\ud070\uc73c\ub85c "
    "\ub098\ub215\ub2c8\ub2e4.",
    "arabic": "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645. "
    "\u0627\u0644\u062c\u0648 \u062c\u0645\u064a\u0644 \u0627\u0644\u064a\u0648\u0645 "
    "\u0661\u0662\u0663 \u0648 456. \u064e\u0628\u0650\u0633\u0652\u0645\u0650",
    "hebrew": "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd. \u05d4\u05d9\u05d5\u05dd "
    "\u05d9\u05d5\u05dd \u05d9\u05e4\u05d4, 2024. \u05d1\u05bc\u05b0\u05e8\u05b5\u05d0\u05e9\u05b4\u05c1\u05d9\u05ea",
    "bidi_mixed": "The word \u05e9\u05dc\u05d5\u05dd means peace; \u0633\u0644\u0627\u0645 too "
    "\u200f(RLM)\u200e and \u202bembedded\u202c.",
    "emoji": "Good job \U0001F44D\U0001F3FF\U0001F44D\U0001F3FB! \U0001F600\U0001F602\U0001F973 "
    "\u2764\ufe0f \u2615 \U0001F680 \U0001F1EB\U0001F1F7\U0001F1EF\U0001F1F5 1\ufe0f\u20e3 #\ufe0f\u20e3",
    "emoji_zwj": "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family, "
    "\U0001F469\U0001F3FD\u200d\U0001F4BB coder, \U0001F3F3\ufe0f\u200d\U0001F308 flag, "
    "\U0001F9D1\U0001F3FF\u200d\U0001F91D\u200d\U0001F9D1\U0001F3FB, \U0001F43B\u200d\u2744\ufe0f",
    "combining_marks": "e\u0301 vs \u00e9, n\u0303, a\u0308\u0304, Z\u0351\u0368\u0313a\u0362l"
    "\u0336g\u0317o\u0324, \u0915\u094d\u0937, \u0e01\u0e34\u0e19, q\u0323\u0307",
    "math_symbols": "\u2200x \u2208 \u211d: x\u00b2 \u2265 0, \u2211\u1d62 a\u1d62 \u2264 \u221e, "
    "\u2202f/\u2202x, \u00bd \u2153 \u2154, \u2460\u2461\u2462, \U0001D400\U0001D401",
    "misc_scripts": "\u0939\u093f\u0928\u094d\u0926\u0940 \u0d2e\u0d32\u0d2f\u0d3e\u0d33\u0d02 "
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22 \u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8 "
    "\u0540\u0561\u0575\u0565\u0580\u0565\u0576 \u12a0\u121b\u122d\u129b",
    "fullwidth_and_compat": "\uff28\uff45\uff4c\uff4c\uff4f\uff01 \ufb01 \ufb02 \u2126 \u212b "
    "\u00bc \u2163 \u3231 \u33a1",
    "replacement_and_bom": "\ufeffBOM at start, \ufffd replacement, \u00ad soft hyphen, zero\u200bwidth",
}

CHAT_SYSTEM = "You are a careful assistant. Answer briefly."
CHAT_TEXT = (
    "<|im_start|>system\n" + CHAT_SYSTEM + "<|im_end|>\n"
    "<|im_start|>user\nWhat is 17 * 3? Show the steps.<|im_end|>\n"
    "<|im_start|>assistant\n17 * 3 = 17 + 17 + 17 = 51.<|im_end|>\n"
    "<|im_start|>user\nAnd in French?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

SPECIAL_CASES = {
    "chatml": CHAT_TEXT,
    "special_adjacent": "<|im_start|><|im_end|><|im_end|>text<|im_start|>user",
    "special_in_words": "before<|endoftext|>after <|im_end|> x<file_sep>y <repo_name>lensd",
    "special_partial": "<|im_start <|im_end| |im_end|> <|IM_END|> < |im_end|> <|endoftext|",
    "special_alone_im_end": "<|im_end|>",
    "special_code_tokens": "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
}

# Words for the pseudo-random "word salad" cases.
SALAD_WORDS = (
    "the of and to in is was for on with as by at from it that this an be are or have not "
    "lens layer token model logit tuned residual stream hidden state vector matrix norm "
    "attention head query key value rotary position embedding vocabulary softmax entropy "
    "river mountain window lantern quiet bright slowly under over between Paris Tokyo "
    "Cairo 1999 2025 3.5 42 $9.99 100% x86_64 snake_case CamelCase kebab-case "
    "don't can't it's we're I'm you'll they'd O'Neill e-mail re-entry co-op "
    "caf\u00e9 na\u00efve \u00fcber stra\u00dfe \u00e9l\u00e8ve \u6f22\u5b57 "
    "\u043c\u0438\u0440 \u03bb\u03cc\u03b3\u03bf\u03c2 \U0001F600 \u2713"
).split()
SALAD_PUNCT = [" ", " ", " ", " ", " ", ", ", ". ", "; ", ": ", "! ", "? ", "\n", "\n\n", " - ", "  ", "\t", " (", ") ", "\"", "'"]

# Code point ranges for the fuzz cases: (start, end inclusive, weight).
FUZZ_BLOCKS = [
    (0x20, 0x7E, 30),  # printable ASCII
    (0xA0, 0x24F, 8),  # Latin-1 supplement, Latin extended A/B
    (0x300, 0x36F, 3),  # combining diacritics
    (0x370, 0x3FF, 4),  # Greek
    (0x400, 0x4FF, 4),  # Cyrillic
    (0x5D0, 0x5EA, 2),  # Hebrew letters
    (0x620, 0x64A, 2),  # Arabic letters
    (0x900, 0x97F, 2),  # Devanagari
    (0xE01, 0xE3A, 2),  # Thai
    (0x1E00, 0x1EFF, 3),  # Latin extended additional
    (0x2000, 0x206F, 2),  # general punctuation (incl. zero-width characters)
    (0x20A0, 0x20C0, 1),  # currency symbols
    (0x2190, 0x23FF, 2),  # arrows, math operators, technical
    (0x2500, 0x27BF, 2),  # box drawing, shapes, dingbats
    (0x3040, 0x30FF, 4),  # hiragana, katakana
    (0x4E00, 0x9FFF, 6),  # CJK unified ideographs
    (0xAC00, 0xD7A3, 4),  # Hangul syllables
    (0xFF01, 0xFF5E, 1),  # fullwidth forms
    (0x1F300, 0x1F64F, 4),  # pictographs, emoticons
    (0x1F900, 0x1F9FF, 2),  # supplemental symbols and pictographs
    (0x1F3FB, 0x1F3FF, 1),  # skin tone modifiers
    (0x10000, 0x1007F, 1),  # Linear B (4-byte UTF-8, outside the BMP)
]
FUZZ_SPECIALS = ["\t", "\n", "\r\n", "  ", "\u200d", "\ufe0f", "\x0b", "\x1b", "\x7f", "\x00"]


def fuzz_text(rng: random.Random) -> str:
    n = rng.randint(5, 60)
    weights = [w for _, _, w in FUZZ_BLOCKS]
    chars = []
    while len(chars) < n:
        r = rng.random()
        if r < 0.08:
            chars.append(rng.choice(FUZZ_SPECIALS))
        elif r < 0.12:
            chars.append(" ")
        else:
            lo, hi, _ = rng.choices(FUZZ_BLOCKS, weights=weights)[0]
            chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)[:n]


def salad_text(rng: random.Random, n_words: int) -> str:
    parts = []
    for _ in range(n_words):
        w = rng.choice(SALAD_WORDS)
        if rng.random() < 0.1:
            w = w.capitalize()
        elif rng.random() < 0.03:
            w = w.upper()
        parts.append(w)
        parts.append(rng.choice(SALAD_PUNCT))
    return "".join(parts)


def build_cases():
    """Returns a list of (name, text, special)."""
    cases = []
    paragraphs = PROSE.split("\n\n")
    for i, p in enumerate(paragraphs):
        cases.append((f"prose_paragraph_{i}", p, False))
    cases.append(("prose_full", PROSE, False))
    cases.append(("code_python", PYTHON_CODE, False))
    cases.append(("code_rust", RUST_CODE, False))
    cases.append(("code_json", JSON_TEXT, False))
    cases.append(("code_shell", SHELL_TEXT, False))
    for group in (WHITESPACE_CASES, NUMBER_CASES, CONTRACTION_CASES, UNICODE_CASES):
        for name, text in group.items():
            cases.append((name, text, False))
    for name, text in SPECIAL_CASES.items():
        cases.append((name + "_special", text, True))
        cases.append((name + "_plain", text, False))
    # Longer inputs: everything above in one document, and pseudo-random word salad.
    everything = "\n\n".join(t for _, t, _ in cases if t)
    cases.append(("all_in_one_special", everything, True))
    rng = random.Random(SALAD_SEED)
    for i in range(4):
        cases.append((f"word_salad_{i}", salad_text(rng, 800), False))
    rng = random.Random(FUZZ_SEED)
    for i in range(FUZZ_CASES):
        cases.append((f"fuzz_{i:03d}", fuzz_text(rng), rng.random() < 0.5))
    return cases


def cross_check(model, cases) -> None:
    """Informational: compare with Hugging Face `tokenizers` built from the GGUF vocabulary.

    transformers' GGUF loader sets up a plain GPT-2 byte-level pre-tokenizer; the
    `smollm` pre-tokenizer also splits every numeric character (\\p{N}) on its own, so
    the pre-tokenizer is replaced by Digits(individual_digits=True) + ByteLevel.
    """
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    differ = []
    for c in cases:
        ids = tok(c["text"], add_special_tokens=False, split_special_tokens=not c["special"])
        if ids["input_ids"] != c["ids"]:
            differ.append(c["name"])
    print(f"cross-check with HF tokenizers: {len(cases) - len(differ)} of {len(cases)} cases agree")
    if differ:
        print("  differing cases: " + ", ".join(differ), file=sys.stderr)


def main():
    model = check_demo_model()
    llm = Llama(str(model), vocab_only=True, verbose=False)
    cases = []
    total = 0
    for name, text, special in build_cases():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        ids = [int(t) for t in ids]
        if not special:
            # Without special-token parsing, none of the control tokens may appear.
            assert all(t > 16 for t in ids), name
        cases.append({"name": name, "text": text, "special": special, "ids": ids})
        total += len(ids)
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names))
    doc = {
        "model": model.name,
        "model_sha256": DEMO_MODEL_SHA256,
        "reference": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) "
        "tokenize(add_bos=False, special=...)",
        "cases": cases,
    }
    write_json(OUT, doc)
    size = OUT.stat().st_size
    print(f"{len(cases)} cases, {total} tokens, {OUT.name} {size} bytes")
    if total < 20000:
        print("warning: fewer than 20000 tokens", file=sys.stderr)
    assert size < 2_000_000
    if "--no-cross-check" not in sys.argv:
        cross_check(model, cases)


if __name__ == "__main__":
    main()
