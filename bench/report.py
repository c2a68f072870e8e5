#!/usr/bin/env python3
"""Writes docs/benchmarks.md from the JSON files bench/run.sh leaves in bench/results/."""

import argparse
import json
import platform
from pathlib import Path

MIB = 1024 * 1024


def load(results, name):
    return json.loads((results / name).read_text())


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    cores = sum(1 for l in open("/proc/cpuinfo") if l.startswith("processor"))
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return f"{cpu}, {cores} cores, {mem / 1024 / 1024:.0f} GiB, Linux {platform.release()}"


def ratio(ours, theirs, higher_is_better=True):
    r = ours / theirs if higher_is_better else theirs / ours
    return f"{r:.2f}×", ("lensd ahead" if r >= 1.05 else "lensd behind" if r <= 0.95 else "even")


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# What a symbol at the top of a profile means, for the symbols these profiles show.
MEANING = {
    "vec_dot_unopt": "candle's Q4_1 dot product is its portable scalar fallback (`vec_dot_unopt`): "
                     "candle has no SIMD kernel for this block type, where llama.cpp has AVX2/AVX-512 ones",
    "lensd_kernels::avx2": "lensd's AVX2 products on quantized blocks (lensd-kernels; `one`: one "
                           "weight row against one activation row, a decoding step's products; "
                           "`group`: eight weight rows against every prompt row)",
    "lensd_kernels::bf16": "lensd's bf16 products (AVX-512 BF16) of a bf16 unembedding",
    "lensd_kernels::portable": "lensd's portable products on quantized blocks (the CPU has no AVX2)",
    "lensd_kernels::act": "quantizing activations to 8 bits for the quantized products",
    "gemm_basic": "f32 matrix-vector products (`gemm_basic`) that stream every f32 weight for each "
                  "decoded token: the f32 base is 5.5× the bytes of the Q4_1 file llama.cpp reads",
    "lensd_kernels::wide::dequantize": "widening quantized weights to f32, a strip of rows at a "
                                       "time, for an f32 base's products (lensd-kernels `wide`); "
                                       "with one row to multiply (a decoding step) it is most of "
                                       "each product, where the stored dtype multiplies the "
                                       "blocks as they are",
    "lensd_kernels::wide::tiles": "lensd's f32 products of the widened weight rows (`wide`)",
    "lensd_kernels::panel": "an analysis's f32 unembedding of a quantized head in panels of "
                            "widened rows (lensd-kernels `panel`)",
    "__memset": "zeroing fresh buffers",
    "lensd_kernels::logit_stats": "an analysis's statistics (maximum, exponential sums, "
                                  "top-k, rank) reduced from each tile of logits",
    "show_cpuinfo": "the kernel formatting /proc/cpuinfo, which a thread-count lookup reads",
    "__rust_begin_short_backtrace": "the compute threads' own loop (the pool's waiting for work "
                                    "is inlined there)",
    "row_stats": "lensd's per-cell statistics (softmax, entropy, KL, rank) over the vocabulary",
    "tcp_": "the kernel sending frames to the clients",
    "pack_operands": "packing the operands of the f32 matrix products",
    "gemm_f32::microkernel": "the same matrix products",
    "policy::pick": "the scheduler choosing the next request",
    "policy::order": "the scheduler working out every waiting request's queue position",
}


# Meanings that hold only in one profile, by (part, dtype).
MEANING_IN = {
    ("server", "load"): {
        "pack_operands": "packing matrix operands for the matrix products of the analyses that "
                         "ran (those that started before their cancel arrived)"},
}
# What a symbol whose meaning refers to an earlier row ("the same ...") means when it is the
# first matrix-product symbol of its profile.
FIRST_MENTION = {"gemm_f32::microkernel": "f32 matrix products (gemm's inner kernel)"}
MATRIX_PRODUCTS = ("gemm", "pack_operands")


# What the issue asks of each comparison, lensd ÷ peer.
AIM_STORED = 1.0
AIM_ANALYSIS = 3.0


