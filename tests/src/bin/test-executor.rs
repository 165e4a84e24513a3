//! An executor for the scenario tests, on the Rust executor SDK. Each task it gets is
//! reported RUNNING; what happens next the framework says with messages:
//! - `finish:<task>`: the task FINISHES;
//! - `finish-when-agent-gone:<task>`: writes `<sandbox>/marked-<task>`, waits until the agent
//!   no longer answers, reports the task FINISHED and writes `<sandbox>/sent-<task>` (so the
//!   update is sent while the agent is away and must arrive after it re-subscribes);
//! - `crash:<code>`: the executor exits with `code` at once;
//! - anything else is echoed back as `echo:<message>`.
//!
//! It also greets the framework with `launched:<task>` for each task. Kills report
//! TASK_KILLED; SHUTDOWN ends it.

use corral_proto::executor::{Executor, ExecutorDriver};
use corral_proto::v1;

struct Test {
    sandbox: std::path::PathBuf,
}

impl Executor for Test {
    fn launch(&mut self, driver: &ExecutorDriver, task: v1::TaskInfo) {
        driver.send_status(&task.task_id, v1::TaskState::TaskRunning, "running");
        driver.send_message(format!("launched:{}", task.task_id).into_bytes());
    }

    fn kill(&mut self, driver: &ExecutorDriver, task_id: &str) {
        driver.send_status(task_id, v1::TaskState::TaskKilled, "killed by the test executor");
    }

    fn message(&mut self, driver: &ExecutorDriver, data: &[u8]) {
        let text = String::from_utf8_lossy(data).to_string();
        if let Some(task) = text.strip_prefix("finish:") {
            driver.send_status(task, v1::TaskState::TaskFinished, "finished on request");
        } else if let Some(task) = text.strip_prefix("finish-when-agent-gone:") {
            // Mark that the message arrived, wait until the agent is gone, then finish the
            // task: the update waits for the agent's return.
            let _ = std::fs::write(self.sandbox.join(format!("marked-{task}")), b"");
            let (driver, task, sandbox) = (driver.clone(), task.to_string(), self.sandbox.clone());
            let endpoint = std::env::var("MESOS_AGENT_ENDPOINT").unwrap_or_default();
            std::thread::spawn(move || {
                while std::net::TcpStream::connect(&endpoint).is_ok() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                driver.send_status(&task, v1::TaskState::TaskFinished, "finished while the agent was away");
                let _ = std::fs::write(sandbox.join(format!("sent-{task}")), b"");
            });
        } else if let Some(code) = text.strip_prefix("crash:") {
            std::process::exit(code.parse().unwrap_or(1));
        } else {
            driver.send_message(format!("echo:{text}").into_bytes());
        }
    }
}

#[tokio::main]
async fn main() {
    let sandbox = std::env::var_os("MESOS_SANDBOX").map(Into::into).unwrap_or_default();
    if let Err(e) = corral_proto::executor::run(Test { sandbox }).await {
        eprintln!("test-executor: {e}");
        std::process::exit(1);
    }
}
