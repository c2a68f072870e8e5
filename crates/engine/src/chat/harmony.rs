//! gpt-oss's chat format, "Harmony", rendered as text and parsed back, without a Jinja
//! template: the format has rules (a system message built from options, earlier thinking
//! dropped, channels) that lensd needs to know about anyway, and the reference is the
//! `openai-harmony` package, whose output `tests/harmony.rs` compares with token for token
//! (testdata/harmony/golden.json, made by tools/gen_harmony_golden.py).
//!
//! The text carries the special tokens written out (`<|start|>`, `<|message|>`...); lensd's
//! tokenizer encodes it with special tokens on. Every message is
//! `<|start|>{role}[<|channel|>{channel}]<|message|>{content}<|end|>`, in this order:
//!
//! - **system** (from [`SystemMessage`], unless [`RenderOptions::system`] is `None`): model
//!   identity, knowledge cutoff and current date on one line each, then `Reasoning: {effort}`,
//!   then `# Valid channels: analysis, commentary, final.` with ` Channel must be included for
//!   every message.`; the three parts are separated by a blank line and absent parts are left
//!   out. This is metadata the model was trained on, not a prompt: what users call a system
//!   prompt goes to the developer message.
//! - **developer**: `# Instructions\n\n{instructions}`. lensd's `system` and `developer` chat
//!   messages both become one ([`HarmonyMessage::from_chat`]).
//! - **user**: the content as it is.
//! - **assistant**: on a channel: `analysis` (the model's thinking), `final` (the reply) or
//!   `commentary` (a preamble meant for the user). lensd's `assistant` chat messages are replies.
//! - with [`RenderOptions::generation_prompt`], `<|start|>assistant`: the model writes the
//!   rest of the header (`<|channel|>analysis<|message|>`...) itself.
//!
//! Earlier thinking: when the last assistant message is on `final`, the `analysis` messages
//! before the *first* `final` message are left out, as openai-harmony 0.0.8 does (its
//! `auto_drop_analysis`, on by default). Only the first turn's thinking goes: a second turn's
//! analysis that precedes a later final stays. [`RenderOptions::keep_analysis`] keeps them all.
//!
//! Content is plain text to openai-harmony (encoded without special tokens). lensd's text
//! cannot say that, so content or options holding one of gpt-oss's special tokens (`<|end|>`,
//! `<|reserved_200013|>`...) are refused rather than turned into control tokens; other
//! `<|...|>` lookalikes are ordinary text in both.
//!
//! [`parse_completion`] reads what the model wrote after `<|start|>assistant`: its messages
//! and how it ended. A generation must stop at [`STOP_MARKERS`] (`<|return|>` after the reply,
//! `<|call|>` for a tool call), not at `<|end|>`, which only closes the thinking. Tools
//! (recipients, `<|constrain|>`, `<|call|>`) are not supported, in rendering or parsing.

use lensd_core::work::ChatMessage;

use crate::error::{EngineError, Result};

/// What opens the assistant's turn: the text ends here when the model is to write next.
pub const GENERATION_PROMPT: &str = "<|start|>assistant";

/// The special tokens that end a Harmony generation: the reply is done, or a tool is called.
pub const STOP_MARKERS: [&str; 2] = ["<|return|>", "<|call|>"];

/// gpt-oss's named special tokens (o200k_harmony); the others are `<|reserved_{id}|>`.
const NAMED_SPECIALS: [&str; 10] = [
    "startoftext",
    "endoftext",
    "return",
    "constrain",
    "channel",
    "start",
    "end",
    "message",
    "call",
    "endofprompt",
];

/// The ids of o200k_harmony's `<|reserved_{id}|>` tokens (to the vocabulary's last row).
const RESERVED_IDS: std::ops::RangeInclusive<u32> = 200_000..=201_087;