def profile(results, part, dtype, top=4):
    """The top symbols of a profile as (percent, symbol, meaning or None)."""
    f = results / f"profile-{part}-{dtype}.txt"
    if not f.exists():
        return None
    meanings = {**MEANING, **MEANING_IN.get((part, dtype), {})}
    rows, products_seen = [], False
    for line in f.read_text().splitlines()[:top]:
        pct, _, rest = line.strip().partition("%")
        kernel = "[k]" in rest
        sym = rest.replace("[.]", "").replace("[k]", "").strip().split("  ")[0].strip()
        sym = sym.replace("candle_core::quantized::k_quants::", "")
        key = next((k for k in meanings if k in sym), None)
        meaning = meanings.get(key)
        if key in FIRST_MENTION and not products_seen:
            meaning = FIRST_MENTION[key]
        products_seen = products_seen or any(m in sym for m in MATRIX_PRODUCTS)
        rows.append((pct.strip(), ("kernel: " if kernel else "") + sym, meaning))
    return rows


# The models whose forward passes and lens analyses bench/run.sh measures: the title of their
# section, the intro's first words, the stored dtype's label and what its blocks are.
DEMO = {"title": "Forward passes and lens analyses", "lead": "Same GGUF file",
        "stored": "Q4_1", "blocks": "Q4_1/Q8_0 blocks"}
GEMMA3 = {"title": "Gemma-3-270M: forward passes and lens analyses",
          "lead": "The same measurements on Gemma-3-270M (`models/gemma-3-270m-q4_k_m.gguf`, "
                  "18 layers, d=640, vocabulary 262,144, tied embeddings, fetched by "
                  "`scripts/fetch-gemma3.sh`) with its own tuned lens fitted by `lensd fit-lens` "
                  "on the demo corpus. Same GGUF file",
          "stored": "Q4_K_M", "blocks": "Q4_K, Q5_0, Q6_K and Q8_0 blocks"}


def peak_lines(lensd, by, lenses, lenses_bf16):
    """How close lensd comes to the machine's measured f32 (and bf16) multiply-add rates."""
    peak = lensd.get("fma_peak_macs_per_s")
    if not peak:
        return []
    bf16_peak = lensd.get("bf16_peak_macs_per_s")

    def frac(macs, seconds, of=peak):
        return f"{macs / seconds / 1e9:.1f} GMAC/s, {100 * macs / seconds / of:.0f} %"

    parts = [f"prefill f32 {frac(lensd['prefill_macs'], by['f32']['prefill']['median_seconds'])}",
             f"prefill stored {frac(lensd['prefill_macs'], by['stored']['prefill']['median_seconds'])}"]
    for name in ("logit", "tuned"):
        if name in lenses:
            parts.append(f"{name}-lens analysis {frac(lensd['analysis_macs'], lenses[name]['median_seconds'])}")
    out = [f"Against the physical limit: {lensd['threads']} threads complete {peak / 1e9:.1f} G f32 "
           "multiply-adds a second when they do nothing else (a micro-benchmark of independent "
           "fused multiply-adds, in this run: the best of three before the timed work and three after). Multiply-adds counted from the model's shapes "
           "(matrices, attention, unembedding) per second, and their share of that rate: "
           + "; ".join(parts) + ". (The stored dtype's products are 8-bit integer ones, whose "
           "own peak is higher; the tuned lens's translators are not counted.)", ""]
    if bf16_peak and lenses_bf16:
        bparts = [f"{name}-lens analysis {frac(lensd['analysis_macs'], lenses_bf16[name]['median_seconds'], bf16_peak)}"
                  for name in ("logit", "tuned") if name in lenses_bf16]
        out += [f"With the unembedding in bf16 the same threads' limit is {bf16_peak / 1e9:.1f} G "
                "bf16 multiply-adds a second (`VDPBF16PS`, measured the same way); the analyses' "
                "multiply-adds per second and their share of it (the forward pass in them is "
                "still f32): " + "; ".join(bparts) + ".", ""]
    return out


