//! Throughput of calls through the plugin host (`igpo plugin bench`):
//! calls/s and latency percentiles, on one thread and on several threads
//! sharing one pooled plugin, for a no-op tool (echo) and bm25-search over
//! the SQuAD + Wikipedia-summaries corpus.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::plugins::{PluginError, PluginHost, PluginSpec, SandboxLimits, ToolError, ToolPlugin};

/// Why the plugin bench stopped.
#[derive(Debug, thiserror::Error)]
pub enum PluginBenchError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// One tool at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct PluginBenchRow {
    pub what: &'static str,
    pub stats: CallStats,
}

/// What `igpo plugin bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PluginBench {
    pub threads: usize,
    pub passages: usize,
    pub bm25_load_and_index_s: f64,
    pub results: Vec<PluginBenchRow>,
}

/// Measures echo-tool and bm25-search (built into `plugins`, over the corpus
/// made from `data`'s SQuAD dev and Wikipedia summaries) for `duration` at
/// one thread and at every core.
pub fn plugin_bench(
    host: &PluginHost,
    plugins: &Path,
    data: &Path,
    duration: Duration,
) -> Result<PluginBench, PluginBenchError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let limits = SandboxLimits {
        instances: threads,
        ..SandboxLimits::default()
    };
    let echo = ToolPlugin::load(
        host,
        &PluginSpec::new(plugins.join("echo-tool.wasm")).limits(limits.clone()),
    )?;
    let squad = data.join("squad-dev-v1.1.json");
    let corpus_dir = std::env::temp_dir().join(format!("igpo-bench-corpus-{}", std::process::id()));
    let passages =
        crate::data::build_corpus(Some(&squad), Some(&data.join("wiki-summaries-en.json")))?;
    crate::data::write_jsonl(&corpus_dir.join("corpus.jsonl"), &passages)?;
    let t0 = Instant::now();
    let bm25 = ToolPlugin::load(
        host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&corpus_dir)
            .limits(limits),
    );
    let bm25_load_and_index_s = t0.elapsed().as_secs_f64();
    let results = bm25
        .map_err(PluginBenchError::from)
        .and_then(|bm25| bench_rows(&echo, &bm25, &squad, threads, duration));
    // Pooled instances read the corpus when they start: remove it only now.
    let _ = std::fs::remove_dir_all(&corpus_dir);
    Ok(PluginBench {
        threads,
        passages: passages.len(),
        bm25_load_and_index_s,
        results: results?,
    })
}

fn bench_rows(
    echo: &ToolPlugin,
    bm25: &ToolPlugin,
    squad: &Path,
    threads: usize,
    duration: Duration,
) -> Result<Vec<PluginBenchRow>, PluginBenchError> {
    let questions: Vec<String> = crate::data::squad_questions(squad)?
        .into_iter()
        .take(1000)
        .map(|q| serde_json::json!({ "query": q }).to_string())
        .collect();
    let mut rows = vec![];
    for (what, tool, args) in [
        ("no-op tool call (echo)", echo, vec!["{}".to_string()]),
        ("bm25 query, 12k passages", bm25, questions),
    ] {
        for t in [1, threads] {
            let stats = bench_tool(tool, &args, t, duration)?;
            rows.push(PluginBenchRow { what, stats });
        }
    }
    Ok(rows)
}

impl PluginBenchRow {
    /// The row as one line of text.
    pub fn line(&self) -> String {
        let (s, t) = (&self.stats, self.stats.threads);
        format!(
            "{:<26} {t} thread(s): {:>10.0} calls/s  p50 {:>8.1} us  p99 {:>8.1} us  (got {:.0}% of {t} core(s); {:.0} calls per CPU-s)",
            self.what, s.calls_per_s, s.p50_us, s.p99_us, s.cpu_share * 100.0, s.calls_per_cpu_s
        )
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CallStats {
    pub threads: usize,
    pub calls: usize,
    pub calls_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time the calling threads got, as a fraction of `threads` cores
    /// over the run (Linux; NaN elsewhere). Below 1 means other processes
    /// took the cores and `calls_per_s` understates the host.
    pub cpu_share: f64,
    /// Calls per second of CPU time the calling threads used: a rate that
    /// does not depend on how busy the machine was.
    pub calls_per_cpu_s: f64,
}

/// CPU seconds (user + system) of the calling thread, from /proc.
fn thread_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Calls `tool` with `args` round-robin from `threads` threads for about
/// `duration` (after one warm-up call per thread, which also makes the
/// pool's instances). Returns the first error instead of timing it.
pub fn bench_tool(
    tool: &ToolPlugin,
    args: &[String],
    threads: usize,
    duration: Duration,
) -> Result<CallStats, ToolError> {
    assert!(!args.is_empty() && threads > 0);
    let barrier = std::sync::Barrier::new(threads);
    type PerThread = (Vec<Duration>, f64);
    let results: Vec<Result<PerThread, ToolError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let warm = tool.call(&args[t % args.len()]);
                    barrier.wait();
                    warm?;
                    let mut lat = Vec::new();
                    let cpu0 = thread_cpu_s();
                    let start = Instant::now();
                    let mut i = t;
                    while start.elapsed() < duration {
                        let t0 = Instant::now();
                        tool.call(&args[i % args.len()])?;
                        lat.push(t0.elapsed());
                        i += threads;
                    }
                    let cpu = match (cpu0, thread_cpu_s()) {
                        (Some(a), Some(b)) => b - a,
                        _ => f64::NAN,
                    };
                    Ok((lat, cpu))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let mut all = Vec::new();
    let mut cpu = 0.0;
    for r in results {
        let (lat, c) = r?;
        all.extend(lat);
        cpu += c;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(f64::NAN)
    };
    Ok(CallStats {
        threads,
        calls: all.len(),
        // Each thread ran for `duration`; wall time is about the same.
        calls_per_s: all.len() as f64 / duration.as_secs_f64(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        cpu_share: cpu / (threads as f64 * duration.as_secs_f64()),
        calls_per_cpu_s: all.len() as f64 / cpu,
    })
}
