//! Host-side preparation of kernel inputs (plain Rust, tested without a GPU).

use std::ops::Range;

use crate::{Error, Result};

/// Token rows grouped by id for the deterministic embedding backward
/// (`embedding_bwd` in embedding.cu): distinct ids ascending, each group's
/// rows ascending, so every id's gradient is summed in row order, as the CPU
/// backend's sequential loop does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingGroups {
    /// The distinct token ids, ascending.
    pub ids: Vec<i32>,
    /// Group `g`'s rows are `rows[starts[g]..starts[g + 1]]`.
    pub starts: Vec<i32>,
    pub rows: Vec<i32>,
}

impl EmbeddingGroups {
    pub fn new(ids: &[u32], vocab: usize) -> Result<EmbeddingGroups> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "embedding: token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let mut order: Vec<(u32, u32)> = ids
            .iter()
            .enumerate()
            .map(|(r, &t)| (t, r as u32))
            .collect();
        order.sort_unstable();
        let mut groups = EmbeddingGroups {
            ids: Vec::new(),
            starts: Vec::new(),
            rows: Vec::with_capacity(ids.len()),
        };
        for (i, &(t, r)) in order.iter().enumerate() {
            if i == 0 || order[i - 1].0 != t {
                groups.ids.push(t as i32);
                groups.starts.push(i as i32);
            }
            groups.rows.push(r as i32);
        }
        groups.starts.push(order.len() as i32);
        Ok(groups)
    }
}

/// An attention mask in the kernels' form (attention.cu): causal with an
/// offset, or per query row a list of visible key ranges in CSR layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaskArgs {
    Causal {
        offset: i32,
    },
    /// Row `j`'s ranges are `spans[2s]..spans[2s + 1]` for `s` in
    /// `span_ptr[j]..span_ptr[j + 1]`.
    Spans {
        span_ptr: Vec<i32>,
        spans: Vec<i32>,
    },
}

impl MaskArgs {
    /// From per-row key ranges (the engine's `AttnMask::Spans`), checked
    /// against the key count `n`.
    pub fn from_spans(rows: &[Vec<Range<usize>>], n: usize) -> Result<MaskArgs> {
        let mut span_ptr = Vec::with_capacity(rows.len() + 1);
        let mut spans = Vec::new();
        span_ptr.push(0);
        for (j, row) in rows.iter().enumerate() {
            for r in row {
                if r.end > n || r.start > r.end {
                    return Err(Error::Invalid(format!(
                        "attention: row {j} sees keys {r:?} but there are {n}"
                    )));
                }
                if r.start < r.end {
                    spans.push(to_i32(r.start)?);
                    spans.push(to_i32(r.end)?);
                }
            }
            span_ptr.push(to_i32(spans.len() / 2)?);
        }
        Ok(MaskArgs::Spans { span_ptr, spans })
    }
}

pub(crate) fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Invalid(format!("{v} does not fit the kernels' i32")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_groups_sort_ids_and_keep_row_order() {
        let g = EmbeddingGroups::new(&[5, 2, 5, 0, 2, 5], 6).unwrap();
        assert_eq!(g.ids, vec![0, 2, 5]);
        assert_eq!(g.starts, vec![0, 1, 3, 6]);
        assert_eq!(g.rows, vec![3, 1, 4, 0, 2, 5]);
        assert!(EmbeddingGroups::new(&[6], 6).is_err());
        let e = EmbeddingGroups::new(&[], 6).unwrap();
        assert_eq!((e.ids.len(), e.starts, e.rows.len()), (0, vec![0], 0));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn span_mask_in_csr_form() {
        let m = MaskArgs::from_spans(&[vec![0..3], vec![0..3, 5..6], vec![4..4]], 6).unwrap();
        assert_eq!(
            m,
            MaskArgs::Spans {
                span_ptr: vec![0, 1, 3, 3],
                spans: vec![0, 3, 0, 3, 5, 6]
            }
        );
        assert!(MaskArgs::from_spans(&[vec![0..7]], 6).is_err());
    }
}
