//! `corral frameworks`: registered frameworks, with their roles and what they use.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use serde_json::{json, Value};

use crate::output::{describe, print_rows, resources_text};

/// `corral frameworks [--json]`.
pub async fn run(masters: &Masters, deadline: Duration, json: bool) -> Result<(), String> {
    let frameworks = corral_proto::client::list_all(masters, deadline, v1::ListFrameworksRequest::default())
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
    Ok(())
}

/// `corral frameworks teardown ID`.
pub async fn teardown(masters: &Masters, deadline: Duration, framework_id: String) -> Result<(), String> {
    masters
        .on_leader(deadline, |ch| {
            let framework_id = framework_id.clone();
            async move {
                corral_proto::limit_client!(v1::operator_client::OperatorClient::new(ch))
                    .teardown_framework(v1::TeardownFrameworkRequest { framework_id })
                    .await
            }
        })
        .await
        .map_err(|s| describe(&s))?;
    println!("framework {framework_id} torn down");
    Ok(())
}
