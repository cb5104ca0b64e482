//! The Search-R1-compatible retrieval server (`igpo serve retrieval`): BM25
//! over an opened [`Index`], spoken over HTTP/1.1 the way Search-R1's (and
//! FlashRAG's) `retrieval_server.py` speaks, so their training loops can point
//! at it unchanged.
//!
//! # Protocol
//!
//! - `POST /retrieve` with a JSON body
//!   `{"queries": ["...", ...], "topk": 3, "return_scores": true}`
//!   (`topk` optional, default [`ServerConfig::default_topk`]; `return_scores`
//!   optional, default false; other fields ignored). The answer is
//!   `{"result": [[{"document": {"id": "...", "contents": "\"Title\"\ntext"},
//!   "score": 12.5}, ...], ...]}`: one list per query, in query order, best
//!   first (ties by corpus order), at most `topk` long (shorter when fewer
//!   documents share a term with the query). Without `return_scores` each item
//!   is the document object alone, as Search-R1's server answers. `contents`
//!   is the title in double quotes, a newline, then the text; scores are the
//!   f32 BM25 scores written as f64, so they parse back to the same bits.
//! - `GET /health`: `{"status": "ok", "documents": N}`.
//!
//! Every answer, errors included, is JSON with `content-type:
//! application/json`; an error is `{"error": "<one line>"}` with status 400
//! (body not UTF-8, not JSON, wrong types, no `queries`; `topk` outside
//! `1..=max_topk`; more than `max_queries` queries; a query over
//! `max_query_chars` characters), 413 (body over `max_body_bytes`), 404
//! (another path), 405 (another method, with `allow`), 408 (a body not sent
//! within `read_timeout`) or 500 (the index could not be read).
//!
//! # Why the blocking pool
//!
//! A search reads posting lists and documents from files with ordinary
//! (positioned, blocking) reads and spends CPU ranking them, so it must not run
//! on the async workers that drive the connections: each request's queries run
//! in tokio's blocking pool (`spawn_blocking`), split into at most one chunk
//! per core so that one large batch uses them all. The [`Index`] is shared
//! read-only between those threads in an `Arc`.
//!
//! Connections are HTTP/1.1 with keep-alive (hyper); shutdown is graceful:
//! the listener closes, idle connections close, and requests in flight finish
//! (for up to [`ServerConfig::shutdown_grace`]) before [`serve`] returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket};

use crate::{Bm25, Document, Index, IndexError};

/// How the server listens, what it accepts and how it ranks.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port (see [`bind`]).
    pub addr: SocketAddr,
    /// `topk` when a request has none.
    pub default_topk: usize,
    /// The largest `topk` a request may ask for.
    pub max_topk: usize,
    /// The most queries in one request.
    pub max_queries: usize,
    /// The largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// The longest query, in characters.
    pub max_query_chars: usize,
    /// One line per request on stderr: method, path, status, queries, ms.
    pub log_requests: bool,
    /// Connections the kernel holds before they are accepted.
    pub backlog: u32,
    /// How long a client may take to send a request's headers, and its body.
    pub read_timeout: Duration,
    /// How long shutdown waits for requests in flight before giving up on them.
    pub shutdown_grace: Duration,
    /// The BM25 knobs.
    pub params: Bm25,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            default_topk: 3,
            max_topk: 100,
            max_queries: 256,
            max_body_bytes: 4 << 20,
            max_query_chars: 64 << 10,
            log_requests: false,
            backlog: 1024,
            read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            params: Bm25::default(),
        }
    }
}

impl ServerConfig {
    /// The one-line reason this configuration cannot serve, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        self.params.check()?;
        if self.max_topk == 0 || self.max_queries == 0 || self.max_query_chars == 0 {
            return Err("max_topk, max_queries and max_query_chars must be at least 1".into());
        }
        if self.default_topk == 0 || self.default_topk > self.max_topk {
            return Err(format!(
                "default_topk {} is not between 1 and max_topk {}",
                self.default_topk, self.max_topk
            ));
        }
        Ok(())
    }
}

