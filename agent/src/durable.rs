//! Files the agent must find again after a crash or a power cut: task checkpoints, exit
//! records, its id.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replace `path` with `bytes` so that after a crash or power cut it holds either the old
/// contents or the new, whole: write a temporary file beside it, fsync it, rename it over
/// `path`, fsync the directory (which makes the rename itself durable).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_durable_write_replaces_the_file_whole_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.json");
        super::write(&path, b"first").unwrap();
        super::write(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("task.json")]);
    }
}
