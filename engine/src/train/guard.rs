//! Numerical guards of the update: a non-finite loss, gradient norm,
//! advantage or log-probability skips that optimizer update (nothing in the
//! weights or the AdamW moments changes; `Backend::adamw_clipped` leaves
//! them untouched when the norm is not finite), the skip is logged and
//! counted in the metrics, and a run stops with an error after
//! `optim.max_consecutive_skips` skips in a row.
//!
//! `IGPO_INJECT_NAN` is the test hook that makes them happen on purpose:
//! `KIND@STEP[,KIND@STEP...]` with KIND one of `loss`, `grad`, `advantage`,
//! `logprob` puts a NaN there in every update of that step.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::run::TrainError;

/// Why an update was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Loss,
    GradNorm,
    Advantage,
    LogProb,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::Loss => "non-finite loss",
            Skip::GradNorm => "non-finite gradient norm",
            Skip::Advantage => "non-finite advantage",
            Skip::LogProb => "non-finite old or reference log-probability",
        })
    }
}

/// The skip counts a checkpoint keeps, so that a resumed run continues them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts {
    /// Updates skipped since the run began.
    pub total: u64,
    /// Updates skipped since the last applied one.
    pub in_a_row: u32,
}

impl SkipCounts {
    /// Records what update `step`'s optimizer call did (`None`: applied).
    /// Errs when `limit` updates in a row were skipped.
    pub fn record(&mut self, step: u64, skip: Option<Skip>, limit: u32) -> Result<(), TrainError> {
        let Some(why) = skip else {
            self.in_a_row = 0;
            return Ok(());
        };
        self.total += 1;
        self.in_a_row += 1;
        tracing::warn!(
            "step {step}: update skipped ({why}); {} in a row, the run stops at {limit}",
            self.in_a_row
        );
        if self.in_a_row >= limit {
            return Err(TrainError::Diverged {
                step,
                skips: self.in_a_row,
                why,
            });
        }
        Ok(())
    }
}

/// Whether every value is finite.
pub fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// Where `IGPO_INJECT_NAN` puts a NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inject {
    Loss,
    Grad,
    Advantage,
    LogProb,
}

/// The parsed `IGPO_INJECT_NAN`: (kind, step) pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NanInjection(Vec<(Inject, u64)>);

/// The test hook's environment variable.
pub const INJECT_NAN_VAR: &str = "IGPO_INJECT_NAN";

impl NanInjection {
    /// Reads [`INJECT_NAN_VAR`] (unset or empty: nothing injected); `kinds`
    /// are those the job has (SFT has no advantages or log-probs).
    pub fn from_env(kinds: &[Inject]) -> Result<NanInjection, TrainError> {
        match std::env::var(INJECT_NAN_VAR) {
            Ok(v) => NanInjection::parse(&v, kinds).map_err(|msg| TrainError::Config {
                path: INJECT_NAN_VAR.into(),
                msg,
            }),
            Err(std::env::VarError::NotPresent) => Ok(NanInjection::default()),
            Err(std::env::VarError::NotUnicode(_)) => Err(TrainError::Config {
                path: INJECT_NAN_VAR.into(),
                msg: "not UTF-8".into(),
            }),
        }
    }

    fn parse(text: &str, kinds: &[Inject]) -> Result<NanInjection, String> {
        let mut out = vec![];
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad =
                || format!("`{item}` is not KIND@STEP (KIND: loss, grad, advantage, logprob)");
            let (kind, step) = item.split_once('@').ok_or_else(bad)?;
            let kind = match kind {
                "loss" => Inject::Loss,
                "grad" => Inject::Grad,
                "advantage" => Inject::Advantage,
                "logprob" => Inject::LogProb,
                _ => return Err(bad()),
            };
            if !kinds.contains(&kind) {
                return Err(format!("`{item}`: this job has no {kind:?} to inject into"));
            }
            out.push((kind, step.parse().map_err(|_| bad())?));
        }
        Ok(NanInjection(out))
    }

    /// Whether a NaN goes into `kind` at step `step`.
    pub fn at(&self, kind: Inject, step: u64) -> bool {
        self.0.contains(&(kind, step))
    }
}

/// Serde for a float that may be NaN: JSON has no NaN, so it is written as
/// `null` (as serde_json writes any non-finite float) and read back as NaN,
/// which keeps a skipped update's metrics line readable on resume.
pub mod nan_as_null {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_on_an_applied_update_and_stop_at_the_limit() {
        let mut c = SkipCounts::default();
        c.record(1, Some(Skip::GradNorm), 2).unwrap();
        c.record(2, None, 2).unwrap();
        assert_eq!(
            c,
            SkipCounts {
                total: 1,
                in_a_row: 0
            }
        );
        c.record(3, Some(Skip::Loss), 2).unwrap();
        let e = c.record(4, Some(Skip::Advantage), 2).unwrap_err();
        assert_eq!(
            c,
            SkipCounts {
                total: 3,
                in_a_row: 2
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("step 4") && text.contains("2 updates in a row"),
            "{text}"
        );
        assert!(text.contains("non-finite advantage"), "{text}");
    }

    #[test]
    fn the_hook_parses_kinds_and_steps() {
        let all = [
            Inject::Loss,
            Inject::Grad,
            Inject::Advantage,
            Inject::LogProb,
        ];
        let n = NanInjection::parse("grad@3, loss@5,advantage@2", &all).unwrap();
        assert!(n.at(Inject::Grad, 3) && n.at(Inject::Loss, 5) && n.at(Inject::Advantage, 2));
        assert!(!n.at(Inject::Grad, 2) && !n.at(Inject::LogProb, 3));
        assert!(NanInjection::parse("grad3", &all)
            .unwrap_err()
            .contains("KIND@STEP"));
        assert!(NanInjection::parse("nan@1", &all).is_err());
        assert!(NanInjection::parse("grad@x", &all).is_err());
        let sft = [Inject::Loss, Inject::Grad];
        assert!(NanInjection::parse("advantage@1", &sft)
            .unwrap_err()
            .contains("no Advantage"));
        assert_eq!(
            NanInjection::parse("", &all).unwrap(),
            NanInjection::default()
        );
    }

    #[test]
    fn nan_round_trips_through_json_as_null() {
        #[derive(Serialize, Deserialize)]
        struct L {
            #[serde(with = "nan_as_null")]
            x: f64,
        }
        let text = serde_json::to_string(&L { x: f64::NAN }).unwrap();
        assert_eq!(text, r#"{"x":null}"#);
        assert!(serde_json::from_str::<L>(&text).unwrap().x.is_nan());
        assert_eq!(serde_json::from_str::<L>(r#"{"x":1.5}"#).unwrap().x, 1.5);
    }
}
