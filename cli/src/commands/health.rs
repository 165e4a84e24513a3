//! `corral health HOST:PORT`: a container health check without curl.

use std::time::Duration;

/// `corral health ADDRESS`: Ok when `GET /health` answers 200.
pub async fn run(address: &str, deadline: Duration) -> Result<(), String> {
    http_health(address, deadline).await?;
    println!("{address}: healthy");
    Ok(())
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