/// The longest name between `<|` and `|>` of a special token: `reserved_201087`.
const LONGEST_SPECIAL: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }

    /// `low`, `medium` or `high`; anything else is an error naming the value.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "low" => Ok(ReasoningEffort::Low),
            "medium" => Ok(ReasoningEffort::Medium),
            "high" => Ok(ReasoningEffort::High),
            other => Err(EngineError::Input(format!(
                "reasoning effort {other:?} is not one of gpt-oss's: use `low`, `medium` or `high`"
            ))),
        }
    }
}

/// The channel of an assistant message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The model's thinking, not meant for the user.
    Analysis,
    /// Tool calls and preambles to them.
    Commentary,
    /// The reply.
    Final,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Analysis, Channel::Commentary, Channel::Final];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Analysis => "analysis",
            Channel::Commentary => "commentary",
            Channel::Final => "final",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// The fields of the system message. The defaults are openai-harmony's (and so what gpt-oss
/// expects): its trained identity, cutoff 2024-06, medium effort, all three channels required.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemMessage {
    pub model_identity: Option<String>,
    /// `YYYY-MM`.
    pub knowledge_cutoff: Option<String>,
    /// `YYYY-MM-DD`; openai-harmony leaves it out unless given.
    pub current_date: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub valid_channels: Vec<Channel>,
    pub channel_required: bool,
}

impl Default for SystemMessage {
    fn default() -> Self {
        SystemMessage {
            model_identity: Some(
                "You are ChatGPT, a large language model trained by OpenAI.".to_string(),
            ),
            knowledge_cutoff: Some("2024-06".to_string()),
            current_date: None,
            reasoning_effort: Some(ReasoningEffort::Medium),
            valid_channels: Channel::ALL.to_vec(),
            channel_required: true,
        }
    }
}

