//! Test support: the ranks of a job as threads of one process, so unit
//! tests exercise collectives with real semantics (every rank's buffer
//! takes part, sums in rank order) without MPI.

use std::sync::{Arc, Condvar, Mutex};

use super::{check_len, Collective, CommError};

/// One rank of an in-process job; [`Threads::job`] makes all of them.
pub struct Threads {
    rank: usize,
    size: usize,
    shared: Arc<(Mutex<Round>, Condvar)>,
}

/// The collective in progress: what each rank put in, then what all read.
#[derive(Default)]
struct Round {
    slots: Vec<Option<Vec<f64>>>,
    result: Option<Arc<Vec<Vec<f64>>>>,
    read: usize,
}

impl Threads {
    /// The `size` ranks of one job, rank r at index r.
    pub fn job(size: usize) -> Vec<Threads> {
        let round = Round {
            slots: vec![None; size],
            ..Round::default()
        };
        let shared = Arc::new((Mutex::new(round), Condvar::new()));
        (0..size)
            .map(|rank| Threads {
                rank,
                size,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Runs `f` on every rank, each on its own thread; the results in rank order.
    pub fn run<T: Send>(size: usize, f: impl Fn(&Threads) -> T + Sync) -> Vec<T> {
        let ranks = Threads::job(size);
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = ranks.iter().map(|r| s.spawn(move || f(r))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Every rank's `mine`, in rank order, once all ranks gave theirs.
    fn exchange(&self, mine: Vec<f64>) -> Arc<Vec<Vec<f64>>> {
        let (lock, cv) = &*self.shared;
        let mut g = lock.lock().unwrap();
        // The previous round is still being read: wait for its end.
        while g.result.is_some() {
            g = cv.wait(g).unwrap();
        }
        g.slots[self.rank] = Some(mine);
        if g.slots.iter().all(Option::is_some) {
            let all = g.slots.iter_mut().map(|s| s.take().unwrap()).collect();
            g.result = Some(Arc::new(all));
            cv.notify_all();
        }
        while g.result.is_none() {
            g = cv.wait(g).unwrap();
        }
        let all = g.result.clone().unwrap();
        g.read += 1;
        if g.read == self.size {
            g.read = 0;
            g.result = None;
            cv.notify_all();
        }
        all
    }

    fn exchange_f32(&self, mine: &[f32]) -> Arc<Vec<Vec<f64>>> {
        self.exchange(mine.iter().map(|&x| f64::from(x)).collect())
    }
}

/// `out` becomes the sum over ranks of each rank's `values[at]`, added in
/// rank order (in f32 for f32 buffers, as MPI adds them).
fn sum_into<T: Copy + std::ops::AddAssign + Default>(
    all: &[Vec<f64>],
    at: std::ops::Range<usize>,
    out: &mut [T],
    from: impl Fn(f64) -> T,
) {
    out.fill(T::default());
    for values in all {
        for (o, v) in out.iter_mut().zip(&values[at.clone()]) {
            *o += from(*v);
        }
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let all = self.exchange_f32(buf);
        sum_into(&all, 0..buf.len(), buf, |v| v as f32);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        let all = self.exchange(buf.to_vec());
        sum_into(&all, 0..buf.len(), buf, |v| v);
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len("reduce_scatter", send.len(), recv.len() * self.size)?;
        let all = self.exchange_f32(send);
        let n = recv.len();
        sum_into(&all, self.rank * n..(self.rank + 1) * n, recv, |v| v as f32);
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len("all_gather", recv.len(), send.len() * self.size)?;
        let all = self.exchange_f32(send);
        for (r, v) in recv.iter_mut().zip(all.iter().flatten()) {
            *r = *v as f32;
        }
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let all = self.exchange_f32(buf);
        for (b, v) in buf.iter_mut().zip(&all[root]) {
            *b = *v as f32;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.exchange(vec![]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_collective_combines_every_rank_in_rank_order() {
        let got = Threads::run(3, |c| {
            let r = c.rank() as f32;
            let mut sum = vec![r, 10.0 * r];
            c.all_reduce_sum(&mut sum).unwrap();
            let mut scattered = vec![0.0; 2];
            c.reduce_scatter_sum(&[r, r, 2.0 * r, 2.0 * r, 3.0 * r, 3.0 * r], &mut scattered)
                .unwrap();
            let mut gathered = vec![0.0; 3];
            c.all_gather(&[r], &mut gathered).unwrap();
            let mut root = vec![r + 0.5];
            c.broadcast(&mut root, 2).unwrap();
            c.barrier().unwrap();
            (sum, scattered, gathered, root)
        });
        for (rank, (sum, scattered, gathered, root)) in got.into_iter().enumerate() {
            assert_eq!(sum, [3.0, 30.0]);
            let block = 3.0 * (rank + 1) as f32;
            assert_eq!(scattered, [block, block]);
            assert_eq!(gathered, [0.0, 1.0, 2.0]);
            assert_eq!(root, [2.5]);
        }
    }
}
