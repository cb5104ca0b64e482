//! `cargo xtask readme` (also the last stage of `cargo xtask test`): runs the
//! shell blocks of README.md, in order, as ONE bash session started in the
//! repository root — what a new user pastes — so the README cannot rot.
//!
//! - A ```` ```sh ```` block runs as written (`set -euo pipefail`).
//! - A ```` ```sh gpu ```` block holds `igpo ... --device cuda` commands: on a
//!   machine with a GPU they run as written; without one each must fail with
//!   exactly one stderr line that names cuda (the promise the README makes).
//! - Long runs are cut short and run folders moved under `target/readme/` by
//!   [`rewrites`]: a README command listed there runs as its rewrite instead.
//!   Every rewrite must match a README command, so editing one of those
//!   commands fails here until the table follows.
//! - Folders the walkthrough creates under `target/` ([`MOVED`]) are made
//!   under `target/readme/` instead, so a user's own copies are never
//!   touched and every run starts clean.
//! - `cargo xtask test` itself is skipped (it is what is running).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, target, Result};

/// One command of a README shell block (continuation lines joined).
#[derive(Debug, PartialEq)]
struct Cmd {
    /// The command without its trailing comment, whitespace collapsed: what
    /// rewrites match against.
    key: String,
    gpu: bool,
}

/// The commands of README's `sh` / `sh gpu` blocks, in order.
fn commands(readme: &str) -> Vec<Cmd> {
    let mut out = vec![];
    let mut block: Option<bool> = None; // Some(gpu) inside a shell block
    let mut pending = String::new();
    for line in readme.lines() {
        let t = line.trim_end();
        match (block, t.trim_start().strip_prefix("```")) {
            (None, Some(info)) => {
                // Other languages (toml, rust, ...) are not commands.
                block = match info.trim() {
                    "sh" => Some(false),
                    "sh gpu" => Some(true),
                    _ => None,
                };
            }
            (Some(_), Some(_)) => block = None,
            (Some(gpu), None) => {
                let code = strip_comment(t);
                if let Some(head) = code.strip_suffix('\\') {
                    pending.push_str(head);
                    pending.push(' ');
                    continue;
                }
                pending.push_str(&code);
                let key = pending.split_whitespace().collect::<Vec<_>>().join(" ");
                pending.clear();
                if !key.is_empty() {
                    out.push(Cmd { key, gpu });
                }
            }
            (None, None) => {}
        }
    }
    out
}

/// The line without a trailing `# comment` (a `#` outside quotes that starts
/// the line or follows a space).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return line[..i].trim_end().to_string()
            }
            _ => {}
        }
        prev = c;
    }
    line.trim_end().to_string()
}

/// Paths of the walkthrough that run under the scratch folder instead.
const MOVED: &[&str] = &["target/my-plugins/"];

