//! The `lensd` command line: inspect weights, tokenize, generate, analyze text with lenses, fit
//! tuned lenses and check a model-groups file, on the demo model by default.

mod bench;
mod bench_memory;
mod bench_sched;
mod bench_switch;
mod bench_ws;
mod commands;
mod pull;
mod render;
mod serve;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lensd_engine::ComputeDtype;

/// The demo base that `scripts/fetch-demo-model.sh` leaves in `models/`.
const DEMO_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "lensd",
    version,
    about = "Serve and run interpretability lenses over transformer language models"
)]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

/// The commands, and `pull`, the one that downloads (kept out of `Command`, which
/// `commands::run` matches whole). Parsed once at start, so the variants' sizes do not matter.
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum TopCommand {
    #[command(flatten)]
    Local(Command),
    /// Download a model repository from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN) into the
    /// local hub cache (HF_HUB_CACHE, else HF_HOME/hub), where configs and --model name it by
    /// id (owner/name). Resumes a cut transfer; the server itself never downloads.
    Pull(pull::PullArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    /// Human-readable text.
    Table,
    /// One JSON document on standard output.
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Dtype {
    /// Keep the file's quantization (smallest; best for generation).
    Stored,
    /// Multiply in f32 (the accuracy analyses want; on the CPU the file's blocks are kept and
    /// widened as they are multiplied, on a GPU every matrix is widened at load).
    F32,
    /// Every matrix in bf16, the residual stream and statistics in f32 (GPUs).
    Bf16,
}

impl From<Dtype> for ComputeDtype {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::Stored => ComputeDtype::Stored,
            Dtype::F32 => ComputeDtype::F32,
            Dtype::Bf16 => ComputeDtype::Bf16,
        }
    }
}

/// A comma-separated list of devices: `cpu`, or `cuda:0,cuda:1`.
#[derive(Clone, Debug)]
struct Devices(Vec<lensd_engine::DeviceSpec>);

impl std::str::FromStr for Devices {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        lensd_engine::device::parse_list(s).map(Devices)
    }
}

#[derive(Args)]
struct ModelArgs {
    /// Base model: a GGUF file, or a folder with config.json, *.safetensors and tokenizer.json.
    #[arg(long, env = "LENSD_MODEL", default_value = DEMO_MODEL)]
    model: PathBuf,
    /// Where analyze, generate and explain compute: `cpu`, or `cuda:N` in a build with CUDA
    /// (docs/gpu.md); other commands compute on the CPU.
    #[arg(long, env = "LENSD_DEVICE", default_value = "cpu")]
    device: lensd_engine::DeviceSpec,
}