def forward_section(res, lensd, llama, tl, model=DEMO):
    by = {r["dtype"]: r for r in lensd["results"]}
    lenses = {l["lens"]: l for l in lensd["analysis"]["lenses"]}
    lenses_bf16 = {l["lens"]: l for l in (lensd.get("analysis_bf16") or {}).get("lenses", [])}
    peer = {l["lens"]: l for l in tl["lenses"]}
    rows, behind = [], []
    stored = f"stored ({model['stored']})"

    def row(measure, dtype, ours, theirs, peer_name, part=None, aim=None):
        r, where = ratio(ours, theirs)
        rows.append([measure, dtype, f"{ours:.1f}", f"{theirs:.1f}", peer_name, r, where])
        short = aim is not None and theirs > 0 and ours / theirs < aim
        if part and (where == "lensd behind" or short):
            behind.append((measure, dtype, part, aim if short else None))

    ll = llama["engine"]
    row("prefill, tokens/s", "f32", by["f32"]["prefill_tokens_per_s"], llama["prefill_tokens_per_s"], ll, ("prefill", "f32"))
    row("prefill, tokens/s", stored, by["stored"]["prefill_tokens_per_s"], llama["prefill_tokens_per_s"], ll, ("prefill", "stored"), AIM_STORED)
    row("decode, tokens/s", stored, by["stored"]["decode_tokens_per_s"], llama["decode_tokens_per_s"], ll, ("decode", "stored"), AIM_STORED)
    row("decode, tokens/s", "f32", by["f32"]["decode_tokens_per_s"], llama["decode_tokens_per_s"], ll, ("decode", "f32"))
    for name in ("logit", "tuned"):
        if name in lenses and name in peer:
            row(f"full {name}-lens analysis, tokens/s", "f32", lenses[name]["tokens_per_s"],
                peer[name]["tokens_per_s"], tl["engine"], ("analysis", "f32"), AIM_ANALYSIS)
    for name in ("logit", "tuned"):
        if name in lenses_bf16 and name in peer:
            row(f"full {name}-lens analysis, tokens/s", "f32, bf16 unembedding",
                lenses_bf16[name]["tokens_per_s"], peer[name]["tokens_per_s"], tl["engine"])
    a = lensd["analysis"]
    out = [
        f"## {model['title']}",
        "",
        f"{model['lead']}, same {lensd['prompt_tokens']}-token prompt ids, {lensd['threads']} threads everywhere. "
        "Higher is better in every row; the ratio is lensd ÷ peer.",
        "",
        "- **prefill**: one forward pass over the prompt from an empty cache;",
        f"- **decode**: {lensd['decode_tokens']} greedy tokens one at a time after the prompt;",
        f"- **full analysis**: a {a['tokens']}-token text read at all {len(a['layers'])} layers "
        f"({len(a['layers']) * a['tokens']:,} cells), each cell reduced to top-{a['top_k']}, entropy, "
        "KL to the final output, rank of the final top-1 and next-token cross-entropy, forward pass "
        "included. The peer is the tuned-lens package (`LogitLens`, `TunedLens`) on transformers, "
        "with the GGUF dequantized to f32 and saved as safetensors, and lensd's tuned lens saved "
        "as the package's `params.pt`.",
        "",
        f"`stored` keeps the file's {model['blocks']}; `f32` keeps them too and widens them to f32 as it multiplies. "
        "lensd analyses in f32 and generates in the stored dtype by default. "
        + ("`f32, bf16 unembedding` is the f32 analysis with its unembedding (every layer × "
           "position against the vocabulary) multiplied in bf16 with f32 accumulation "
           "(`\"unembed\": \"bf16\"`, AVX-512 BF16); the peer stays f32."
           if lenses_bf16 else "This CPU lacks AVX-512 BF16, so no bf16 unembedding is timed."),
        "",
        table(["measure", "lensd dtype", "lensd", "peer", "peer", "ratio", "where lensd stands"], rows),
        "",
        f"Load: lensd stored {by['stored']['load_seconds']:.3f} s, f32 {by['f32']['load_seconds']:.3f} s; "
        f"llama.cpp {llama['load_seconds']:.3f} s; transformers (safetensors, f32) "
        f"{tl['model_load_seconds']:.3f} s plus {tl['lens_load_seconds']:.3f} s for the tuned lens.",
        "",
    ] + peak_lines(lensd, by, lenses, lenses_bf16) + [
        "Equal work, checked before timing:",
        "",
    ]
    if model is not DEMO:
        out.append(f"- every engine reads lensd's ids, which start with the model's BOS token "
                   f"(id {lensd['ids'][0]}) as Gemma needs; llama.cpp checks that its GGUF asks "
                   "for that BOS.")
    ag = llama["agreement"]
    tol = ag.get("tolerance", {})
    if tol.get("near_tie_logits") is None:
        ties = (f"({ag['top1_differ_near_ties']} differ, all near ties: llama.cpp quantizes activations "
                "for its quantized products, lensd's analysis is f32).")
    else:
        ties = (f"(the {ag['top1_differ']} that differ are {ag['top1_differ_max_logit_gap']:.2f} "
                "logits or less below llama.cpp's own top-1, where the check allows "
                f"{tol['near_tie_logits']:g}: llama.cpp quantizes activations for its quantized "
                "products and evaluates GELU from a float16 table, which moves this model's logits "
                "by up to about 3 from an f32 forward such as lensd's); at every position llama.cpp's "
                f"probability of lensd's top-1 is within {ag['top1_prob_max_diff']:.3f} of lensd's "
                f"(the check allows {tol['max_top1_prob_diff']:g}).")
    out.append(f"- llama.cpp's greedy continuation equals lensd's (stored dtype) for "
               f"{ag['decode_same_prefix']} of {ag['decode_tokens']} tokens; its top-1 equals lensd's "
               f"final layer at {ag['positions'] - ag['top1_differ']} of {ag['positions']} positions "
               + ties)
    for l in tl["lenses"]:
        g = l["agreement"]
        out.append(f"- tuned-lens `{l['lens']}`: top-1 equal in {g['same_top1']} of {g['cells']} cells "
                   f"({g['near_tie_mismatches']} near ties), top-1 probability within "
                   f"{g['max_top1_prob_diff']:.1e}, entropy within {g['max_entropy_diff']:.1e} nats.")
        g = l.get("agreement_bf16")
        if g:
            out.append(f"- tuned-lens `{l['lens']}` against lensd's bf16 unembedding: top-1 equal in "
                       f"{g['same_top1']} of {g['cells']} cells ({g['near_tie_mismatches']} near "
                       f"ties), top-1 probability within {g['max_top1_prob_diff']:.1e} (the check "
                       f"allows {g['tolerance']:g}), entropy within {g['max_entropy_diff']:.1e} nats "
                       f"(allows {g['entropy_tolerance']:g}; bounds from "
                       "`crates/engine/tests/bf16_unembed.rs`).")
    if tl.get("final_norm", "package") != "package":
        cap = tl.get("final_logit_softcapping")
        out.append("- the tuned-lens package does not know this model's final norm (its "
                   "`get_final_norm` raises NotImplementedError): `bench/tunedlens.py` hands it "
                   "the model's own `norm` and changes nothing else; "
                   + (f"the model's final logit soft-cap ({cap:g}), which the package never "
                      "applies, is applied to its lens logits as lensd does." if cap else
                      "the model has no final logit soft-cap, so none is applied."))
    return out, behind


