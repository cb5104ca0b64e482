//! The retrieval server over a real socket, spoken to by a hand-written
//! HTTP/1.1 client: its answers against `Index::search` bit for bit, its
//! errors, a seeded fuzz of request bodies plus 500 connections at once, and a
//! graceful shutdown.
#![cfg(feature = "server")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use igpo_retrieval::serve::{self, ServerConfig};
use igpo_retrieval::text::passage_tokens;
use igpo_retrieval::{Bm25, Document, Index, IndexWriter};
use serde_json::{json, Value};

mod common;
use common::{corpus, Rng};

/// Builds an index of `docs` in a fresh scratch folder and opens it.
fn index(name: &str, docs: &[Document]) -> (Arc<Index>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("igpo-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = IndexWriter::create(&dir, 1 << 20).unwrap();
    for d in docs {
        w.add(d, passage_tokens(&d.title, &d.text).collect())
            .unwrap();
    }
    w.finish().unwrap();
    (Arc::new(Index::open(&dir).unwrap()), dir)
}

/// A server on 127.0.0.1:<free port>, in its own runtime and thread.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(index: Arc<Index>, cfg: ServerConfig) -> Server {
        let cfg = ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..cfg
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let bound = serve::bind(cfg).await?;
                addr_tx.send(bound.local_addr).unwrap();
                bound
                    .run(index, async {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = addr_rx.recv().expect("the server did not bind");
        Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: Option<String>,
    allow: Option<String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a well-formed JSON error with `status`; returns its message.
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type.as_deref(), Some("application/json"));
        let v = self.json();
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string: {v}"))
            .to_string();
        assert!(!e.is_empty() && !e.contains('\n'), "{e:?}");
        e
    }
}

/// A request's line and headers.
fn head(method: &str, path: &str, body_len: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {body_len}\r\n\r\n"
    )
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<()> {
        let head = head(method, path, body.len());
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut content_type, mut allow) = (0usize, None, None);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let v = v.trim().to_string();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap(),
                "content-type" => content_type = Some(v),
                "allow" => allow = Some(v),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Resp {
            status,
            content_type,
            allow,
            body,
        })
    }

    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Resp> {
        self.send(method, path, body)?;
        self.read()
    }
}

/// One request on a fresh connection.
fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
    Conn::open(addr).unwrap().call(method, path, body).unwrap()
}

/// What the index itself answers, as the server should write it.
fn expected(ix: &Index, q: &str, k: usize) -> Vec<(String, String, f32)> {
    ix.search(q, k, Bm25::default())
        .unwrap()
        .iter()
        .map(|h| {
            let d = ix.document(h.doc).unwrap();
            (d.id, format!("\"{}\"\n{}", d.title, d.text), h.score)
        })
        .collect()
}

