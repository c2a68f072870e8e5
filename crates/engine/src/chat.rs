//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template` or a
//! Hugging Face `tokenizer_config.json`), rendered with minijinja, with the functions and
//! filters Hugging Face gives templates (`raise_exception`, `strftime_now`, `tojson`). A file
//! that ships none can fall back on lensd's own template for its family
//! ([`fallback_template`]), as llama.cpp falls back on its built-in formats.
//!
//! A template is code from a model file: each rendering runs on a budget of instructions,
//! recursion and output bytes ([`limits`]), and one past a limit is an error naming the
//! template and the limit.
//!
//! System messages: a template that refuses them (Gemma-2's raises an exception) is rendered
//! again with the system message folded into the first user turn, `"{system}\n\n{user}"`, which
//! is what Gemma-3's own template does with it.

pub mod harmony;
pub mod limits;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::error::{EngineError, Result};

use limits::{Budget, Capped};

pub use lensd_core::work::ChatMessage as Message;

pub struct ChatTemplate {
    env: Environment<'static>,
    /// What the template is called in errors, and its name in minijinja.
    origin: String,
    bos: String,
    eos: String,
}

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

/// How a rendering failed: at one of the limits (not worth a second try), or otherwise.
enum Failure {
    Limit(EngineError),
    Other(EngineError),
}

impl ChatTemplate {
    /// The template `source`, called "the model's template" in errors; see [`Self::named`].
    pub fn new(source: &str, bos: String, eos: String) -> Result<Self> {
        Self::named("the model's template", source, bos, eos)
    }

    /// The template `source`, called `origin` in errors (say, "`tokenizer.chat_template` of
    /// model.gguf"): minijinja's messages name it too, with the line.
    pub fn named(origin: &str, source: &str, bos: String, eos: String) -> Result<Self> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two Jinja settings.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(limits::unknown_method);
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
        limits::install(&mut env);
        env.add_template_owned(origin.to_string(), source.to_string())
            .map_err(|e| EngineError::Template(format!("{origin} does not parse: {e}")))?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
            bos,
            eos,
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. A template that fails on a leading system message is given the
    /// conversation with that message folded into the first user turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match self.render_as_is(messages, add_generation_prompt) {
            Ok(text) => Ok(text),
            Err(Failure::Limit(e)) => Err(e),
            Err(Failure::Other(first)) => match fold_system(messages) {
                Some(folded) => {
                    self.render_as_is(&folded, add_generation_prompt)
                        .map_err(|second| match second {
                            Failure::Limit(e) => e,
                            Failure::Other(_) => first,
                        })
                }
                None => Err(first),
            },
        }
    }

    fn render_as_is(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, Failure> {
        let budget = Budget::for_conversation(messages);
        // The fuel is the environment's; a clone shares the compiled template.
        let mut env = self.env.clone();
        env.set_fuel(Some(budget.fuel));
        let tmpl = env
            .get_template(&self.origin)
            .map_err(|e| Failure::Other(EngineError::Template(e.to_string())))?;
        let mut out = Capped::new(budget.output_bytes);
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.text).map_err(|_| {
                Failure::Other(EngineError::Template(format!(
                    "{} wrote text that is not UTF-8",
                    self.origin
                )))
            }),
            Err(e) => Err(
                match limits::limit_reached(&e, &budget, messages.len(), &out) {
                    Some(why) => Failure::Limit(EngineError::Template(format!(
                        "{} was stopped{}: {why}",
                        self.origin,
                        e.line()
                            .map(|l| format!(" at line {l}"))
                            .unwrap_or_default()
                    ))),
                    None => Failure::Other(EngineError::Template(format!(
                        "rendering {} failed: {e}",
                        self.origin
                    ))),
                },
            ),
        }
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
    let indent = limits::tojson_indent(&kwargs)?;
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
        let tmpl = t.env.get_template(&t.origin).unwrap();
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

#[cfg(test)]
mod limit_tests {
    use super::limits::*;
    use super::*;

    fn refusal(src: &str, messages: &[Message]) -> String {
        let t = ChatTemplate::named(
            "`tokenizer.chat_template` of m.gguf",
            src,
            "".into(),
            "".into(),
        )
        .unwrap();
        let err = t.render(messages, true).unwrap_err().to_string();
        assert!(err.contains("`tokenizer.chat_template` of m.gguf"), "{err}");
        err
    }

    fn one_turn() -> Vec<Message> {
        vec![Message::new("user", "Hi")]
    }

