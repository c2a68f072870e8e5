#!/usr/bin/env python3
"""gpt-oss's tokenizer (the o200k_base vocabulary with the Harmony special tokens) as a Hugging
Face `tokenizer.json`, and a golden corpus of its ids, for crates/engine/tests/gptoss_tokenizer.rs.

Two uses:

    python3 tools/gen_gptoss_tokenizer.py build VOCAB OUT_DIR

        Writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json from VOCAB (the
        o200k_base.tiktoken file) with Python's standard library alone (~4 s, ~380 MB).
        scripts/fetch-gptoss-tokenizer.sh runs this on machines without transformers (CI).

    tools/.build/gptoss-tokenizer/venv/bin/python tools/gen_gptoss_tokenizer.py

        The generator. Builds the same two files with transformers' own converter
        (`TikTokenConverter`, then `save_pretrained`) and fails unless the standard-library
        build above is byte-identical to it and to the sha256 that the fetch script pins. Then
        writes testdata/gptoss-tokenizer/golden.json: a corpus of texts with transformers' ids
        (special tokens in the text parsed, and again not parsed), checked against tiktoken's
        `o200k_harmony` and, for the Harmony conversations, against openai-harmony's ids in
        testdata/harmony/golden.json; and decodings of id sequences.

Setup, once (the venv is git-ignored; torch is not needed):

    scripts/fetch-gptoss-tokenizer.sh     # models/gpt-oss-tokenizer/{o200k_base.tiktoken, ...}
    python3 -m venv tools/.build/gptoss-tokenizer/venv
    tools/.build/gptoss-tokenizer/venv/bin/pip install transformers==5.24.0 tokenizers==0.23.3 \
        tiktoken==0.14.0

The layout follows the published openai/gpt-oss tokenizer, as far as it could be learnt without
the file (transformers' gpt-oss conversion script, and copies of its tokenizer_config.json): 21
special tokens, ids 199998..=200018 (the ten named ones and `<|reserved_N|>` for the other ids
there), all `special`, `normalized: false`; no normalizer; pre-tokenizer Sequence[Split(o200k
regex, Isolated), ByteLevel(add_prefix_space false, use_regex false)]; ByteLevel decoder and
post-processor (which adds no token); BPE with `ignore_merges`, the merges derived from the ranks
as transformers' TikTokenConverter derives them. So `len(tokenizer)` is 200,019, while the model
has 201,088 embedding rows: tiktoken's o200k_harmony also names ids 200019..=201087
(`<|reserved_N|>`), the published tokenizer.json does not, and neither does this one.
"""

import base64
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "gpt-oss-tokenizer"
VOCAB = MODEL_DIR / "o200k_base.tiktoken"
BUILD = ROOT / "tools" / ".build" / "gptoss-tokenizer"
FETCH_SCRIPT = ROOT / "scripts" / "fetch-gptoss-tokenizer.sh"
HARMONY_GOLDEN = ROOT / "testdata" / "harmony" / "golden.json"
OUT = ROOT / "testdata" / "gptoss-tokenizer" / "golden.json"

VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# tiktoken caches a download under the sha1 of its URL; the generator puts the local file there.
VOCAB_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"

# o200k's pre-tokenizer regex (tiktoken's `o200k_base` pattern; the generator checks that
# tiktoken's `o200k_harmony` has this one).
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

NAMED_SPECIALS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}
FIRST_SPECIAL, LAST_SPECIAL = 199998, 200018

BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"


def special_tokens() -> list:
    """(id, text) of every added token, by id."""
    return [
        (i, NAMED_SPECIALS.get(i, f"<|reserved_{i}|>"))
        for i in range(FIRST_SPECIAL, LAST_SPECIAL + 1)
    ]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# The standard-library build (what CI runs).


def read_ranks(path: Path) -> dict:
    """The .tiktoken file: one `base64(token bytes) rank` per line."""
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != VOCAB_SHA256:
        raise SystemExit(f"{path} has sha256 {digest}, expected {VOCAB_SHA256}")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def byte_chars() -> list:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68
    bytes for U+0100 onwards, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0x100
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return [table[b] for b in range(256)]