#[derive(Subcommand)]
enum Command {
    /// Show a weights file's architecture, layers and bytes per tensor kind, from the header only.
    Inspect {
        /// A GGUF file or a Hugging Face checkpoint folder.
        path: PathBuf,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Split text into the model's tokens.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to tokenize.
        #[arg(long)]
        text: String,
        /// Recognise special tokens such as <|im_start|> written in the text.
        #[arg(long)]
        special: bool,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Continue a prompt, streaming tokens as they are produced.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt (one user message with --chat).
        #[arg(long)]
        prompt: String,
        /// Render the prompt as one user message with the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Sampling temperature; 0 picks the most likely token every step.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Sample only among the K most likely tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// Sample only among the most likely tokens whose probabilities sum to P.
        #[arg(long)]
        top_p: Option<f32>,
        /// Random seed; the same seed gives the same output.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Compute dtype of the base.
        #[arg(long, value_enum, default_value_t = Dtype::Stored)]
        dtype: Dtype,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Read a text through lenses: what each layer predicts at each position.
    Analyze {
        #[command(flatten)]
        model: ModelArgs,
        /// `logit`, or a tuned-lens folder (config.json + params.pt or params.safetensors).
        /// Repeat to compare several lenses over one forward pass.
        #[arg(long, default_value = "logit")]
        lens: Vec<String>,
        /// Text to analyze.
        #[arg(long, conflicts_with = "text_file")]
        text: Option<String>,
        /// Read the text to analyze from a file.
        #[arg(long)]
        text_file: Option<PathBuf>,
        /// Render the text as one user message with the model's chat template first.
        #[arg(long)]
        chat: bool,
        /// Recognise special tokens written in the text.
        #[arg(long)]
        special: bool,
        /// Tokens kept per cell.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Layers to read: all, 5, 0,10,20, 20-30 or 0-30:5. Layer i is the stream entering
        /// block i (0 = embeddings); the last layer is the model's output.
        #[arg(long, default_value = "all")]
        layers: String,
        /// Compute dtype of the base.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// The unembedding of an f32 base on a CPU: `f32`, or `bf16` (f32 accumulation; f32
        /// where the CPU lacks AVX-512 BF16).
        #[arg(long, env = "LENSD_UNEMBED", default_value = "f32")]
        unembed: lensd_engine::lens::analyze::Unembed,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Explain every position of a text with a talkative lens (docs/talkative.md): the
    /// explanation in words, its reconstruction error, salience and KL.
    Explain {
        #[command(flatten)]
        model: ModelArgs,
        /// The talkative lens folder (talkative.json + lens.safetensors).
        #[arg(long)]
        lens: PathBuf,
        /// The donor for the activations and KL: a LoRA adapter folder (PEFT) applied to the
        /// base, or a full model of the base's shapes (folder, GGUF file or hub id).
        #[arg(long)]
        donor: Option<PathBuf>,
        /// Text to explain.
        #[arg(long, conflicts_with = "text_file")]
        text: Option<String>,
        /// Read the text from a file.
        #[arg(long)]
        text_file: Option<PathBuf>,
        /// Render the text as one user message with the model's chat template first.
        #[arg(long)]
        chat: bool,
        /// Candidate explanations per position; the best reconstruction is kept (1–64).
        #[arg(long, default_value_t = 8)]
        best_of_k: usize,
        /// Sampling temperature of the explanations; 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Skip the per-token salience.
        #[arg(long)]
        no_salience: bool,
        /// Skip the KL of the patched-back reconstruction.
        #[arg(long)]
        no_kl: bool,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Fit a tuned lens in closed form on a text corpus and compare it with the logit lens.
    FitLens {
        #[command(flatten)]
        model: ModelArgs,
        /// UTF-8 text file to fit on.
        #[arg(long)]
        corpus: PathBuf,
        /// Folder to write (config.json, params.safetensors, fit_report.json).
        #[arg(long)]
        out: PathBuf,
        /// Tokens per training sequence.
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// Most training tokens to use.
        #[arg(long, default_value_t = 32_768)]
        max_tokens: usize,
        /// Tokens held out to compare the lenses.
        #[arg(long, default_value_t = 2_048)]
        holdout_tokens: usize,
        /// Ridge strength toward the identity, relative to the mean Gram diagonal.
        #[arg(long, default_value_t = 1e-3)]
        ridge: f64,
        /// Compute dtype of the base.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Write a talkative lens that was never trained (identity projections, soft prompts from
    /// the prompts' token embeddings) for a base, to exercise the talkative path where no
    /// trained lens exists (docs/talkative.md).
    InitTalkative {
        #[command(flatten)]
        model: ModelArgs,
        /// Folder to write (talkative.json, lens.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// The block whose output the lens reads.
        #[arg(long)]
        layer: usize,
        /// Tokens per explanation.
        #[arg(long, default_value_t = 8)]
        t_text: usize,
        /// Blocks whose placeholder input the decoder overwrites.
        #[arg(long, default_value_t = 2)]
        patched_layers: usize,
        /// The encoder's last block (default: `layer`).
        #[arg(long)]
        output_layer: Option<usize>,
    },
    /// Check a model_groups.json file (the original site's format plus lensd's additions):
    /// every key, then every base and lens file it names, against each other and against the
    /// memory budgets. Lists every problem with its JSON path; exits non-zero on errors.
    CheckConfig {
        /// The configuration file. Relative paths inside it are read from the file's own
        /// folder, wherever lensd is started. Budgets left unset default to half (device) and
        /// a quarter (host) of this machine's memory.
        file: PathBuf,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The devices `serve` will compute on, for the groups' `devices` and the default
        /// device budgets (see `serve --device`).
        #[arg(long, env = "LENSD_DEVICE", default_value = "cpu")]
        device: Devices,
    },
    /// Serve the HTTP API, the WebSocket protocol and share pages. Without --config, the demo
    /// model with the logit lens and the fitted demo tuned lens, in two groups sharing its base.
    Serve {
        /// Model groups (the original's model_groups.json with lensd's additions); relative paths
        /// in it are read from its folder.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Devices to compute on: `cpu`, or GPUs as `cuda:0,cuda:1` (a build with CUDA,
        /// docs/gpu.md); each gets its own compute worker and memory budget, numbered in this
        /// order for the groups' `devices`.
        #[arg(long, env = "LENSD_DEVICE", default_value = "cpu")]
        device: Devices,
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        /// Folder for the results database, the request log and the generated default config.
        #[arg(long, default_value = "data/server")]
        data: PathBuf,
        /// API keys: {"keys": [{"key": "...", "role": "user"|"admin", "name": "..."}]}.
        #[arg(long, env = "LENSD_KEYS_FILE")]
        keys: Option<PathBuf>,
        /// Origins allowed to call the API from a browser (repeat; `*` for any).
        #[arg(long = "allow-origin")]
        allow_origins: Vec<String>,
        /// Most characters of text in one request.
        #[arg(long, default_value_t = 20_000)]
        max_text_chars: usize,
        /// Most tokens of an analysed text or a prompt.
        #[arg(long, default_value_t = 4096)]
        max_tokens: usize,
        /// How analyses on a CPU multiply the rows by a base's f32 unembedding: `f32`, or
        /// `bf16` (rounded to bf16, accumulated in f32; about twice as fast where the CPU has
        /// AVX-512 BF16, f32 elsewhere). docs/engine.md says what bf16 does to the statistics.
        #[arg(long, env = "LENSD_UNEMBED", default_value = "f32")]
        unembed: lensd_engine::lens::analyze::Unembed,
        /// Most tokens one generation may ask for (the original's page offered up to 1,000).
        #[arg(long, default_value_t = 1000)]
        max_new_tokens: u32,
        /// Submissions per client per minute.
        #[arg(long, default_value_t = 120)]
        rate_per_minute: u32,
        /// WebSocket connections open at once.
        #[arg(long, default_value_t = 512)]
        max_connections: usize,
        /// Days results are kept.
        #[arg(long, default_value_t = 30)]
        retention_days: u64,
        /// Let any client preload a group when switching models (else only admins).
        #[arg(long)]
        users_may_preload: bool,
        /// Seconds running work may finish after a shutdown begins.
        #[arg(long, default_value_t = 20)]
        shutdown_grace: u64,
        /// Serve the web page from this folder instead of the copy built into the binary
        /// (for working on the page without rebuilding).
        #[arg(long)]
        web_dir: Option<PathBuf>,
        /// Limits on HTTP connections, on failed authentication and on each role's work.
        #[command(flatten)]
        http: serve::HttpArgs,
    },
    /// Compare the group-aware scheduling policy with first-in-first-out on the same workload,
    /// simulated with the demo model's costs and on the demo model itself.
    BenchSched {
        #[command(flatten)]
        model: ModelArgs,
        /// Simulated clients (the real run uses at most 4).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Requests per client (the real run sends at most 4 each).
        #[arg(long, default_value_t = 12)]
        requests: usize,
        /// Repetitions of the demo-model runs; each column's median is reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Measure model switches on the demo model (a lens or a base, from the host tier or from
    /// disk with a cold page cache) beside the time to read the same bytes.
    BenchSwitch {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to fit the benchmark's lens on.
        #[arg(long, default_value = "data/demo-corpus.txt")]
        corpus: PathBuf,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Measure resident memory with one base and 1, 2, 4 and 8 lenses, and with several groups
    /// naming the same base, each in a fresh process, beside separate copies per model and the
    /// original site's one base per group.
    BenchMemory {
        #[command(flatten)]
        model: ModelArgs,
        /// A tuned lens to copy as the layouts' lenses.
        #[arg(long, default_value = "models/lenses/smollm2-135m-tuned")]
        lens: PathBuf,
        /// Measure one layout, GROUPS,LENSES, in this process (what each child runs).
        #[arg(long, hide = true)]
        one: Option<String>,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Put a bounded WebSocket load on a running `lensd serve`: many clients connected at once,
    /// `status` round trips, then analyses submitted and cancelled. Reports the message rate,
    /// the submit-to-queued latency, the server's memory per connection, and whether every
    /// request ended with exactly one terminal event.
    BenchWs {
        /// The server's WebSocket address.
        #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
        url: String,
        /// The server's process id, to sample its memory, descriptors and threads.
        #[arg(long)]
        pid: Option<u32>,
        /// Clients connected at once (the server's --max-connections must allow them).
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// `status` round trips per client.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Analyses each client submits and cancels (at most the server's rate-limit burst).
        #[arg(long, default_value_t = 2)]
        submits: usize,
        /// The model the analyses name.
        #[arg(long, default_value = "smollm2-logit")]
        model_id: String,
        /// Seconds after which the run fails.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run many clients against a running `lensd serve` for a long, bounded time (analyses,
    /// generations, cancels, dropped connections, status, and with an admin key preloads,
    /// unloads and reloads), sampling the server's memory, descriptors, threads and leases;
    /// with --hostile, hostile clients among them. Fails if any grows without bound, any
    /// request lacks its one terminal event, or a hostile client is answered otherwise than
    /// expected.
    Soak {
        /// The server's WebSocket address.
        #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
        url: String,
        /// The server's process id, to sample its memory, descriptors and threads.
        #[arg(long)]
        pid: u32,
        /// Minutes of load, after the warm-up.
        #[arg(long, default_value_t = 20.0)]
        minutes: f64,
        /// Virtual users, each with its own connection.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds between samples of the server.
        #[arg(long, default_value_t = 10.0)]
        sample_seconds: f64,
        /// Seed of the users' random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A model the analyses name (repeat); default: every logit and tuned model listed.
        #[arg(long = "model-id")]
        model_ids: Vec<String>,
        /// An admin key, for preloads, unloads, reloads and the status of dropped requests.
        #[arg(long, env = "LENSD_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        /// Seconds without the awaited answer after which a request counts as stalled.
        #[arg(long, default_value_t = 300)]
        stall_seconds: u64,
        /// The longest wait, in seconds, for the server to become idle after warm-up and load.
        #[arg(long, default_value_t = 120)]
        idle_seconds: u64,
        /// Mix hostile clients among the users: aborted upgrades, slow readers, partial
        /// headers, oversize messages, hidden-model probes and failed-auth storms, each from a
        /// loopback address of its own (127.0.0.2 to 127.0.0.7; the server must listen on
        /// loopback). Fails if any is answered otherwise than expected or gets more than its
        /// share.
        #[arg(long)]
        hostile: bool,
        /// The server's --header-timeout, in seconds: a partial header still open 30 s past it
        /// fails the run.
        #[arg(long, default_value_t = 10.0)]
        header_timeout: f64,
        /// The server's --ws-output-timeout, in seconds: a slow reader still open 30 s past it
        /// fails the run.
        #[arg(long, default_value_t = 30.0)]
        ws_output_timeout: f64,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Measure prefill, decode and lens-analysis speed in both compute dtypes (see bench/run.sh
    /// for the comparison with llama.cpp).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length for the prefill and decode measurements.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens decoded after the prompt.
        #[arg(long, default_value_t = 128)]
        decode_tokens: usize,
        /// Text length of the lens analyses (all layers).
        #[arg(long, default_value_t = 64)]
        lens_tokens: usize,
        /// A tuned-lens folder to time beside the logit lens.
        #[arg(long)]
        lens: Option<PathBuf>,
        /// Run only this part, in --dtype, and print its timings (for a profiler).
        #[arg(long, value_enum)]
        only: Option<crate::bench::Part>,
        /// The compute dtype of --only.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// The unembedding of `--only analysis`: `f32`, or `bf16` (f32 accumulation; f32 where
        /// the CPU lacks AVX-512 BF16).
        #[arg(long, default_value = "f32")]
        unembed: lensd_engine::lens::analyze::Unembed,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Output: a readable table, or one JSON document.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// candle asks for its thread count on every CPU matrix product, and unless
/// `RAYON_NUM_THREADS` is set that means reading `/proc/cpuinfo` each time: about 270 reads per
/// decoded token of the demo model, a fifth of f32 decode time (`bench/run.sh`'s profile shows
/// it as `show_cpuinfo`). Setting it once, before any thread starts, makes it an environment
/// lookup. `CANDLE_NUM_THREADS`, which candle's matrix products would otherwise ignore, wins.
fn pin_compute_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(lensd_engine::compute_threads);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

fn main() -> ExitCode {
    pin_compute_threads();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        TopCommand::Local(command) => commands::run(command),
        TopCommand::Pull(args) => pull::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
