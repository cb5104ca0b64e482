//! Small filesystem helpers shared by every writer.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name of `stem` while this process writes it
/// (`<stem>.tmp-<pid>`); see [`remove_stale_temps`].
pub fn temp_name(stem: &str) -> String {
    format!("{stem}.tmp-{}", std::process::id())
}

/// Writes `bytes` to a temporary sibling of `path`, syncs it and renames it
/// into place, so a crash never leaves a half-written file under `path`.
/// Temporaries of the same file left by a killed process are removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let stem = format!(".{}", name.to_string_lossy());
    if let Some(dir) = path.parent() {
        remove_stale_temps(dir, |s| s == stem);
    }
    let tmp = path.with_file_name(temp_name(&stem));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Removes the temporaries `<stem>.tmp-<pid>` (files or folders) in `dir`
/// whose stem `matches` and whose process is gone (killed mid-write), or is
/// this one (a failed earlier attempt). Another live process's are kept.
pub fn remove_stale_temps(dir: &Path, matches: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((stem, pid)) = name.to_str().and_then(|n| n.rsplit_once(".tmp-")) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if matches(stem) && (pid == std::process::id() || !process_alive(pid)) {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// Whether process `pid` runs (Linux: `/proc/<pid>`; elsewhere assumed, so
/// nothing is removed that might be in use).
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Checks, before any long work, that a file can be written at `path`: it is
/// not a folder, and a temporary sibling can be created there (then removed),
/// which also catches a parent that is missing, a file or read-only. The
/// error names `path`.
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "{}: is a directory; expected a file to write",
            path.display()
        ));
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: has no file name", path.display()))?;
    let probe = path.with_file_name(format!(
        ".{}.probe-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::File::create(&probe).map_err(|e| format!("{}: cannot be written: {e}", path.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Removes `dir` if it did not exist before a command (`existed_before`)
/// and holds no file now, only (nested) empty folders: what a command that
/// failed early leaves behind. Anything with a file in it stays.
pub fn remove_if_empty_tree(dir: &Path, existed_before: bool) {
    fn has_file(dir: &Path) -> bool {
        match fs::read_dir(dir) {
            Ok(entries) => entries.flatten().any(|e| match e.file_type() {
                Ok(t) if t.is_dir() => has_file(&e.path()),
                _ => true,
            }),
            Err(_) => true,
        }
    }
    if !existed_before && dir.is_dir() && !has_file(dir) {
        let _ = fs::remove_dir_all(dir);
    }
}

/// This process's claim on a folder: the file `<dir>/<name>` holding its
/// pid, removed when the claim is dropped. See [`lock_folder`].
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Claims `dir` for this process (two `igpo sweep`s into one folder would
/// run the same runs twice): creates `<dir>/<name>` exclusively with this
/// pid. A claim left by a process that is gone (killed) is taken over; one
/// held by a live process (this one included) is an error naming it.
pub fn lock_folder(dir: &Path, name: &str) -> Result<FolderLock, String> {
    let path = dir.join(name);
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(std::process::id().to_string().as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                return Ok(FolderLock { path });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                if let Some(pid) = holder.filter(|&pid| process_alive(pid)) {
                    return Err(format!(
                        "{}: in use by another igpo process (pid {pid}; its claim is {}: remove it if that process is not igpo)",
                        dir.display(),
                        path.display()
                    ));
                }
                // Gone, or not a pid: a stale claim.
                let _ = fs::remove_file(&path);
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("{}: could not be claimed", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_locks_refuse_a_live_holder_and_take_over_a_dead_one() {
        let dir = std::env::temp_dir().join(format!("igpo-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let lock = lock_folder(&dir, ".lock").unwrap();
        let err = lock_folder(&dir, ".lock").unwrap_err();
        assert!(
            err.contains("in use by another igpo process") && !err.contains('\n'),
            "{err}"
        );
        drop(lock);
        assert!(!dir.join(".lock").exists());
        // A pid no process can have (above Linux's pid_max), and garbage.
        for stale in ["4294967294", "not a pid"] {
            fs::write(dir.join(".lock"), stale).unwrap();
            let lock = lock_folder(&dir, ".lock").unwrap();
            let held = fs::read_to_string(dir.join(".lock")).unwrap();
            assert_eq!(held, std::process::id().to_string());
            drop(lock);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_of_dead_processes_go_and_live_ones_stay() {
        let dir = std::env::temp_dir().join(format!("igpo-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // pid 1 runs; a pid above the kernel's maximum (2^22) never does.
        let dead = dir.join(".m.jsonl.tmp-4294967290");
        let live = dir.join(".m.jsonl.tmp-1");
        let other = dir.join(".other.tmp-4294967290");
        let folder = dir.join(".step-3.tmp-4294967291");
        for f in [&dead, &live, &other] {
            fs::write(f, "x").unwrap();
        }
        fs::create_dir_all(folder.join("state")).unwrap();
        write_atomic(&dir.join("m.jsonl"), b"line\n").unwrap();
        assert!(!dead.exists() && live.exists() && other.exists());
        assert_eq!(fs::read(dir.join("m.jsonl")).unwrap(), b"line\n");
        remove_stale_temps(&dir, |s| s.starts_with(".step-"));
        assert!(!folder.exists() && other.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
