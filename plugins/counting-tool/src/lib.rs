//! `counter`: a test component (never ship it) for the host's schema
//! enforcement. Its schemas are strict, but it checks nothing itself: `init`
//! accepts any config and `call` returns how many calls this instance has
//! entered, so a test can prove that arguments the host refused never
//! reached the guest.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

use std::sync::atomic::{AtomicU64, Ordering};

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;

static CALLS: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Guest for Counter {
    fn describe() -> ToolInfo {
        ToolInfo {
            info: PluginInfo {
                name: "counter".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Test component: counts the calls it gets.".into(),
                config_schema: r#"{"type":"object","additionalProperties":false,"properties":{"prefix":{"type":"string"},"start":{"type":"integer","minimum":0}}}"#.into(),
            },
            parameters_schema: r#"{"type":"object","additionalProperties":false,"properties":{"text":{"type":"string"},"times":{"type":"integer","minimum":1}},"required":["text"]}"#.into(),
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn call(_arguments: String) -> Result<String, ToolError> {
        Ok(format!("calls entered: {}", CALLS.fetch_add(1, Ordering::SeqCst) + 1))
    }
}

export!(Counter);