# The original site's documented switch times, in milliseconds (lower bounds of the ranges).
ORIGINAL_MS = {"about 10 s": 10_000, "1-2 min": 60_000}


def switch_section(sw):
    rows = []
    for r in sw:
        raw = r["raw_read_ms"]
        orig = ORIGINAL_MS.get(r["original"])
        rows.append([r["switch"], f"{r['bytes'] / MIB:.1f} MiB", f"{r['lensd_ms']:.2f} ms",
                     f"{raw:.1f} ms ({r['lensd_ms'] / raw:.1f}×)" if raw is not None else "–",
                     r["original"] + (f" ({orig / r['lensd_ms']:,.0f}× lensd)" if orig else "")])
    return ["## Switching", "",
            "`lensd bench-switch`: moving between models through the residency manager on the demo "
            "model. The same GGUF in two compute dtypes acts as two bases (each freed before the "
            "other is read from disk, and the f32 one moved to the host before coming back from "
            "there); a fitted tuned lens written twice acts as two lenses of a group. Lower is "
            "better. "
            "Beside each switch that reads a disk: the time to merely read the same files with a "
            "cold page cache, the physical limit (in brackets, how many times that lensd takes); "
            "and the original site's documented time for the same kind of switch (for 9–27B bases "
            "on GPUs, so given for scale only; in brackets, its lower bound ÷ lensd's time).", "",
            table(["switch", "bytes", "lensd (median)", "raw read, cold cache (lensd ÷ raw)",
                   "original, documented"], rows)]


def memory_section(mem):
    rows = []
    for r in mem:
        lay = r["layout"]
        ours = r["rss_delta"]
        rows.append([lay["groups"], lay["lenses"], f"{ours / MIB:.0f} MiB",
                     f"{r['accounted_bytes'] / MIB:.0f} MiB",
                     f"{r['separate_copies'] / MIB:.0f} MiB ({r['separate_copies'] / ours:.1f}×)",
                     f"{r['original_design'] / MIB:.0f} MiB ({r['original_design'] / ours:.1f}×)"])
    return ["## Memory", "",
            "`lensd bench-memory`: the process's resident memory (RSS) with every model of the "
            "layout loaded and leased, each layout in a fresh process, the demo base in f32 and "
            "copies of the demo tuned lens (38 MiB each). Lower is better. *Accounted* is what "
            "lensd's residency manager counts; the rest of the resident memory is the runtime, "
            "tokenizer and allocator. The comparisons are computed from the measured base-alone "
            "row and the lens size: *separate copies* is a base and a lens per model (a process "
            "per model); *original design* is a base per group, as the original site loads one "
            "even when groups name the same base, plus each lens.", "",
            table(["groups", "tuned lenses", "lensd resident", "lensd accounted",
                   "separate copies (÷ lensd)", "original design (÷ lensd)"], rows)]


