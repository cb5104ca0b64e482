//! `echo`: returns its arguments unchanged. The host's no-op baseline (bench)
//! and the tool the pool tests hammer from many threads.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;

struct Echo;

impl Guest for Echo {
    fn describe() -> ToolInfo {
        ToolInfo {
            info: PluginInfo {
                name: "echo".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Returns its arguments unchanged.".into(),
                config_schema: r#"{"type":"object"}"#.into(),
            },
            parameters_schema: r#"{"type":"object"}"#.into(),
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn call(arguments: String) -> Result<String, ToolError> {
        Ok(arguments)
    }
}

export!(Echo);
