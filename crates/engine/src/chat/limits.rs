//! What one rendering of a chat template may spend. A template is code that comes inside a
//! model file, so it runs on a budget, with minijinja's own limits: its fuel (instructions
//! run), its recursion limit (macros, includes, nested blocks) and the bytes it writes, the
//! first and last growing with the conversation. The builtins that size an allocation by a
//! number the template gives (`range`, `indent`, `batch`, `slice`, the widths of `format`,
//! `tojson`'s indent) are refused past a limit before they allocate. Every refusal names the
//! template and the limit.
//!
//! Not bounded here: fuel counts instructions, not bytes, and minijinja has no byte limit, so a
//! template that doubles a string by concatenation (`{% set s = s ~ s %}` again and again),
//! keeps many long strings alive, or consumes a lazily repeated list (`[x] * n`) in a filter
//! can still take memory or time out of proportion to its fuel.

use minijinja::value::{Kwargs, StringInput, Value};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State};

use super::Message;

/// Instructions any rendering may run, whatever the conversation.
pub const FUEL_BASE: u64 = 200_000;
/// Instructions added per message: templates loop over the messages, some twice.
pub const FUEL_PER_MESSAGE: u64 = 5_000;
/// minijinja's recursion budget: a macro call costs 4 plus its open blocks. Deep enough for
/// templates that render nested tool schemas with a recursive macro, shallow enough that the
/// deepest rendering fits in the 2 MiB stack of a spawned thread (the compute thread's).
pub const RECURSION_LIMIT: usize = 200;
/// Bytes any rendering may write, whatever the conversation.
pub const OUTPUT_BASE: usize = 1 << 20;
/// Bytes added per byte of the messages (a template may write each message more than once).
pub const OUTPUT_PER_MESSAGE_BYTE: usize = 8;
/// Numbers one `range` may make, and items `batch` and `slice` may be asked to make:
/// minijinja's own limit on `range`.
pub const MAX_ITEMS: usize = 100_000;
/// Widths and precisions in `format` strings, and the indents of `indent` and `tojson`.
pub const MAX_WIDTH: usize = 1_000;
/// Bytes `indent` may make of one string.
pub const MAX_INDENTED: usize = 16 << 20;
/// minijinja's limit on a string repeated with `*`, which it enforces itself.
pub const MAX_REPEATED_STRING: usize = 100_000_000;

/// The fuel and output bytes of one rendering of `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub fuel: u64,
    pub output_bytes: usize,
}

impl Budget {
    pub fn for_conversation(messages: &[Message]) -> Self {
        let bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        Budget {
            fuel: FUEL_BASE.saturating_add(FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64)),
            output_bytes: OUTPUT_BASE.saturating_add(OUTPUT_PER_MESSAGE_BYTE.saturating_mul(bytes)),
        }
    }

    /// What a refusal says about the fuel.
    fn fuel_text(&self, messages: usize) -> String {
        format!(
            "it ran out of fuel: a rendering may run {} instructions ({FUEL_BASE} plus \
             {FUEL_PER_MESSAGE} for each of the {messages} messages); does it loop without end?",
            self.fuel
        )
    }

    fn output_text(&self) -> String {
        format!(
            "it wrote more than the limit of {} bytes ({OUTPUT_BASE} plus \
             {OUTPUT_PER_MESSAGE_BYTE} per byte of the messages)",
            self.output_bytes
        )
    }
}

/// The sink a template writes to: refuses any write past `limit` bytes, and remembers that it
/// did, so that minijinja's write failure can be told apart.
pub(super) struct Capped {
    pub text: Vec<u8>,
    limit: usize,
    pub overflowed: bool,
}