/// A listening socket not yet serving: [`bind`] it, read [`Bound::local_addr`]
/// (the port chosen when the configured one was 0), then [`Bound::run`].
pub struct Bound {
    pub local_addr: SocketAddr,
    listener: TcpListener,
    cfg: ServerConfig,
}

/// Checks `cfg` and binds its address.
pub async fn bind(cfg: ServerConfig) -> io::Result<Bound> {
    cfg.check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let socket = if cfg.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(cfg.addr)?;
    // Not tokio's default of 128: a training run opens hundreds of
    // connections at once, and an overflowing accept queue resets some.
    let listener = socket.listen(cfg.backlog)?;
    Ok(Bound {
        local_addr: listener.local_addr()?,
        listener,
        cfg,
    })
}

/// Binds `cfg.addr` and serves `index` until `shutdown` resolves; returns once
/// the requests in flight have been answered (see [`Bound::run`]).
pub async fn serve(
    index: Arc<Index>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    bind(cfg).await?.run(index, shutdown).await
}

/// For the CLI: builds a runtime, binds, prints `serving N documents on
/// http://ADDR/retrieve` to stderr and serves until SIGINT or SIGTERM.
pub fn run_blocking(index: Index, cfg: ServerConfig) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("igpo-retrieval")
        .build()
        .map_err(|e| format!("cannot start the server's runtime: {e}"))?;
    rt.block_on(async move {
        let addr = cfg.addr;
        let bound = bind(cfg)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        eprintln!(
            "serving {} documents on http://{}/retrieve",
            index.len(),
            bound.local_addr
        );
        bound
            .run(Arc::new(index), stop_signal())
            .await
            .map_err(|e| format!("the server stopped: {e}"))
    })
}

/// Resolves on SIGINT (ctrl-c) or, on unix, SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler could be installed: never stop on ctrl-c.
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => eprintln!("interrupted: finishing the requests in flight"),
        _ = term => eprintln!("terminated: finishing the requests in flight"),
    }
}

impl Bound {
    /// Serves `index` on the bound socket until `shutdown` resolves, then stops
    /// accepting, closes idle connections and waits (up to
    /// `cfg.shutdown_grace`) for the requests in flight to be answered.
    pub async fn run(
        self,
        index: Arc<Index>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let Bound { listener, cfg, .. } = self;
        let state = Arc::new(State {
            index,
            cfg,
            chunks: std::thread::available_parallelism().map_or(1, |n| n.get()),
        });
        let graceful = GracefulShutdown::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(state.cfg.read_timeout)
            .keep_alive(true);
        tokio::pin!(shutdown);
        let mut last_accept_error = None;
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, a connection reset before
                        // it was accepted...: keep serving the others.
                        let quiet = last_accept_error
                            .is_some_and(|t: Instant| t.elapsed() < Duration::from_secs(10));
                        if state.cfg.log_requests || !quiet {
                            eprintln!("accept: {e}");
                            last_accept_error = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.handle(req).await) }
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                // A client that went away, or sent something that is not
                // HTTP: hyper has answered what it could; nothing to do.
                let _ = conn.await;
            });
        }
        drop(listener);
        let grace = state.cfg.shutdown_grace;
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(grace) => {
                eprintln!("shutdown: requests still in flight after {grace:?}, leaving them");
            }
        }
        Ok(())
    }
}

/// What every connection shares.
struct State {
    index: Arc<Index>,
    cfg: ServerConfig,
    /// Blocking tasks a request's queries are split into, at most.
    chunks: usize,
}

