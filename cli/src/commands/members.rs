//! `corral members list|add|remove`: the masters of the cluster. Membership changes go
//! through the leader and use joint consensus.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;

use crate::output::{describe, print_members};

/// `corral members list [--json]`.
pub async fn list(masters: &Masters, deadline: Duration, json: bool) -> Result<(), String> {
    let r = masters
        .on_leader(deadline, |ch| async move {
            corral_proto::limit_client!(OperatorClient::new(ch))
                .list_members(v1::ListMembersRequest {})
                .await
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    print_members(&r.members, json);
    Ok(())
}

/// `corral members add ID HOST:PORT`: the new master catches up as a learner, then votes.
pub async fn add(masters: &Masters, deadline: Duration, id: u64, address: String) -> Result<(), String> {
    // Catching up and the joint configuration take longer than an ordinary call.
    let r = masters
        .on_leader(deadline.max(Duration::from_secs(40)), |ch| {
            let address = address.clone();
            async move {
                corral_proto::limit_client!(OperatorClient::new(ch))
                    .add_member(v1::AddMemberRequest { id, address })
                    .await
            }
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    println!("master {id} added");
    print_members(&r.members, false);
    Ok(())
}

/// `corral members remove ID`.
pub async fn remove(masters: &Masters, deadline: Duration, id: u64) -> Result<(), String> {
    let r = masters
        .on_leader(deadline, |ch| async move {
            corral_proto::limit_client!(OperatorClient::new(ch))
                .remove_member(v1::RemoveMemberRequest { id })
                .await
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    println!("master {id} removed");
    print_members(&r.members, false);
    Ok(())
}
