//! Sandbox garbage collection: a finished task's sandbox is removed `--gc-delay` after the
//! task ended (and its last status update was acknowledged), sooner when the work dir's disk
//! fills up; a sandbox of a task the agent still holds (running, or with updates not yet
//! acknowledged) is never removed.
//!
//! The allowed age shrinks with disk usage as in Mesos (`--gc_delay`, `--gc_disk_headroom`):
//! `gc_delay × max(0, 1 − headroom − usage)`, so a disk at `1 − headroom` full keeps no
//! finished sandbox at all. A task's end is the modification time of the marker
//! [`FINISHED_MARKER`] the agent writes into the sandbox once it let go of the task; a
//! sandbox without one (written before this agent version, or left behind by a crash) ages
//! from its own modification time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file whose modification time is when the agent let go of the task.
pub const FINISHED_MARKER: &str = ".corral-finished";

/// Longest time between two scans of the sandboxes.
pub const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest time between two scans.
pub const MIN_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How often to scan for `gc_delay`: often enough that a sandbox outlives its delay by at
/// most a quarter of it (or a minute).
pub fn scan_interval(gc_delay: Duration) -> Duration {
    (gc_delay / 4).clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL)
}

/// The age past which a finished sandbox goes, at disk usage `usage` (0 to 1).
pub fn max_age(gc_delay: Duration, headroom: f64, usage: f64) -> Duration {
    gc_delay.mul_f64((1.0 - headroom - usage).clamp(0.0, 1.0))
}

/// The used fraction of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let total = st.f_blocks as f64;
    (total > 0.0).then(|| 1.0 - st.f_bavail as f64 / total)
}

/// When the sandbox's task ended, as far as GC can tell.
fn ended_at(sandbox: &Path) -> Option<SystemTime> {
    let marker = sandbox.join(FINISHED_MARKER);
    std::fs::metadata(&marker)
        .or_else(|_| std::fs::metadata(sandbox))
        .and_then(|m| m.modified())
        .ok()
}

/// What the agent still holds, whose sandboxes are never collected: tasks and executors,
/// by (framework id, id).
#[derive(Debug, Default, Clone)]
pub struct Held {
    /// Tasks running, or with updates not yet acknowledged.
    pub tasks: BTreeSet<(String, String)>,
    /// Executors running, or ended but not yet acknowledged by the master.
    pub executors: BTreeSet<(String, String)>,
}

/// Remove the sandboxes (of tasks and of executors) under `work_dir` older than `age` that
/// are not in `held`. Returns the removed sandboxes.
pub fn collect(work_dir: &Path, held: &Held, age: Duration, now: SystemTime) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let frameworks = work_dir.join("frameworks");
    for f in std::fs::read_dir(&frameworks).into_iter().flatten().flatten() {
        let framework_id = f.file_name().to_string_lossy().to_string();
        for (kind, held) in [("tasks", &held.tasks), ("executors", &held.executors)] {
            collect_kind(&f.path().join(kind), &framework_id, held, age, now, &mut removed);
            let _ = std::fs::remove_dir(f.path().join(kind));
        }
        // A framework with no sandbox left goes too.
        let _ = std::fs::remove_dir(f.path());
    }
    removed
}

fn collect_kind(
    dir: &Path,
    framework_id: &str,
    held: &BTreeSet<(String, String)>,
    age: Duration,
    now: SystemTime,
    removed: &mut Vec<PathBuf>,
) {
    for t in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let id = t.file_name().to_string_lossy().to_string();
        if held.contains(&(framework_id.to_string(), id)) {
            continue;
        }
        let sandbox = t.path();
        let old = ended_at(&sandbox)
            .and_then(|at| now.duration_since(at).ok())
            .is_some_and(|a| a >= age);
        if old {
            match std::fs::remove_dir_all(&sandbox) {
                Ok(()) => removed.push(sandbox),
                Err(e) => tracing::warn!(sandbox = %sandbox.display(), error = %e, "could not remove a sandbox"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_age_shrinks_as_the_disk_fills() {
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(max_age(week, 0.1, 0.0), week.mul_f64(0.9));
        assert_eq!(max_age(week, 0.1, 0.5), week.mul_f64(0.4));
        assert_eq!(max_age(week, 0.1, 0.95), Duration::ZERO);
        assert_eq!(scan_interval(week), MAX_SCAN_INTERVAL);
        assert_eq!(scan_interval(Duration::from_secs(2)), MIN_SCAN_INTERVAL);
    }

    #[test]
    fn only_old_sandboxes_of_tasks_let_go_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = |f: &str, t: &str| dir.path().join("frameworks").join(f).join("tasks").join(t);
        for (f, t) in [("f", "old"), ("f", "held"), ("f", "new"), ("g", "old")] {
            std::fs::create_dir_all(sandbox(f, t)).unwrap();
            std::fs::write(sandbox(f, t).join("stdout"), "x").unwrap();
        }
        std::fs::write(sandbox("f", "new").join(FINISHED_MARKER), "").unwrap();
        // A running executor's sandbox, as old as the others: held, so kept.
        let executor = dir.path().join("frameworks/f/executors/e1");
        std::fs::create_dir_all(&executor).unwrap();
        let held = Held {
            tasks: [("f".to_string(), "held".to_string())].into(),
            executors: [("f".to_string(), "e1".to_string())].into(),
        };
        // An hour from now, with an age of 30 minutes: all but the held one are old enough...
        let later = SystemTime::now() + Duration::from_secs(3600);
        let removed = collect(dir.path(), &held, Duration::from_secs(1800), later);
        assert_eq!(removed.len(), 3);
        assert!(sandbox("f", "held").exists(), "a held task's sandbox stays");
        assert!(executor.exists(), "a held executor's sandbox stays");
        assert!(
            !dir.path().join("frameworks/g").exists(),
            "an emptied framework dir goes"
        );
        // ...and now, nothing is.
        std::fs::create_dir_all(sandbox("f", "fresh")).unwrap();
        assert!(collect(dir.path(), &held, Duration::from_secs(1800), SystemTime::now()).is_empty());
    }
}
