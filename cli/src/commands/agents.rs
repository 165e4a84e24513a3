//! `corral agents`: registered agents, with their resources and what is used of them.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use serde_json::{json, Value};

use crate::output::{describe, print_rows, resources_text};

/// `corral agents [--json]`.
pub async fn run(masters: &Masters, deadline: Duration, json: bool) -> Result<(), String> {
    let agents = corral_proto::client::list_all(masters, deadline, v1::ListAgentsRequest::default())
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
    Ok(())
}
