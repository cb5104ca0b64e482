//! The Jinja environment a Hugging Face chat template runs in, as
//! transformers sets it up (`render_jinja_template`): `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string/dict methods (minijinja's
//! pycompat layer), `tojson` written like Python's `json.dumps`, and the
//! globals `raise_exception` and `strftime_now`.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// The prefix of an error raised by the template itself
/// (`raise_exception(msg)`), as opposed to one of the renderer.
pub const RAISED: &str = "the template raised: ";

/// A fresh environment with transformers' settings and helpers.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{RAISED}{msg}"),
        ))
    });
    env.add_function("strftime_now", |format: String| -> Result<Value, Error> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        strftime(secs, &format)
            .map(Value::from)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e))
    });
    env
}

/// transformers' `{% generation %}...{% endgeneration %}` (its
/// AssistantTracker extension) marks assistant text and renders its body
/// unchanged; minijinja has no such tag, so it becomes an always-true `if`
/// (whitespace control kept).
pub fn without_generation_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        // The close is searched after the open: in `{%}` the `%}` overlaps
        // it (a fuzzed template; slicing its inside panicked).
        let Some(end) = rest[at + 2..].find("%}").map(|e| e + 2) else {
            out.push_str(&rest[at..]);
            return out;
        };
        let tag = &rest[at..at + end + 2];
        let inner = &tag[2..tag.len() - 2];
        let open_ctl = if inner.starts_with(['-', '+']) {
            &inner[..1]
        } else {
            ""
        };
        let close_ctl = if inner.ends_with(['-', '+']) {
            &inner[inner.len() - 1..]
        } else {
            ""
        };
        match inner.trim_matches(['-', '+']).trim() {
            "generation" => out.push_str(&format!("{{%{open_ctl} if true {close_ctl}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open_ctl} endif {close_ctl}%}}")),
            _ => out.push_str(tag),
        }
        rest = &rest[at + end + 2..];
    }
    out.push_str(rest);
    out
}

/// `x | tojson(indent=None, ensure_ascii=False, sort_keys=False)`, the way
/// transformers defines it: Python's `json.dumps` (separators `", "` and
/// `": "`, or `","` between items when indenting), keys in insertion order.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let opts = PyJson {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    opts.write(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` options that chat templates use.
pub struct PyJson {
    pub indent: Option<usize>,
    pub ensure_ascii: bool,
    pub sort_keys: bool,
}

impl PyJson {
    pub fn write(&self, v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => match v.as_i64() {
                Some(i) if !is_float(v) => out.push_str(&i.to_string()),
                _ => out.push_str(&py_float(f64::try_from(v.clone()).map_err(|_| {
                    Error::new(ErrorKind::InvalidOperation, "tojson: number out of range")
                })?)),
            },
            ValueKind::String => self.write_str(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.write_items(out, depth, '[', ']', items.len(), |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.write_items(out, depth, '{', '}', keys.len(), |i, out| {
                    let k = &keys[i];
                    match k.as_str() {
                        Some(s) => self.write_str(s, out),
                        None => self.write_str(&k.to_string(), out),
                    }
                    out.push_str(": ");
                    self.write(&v.get_item(k)?, depth + 1, out)
                })?;
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a value of kind {other}"),
                ))
            }
        }
        Ok(())
    }

    fn write_items(
        &self,
        out: &mut String,
        depth: usize,
        open: char,
        close: char,
        n: usize,
        mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..n {
            match self.indent {
                Some(w) => {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('\n');
                    out.push_str(&" ".repeat(w * (depth + 1)));
                }
                None if i > 0 => out.push_str(", "),
                None => {}
            }
            item(i, out)?;
        }
        if let Some(w) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(w * depth));
        }
        out.push(close);
        Ok(())
    }

    fn write_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

fn is_float(v: &Value) -> bool {
    // minijinja keeps floats and integers apart; `1.0` stays a float.
    v.as_i64().is_none() || v.to_string().contains(['.', 'e', 'E', 'i', 'N'])
}

/// A float as Python's `repr` writes it: the shortest round-trip digits,
/// `1.0` for integral values, exponent form below 1e-4 and from 1e16 on.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust: "1e-5", "1.5e16"; Python: "1e-05", "1.5e+16".
        let s = format!("{x:e}");
        let (m, e) = s.split_once('e').expect("exponent form");
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', e),
        };
        return format!("{m}e{sign}{digits:0>2}");
    }
    format!("{x:?}")
}

/// `time.strftime(format)` in UTC for the directives chat templates use.
pub fn strftime(unix_secs: i64, format: &str) -> Result<String, String> {
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
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => return Err(format!("strftime_now: unsupported directive %{other}")),
            None => return Err("strftime_now: format ends with %".into()),
        }
    }
    Ok(out)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(json: &str, indent: Option<usize>) -> String {
        let v: Value = serde_json::from_str(json).unwrap();
        let mut out = String::new();
        PyJson {
            indent,
            ensure_ascii: false,
            sort_keys: false,
        }
        .write(&v, 0, &mut out)
        .unwrap();
        out
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        // Expected strings are what CPython 3 prints for the same input.
        assert_eq!(
            dumps(
                r#"{"b": [1, 2.5, "x\n\"y\""], "a": {}, "c": null, "d": true}"#,
                None
            ),
            r#"{"b": [1, 2.5, "x\n\"y\""], "a": {}, "c": null, "d": true}"#
        );
        assert_eq!(
            dumps(r#"{"k": [1, {"z": []}], "é": "東京\u0001"}"#, Some(4)),
            "{\n    \"k\": [\n        1,\n        {\n            \"z\": []\n        }\n    ],\n    \"é\": \"東京\\u0001\"\n}"
        );
        assert_eq!(dumps("1.0", None), "1.0");
        assert_eq!(dumps("0.00001", None), "1e-05");
        assert_eq!(dumps("1e16", None), "1e+16");
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(
            without_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-07-26 12:34:56 UTC was a Friday.
        let t = 1_721_997_296;
        assert_eq!(strftime(t, "%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime(t, "%A %B %d %H:%M:%S %y %m %%").unwrap(),
            "Friday July 26 12:34:56 24 07 %"
        );
        assert!(strftime(t, "%Q").unwrap_err().contains("%Q"));
        assert_eq!(strftime(0, "%Y-%m-%d %a").unwrap(), "1970-01-01 Thu");
    }
}
