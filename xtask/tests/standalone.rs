//! A clone of this repository must run everything it describes on its own:
//! no tracked file may point outside the checkout (the project's own machines
//! have a `shared` folder beside it; nobody else does) or at a folder that only
//! exists on one machine.

use std::path::Path;
use std::process::Command;

/// What no tracked file may contain, with the reason. Written in two parts so
/// this file does not match itself.
fn forbidden() -> Vec<(String, &'static str)> {
    vec![
        (format!("..{}", "/shared"), "a folder beside the checkout"),
        (format!("{}work/", "/"), "a machine's work folder"),
        (format!("{}root/", "/"), "a machine's home folder"),
        (format!("{}home/", "/"), "a machine's home folder"),
        (format!("{}Users/", "/"), "a machine's home folder"),
    ]
}

fn tracked_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git ls-files (the test lists the tracked files with git)");
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("tracked file names are UTF-8")
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_tracked_file_points_outside_the_checkout_or_at_one_machine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let files = tracked_files(root);
    assert!(
        files.len() > 100,
        "only {} tracked files found",
        files.len()
    );
    let patterns = forbidden();
    let mut found = vec![];
    for name in &files {
        // Binary files (images, compressed data) cannot name a path.
        let Ok(text) = std::fs::read_to_string(root.join(name)) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for (pattern, why) in &patterns {
                if line.contains(pattern.as_str()) {
                    found.push(format!("{name}:{}: `{pattern}` ({why})", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} tracked lines point outside the checkout or at one machine:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_check_sees_a_planted_reference() {
    // The patterns must match the way such paths are written.
    let line = format!("--tokenizer ..{}/data/x.json", "/shared");
    assert!(forbidden().iter().any(|(p, _)| line.contains(p.as_str())));
    let line = format!("python3 {}work/main/tools/x.py", "/");
    assert!(forbidden().iter().any(|(p, _)| line.contains(p.as_str())));
}
