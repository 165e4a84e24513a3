//! cpu and memory limits with cgroups v2, where the agent may create cgroups.
//!
//! At start the agent looks for a cgroup2 mount with the `cpu` and `memory` controllers and
//! tries to create `<mount>/corral` with both enabled for its children. If any step fails
//! (cgroup v1, a read-only mount in a container, no permission), isolation is off, the agent
//! says so in its registration (`AgentInfo.isolation`) and in its log, and tasks run without
//! limits. Each task gets `<mount>/corral/<framework>__<task>` with `cpu.max` (quota per
//! 100 ms period) and `memory.max`; the task's pid is moved there right after it starts.

use std::path::{Path, PathBuf};

use corral_proto::resources::{Resources, MILLI};

/// The cpu.max period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Per-task cgroups (v2) under the agent's own cgroup.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// Set up `<mount>/corral`, or None (with the reason) when isolation is not possible.
    pub fn detect(mount: &Path) -> Result<Cgroups, String> {
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
            .map_err(|_| format!("{} is not a cgroup v2 mount", mount.display()))?;
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !has("cpu") || !has("memory") {
            return Err(format!(
                "cgroup v2 at {} lacks the cpu or memory controller",
                mount.display()
            ));
        }
        let root = mount.join("corral");
        std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        for dir in [mount, root.as_path()] {
            std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory")
                .map_err(|e| format!("cannot enable controllers in {}: {e}", dir.display()))?;
        }
        Ok(Cgroups { root })
    }

    /// The cgroup directory of the task cgroup `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Create the cgroup of one task with its limits.
    pub fn create(&self, name: &str, resources: &Resources) -> std::io::Result<PathBuf> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir)?;
        let cpus = resources.scalar_milli("cpus");
        if cpus > 0 {
            let quota = (cpus * CPU_PERIOD_US / MILLI).max(1000);
            std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
        }
        let mem_mib_milli = resources.scalar_milli("mem");
        if mem_mib_milli > 0 {
            let bytes = mem_mib_milli * 1024 * 1024 / MILLI;
            std::fs::write(dir.join("memory.max"), bytes.to_string())?;
        }
        Ok(dir)
    }

    /// Move `pid` into the cgroup `dir`.
    pub fn add(&self, dir: &Path, pid: u32) -> std::io::Result<()> {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
    }

    /// Remove a task's cgroup (once its processes are gone).
    pub fn remove(&self, dir: &Path) {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_where_cgroup_v2_is_available() {
        // A directory laid out like a cgroup2 mount (the kernel side is not exercised here).
        let mount = tempfile::tempdir().unwrap();
        assert!(Cgroups::detect(mount.path())
            .unwrap_err()
            .contains("not a cgroup v2 mount"));
        std::fs::write(mount.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let cg = Cgroups::detect(mount.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(mount.path().join("corral/cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
        let dir = cg
            .create("f__t", &Resources::parse("cpus:0.5;mem:256").unwrap())
            .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            (256u64 * 1024 * 1024).to_string()
        );
        cg.add(&dir, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "4242");

        std::fs::write(mount.path().join("cgroup.controllers"), "cpuset pids").unwrap();
        assert!(Cgroups::detect(mount.path()).unwrap_err().contains("lacks"));
    }
}
