//! `corral logs TASK_ID [--framework F] [--stderr] [--follow] [--tail N]`: a task's output,
//! read from its sandbox on its agent (`/files/read`), the agent found through the masters.
//! `corral run` follows its task's output the same way ([`Output`]).

use std::io::Write;
use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use serde_json::Value;

use crate::output::{describe, Failure};

/// How often a followed output is read again while the task runs.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often `--follow` asks the masters whether the task has ended.
const STATE_EVERY: Duration = Duration::from_secs(1);
/// Bytes asked for in one read (the agent's maximum).
const READ_BYTES: u64 = 1 << 20;
/// Bytes read back from the end at most to find `--tail` lines.
const MAX_TAIL_BYTES: u64 = 16 << 20;

/// `corral logs`' options.
#[derive(Debug, clap::Args)]
pub struct LogsOpts {
    /// The task's id.
    task_id: String,
    /// The task's framework, when several frameworks used the id.
    #[arg(long)]
    framework: Option<String>,
    /// Its stderr rather than its stdout.
    #[arg(long)]
    stderr: bool,
    /// Keep printing output as it comes, until the task ends.
    #[arg(long, short)]
    follow: bool,
    /// Start with the last N lines only.
    #[arg(long)]
    tail: Option<usize>,
}

/// `corral logs`.
pub async fn run(masters: &Masters, deadline: Duration, opts: LogsOpts) -> Result<(), Failure> {
    let task = find_task(masters, deadline, &opts.task_id, opts.framework.as_deref()).await?;
    let agent = agent_address(masters, deadline, &task.agent_id).await?;
    let stream = if opts.stderr { Stream::Stderr } else { Stream::Stdout };
    // What was asked for goes to stdout, whichever stream it was.
    let sandbox = corral_proto::sandbox_dir(&task.framework_id, &task.task_id, &task.executor_id);
    let mut output = Output::new(agent, &sandbox, stream, Stream::Stdout, deadline);
    if let Some(n) = opts.tail {
        output.offset = output.tail_start(n).await?;
    }
    let mut checked = tokio::time::Instant::now();
    loop {
        if output.print_more().await? {
            continue;
        }
        if !opts.follow {
            return Ok(());
        }
        if checked.elapsed() >= STATE_EVERY {
            checked = tokio::time::Instant::now();
            let now = find_task(masters, deadline, &task.task_id, Some(&task.framework_id)).await?;
            let ended = v1::TaskState::try_from(now.state).is_ok_and(|s| s.is_terminal());
            if ended {
                // What it wrote before it ended is all there: print it and stop.
                while output.print_more().await? {}
                return Ok(());
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// The task `task_id` (of `framework` when given) as the leader knows it.
pub async fn find_task(
    masters: &Masters,
    deadline: Duration,
    task_id: &str,
    framework: Option<&str>,
) -> Result<v1::TaskSummary, Failure> {
    let request = v1::ListTasksRequest {
        task_id: task_id.to_string(),
        framework_id: framework.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let mut found = corral_proto::client::list_all(masters, deadline, request)
        .await
        .map_err(|s| describe(&s))?;
    match found.len() {
        0 => Err(Failure::Cluster(format!(
            "task {task_id}: not known to the cluster (never launched, or removed by retention)"
        ))),
        1 => Ok(found.remove(0)),
        _ => {
            let frameworks: Vec<&str> = found.iter().map(|t| t.framework_id.as_str()).collect();
            Err(crate::output::usage(format!(
                "task {task_id}: used by several frameworks ({}); name one with --framework",
                frameworks.join(", ")
            )))
        }
    }
}

/// The HTTP address of agent `agent_id` (its hostname where it listens on every address).
pub async fn agent_address(masters: &Masters, deadline: Duration, agent_id: &str) -> Result<String, Failure> {
    let agents = corral_proto::client::list_all(masters, deadline, v1::ListAgentsRequest::default())
        .await
        .map_err(|s| describe(&s))?;
    let agent = agents.into_iter().find(|a| a.agent_id == agent_id).ok_or_else(|| {
        Failure::Cluster(format!(
            "agent {agent_id}: not registered (its sandboxes are out of reach)"
        ))
    })?;
    Ok(corral_proto::http::reachable(&agent.address, &agent.hostname))
}

/// Which of a task's outputs.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// What it wrote to standard output.
    Stdout,
    /// What it wrote to standard error.
    Stderr,
}

/// One output of one task on its agent, read from `offset` on and printed to `to`, this
/// process's stdout or stderr.
pub struct Output {
    agent: String,
    path: String,
    to: Stream,
    deadline: Duration,
    /// The next byte to read.
    pub offset: u64,
}

impl Output {
    /// Output `stream` of the task whose sandbox is `sandbox` (see
    /// [`corral_proto::sandbox_dir`]), on the agent at `agent`, to be printed to `to`.
    pub fn new(agent: String, sandbox: &str, stream: Stream, to: Stream, deadline: Duration) -> Output {
        let file = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        Output {
            agent,
            path: format!("{sandbox}/{file}"),
            to,
            deadline,
            offset: 0,
        }
    }

    /// One read from `offset` (or from the end, with `None`): the data and where the next
    /// read starts.
    async fn read(&self, offset: Option<u64>, length: u64) -> Result<(String, u64), String> {
        let offset = offset.map_or(-1, |o| o as i64);
        let target = format!(
            "/files/read?path={}&offset={offset}&length={length}",
            corral_proto::http::query_value(&self.path)
        );
        let (code, body) =
            corral_proto::http::get(&self.agent, corral_proto::tls::Role::Agent, &target, self.deadline).await?;
        let v: Value = serde_json::from_str(&body).map_err(|_| {
            format!(
                "{}: answered {code}, not a file read: {}",
                self.agent,
                corral_proto::quote(body.trim())
            )
        })?;
        if code != 200 {
            let why = v["error"].as_str().unwrap_or("no reason given");
            return Err(format!("{}: {why}", self.agent));
        }
        let data = v["data"].as_str().unwrap_or_default().to_string();
        let next = v["next_offset"].as_u64().or_else(|| v["offset"].as_u64()).unwrap_or(0);
        Ok((data, next))
    }

    /// Print what was written since the last read: true if there was anything.
    pub async fn print_more(&mut self) -> Result<bool, String> {
        let (data, next) = self.read(Some(self.offset), READ_BYTES).await?;
        self.offset = next.max(self.offset);
        if data.is_empty() {
            return Ok(false);
        }
        let written = match self.to {
            Stream::Stdout => std::io::stdout()
                .write_all(data.as_bytes())
                .and_then(|_| std::io::stdout().flush()),
            Stream::Stderr => std::io::stderr().write_all(data.as_bytes()),
        };
        written.map_err(|e| format!("writing the output: {e}"))?;
        Ok(true)
    }

    /// Where the last `n` lines start (reading back at most [`MAX_TAIL_BYTES`]).
    async fn tail_start(&self, n: usize) -> Result<u64, String> {
        let (_, size) = self.read(None, 0).await?;
        let mut start = size;
        let mut seen: Vec<u8> = Vec::new();
        while start > 0 && size - start < MAX_TAIL_BYTES {
            let step = start.min(64 * 1024);
            start -= step;
            let (data, _) = self.read(Some(start), step).await?;
            let mut chunk = data.into_bytes();
            chunk.extend_from_slice(&seen);
            seen = chunk;
            if let Some(at) = nth_line_from_end(&seen, n) {
                return Ok(start + at as u64);
            }
        }
        Ok(start)
    }
}

/// Where the last `n` lines of `text` start, if it holds that many (a final line without a
/// newline counts as a line).
fn nth_line_from_end(text: &[u8], n: usize) -> Option<usize> {
    if n == 0 {
        return Some(text.len());
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut found = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            found += 1;
            if found == n {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_start_after_the_right_newline() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(nth_line_from_end(text, 1), Some(8));
        assert_eq!(nth_line_from_end(text, 2), Some(4));
        assert_eq!(
            nth_line_from_end(text, 3),
            None,
            "the first line starts at 0: read further back"
        );
        assert_eq!(nth_line_from_end(b"a\nb", 1), Some(2), "a last line without a newline");
        assert_eq!(nth_line_from_end(text, 0), Some(text.len()));
    }
}