def vocab_and_merges(ranks: dict):
    """The BPE vocabulary (spelled in the byte-level alphabet) and its merges, ordered by the
    rank of the token they make and, for one token, by the ranks of the left then right part:
    the order transformers' TikTokenConverter gives."""
    chars = byte_chars()

    def spell(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[spell(token)] = rank
        splits = []
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                splits.append((ranks[left], ranks[right], left, right))
        splits.sort()
        merges.extend([spell(left), spell(right)] for _, _, left, right in splits)
    return vocab, merges


def tokenizer_json(ranks: dict) -> bytes:
    """tokenizer.json as the `tokenizers` library (0.23) saves it: serde's pretty printer, two
    spaces, no final newline, non-ASCII written as UTF-8."""
    vocab, merges = vocab_and_merges(ranks)
    added = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, text in special_tokens()
    ]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": O200K_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


def tokenizer_config_json() -> bytes:
    """tokenizer_config.json as transformers 5.24's `save_pretrained` writes it for the
    tokenizer the generator builds: BOS named but not added, EOS `<|return|>`, PAD
    `<|endoftext|>`; 10**30 is transformers' "no limit" for model_max_length."""
    doc = {
        "backend": "tokenizers",
        "bos_token": BOS,
        "eos_token": EOS,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": int(1e30),
        "pad_token": PAD,
        "tokenizer_class": "TokenizersBackend",
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def build(vocab: Path, out_dir: Path) -> dict:
    """Writes both files; returns {file name: bytes}."""
    files = {
        "tokenizer.json": tokenizer_json(read_ranks(vocab)),
        "tokenizer_config.json": tokenizer_config_json(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    return files


# ---------------------------------------------------------------------------------------------
# The corpus.

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "A lens reads a model's hidden state at one layer and asks what the model would say if it "
    "stopped there. Early layers often predict punctuation; later ones settle on the word.",
    "It's 5 o'clock somewhere, isn't it? We'll see. They'd said they're sure, but I'm not.",
    "DON'T SHOUT. I'LL listen. YOU'RE right, WE'VE heard. HE'D go; SHE'S gone. IT'S ok.",
    "Mixed cases: it'S, It'Ll, they'RE, we'Ve, I'M, she'D, and an odd one: rock'n'roll.",
    "McDonald's iPhone eBay HTTPServer XMLHttpRequest camelCaseWords snake_case_words "
    "SCREAMING_SNAKE kebab-case-words PascalCase ALLCAPS lowercase",
    "Dr. Smith (b. 1970) wrote: \"Tokenizers split text; models join it again.\" -- p. 42.",
    "Ellipsis... em-dash\u2014en-dash\u2013hyphen-minus; \u201csmart quotes\u201d and "
    "\u2018single ones\u2019; \u00abguillemets\u00bb.",
    "Once upon a time, in a server room far away, a scheduler kept every request in a queue "
    "and never let two of them fight over the same base. The lenses were small, the model was "
    "large, and the users were many; so the scheduler loaded the base once and lent it to all.",
]

CODE = [
    "def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\n\nprint([fib(i) for i in range(10)])\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
    "    println!(\"{:?}\", v);\n}\n",
    '{"model": "gpt-oss-20b", "layers": 24, "experts": 32, "top_k": 4, "sinks": true, '
    '"rope": {"type": "yarn", "factor": 32.0}, "tags": ["moe", "mxfp4"], "null": null}',
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in /usr/local/bin/*; do\n"
    "  [ -x \"$f\" ] && echo \"$f\" | sed 's|/usr/local/||' >> /tmp/list.txt\ndone\n",
    "<!DOCTYPE html>\n<html lang=\"en\"><head><title>lensd</title></head>\n"
    "<body><div class=\"row\" id='x1'>&nbsp;&lt;tag&gt;</div></body></html>",
    "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id "
    "WHERE o.total >= 100.50 GROUP BY u.id HAVING n > 3 ORDER BY n DESC;",
    "#include <stdio.h>\nint main(void) { int x = 0x7fffffff; printf(\"%d\\n\", x >> 3); "
    "return x != 0 ? 0 : -1; }",
    "path/to/file.rs src/lib.rs ./a/b/c ../../up C:\\Windows\\System32 "
    "https://example.com/a/b?q=1&r=2#frag "
    "file:///etc/hosts //comment /* block */ a//b a/\nb",
    "x+=1;y-=2;z*=3;w/=4;a%=5;b<<=1;c>>=2;d&&e||f;g!==h;i===j;k=>l;m::n;o->p;q?.r;s??t;",
    "    indented four\n\tindented tab\n\t\tdouble tab\n        eight spaces\n",
]

DIGITS = [
    "0 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890",
    "3.14159265358979 2.718281828 -0.5 +7 1e10 6.022e23 1,000,000 1.000.000,00",
    "2024-06-01T12:34:56Z 23:59:59.999 05/08/2025 v1.2.3-rc.4 #42 $19.99 \u20ac5,00 \u00a3100 50%",
    "0x1F 0b1011 0o777 007 1_000_000 12px 3rd 21st 100kg 4K 1080p",
    "Arabic-Indic \u0663\u0664\u0665\u0666 Devanagari \u0967\u0968\u0969 fullwidth "
    "\uff11\uff12\uff13\uff14 fractions \u00bd\u00be\u2153 roman \u2166\u216b circled "
    "\u2460\u2461\u2462 superscript x\u00b2+y\u00b3",
    "99999999999999999999999999999999",
    "phone +1 (555) 123-4567, ISBN 978-3-16-148410-0, IP 192.168.0.1:8080",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "     ",
    "\n",
    "\n\n\n\n",
    "\t",
    "\t\t\t",
    "\r\n",
    "\r\n\r\n",
    "\r",
    "a  b",
    "a   b    c",
    "a \n b",
    "a  \n\n  b",
    "trailing   ",
    "   leading",
    "line one\nline two\r\nline three\rline four",
    "tabs\tbetween\twords\t",
    " \t \n \t ",
    "x\u00a0y\u00a0\u00a0z",
    "ideographic\u3000space\u3000\u3000end",
    "line\u2028separator\u2029paragraph",
    "next\u0085line",
    "vertical\x0btab\x0cform feed",
    "zero\u200bwidth\u200bspace and word\u2060joiner",
    "\ufeffbyte order mark",
    "mongolian\u180evowel separator",
    "thin\u2009space hair\u200aspace narrow\u202fnbsp math\u205fspace",
    "ends with newline\n",
    "ends with spaces then newline   \n",
    "    \n    \n",
    "word\n\n\n\nword",
    " ?! ,. ;:",
]

ACCENTS = [
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 co\u00f6perate fa\u00e7ade \u00fcber Stra\u00dfe "
    "se\u00f1or S\u00e3o Paulo",
    "NFD: cafe\u0301 nai\u0308ve re\u0301sume\u0301 n\u0303 A\u030a",
    "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u: ng\u01b0\u1eddi, \u0111\u01b0\u1eddng, "
    "ph\u1edf, \u0111\u1eb9p",
    "Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144. \u010cesk\u00fd "
    "\u0159ek\u0148\u016f. \u0130stanbul \u0131\u015f\u0131k \u011f\u00fc\u00e7",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac: \u03b3\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 "
    "\u03ba\u03cc\u03c3\u03bc\u03b5. \u0420\u0443\u0441\u0441\u043a\u0438\u0439: "
    "\u043f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0416\u0418\u041a",
    "Long s in contractions: it'\u017f, IT'\u017f; Kelvin \u212a; dotless I'\u0130S",
    "\u00c5ngstr\u00f6m \u00c6sir \u00d8resund \u00de\u00f3r \u00f0 \u0152uvre \u0132ssel",
]

SCRIPTS = [
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff1a\u6211\u4eec\u5728\u5317\u4eac\u5403\u996d\u3002"
    "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff01",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca"
    "\u3068\u3072\u3089\u304c\u306a\u3001\u6f22\u5b57\u3002\u300c\u5f15\u7528\u300d",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4. \uc548\ub155\ud558\uc138\uc694!",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629: \u0645\u0631\u062d\u0628\u0627 "
    "\u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c "
    "\u0643\u064a\u0641 \u062d\u0627\u0644\u0643\u061f",
    "\u05e2\u05d1\u05e8\u05d9\u05ea: \u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd "
    "mixed \u05e2\u05d1\u05e8\u05d9\u05ea and English",
    "\u0939\u093f\u0928\u094d\u0926\u0940: \u0928\u092e\u0938\u094d\u0924\u0947 "
    "\u0926\u0941\u0928\u093f\u092f\u093e\u0964 \u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\u0e44\u0e21\u0e48\u0e21\u0e35\u0e40\u0e27"
    "\u0e49\u0e19\u0e27\u0e23\u0e23\u0e04",
    "\u0ba4\u0bae\u0bbf\u0bb4\u0bcd \u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8 "
    "\u0540\u0561\u0575\u0565\u0580\u0565\u0576 \u12a0\u121b\u122d\u129b "
    "\u1780\u17d2\u1798\u17c2\u179a",
    "Fullwidth \uff21\uff22\uff23\uff41\uff42\uff43\uff01\uff1f "
    "and halfwidth \uff76\uff80\uff76\uff85",
    "Math \U0001d400\U0001d401\U0001d402 \U0001d7ce\U0001d7cf script \u210b\u2112 "
    "\u2200x\u2208\u211d: x\u00b2\u22650 \u222b\u2211\u220f\u221a\u221e",
]

EMOJI = [
    "\U0001f600\U0001f603\U0001f604 \U0001f44d\U0001f3fd \U0001f44b\U0001f3ff "
    "\U0001f680\U0001f980",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
    "rainbow flag \U0001f3f3\ufe0f\u200d\U0001f308 "
    "technologist \U0001f9d1\U0001f3fb\u200d\U0001f4bb",
    "flags \U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8 "
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "keycaps 1\ufe0f\u20e3#\ufe0f\u20e3 hearts \u2764\ufe0f\u2764\U0001f9e1 "
    "text-style \u263a\ufe0e emoji-style \u263a\ufe0f",
    "\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600",
    "Kaomoji (\u256f\u00b0\u25a1\u00b0)\u256f\ufe35 \u253b\u2501\u253b  \u00af\\_(\u30c4)_/\u00af",
]

SPECIAL_TEXTS = [
    "<|start|>",
    "<|start|><|message|><|end|>",
    "<|startoftext|>Hello<|endoftext|>",
    "Hello<|end|>world",
    "Hello <|end|> world",
    " <|return|> ",
    "<|call|>\n<|constrain|>json",
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    "<|message|>{\"city\": \"Tokyo\"}<|call|>",
    "<|endofprompt|>and after",
    "text<|reserved_200000|>text<|reserved_200017|>",
    "<|<|end|>|>",
    "<|start|",
    "start|>",
    "<|START|> <|End|> < |end| > <| end |>",
    "<|im_start|>user\nhi<|im_end|>",
    "<|reserved_200018|> is not a token of gpt-oss's tokenizer.json",
    "<|reserved_200500|> and <|reserved_201087|> are o200k_harmony names past the file's 200018",
    "\u00e9<|channel|>\u4e2d<|message|>\U0001f600",
    "<|end|><|end|><|end|>",
    "<|channel|>analysis<|message|>We need to answer.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Done.<|return|>",
]

WORDS = (
    "lens layer token model base group tier lease queue scheduler residual stream expert router "
    "sink window rope yarn harmony channel analysis final message start end return call the of "
    "and a to in is was for on with as by at from it's don't we'll I'M THEY'RE caf\u00e9 "
    "\u4e16\u754c \u043c\u0438\u0440 \U0001f980 1234 3.5 x86_64 foo/bar".split(" ")
)
SALAD_JOINS = [" ", "  ", ", ", ". ", "\n", "\n\n", "\t", "/", "-", "_", "", "'", ": ", " (", ") "]

# Pools of code points for the fuzz strings: (weight, [(first, last), ...]).
POOLS = [
    (6, [(0x20, 0x7E)]),
    (
        2,
        [
            (0x09, 0x0D),
            (0x20, 0x20),
            (0x85, 0x85),
            (0xA0, 0xA0),
            (0x1680, 0x1680),
            (0x180E, 0x180E),
            (0x2000, 0x200B),
            (0x2028, 0x2029),
            (0x202F, 0x202F),
            (0x205F, 0x2060),
            (0x3000, 0x3000),
            (0xFEFF, 0xFEFF),
        ],
    ),
    (2, [(0x30, 0x39), (0x27, 0x27), (0x2F, 0x2F)]),
    (2, [(0xA1, 0x24F)]),
    (2, [(0x300, 0x36F), (0x1AB0, 0x1AFF), (0x20D0, 0x20FF)]),
    (2, [(0x370, 0x52F)]),
    (2, [(0x590, 0x10FF)]),
    (2, [(0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF)]),
    (1, [(0x2000, 0x2BFF)]),
    (2, [(0x1F300, 0x1FAFF), (0x1F1E6, 0x1F1FF), (0xFE0E, 0xFE0F), (0x200D, 0x200D)]),
    (1, [(0x10000, 0x10FFFF)]),
    (1, [(0x00, 0x1F), (0x7F, 0x9F)]),
    (1, [(0x0, 0xD7FF), (0xE000, 0x10FFFF)]),
]


def fuzz_string(rng: random.Random) -> str:
    weights = [w for w, _ in POOLS]
    out = []
    for _ in range(rng.randint(1, 40)):
        ranges = rng.choices(POOLS, weights)[0][1]
        first, last = rng.choice(ranges)
        cp = rng.randint(first, last)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def salad(rng: random.Random, specials: list) -> str:
    parts = []
    for _ in range(rng.randint(8, 40)):
        r = rng.random()
        if r < 0.08:
            parts.append(rng.choice(specials))
        elif r < 0.15:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        else:
            parts.append(rng.choice(WORDS))
        parts.append(rng.choice(SALAD_JOINS))
    return "".join(parts)


def corpus(harmony: dict) -> list:
    """(name, text, openai-harmony's ids or None)."""
    cases = []
    for group, texts in [
        ("prose", PROSE),
        ("code", CODE),
        ("digits", DIGITS),
        ("whitespace", WHITESPACE),
        ("accents", ACCENTS),
        ("scripts", SCRIPTS),
        ("emoji", EMOJI),
        ("special", SPECIAL_TEXTS),
    ]:
        cases += [(f"{group}_{i}", t, None) for i, t in enumerate(texts)]
    cases += [(f"special_alone_{i}", text, None) for i, text in special_tokens()]
    for kind in ("render", "parse"):
        for c in harmony[kind]:
            cases.append((f"harmony_{kind}_{c['name']}", c["text"], c["tokens"]))
    long_doc = "\n\n".join(PROSE + CODE + DIGITS + ACCENTS + SCRIPTS + EMOJI)
    cases.append(("long_document", long_doc, None))
    rng = random.Random(21)
    specials = [t for _, t in special_tokens()]
    cases += [(f"salad_{i}", salad(rng, specials), None) for i in range(40)]
    cases += [(f"fuzz_{i}", fuzz_string(rng), None) for i in range(250)]
    cases += [(f"sweep_{i}", text, None) for i, text in enumerate(sweep())]
    return cases


def sweep() -> list:
    """Code points across all of Unicode, one every 4099, each between letters, after a space,
    doubled, before a contraction and after a digit: where regex engines' Unicode tables
    (Oniguruma in transformers, fancy-regex in tiktoken and lensd) could disagree."""
    points = [cp for cp in range(0x20, 0x110000, 4099) if not 0xD800 <= cp <= 0xDFFF]
    texts = []
    for at in range(0, len(points), 24):
        chars = [chr(cp) for cp in points[at : at + 24]]
        texts.append("".join(f"a{c}b {c}{c}'s 1{c}\n" for c in chars))
    return texts


# ---------------------------------------------------------------------------------------------
# The generator.


def first_difference(a: bytes, b: bytes) -> str:
    for n, (x, y) in enumerate(zip(a.split(b"\n"), b.split(b"\n"))):
        if x != y:
            return f"line {n + 1}: {x[:120]!r} vs {y[:120]!r}"
    return f"lengths {len(a)} vs {len(b)}"


def pinned_sha256(name: str) -> str:
    m = re.search(rf'^{name}="([0-9a-f]{{64}})"', FETCH_SCRIPT.read_text(), re.M)
    if not m:
        raise SystemExit(f"{FETCH_SCRIPT} has no {name}=\"<sha256>\" line")
    return m.group(1)


def generate() -> None:
    if not VOCAB.exists():
        raise SystemExit(f"missing {VOCAB}; run scripts/fetch-gptoss-tokenizer.sh first")
    cache = BUILD / "tiktoken-cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(VOCAB, cache / hashlib.sha1(VOCAB_URL.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)

    import importlib.metadata

    import tiktoken
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = tiktoken.get_encoding("o200k_harmony")
    assert enc._pat_str == O200K_PATTERN, "tiktoken's o200k pattern differs from O200K_PATTERN"
    for i, text in special_tokens():
        assert enc.encode_single_token(text) == i, (text, i)

    # transformers' build, as its own gpt-oss conversion does it: the special tokens by id.
    hf_dir = BUILD / "transformers"
    shutil.rmtree(hf_dir, ignore_errors=True)
    converter = TikTokenConverter(
        vocab_file=str(VOCAB),
        pattern=enc._pat_str,
        extra_special_tokens=[text for _, text in special_tokens()],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(str(hf_dir))
    saved = sorted(p.name for p in hf_dir.iterdir())
    assert saved == ["tokenizer.json", "tokenizer_config.json"], saved

    plain = build(VOCAB, BUILD / "stdlib")
    for name, data in plain.items():
        hf = (hf_dir / name).read_bytes()
        if hf != data:
            where = first_difference(hf, data)
            raise SystemExit(f"the standard-library {name} differs from transformers': {where}")
    shas = {name: sha256_bytes(data) for name, data in plain.items()}
    for name, var in [
        ("tokenizer.json", "TOKENIZER_SHA256"),
        ("tokenizer_config.json", "CONFIG_SHA256"),
    ]:
        if pinned_sha256(var) != shas[name]:
            raise SystemExit(f"update {var} in {FETCH_SCRIPT} to {shas[name]}")
        fetched = MODEL_DIR / name
        if fetched.exists() and sha256_bytes(fetched.read_bytes()) != shas[name]:
            raise SystemExit(f"{fetched} differs from the build; rerun the fetch script")
    size = len(plain["tokenizer.json"])
    print(f"tokenizer.json: {size:,} bytes, sha256 {shas['tokenizer.json']}")

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert len(tok) == LAST_SPECIAL + 1, len(tok)
    assert tok.bos_token == BOS and tok.eos_token == EOS and tok.pad_token == PAD

    harmony = json.loads(HARMONY_GOLDEN.read_text(encoding="utf-8"))
    assert harmony["o200k_base_sha256"] == VOCAB_SHA256
    ours = {text for _, text in special_tokens()}
    tiktoken_only = [t for t in enc.special_tokens_set if t not in ours]

    cases, tokens, compared_tiktoken = [], 0, 0
    for name, text, harmony_ids in corpus(harmony):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.encode(text) == ids, f"{name}: transformers added a token"
        assert tok.decode(ids, skip_special_tokens=False) == text, f"{name}: decode"
        if harmony_ids is not None:
            assert ids == harmony_ids, f"{name}: transformers differs from openai-harmony"
        case = {"name": name, "text": text, "ids": ids}
        tokens += len(ids)
        # tiktoken's o200k_harmony also names <|reserved_200018|> (200018 is <|endofprompt|>)
        # and <|reserved_N|> for N up to 201087; gpt-oss's tokenizer.json has neither.
        extra = sorted(t for t in tiktoken_only if t in text)
        if extra:
            case["tiktoken"] = None
            case["tiktoken_skipped"] = (
                f"tiktoken's o200k_harmony makes {extra[0]} a special token; "
                "gpt-oss's tokenizer.json has no such token"
            )
        else:
            want = enc.encode(text, allowed_special="all")
            assert want == ids, f"{name}: tiktoken {want} vs transformers {ids}"
            case["tiktoken"] = True
            compared_tiktoken += len(ids)
        if "<|" in text:
            split = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
            assert split == enc.encode(text, disallowed_special=()), f"{name}: split specials"
            assert not set(split) & set(range(FIRST_SPECIAL, LAST_SPECIAL + 1)), name
            case["plain_ids"] = split
            tokens += len(split)
            compared_tiktoken += len(split)
        cases.append(case)

    rng = random.Random(2)
    decode_ids = [[i] for i in range(FIRST_SPECIAL, LAST_SPECIAL + 1)]
    decode_ids += [[i] for i in (0, 1, 100, 127, 128, 180, 188, 255, 256, 1000, 199997)]
    decode_ids += [sorted(rng.randrange(0, FIRST_SPECIAL) for _ in range(6)) for _ in range(20)]
    emoji = tok.encode("\U0001f980\U0001f600 \u4e16\u754c")
    decode_ids += [emoji[:1], emoji[:2], emoji[1:], [200006] + emoji[:1] + [200007]]
    decode_ids += [[LAST_SPECIAL + 1], [200500, 200006]]
    decodes = []
    for ids in decode_ids:
        text = tok.decode(ids, skip_special_tokens=False)
        assert enc.decode(ids) == text or any(i > LAST_SPECIAL for i in ids), (ids, text)
        decodes.append({"ids": ids, "text": text})

    versions = {
        p: importlib.metadata.version(p) for p in ("transformers", "tokenizers", "tiktoken")
    }
    versions["python"] = sys.version.split()[0]
    golden = {
        "reference": (
            "transformers AutoTokenizer on the tokenizer.json/tokenizer_config.json that "
            "TikTokenConverter builds from o200k_base with gpt-oss's 21 special tokens "
            "(199998..=200018): "
            "ids = tok.encode(text, add_special_tokens=False) (special tokens in the text parsed; "
            "equal to tok.encode(text), so no BOS), plain_ids = the same with "
            "split_special_tokens=True (present when the text has '<|'). tiktoken = true: "
            "tiktoken's o200k_harmony encode(text, allowed_special='all') gave the same ids (and "
            "encode(text, disallowed_special=()) gave plain_ids); null where tiktoken has a "
            "special token that the file has not. harmony_* cases also equal openai-harmony's ids in "
            "testdata/harmony/golden.json. decode: tok.decode(ids, skip_special_tokens=False)."
        ),
        "versions": versions,
        "o200k_base_sha256": VOCAB_SHA256,
        "tokenizer_json_sha256": shas["tokenizer.json"],
        "tokenizer_config_json_sha256": shas["tokenizer_config.json"],
        "vocab_size": len(tok),
        "bos": BOS,
        "eos": EOS,
        "pad": PAD,
        "special_tokens": {text: tok.convert_tokens_to_ids(text) for _, text in special_tokens()},
        "cases": cases,
        "decode": decodes,
    }
    sys.path.insert(0, str(ROOT / "tools"))
    from golden_util import write_json

    write_json(OUT, golden)
    print(
        f"{OUT.relative_to(ROOT)}: {len(cases)} cases, {tokens:,} tokens "
        f"({compared_tiktoken:,} also compared with tiktoken), {len(decodes)} decodings, "
        f"{OUT.stat().st_size:,} bytes"
    )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "build":
        files = build(Path(sys.argv[2]), Path(sys.argv[3]))
        for name, data in files.items():
            print(f"{name}: {len(data):,} bytes, sha256 {sha256_bytes(data)}")
    elif len(sys.argv) == 1:
        generate()
    else:
        raise SystemExit(f"usage: {sys.argv[0]} [build VOCAB OUT_DIR]")


if __name__ == "__main__":
    main()
