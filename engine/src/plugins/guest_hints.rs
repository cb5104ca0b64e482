//! Advice for plugin authors: traps whose cause is a known mistake in a
//! guest toolchain's conventions, recognised by what the guest wrote to
//! stderr, get a sentence saying what to do instead. Only JavaScript
//! (componentize-js) needs it so far: its bindings turn a thrown value that
//! is not the declared error type into a trap.

/// The advice for a trap of `call` (the WIT function) with this stderr
/// tail, if the tail is a known mistake.
pub(crate) fn advice(call: &str, stderr: &str) -> Option<String> {
    // componentize-js lowering a thrown value into `tool-error`: the variant
    // has no `tag` (an Error object, a plain object, a string...).
    if stderr.contains("specified for `ToolError`") {
        return Some(
            "JavaScript: `call` must return a string, or throw \
             { tag: 'invalid-arguments' | 'failed', val: 'message' }; it threw something \
             else (an Error object?): catch it and throw the tagged object"
                .into(),
        );
    }
    // A string slot got something else: a field of `describe`'s record, what
    // `call` returned (or a thrown tag's `val`), or an error of a
    // `result<_, string>` export. An Error object's message is lost on the way.
    if stderr.contains("expected a string, received [") {
        return match call {
            "describe" => Some(
                "JavaScript: a field of what `describe` returned is not a string; \
                 record fields are camelCase (configSchema, parametersSchema)"
                    .into(),
            ),
            "call" => Some(
                "JavaScript: `call` must return a string (JSON.stringify an object), and a \
                 thrown { tag, val } must have a string `val`"
                    .into(),
            ),
            "init" | "score" | "len" | "get" => Some(format!(
                "JavaScript: `{call}` must throw a string as its error \
                 (e.g. throw `config: ${{e.message}}`); it threw an Error or another \
                 object, and its message is lost"
            )),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn componentize_js_traps_get_advice_and_others_do_not() {
        // Tails as the host quoted them for componentize-js 0.23 guests.
        let call = "invalid variant tag value `undefined` (received `Error: boom`) specified \
                    for `ToolError` | Stack: | export_toolApi_0_1_0$call@/tmp/x/initializer.js:230:17";
        assert!(advice("call", call)
            .unwrap()
            .contains("{ tag: 'invalid-arguments'"));
        let init = "expected a string, received [object] | Stack: | _utf8AllocateAndEncode@x:18:11";
        let a = advice("init", init).unwrap();
        assert!(a.contains("`init` must throw a string"), "{a}");
        let describe = "expected a string, received [undefined] | Stack: | x";
        assert!(advice("describe", describe).unwrap().contains("camelCase"));
        let returned = "expected a string, received [object] | Stack: | x";
        assert!(advice("call", returned).unwrap().contains("JSON.stringify"));
        assert_eq!(advice("instantiate", returned), None);
        assert_eq!(
            advice("call", "thread 'main' panicked at src/lib.rs:3:5"),
            None
        );
    }
}
