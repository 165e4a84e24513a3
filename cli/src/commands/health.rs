//! `corral health HOST:PORT`: a container health check without curl.

use std::time::Duration;

/// `corral health ADDRESS`: Ok when `GET /health` answers 200.
pub async fn run(address: &str, role: corral_proto::tls::Role, deadline: Duration) -> Result<(), String> {
    match corral_proto::http::get(address, role, "/health", deadline).await? {
        (200, _) => {
            println!("{address}: healthy");
            Ok(())
        }
        (code, body) => Err(format!("{address}: unhealthy: {code} {}", body.trim())),
    }
}