impl SystemMessage {
    /// The message's content: its parts, each left out when empty, a blank line between them.
    fn content(&self) -> String {
        let header: Vec<String> = [
            self.model_identity.clone(),
            self.knowledge_cutoff
                .as_ref()
                .map(|c| format!("Knowledge cutoff: {c}")),
            self.current_date
                .as_ref()
                .map(|d| format!("Current date: {d}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut parts = Vec::new();
        if !header.is_empty() {
            parts.push(header.join("\n"));
        }
        if let Some(effort) = self.reasoning_effort {
            parts.push(format!("Reasoning: {}", effort.as_str()));
        }
        if !self.valid_channels.is_empty() {
            let names: Vec<&str> = self.valid_channels.iter().map(|c| c.as_str()).collect();
            let mut channels = format!("# Valid channels: {}.", names.join(", "));
            if self.channel_required {
                channels.push_str(" Channel must be included for every message.");
            }
            parts.push(channels);
        }
        parts.join("\n\n")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// `None` renders no system message (gpt-oss was trained with one).
    pub system: Option<SystemMessage>,
    /// End with [`GENERATION_PROMPT`], for the model to write the assistant's turn.
    pub generation_prompt: bool,
    /// Keep the `analysis` messages that Harmony leaves out of later turns.
    pub keep_analysis: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            system: Some(SystemMessage::default()),
            generation_prompt: true,
            keep_analysis: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantMessage {
    pub channel: Channel,
    pub content: String,
}

/// One message of a conversation, after the system message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarmonyMessage {
    /// Instructions, what other formats call the system prompt.
    Developer(String),
    User(String),
    Assistant(AssistantMessage),
}

impl HarmonyMessage {
    pub fn analysis(content: impl Into<String>) -> Self {
        HarmonyMessage::Assistant(AssistantMessage {
            channel: Channel::Analysis,
            content: content.into(),
        })
    }

    pub fn reply(content: impl Into<String>) -> Self {
        HarmonyMessage::Assistant(AssistantMessage {
            channel: Channel::Final,
            content: content.into(),
        })
    }

    /// lensd's chat message `messages[index]`: `system` and `developer` become developer
    /// instructions, `user` stays, `assistant` is a reply on the `final` channel.
    pub fn from_chat(index: usize, message: &ChatMessage) -> Result<Self> {
        let content = message.content.clone();
        match message.role.as_str() {
            "system" | "developer" => Ok(HarmonyMessage::Developer(content)),
            "user" => Ok(HarmonyMessage::User(content)),
            "assistant" => Ok(HarmonyMessage::reply(content)),
            other => Err(EngineError::Input(format!(
                "messages[{index}] has role {other:?}; gpt-oss's chat format takes `system`, \
                 `developer`, `user` or `assistant` (tool messages are not supported)"
            ))),
        }
    }

    fn role(&self) -> &'static str {
        match self {
            HarmonyMessage::Developer(_) => "developer",
            HarmonyMessage::User(_) => "user",
            HarmonyMessage::Assistant(_) => "assistant",
        }
    }

    fn is_on(&self, channel: Channel) -> bool {
        matches!(self, HarmonyMessage::Assistant(a) if a.channel == channel)
    }
}

/// [`HarmonyMessage::from_chat`] over a conversation; an assistant turn's `thinking` becomes
/// an `analysis` message before its reply.
pub fn from_chat(messages: &[ChatMessage]) -> Result<Vec<HarmonyMessage>> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match (&m.thinking, m.role.as_str()) {
            (Some(t), "assistant") => out.push(HarmonyMessage::analysis(t.clone())),
            (Some(_), role) => {
                return Err(EngineError::Input(format!(
                    "messages[{i}] is a `{role}` turn with `thinking`; only assistant turns think"
                )))
            }
            (None, _) => {}
        }
        out.push(HarmonyMessage::from_chat(i, m)?);
    }
    Ok(out)
}

/// Renders lensd's chat messages (see [`from_chat`]) in Harmony.
pub fn render_chat(messages: &[ChatMessage], options: &RenderOptions) -> Result<String> {
    render(&from_chat(messages)?, options)
}

/// Renders the system message from `options`, then `messages` (less the analysis Harmony
/// drops), then the generation prompt if asked for. Content holding a special token is an
/// error naming the message and the token.
pub fn render(messages: &[HarmonyMessage], options: &RenderOptions) -> Result<String> {
    let mut out = String::new();
    if let Some(system) = &options.system {
        let content = system.content();
        if let Some(token) = find_special(&content) {
            return Err(EngineError::Input(format!(
                "the system message's options contain {token}, one of gpt-oss's special \
                 tokens; model identity, knowledge cutoff and date must be plain text"
            )));
        }
        push_message(&mut out, "system", None, &content);
    }
    // openai-harmony's rule: earlier analysis goes only once the conversation's last assistant
    // message is a reply, and only the analysis before the first reply.
    let last_assistant_is_final = messages
        .iter()
        .rev()
        .find(|m| matches!(m, HarmonyMessage::Assistant(_)))
        .is_some_and(|m| m.is_on(Channel::Final));
    let drop_before = match (options.keep_analysis, last_assistant_is_final) {
        (false, true) => messages.iter().position(|m| m.is_on(Channel::Final)),
        _ => None,
    };
    for (i, message) in messages.iter().enumerate() {
        if drop_before.is_some_and(|first_final| i < first_final)
            && message.is_on(Channel::Analysis)
        {
            continue;
        }
        let (channel, content) = match message {
            HarmonyMessage::Developer(instructions) => {
                (None, format!("# Instructions\n\n{instructions}"))
            }
            HarmonyMessage::User(content) => (None, content.clone()),
            HarmonyMessage::Assistant(a) => (Some(a.channel), a.content.clone()),
        };
        if let Some(token) = find_special(&content) {
            return Err(EngineError::Input(format!(
                "messages[{i}] ({}) contains {token}, one of gpt-oss's special tokens; lensd \
                 would encode it as a control token, not as text: remove it or write it \
                 differently (for example with spaces inside the brackets)",
                message.role()
            )));
        }
        push_message(&mut out, message.role(), channel, &content);
    }
    if options.generation_prompt {
        out.push_str(GENERATION_PROMPT);
    }
    Ok(out)
}

fn push_message(out: &mut String, role: &str, channel: Option<Channel>, content: &str) {
    out.push_str("<|start|>");
    out.push_str(role);
    if let Some(channel) = channel {
        out.push_str("<|channel|>");
        out.push_str(channel.as_str());
    }
    out.push_str("<|message|>");
    out.push_str(content);
    out.push_str("<|end|>");
}

/// The first of gpt-oss's special tokens written in `text`, as written (`<|end|>`).
pub fn find_special(text: &str) -> Option<&str> {
    let mut pieces = Pieces::new(text);
    while let Some(piece) = pieces.next() {
        if let Piece::Special(name) = piece {
            return Some(&text[pieces.pos - name.len() - 4..pieces.pos]);
        }
    }
    None
}

fn is_special(name: &str) -> bool {
    if NAMED_SPECIALS.contains(&name) {
        return true;
    }
    name.strip_prefix("reserved_")
        .filter(|id| !id.starts_with('0'))
        .and_then(|id| id.parse::<u32>().ok())
        .is_some_and(|id| RESERVED_IDS.contains(&id))
}

/// A stretch of text, or a special token (by its name, `end` for `<|end|>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Special(&'a str),
}

