//! The ranks' gradients summed in buckets while the backward still runs
//! (PyTorch DDP's and DeepSpeed's buckets).
//!
//! The backward finishes the gradients in a fixed order (the final norm
//! first, then the layers from the last to the first, the embedding last:
//! `Model::grad_ready_order`). A [`BucketPlan`] cuts that
//! order into buckets of about `optim.bucket_mb`; during a rank's last
//! backward of a step the model hands each group over as it is done
//! ([`Buckets::ready`]) and a complete bucket is summed at once: on the
//! device when the backend joined a device group (queued on its stream),
//! else copied to a host buffer, its gradients freed, and summed by a
//! communication thread while the main thread goes on with the backward.
//! [`Buckets::finish`] hands over whatever was not (a rank whose last
//! micro-batch had nothing to learn from), waits, and returns the sums:
//! whole (`Summed::Whole`), or with ZeRO-2 each rank's own rows only
//! (`Summed::Rows`: one reduce-scatter per bucket, half an all-reduce's
//! bytes).
//!
//! Invariant: buckets are launched in plan order on every rank, and the
//! main thread calls no collective between the first hand-over and
//! `finish` (the communication thread's collectives and the main thread's
//! would otherwise interleave in different orders on different ranks).

use std::ops::Range;
use std::sync::mpsc;

use super::{as_matrix, rows_shape, Collective, CommError};
use crate::backend::Backend;
use crate::tensor::Tensor;

/// A step's gradients, summed over the ranks: every parameter's whole sum,
/// or (ZeRO-2) only the rows this rank's shard gives it (an empty tensor
/// where it has none).
pub enum Summed<T> {
    Whole(Vec<T>),
    Rows(Vec<T>),
}

impl<T> Summed<T> {
    /// The sums, by parameter (whole or rows).
    pub fn tensors_mut(&mut self) -> &mut [T] {
        match self {
            Summed::Whole(t) | Summed::Rows(t) => t,
        }
    }
}

/// Which parameters are summed together, in the order the backward
/// finishes them, and (ZeRO-2) the rows each rank receives.
#[derive(Clone, Debug)]
pub struct BucketPlan {
    /// Parameter indices per bucket, in launch order.
    buckets: Vec<Vec<usize>>,
    /// Per parameter, per rank: the rows a rank receives (ZeRO-2).
    rows: Option<Vec<Vec<Range<usize>>>>,
    shapes: Vec<Vec<usize>>,
}

impl BucketPlan {
    /// Cuts `ready_order` (groups of parameter indices, each parameter in
    /// exactly one) into buckets of at least `bucket_bytes` of f32
    /// gradients, whole groups each (the last may be smaller); one bucket
    /// of everything when `bucket_bytes` is 0 (summed after the backward).
    /// `rows`: ZeRO-2's rows per parameter and rank.
    pub fn new(
        ready_order: &[Vec<usize>],
        shapes: &[Vec<usize>],
        bucket_bytes: usize,
        rows: Option<Vec<Vec<Range<usize>>>>,
    ) -> BucketPlan {
        let mut seen = vec![false; shapes.len()];
        for &i in ready_order.iter().flatten() {
            assert!(!seen[i], "bucket plan: parameter {i} handed over twice");
            seen[i] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "bucket plan: every parameter must be handed over"
        );
        let bytes = |i: usize| 4 * shapes[i].iter().product::<usize>();
        let mut buckets: Vec<Vec<usize>> = vec![];
        let mut open: Vec<usize> = vec![];
        let mut filled = 0;
        for group in ready_order {
            open.extend(group);
            filled += group.iter().map(|&i| bytes(i)).sum::<usize>();
            if bucket_bytes > 0 && filled >= bucket_bytes {
                buckets.push(std::mem::take(&mut open));
                filled = 0;
            }
        }
        if !open.is_empty() {
            buckets.push(open);
        }
        BucketPlan {
            buckets,
            rows,
            shapes: shapes.to_vec(),
        }
    }

