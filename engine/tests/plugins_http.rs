//! Outgoing HTTP for tool plugins: `http-search` (built by `cargo xtask
//! plugins`) against a tiny Search-R1 retrieval server in this file, and the
//! host's gate: the allow list, no redirects, timeouts, the body cap, the
//! concurrency cap, and the run going on after each failure.

use crate::plugins_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use igpo::plugins::{PluginError, PluginSpec, SandboxLimits, ToolError, ToolPlugin};
use plugins_support::{host, plugin_dir};
use serde_json::{json, Value};

macro_rules! plugins_or_skip {
    ($test:expr) => {
        match plugin_dir($test) {
            Some(d) => http_search(&d),
            None => return,
        }
    };
}

fn http_search(plugins: &Path) -> PathBuf {
    let p = plugins.join("http-search.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask plugins`",
        p.display()
    );
    p
}

// ------------------------------------------------------ the test server

/// A Search-R1 `/retrieve` server on 127.0.0.1. The query picks the
/// answer: `slow` sleeps 3 s first, `slowish` 300 ms, `stall` stops for 3 s
/// after the first bytes of its body, `big` sends 10 MB,
/// `redirect` a 302 to another origin, `error` a 500, `none` no hits;
/// anything else the first `topk` of three canned passages.
struct Server {
    port: u16,
    /// Requests received.
    requests: Arc<AtomicUsize>,
    /// Most slow answers in progress at once.
    peak: Arc<AtomicUsize>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let (r, p) = (requests.clone(), peak.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, p, n) = (r.clone(), p.clone(), now.clone());
                std::thread::spawn(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(conn, &n, &p);
                });
            }
        });
        Server {
            port,
            requests,
            peak,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    conn.flush()
}

/// Answers one request; `now`/`peak` count the slow answers in progress.
fn serve(mut conn: TcpStream, now: &AtomicUsize, peak: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request_line = line.trim().to_string();
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if request_line != "POST /retrieve HTTP/1.1"
        || request["return_scores"] != json!(true)
        || !request["queries"].is_array()
    {
        let why = format!("bad request: {request_line} {request}");
        return respond(&mut conn, "400 Bad Request", "", why.as_bytes());
    }
    let query = request["queries"][0].as_str().unwrap_or("").to_string();
    let topk = request["topk"].as_u64().unwrap_or(3) as usize;
    match query.as_str() {
        "slow" | "slowish" => {
            let ms = if query == "slow" { 3000 } else { 300 };
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
            now.fetch_sub(1, Ordering::SeqCst);
            respond(&mut conn, "200 OK", "", &canned(topk))
        }
        "redirect" => respond(
            &mut conn,
            "302 Found",
            "location: http://10.0.0.1:80/retrieve\r\n",
            b"",
        ),
        "error" => respond(
            &mut conn,
            "500 Internal Server Error",
            "",
            b"internal failure",
        ),
        "none" => respond(&mut conn, "200 OK", "", br#"{"result": [[]]}"#),
        "stall" => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n{{\"result\""
            )?;
            conn.flush()?;
            std::thread::sleep(Duration::from_millis(3000));
            Ok(())
        }
        "big" => {
            let size = 10 << 20;
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
            )?;
            let chunk = vec![b' '; 64 << 10];
            for _ in 0..size / chunk.len() {
                conn.write_all(&chunk)?;
            }
            Ok(())
        }
        _ => respond(&mut conn, "200 OK", "", &canned(topk)),
    }
}

fn canned(topk: usize) -> Vec<u8> {
    let hits = json!([
        {"document": {"id": "sb50", "contents": "\"Super Bowl 50\"\nSuper Bowl 50 was an American football game."}, "score": 12.34567},
        {"document": {"id": "den", "contents": "\"Denver Broncos\"\nThe Broncos defeated the Panthers."}, "score": 9.5},
        {"document": {"id": 7, "contents": "A passage without a title line."}, "score": 1.0},
    ]);
    let hits: Vec<Value> = hits
        .as_array()
        .unwrap()
        .iter()
        .take(topk)
        .cloned()
        .collect();
    serde_json::to_vec(&json!({ "result": [hits] })).unwrap()
}

/// A port with nothing listening.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------- helpers

fn load(wasm: &Path, config: Value, allow: &[String], limits: SandboxLimits) -> ToolPlugin {
    let spec = PluginSpec::new(wasm)
        .config(config)
        .allow_http(allow.iter().cloned())
        .limits(limits);
    ToolPlugin::load(&host(wasm.parent().unwrap()), &spec).unwrap()
}

