//! `corral`, the operator CLI (DESIGN.md "corral CLI").
//!
//! Output goes to stdout (tables, or JSON with `--json`); errors are one line on stderr and
//! a non-zero exit: 1 when the cluster refused or could not be reached, 2 for usage errors.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use corral_proto::client::{parse_masters, Masters};
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use serde_json::{json, Value};
use tonic::{Code, Status};

use corral_proto::scheduler::placement::Preference;

mod local;
mod run;

#[derive(Debug, Parser)]
#[command(name = "corral", version, about = "Operate a Corral cluster")]
struct Cli {
    /// Masters to contact, any of them: host:port,host:port,... (before the command).
    #[arg(long, env = "CORRAL_MASTERS", default_value = "127.0.0.1:5050")]
    masters: String,

    /// How long to keep trying to reach the leader.
    #[arg(long, default_value_t = 10.0)]
    timeout_secs: f64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Leader, term, members with their indexes and state hashes, and counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List, add or remove masters (membership changes use joint consensus).
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Show role weights, or set one with `corral weights set ROLE WEIGHT`.
    Weights {
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<WeightsAction>,
    },
    /// Registered agents.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Registered frameworks.
    Frameworks {
        #[arg(long)]
        json: bool,
    },
    /// Tasks of every framework.
    Tasks {
        #[arg(long)]
        json: bool,
    },
    /// Run a command as a task (or several) on the cluster, print each status change, and
    /// exit with its exit code. `corral run -- sh -c 'echo hello'`.
    Run {
        /// Task name (and id; with --count, ids are NAME-0, NAME-1, ...).
        #[arg(long, default_value = "corral-run")]
        name: String,
        #[arg(long, default_value_t = 0.1)]
        cpus: f64,
        /// Memory in MiB.
        #[arg(long, default_value_t = 32.0)]
        mem: f64,
        #[arg(long, default_value = "*")]
        role: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Prefer agents with this hostname, or this attribute (`name:value`).
        #[arg(long)]
        prefer: Option<String>,
        /// How long to wait for a preferred agent before taking any (delay scheduling), e.g. 2s.
        #[arg(long, default_value = "0s")]
        locality_wait: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Exit 0 if the HTTP endpoint at HOST:PORT answers `GET /health` with 200 (for
    /// container health checks, without curl).
    Health { address: String },
    /// A whole cluster in one process (3 masters, 2 agents) for trying Corral out.
    Local {
        #[arg(long, default_value_t = 3)]
        masters: u32,
        #[arg(long, default_value_t = 2)]
        agents: u32,
        /// Keep state here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MembersAction {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add master ID at HOST:PORT: it catches up as a learner, then becomes a voter.
    Add { id: u64, address: String },
    /// Remove master ID from the cluster.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
enum WeightsAction {
    /// Set the DRF weight of ROLE (a number greater than 0; roles not set weigh 1).
    Set {
        role: String,
        #[arg(allow_negative_numbers = true)]
        weight: f64,
    },
}

fn main() -> ExitCode {
    // `corral local` runs agents in this process; their task supervisors are this binary too.
    corral_agent::supervisor::run_if_requested();
    let cli = Cli::parse();
    if let Command::Local {
        masters,
        agents,
        data_dir,
    } = cli.command
    {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,openraft=off".into()),
            )
            .with_writer(std::io::stderr)
            .init();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("corral: error: cannot start the async runtime: {e}");
                return ExitCode::from(1);
            }
        };
        return match runtime.block_on(local::run(masters, agents, data_dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corral: error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("corral: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// One line for a failed call: what the cluster said, without transport noise.
fn describe(status: &Status) -> String {
    let what = match status.code() {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        _ => "failed",
    };
    format!("{what}: {}", status.message())
}

async fn run(cli: Cli) -> Result<i32, String> {
    let masters = parse_masters(&cli.masters).map_err(|e| format!("--masters: {e}"))?;
    if !(cli.timeout_secs.is_finite() && cli.timeout_secs > 0.0) {
        return Err("--timeout-secs: must be a positive number".into());
    }
    let deadline = Duration::from_secs_f64(cli.timeout_secs);
    let masters = Masters::new(masters, deadline);
    let op = |ch| corral_proto::limit_client!(OperatorClient::new(ch));
    match cli.command {
        Command::Status { json } => {
            let status = status(&masters, deadline).await.map_err(|s| describe(&s))?;
            print_status(&status, json);
        }
        Command::Members {
            action: MembersAction::List { json },
        } => {
            let r = masters
                .on_leader(deadline, |ch| async move {
                    op(ch).list_members(v1::ListMembersRequest {}).await
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            print_members(&r.members, json);
        }
        Command::Members {
            action: MembersAction::Add { id, address },
        } => {
            let r = masters
                .on_leader(deadline.max(Duration::from_secs(40)), |ch| {
                    let address = address.clone();
                    async move { op(ch).add_member(v1::AddMemberRequest { id, address }).await }
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            println!("master {id} added");
            print_members(&r.members, false);
        }
        Command::Members {
            action: MembersAction::Remove { id },
        } => {
            let r = masters
                .on_leader(deadline, |ch| async move {
                    op(ch).remove_member(v1::RemoveMemberRequest { id }).await
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            println!("master {id} removed");
            print_members(&r.members, false);
        }
        Command::Weights {
            action: Some(WeightsAction::Set { role, weight }),
            ..
        } => {
            masters
                .on_leader(deadline, |ch| {
                    let weights = vec![v1::WeightInfo {
                        role: role.clone(),
                        weight,
                    }];
                    async move { op(ch).set_weights(v1::SetWeightsRequest { weights }).await }
                })
                .await
                .map_err(|s| describe(&s))?;
            println!("weight of role {role} set to {weight}");
        }
        Command::Weights { action: None, json } => {
            let r = masters
                .on_leader(deadline, |ch| async move {
                    op(ch).get_weights(v1::GetWeightsRequest {}).await
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let mut weights: Vec<(String, f64)> = r.weights.into_iter().collect();
            weights.sort_by(|a, b| a.0.cmp(&b.0));
            if json {
                let obj: serde_json::Map<String, Value> = weights.iter().map(|(r, w)| (r.clone(), json!(w))).collect();
                println!("{}", Value::Object(obj));
            } else if weights.is_empty() {
                println!("no weights set (every role weighs 1)");
            } else {
                println!("{:<32} WEIGHT", "ROLE");
                for (role, w) in weights {
                    println!("{role:<32} {w}");
                }
            }
        }
        Command::Agents { json } => {
            let r = masters
                .on_leader(deadline, |ch| async move {
                    op(ch).list_agents(v1::ListAgentsRequest {}).await
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Value> = r
                .agents
                .iter()
                .map(|a| {
                    json!({
                        "agent_id": a.agent_id,
                        "hostname": a.hostname,
                        "address": a.address,
                        "state": v1::AgentState::try_from(a.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
                        "connected": a.connected,
                        "resources": resources_text(&a.resources),
                        "used": resources_text(&a.used),
                        "isolation": a.isolation,
                    })
                })
                .collect();
            print_rows(
                json,
                rows,
                &["agent_id", "hostname", "state", "connected", "resources", "used"],
            );
        }
        Command::Frameworks { json } => {
            let r = masters
                .on_leader(deadline, |ch| async move {
                    op(ch).list_frameworks(v1::ListFrameworksRequest {}).await
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Value> = r
                .frameworks
                .iter()
                .map(|f| {
                    json!({
                        "framework_id": f.framework_id,
                        "name": f.name,
                        "role": f.role,
                        "state": v1::FrameworkState::try_from(f.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
                        "active_tasks": f.active_tasks,
                        "used": resources_text(&f.used),
                    })
                })
                .collect();
            print_rows(
                json,
                rows,
                &["framework_id", "name", "role", "state", "active_tasks", "used"],
            );
        }
        Command::Run {
            name,
            cpus,
            mem,
            role,
            count,
            prefer,
            locality_wait,
            command,
        } => {
            let prefer = prefer
                .map(|p| Preference::parse(&p).map_err(|e| format!("--prefer: {e}")))
                .transpose()?;
            let locality_wait = parse_duration(&locality_wait).map_err(|e| format!("--locality-wait: {e}"))?;
            let runner = run::Run::new(run::RunArgs {
                name: name.clone(),
                cpus,
                mem,
                count,
                prefer,
                locality_wait,
                command,
            })?;
            let info = v1::FrameworkInfo {
                name: format!("corral run {name}"),
                role,
                user: std::env::var("USER").unwrap_or_default(),
                failover_timeout_seconds: 10.0,
                ..Default::default()
            };
            let done = corral_proto::scheduler::run(masters.addresses().to_vec(), info, runner)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(done.exit_code());
        }
        Command::Local { .. } => unreachable!("handled before the runtime starts"),
        Command::Health { address } => {
            http_health(&address, deadline).await?;
            println!("{address}: healthy");
        }
        Command::Tasks { json } => {
            let r = masters
                .on_leader(deadline, |ch| async move {
                    op(ch)
                        .list_tasks(v1::ListTasksRequest {
                            framework_id: String::new(),
                        })
                        .await
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Value> = r
                .tasks
                .iter()
                .map(|t| {
                    json!({
                        "framework_id": t.framework_id,
                        "task_id": t.task_id,
                        "name": t.name,
                        "agent_id": t.agent_id,
                        "state": v1::TaskState::try_from(t.state).map(|s| s.as_str_name()).unwrap_or("TASK_UNKNOWN"),
                        "resources": resources_text(&t.resources),
                        "exit_code": t.exit_code,
                    })
                })
                .collect();
            print_rows(
                json,
                rows,
                &["framework_id", "task_id", "agent_id", "state", "resources"],
            );
        }
    }
    Ok(0)
}

/// `GET /health` over plain HTTP/1.0; Ok on a 200.
async fn http_health(address: &str, deadline: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        stream
            .write_all(format!("GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.map_err(|e| format!("{address}: {e}"))?;
        let line = String::from_utf8_lossy(&head[..n]);
        if line.starts_with("HTTP/1.0 200") || line.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "{address}: unhealthy: {}",
                line.lines().next().unwrap_or("no answer")
            ))
        }
    };
    tokio::time::timeout(deadline, check)
        .await
        .map_err(|_| format!("{address}: no answer within {deadline:?}"))?
}

/// `500ms`, `2s`, `1m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Ask any master; if it knows a leader elsewhere, ask the leader, whose view is current.
async fn status(masters: &Masters, deadline: Duration) -> Result<v1::StatusResponse, Status> {
    let mut last = Status::unavailable("no master answered");
    for addr in masters.addresses() {
        let channel = masters.channel_to(addr)?;
        match tokio::time::timeout(deadline, OperatorClient::new(channel).status(v1::StatusRequest {})).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let answered = r.answered_by.as_ref().map(|m| m.address.clone());
                if let Some(leader) = &r.leader {
                    if answered.as_deref() != Some(leader.address.as_str()) {
                        let channel = masters.channel_to(&leader.address)?;
                        if let Ok(Ok(lr)) =
                            tokio::time::timeout(deadline, OperatorClient::new(channel).status(v1::StatusRequest {}))
                                .await
                        {
                            return Ok(lr.into_inner());
                        }
                    }
                }
                return Ok(r);
            }
            Ok(Err(s)) => last = s,
            Err(_) => last = Status::deadline_exceeded(format!("{addr} did not answer within {deadline:?}")),
        }
    }
    Err(last)
}

fn member_json(m: &v1::MemberStatus) -> Value {
    json!({
        "id": m.id,
        "address": m.address,
        "role": m.role,
        "voter": m.voter,
        "last_log_index": m.last_log_index,
        "applied_index": m.applied_index,
        "state_hash": m.state_hash,
    })
}

fn print_members(members: &[v1::MemberStatus], json: bool) {
    if json {
        println!("{}", Value::Array(members.iter().map(member_json).collect()));
        return;
    }
    println!(
        "{:<4} {:<24} {:<12} {:<6} {:>10} {:>10}  STATE HASH",
        "ID", "ADDRESS", "ROLE", "VOTER", "LAST LOG", "APPLIED"
    );
    for m in members {
        let hash = if m.state_hash.len() > 16 {
            &m.state_hash[..16]
        } else {
            &m.state_hash
        };
        println!(
            "{:<4} {:<24} {:<12} {:<6} {:>10} {:>10}  {hash}",
            m.id,
            m.address,
            m.role,
            if m.voter { "yes" } else { "no" },
            m.last_log_index,
            m.applied_index
        );
    }
}

fn print_status(s: &v1::StatusResponse, json: bool) {
    if json {
        let tasks: serde_json::Map<String, Value> = s.tasks.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let out = json!({
            "leader": s.leader.as_ref().map(|l| json!({"id": l.id, "address": l.address})),
            "term": s.term,
            "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
            "agents": s.agents,
            "frameworks": s.frameworks,
            "tasks": tasks,
        });
        println!("{out}");
        return;
    }
    match &s.leader {
        Some(l) => println!("leader: {} ({})   term: {}", l.id, l.address, s.term),
        None => println!("leader: none   term: {}", s.term),
    }
    println!();
    print_members(&s.members, false);
    println!();
    let mut tasks: Vec<_> = s.tasks.iter().collect();
    tasks.sort();
    let tasks: Vec<String> = tasks.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "agents: {}   frameworks: {}   tasks: {}",
        s.agents,
        s.frameworks,
        if tasks.is_empty() {
            "none".to_string()
        } else {
            tasks.join(" ")
        }
    );
}

/// Resources in their text form (`cpus:1;mem:512`); invalid ones (never sent by a master)
/// are shown as empty.
fn resources_text(list: &[v1::Resource]) -> String {
    corral_proto::convert::resources_from_wire("resources", list)
        .map(|r| r.to_string())
        .unwrap_or_default()
}

/// A JSON array, or a table of `columns`.
fn print_rows(json: bool, rows: Vec<Value>, columns: &[&str]) {
    if json {
        println!("{}", Value::Array(rows));
        return;
    }
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| rows.iter().map(|r| cell(&r[*c]).len()).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for r in &rows {
        println!("{}", line(columns.iter().map(|c| cell(&r[*c])).collect()));
    }
}
