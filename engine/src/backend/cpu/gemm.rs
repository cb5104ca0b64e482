//! Strided f32 GEMM over slices, with bounds checked once per call (the
//! `gemm` crate takes raw pointers and strides).

/// Where a matrix lives inside a slice: element (r, c) is at
/// `offset + r * rs + c * cs`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Layout {
    /// A dense row-major matrix with `cols` columns starting at `offset`.
    pub fn row_major(offset: usize, cols: usize) -> Layout {
        Layout {
            offset,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose view of the same storage.
    pub fn t(self) -> Layout {
        Layout {
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self, rows: usize, cols: usize, len: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(
            last < len,
            "gemm: {what} [{rows}x{cols}] {self:?} overruns {len} elements"
        );
    }
}

/// Below this many multiply-adds a GEMM runs on one thread.
const PARALLEL_FLOPS: usize = 1 << 16;

/// `dst[m, n] (+)= scale * a[m, k] @ b[k, n]`, each matrix given as its
/// slice and its layout in it. With `accumulate` the product is added to
/// `dst`, otherwise it replaces it. `parallel` lets the GEMM use rayon's pool
/// (off when the caller already runs GEMMs in parallel).
pub fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dl): (&mut [f32], Layout),
    (a, al): (&[f32], Layout),
    (b, bl): (&[f32], Layout),
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    dl.check(m, n, dst.len(), "dst");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[dl.offset + r * dl.rs + c * dl.cs] = 0.0;
                }
            }
        }
        return;
    }
    al.check(m, k, a.len(), "lhs");
    bl.check(k, n, b.len(), "rhs");
    if m == 1 && n > 1 {
        // The `gemm` crate takes a GEMV path for one row, whose reduction
        // order differs from its GEMM kernels. Run one row as two identical
        // rows instead, so a row's result never depends on how many rows
        // share the call (batch invariance: rollout and scoring agree). The
        // weights are read once either way; decode is bandwidth-bound.
        let row: Vec<f32> = (0..k).map(|c| a[al.offset + c * al.cs]).collect();
        let two = [row.as_slice(), row.as_slice()].concat();
        let mut out = vec![0.0f32; 2 * n];
        gemm(
            (2, n, k),
            (&mut out, Layout::row_major(0, n)),
            (&two, Layout::row_major(0, k)),
            (b, bl),
            scale,
            false,
            parallel,
        );
        for (c, v) in out[..n].iter().enumerate() {
            let d = &mut dst[dl.offset + c * dl.cs];
            *d = if accumulate { *d + v } else { *v };
        }
        return;
    }
    let parallelism = if parallel && m * n * k >= PARALLEL_FLOPS {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `check` proved every addressed element lies inside its slice;
    // `dst` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dl.offset),
            dl.cs as isize,
            dl.rs as isize,
            accumulate,
            a.as_ptr().add(al.offset),
            al.cs as isize,
            al.rs as isize,
            b.as_ptr().add(bl.offset),
            bl.cs as isize,
            bl.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst[m, n] = x[m, k] @ w[n, k]^T` (the `nn.Linear` product).
pub fn matmul_nt(x: &[f32], w: &[f32], dst: &mut [f32], m: usize, n: usize, k: usize) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(dst.len(), m * n);
    gemm(
        (m, n, k),
        (dst, Layout::row_major(0, n)),
        (x, Layout::row_major(0, k)),
        (w, Layout::row_major(0, k).t()),
        1.0,
        false,
        true,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row's result does not depend on how many rows share the GEMM
    /// (batch invariance), one row included.
    #[test]
    fn rows_are_bitwise_independent_of_batch_size() {
        let (n, k) = (576, 576);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let x: Vec<f32> = (0..64 * k)
            .map(|i| ((i * 104729 % 997) as f32 - 498.0) * 2e-3)
            .collect();
        let row0 = |m: usize| {
            let mut d = vec![0.0; m * n];
            matmul_nt(&x[..m * k], &w, &mut d, m, n, k);
            d[..n].to_vec()
        };
        let r1 = row0(1);
        for m in [2, 3, 8, 16, 17, 64] {
            assert!(row0(m) == r1, "row 0 changed with {m} rows");
        }
    }
}
