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
    /// Tasks of every framework (paged from the leader: any number of them).
    Tasks {
        #[arg(long)]
        json: bool,
        /// Only tasks in this state (`running`, `TASK_FINISHED`, ...); may be repeated.
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only the tasks of this framework.
        #[arg(long)]
        framework: Option<String>,
        /// Print at most this many tasks.
        #[arg(long)]
        limit: Option<u64>,
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
        /// Give up after this long without progress (no registration, launch or status
        /// update), saying what was awaited, e.g. 60s, 5m.
        #[arg(long, default_value = "60s")]
        timeout: String,
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
            let agents = corral_proto::client::list_all(&masters, deadline, v1::ListAgentsRequest::default())
                .await
                .map_err(|s| describe(&s))?;
            let rows: Vec<Value> = agents
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
            let frameworks = corral_proto::client::list_all(&masters, deadline, v1::ListFrameworksRequest::default())
                .await
                .map_err(|s| describe(&s))?;
            let rows: Vec<Value> = frameworks
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
            timeout,
            command,
        } => {
            let timeout = corral_proto::time::parse_duration(&timeout).map_err(|e| format!("--timeout: {e}"))?;
            if timeout.is_zero() {
                return Err("--timeout: must be longer than 0s".into());
            }
            let prefer = prefer
                .map(|p| Preference::parse(&p).map_err(|e| format!("--prefer: {e}")))
                .transpose()?;
            let locality_wait =
                corral_proto::time::parse_duration(&locality_wait).map_err(|e| format!("--locality-wait: {e}"))?;
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
            let progress = runner.progress();
            let work = corral_proto::scheduler::run(masters.addresses().to_vec(), info, runner);
            tokio::pin!(work);
            let mut watchdog = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    done = &mut work => return Ok(done.map_err(|e| e.to_string())?.exit_code()),
                    _ = watchdog.tick() => if let Some(what) = progress.stalled(timeout) {
                        return Err(format!("gave up after {timeout:?} without progress, waiting for {what}"));
                    }
                }
            }
        }
        Command::Local { .. } => unreachable!("handled before the runtime starts"),
        Command::Health { address } => {
            http_health(&address, deadline).await?;
            println!("{address}: healthy");
        }
        Command::Tasks {
            json,
            states,
            framework,
            limit,
        } => {
            let states = states
                .iter()
                .map(|s| parse_task_state(s).map(|st| st as i32))
                .collect::<Result<Vec<_>, _>>()?;
            let filter = v1::ListTasksRequest {
                framework_id: framework.unwrap_or_default(),
                states,
                ..Default::default()
            };
            print_tasks(&masters, deadline, filter, limit, json).await?;
        }
    }
    Ok(0)
}

/// A task state as the user writes it: `running`, `TASK_RUNNING`, `task_running`.
fn parse_task_state(text: &str) -> Result<v1::TaskState, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("TASK_") {
        upper
    } else {
        format!("TASK_{upper}")
    };
    v1::TaskState::from_str_name(&name)
        .filter(|s| *s != v1::TaskState::Unspecified)
        .ok_or_else(|| format!("--state: {text:?} is not a task state (running, finished, failed, ...)"))
}

/// Print the tasks `filter` selects, at most `limit`, page by page as they arrive: a JSON
/// array (written as it goes, so any number of tasks fits), or a table.
async fn print_tasks(
    masters: &Masters,
    deadline: Duration,
    filter: v1::ListTasksRequest,
    limit: Option<u64>,
    json: bool,
) -> Result<(), String> {
    use std::io::Write;
    let row = |t: &v1::TaskSummary| {
        json!({
            "framework_id": t.framework_id,
            "task_id": t.task_id,
            "name": t.name,
            "agent_id": t.agent_id,
            "state": v1::TaskState::try_from(t.state).map(|s| s.as_str_name()).unwrap_or("TASK_UNKNOWN"),
            "resources": resources_text(&t.resources),
            "exit_code": t.exit_code,
        })
    };
    let limit = limit.unwrap_or(u64::MAX);
    let columns = ["framework_id", "task_id", "agent_id", "state", "resources"];
    let mut printed = 0u64;
    if json {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut failed = None;
        let _ = write!(out, "[");
        let listed = corral_proto::client::for_each(masters, deadline, filter, |t| {
            if printed >= limit {
                return false;
            }
            let sep = if printed == 0 { "" } else { "," };
            if let Err(e) = write!(out, "{sep}{}", row(&t)) {
                failed = Some(e);
                return false;
            }
            printed += 1;
            printed < limit
        })
        .await;
        let _ = writeln!(out, "]");
        if let Some(e) = failed.or_else(|| out.flush().err()) {
            return Err(format!("writing the output: {e}"));
        }
        listed.map_err(|s| describe(&s))
    } else {
        // A table needs its column widths: gather the rows first.
        let mut rows = Vec::new();
        corral_proto::client::for_each(masters, deadline, filter, |t| {
            if printed >= limit {
                return false;
            }
            rows.push(row(&t));
            printed += 1;
            printed < limit
        })
        .await
        .map_err(|s| describe(&s))?;
        print_rows(false, rows, &columns);
        Ok(())
    }
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
