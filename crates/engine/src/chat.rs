//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template` or a
//! Hugging Face `tokenizer_config.json`), rendered with minijinja, with the functions and
//! filters Hugging Face gives templates (`raise_exception`, `strftime_now`, `tojson`). A file
//! that ships none can fall back on lensd's own template for its family
//! ([`fallback_template`]), as llama.cpp falls back on its built-in formats.
//!
//! System messages: a template that refuses them (Gemma-2's raises an exception) is rendered
//! again with the system message folded into the first user turn, `"{system}\n\n{user}"`, which
//! is what Gemma-3's own template does with it.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::error::{EngineError, Result};

pub use lensd_core::work::ChatMessage as Message;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

/// Gemma's turn format, written for lensd (the same text as llama.cpp's built-in `gemma`
/// format, BOS first): `<start_of_turn>{user|model}\n{content}<end_of_turn>\n`, system messages
/// folded into the next user turn.
const GEMMA: &str = "{{ bos_token }}\
{%- set ns = namespace(system='') -%}\
{%- for m in messages -%}\
{%- if m.role == 'system' -%}\
{%- set ns.system = ns.system ~ (m.content | trim) -%}\
{%- else -%}\
{%- set role = 'model' if m.role == 'assistant' else m.role -%}\
{{ '<start_of_turn>' ~ role ~ '\\n' }}\
{%- if ns.system and role != 'model' -%}\
{{ ns.system ~ '\\n\\n' }}{%- set ns.system = '' -%}\
{%- endif -%}\
{{ (m.content | trim) ~ '<end_of_turn>\\n' }}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";

/// lensd's template for a GGUF `general.architecture` whose file has no chat template.
pub fn fallback_template(architecture: &str) -> Option<&'static str> {
    match architecture {
        "gemma" | "gemma2" | "gemma3" => Some(GEMMA),
        _ => None,
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos: String, eos: String) -> Result<Self> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two Jinja settings.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |format: String| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            strftime(&format, now).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| EngineError::Template(format!("the template does not parse: {e}")))?;
        Ok(ChatTemplate { env, bos, eos })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. A template that fails on a leading system message is given the
    /// conversation with that message folded into the first user turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match self.render_as_is(messages, add_generation_prompt) {
            Ok(text) => Ok(text),
            Err(first) => match fold_system(messages) {
                Some(folded) => self
                    .render_as_is(&folded, add_generation_prompt)
                    .map_err(|_| first),
                None => Err(first),
            },
        }
    }

    fn render_as_is(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| EngineError::Template(format!("rendering failed: {e}")))
    }
}

