//! `corral tasks`: the tasks of every framework, paged from the leader.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use serde_json::json;

use crate::output::{describe, print_rows, resources_text, usage, Failure};

/// `corral tasks [--state S]... [--framework F] [--limit N] [--json]`.
pub async fn run(
    masters: &Masters,
    deadline: Duration,
    states: &[String],
    framework: Option<String>,
    limit: Option<u64>,
    json: bool,
) -> Result<(), Failure> {
    let states = states
        .iter()
        .map(|s| parse_task_state(s).map(|st| st as i32))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let filter = v1::ListTasksRequest {
        framework_id: framework.unwrap_or_default(),
        states,
        ..Default::default()
    };
    Ok(print_tasks(masters, deadline, filter, limit, json).await?)
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
