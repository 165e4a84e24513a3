//! Containers for the deploy tests: an image made on this machine (no registry is
//! reachable) and compose projects torn down on drop, failed test or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The tag of the image the deploy tests build.
pub const TEST_IMAGE: &str = "corral-test:local";

/// Busybox applets linked into the image, for task commands and debugging.
const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "true", "false", "ls", "ps", "kill", "env", "id", "test", "chown",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fail clearly if there is no Docker engine or compose (on this machine kind there must be).
pub fn require_docker() {
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    assert!(
        engine.as_ref().is_ok_and(|o| o.status.success()),
        "the deploy tests need a running Docker engine (`docker version` failed: {engine:?}); on this machine kind Docker must be present"
    );
    let compose = Command::new("docker-compose").arg("version").output();
    assert!(
        compose.is_ok_and(|o| o.status.success()),
        "the deploy tests need docker-compose on PATH"
    );
}

fn copy_with_libs(binary: &Path, root: &Path, dest: &str) {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().expect("has parent")).expect("mkdir");
    std::fs::copy(binary, &target).expect("copy binary");
    // Debug symbols make the image ten times larger and are not needed to run.
    ok(Command::new("strip").arg("--strip-debug").arg(&target));
    let ldd = ok(Command::new("ldd").arg(binary));
    for line in ldd.lines() {
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let lib = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(lib.parent().expect("lib dir")).expect("mkdir lib");
            if !lib.exists() {
                std::fs::copy(path, &lib).unwrap_or_else(|e| panic!("copy {path}: {e}"));
            }
        }
    }
}

/// Build [`TEST_IMAGE`] once per test binary: a root filesystem with the locally built
/// binaries, the libraries they link, busybox, and a non-root `corral` user, imported with
/// `docker import`.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_docker();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let busybox =
            busybox.expect("busybox is needed for the test image (apt-get install busybox-static; .ci/run does)");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("rootfs");
        for d in [
            "bin",
            "etc",
            "tmp",
            "var/lib/corral",
            "usr/local/bin",
            "proc",
            "sys",
            "dev",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for name in ["corral-master", "corral-agent", "corral"] {
            copy_with_libs(&crate::binary(name), &root, &format!("/usr/local/bin/{name}"));
        }
        std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink applet");
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ncorral:x:10001:10001:corral:/var/lib/corral:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\ncorral:x:10001:\n").expect("group");
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
        ok(Command::new("chmod").arg("1777").arg(root.join("tmp")));
        ok(Command::new("chown")
            .arg("-R")
            .arg("10001:10001")
            .arg(root.join("var/lib/corral")));
        let tar = dir.path().join("rootfs.tar");
        ok(Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        ok(Command::new("docker")
            .args([
                "import",
                "--change",
                "USER corral",
                "--change",
                "WORKDIR /var/lib/corral",
                "--change",
                "ENV PATH=/usr/local/bin:/bin",
                "--change",
                "CMD [\"corral-master\"]",
            ])
            .arg(&tar)
            .arg(TEST_IMAGE));
        eprintln!("deploy: built {TEST_IMAGE} from the local binaries");
    });
    TEST_IMAGE
}

/// A compose project of one of the `deploy/` files, torn down (containers, networks,
/// volumes) when dropped.
pub struct Project {
    /// The compose project's name.
    pub name: String,
    file: PathBuf,
}

impl Project {
    /// `docker-compose up -d` the file `deploy/<file>` as a fresh project.
    pub fn up(file: &str) -> Project {
        let image = test_image();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
        let name = format!("corraltest{}x{}", std::process::id(), rand_suffix());
        let p = Project { name, file };
        let out = p.compose(&["up", "-d"], image);
        assert!(
            out.status.success(),
            "compose up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn compose(&self, args: &[&str], image: &str) -> Output {
        run(Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .env("CORRAL_IMAGE", image))
    }

    /// Run a compose subcommand; panics on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.compose(args, TEST_IMAGE);
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker-compose exec -T <service> <cmd...>`, as the operator: with the client
    /// certificate the compose files' `certs` service makes (`corral` in a master's or an
    /// agent's container would otherwise present that container's own certificate).
    pub fn exec(&self, service: &str, cmd: &[&str]) -> Output {
        let mut args = vec![
            "exec",
            "-T",
            "-e",
            "CORRAL_TLS_CERT=/etc/corral/tls/ops.pem",
            "-e",
            "CORRAL_TLS_KEY=/etc/corral/tls/ops-key.pem",
            service,
        ];
        args.extend_from_slice(cmd);
        self.compose(&args, TEST_IMAGE)
    }

    /// The container id of a service.
    pub fn container(&self, service: &str) -> String {
        self.ok(&["ps", "-q", service]).trim().to_string()
    }

    /// The project's network.
    pub fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    /// Cut a service off the network / put it back (with its service name as alias).
    pub fn disconnect(&self, service: &str) {
        ok(Command::new("docker").args(["network", "disconnect", &self.network(), &self.container(service)]));
    }

    /// Connect `service`'s container to the project network again (after `disconnect`).
    pub fn connect(&self, service: &str) {
        ok(Command::new("docker").args([
            "network",
            "connect",
            "--alias",
            service,
            &self.network(),
            &self.container(service),
        ]));
    }

    /// The logs of a service (for failure reports).
    pub fn logs(&self, service: &str) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40", service], TEST_IMAGE);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in ["master-1", "master-2", "master-3", "agent-1", "agent-2"] {
                eprintln!("---- {s} ----\n{}", self.logs(s));
            }
        }
        let out = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "2"], TEST_IMAGE);
        if !out.status.success() {
            eprintln!("compose down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
