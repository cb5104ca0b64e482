//! A collective that waits too long ends the process. MPI's collectives
//! have no timeout: a hung rank (a deadlock, a stalled file system, a
//! stopped process) would hold every other rank in its next collective for
//! ever. [`Watched`] times each collective of the communicator it wraps; a
//! thread calls its `on_timeout` once one has waited longer than the
//! timeout (`IGPO_COLLECTIVE_TIMEOUT_S`, default 1800 s: a rank may wait
//! while another finishes longer rollouts or writes a checkpoint). The
//! binary's `on_timeout` prints one line and exits, and the launcher then
//! ends the job.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Collective, CommError};

/// The collectives, by the index [`Watch::op`] holds.
const OPS: [&str; 6] = [
    "all_reduce_sum",
    "all_reduce_sum_f64",
    "reduce_scatter_sum",
    "all_gather",
    "broadcast",
    "barrier",
];

/// The default of `IGPO_COLLECTIVE_TIMEOUT_S`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// `IGPO_COLLECTIVE_TIMEOUT_S` (seconds, > 0), else the default.
pub fn timeout_from_env() -> Result<Duration, CommError> {
    match std::env::var("IGPO_COLLECTIVE_TIMEOUT_S") {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => Err(CommError(format!(
                "IGPO_COLLECTIVE_TIMEOUT_S={v}: a number of seconds > 0"
            ))),
        },
    }
}

/// When the collective in progress began (ms since `epoch`, plus one; 0:
/// none) and which it is.
struct Watch {
    epoch: Instant,
    since_ms: AtomicU64,
    op: AtomicUsize,
}

/// A communicator whose collectives are timed (see the module).
pub struct Watched<C> {
    inner: C,
    watch: Arc<Watch>,
}

impl<C: Collective> Watched<C> {
    /// Wraps `inner`; `on_timeout` gets the line to print when a collective
    /// has waited longer than `timeout` (once).
    pub fn new(inner: C, timeout: Duration, on_timeout: impl Fn(String) + Send + 'static) -> Self {
        let watch = Arc::new(Watch {
            epoch: Instant::now(),
            since_ms: AtomicU64::new(0),
            op: AtomicUsize::new(0),
        });
        let seen = watch.clone();
        let rank = inner.rank();
        let tick = (timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(5));
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let since = seen.since_ms.load(Ordering::Acquire);
                if since == 0 {
                    continue;
                }
                let waited = seen
                    .epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1));
                if waited > timeout {
                    let op = OPS[seen.op.load(Ordering::Acquire)];
                    on_timeout(format!(
                        "rank {rank}: {op} has waited {:.0} s for the other ranks \
                         (IGPO_COLLECTIVE_TIMEOUT_S = {:.0}): a rank is hung or gone; the \
                         newest checkpoint resumes",
                        waited.as_secs_f64(),
                        timeout.as_secs_f64()
                    ));
                    return;
                }
            })
            .expect("spawn the collective watchdog");
        Watched { inner, watch }
    }

    fn timed<T>(&self, op: usize, f: impl FnOnce(&C) -> T) -> T {
        let now = self.watch.epoch.elapsed().as_millis() as u64 + 1;
        self.watch.op.store(op, Ordering::Release);
        self.watch.since_ms.store(now, Ordering::Release);
        let out = f(&self.inner);
        self.watch.since_ms.store(0, Ordering::Release);
        out
    }
}

impl<C: Collective> Collective for Watched<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.timed(0, |c| c.all_reduce_sum(buf))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.timed(1, |c| c.all_reduce_sum_f64(buf))
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        self.timed(2, |c| c.reduce_scatter_sum(send, recv))
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        self.timed(3, |c| c.all_gather(send, recv))
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        self.timed(4, |c| c.broadcast(buf, root))
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.timed(5, |c| c.barrier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Solo;
    use std::sync::Mutex;

    /// Rank 0 of two whose barrier waits `wait` (the other rank late).
    struct Late(Duration);
    impl Collective for Late {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, b: &mut [f32]) -> Result<(), CommError> {
            Solo.all_reduce_sum(b)
        }
        fn all_reduce_sum_f64(&self, b: &mut [f64]) -> Result<(), CommError> {
            Solo.all_reduce_sum_f64(b)
        }
        fn reduce_scatter_sum(&self, s: &[f32], r: &mut [f32]) -> Result<(), CommError> {
            Solo.reduce_scatter_sum(s, r)
        }
        fn all_gather(&self, s: &[f32], r: &mut [f32]) -> Result<(), CommError> {
            Solo.all_gather(s, r)
        }
        fn broadcast(&self, b: &mut [f32], root: usize) -> Result<(), CommError> {
            Solo.broadcast(b, root)
        }
        fn barrier(&self) -> Result<(), CommError> {
            std::thread::sleep(self.0);
            Ok(())
        }
    }

    fn watched(wait: Duration, timeout: Duration) -> (Watched<Late>, Arc<Mutex<Vec<String>>>) {
        let said = Arc::new(Mutex::new(vec![]));
        let log = said.clone();
        let w = Watched::new(Late(wait), timeout, move |line| {
            log.lock().unwrap().push(line)
        });
        (w, said)
    }

    #[test]
    fn a_collective_past_the_timeout_is_reported_once_and_quick_ones_never() {
        let (w, said) = watched(Duration::from_millis(900), Duration::from_millis(300));
        let mut buf = [1.0f32];
        for _ in 0..20 {
            w.all_reduce_sum(&mut buf).unwrap();
        }
        assert!(said.lock().unwrap().is_empty(), "quick collectives");
        w.barrier().unwrap();
        let lines = said.lock().unwrap().clone();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("rank 0: barrier has waited"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("hung or gone"), "{}", lines[0]);
        // Within the timeout: nothing.
        let (w, said) = watched(Duration::from_millis(100), Duration::from_millis(600));
        w.barrier().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        assert!(said.lock().unwrap().is_empty());
    }
}
