//! Task checkpoints: what the agent must find again after a restart or a power cut, in
//! `<work-dir>/meta/frameworks/<fid>/tasks/<tid>.json` (the supervisor's `<tid>.exit`
//! beside it).
//!
//! A checkpoint is built under the tasks' lock (a copy of the entry, with a version) and
//! written after the lock is released, so no fsync ever holds up the other tasks. Writes of
//! one task are ordered by its [`File`]: a version older than the one on disk is skipped,
//! since the newer one records everything the older did.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};

/// What is checkpointed per task (protobuf fields as bytes, so the file stays readable by
/// newer agents).
#[derive(Serialize, Deserialize)]
pub(super) struct Checkpoint {
    pub framework_id: String,
    pub info: Vec<u8>,
    pub state: i32,
    pub exit_code: Option<i32>,
    pub pid: Option<u32>,
    pub pending: Vec<Vec<u8>>,
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
    #[serde(default)]
    pub supervisor_start: Option<u64>,
    #[serde(default)]
    pub kill_requested: bool,
}

/// The checkpoint file of one task: the newest version written to it. Writers hold it for
/// the write, so one task's writes never interleave.
#[derive(Clone, Default)]
pub(super) struct File(Arc<Mutex<u64>>);

/// The version marking a file removed: nothing is written to it again.
const REMOVED: u64 = u64::MAX;

impl File {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write version `version` of the checkpoint at `path` durably (see
    /// [`crate::durable::write`]), unless a newer version is there already.
    pub(super) fn write<T: Serialize>(&self, path: &Path, version: u64, checkpoint: &T) -> std::io::Result<()> {
        let mut written = self.lock();
        if *written >= version {
            return Ok(());
        }
        let bytes = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::durable::write(path, &bytes)?;
        *written = version;
        Ok(())
    }

    /// Remove the checkpoint at `path` for good (the task is forgotten).
    pub(super) fn remove(&self, path: &Path) {
        let mut written = self.lock();
        *written = REMOVED;
        let _ = std::fs::remove_file(path);
    }
}

/// Where the checkpoint of task `t` of framework `f` lives under `work_dir`.
pub(super) fn path(work_dir: &Path, f: &str, t: &str) -> PathBuf {
    work_dir
        .join("meta/frameworks")
        .join(f)
        .join("tasks")
        .join(format!("{t}.json"))
}

/// A checkpoint file read back: what it holds, or why it cannot be read.
pub(super) type Read = Result<(Checkpoint, v1::TaskInfo), String>;

/// Every checkpoint file under `work_dir`, with what it holds or why it cannot be read.
pub(super) fn read_all(work_dir: &Path) -> Vec<(PathBuf, Read)> {
    let root = work_dir.join("meta/frameworks");
    let mut files = Vec::new();
    for f in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for t in std::fs::read_dir(f.path().join("tasks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = t.path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files
        .into_iter()
        .map(|path| {
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).map_err(|e| e.to_string()))
                .and_then(|cp| match v1::TaskInfo::decode(cp.info.as_slice()) {
                    Ok(info) => Ok((cp, info)),
                    Err(_) => Err("the task in it cannot be decoded".to_string()),
                });
            (path, read)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(state: i32) -> Checkpoint {
        Checkpoint {
            framework_id: "f".into(),
            info: v1::TaskInfo {
                task_id: "t".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            state,
            exit_code: None,
            pid: None,
            pending: vec![],
            supervisor_pid: None,
            supervisor_start: None,
            kill_requested: false,
        }
    }

    #[test]
    fn an_older_version_never_overwrites_a_newer_one_and_a_removed_file_stays_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "f", "t");
        let file = File::default();
        file.write(&p, 2, &checkpoint(2)).unwrap();
        // Built before version 2 but written after it: skipped.
        file.write(&p, 1, &checkpoint(1)).unwrap();
        let read = read_all(dir.path());
        assert_eq!(read.len(), 1);
        let (cp, info) = read[0].1.as_ref().unwrap();
        assert_eq!((cp.state, info.task_id.as_str()), (2, "t"));
        file.remove(&p);
        file.write(&p, 3, &checkpoint(3)).unwrap();
        assert!(
            read_all(dir.path()).is_empty(),
            "a late write re-created a removed checkpoint"
        );
    }

    #[test]
    fn an_unreadable_checkpoint_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "f", "bad");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{not json").unwrap();
        let read = read_all(dir.path());
        assert_eq!(read.len(), 1);
        assert!(read[0].1.is_err());
    }
}
