//! What the machine has to offer, when `--resources` is not given: cpus from the scheduler's
//! view of available parallelism, memory from /proc/meminfo less a reserve for the system,
//! disk from the work dir's file system less a reserve, and ports 31000-32000 (Mesos'
//! defaults).

use std::path::Path;

use corral_proto::resources::{RangeSet, Resources, Value, MILLI};

/// Memory kept back for the OS and the agent: 1 GiB, or half the memory on small machines.
const MEM_RESERVE_MIB: u64 = 1024;
/// Disk kept back: 5 GiB, or half the disk on small file systems.
const DISK_RESERVE_MIB: u64 = 5 * 1024;

/// Whether `r` holds any cpus or memory (an agent offering neither is useless).
pub fn has_compute(r: &Resources) -> bool {
    r.scalar_milli("cpus") > 0 || r.scalar_milli("mem") > 0
}

/// This machine's hostname, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn mem_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn disk_free_mib(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().to_str()?).ok()?;
    // SAFETY: statvfs fills the struct we pass; c is a valid NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64) / (1024 * 1024))
}

fn reserve(total: u64, reserve: u64) -> u64 {
    total.saturating_sub(reserve.min(total / 2))
}

/// The resources this machine offers.
pub fn detect(work_dir: &Path) -> Resources {
    let mut r = Resources::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let _ = r.insert_new("cpus", Value::Scalar(cpus * MILLI));
    if let Some(mem) = mem_total_mib() {
        let _ = r.insert_new("mem", Value::Scalar(reserve(mem, MEM_RESERVE_MIB) * MILLI));
    }
    if let Some(disk) = disk_free_mib(work_dir) {
        let _ = r.insert_new("disk", Value::Scalar(reserve(disk, DISK_RESERVE_MIB) * MILLI));
    }
    if let Ok(ports) = RangeSet::from_ranges("ports", &[(31000, 32000)], true) {
        let _ = r.insert_new("ports", Value::Ranges(ports));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_sensible() {
        let r = detect(Path::new("/tmp"));
        assert!(r.scalar_milli("cpus") >= MILLI);
        assert!(r.scalar_milli("mem") > 0);
        assert_eq!(r.ranges("ports").len(), 1001);
        assert_eq!(reserve(1000, 1024), 500);
        assert_eq!(reserve(8192, 1024), 7168);
    }
}
