//! `bad-schema`: a test component (never ship it) whose `parameters_schema`
//! is JSON but not a JSON Schema (`"type": "strng"`): `igpo plugin check`
//! and loading must refuse it.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;

struct BadSchema;

impl Guest for BadSchema {
    fn describe() -> ToolInfo {
        ToolInfo {
            info: PluginInfo {
                name: "bad-schema".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Test component: declares an invalid schema.".into(),
                config_schema: r#"{"type":"object"}"#.into(),
            },
            parameters_schema: r#"{"type":"object","properties":{"query":{"type":"strng"}}}"#
                .into(),
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn call(arguments: String) -> Result<String, ToolError> {
        Ok(arguments)
    }
}

export!(BadSchema);
