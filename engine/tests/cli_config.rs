//! `igpo config default` prints a run file that parses into the defaults;
//! `igpo config doc` prints docs/config.md as committed.

use crate::common;

/// Runs `igpo args`, which must succeed: its stdout.
fn igpo(args: &[&str]) -> String {
    let (code, out, err) = common::igpo(args);
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn config_default_round_trips_and_docs_are_current() {
    let text = igpo(&["config", "default"]);
    let cfg: igpo::train::RlRunConfig = toml::from_str(&text).unwrap();
    assert_eq!(cfg.rl, igpo::train::rl::RlConfig::default());
    assert_eq!(cfg.loss, igpo::rl::LossConfig::default());
    let doc = igpo(&["config", "doc"]);
    let committed = std::fs::read_to_string(common::workspace().join("docs/config.md")).unwrap();
    assert_eq!(
        doc, committed,
        "docs/config.md is stale: igpo config doc > docs/config.md"
    );
}