    /// Runs `f` on a thread with the default 2 MiB stack of spawned threads (the compute
    /// thread's), so that a stack overflow fails the test instead of passing on the main
    /// thread's 8 MiB.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_range_of_a_billion_numbers_is_refused_naming_the_limit() {
        let err = refusal("{% for i in range(10**9) %}x{% endfor %}", &one_turn());
        assert!(
            err.contains(&format!("at most {MAX_ITEMS} numbers")),
            "{err}"
        );
        assert!(err.contains("1000000000"), "{err}");
        // Within the limit, range is minijinja's.
        let t = ChatTemplate::new("{{ range(1, 10, 3) | list }}", "".into(), "".into()).unwrap();
        assert_eq!(t.render(&one_turn(), false).unwrap(), "[1, 4, 7]");
    }

    #[test]
    fn a_loop_without_end_runs_out_of_fuel() {
        let src =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let err = refusal(src, &one_turn());
        let fuel = Budget::for_conversation(&one_turn()).fuel;
        assert!(err.contains("ran out of fuel"), "{err}");
        assert!(err.contains(&format!("{fuel} instructions")), "{err}");
        assert!(err.contains("for each of the 1 messages"), "{err}");
    }

    #[test]
    fn macros_recursing_without_end_stop_at_the_recursion_limit_within_a_small_stack() {
        // Each level opens blocks too, as a schema-rendering macro does.
        let src = "{% macro f(n) %}{% if n >= 0 %}{% for k in [n] %}{% with x = k %}\
            {{ f(x + 1) }}{% endwith %}{% endfor %}{% endif %}{% endmacro %}{{ f(0) }}";
        let err = on_small_stack(move || refusal(src, &one_turn()));
        assert!(
            err.contains(&format!("recursion limit of {RECURSION_LIMIT}")),
            "{err}"
        );
        // A bounded recursion well within the limit (a level counts about 7) renders, on the
        // same stack.
        let depth = 20;
        let bounded = format!(
            "{{% macro f(n) %}}{{% if n < {depth} %}}{{% for k in [n] %}}{{{{ f(k + 1) }}}}\
             {{% endfor %}}{{% else %}}done{{% endif %}}{{% endmacro %}}{{{{ f(0) }}}}"
        );
        let out = on_small_stack(move || {
            ChatTemplate::new(&bounded, "".into(), "".into())
                .unwrap()
                .render(&[Message::new("user", "x")], false)
        });
        assert_eq!(out.unwrap(), "done");
    }

    #[test]
    fn huge_strings_are_refused_naming_the_limit() {
        // Past minijinja's own limit on repetition.
        let err = refusal("{{ 'a' * 10**9 }}", &one_turn());
        assert!(
            err.contains(&format!("at most {MAX_REPEATED_STRING} bytes")),
            "{err}"
        );
        // Within it, but more than a rendering may write.
        let err = refusal("{{ 'ab' * 3000000 }}", &one_turn());
        let limit = Budget::for_conversation(&one_turn()).output_bytes;
        assert!(err.contains(&format!("limit of {limit} bytes")), "{err}");
    }

    #[test]
    fn builtins_sized_by_the_template_are_refused_before_they_allocate() {
        for (src, needle) in [
            ("{{ 'a\nb' | indent(10**12) }}", "the width of `indent`"),
            ("{{ 'a' | indent(width=10**12) }}", "the width of `indent`"),
            (
                "{{ ('\n' * 10**7) | indent(100) }}",
                "`indent` may make at most",
            ),
            ("{{ [1] | batch(10**12) }}", "the count of `batch`"),
            ("{{ [1] | slice(10**12) }}", "the count of `slice`"),
            ("{{ '%99999999999d' | format(1) }}", "format string"),
            ("{{ '%(x)5000.2f' | format(x=1) }}", "format string"),
            ("{{ '{:>99999999999}'.format(1) }}", "format string"),
            (
                "{{ messages | tojson(indent=10**9) }}",
                "the indent of `tojson`",
            ),
        ] {
            let err = refusal(src, &one_turn());
            assert!(err.contains(needle), "{src}: {err}");
        }
        // Reasonable sizes are the builtins' own.
        let t = ChatTemplate::new(
            "{{ 'a\nb' | indent(2) }}|{{ [1, 2, 3] | batch(2) | list }}|{{ '%05.1f' | format(2.5) }}|{{ '{:>4}'.format(7) }}",
            "".into(),
            "".into(),
        )
        .unwrap();
        assert_eq!(
            t.render(&one_turn(), false).unwrap(),
            "a\n  b|[[1, 2], [3]]|002.5|   7"
        );
    }

    #[test]
    fn a_limit_is_not_tried_again_with_the_system_message_folded() {
        // A template that fails on a system message is normally rendered again; one stopped
        // by a limit is not (that would double the time a bad template takes).
        let src = "{% if messages[0].role == 'system' %}{% for i in range(100000) %}\
            {% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}ok";
        let err = refusal(
            src,
            &[Message::new("system", "s"), Message::new("user", "u")],
        );
        assert!(err.contains("ran out of fuel"), "{err}");
    }

    #[test]
    fn long_conversations_render_within_the_budget() {
        // The largest conversation a 256 KiB request can carry has about 9,000 short messages.
        let messages: Vec<Message> = (0..9_000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "ok"))
            .collect();
        let out = template(fallback_template("gemma3").unwrap())
            .render(&messages, true)
            .unwrap();
        assert_eq!(out.matches("<start_of_turn>").count(), 9_001);
    }

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, "<bos>".into(), "<eos>".into()).unwrap()
    }
}