    /// The buckets' parameter indices, in launch order.
    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.buckets
    }
}

/// A bucket's collective, run by the communication thread.
enum Job {
    Sum(Vec<f32>),
    /// The send buffer (one block per rank) and this rank's block length.
    Scatter(Vec<f32>, usize),
}

type Done = (usize, Result<Vec<f32>, CommError>);

/// One step's buckets on one rank: see the module.
pub struct Buckets<'a, B: Backend> {
    backend: &'a B,
    comm: &'a dyn Collective,
    plan: &'a BucketPlan,
    handed: Vec<bool>,
    /// Buckets launched so far (a prefix of the plan).
    launched: usize,
    /// Buckets whose sums arrive from the communication thread.
    awaited: usize,
    jobs: Option<mpsc::Sender<(usize, Job)>>,
    done: mpsc::Receiver<Done>,
    failed: Option<CommError>,
    /// The backend joined a device group: whole sums run there.
    on_device: bool,
}

/// Runs `work` (a step's micro-batches, ending in [`Buckets::finish`]) with
/// a communication thread for the buckets `plan` cuts; `comm` of one rank
/// without a device group sums nothing.
pub fn reducing<B: Backend, T>(
    backend: &B,
    comm: &dyn Collective,
    plan: &BucketPlan,
    work: impl FnOnce(&mut Buckets<'_, B>) -> T,
) -> T {
    let (jobs, todo) = mpsc::channel::<(usize, Job)>();
    let (finished, done) = mpsc::channel::<Done>();
    std::thread::scope(|s| {
        if comm.size() > 1 {
            std::thread::Builder::new()
                .name("gradient-buckets".into())
                .spawn_scoped(s, move || {
                    for (id, job) in todo {
                        let out = match job {
                            Job::Sum(mut buf) => comm.all_reduce_sum(&mut buf).map(|()| buf),
                            Job::Scatter(send, mine) => {
                                let mut recv = vec![0.0f32; mine];
                                comm.reduce_scatter_sum(&send, &mut recv).map(|()| recv)
                            }
                        };
                        if finished.send((id, out)).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawn the gradient-bucket thread");
        }
        let mut buckets = Buckets {
            backend,
            comm,
            plan,
            handed: vec![false; plan.shapes.len()],
            launched: 0,
            awaited: 0,
            jobs: (comm.size() > 1).then_some(jobs),
            done,
            failed: None,
            // A backend in a device group sums even nothing there.
            on_device: backend.device_all_reduce(&mut []).is_some(),
        };
        work(&mut buckets)
        // `buckets` drops its sender here: the thread ends with its queue.
    })
}

impl<B: Backend> Buckets<'_, B> {
    /// The gradients `indices` are final (this rank's last backward of the
    /// step is done with them): launches every bucket now complete.
    pub fn ready(&mut self, indices: &[usize], grads: &mut [B::Tensor]) {
        for &i in indices {
            self.handed[i] = true;
        }
        while let Some(bucket) = self.plan.buckets.get(self.launched) {
            if !bucket.iter().all(|&i| self.handed[i]) {
                break;
            }
            self.launch(self.launched, grads);
            self.launched += 1;
        }
    }

    /// Launches bucket `id`: sums it on the device when the backend can,
    /// else packs it into a host buffer (freeing its gradients) for the
    /// communication thread.
    fn launch(&mut self, id: usize, grads: &mut [B::Tensor]) {
        let (b, plan) = (self.backend, self.plan);
        let bucket = &plan.buckets[id];
        if plan.rows.is_none() && self.on_device {
            // Queued on the backend's stream, behind the backward's kernels.
            for &i in bucket {
                if let Some(Err(e)) = b.device_all_reduce(std::slice::from_mut(&mut grads[i])) {
                    return self.fail(CommError(e));
                }
            }
            return;
        }
        let Some(jobs) = self.jobs.clone() else {
            return; // one rank: its sums are its own gradients
        };
        // A gradient never allocated (`Model::empty_grads`:
        // this rank's backward never reached it) is zeros.
        let free = |grads: &mut [B::Tensor], i: usize| {
            let t = std::mem::replace(&mut grads[i], b.zeros(&[0]));
            match b.shape(&t) == &plan.shapes[i][..] {
                true => b.download(&t),
                false => Tensor::zeros(&plan.shapes[i]),
            }
        };
        let job = match &plan.rows {
            None => Job::Sum(
                bucket
                    .iter()
                    .flat_map(|&i| free(grads, i).into_data())
                    .collect(),
            ),
            Some(rows) => {
                let ranks = self.comm.size();
                let cols: Vec<usize> = bucket
                    .iter()
                    .map(|&i| as_matrix(&plan.shapes[i]).1)
                    .collect();
                let block = block_len(bucket, rows, &cols, ranks);
                let mut send = vec![0.0f32; block * ranks];
                let mut filled = vec![0usize; ranks];
                for (k, &i) in bucket.iter().enumerate() {
                    let host = free(grads, i);
                    for (r, span) in rows[i].iter().enumerate() {
                        let values = &host.data()[span.start * cols[k]..span.end * cols[k]];
                        let at = r * block + filled[r];
                        send[at..at + values.len()].copy_from_slice(values);
                        filled[r] += values.len();
                    }
                }
                Job::Scatter(send, block)
            }
        };
        self.awaited += 1;
        // The thread lives as long as `reducing`'s scope: the send holds.
        jobs.send((id, job))
            .expect("the gradient-bucket thread is gone");
    }

    /// Records a failed bucket: `finish` returns the first error.
    fn fail(&mut self, e: CommError) {
        self.failed.get_or_insert(e);
    }

    /// Hands over every gradient not handed over yet, waits for every
    /// bucket and returns the sums (consumes `grads`).
    pub fn finish(&mut self, mut grads: Vec<B::Tensor>) -> Result<Summed<B::Tensor>, CommError> {
        let all: Vec<usize> = (0..grads.len()).filter(|&i| !self.handed[i]).collect();
        self.ready(&all, &mut grads);
        let b = self.backend;
        let mut sums: Vec<Option<Vec<f32>>> = vec![None; self.plan.buckets.len()];
        let mut first_error = self.failed.take();
        for _ in 0..self.awaited {
            let (id, out) = self
                .done
                .recv()
                .map_err(|_| CommError("the gradient-bucket thread ended early".into()))?;
            match out {
                Ok(values) => sums[id] = Some(values),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.awaited = 0;
        if let Some(e) = first_error {
            return Err(e);
        }
        let rank = self.comm.rank();
        for (bucket, sum) in self.plan.buckets.iter().zip(sums) {
            let Some(sum) = sum else { continue };
            let mut at = 0;
            for &i in bucket {
                let shape = &self.plan.shapes[i];
                let shape = match &self.plan.rows {
                    None => shape.clone(),
                    Some(rows) => rows_shape(shape, rows[i][rank].clone()),
                };
                let n: usize = shape.iter().product();
                grads[i] = b.upload(&Tensor::from_vec(&shape, sum[at..at + n].to_vec()));
                at += n;
            }
        }
        // One rank alone sent nothing: its gradients are its sums (all its
        // rows, under ZeRO-2).
        Ok(match &self.plan.rows {
            None => Summed::Whole(grads),
            Some(_) => Summed::Rows(grads),
        })
    }
}

/// The longest of the ranks' blocks of a bucket's send buffer.
fn block_len(bucket: &[usize], rows: &[Vec<Range<usize>>], cols: &[usize], ranks: usize) -> usize {
    (0..ranks)
        .map(|r| {
            bucket
                .iter()
                .zip(cols)
                .map(|(&i, c)| rows[i][r].len() * c)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::dist::threads::Threads;
    use crate::dist::{partition_rows, Solo};
    use crate::model::init::random_weights;
    use crate::model::{Arch, HandOver, Model, ModelConfig, TrainSeq};
    use crate::rng::Rng;

    fn tiny(tied: bool, arch: Arch) -> Model<Cpu> {
        let config = ModelConfig {
            arch,
            tie_word_embeddings: tied,
            attention_bias: arch == Arch::Qwen2,
            ..ModelConfig::tiny_for_tests()
        };
        Model::from_tensors(config.clone(), random_weights(&config, 3), Cpu)
    }

    /// What the data-parallel step relies on: every gradient is handed over
    /// once, in [`Model::grad_ready_order`], and never changes afterwards.
    #[test]
    fn the_backward_hands_over_each_gradient_once_and_final() {
        for (tied, arch) in [
            (true, Arch::Qwen2),
            (false, Arch::Qwen2),
            (false, Arch::Qwen3),
        ] {
            let m = tiny(tied, arch);
            let tokens: Vec<u32> = (0..10).map(|t| (t * 7 % 48) as u32).collect();
            let positions: Vec<usize> = (0..10).collect();
            let acts = m.forward_train(&[TrainSeq::causal(&tokens, &positions)]);
            let targets: Vec<u32> = tokens.iter().map(|t| (t + 5) % 48).collect();
            let out = m.token_logprobs(&acts.hidden, &targets, 4, false);
            let dlogp = Tensor::from_vec(&[10], vec![-0.1; 10]);
            let mut grads = m.zero_grads();
            let d_hidden = m.token_logprobs_backward(
                &acts.hidden,
                &targets,
                &out,
                (&dlogp, None),
                4,
                &mut grads,
            );
            let mut handed: Vec<(Vec<usize>, Vec<Tensor>)> = vec![];
            m.backward_handing_over(&acts, &d_hidden, &mut grads, &mut |idx, g| {
                handed.push((idx.to_vec(), idx.iter().map(|&i| g[i].clone()).collect()));
            });
            let groups: Vec<Vec<usize>> = handed.iter().map(|h| h.0.clone()).collect();
            assert_eq!(groups, m.grad_ready_order(), "tied {tied}, {arch:?}");
            let mut all: Vec<usize> = groups.concat();
            all.sort();
            assert_eq!(all, (0..m.params().len()).collect::<Vec<_>>(), "each once");
            for (idx, copies) in &handed {
                for (&i, copy) in idx.iter().zip(copies) {
                    assert_eq!(
                        copy.data(),
                        grads[i].data(),
                        "{} changed after",
                        m.param_names()[i]
                    );
                }
            }
            // Not vacuous: the copies are gradients, not the zeros they began as.
            let nonzero = handed
                .iter()
                .flat_map(|h| &h.1)
                .filter(|t| t.data().iter().any(|&v| v != 0.0));
            assert!(nonzero.count() > m.params().len() / 2);
        }
    }

    /// One training backward of `m` on tokens drawn for `rank`, adding into
    /// `grads`, handing over to `ready`.
    fn backward_of(
        m: &Model<Cpu>,
        rank: usize,
        grads: &mut [Tensor],
        ready: &mut HandOver<'_, Tensor>,
    ) {
        let tokens: Vec<u32> = (0..12)
            .map(|t| ((t * 5 + 3 * rank + 1) % 64) as u32)
            .collect();
        let positions: Vec<usize> = (0..tokens.len()).collect();
        let acts = m.forward_train(&[TrainSeq::causal(&tokens, &positions)]);
        let targets: Vec<u32> = tokens.iter().map(|t| (t + 9) % 64).collect();
        let out = m.token_logprobs(&acts.hidden, &targets, 4, false);
        let dlogp = Tensor::from_vec(&[tokens.len()], vec![-0.1; tokens.len()]);
        let d_hidden =
            m.token_logprobs_backward(&acts.hidden, &targets, &out, (&dlogp, None), 4, grads);
        m.backward_handing_over(&acts, &d_hidden, grads, ready);
    }

    /// ZeRO-2's memory: a rank's one backward from empty gradients, its
    /// buckets freeing what they send, never holds more than the embedding,
    /// the final norm and one layer's gradients at once, ends with its own
    /// rows only, and sums exactly what zeros summed after the backward sum.
    #[test]
    fn zero_2_buckets_from_empty_gradients_hold_one_layer_at_a_time() {
        let m = tiny(true, Arch::Qwen2);
        let shapes: Vec<Vec<usize>> = m.params().iter().map(|p| p.shape().to_vec()).collect();
        let matrices: Vec<(usize, usize)> = shapes.iter().map(|s| as_matrix(s)).collect();
        let rows = partition_rows(&matrices, 2);
        let order = m.grad_ready_order();
        let numel = |i: usize| shapes[i].iter().product::<usize>();
        let layer_max = order[1..order.len() - 1]
            .iter()
            .map(|g| g.iter().map(|&i| numel(i)).sum::<usize>())
            .max()
            .unwrap();
        let bound = numel(m.embed) + numel(m.norm) + layer_max;
        let total: usize = (0..shapes.len()).map(numel).sum();
        let rows_of = |plan: &BucketPlan, rank: usize, c: &Threads, lazy: bool| {
            let mut grads = if lazy {
                m.empty_grads()
            } else {
                m.zero_grads()
            };
            let mut most = 0;
            let summed = reducing(&Cpu, c, plan, |buckets| {
                backward_of(&m, rank, &mut grads, &mut |idx, g| {
                    most = most.max(g.iter().map(|t| t.numel()).sum::<usize>());
                    if lazy {
                        buckets.ready(idx, g);
                    }
                });
                buckets.finish(grads).unwrap()
            });
            let Summed::Rows(t) = summed else {
                panic!("rows")
            };
            (t, most)
        };
        let small = BucketPlan::new(&order, &shapes, 1, Some(rows.clone()));
        let one = BucketPlan::new(&order, &shapes, 0, Some(rows.clone()));
        let got = Threads::run(2, |c| {
            let (lazy, most) = rows_of(&small, c.rank(), c, true);
            let (whole, all) = rows_of(&one, c.rank(), c, false);
            (lazy, most, whole, all)
        });
        for (rank, (lazy, most, whole, all)) in got.into_iter().enumerate() {
            eprintln!("rank {rank}: at most {most} gradient values live (bound {bound}), {all} without buckets, of {total}");
            assert_eq!(all, total, "zeros hold every gradient");
            assert!(
                most <= bound && most < total,
                "rank {rank}: {most} values live at once"
            );
            for (i, (a, b)) in lazy.iter().zip(&whole).enumerate() {
                assert_eq!(
                    a.shape(),
                    &rows_shape(&shapes[i], rows[i][rank].clone())[..]
                );
                assert_eq!(a.data(), b.data(), "rank {rank}, parameter {i}");
            }
        }
    }

    const SHAPES: [&[usize]; 6] = [&[6, 4], &[4], &[5, 3], &[2, 8], &[7], &[3, 3]];

    fn ready_order() -> Vec<Vec<usize>> {
        vec![vec![5, 1], vec![2], vec![3, 4], vec![0]]
    }

    fn shapes() -> Vec<Vec<usize>> {
        SHAPES.iter().map(|s| s.to_vec()).collect()
    }

    fn gradients(rank: usize) -> Vec<Tensor> {
        let mut rng = Rng::new(11 + rank as u64);
        shapes()
            .iter()
            .map(|s| {
                let n = s.iter().product();
                Tensor::from_vec(s, (0..n).map(|_| rng.normal() as f32).collect())
            })
            .collect()
    }

    #[test]
    fn a_plan_cuts_whole_groups_into_buckets_of_at_least_the_size() {
        let shapes = shapes();
        let plan = BucketPlan::new(&ready_order(), &shapes, 60, None);
        // Groups of 52, 60, 92 and 96 bytes: each reaches 60 but the first.
        assert_eq!(plan.buckets(), &[vec![5, 1, 2], vec![3, 4], vec![0]]);
        let one = BucketPlan::new(&ready_order(), &shapes, 0, None);
        assert_eq!(one.buckets(), &[vec![5, 1, 2, 3, 4, 0]]);
    }

    #[test]
    #[should_panic(expected = "every parameter must be handed over")]
    fn a_plan_that_misses_a_parameter_is_refused() {
        BucketPlan::new(&[vec![0, 1], vec![2, 3, 4]], &shapes(), 0, None);
    }

    /// Two ranks as threads: rank 0 hands its gradients over group by group
    /// (buckets summed while it "runs"), rank 1 hands over nothing before
    /// `finish` (a last micro-batch with nothing to learn from); both get
    /// the sums of one all-reduce after the backward, bit for bit, whole
    /// or (ZeRO-2) their own rows.
    #[test]
    fn buckets_over_two_ranks_sum_what_one_sum_after_the_backward_sums() {
        let shapes = shapes();
        let matrices: Vec<(usize, usize)> = shapes.iter().map(|s| as_matrix(s)).collect();
        let rows = partition_rows(&matrices, 2);
        let (g0, g1) = (gradients(0), gradients(1));
        let sum: Vec<Vec<f32>> = g0
            .iter()
            .zip(&g1)
            .map(|(a, b)| a.data().iter().zip(b.data()).map(|(x, y)| x + y).collect())
            .collect();
        for zero_2 in [false, true] {
            for bytes in [0, 60, 1 << 20] {
                let plan =
                    BucketPlan::new(&ready_order(), &shapes, bytes, zero_2.then(|| rows.clone()));
                let got = Threads::run(2, |c| {
                    let mut g = gradients(c.rank());
                    reducing(&Cpu, c, &plan, |buckets| {
                        if c.rank() == 0 {
                            for group in ready_order() {
                                buckets.ready(&group, &mut g);
                            }
                        }
                        buckets.finish(g).unwrap()
                    })
                });
                for (rank, summed) in got.into_iter().enumerate() {
                    let what = format!("rank {rank}, ZeRO-2 {zero_2}, bucket {bytes} bytes");
                    match (summed, zero_2) {
                        (Summed::Whole(t), false) => {
                            for (i, t) in t.iter().enumerate() {
                                assert_eq!(t.shape(), &shapes[i][..], "{what}");
                                assert_eq!(t.data(), &sum[i][..], "{what}: parameter {i}");
                            }
                        }
                        (Summed::Rows(t), true) => {
                            for (i, t) in t.iter().enumerate() {
                                let span = rows[i][rank].clone();
                                let cols = matrices[i].1;
                                assert_eq!(t.shape(), &rows_shape(&shapes[i], span.clone())[..]);
                                let want = &sum[i][span.start * cols..span.end * cols];
                                assert_eq!(t.data(), want, "{what}: parameter {i}");
                            }
                        }
                        _ => panic!("{what}: whole sums for ZeRO-2 or rows without"),
                    }
                }
            }
        }
    }

    #[test]
    fn one_process_keeps_its_gradients_bit_for_bit() {
        let plan = BucketPlan::new(&ready_order(), &shapes(), 60, None);
        let mut g = gradients(0);
        let Summed::Whole(got) = reducing(&Cpu, &Solo, &plan, |buckets| {
            buckets.ready(&[5, 1], &mut g);
            buckets.finish(g).unwrap()
        }) else {
            panic!("whole sums")
        };
        for (a, b) in got.iter().zip(gradients(0)) {
            assert_eq!(a.data(), b.data());
        }
    }
}