/// `text` cut at its special tokens; a `<|...|>` that is not one of gpt-oss's stays text.
struct Pieces<'a> {
    text: &'a str,
    /// Where the next piece starts.
    pos: usize,
}

impl<'a> Pieces<'a> {
    fn new(text: &'a str) -> Self {
        Pieces { text, pos: 0 }
    }

    /// The name of the special token written at byte `at`, if one is.
    fn special_at(&self, at: usize) -> Option<&'a str> {
        let inner = self.text[at..].strip_prefix("<|")?;
        // Looking no further than the longest name keeps a text full of "<|" linear.
        let close = inner
            .as_bytes()
            .windows(2)
            .take(LONGEST_SPECIAL + 1)
            .position(|w| w == b"|>")?;
        let name = &inner[..close];
        is_special(name).then_some(name)
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let start = self.pos;
        if start == self.text.len() {
            return None;
        }
        if let Some(name) = self.special_at(start) {
            self.pos = start + name.len() + 4;
            return Some(Piece::Special(name));
        }
        // "<|" is ASCII, so every match is at a char boundary.
        let end = self.text[start..]
            .match_indices("<|")
            .map(|(i, _)| start + i)
            .find(|&at| at > start && self.special_at(at).is_some())
            .unwrap_or(self.text.len());
        self.pos = end;
        Some(Piece::Text(&self.text[start..end]))
    }
}

/// How a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `<|return|>`: the reply is complete.
    Return,
    /// The last message was closed with `<|end|>` and no other began: the generation stopped
    /// at `<|end|>` (which should not be a stop token for gpt-oss) or the text was cut there.
    End,
    /// The text stops inside a message's content, as at a token limit (or the stop token was
    /// removed from it before parsing): the last message is partial.
    Truncated,
}

/// What the model wrote after `<|start|>assistant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub messages: Vec<AssistantMessage>,
    pub ending: Ending,
}

impl Completion {
    /// The `analysis` messages, one line apart; `None` without any.
    pub fn thinking(&self) -> Option<String> {
        self.joined(Channel::Analysis)
    }

    /// The `final` messages, one line apart (a model writes one); `None` without any. Partial
    /// when [`Self::ending`] is [`Ending::Truncated`].
    pub fn reply(&self) -> Option<String> {
        self.joined(Channel::Final)
    }

    fn joined(&self, channel: Channel) -> Option<String> {
        let parts: Vec<&str> = self
            .messages
            .iter()
            .filter(|m| m.channel == channel)
            .map(|m| m.content.as_str())
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n"))
    }
}

