//! `igpo serve retrieval`: the BM25 index of `igpo data index` over HTTP,
//! under Search-R1's `POST /retrieve` protocol (`igpo_retrieval::serve`), for
//! the `http-search` tool or any client of that protocol.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;

use super::CliResult;

#[derive(Subcommand)]
pub enum ServeCommand {
    /// Serve an index under Search-R1's `POST /retrieve` until SIGINT/SIGTERM
    /// (then the requests in flight finish). `-v` logs a line per request.
    Retrieval(RetrievalArgs),
}

#[derive(clap::Args)]
pub struct RetrievalArgs {
    /// The folder `igpo data index` wrote.
    #[arg(long)]
    index: PathBuf,
    /// Where to listen (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Passages per query when a request has no `topk`.
    #[arg(long, default_value_t = 3)]
    topk: usize,
    /// The largest `topk` a request may ask for.
    #[arg(long, default_value_t = 100)]
    max_topk: usize,
    /// The most queries in one request.
    #[arg(long, default_value_t = 256)]
    max_queries: usize,
    /// BM25 k1.
    #[arg(long, default_value_t = 0.9)]
    k1: f32,
    /// BM25 b.
    #[arg(long, default_value_t = 0.4)]
    b: f32,
}

pub fn run(cmd: ServeCommand, verbose: bool) -> CliResult {
    match cmd {
        ServeCommand::Retrieval(a) => {
            let index = igpo_retrieval::Index::open(&a.index)?;
            let cfg = igpo_retrieval::serve::ServerConfig {
                addr: a.addr,
                default_topk: a.topk,
                max_topk: a.max_topk,
                max_queries: a.max_queries,
                log_requests: verbose,
                params: igpo_retrieval::Bm25 { k1: a.k1, b: a.b },
                ..Default::default()
            };
            cfg.check()?;
            igpo_retrieval::serve::run_blocking(index, cfg)?;
        }
    }
    Ok(())
}