/// README commands that run differently here, and why. `None`: skipped.
fn rewrites(scratch: &Path) -> Vec<(&'static str, Option<String>)> {
    let s = scratch.display();
    // The tool-call SFT and RL runs of the walkthrough take tens of minutes
    // on a CPU; here they run 2 SFT steps and 1 RL step on scratch folders
    // (absolute paths: `--set` paths are otherwise relative to the run file).
    let sft = format!("{s}/runs/tool-sft");
    let tuned = format!("{sft}/checkpoints/step-2");
    let small_rl = format!(
        "--set model={tuned} --set train.steps=1 --set rl.prompts_per_step=1 \
         --set rl.group_size=2 --set eval.limit=2 --set train.checkpoint_every=1"
    );
    vec![
        // What is running; and its first step is `cargo xtask kernels`.
        ("cargo xtask test", None),
        ("cargo xtask kernels", None),
        (
            "python3 tools/make_tool_sft.py --n 48 --out target/tool-sft.jsonl",
            Some(format!("python3 tools/make_tool_sft.py --n 4 --out {s}/tool-sft.jsonl")),
        ),
        (
            "igpo sft --config examples/agent/tool-sft.toml",
            Some(format!(
                "igpo sft --config examples/agent/tool-sft.toml --set train.steps=2 \
                 --set data.train={s}/tool-sft.jsonl --set train.run_dir={sft}"
            )),
        ),
        (
            "igpo eval --config examples/agent/squad-search-tool-sft.toml",
            Some(format!(
                "igpo eval --config examples/agent/squad-search-tool-sft.toml \
                 --set model={tuned} --set dataset.limit=2"
            )),
        ),
        // Disk (CI machines are small): each checkpoint of these runs is
        // 1.8 GB, 0.3 of it the bf16 model the walkthrough goes on with; the
        // rest (f32 master weights and AdamW moments, for a resume) goes
        // once no later command needs it (its own line: under `set -e`, a
        // command before `&&` may fail unnoticed).
        (
            "igpo train --config examples/agent/squad-igpo.toml",
            Some(format!(
                "igpo train --config examples/agent/squad-igpo.toml {small_rl} \
                 --set train.run_dir={s}/runs/squad-igpo\n\
                 rm -r {s}/runs/squad-igpo/checkpoints/step-1/state"
            )),
        ),
        (
            "igpo train --config examples/agent/squad-igpo.toml --set rl.estimator=grpo --set train.run_dir=../../target/runs/squad-grpo",
            Some(format!(
                "igpo train --config examples/agent/squad-igpo.toml {small_rl} \
                 --set rl.estimator=grpo --set train.run_dir={s}/runs/squad-grpo\n\
                 rm -r {s}/runs/squad-grpo/checkpoints {sft}/checkpoints"
            )),
        ),
        (
            "igpo model export target/runs/squad-igpo/checkpoints/step-20 target/models/squad-igpo --dtype bf16",
            Some(format!(
                "igpo model export {s}/runs/squad-igpo/checkpoints/step-1/model {s}/models/squad-igpo --dtype bf16"
            )),
        ),
        // Four runs of one step on 10 dev questions instead of 20 of 30 steps.
        (
            "igpo sweep --config target/demo/igpo.toml --seeds 0..5 --set rl.estimator=igpo,f1_only,ig_only,grpo --out target/demo/ablation",
            Some(format!(
                "igpo sweep --config target/demo/igpo.toml --seeds 0..2 \
                 --set rl.estimator=igpo,f1_only --set train.steps=1 --set eval.limit=10 \
                 --out {s}/ablation"
            )),
        ),
        (
            "igpo report target/demo/ablation --out target/demo/ablation.html",
            Some(format!(
                "igpo report {s}/ablation --out {s}/ablation.html"
            )),
        ),
        (
            "igpo report target/runs/squad-igpo target/runs/squad-grpo --out target/runs/squad.html",
            Some(format!(
                "igpo report {s}/runs/squad-igpo {s}/runs/squad-grpo --out {s}/runs/squad.html"
            )),
        ),
    ]
}

/// Is there an NVIDIA GPU with a working driver?
fn gpu_present() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Without a GPU, a `--device cuda` command must fail with one line naming cuda.
const NO_GPU_CHECK: &str = r#"readme_no_gpu() {
    local err
    if err=$("$@" 2>&1 >/dev/null); then
        echo "README check: '$*' succeeded without a GPU" >&2; return 1
    fi
    if [ "$(printf '%s\n' "$err" | wc -l)" != 1 ] || ! grep -qi cuda <<<"$err"; then
        echo "README check: '$*' must fail with one line naming cuda, got: $err" >&2; return 1
    fi
    echo "  no GPU here, as promised: $err" >&2
}
"#;