def sched_section(sched):
    rows = [[r["workload"], r["policy"], r["requests"], f"{r['seconds']:.1f}", f"{r['requests_per_s']:.2f}",
             f"{r['wait_p50_ms']:.0f} ms", f"{r['wait_p95_ms']:.0f} ms", r["base_swaps"], r["runs"]]
            for r in sched["rows"]]
    return ["## Scheduling", "",
            "`lensd bench-sched`: one workload under both policies. Simulated: 8 clients × 12 "
            "analyses, each client mostly on one group and now and then on another, three groups on "
            "three bases, the device holding one, with the fake engine and the demo model's measured "
            "costs in virtual time (deterministic, one run). Demo model: 4 clients × 4 analyses, the "
            "same GGUF as an f32 and a stored base with a budget that holds one; the median of "
            "several runs per column. Higher requests/s, lower waits and fewer swaps are better.", "",
            table(["workload", "policy", "requests", "seconds", "requests/s", "wait p50", "wait p95",
                   "base swaps", "runs"], rows), "",
            *policy_ratios(sched["rows"]), "",
            f"Cancelling a running analysis took {sched['cancel_ms']:.0f} ms (median) from the cancel "
            "to its `cancelled` event."]


def policy_ratios(rows):
    """One line per workload: lensd's policy against FIFO."""
    out = []
    for w in dict.fromkeys(r["workload"] for r in rows):
        fifo = next(r for r in rows if r["workload"] == w and r["policy"].startswith("FIFO"))
        ours = next(r for r in rows if r["workload"] == w and not r["policy"].startswith("FIFO"))
        out.append(f"- {w}: lensd's policy serves {ours['requests_per_s'] / fifo['requests_per_s']:.2f}× "
                   f"FIFO's requests per second, with {fifo['wait_p50_ms'] / ours['wait_p50_ms']:.2f}× "
                   f"shorter median and {fifo['wait_p95_ms'] / ours['wait_p95_ms']:.2f}× shorter p95 "
                   f"waits and {ours['base_swaps']} base swaps against {fifo['base_swaps']}.")
    return out


def ws_section(ws):
    b, c, a = ws["server_before"], ws["server_connected"], ws["server_after_close"]
    q, m = ws["submit_to_queued"], ws["message_latency"]
    refused = ", ".join(f"{n} `{k}`" for k, n in ws["refused"].items()) or "none"
    ended = ws["cancelled"] + ws["completed"] + ws["failed"] + sum(ws["refused"].values())
    kept = (a["rss_bytes"] - c["rss_bytes"]) / MIB
    rows = [
        ["WebSocket connections held at once", ws["clients"], "more", "all held"],
        ["time to open them (64 at a time)", f"{ws['connect_seconds']:.2f} s", "less", ""],
        ["server memory per connection", f"{ws['bytes_per_connection'] / 1024:.0f} KiB", "less", ""],
        ["server resident: before → connected → after close",
         f"{b['rss_bytes'] / MIB:.0f} → {c['rss_bytes'] / MIB:.0f} → {a['rss_bytes'] / MIB:.0f} MiB",
         "back down", "back down" if kept <= 0 else f"{kept:.0f} MiB more after close than connected"],
        ["server descriptors: before → connected → after close",
         f"{b['open_fds']} → {c['open_fds']} → {a['open_fds']}", "back to the start",
         "released" if a["open_fds"] <= b["open_fds"] else "not all released"],
        ["server threads: before → connected", f"{b['threads']} → {c['threads']}", "constant",
         "constant" if b["threads"] == c["threads"] else "grew"],
        ["`status` round trips per second (all clients at once)", f"{ws['messages_per_s']:.0f}", "more", ""],
        ["`status` round trip p50 / p99", f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} ms", "less", ""],
        ["analyses submitted (every client at once)", ws["submitted"], "", ""],
        ["submit → `queued` p50 / p95 / p99", f"{q['p50_ms']:.0f} / {q['p95_ms']:.0f} / {q['p99_ms']:.0f} ms", "less", ""],
        ["refused at the door (the queue holds 256)", refused, "a clear error", ""],
        ["ended cancelled / completed / failed",
         f"{ws['cancelled']} / {ws['completed']} / {ws['failed']}", "",
         f"{ended} of {ws['submitted']} submissions accounted for"],
        ["requests without exactly one terminal event", ws["without_one_terminal"], "0",
         "none" if ws["without_one_terminal"] == 0 else "LOST EVENTS"],
    ]
    out = ["## Server under load", "",
           f"`lensd bench-ws` against `lensd serve` on loopback (the default config, the demo "
           f"model, warmed up by one analysis). {ws['clients']} clients connect and stay connected; "
           f"each makes {ws['messages'] // max(ws['clients'], 1)} `status` round trips, then every "
           "client submits its analyses at once, waits for `queued`, cancels and waits for the "
           "request's end. There is no peer: the original site's server had no admission control "
           "or queue bound to compare with.",
           "", table(["measure", "lensd", "better", "where lensd stands"], rows), ""]
    prof = profile(Path(ws["_results"]), "server", "load", top=6)
    if prof:
        out += ["Where the server's time went during the load (`perf record` of the server, share "
                "of samples by symbol):", ""]
        out += [f"- {pct} % `{sym[:120]}`" + (f": {meaning}." if meaning else "") for pct, sym, meaning in prof]
        out.append("")
    if kept > 0:
        out.append(f"The server's resident memory after the clients closed stayed {kept:.0f} MiB "
                   "above the connected figure. This run does not tell whether that grows without "
                   "bound; a long soak run is the check for that.")
    return out