/// An answer before it becomes a response.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Reply {
    fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                body,
                allow: None,
            },
            Err(e) => Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the answer: {e}"),
            ),
        }
    }

    fn error(status: StatusCode, why: impl Into<String>) -> Reply {
        let why: String = why.into();
        // One line, whatever the cause's text held.
        let why = why.replace(['\n', '\r'], " ");
        Reply {
            status,
            body: serde_json::json!({ "error": why }).to_string().into_bytes(),
            allow: None,
        }
    }

    fn allow(mut self, methods: &'static str) -> Reply {
        self.allow = Some(methods);
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = self.allow {
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(a));
        }
        r
    }
}

/// The body of `POST /retrieve`.
#[derive(Deserialize)]
struct RetrieveRequest {
    queries: Vec<String>,
    #[serde(default)]
    topk: Option<u64>,
    #[serde(default)]
    return_scores: Option<bool>,
}

#[derive(Serialize)]
struct DocumentOut {
    id: String,
    contents: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Item {
    Scored { document: DocumentOut, score: f64 },
    Plain(DocumentOut),
}

#[derive(Serialize)]
struct RetrieveResponse {
    result: Vec<Vec<Item>>,
}

impl State {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if (path.as_str(), &method) == ("/retrieve", &Method::POST) {
            let (reply, queries) = self.retrieve(req).await;
            return self.finish(reply, &method, &path, queries, start);
        }
        // Whatever the answer, read the body (if any, up to the limits) so
        // the connection stays usable and the client reads the answer.
        let _ = self.read_body(req).await;
        let reply = match (path.as_str(), &method) {
            ("/retrieve", _) => Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} /retrieve: use POST"),
            )
            .allow("POST"),
            ("/health", &Method::GET) => Reply::json(
                StatusCode::OK,
                &serde_json::json!({ "status": "ok", "documents": self.index.len() }),
            ),
            ("/health", _) => Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} /health: use GET"),
            )
            .allow("GET"),
            _ => Reply::error(
                StatusCode::NOT_FOUND,
                format!(
                    "no {}: the paths are POST /retrieve and GET /health",
                    short(&path, 200)
                ),
            ),
        };
        self.finish(reply, &method, &path, 0, start)
    }

    /// Logs the request if asked to, and makes the response.
    fn finish(
        &self,
        reply: Reply,
        method: &Method,
        path: &str,
        queries: usize,
        start: Instant,
    ) -> Response<Full<Bytes>> {
        if self.cfg.log_requests {
            eprintln!(
                "{method} {} {} queries={queries} {:.1}ms",
                short(path, 200),
                reply.status.as_u16(),
                start.elapsed().as_secs_f64() * 1e3
            );
        }
        reply.into_response()
    }

    /// `POST /retrieve`: the reply and the number of queries it answered.
    async fn retrieve(&self, req: Request<Incoming>) -> (Reply, usize) {
        let body = match self.read_body(req).await {
            Ok(b) => b,
            Err(reply) => return (reply, 0),
        };
        let request = match parse_request(&body) {
            Ok(r) => r,
            Err(why) => return (Reply::error(StatusCode::BAD_REQUEST, why), 0),
        };
        let cfg = &self.cfg;
        let n = request.queries.len();
        let topk = request.topk.unwrap_or(cfg.default_topk as u64);
        if topk == 0 || topk > cfg.max_topk as u64 {
            let why = format!(
                "topk {topk} is not between 1 and {} (this server's limit)",
                cfg.max_topk
            );
            return (Reply::error(StatusCode::BAD_REQUEST, why), n);
        }
        if n > cfg.max_queries {
            let why = format!(
                "{n} queries in one request; this server takes at most {}",
                cfg.max_queries
            );
            return (Reply::error(StatusCode::BAD_REQUEST, why), n);
        }
        if let Some(i) = request
            .queries
            .iter()
            .position(|q| q.chars().count() > cfg.max_query_chars)
        {
            let why = format!(
                "query {i} has {} characters; this server takes at most {}",
                request.queries[i].chars().count(),
                cfg.max_query_chars
            );
            return (Reply::error(StatusCode::BAD_REQUEST, why), n);
        }
        let scores = request.return_scores.unwrap_or(false);
        match self.search(request.queries, topk as usize, scores).await {
            Ok(result) => (Reply::json(StatusCode::OK, &RetrieveResponse { result }), n),
            Err(why) => (Reply::error(StatusCode::INTERNAL_SERVER_ERROR, why), n),
        }
    }

    /// The whole body, or the reply that refuses it. A body over the limit is
    /// read to its end (up to a bound) before the 413 goes out, so the client,
    /// still writing it, reads the answer rather than a reset connection.
    async fn read_body(&self, req: Request<Incoming>) -> Result<Vec<u8>, Reply> {
        let max = self.cfg.max_body_bytes;
        let drain_cap = max.saturating_mul(4).max(16 << 20) as u64;
        let too_large = || {
            Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over this server's limit of {max} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > drain_cap) {
            return Err(too_large());
        }
        let mut body = req.into_body();
        let read = async {
            let mut buf = Vec::with_capacity(declared.map_or(0, |n| n.min(max as u64) as usize));
            let mut seen = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    Reply::error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    seen += data.len() as u64;
                    if seen > max as u64 {
                        if seen > drain_cap {
                            break;
                        }
                    } else {
                        buf.extend_from_slice(&data);
                    }
                }
            }
            if seen > max as u64 {
                Err(too_large())
            } else {
                Ok(buf)
            }
        };
        match tokio::time::timeout(self.cfg.read_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(Reply::error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    self.cfg.read_timeout
                ),
            )),
        }
    }

    /// Every query's hits, in query order, computed on the blocking pool.
    async fn search(
        &self,
        queries: Vec<String>,
        k: usize,
        scores: bool,
    ) -> Result<Vec<Vec<Item>>, String> {
        if queries.is_empty() {
            return Ok(vec![]);
        }
        let per_task = queries.len().div_ceil(self.chunks).max(1);
        let mut tasks = Vec::new();
        let mut queries = queries.into_iter();
        loop {
            let chunk: Vec<String> = queries.by_ref().take(per_task).collect();
            if chunk.is_empty() {
                break;
            }
            let index = self.index.clone();
            let params = self.cfg.params;
            tasks.push(tokio::task::spawn_blocking(move || {
                chunk
                    .iter()
                    .map(|q| search_one(&index, q, k, params, scores))
                    .collect::<Result<Vec<_>, IndexError>>()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(lists)) => out.extend(lists),
                Ok(Err(e)) => return Err(format!("the index could not be read: {e}")),
                Err(e) => return Err(format!("a search failed: {e}")),
            }
        }
        Ok(out)
    }
}

