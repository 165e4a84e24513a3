//! `corral`, the operator CLI (DESIGN.md "corral CLI").
//!
//! Output goes to stdout (tables, or JSON with `--json`); errors are one line on stderr and
//! a non-zero exit: 1 when the cluster refused or could not be reached, 2 for usage errors.
//!
//! Files: this one parses the command line and dispatches; `commands/` holds one file per
//! command (`status`, `members`, `weights`, `agents`, `frameworks`, `tasks`, `run`, `logs`,
//! `watch`, `health`, `local`, `tls`); `output.rs` the one-line errors, tables and JSON they
//! print with.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use corral_proto::client::{parse_masters, Masters};

mod commands;
mod output;

use commands::{acl, agents, frameworks, health, local, logs, members, run, status, tasks, tls, watch, weights};
use output::{usage, Failure};

#[derive(Debug, Parser)]
#[command(name = "corral", version, about = "Operate a Corral cluster")]
struct Cli {
    /// Masters to contact, any of them: host:port,host:port,... (before the command).
    #[arg(long, env = "CORRAL_MASTERS", default_value = "127.0.0.1:5050")]
    masters: String,

    /// How long to keep trying to reach the leader.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    timeout_secs: f64,

    /// The cluster's name: with TLS, the masters' certificates must be of this cluster.
    #[arg(long, env = "CORRAL_CLUSTER_NAME", default_value = "corral")]
    cluster_name: String,

    #[command(flatten)]
    tls: corral_proto::tls::TlsArgs,

