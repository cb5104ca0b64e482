//! `igpo bench retrieval`: BM25 at corpus scale. Generates a synthetic corpus
//! from a seed (Zipf-distributed words, about 100 a passage), builds its
//! on-disk index (`igpo data index`'s library call), and measures: build time
//! and peak memory, index size, query latency through the `bm25-search`
//! plugin (one instance, and a pool on every core), the smallest sandbox
//! memory cap an instance serves queries in, and the same queries over HTTP
//! through `igpo serve retrieval`'s server (started in this process, on a
//! loopback port) from concurrent clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::plugins::{bench_tool, CallStats, Stop};
use crate::plugins::{PluginHost, PluginSpec, SandboxLimits, ToolPlugin};
use crate::rng::Rng;

/// What to generate and measure.
#[derive(Clone, Debug)]
pub struct RetrievalBenchSpec {
    pub passages: usize,
    pub words_per_passage: usize,
    pub vocabulary: usize,
    pub seed: u64,
    /// Folder for the corpus and the index (kept for reuse: a corpus and an
    /// index already there from the same spec are not rebuilt).
    pub work: PathBuf,
    /// `igpo data index --memory-mib`.
    pub memory_mib: usize,
    /// Folder holding `bm25-search.wasm`.
    pub plugins: PathBuf,
    /// Queries generated (each 4 words of the corpus' distribution, the 100
    /// most common words left out as a stopword list would).
    pub queries: usize,
    /// Time per latency measurement.
    pub duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct RetrievalBench {
    pub passages: usize,
    pub vocabulary: usize,
    pub corpus_bytes: u64,
    pub generate_s: f64,
    /// None when the index was already there (reused).
    pub build_s: Option<f64>,
    /// The bench process's peak resident memory during the build (VmHWM
    /// after a reset of the mark; None where /proc cannot say).
    pub build_peak_rss_bytes: Option<u64>,
    pub index_bytes: u64,
    pub terms: u64,
    pub postings: u64,
    /// Loading the plugin with the index (the first load also compiles the
    /// component, unless the host cache has it).
    pub plugin_load_ms: f64,
    pub plugin_single: CallStats,
    pub plugin_pooled: CallStats,
    /// The smallest linear-memory cap (MiB, searched in 1..=64) with which one
    /// instance opens the index and answers 100 queries.
    pub plugin_min_memory_mib: Option<u64>,
    /// `POST /retrieve` with one query per request, keep-alive connections.
    pub server: ServerStats,
}

/// Requests through the HTTP server.
#[derive(Debug, Serialize)]
pub struct ServerStats {
    pub clients: usize,
    pub requests: usize,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A Zipf(1) sampler over `n` ranks.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|r| {
                acc += 1.0 / r as f64;
                acc
            })
            .collect();
        for c in cdf.iter_mut() {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// The word of a rank: letters after a `q` (no stopword starts with one).
fn word(rank: usize) -> String {
    let mut s = String::from("q");
    let mut n = rank;
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

/// Writes the corpus (streaming); returns its size in bytes.
fn generate_corpus(spec: &RetrievalBenchSpec, path: &Path) -> std::io::Result<u64> {
    let zipf = Zipf::new(spec.vocabulary);
    let mut rng = Rng::new(spec.seed);
    let tmp = path.with_extension("jsonl.partial");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut text = String::new();
    for d in 0..spec.passages {
        let words = spec.words_per_passage * 4 / 5
            + (rng.next_u64() % (spec.words_per_passage as u64 * 2 / 5 + 1)) as usize;
        text.clear();
        for i in 0..words {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(&word(zipf.sample(&mut rng)));
        }
        let title = format!(
            "{} {}",
            word(zipf.sample(&mut rng)),
            word(zipf.sample(&mut rng))
        );
        serde_json::to_writer(
            &mut w,
            &json!({"id": format!("syn:{d}"), "title": title, "text": text}),
        )?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(std::fs::metadata(path)?.len())
}

fn queries(spec: &RetrievalBenchSpec) -> Vec<String> {
    let zipf = Zipf::new(spec.vocabulary);
    let mut rng = Rng::new(spec.seed ^ 0x9e37_79b9_7f4a_7c15);
    (0..spec.queries)
        .map(|_| {
            let mut q = Vec::new();
            while q.len() < 4 {
                let r = zipf.sample(&mut rng);
                if r >= 100 {
                    q.push(word(r));
                }
            }
            json!({ "query": q.join(" ") }).to_string()
        })
        .collect()
}

/// VmHWM from /proc, after resetting it (`clear_refs` 5) when `reset`.
fn peak_rss(reset: bool) -> Option<u64> {
    if reset {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs the bench; progress lines go to the log.
pub fn retrieval_bench(
    host: &PluginHost,
    spec: &RetrievalBenchSpec,
) -> Result<RetrievalBench, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&spec.work)?;
    let tag = format!(
        "{}x{}-v{}-s{}",
        spec.passages, spec.words_per_passage, spec.vocabulary, spec.seed
    );
    let corpus = spec.work.join(format!("corpus-{tag}.jsonl"));
    let t0 = Instant::now();
    let corpus_bytes = if corpus.exists() {
        std::fs::metadata(&corpus)?.len()
    } else {
        tracing::info!(
            "generating {} passages into {}",
            spec.passages,
            corpus.display()
        );
        generate_corpus(spec, &corpus)?
    };
    let generate_s = t0.elapsed().as_secs_f64();
    // The plugin reads the index from its granted folder: grant/index.
    let grant = spec.work.join(format!("grant-{tag}"));
    let index = grant.join("index");
    let (build_s, build_peak_rss_bytes) = if index.join("index.json").exists() {
        (None, None)
    } else {
        let _ = peak_rss(true);
        tracing::info!("indexing {}", corpus.display());
        let t0 = Instant::now();
        crate::data::index::build_index(
            std::slice::from_ref(&corpus),
            &index,
            spec.memory_mib << 20,
            false,
        )?;
        (Some(t0.elapsed().as_secs_f64()), peak_rss(false))
    };
    let meta = igpo_retrieval::Index::open(&index)?.meta().clone();
    let args = queries(spec);

    let load = |instances: usize, memory_mib: u64| {
        ToolPlugin::load(
            host,
            &PluginSpec::new(spec.plugins.join("bm25-search.wasm"))
                .readonly_dir(&grant)
                .config(json!({"index": "index", "k": 5}))
                .limits(SandboxLimits {
                    instances,
                    memory_bytes: memory_mib << 20,
                    ..SandboxLimits::default()
                }),
        )
    };
    let t0 = Instant::now();
    let single = load(1, 64)?;
    let plugin_load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let plugin_single = bench_tool(&single, &args, 1, Stop::Time(spec.duration))?;
    drop(single);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pooled = load(threads, 64)?;
    let plugin_pooled = bench_tool(&pooled, &args, threads, Stop::Time(spec.duration))?;
    drop(pooled);
    // The smallest cap that serves 100 queries, by bisection over MiB.
    let serves = |mib: u64| -> bool {
        load(1, mib).is_ok_and(|t| args.iter().take(100).all(|a| t.call(a).is_ok()))
    };
    let plugin_min_memory_mib = if serves(64) {
        let (mut lo, mut hi) = (1u64, 64u64);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if serves(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(hi)
    } else {
        None
    };
    let server = bench_server(&index, &args, SERVER_CLIENTS, spec.duration)?;
    Ok(RetrievalBench {
        passages: spec.passages,
        vocabulary: spec.vocabulary,
        corpus_bytes,
        generate_s,
        build_s,
        build_peak_rss_bytes,
        index_bytes: dir_bytes(&index),
        terms: meta.terms,
        postings: meta.postings,
        plugin_load_ms,
        plugin_single,
        plugin_pooled,
        plugin_min_memory_mib,
        server,
    })
}

/// Concurrent clients of the server bench (the 16).
const SERVER_CLIENTS: usize = 16;

/// Serves `index` on a loopback port and sends the queries from `clients`
/// threads (one keep-alive connection each) for about `duration`.
fn bench_server(
    index: &Path,
    args: &[String],
    clients: usize,
    duration: Duration,
) -> Result<ServerStats, Box<dyn std::error::Error>> {
    use igpo_retrieval::serve::{bind, ServerConfig};
    let ix = Arc::new(igpo_retrieval::Index::open(index)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bound = rt.block_on(bind(ServerConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    }))?;
    let addr = bound.local_addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(bound.run(ix, async {
        let _ = stopped.await;
    }));
    // Each query as a Search-R1 request of one query, 5 passages.
    let bodies: Vec<String> = args
        .iter()
        .map(|a| {
            let q: serde_json::Value = serde_json::from_str(a).expect("a query");
            json!({"queries": [q["query"]], "topk": 5, "return_scores": true}).to_string()
        })
        .collect();
    let barrier = std::sync::Barrier::new(clients);
    let per_client: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (bodies, barrier) = (&bodies, &barrier);
                s.spawn(move || {
                    let mut conn = Conn::open(addr).map_err(|e| e.to_string())?;
                    conn.post(&bodies[c % bodies.len()])?;
                    barrier.wait();
                    let mut lat = Vec::new();
                    let start = Instant::now();
                    let mut i = c;
                    while start.elapsed() < duration {
                        let t0 = Instant::now();
                        conn.post(&bodies[i % bodies.len()])?;
                        lat.push(t0.elapsed());
                        i += clients;
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let _ = stop.send(());
    rt.block_on(server)??;
    let mut all = Vec::new();
    for r in per_client {
        all.extend(r?);
    }
    all.sort_unstable();
    let q = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    Ok(ServerStats {
        clients,
        requests: all.len(),
        requests_per_s: all.len() as f64 / duration.as_secs_f64(),
        p50_us: q(0.5),
        p99_us: q(0.99),
    })
}

/// One keep-alive HTTP/1.1 connection that posts to `/retrieve`.
struct Conn {
    addr: SocketAddr,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let writer = TcpStream::connect(addr)?;
        writer.set_nodelay(true)?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Conn {
            addr,
            writer,
            reader,
        })
    }

    /// Posts `body`; an error unless the answer is 200 with a body.
    fn post(&mut self, body: &str) -> Result<(), String> {
        let head = format!(
            "POST /retrieve HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let io = |e: std::io::Error| format!("server: {e}");
        self.writer.write_all(head.as_bytes()).map_err(io)?;
        self.writer.write_all(body.as_bytes()).map_err(io)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(io)?;
        let ok = line.starts_with("HTTP/1.1 200");
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line).map_err(io)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
        }
        let n = length.ok_or("server: an answer without content-length")?;
        let mut buf = vec![0u8; n];
        self.reader.read_exact(&mut buf).map_err(io)?;
        if !ok {
            return Err(format!("server: {}", String::from_utf8_lossy(&buf)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_never_collide_with_stopwords_and_zipf_favours_low_ranks() {
        let words: Vec<String> = (0..2000).map(word).collect();
        let mut unique = words.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 2000);
        assert!(words
            .iter()
            .all(|w| !igpo_retrieval::text::STOPWORDS.contains(&w.as_str())));
        let z = Zipf::new(1000);
        let mut rng = Rng::new(1);
        let n = 20_000;
        let top = (0..n).filter(|_| z.sample(&mut rng) == 0).count();
        // P(rank 0) = 1 / H(1000) = 0.134.
        assert!((2400..3000).contains(&top), "{top}");
    }
}
