//! Llama 3.x GGUF files carry their RoPE scaling not as metadata but as the
//! tensor `rope_freqs.weight`: one divisor per rotary frequency (llama.cpp's
//! converter evaluates the `llama3` rule of the Hugging Face config and
//! stores the result). A Hugging Face `config.json` can only say `llama3`
//! with its four parameters, so the import finds the parameters that give
//! back these divisors, or refuses: importing without them would rotate
//! every low-frequency dimension wrongly, silently.

use serde_json::{json, Value};

/// The `rope_scaling` object for `divisors` (one per frequency
/// `theta^(-2i/rope_dim)`), `None` when they are all 1 (no scaling), an
/// error when no `llama3` parameters reproduce them.
pub fn llama3_from_divisors(
    divisors: &[f32],
    rope_dim: usize,
    theta: f64,
) -> Result<Option<Value>, String> {
    if divisors.len() != rope_dim / 2 {
        return Err(format!(
            "{} factors for {} rotary frequencies",
            divisors.len(),
            rope_dim / 2
        ));
    }
    if divisors.iter().all(|&d| (d - 1.0).abs() <= 1e-6) {
        return Ok(None);
    }
    let factor = divisors.iter().copied().fold(f32::MIN, f32::max) as f64;
    // The parameters every Llama 3.1 / 3.2 / 3.3 release uses come first;
    // the rest of the grid covers variants of them.
    for original in [8192.0, 2048.0, 4096.0, 16384.0, 32768.0, 65536.0] {
        for (low, high) in [(1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0), (2.0, 8.0)] {
            let fits = divisors.iter().enumerate().all(|(i, &got)| {
                let want = llama3_divisor(i, rope_dim, theta, factor, low, high, original);
                (want - got as f64).abs() <= 1e-4 * want
            });
            if fits {
                return Ok(Some(json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": original as u64,
                })));
            }
        }
    }
    Err(format!(
        "per-dimension RoPE factors (largest {factor}) that match no llama3 scaling; only llama3-style factors can be written to config.json"
    ))
}

/// What frequency `i` is divided by under the `llama3` rule (transformers'
/// `_compute_llama3_parameters`): 1 for short wavelengths, `factor` for long
/// ones, a smooth blend between.
fn llama3_divisor(
    i: usize,
    rope_dim: usize,
    theta: f64,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original: f64,
) -> f64 {
    let inv_freq = theta.powf(-((2 * i) as f64) / rope_dim as f64);
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    let (low_wavelen, high_wavelen) = (original / low_freq_factor, original / high_freq_factor);
    if wavelen < high_wavelen {
        1.0
    } else if wavelen > low_wavelen {
        factor
    } else {
        let smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        1.0 / ((1.0 - smooth) / factor + smooth)
    }
}

/// The divisors llama.cpp writes for a `llama3` scaling (for tests).
#[cfg(test)]
pub fn llama3_divisors(rope_dim: usize, theta: f64, factor: f64, original: f64) -> Vec<f32> {
    (0..rope_dim / 2)
        .map(|i| llama3_divisor(i, rope_dim, theta, factor, 1.0, 4.0, original) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_31_divisors_give_back_its_rope_scaling() {
        // Llama 3.1 8B: head size 128, theta 500000, factor 8 over 8192.
        let d = llama3_divisors(128, 500_000.0, 8.0, 8192.0);
        // All three regions occur: 1, blended, 8.
        assert_eq!(d[0], 1.0);
        assert_eq!(d[63], 8.0);
        assert!(d.iter().any(|&x| x > 1.0 && x < 8.0));
        let s = llama3_from_divisors(&d, 128, 500_000.0).unwrap().unwrap();
        assert_eq!(
            s,
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        );
        // Llama 3.2 1B/3B: factor 32.
        let d = llama3_divisors(64, 500_000.0, 32.0, 8192.0);
        let s = llama3_from_divisors(&d, 64, 500_000.0).unwrap().unwrap();
        assert_eq!(s["factor"], 32.0);
    }

    #[test]
    fn ones_are_no_scaling_and_other_factors_are_refused() {
        assert_eq!(llama3_from_divisors(&[1.0; 8], 16, 1e4), Ok(None));
        let err = llama3_from_divisors(&[1.0, 3.0, 1.5, 2.0], 8, 1e4).unwrap_err();
        assert!(err.contains("match no llama3 scaling"), "{err}");
        let err = llama3_from_divisors(&[1.0; 3], 8, 1e4).unwrap_err();
        assert!(err.contains("3 factors for 4 rotary frequencies"), "{err}");
    }
}
