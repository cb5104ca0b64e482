//! `hostile`: a test component that misbehaves on request, so the host's
//! sandbox can be tested (never ship it). The argument object picks the
//! attack: `{"mode": "loop" | "bomb" | "panic" | "big" | "badutf8" | "read"
//! | "write" | "env" | "connect" | "list" | "echo", ...}`.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;
use serde::Deserialize;

#[derive(Deserialize)]
struct Args {
    mode: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    bytes: usize,
}

struct Hostile;

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

impl Guest for Hostile {
    fn describe() -> ToolInfo {
        ToolInfo {
            info: PluginInfo {
                name: "hostile".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Test component: misbehaves on request.".into(),
                config_schema: r#"{"type":"object"}"#.into(),
            },
            parameters_schema:
                r#"{"type":"object","properties":{"mode":{"type":"string"}},"required":["mode"]}"#
                    .into(),
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn call(arguments: String) -> Result<String, ToolError> {
        let a: Args = serde_json::from_str(&arguments)
            .map_err(|e| ToolError::InvalidArguments(e.to_string()))?;
        match a.mode.as_str() {
            "echo" => Ok(arguments),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "bomb" => {
                // Grow and touch memory until something stops us.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut v = vec![0u8; 16 << 20];
                    v[std::hint::black_box(0)] = 1;
                    hoard.push(std::hint::black_box(v));
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "big" => Ok("x".repeat(a.bytes)),
            "badutf8" => {
                // Lie to the canonical ABI: the host must reject it.
                Ok(unsafe { String::from_utf8_unchecked(vec![b'o', b'k', 0xff, 0xfe]) })
            }
            "read" => std::fs::read_to_string(&a.path)
                .map_err(|e| failed(format!("read {}: {e}", a.path))),
            "write" => std::fs::write(&a.path, b"pwned")
                .map(|_| "wrote".to_string())
                .map_err(|e| failed(format!("write {}: {e}", a.path))),
            "list" => {
                let entries = std::fs::read_dir(&a.path)
                    .map_err(|e| failed(format!("list {}: {e}", a.path)))?;
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Ok(names.join("\n"))
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                if vars.is_empty() {
                    Err(failed("no environment variables visible"))
                } else {
                    Ok(vars.join("\n"))
                }
            }
            "connect" => std::net::TcpStream::connect(a.path.as_str())
                .map(|_| "connected".to_string())
                .map_err(|e| failed(format!("connect {}: {e}", a.path))),
            other => Err(ToolError::InvalidArguments(format!(
                "unknown mode `{other}`"
            ))),
        }
    }
}

export!(Hostile);