fn search_one(
    index: &Index,
    query: &str,
    k: usize,
    params: Bm25,
    scores: bool,
) -> Result<Vec<Item>, IndexError> {
    index
        .search(query, k, params)?
        .into_iter()
        .map(|hit| {
            let Document { id, title, text } = index.document(hit.doc)?;
            let document = DocumentOut {
                id,
                contents: format!("\"{title}\"\n{text}"),
            };
            Ok(if scores {
                Item::Scored {
                    document,
                    score: hit.score as f64,
                }
            } else {
                Item::Plain(document)
            })
        })
        .collect()
}

/// The body of `POST /retrieve`, or the one-line reason it is not one.
fn parse_request(body: &[u8]) -> Result<RetrieveRequest, String> {
    let text =
        std::str::from_utf8(body).map_err(|e| format!("the request body is not UTF-8: {e}"))?;
    // serde would take `[["q"]]` as the struct's fields in order: a request
    // is an object, as Search-R1's server requires.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err("the request body is not a JSON object".into());
    }
    serde_json::from_str(text).map_err(|e| {
        let shape = r#"{"queries": [strings], "topk": integer, "return_scores": bool}"#;
        format!("the request body is not {shape}: {e}")
    })
}

/// `s`, cut to at most `max` characters for a log line or an error.
fn short(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
