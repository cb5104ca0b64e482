//! The JSON Schemas a plugin declares in `describe`, enforced by the host: a
//! config is checked against `config_schema` before `init`, a tool's
//! arguments against `parameters_schema` before `call`. No plugin has to
//! re-implement that validation (it may still check more), and every plugin's
//! agent reads the same kind of message: where (a JSON Pointer) and what was
//! expected.

use jsonschema::Validator;
use serde_json::Value;

/// At most this many violations are listed in one message.
const MAX_LISTED: usize = 3;
/// A violation longer than this (it quotes the offending value) is told
/// without the value: the agent gets its own long text back only once.
const MAX_VIOLATION_CHARS: usize = 200;

/// One compiled schema (any draft the schema names with `$schema`; 2020-12
/// when it names none). `$ref`s must stay inside the schema: nothing is
/// fetched.
pub(crate) struct Schema {
    validator: Validator,
}

impl Schema {
    /// Compiles the schema text; the error says why it is not a JSON Schema.
    pub(crate) fn compile(text: &str) -> Result<Schema, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let validator = jsonschema::validator_for(&value)
            .map_err(|e| located(e.instance_path().as_str(), &e.to_string()))?;
        Ok(Schema { validator })
    }

    /// `Ok`, or the violations in one line, each with where it is:
    /// `at /k: 0 is less than the minimum of 1; "query" is a required property`.
    pub(crate) fn check(&self, value: &Value) -> Result<(), String> {
        let mut found: Vec<String> = vec![];
        let mut seen = std::collections::HashSet::new();
        let mut more = 0usize;
        for e in self.validator.iter_errors(value) {
            let mut told = e.to_string();
            if told.chars().count() > MAX_VIOLATION_CHARS {
                told = e.masked().to_string();
            }
            let line = located(e.instance_path().as_str(), &told);
            if !seen.insert(line.clone()) {
                continue;
            }
            match found.len() < MAX_LISTED {
                true => found.push(line),
                false => more += 1,
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        let mut message = found.join("; ");
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        Err(message)
    }

    /// Parses a tool's arguments text and checks it.
    pub(crate) fn check_arguments(&self, text: &str) -> Result<(), String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("not valid JSON ({e}); write the arguments as one JSON object"))?;
        self.check(&value)
    }
}

/// `message`, prefixed by its JSON Pointer unless that is the root.
fn located(pointer: &str, message: &str) -> String {
    match pointer {
        "" => message.to_string(),
        p => format!("at {p}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = r#"{"type":"object","additionalProperties":false,
        "properties":{"query":{"type":"string"},"k":{"type":"integer","minimum":1}},
        "required":["query"]}"#;

    #[test]
    fn violations_name_the_field_and_the_expectation() {
        let s = Schema::compile(SEARCH).unwrap();
        assert_eq!(s.check_arguments(r#"{"query":"x","k":2}"#), Ok(()));
        let cases = [
            (r#"{"query":5}"#, r#"at /query: 5 is not of type "string""#),
            (r#"{}"#, r#""query" is a required property"#),
            (
                r#"{"query":"x","kk":1}"#,
                "Additional properties are not allowed ('kk' was unexpected)",
            ),
            (
                r#"{"query":"x","k":0}"#,
                "at /k: 0 is less than the minimum of 1",
            ),
            (r#"["x"]"#, r#"["x"] is not of type "object""#),
        ];
        for (args, want) in cases {
            assert_eq!(s.check_arguments(args).unwrap_err(), want, "{args}");
        }
        let e = s.check_arguments(r#"{"query": "x""#).unwrap_err();
        assert!(e.starts_with("not valid JSON (EOF while parsing"), "{e}");
    }

    #[test]
    fn a_long_value_is_not_quoted_back() {
        let s =
            Schema::compile(r#"{"properties":{"text":{"type":"string","maxLength":10}}}"#).unwrap();
        let long = "word ".repeat(10_000);
        let e = s
            .check_arguments(&serde_json::json!({ "text": long }).to_string())
            .unwrap_err();
        assert_eq!(e, "at /text: value is longer than 10 characters");
    }

    #[test]
    fn many_violations_are_capped_in_one_line() {
        let s = Schema::compile(
            r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"string"},
                "c":{"type":"string"},"d":{"type":"string"},"e":{"type":"string"}}}"#,
        )
        .unwrap();
        let e = s
            .check_arguments(r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#)
            .unwrap_err();
        assert_eq!(e.matches("is not of type").count(), 3, "{e}");
        assert!(e.ends_with(" (and 2 more)") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn schemas_that_are_not_json_schema_are_refused() {
        for (text, want) in [
            ("{", "not valid JSON"),
            (r#"{"type":"strng"}"#, "at /type: "),
            (
                r#"{"required":"query"}"#,
                r#"at /required: "query" is not of type "array""#,
            ),
            (
                r#"{"properties":{"q":{"pattern":"("}}}"#,
                "at /properties/q/pattern: ",
            ),
            (
                r#"{"$ref":"http://example.com/s.json"}"#,
                "http://example.com/s.json",
            ),
        ] {
            let e = Schema::compile(text)
                .err()
                .unwrap_or_else(|| panic!("{text} compiled"));
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(Schema::compile("true").is_ok());
    }
}