/// The bash session of the README, rewritten as above.
fn script(readme: &str, scratch: &Path, gpu: bool) -> Result<String> {
    let cmds = commands(readme);
    let table = rewrites(scratch);
    for (key, _) in &table {
        if !cmds.iter().any(|c| c.key == *key) {
            return Err(format!(
                "xtask/src/readme.rs rewrites `{key}`, which README.md no longer has: update the table"
            ));
        }
    }
    let mut s = String::from("set -euo pipefail\n");
    s.push_str(NO_GPU_CHECK);
    for c in &cmds {
        let line = match table.iter().find(|(k, _)| *k == c.key) {
            Some((_, None)) => {
                s.push_str(&format!(
                    "echo '+ (skipped) {}' >&2\n",
                    c.key.replace('\'', "")
                ));
                continue;
            }
            Some((_, Some(r))) => r.clone(),
            None => MOVED.iter().fold(c.key.clone(), |line, dir| {
                line.replace(
                    dir,
                    &format!("{}/{}", scratch.display(), &dir["target/".len()..]),
                )
            }),
        };
        s.push_str(&format!(
            "echo {} >&2\n",
            shell_quote(&format!("+ README: {}", c.key))
        ));
        if c.gpu && !gpu {
            s.push_str(&format!("readme_no_gpu {line}\n"));
        } else {
            s.push_str(&line);
            s.push('\n');
        }
    }
    Ok(s)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `cargo xtask readme`.
pub fn check() -> Result<()> {
    let start = std::time::Instant::now();
    let (ours, theirs) = (root().join("target"), target());
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    std::fs::create_dir_all(&ours).map_err(|e| format!("{}: {e}", ours.display()))?;
    if !same(&ours, &theirs) {
        return Err(format!(
            "the README's commands use ./target; CARGO_TARGET_DIR is {} (unset it, or link ./target to it)",
            theirs.display()
        ));
    }
    let readme_path = root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .map_err(|e| format!("{}: {e}", readme_path.display()))?;
    let scratch: PathBuf = ours.join("readme");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let gpu = gpu_present();
    let text = script(&readme, &scratch, gpu)?;
    let path = scratch.join("session.sh");
    std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "xtask: running README.md's commands as one shell session ({}; GPU: {})",
        path.display(),
        if gpu {
            "yes"
        } else {
            "none, --device cuda lines must fail in one line"
        }
    );
    crate::run(
        Command::new("bash")
            .arg(&path)
            .current_dir(root())
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    eprintln!(
        "xtask: every README command ran ({:.0} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = r##"
# Title
```sh
cargo xtask demo   # the demo
cargo xtask test
```
text `igpo not-a-command`
```toml
[x]
y = "# not a comment"
```
```sh
igpo data corpus --squad a.json \
    --out target/c.jsonl  # where it goes
igpo plugin call x.wasm --args '{"q": "a # b"}'
```
```sh gpu
igpo train --config r.toml --device cuda
```
"##;

    #[test]
    fn shell_blocks_become_commands() {
        let keys: Vec<(String, bool)> = commands(README)
            .into_iter()
            .map(|c| (c.key, c.gpu))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("cargo xtask demo".into(), false),
                ("cargo xtask test".into(), false),
                (
                    "igpo data corpus --squad a.json --out target/c.jsonl".into(),
                    false
                ),
                (
                    r#"igpo plugin call x.wasm --args '{"q": "a # b"}'"#.into(),
                    false
                ),
                ("igpo train --config r.toml --device cuda".into(), true),
            ]
        );
    }

    #[test]
    fn stale_rewrites_fail() {
        let err = script(README, Path::new("/s"), false).unwrap_err();
        assert!(err.contains("no longer has"), "{err}");
    }

    #[test]
    fn the_real_readme_matches_every_rewrite_and_skips_itself() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let s = script(&readme, Path::new("/scratch"), false).unwrap();
        assert!(s.contains("(skipped) cargo xtask test"));
        assert!(!s.lines().any(|l| l == "cargo xtask test"));
        assert!(s.contains("--set train.run_dir=/scratch/runs/squad-igpo"));
        assert!(s.contains("--out /scratch/my-plugins/word-count\n"));
        assert!(!s
            .lines()
            .any(|l| !l.starts_with("echo") && l.contains("target/my-plugins")));
    }
}