fn random_query(r: &mut Rng) -> String {
    let n = 1 + r.below(5);
    (0..n)
        .map(|_| match r.below(6) {
            0 => "the".to_string(),
            1 => format!("W{}", r.below(50)),
            2 => "zzz-unknown".to_string(),
            _ => format!("w{}", r.below(400)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn good_request(addr: SocketAddr) {
    let r = call(
        addr,
        "POST",
        "/retrieve",
        br#"{"queries": ["w1 w2"], "topk": 2}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"][0].as_array().unwrap().len(), 2);
}

#[test]
fn retrieve_answers_what_the_index_answers_bit_for_bit() {
    let docs = corpus(1500, 11);
    let (ix, dir) = index("equal", &docs);
    let server = Server::start(ix.clone(), ServerConfig::default());
    let mut r = Rng(5);
    let queries: Vec<String> = (0..30).map(|_| random_query(&mut r)).collect();
    let mut conn = Conn::open(server.addr).unwrap();
    let (mut compared, mut requests) = (0, 0);
    for k in [1usize, 3, 10] {
        for scores in [true, false] {
            // Several queries per request, in uneven groups.
            let mut at = 0;
            while at < queries.len() {
                let n = (1 + r.below(7) as usize).min(queries.len() - at);
                let group = &queries[at..at + n];
                at += n;
                let body =
                    json!({"queries": group, "topk": k, "return_scores": scores}).to_string();
                let resp = conn.call("POST", "/retrieve", body.as_bytes()).unwrap();
                requests += 1;
                assert_eq!(resp.status, 200);
                assert_eq!(resp.content_type.as_deref(), Some("application/json"));
                let v = resp.json();
                let result = v["result"].as_array().unwrap();
                assert_eq!(result.len(), group.len());
                for (q, got) in group.iter().zip(result) {
                    let want = expected(&ix, q, k);
                    let got = got.as_array().unwrap();
                    assert_eq!(got.len(), want.len(), "{q:?} k={k}");
                    for (g, (id, contents, score)) in got.iter().zip(&want) {
                        let doc = if scores {
                            let s = g["score"].as_f64().unwrap() as f32;
                            assert_eq!(s.to_bits(), score.to_bits(), "{q:?} k={k}: score");
                            assert_eq!(g.as_object().unwrap().len(), 2);
                            &g["document"]
                        } else {
                            assert!(
                                g.get("score").is_none() && g.get("document").is_none(),
                                "{g}"
                            );
                            g
                        };
                        assert_eq!(doc["id"].as_str().unwrap(), id, "{q:?} k={k}: rank order");
                        assert_eq!(doc["contents"].as_str().unwrap(), contents);
                        compared += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 300, "{compared}");
    assert!(requests > 10, "{requests}");
    // The default topk (3) and return_scores (false).
    let resp = conn
        .call("POST", "/retrieve", br#"{"queries": ["w0 w1", ""]}"#)
        .unwrap();
    let v = resp.json();
    let want = expected(&ix, "w0 w1", 3);
    let got = v["result"][0].as_array().unwrap();
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["id"].as_str().unwrap(), w.0);
    }
    assert_eq!(
        v["result"][1],
        json!([]),
        "a query without terms finds nothing"
    );
    let resp = conn
        .call("POST", "/retrieve", br#"{"queries": []}"#)
        .unwrap();
    assert_eq!((resp.status, resp.json()), (200, json!({"result": []})));
    let health = conn.call("GET", "/health", b"").unwrap();
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok", "documents": 1500}))
    );
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_one_json_error_and_the_server_goes_on() {
    let docs = corpus(300, 3);
    let (ix, dir) = index("errors", &docs);
    // With the request log on (stderr, captured by the test harness).
    let cfg = ServerConfig {
        log_requests: true,
        ..ServerConfig::default()
    };
    let server = Server::start(ix, cfg);
    let addr = server.addr;
    let thousand = json!({"queries": vec!["w1"; 1000]}).to_string();
    let five_mib = format!(r#"{{"queries": ["{}"]}}"#, "w1 ".repeat((5 << 20) / 3 + 10));
    assert!(five_mib.len() > 5 << 20);
    let one_mb_query = format!(r#"{{"queries": ["{}"]}}"#, "w1 ".repeat(1_000_000 / 3));
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/retrieve",
            b"{\"queries\": [\"w1\"".to_vec(),
            400,
            "not",
        ),
        (
            "POST",
            "/retrieve",
            b"{\"queries\": 5}".to_vec(),
            400,
            "invalid type",
        ),
        (
            "POST",
            "/retrieve",
            b"{\"topk\": 3}".to_vec(),
            400,
            "missing field",
        ),
        (
            "POST",
            "/retrieve",
            b"{\"queries\": [\"w1 \xff\xfe\"]}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "POST",
            "/retrieve",
            b"{\"queries\": [\"w1\"], \"topk\": 0}".to_vec(),
            400,
            "100",
        ),
        (
            "POST",
            "/retrieve",
            b"{\"queries\": [\"w1\"], \"topk\": 1000000000}".to_vec(),
            400,
            "100",
        ),
        (
            "POST",
            "/retrieve",
            b"{\"queries\": [\"w1\"], \"topk\": -1}".to_vec(),
            400,
            "invalid value",
        ),
        ("POST", "/retrieve", thousand.into_bytes(), 400, "256"),
        ("POST", "/retrieve", five_mib.into_bytes(), 413, "4194304"),
        // A 1 MB query is within the body limit, over the query limit: 400.
        ("POST", "/retrieve", one_mb_query.into_bytes(), 400, "65536"),
        ("GET", "/retrieve", vec![], 405, "POST"),
        ("POST", "/health", vec![], 405, "GET"),
        ("GET", "/nope", vec![], 404, "/nope"),
        ("POST", "/", b"{}".to_vec(), 404, "/retrieve"),
    ];
    for (method, path, body, status, says) in cases {
        let mut c = Conn::open(addr).unwrap();
        let resp = c.call(method, path, &body).unwrap();
        let e = resp.error(status);
        assert!(
            e.contains(says),
            "{method} {path} -> {status}: {e:?} should say {says:?}"
        );
        if status == 405 {
            assert_eq!(resp.allow.as_deref(), Some(says));
        }
        // The same connection still answers (the body was read to its end).
        let again = c
            .call("GET", "/health", b"")
            .unwrap_or_else(|e| panic!("after {method} {path} {status}: {e}"));
        assert_eq!(again.status, 200, "after {method} {path}");
        good_request(addr);
    }
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A body to throw at `/retrieve`: valid, nearly valid or garbage.
fn fuzz_body(r: &mut Rng) -> Vec<u8> {
    let valid = |r: &mut Rng| {
        let n = r.below(6) as usize;
        let qs: Vec<String> = (0..n).map(|_| random_query(r)).collect();
        let mut v = json!({ "queries": qs });
        match r.below(4) {
            0 => {}
            1 => v["topk"] = json!(1 + r.below(100)),
            2 => v["topk"] = json!(r.below(300)),
            _ => v["topk"] = json!(r.next()),
        }
        if r.below(2) == 0 {
            v["return_scores"] = json!(r.below(2) == 0);
        }
        v.to_string().into_bytes()
    };
    let unicode = [
        "é", "日本", "🦀", "\u{202e}", "\u{0301}", "\u{0}", "\u{fffd}", "Ω", "w1", " ", "\t",
    ];
    match r.below(12) {
        0 | 1 => valid(r),
        2 => {
            // Truncated.
            let mut b = valid(r);
            let cut = r.below(b.len() as u64 + 1) as usize;
            b.truncate(cut);
            b
        }
        3 => {
            // Bytes flipped.
            let mut b = valid(r);
            for _ in 0..1 + r.below(4) {
                let i = r.below(b.len() as u64) as usize;
                b[i] = r.next() as u8;
            }
            b
        }
        4 => (0..r.below(300)).map(|_| r.next() as u8).collect(),
        5 => {
            let huge = [
                "1e400",
                "-1e400",
                "99999999999999999999999999",
                "-0",
                "1.5",
                "0",
                "18446744073709551615",
                "18446744073709551616",
                "NaN",
                "null",
                "true",
                "\"3\"",
                "[3]",
            ];
            let h = huge[r.below(huge.len() as u64) as usize];
            match r.below(3) {
                0 => format!(r#"{{"queries": ["w1"], "topk": {h}}}"#),
                1 => format!(r#"{{"queries": ["w1"], "return_scores": {h}}}"#),
                _ => format!(r#"{{"queries": {h}}}"#),
            }
            .into_bytes()
        }
        6 => {
            // Nested arrays, some deep enough for the parser's recursion limit.
            let depth = [1, 2, 10, 127, 129, 3000, 5000][r.below(7) as usize];
            let inner = format!("{}\"w1\"{}", "[".repeat(depth), "]".repeat(depth));
            match r.below(2) {
                0 => format!(r#"{{"queries": {inner}}}"#).into_bytes(),
                _ => inner.into_bytes(),
            }
        }
        7 => {
            let n = r.below(4) as usize;
            let empty = vec![""; n];
            json!({"queries": empty, "topk": 1 + r.below(5)})
                .to_string()
                .into_bytes()
        }
        8 => {
            let qs: Vec<String> = (0..1 + r.below(4))
                .map(|_| {
                    (0..r.below(20))
                        .map(|_| unicode[r.below(unicode.len() as u64) as usize])
                        .collect()
                })
                .collect();
            json!({"queries": qs, "return_scores": true})
                .to_string()
                .into_bytes()
        }
        9 => {
            // Escapes: lone surrogates, a valid pair, control characters.
            let e = [
                r"\ud800",
                r"\udc00x",
                r"\ud83e\udd80",
                r"\u0000",
                r"\n",
                r"\x",
                r"\uZZZZ",
            ];
            format!(
                r#"{{"queries": ["w1 {}"]}}"#,
                e[r.below(e.len() as u64) as usize]
            )
            .into_bytes()
        }
        10 => {
            let shapes = [
                "",
                "{}",
                "[]",
                "null",
                "\"queries\"",
                "{\"queries\": null}",
                "{\"queries\": [null]}",
                "{\"queries\": [1, 2]}",
                "{\"queries\": {\"a\": \"b\"}}",
                "{\"queries\": [\"w1\"]} trailing",
                "{\"queries\": [\"w1\"], \"queries\": [\"w2\"]}",
                "{\"queries\": [\"w1\"], \"extra\": [1, {}]}",
                "\u{feff}{\"queries\": [\"w1\"]}",
                "{\"queries\":[\"w1\"],}",
            ];
            shapes[r.below(shapes.len() as u64) as usize]
                .as_bytes()
                .to_vec()
        }
        _ => {
            // Many queries, around the limit of 256.
            let n = [255usize, 256, 257, 300][r.below(4) as usize];
            json!({"queries": vec!["w3 w4"; n], "topk": 1})
                .to_string()
                .into_bytes()
        }
    }
}

/// One of the connections open at once: connects, waits for the others,
/// then sends one valid request.
fn concurrent_client(addr: SocketAddr, i: usize, barrier: &Barrier) {
    let mut conn = Conn::open(addr).unwrap();
    barrier.wait();
    let q = format!("w{} w{}", i % 400, (i * 7) % 400);
    let body = json!({"queries": [q, "w1"], "topk": 1 + i % 10, "return_scores": true});
    let resp = conn
        .call("POST", "/retrieve", body.to_string().as_bytes())
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["result"].as_array().unwrap().len(), 2);
}

#[test]
fn fuzzed_bodies_and_500_connections_get_well_formed_answers() {
    let started = Instant::now();
    let docs = corpus(800, 9);
    let (ix, dir) = index("fuzz", &docs);
    // A small body limit, so that some fuzzed bodies are over it.
    let cfg = ServerConfig {
        max_body_bytes: 8 << 10,
        ..ServerConfig::default()
    };
    let server = Server::start(ix, cfg);
    let addr = server.addr;
    // Bodies from four client threads, each on one keep-alive connection
    // (opened again should the server close it).
    let per_thread = 500;
    let clients: Vec<JoinHandle<(usize, [usize; 3])>> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let mut conn = Conn::open(addr).unwrap();
                let (mut tried, mut by_status) = (0, [0usize; 3]);
                for _ in 0..per_thread {
                    let body = fuzz_body(&mut r);
                    let resp = match conn.call("POST", "/retrieve", &body) {
                        Ok(resp) => resp,
                        Err(_) => {
                            conn = Conn::open(addr).unwrap();
                            conn.call("POST", "/retrieve", &body).unwrap()
                        }
                    };
                    tried += 1;
                    let body_text = String::from_utf8_lossy(&body);
                    assert_eq!(
                        resp.content_type.as_deref(),
                        Some("application/json"),
                        "{body_text:?}"
                    );
                    let v = resp.json();
                    match resp.status {
                        200 => {
                            let sent: Value = serde_json::from_slice(&body).unwrap();
                            let n = sent["queries"]
                                .as_array()
                                .unwrap_or_else(|| panic!("{body_text:?} -> {v}"))
                                .len();
                            assert_eq!(v["result"].as_array().unwrap().len(), n, "{body_text:?}");
                            by_status[0] += 1;
                        }
                        400 => {
                            resp.error(400);
                            by_status[1] += 1;
                        }
                        413 => by_status[2] += 1,
                        s => panic!("status {s} for {body_text:?}: {v}"),
                    }
                }
                (tried, by_status)
            })
        })
        .collect();
    let (mut tried, mut by_status) = (0, [0usize; 3]);
    for c in clients {
        let (t, s) = c.join().unwrap();
        tried += t;
        for i in 0..3 {
            by_status[i] += s[i];
        }
    }
    assert!(
        by_status[0] > 200 && by_status[1] > 200 && by_status[2] > 10,
        "{by_status:?}"
    );

    // 500 connections open at once (fewer at a time if the descriptor limit
    // is low: each connection costs two here, client and server).
    let soft_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    let wave = 500.min(soft_limit.saturating_sub(128) / 2).max(1);
    let mut concurrent = 0;
    while concurrent < 500 {
        let n = wave.min(500 - concurrent);
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<JoinHandle<()>> = (0..n)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn(move || concurrent_client(addr, i, &barrier))
                    .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        concurrent += n;
    }
    tried += concurrent;
    let [ok, bad, large] = by_status;
    let fuzzed = tried - concurrent;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {tried} requests ({fuzzed} fuzzed bodies: {ok} answered 200, {bad} 400, \
         {large} 413; {concurrent} concurrent connections, {wave} at a time) in {secs:.1}s"
    );
    good_request(addr);
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shutdown_finishes_the_request_in_flight_then_serve_returns() {
    let docs = corpus(200, 4);
    let (ix, dir) = index("shutdown", &docs);
    let mut server = Server::start(ix.clone(), ServerConfig::default());
    let addr = server.addr;
    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = Conn::open(addr).unwrap();
    assert_eq!(idle.call("GET", "/health", b"").unwrap().status, 200);
    // A request in flight: headers and half the body sent.
    let body = br#"{"queries": ["w1 w2", "w3"], "topk": 4}"#;
    let mut busy = Conn::open(addr).unwrap();
    let head = head("POST", "/retrieve", body.len());
    let s = busy.reader.get_mut();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = server.stop.take().unwrap().send(());
    std::thread::sleep(Duration::from_millis(300));
    let thread = server.thread.take().unwrap();
    assert!(
        !thread.is_finished(),
        "serve returned with a request in flight"
    );
    // The listener is closed: no new connections.
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
    busy.reader.get_mut().write_all(&body[10..]).unwrap();
    let resp = busy.read().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["result"][0].as_array().unwrap().len(), 4);
    let t = Instant::now();
    while !thread.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "serve did not return after its last request"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap().expect("serve returns Ok");
    // The idle connection was closed by the server.
    let mut rest = Vec::new();
    let closed = idle.reader.read_to_end(&mut rest);
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // `serve` itself: Ok once its shutdown resolves; a bad configuration is an error.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    rt.block_on(serve::serve(ix.clone(), cfg.clone(), async {}))
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.block_on(async {
        let run = tokio::spawn(serve::serve(ix.clone(), cfg.clone(), async {
            let _ = rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        run.await.unwrap().unwrap();
    });
    let bad = ServerConfig {
        default_topk: 0,
        ..cfg
    };
    let e = rt.block_on(serve::serve(ix, bad, async {})).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let _ = std::fs::remove_dir_all(&dir);
}