def behind_section(results, behind):
    out = ["## Where lensd is behind or short of its aim, and why", "",
           f"The aims: at least {AIM_STORED:g}× llama.cpp for prefill and decode on the stored "
           f"weights, at least {AIM_ANALYSIS:g}× the tuned-lens package for full analyses. "
           "Profiles from `perf record` of `lensd bench --only PART --dtype DTYPE` in the same run "
           "(an analysis's profile is the logit lens's): the symbols with the largest share of "
           "samples.", ""]
    seen = set()
    for measure, dtype, (part, dt), aim in behind:
        if (part, dt) in seen:
            continue
        seen.add((part, dt))
        prof = profile(results, part, dt)
        label = f"{measure}, {dtype}" + (f" (short of {aim:g}×)" if aim else "")
        if not prof:
            out.append(f"- **{label}**: no profile (perf is missing).")
            continue
        out.append(f"- **{label}**:")
        for pct, sym, meaning in prof:
            out.append(f"  - {pct} % `{sym[:120]}`" + (f": {meaning}." if meaning else ""))
    if not behind:
        out.append("- nowhere in this run.")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=Path("bench/results"))
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    r = a.results
    lensd, llama, tl = load(r, "lensd.json"), load(r, "llamacpp.json"), load(r, "tunedlens.json")
    stages = [l.split("\t") for l in (r / "stages.tsv").read_text().splitlines()]
    forward, behind = forward_section(r, lensd, llama, tl)
    gemma = []
    if (r / "gemma3-lensd.json").exists():
        gemma, _ = forward_section(r, load(r, "gemma3-lensd.json"), load(r, "gemma3-llamacpp.json"),
                                   load(r, "gemma3-tunedlens.json"), GEMMA3)
        gemma.append("")
    doc = [
        "# Benchmarks", "",
        "Written by `bench/run.sh`, which sets up the peers from the package registries, runs every "
        "measurement below in one go and regenerates this file. Every figure is the median of "
        f"{a.reps} runs unless a table says otherwise; compare the ratios, not the absolute times, "
        "between machines. Benchmarks are not tests.", "",
        f"- machine: {machine()}",
        f"- lensd `{(r / 'commit.txt').read_text().strip()}`, {lensd['threads']} compute threads, "
        f"quantized-block kernels: {lensd.get('cpu_kernels', 'candle')}",
        f"- peers: {llama['engine']}; {tl['engine']}",
        "- time of the run: " + ", ".join(f"{name} {int(s) // 60} min {int(s) % 60} s" for name, s in stages),
        "",
    ]
    doc += forward + [""] + behind_section(r, behind) + [""] + gemma
    doc += switch_section(load(r, "switch.json")) + [""]
    doc += memory_section(load(r, "memory.json")) + [""]
    doc += sched_section(load(r, "sched.json")) + [""]
    doc += ws_section({**load(r, "ws.json"), "_results": str(r)})
    print("\n".join(doc))


if __name__ == "__main__":
    main()