fn limits(f: impl FnOnce(&mut SandboxLimits)) -> SandboxLimits {
    let mut l = SandboxLimits {
        instances: 1,
        ..SandboxLimits::default()
    };
    f(&mut l);
    l
}

/// The message of a failed call (a tool error, not a crash).
fn tool_error(r: Result<String, ToolError>) -> String {
    match r {
        Err(ToolError::Failed { message, .. }) => message,
        other => panic!("expected a tool error, got {other:?}"),
    }
}

const GOOD: &str = "Doc 1 (Title: Super Bowl 50) Super Bowl 50 was an American football game.\nDoc 2 (Title: Denver Broncos) The Broncos defeated the Panthers.";

fn good_call(tool: &ToolPlugin) {
    let out = tool
        .call(r#"{"query": "who won super bowl 50", "k": 2}"#)
        .unwrap();
    assert_eq!(out, GOOD);
}

// ---------------------------------------------------------------- tests

#[test]
fn search_r1_answer_is_formatted_like_bm25_search() {
    let wasm = plugins_or_skip!("search_r1_answer_is_formatted_like_bm25_search");
    let server = Server::start();
    let tool = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url()],
        limits(|_| {}),
    );
    assert_eq!(tool.info().name, "search");
    good_call(&tool);
    // k defaults to 3; the third passage has no title line.
    let out = tool.call(r#"{"query": "q"}"#).unwrap();
    assert!(
        out.ends_with("\nDoc 3 (Title: ) A passage without a title line."),
        "{out}"
    );
    assert_eq!(tool.call(r#"{"query": "none"}"#).unwrap(), "No results.");
    let e = tool.call(r#"{"k": 2}"#).unwrap_err();
    assert!(matches!(e, ToolError::InvalidArguments { .. }), "{e}");

    // format, separator, max_chars, max_k; ids as numbers; url with a path.
    let custom = load(
        &wasm,
        json!({"url": format!("{}/", server.url()), "format": "{rank}|{id}|{title}|{text}|{score}",
               "separator": " || ", "max_chars": 10, "max_k": 3}),
        &[format!("http://127.0.0.1:{}/", server.port)],
        limits(|_| {}),
    );
    assert_eq!(
        custom.call(r#"{"query": "q", "k": 50}"#).unwrap(),
        "1|sb50|Super Bowl 50|Super Bowl...|12.346 || 2|den|Denver Broncos|The Bronco...|9.500 || 3|7||A passage ...|1.000"
    );
}

#[test]
fn origins_outside_allow_http_are_refused_before_connecting() {
    let wasm = plugins_or_skip!("origins_outside_allow_http_are_refused_before_connecting");
    let server = Server::start();
    let port = server.port;
    let denied = format!("http: origin http://127.0.0.1:{port} is not in this plugin's allow_http");
    for allow in [
        vec![],
        vec![format!("http://127.0.0.1:{}", port + 1)],
        vec![format!("https://127.0.0.1:{port}")],
        // Compared literally: a name that resolves to the address is not it.
        vec![format!("http://localhost:{port}")],
    ] {
        let tool = load(&wasm, json!({"url": server.url()}), &allow, limits(|_| {}));
        let msg = tool_error(tool.call(r#"{"query": "q"}"#));
        assert_eq!(msg, denied, "allow_http {allow:?}");
    }
    // The other way round: allowed by address, asked by name.
    let tool = load(
        &wasm,
        json!({"url": format!("http://localhost:{port}")}),
        &[server.url()],
        limits(|_| {}),
    );
    let msg = tool_error(tool.call(r#"{"query": "q"}"#));
    assert_eq!(
        msg,
        format!("http: origin http://localhost:{port} is not in this plugin's allow_http")
    );
    assert_eq!(server.requests(), 0, "nothing reached the server");
}

#[test]
fn bad_allow_http_entries_fail_at_load_naming_them() {
    let wasm = plugins_or_skip!("bad_allow_http_entries_fail_at_load_naming_them");
    let spec = PluginSpec::new(&wasm)
        .config(json!({"url": "http://127.0.0.1:1"}))
        .allow_http(["http://127.0.0.1:8000", "127.0.0.1:8000"]);
    let e = ToolPlugin::load(&host(wasm.parent().unwrap()), &spec)
        .err()
        .expect("a load error");
    assert!(matches!(e, PluginError::Spec { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: allow_http: `127.0.0.1:8000`: expected `http://host:port` or `https://host:port`",
            wasm.display()
        )
    );
    // Only tools may have it.
    let reward = wasm.with_file_name("qa-reward.wasm");
    let spec = PluginSpec::new(&reward).allow_http(["http://127.0.0.1:8000"]);
    let e = igpo::plugins::RewardPlugin::load(&host(wasm.parent().unwrap()), &spec)
        .err()
        .expect("a load error");
    assert!(
        e.to_string()
            .contains("allow_http is for tool plugins only"),
        "{e}"
    );
}

#[test]
fn redirects_reach_the_guest_unfollowed() {
    let wasm = plugins_or_skip!("redirects_reach_the_guest_unfollowed");
    let server = Server::start();
    let tool = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url()],
        limits(|_| {}),
    );
    let msg = tool_error(tool.call(r#"{"query": "redirect"}"#));
    assert_eq!(
        msg,
        format!(
            "http: POST {}/retrieve answered status 302 (a redirect to http://10.0.0.1:80/retrieve; redirects are not followed)",
            server.url()
        )
    );
    assert_eq!(server.requests(), 1, "one request, no second one");
    let msg = tool_error(tool.call(r#"{"query": "error"}"#));
    assert_eq!(
        msg,
        format!(
            "http: POST {}/retrieve answered status 500: internal failure",
            server.url()
        )
    );
    good_call(&tool);
}

#[test]
fn slow_servers_time_out_at_the_host_cap_and_the_guest_timeout() {
    // Before the answer (first byte) and in the middle of its body (between
    // bytes).
    let wasm = plugins_or_skip!("slow_servers_time_out_at_the_host_cap_and_the_guest_timeout");
    let server = Server::start();
    let want = format!(
        "http: POST {}/retrieve: timed out waiting for the answer",
        server.url()
    );
    // The host caps the plugin's 10 s at http_timeout_ms = 400.
    let capped = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url()],
        limits(|l| l.http_timeout = Duration::from_millis(400)),
    );
    // The plugin asks for 400 ms itself (the host allows 10 s).
    let asked = load(
        &wasm,
        json!({"url": server.url(), "timeout_ms": 400}),
        &[server.url()],
        limits(|_| {}),
    );
    for (tool, query) in [(&capped, "slow"), (&asked, "slow"), (&capped, "stall")] {
        let start = Instant::now();
        let msg = tool_error(tool.call(&json!({ "query": query }).to_string()));
        let took = start.elapsed();
        assert_eq!(msg, want, "{query}");
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
            "{query}: {took:?}"
        );
        good_call(tool);
    }
}

#[test]
fn long_answers_stop_at_the_body_cap_without_reading_them_whole() {
    let wasm = plugins_or_skip!("long_answers_stop_at_the_body_cap_without_reading_them_whole");
    let server = Server::start();
    let tool = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url()],
        limits(|l| l.http_max_response_bytes = 256 << 10),
    );
    let start = Instant::now();
    let msg = tool_error(tool.call(r#"{"query": "big"}"#));
    let took = start.elapsed();
    assert_eq!(
        msg,
        format!(
            "http: POST {}/retrieve: the answer is longer than the limit of 262144 bytes (http_max_response_bytes)",
            server.url()
        )
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    good_call(&tool);
    // The default cap (1 MiB) says the same.
    let tool = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url()],
        limits(|_| {}),
    );
    let msg = tool_error(tool.call(r#"{"query": "big"}"#));
    assert!(
        msg.ends_with("the limit of 1048576 bytes (http_max_response_bytes)"),
        "{msg}"
    );
}

#[test]
fn a_server_that_is_down_is_a_tool_error() {
    let wasm = plugins_or_skip!("a_server_that_is_down_is_a_tool_error");
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}");
    let tool = load(
        &wasm,
        json!({"url": url}),
        std::slice::from_ref(&url),
        limits(|_| {}),
    );
    for _ in 0..2 {
        let start = Instant::now();
        let msg = tool_error(tool.call(r#"{"query": "q"}"#));
        assert_eq!(
            msg,
            format!("http: cannot connect to {url}: connection refused")
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    // Nothing is left broken: the next plugin works.
    let server = Server::start();
    let tool = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url(), url],
        limits(|_| {}),
    );
    good_call(&tool);
}

#[test]
fn concurrent_requests_are_capped_per_plugin() {
    let wasm = plugins_or_skip!("concurrent_requests_are_capped_per_plugin");
    let server = Server::start();
    let tool = load(
        &wasm,
        json!({"url": server.url()}),
        &[server.url()],
        limits(|l| {
            l.instances = 3;
            l.http_max_concurrent = 1;
        }),
    );
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| tool.call(r#"{"query": "slowish"}"#).unwrap());
        }
    });
    assert_eq!(server.requests(), 3);
    assert_eq!(server.peak.load(Ordering::SeqCst), 1, "one at a time");
}
