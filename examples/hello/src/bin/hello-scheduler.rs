//! The Hello framework's scheduler: on the first offer that fits, it launches one task run
//! by its own executor (`hello-executor`, found next to this binary unless `--executor`
//! says otherwise). The executor greets it with a message; the scheduler answers with one;
//! the executor then prints "Hello, Corral!" and finishes the task, and the scheduler tears
//! the framework down (which shuts the executor down) and exits 0. Prints what happens on
//! stdout, one line per step.

use anyhow::Context as _;
use clap::Parser;
use corral_proto::scheduler::{Driver, Scheduler};
use corral_proto::v1;

/// What a task needs, and what its executor holds beside it.
const TASK_CPUS: f64 = 0.1;
const TASK_MEM: f64 = 32.0;
const EXECUTOR_CPUS: f64 = 0.1;
const EXECUTOR_MEM: f64 = 32.0;

#[derive(Parser)]
#[command(about = "The Hello framework's scheduler")]
struct Args {
    /// Masters (host:port, comma-separated); any one will do.
    #[arg(
        long,
        env = "CORRAL_MASTERS",
        default_value = "127.0.0.1:5050,127.0.0.1:5051,127.0.0.1:5052",
        value_delimiter = ','
    )]
    masters: Vec<String>,
    /// The executor to run; by default `hello-executor` beside this binary.
    #[arg(long)]
    executor: Option<std::path::PathBuf>,
}

struct Hello {
    executor: String,
    launched: bool,
}

fn scalar(name: &str, v: f64) -> v1::Resource {
    v1::Resource {
        name: name.into(),
        value: Some(v1::resource::Value::Scalar(v)),
    }
}

fn has(offer: &v1::Offer, name: &str, need: f64) -> bool {
    offer
        .resources
        .iter()
        .any(|r| r.name == name && matches!(r.value, Some(v1::resource::Value::Scalar(v)) if v >= need))
}

impl Scheduler for Hello {
    fn registered(&mut self, _driver: &Driver, framework_id: &str, _master: &v1::MasterInfo) {
        println!("registered as framework {framework_id}");
    }

    fn offers(&mut self, driver: &Driver, offers: Vec<v1::Offer>) {
        for offer in offers {
            let fits = has(&offer, "cpus", TASK_CPUS + EXECUTOR_CPUS) && has(&offer, "mem", TASK_MEM + EXECUTOR_MEM);
            if self.launched || !fits {
                driver.decline(vec![offer.offer_id], None);
                continue;
            }
            let task = v1::TaskInfo {
                task_id: "hello-1".into(),
                name: "hello".into(),
                agent_id: offer.agent_id.clone(),
                resources: vec![scalar("cpus", TASK_CPUS), scalar("mem", TASK_MEM)],
                executor: Some(v1::ExecutorInfo {
                    executor_id: "hello-executor".into(),
                    name: "Hello executor".into(),
                    command: Some(v1::CommandInfo {
                        argv: vec![self.executor.clone()],
                        ..Default::default()
                    }),
                    resources: vec![scalar("cpus", EXECUTOR_CPUS), scalar("mem", EXECUTOR_MEM)],
                    data: Vec::new(),
                }),
                data: b"greet".to_vec(),
                ..Default::default()
            };
            println!(
                "launching task hello-1 on agent {} ({})",
                offer.agent_id, offer.hostname
            );
            driver.accept(vec![offer.offer_id], vec![task], None);
            self.launched = true;
        }
    }

    fn status_update(&mut self, driver: &Driver, status: &v1::TaskStatus) {
        let state = v1::TaskState::try_from(status.state).map_or("unknown", |s| s.as_str_name());
        println!("task {} is {state}: {}", status.task_id, status.message);
        match v1::TaskState::try_from(status.state) {
            Ok(v1::TaskState::TaskFinished) => driver.stop(true),
            Ok(s) if s.is_terminal() => {
                eprintln!("the task did not finish");
                std::process::exit(1);
            }
            _ => {}
        }
    }

    fn framework_message(&mut self, driver: &Driver, agent_id: &str, executor_id: &str, data: &[u8]) {
        println!("message from executor {executor_id}: {}", String::from_utf8_lossy(data));
        driver.message(agent_id, executor_id, b"Hello from the scheduler".to_vec());
        println!("message sent to executor {executor_id}");
    }

    fn executor_lost(&mut self, _driver: &Driver, agent_id: &str, executor_id: &str, exit_code: Option<i32>) {
        println!("executor {executor_id} on agent {agent_id} ended (exit code {exit_code:?})");
    }

    fn error(&mut self, _driver: &Driver, message: &str) {
        eprintln!("error: {message}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let executor = match args.executor {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("hello-executor"),
    };
    let executor = std::fs::canonicalize(&executor).with_context(|| {
        format!(
            "the executor {} (build it with `cargo build -p corral-example-hello`)",
            executor.display()
        )
    })?;
    let info = v1::FrameworkInfo {
        name: "hello".into(),
        user: std::env::var("USER").unwrap_or_default(),
        failover_timeout_seconds: 60.0,
        ..Default::default()
    };
    let hello = Hello {
        executor: executor.display().to_string(),
        launched: false,
    };
    corral_proto::scheduler::run(args.masters, info, hello)
        .await
        .context("the framework ended")?;
    println!("done");
    Ok(())
}
