//! Durable file writes: what the spool and the jobs folder promise survives a crash is
//! written to a temporary file, fsynced, renamed into place, and the folder fsynced.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// fsyncs a folder (a rename or a removal in it is then on disk).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `tmp`, fsyncs it, renames it to `dst` and fsyncs `dst`'s folder.
/// On error the temporary file is removed (best effort).
pub fn write_atomic(tmp: &Path, dst: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let written = (|| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, dst)?;
        match dst.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
            _ => sync_dir(Path::new(".")),
        }
    })();
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

/// Removes a file and fsyncs its folder.
pub fn remove(path: &Path) -> std::io::Result<()> {
    fs::remove_file(path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dst) = (dir.path().join(".a.tmp"), dir.path().join("a.json"));
        write_atomic(&tmp, &dst, b"one").unwrap();
        write_atomic(&tmp, &dst, b"two").unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"two");
        assert!(!tmp.exists());
        // A temporary in a missing folder fails and leaves nothing behind.
        let bad = dir.path().join("missing/x.tmp");
        assert!(write_atomic(&bad, &dst, b"three").is_err());
        assert_eq!(fs::read(&dst).unwrap(), b"two");
        remove(&dst).unwrap();
        assert!(!dst.exists());
    }
}
