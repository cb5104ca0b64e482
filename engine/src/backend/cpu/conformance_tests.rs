//! The conformance suite (`backend/conformance`) on the CPU backend: every
//! op against the float64 reference and finite differences, at f32
//! tolerances, with the CPU's bitwise promises ([`Tol::CPU`]).

use super::Cpu;
use crate::backend::conformance::{self as suite, Tol};

macro_rules! conformance {
    ($($op:ident),* $(,)?) => {
        $(
            #[test]
            fn $op() {
                suite::$op(&Cpu, Tol::CPU);
            }
        )*
    };
}

conformance!(
    linear,
    rms_norm,
    head_rms_norm,
    rope,
    attention,
    cached_attention,
    paged_attention,
    swiglu,
    embedding,
    token_logprobs,
    sample_rows,
    rows,
    elementwise,
    adamw,
    adamw_clipped,
);
