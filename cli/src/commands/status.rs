//! `corral status`: leader, term, members and counts, from the leader's point of view.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use serde_json::{json, Value};
use tonic::Status;

use crate::output::{describe, member_json, print_members};

/// `corral status [--json]`.
pub async fn run(masters: &Masters, deadline: Duration, json: bool) -> Result<(), String> {
    let status = status(masters, deadline).await.map_err(|s| describe(&s))?;
    print_status(&status, json);
    Ok(())
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