/// Splits `text`, what a model wrote after `<|start|>assistant` (special tokens written out,
/// the stop token kept), into its messages. It is an error, naming the message and what was
/// found, when the text stops inside a header (as openai-harmony's parser says too), when a
/// message is not the assistant's, has no channel or an unknown one, addresses a tool, or
/// holds a special token other than the one closing it, and when anything follows
/// `<|return|>`. Text stopping inside a message's content is not an error:
/// [`Ending::Truncated`].
pub fn parse_completion(text: &str) -> Result<Completion> {
    let mut pieces = Pieces::new(text);
    let mut messages = Vec::new();
    loop {
        let n = messages.len();
        let channel = parse_header(&mut pieces, n)?;
        let mut content = String::new();
        let ending = loop {
            match pieces.next() {
                None => break Ending::Truncated,
                Some(Piece::Text(t)) => content.push_str(t),
                Some(Piece::Special("end")) => break Ending::End,
                Some(Piece::Special("return")) => break Ending::Return,
                Some(Piece::Special("call")) => {
                    return Err(bad(
                        n,
                        "ends with <|call|>, a tool call; tools are not supported",
                    ))
                }
                Some(Piece::Special(other)) => {
                    return Err(bad(n, &format!("holds <|{other}|> inside its content")))
                }
            }
        };
        messages.push(AssistantMessage { channel, content });
        match (ending, pieces.next()) {
            (Ending::Return, Some(after)) => {
                return Err(bad(
                    n,
                    &format!(
                        "is followed by {} after <|return|>, which ends a completion",
                        describe(after)
                    ),
                ))
            }
            (Ending::End, Some(Piece::Special("start"))) => continue,
            (Ending::End, Some(other)) => {
                return Err(bad(
                    n,
                    &format!(
                        "is followed by {}; after <|end|> only <|start|> may come",
                        describe(other)
                    ),
                ))
            }
            (ending, _) => return Ok(Completion { messages, ending }),
        }
    }
}

/// Reads a header up to `<|message|>`: the role (absent from the first message, which the
/// prompt opened) and `<|channel|>{channel}`.
fn parse_header(pieces: &mut Pieces, n: usize) -> Result<Channel> {
    let mut role = String::new();
    let mut channel: Option<String> = None;
    loop {
        match pieces.next() {
            None => {
                return Err(bad(
                    n,
                    "stops inside its header, before <|message|>: the generation was cut \
                     before the message began",
                ))
            }
            Some(Piece::Special("message")) => break,
            Some(Piece::Special("channel")) if channel.is_none() => channel = Some(String::new()),
            Some(Piece::Text(t)) => match channel.as_mut() {
                Some(c) => c.push_str(t),
                None => role.push_str(t),
            },
            Some(Piece::Special(other)) => {
                return Err(bad(n, &format!("has <|{other}|> in its header")))
            }
        }
    }
    let role = role.trim();
    let expected = if n == 0 { "" } else { "assistant" };
    if role != expected {
        let first = role.split_whitespace().next().unwrap_or("");
        let why = if n > 0 && first.is_empty() {
            "has no role after <|start|>".to_string()
        } else if n > 0 && first != "assistant" {
            format!("is from {first:?}, not the assistant")
        } else {
            format!("has {role:?} before <|channel|>; tool recipients are not supported")
        };
        return Err(bad(n, &why));
    }
    let channel = channel.ok_or_else(|| bad(n, "has no <|channel|> in its header"))?;
    let mut words = channel.split_whitespace();
    let name = words.next().unwrap_or("");
    if words.next().is_some() {
        return Err(bad(
            n,
            &format!(
                "has {:?} after <|channel|>; tool recipients and content types are not supported",
                channel.trim()
            ),
        ));
    }
    Channel::parse(name).ok_or_else(|| {
        bad(
            n,
            &format!("is on channel {name:?}; gpt-oss's are `analysis`, `commentary` and `final`"),
        )
    })
}

fn describe(piece: Piece) -> String {
    match piece {
        Piece::Special(name) => format!("<|{name}|>"),
        Piece::Text(t) => {
            let head: String = t.chars().take(40).collect();
            format!("the text {head:?}")
        }
    }
}

fn bad(message: usize, why: &str) -> EngineError {
    EngineError::Template(format!(
        "gpt-oss completion: message {} (counting from 1) {why}",
        message + 1
    ))
}
