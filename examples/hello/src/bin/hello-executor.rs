//! The Hello framework's executor: started by the agent with the first task of the
//! framework. It reports the task RUNNING and greets its scheduler with a message; when
//! the scheduler's answer arrives it prints "Hello, Corral!" (the task's output, in the
//! executor's sandbox) and reports the task FINISHED. It exits on SHUTDOWN.

use corral_proto::executor::{Executor, ExecutorDriver};
use corral_proto::v1;

#[derive(Default)]
struct Hello {
    tasks: Vec<String>,
}

impl Executor for Hello {
    fn registered(&mut self, _driver: &ExecutorDriver, executor: &v1::ExecutorInfo, agent_id: &str) {
        println!("executor {} registered on agent {agent_id}", executor.executor_id);
    }

    fn launch(&mut self, driver: &ExecutorDriver, task: v1::TaskInfo) {
        driver.send_status(&task.task_id, v1::TaskState::TaskRunning, "the hello executor runs it");
        println!("running task {} ({} bytes of data)", task.task_id, task.data.len());
        self.tasks.push(task.task_id);
        driver.send_message(b"Hello from the executor".to_vec());
    }

    fn kill(&mut self, driver: &ExecutorDriver, task_id: &str) {
        self.tasks.retain(|t| t != task_id);
        driver.send_status(task_id, v1::TaskState::TaskKilled, "killed");
    }

    fn message(&mut self, driver: &ExecutorDriver, data: &[u8]) {
        println!("message from the scheduler: {}", String::from_utf8_lossy(data));
        for task in self.tasks.drain(..) {
            println!("Hello, Corral!");
            driver.send_status(&task, v1::TaskState::TaskFinished, "said hello");
        }
    }

    fn shutdown(&mut self, driver: &ExecutorDriver) {
        for task in self.tasks.drain(..) {
            driver.send_status(&task, v1::TaskState::TaskKilled, "the executor was shut down");
        }
        println!("shutting down");
    }
}

#[tokio::main]
async fn main() {
    match corral_proto::executor::run(Hello::default()).await {
        Ok(_) => {}
        Err(e) => {
            eprintln!("hello-executor: {e}");
            std::process::exit(1);
        }
    }
}
