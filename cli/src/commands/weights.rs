//! `corral weights [set ROLE WEIGHT]`: the DRF weights of roles.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use serde_json::{json, Value};

use crate::output::describe;

/// `corral weights [--json]`: every weight set, by role.
pub async fn show(masters: &Masters, deadline: Duration, json: bool) -> Result<(), String> {
    let r = masters
        .on_leader(deadline, |ch| async move {
            corral_proto::limit_client!(OperatorClient::new(ch))
                .get_weights(v1::GetWeightsRequest {})
                .await
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
    Ok(())
}

/// `corral weights set ROLE WEIGHT`.
pub async fn set(masters: &Masters, deadline: Duration, role: String, weight: f64) -> Result<(), String> {
    masters
        .on_leader(deadline, |ch| {
            let weights = vec![v1::WeightInfo {
                role: role.clone(),
                weight,
            }];
            async move {
                corral_proto::limit_client!(OperatorClient::new(ch))
                    .set_weights(v1::SetWeightsRequest { weights })
                    .await
            }
        })
        .await
        .map_err(|s| describe(&s))?;
    println!("weight of role {role} set to {weight}");
    Ok(())
}