impl Capped {
    pub fn new(limit: usize) -> Self {
        Capped {
            text: Vec::new(),
            limit,
            overflowed: false,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len().saturating_add(buf.len()) > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a rendering stopped at a limit, in words naming the limit; `None` when it stopped for
/// another reason (the template's own exception, an undefined method, ...).
pub(super) fn limit_reached(
    e: &JinjaError,
    budget: &Budget,
    messages: usize,
    out: &Capped,
) -> Option<String> {
    match (e.kind(), e.detail()) {
        (ErrorKind::OutOfFuel, _) => Some(budget.fuel_text(messages)),
        (ErrorKind::WriteFailure, _) if out.overflowed => Some(budget.output_text()),
        (ErrorKind::InvalidOperation, Some("recursion limit exceeded")) => Some(format!(
            "it nests macros, includes or blocks deeper than the recursion limit of \
             {RECURSION_LIMIT} (a macro call counts 4)"
        )),
        (ErrorKind::InvalidOperation, Some("repeated string is too large")) => Some(format!(
            "a string repeated with `*` may have at most {MAX_REPEATED_STRING} bytes \
             (minijinja's limit)"
        )),
        (_, Some(d)) if d.starts_with(LIMIT_MARK) => Some(d[LIMIT_MARK.len()..].to_string()),
        _ => None,
    }
}

/// Starts the detail of an error raised by a guarded builtin, so that [`limit_reached`] knows it.
const LIMIT_MARK: &str = "limit: ";

fn limit_error(msg: String) -> JinjaError {
    JinjaError::new(ErrorKind::InvalidOperation, format!("{LIMIT_MARK}{msg}"))
}

/// Sets the recursion limit and replaces the builtins that allocate by a number the template
/// gives with guarded ones.
pub(super) fn install(env: &mut Environment<'static>) {
    env.set_recursion_limit(RECURSION_LIMIT);
    env.add_function("range", range);
    env.add_filter("indent", indent);
    env.add_filter("batch", batch);
    env.add_filter("slice", slice);
    env.add_filter("format", format);
}

/// How many numbers Python's `range(lower, upper, step)` makes (0 for a zero step, which
/// minijinja refuses itself).
fn range_len(lower: isize, upper: Option<isize>, step: Option<isize>) -> i128 {
    let (start, end) = match upper {
        Some(u) => (lower as i128, u as i128),
        None => (0, lower as i128),
    };
    let step = step.unwrap_or(1) as i128;
    let span = end - start;
    if step == 0 || span == 0 || (span > 0) != (step > 0) {
        return 0;
    }
    (span.abs() + step.abs() - 1) / step.abs()
}

fn range(lower: isize, upper: Option<isize>, step: Option<isize>) -> Result<Value, JinjaError> {
    let n = range_len(lower, upper, step);
    if n > MAX_ITEMS as i128 {
        return Err(limit_error(format!(
            "`range` may make at most {MAX_ITEMS} numbers; this one would make {n}"
        )));
    }
    minijinja::functions::range(lower, upper, step)
}

fn check_width(what: &str, n: usize) -> Result<(), JinjaError> {
    if n > MAX_WIDTH {
        return Err(limit_error(format!(
            "{what} may be at most {MAX_WIDTH}, got {n}"
        )));
    }
    Ok(())
}

fn check_count(what: &str, n: usize) -> Result<(), JinjaError> {
    if n > MAX_ITEMS {
        return Err(limit_error(format!(
            "{what} may be at most {MAX_ITEMS}, got {n}"
        )));
    }
    Ok(())
}

fn indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, JinjaError> {
    let w = match width {
        Some(w) => w,
        None => kwargs.peek::<Option<usize>>("width")?.unwrap_or(4),
    };
    check_width("the width of `indent`", w)?;
    let lines = value.as_str().bytes().filter(|&b| b == b'\n').count() + 1;
    let made = lines.saturating_mul(w).saturating_add(value.as_str().len());
    if made > MAX_INDENTED {
        return Err(limit_error(format!(
            "`indent` may make at most {MAX_INDENTED} bytes; {lines} lines indented by {w} \
             would make {made}"
        )));
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

fn batch(
    state: &State,
    value: Value,
    count: usize,
    fill_with: Option<Value>,
) -> Result<Value, JinjaError> {
    check_count("the count of `batch`", count)?;
    minijinja::filters::batch(state, value, count, fill_with)
}

fn slice(
    state: &State,
    value: Value,
    count: usize,
    fill_with: Option<Value>,
) -> Result<Value, JinjaError> {
    check_count("the count of `slice`", count)?;
    minijinja::filters::slice(state, value, count, fill_with)
}

fn format(
    state: &State,
    format_str: &Value,
    args: minijinja::value::Rest<Value>,
) -> Result<Value, JinjaError> {
    if let Some(s) = format_str.as_str() {
        check_format_widths(s)?;
    }
    minijinja::filters::format(state, format_str, args)
}

/// pycompat's string methods, with `str.format`'s widths checked first.
pub(super) fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    if let ("format", Some(s)) = (method, value.as_str()) {
        check_format_widths(s)?;
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Refuses a width or precision over [`MAX_WIDTH`] in a printf (`%-10.3f`, `%(name)20s`) or
/// `str.format` (`{:>20}`, `{0:.5}`) conversion: minijinja pads to it without a limit.
pub(super) fn check_format_widths(fmt: &str) -> Result<(), JinjaError> {
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let end = match b[i] {
            b'%' => {
                let mut j = i + 1;
                if b.get(j) == Some(&b'(') {
                    j += b[j..]
                        .iter()
                        .position(|&c| c == b')')
                        .unwrap_or(b.len() - j);
                }
                while j < b.len() && b"#0-+ .0123456789()".contains(&b[j]) {
                    j += 1;
                }
                j
            }
            b'{' => {
                i + b[i..]
                    .iter()
                    .position(|&c| c == b'}')
                    .unwrap_or(b.len() - i)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        for digits in fmt[i + 1..end].split(|c: char| !c.is_ascii_digit()) {
            if !digits.is_empty() {
                let n = digits.parse::<usize>().unwrap_or(usize::MAX);
                check_width("a width or precision in a format string", n)?;
            }
        }
        i = end.max(i + 1);
    }
    Ok(())
}

/// The indent `tojson` is asked for, checked.
pub(super) fn tojson_indent(kwargs: &Kwargs) -> Result<Option<usize>, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if let Some(n) = indent {
        check_width("the indent of `tojson`", n)?;
    }
    Ok(indent)
}