    /// A bearer token (`corral acl token create`) naming this client's principal to masters
    /// that have an ACL file. Sent as `authorization: Bearer`, never logged.
    #[arg(long, env = "CORRAL_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Leader, term, members with their indexes and state hashes, and counts.
    Status {
        /// Print JSON instead of a table.
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
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<WeightsAction>,
    },
    /// Registered agents.
    Agents {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Registered frameworks.
    Frameworks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<FrameworksAction>,
    },
    /// Tasks of every framework (paged from the leader: any number of them).
    Tasks {
        /// Print JSON instead of a table.
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
    Run(run::RunOpts),
    /// A task's output (stdout, or stderr with --stderr), read from its agent's sandbox.
    Logs(logs::LogsOpts),
    /// The cluster's changes as the leader applies them (tasks, agents, frameworks, leader),
    /// one line each, until interrupted.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the HTTP endpoint at HOST:PORT answers `GET /health` with 200 (for
    /// container health checks, without curl).
    Health {
        /// The endpoint, HOST:PORT.
        address: String,
        /// The endpoint is an agent's (with TLS, its certificate must be an agent's; by
        /// default a master's).
        #[arg(long)]
        agent: bool,
    },
    /// Bearer tokens for the masters' ACL file.
    Acl {
        #[command(subcommand)]
        action: AclAction,
    },
    /// Make the cluster's CA and its masters', agents' and clients' certificates.
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// A whole cluster in one process (3 masters, 2 agents) for trying Corral out.
    Local {
        /// Masters to run (a Raft group of this size).
        #[arg(long, default_value_t = 3)]
        masters: u32,
        /// Agents to run.
        #[arg(long, default_value_t = 2)]
        agents: u32,
        /// Keep state here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MembersAction {
    /// The masters: id, address, role, voter, last log and applied index, state hash.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add master ID at HOST:PORT: it catches up as a learner, then becomes a voter.
    Add {
        /// The new master's Raft id (positive, unique, stable for life).
        id: u64,
        /// The address it serves on (its --advertise).
        address: String,
    },
    /// Remove master ID from the cluster.
    Remove {
        /// The master's Raft id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum FrameworksAction {
    /// Tear a framework down: its tasks are killed and it may not subscribe again.
    Teardown {
        /// The framework's id (`corral frameworks`).
        framework_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AclAction {
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Print a new random token for principal NAME, and the lines to paste into the
    /// masters' ACL file (which keeps only the token's SHA-256).
    Create {
        /// The principal's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TlsAction {
    /// The cluster's certificate authority.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// A certificate signed by the CA.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Write DIR/ca.pem and DIR/ca-key.pem (0600): a new CA for cluster NAME.
    Create {
        /// Where to write them.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The cluster the CA is for (the masters' --cluster-name).
        #[arg(long, default_value = "corral")]
        cluster: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Write DIR/NAME.pem and DIR/NAME-key.pem (0600), signed by DIR's CA, of role ROLE.
    Create {
        /// The directory of the CA (ca.pem, ca-key.pem), where the certificate is written.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// master, agent or client.
        #[arg(long)]
        role: String,
        /// The certificate's name: its common name and file name.
        #[arg(long)]
        name: String,
        /// Extra host names and IP addresses it is valid for (for browsers and curl).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = commands::tls::DEFAULT_CERT_DAYS)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum WeightsAction {
    /// Set the DRF weight of ROLE (a number greater than 0; roles not set weigh 1).
    Set {
        /// The role (`*` is the default role).
        role: String,
        /// Its weight, greater than 0.
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
        corral_proto::logging::init(corral_proto::logging::LogFormat::Text, "warn,openraft=off");
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
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    if let Command::Tls { action } = &cli.command {
        match action {
            TlsAction::Ca {
                action: CaAction::Create { dir, cluster },
            } => tls::ca_create(dir, cluster)?,
            TlsAction::Cert {
                action:
                    CertAction::Create {
                        dir,
                        role,
                        name,
                        hosts,
                        days,
                    },
            } => tls::cert_create(tls::CertRequest {
                dir,
                role,
                name,
                hosts,
                days: *days,
            })?,
        }
        return Ok(0);
    }
    if let Command::Acl {
        action: AclAction::Token {
            action: TokenAction::Create { name },
        },
    } = &cli.command
    {
        acl::token_create(name)?;
        return Ok(0);
    }
    corral_proto::client::set_token(cli.token.as_deref()).map_err(|e| usage(format!("--token: {e}")))?;
    let files = cli.tls.files().map_err(|e| usage(e.to_string()))?;
    if let Some(files) = files {
        let tls = corral_proto::tls::ClientTls::load(&files, &cli.cluster_name).map_err(|e| usage(e.to_string()))?;
        corral_proto::tls::set_client(Some(tls));
    }
    let masters = parse_masters(&cli.masters).map_err(|e| usage(format!("--masters: {e}")))?;
    if !(cli.timeout_secs.is_finite() && cli.timeout_secs > 0.0) {
        return Err(usage("--timeout-secs: must be a positive number"));
    }
    let deadline = Duration::from_secs_f64(cli.timeout_secs);
    let masters = Masters::new(masters, deadline);
    match cli.command {
        Command::Status { json } => status::run(&masters, deadline, json).await?,
        Command::Members {
            action: MembersAction::List { json },
        } => members::list(&masters, deadline, json).await?,
        Command::Members {
            action: MembersAction::Add { id, address },
        } => members::add(&masters, deadline, id, address).await?,
        Command::Members {
            action: MembersAction::Remove { id },
        } => members::remove(&masters, deadline, id).await?,
        Command::Weights {
            action: Some(WeightsAction::Set { role, weight }),
            ..
        } => weights::set(&masters, deadline, role, weight).await?,
        Command::Weights { action: None, json } => weights::show(&masters, deadline, json).await?,
        Command::Agents { json } => agents::run(&masters, deadline, json).await?,
        Command::Frameworks {
            action: Some(FrameworksAction::Teardown { framework_id }),
            ..
        } => frameworks::teardown(&masters, deadline, framework_id).await?,
        Command::Frameworks { action: None, json } => frameworks::run(&masters, deadline, json).await?,
        Command::Tasks {
            json,
            states,
            framework,
            limit,
        } => tasks::run(&masters, deadline, &states, framework, limit, json).await?,
        Command::Run(opts) => return run::command(&masters, deadline, opts).await,
        Command::Logs(opts) => logs::run(&masters, deadline, opts).await?,
        Command::Watch { json } => watch::run(&masters, deadline, json).await?,
        Command::Health { address, agent } => {
            let role = if agent {
                corral_proto::tls::Role::Agent
            } else {
                corral_proto::tls::Role::Master
            };
            health::run(&address, role, deadline).await?
        }
        Command::Local { .. } | Command::Tls { .. } | Command::Acl { .. } => unreachable!("handled before"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag says what it is in `--help`.
    #[test]
    fn every_command_and_flag_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if !matches!(id, "help" | "version") && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(format!("{name} (no description)"));
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "corral", &mut missing);
        assert!(missing.is_empty(), "without a description: {missing:#?}");
    }
}
