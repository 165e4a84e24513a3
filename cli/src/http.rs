//! The little HTTP the CLI speaks to masters' and agents' HTTP endpoints: one GET over
//! HTTP/1.0 (the connection closes after the answer), bounded in time and size.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read (an agent's file read is at most 1 MiB of text, escaped as JSON).
const MAX_ANSWER_BYTES: u64 = 8 << 20;

/// `GET target` (path and query) from `address`: the status code and the body.
pub async fn get(address: &str, target: &str, deadline: Duration) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        stream
            .write_all(format!("GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{address}: not an HTTP answer"))?;
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| format!("{address}: no answer within {deadline:?}"))?
}

/// `value` as a URL query value (everything but unreserved characters percent-encoded).
pub fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_keep_only_unreserved_characters() {
        assert_eq!(
            super::query_value("frameworks/f 1/tasks/a&b"),
            "frameworks/f%201/tasks/a%26b"
        );
        assert_eq!(super::query_value("é"), "%C3%A9");
    }
}