/// `messages` with a leading system message folded into the first user turn
/// (`"{system}\n\n{user}"`), or `None` when the conversation does not start with one. Without
/// a user turn after it, the system message becomes the first user turn.
pub fn fold_system(messages: &[Message]) -> Option<Vec<Message>> {
    let (first, rest) = messages.split_first()?;
    if first.role != "system" {
        return None;
    }
    let mut out = rest.to_vec();
    match out.first_mut().filter(|m| m.role == "user") {
        Some(user) => user.content = format!("{}\n\n{}", first.content, user.content),
        None => out.insert(0, Message::new("user", first.content.clone())),
    }
    Some(out)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which Hugging Face
/// gives templates as `tojson`: `", "` and `": "` between items, or one item per line.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let items: Vec<(Option<&String>, &J)> = match v {
        J::Array(a) => a.iter().map(|x| (None, x)).collect(),
        J::Object(o) => o.iter().map(|(k, x)| (Some(k), x)).collect(),
        scalar => {
            out.push_str(&scalar.to_string());
            return;
        }
    };
    let (open, close) = if v.is_array() { ('[', ']') } else { ('{', '}') };
    out.push(open);
    for (i, (key, item)) in items.iter().enumerate() {
        match indent {
            Some(n) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&" ".repeat(n * (depth + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        if let Some(k) = key {
            out.push_str(&J::String((*k).clone()).to_string());
            out.push_str(": ");
        }
        write_json(item, indent, depth + 1, out);
    }
    if let (Some(n), false) = (indent, items.is_empty()) {
        out.push('\n');
        out.push_str(&" ".repeat(n * depth));
    }
    out.push(close);
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// The proleptic Gregorian (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Count in 400-year eras from 0000-03-01, so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// C's `strftime` on the UTC time `secs` after the Unix epoch, for the conversions templates
/// use: `%Y %y %m %B %b %d %e %j %A %a %H %I %M %S %p %%`, and `%-d` style to drop padding.
pub fn strftime(format: &str, secs: u64) -> std::result::Result<String, String> {
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_date(days);
    let weekday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_before_year(year) + 1;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let pad = spec != Some('-');
        if !pad {
            spec = chars.next();
        }
        let num = |v: i64, width: usize| {
            if pad {
                format!("{v:0width$}")
            } else {
                v.to_string()
            }
        };
        let piece = match spec {
            Some('Y') => year.to_string(),
            Some('y') => num(year.rem_euclid(100), 2),
            Some('m') => num(month.into(), 2),
            Some('B') => MONTHS[month as usize - 1].to_string(),
            Some('b') => MONTHS[month as usize - 1][..3].to_string(),
            Some('d') => num(day.into(), 2),
            Some('e') if pad => format!("{day:2}"),
            Some('e') => day.to_string(),
            Some('j') => num(day_of_year, 3),
            Some('A') => WEEKDAYS[weekday].to_string(),
            Some('a') => WEEKDAYS[weekday][..3].to_string(),
            Some('H') => num(h as i64, 2),
            Some('I') => num(((h + 11) % 12 + 1) as i64, 2),
            Some('M') => num(m as i64, 2),
            Some('S') => num(s as i64, 2),
            Some('p') => if h < 12 { "AM" } else { "PM" }.to_string(),
            Some('%') => "%".to_string(),
            other => {
                return Err(format!(
                    "strftime_now: unsupported conversion `%{}` in {format:?}",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// Days from 1970-01-01 to January 1st of `year`.
fn days_before_year(year: i64) -> i64 {
    let y = year - 1;
    365 * (year - 1970) + (y / 4 - y / 100 + y / 400) - (1969 / 4 - 1969 / 100 + 1969 / 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(turns: &[(&str, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message::new(r, *c)).collect()
    }

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, "<bos>".into(), "<eos>".into()).unwrap()
    }

    #[test]
    fn dates_known_to_the_calendar() {
        // 2024-07-26 12:34:56 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d, %y %H:%M:%S %p %j %I", t).unwrap(),
            "Friday July 26, 24 12:34:56 PM 208 12"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        // 2000-02-29 (a leap day in a century year) and 2100-03-01 (2100 is not leap).
        assert_eq!(
            strftime("%Y-%m-%d %j", 951_782_400).unwrap(),
            "2000-02-29 060"
        );
        assert_eq!(
            strftime("%Y-%m-%d %j", 4_107_542_400).unwrap(),
            "2100-03-01 060"
        );
        assert_eq!(strftime("%e|%-m|%%", 0).unwrap(), " 1|1|%");
        let err = strftime("%Q", 0).unwrap_err();
        assert!(err.contains("`%Q`"), "{err}");
    }

    #[test]
    fn strftime_now_renders_today() {
        let t = template("{{ strftime_now('%Y') }}");
        let year: i64 = t.render(&[], false).unwrap().parse().unwrap();
        assert!(year >= 2025, "{year}");
    }

    #[test]
    fn tojson_writes_like_python() {
        let t = template("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ [] | tojson(indent=2) }}");
        let ctx =
            minijinja::context! { x => minijinja::context! { a => vec![1, 2], b => "é\"\n" } };
        let tmpl = t.env.get_template(NAME).unwrap();
        assert_eq!(
            tmpl.render(ctx).unwrap(),
            "{\"a\": [1, 2], \"b\": \"é\\\"\\n\"}|{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"é\\\"\\n\"\n}|[]"
        );
    }

    /// A template that, like Gemma-2's, has no system role and raises on one.
    const NO_SYSTEM: &str = "{{ bos_token }}{% for m in messages %}\
        {% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
        [{{ m.role }}]{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";

    #[test]
    fn a_refused_system_message_is_folded_into_the_first_user_turn() {
        let t = template(NO_SYSTEM);
        let out = t
            .render(&msgs(&[("system", "Be brief."), ("user", "Hi")]), true)
            .unwrap();
        assert_eq!(out, "<bos>[user]Be brief.\n\nHi\n[assistant]");
        let alone = t.render(&msgs(&[("system", "Be brief.")]), false).unwrap();
        assert_eq!(alone, "<bos>[user]Be brief.\n");
        // A system message later in the conversation is still refused, with the template's words.
        let err = t
            .render(
                &msgs(&[("user", "a"), ("system", "b"), ("user", "c")]),
                true,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("System role not supported"), "{err}");
    }

    #[test]
    fn a_template_that_accepts_system_messages_keeps_them() {
        let t = template("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}");
        let out = t
            .render(&msgs(&[("system", "S"), ("user", "U")]), false)
            .unwrap();
        assert_eq!(out, "<system>S<user>U");
    }

    #[test]
    fn the_gemma_fallback_renders_gemma_turns() {
        let t = template(fallback_template("gemma3").unwrap());
        let out = t
            .render(
                &msgs(&[
                    ("system", " Answer in French. "),
                    ("user", "Hello "),
                    ("assistant", "Bonjour"),
                    ("user", "Thanks"),
                ]),
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nAnswer in French.\n\nHello<end_of_turn>\n\
             <start_of_turn>model\nBonjour<end_of_turn>\n\
             <start_of_turn>user\nThanks<end_of_turn>\n<start_of_turn>model\n"
        );
        assert!(fallback_template("llama").is_none());
    }

    /// Constructs of Qwen's and Llama-3's templates: a namespace, reversed slices, string
    /// methods, `is string`, a default system message, and the date.
    #[test]
    fn constructs_of_the_families_templates() {
        let src = "{%- set ns = namespace(last_user=-1) -%}\
            {%- for m in messages[::-1] -%}\
            {%- if ns.last_user < 0 and m.role == 'user' and m.content is string -%}\
            {%- set ns.last_user = (messages|length - 1) - loop.index0 -%}{%- endif -%}\
            {%- endfor -%}\
            {%- if messages[0].role != 'system' -%}{{ '[system]You are helpful.\\n' }}{%- endif -%}\
            {%- for m in messages -%}\
            {{ '[' ~ m.role ~ ']' ~ m.content.split('</think>')[-1].lstrip('\\n').strip() }}\
            {%- if loop.index0 == ns.last_user -%}*{%- endif -%}{{ '\\n' }}\
            {%- endfor -%}\
            {%- if not date_string is defined -%}\
            {%- set date_string = strftime_now('%d %b %Y') -%}{%- endif -%}\
            {{ date_string | length }}";
        let t = template(src);
        let out = t
            .render(
                &msgs(&[
                    ("user", "a"),
                    ("assistant", "<think>x</think>\n\n b "),
                    ("user", "c"),
                ]),
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "[system]You are helpful.\n[user]a\n[assistant]b\n[user]c*\n11"
        );
    }
}
