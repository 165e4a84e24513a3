//! The Hello framework against a real cluster (3 masters, 1 agent): the task's output holds
//! "Hello, Corral!", the task finishes, and a message went each way.

use std::time::Duration;

use corral_tests::Cluster;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_runs_against_a_real_cluster() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("hello-agent", "cpus:2;mem:512", "");
    cluster.wait_agents(1, T).await;
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hello-scheduler"))
        .args([
            "--masters",
            &cluster.masters_arg(),
            "--executor",
            env!("CARGO_BIN_EXE_hello-executor"),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Hello framework ends within 60 s")
        .expect("run hello-scheduler");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "hello-scheduler failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "message from executor hello-executor: Hello from the executor",
        "task hello-1 is TASK_RUNNING",
        "task hello-1 is TASK_FINISHED",
        "done",
    ] {
        assert!(
            stdout.contains(line),
            "{line:?} missing from the scheduler's output:\n{stdout}"
        );
    }
    let framework_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("registered as framework "))
        .expect("the scheduler printed its framework id")
        .trim()
        .to_string();
    // The task's output: the executor's sandbox.
    let output = cluster.agents["hello-agent"]
        .work_dir
        .join("frameworks")
        .join(&framework_id)
        .join("executors/hello-executor/stdout");
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(text.contains("Hello, Corral!"), "{}: {text:?}", output.display());
    assert!(
        text.contains("message from the scheduler: Hello from the scheduler"),
        "the scheduler's message did not reach the executor: {text:?}"
    );
    // And as an operator reads it: `corral logs` finds the task's output in its executor's
    // sandbox, through the masters and the agent's /files.
    let logs = cluster.cli(&["logs", "hello-1", "--framework", &framework_id]);
    let shown = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.status.success() && shown.contains("Hello, Corral!"),
        "corral logs hello-1: {shown}{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}
