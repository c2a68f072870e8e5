#!/usr/bin/env bash
# Assembles the text the demo tuned lenses are fitted on, from material every fresh Debian
# machine with Python already has, so nothing is downloaded:
#   - the topic texts of Python's reference documentation (module pydoc_data.topics of the
#     Python interpreter; Python Software Foundation License 2.0), and
#   - the licence texts in /usr/share/common-licenses (Debian's base-files; each licence
#     permits verbatim copying of its own text).
# Writes data/demo-corpus.txt (git-ignored). Safe to run again.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/data/demo-corpus.txt}"
mkdir -p "$(dirname "$out")"

python3 - "$out" <<'PY'
import os, sys

out = sys.argv[1]
parts = []
try:
    import pydoc_data.topics as topics
except ImportError:
    sys.exit("prepare-demo-corpus: this Python lacks pydoc_data (its documentation topics)")
for name in sorted(topics.topics):
    parts.append(topics.topics[name].strip())
licenses = "/usr/share/common-licenses"
if os.path.isdir(licenses):
    for name in sorted(os.listdir(licenses)):
        path = os.path.join(licenses, name)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read().strip())
text = "\n\n".join(p for p in parts if p)
if len(text) < 200_000:
    sys.exit(f"prepare-demo-corpus: only {len(text)} characters found; expected Python's topics and Debian's licences")
with open(out + ".tmp", "w", encoding="utf-8") as f:
    f.write(text + "\n")
os.replace(out + ".tmp", out)
print(f"prepare-demo-corpus: wrote {out} ({len(text)} characters from {len(parts)} texts)")
PY
