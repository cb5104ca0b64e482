//! Small filesystem helpers shared by every writer.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to a temporary sibling of `path`, syncs it and renames it
/// into place, so a crash never leaves a half-written file under `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
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
