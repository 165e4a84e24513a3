//! The little HTTP Corral's programs speak to each other's plain HTTP endpoints (the CLI to
//! masters and agents, a master to an agent's sandbox and to the leader's web UI and Mesos
//! APIs): one request (a GET, or a POST with a body) over HTTP/1.0, so the connection
//! closes after the answer and its body needs no framing. Bounded in time (the head) and size (the head, and a body read whole).
//!
//! When this process has client TLS ([`crate::tls::set_client`]), every request goes over
//! TLS with its certificate, and the server must hold a certificate of the role asked for.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::Role;

/// A connection: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Largest answer head (status line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// Largest body [`get`] reads (an agent's file read is at most 1 MiB of text, escaped as
/// JSON).
pub const MAX_BODY_BYTES: u64 = 8 << 20;

/// The head of an answer, and its body still to be read.
pub struct Opened {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, as it comes.
    pub body: Body,
}

impl Opened {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An answer's body: the bytes read with the head, then the rest of the connection until
/// the server closes it. A stream of chunks (for relaying it as it comes).
pub struct Body {
    first: Option<Vec<u8>>,
    stream: Box<dyn Io>,
}

impl Body {
    /// The whole body, at most `limit` bytes of it.
    pub async fn read_to_end(mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        let mut out = self.first.take().unwrap_or_default();
        let left = limit.saturating_sub(out.len() as u64);
        (&mut self.stream).take(left).read_to_end(&mut out).await?;
        out.truncate(limit as usize);
        Ok(out)
    }
}

impl tokio_stream::Stream for Body {
    type Item = std::io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            if !first.is_empty() {
                return Poll::Ready(Some(Ok(first)));
            }
        }
        let mut chunk = vec![0u8; 16 << 10];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                chunk.truncate(n);
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

/// Send `GET target` (path and query) to `address`, a server of role `peer`, with
/// `headers`, and read the answer's head; the body is left to the caller. Fails with a
/// message naming `address` when it cannot connect, the TLS handshake fails, the head does
/// not come within `deadline`, or is not HTTP.
pub async fn open(
    address: &str,
    peer: Role,
    target: &str,
    headers: &[(&str, &str)],
    deadline: Duration,
) -> Result<Opened, String> {
    request(address, peer, "GET", target, headers, &[], deadline).await
}

/// Send `method target` with `headers` and `body` (its length in `Content-Length` when it
/// is not empty), as [`open`] does for a GET.
pub async fn request(
    address: &str,
    peer: Role,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    deadline: Duration,
) -> Result<Opened, String> {
    let exchange = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Io> = match crate::tls::client() {
            Some(tls) => {
                let (config, name) = tls.rustls(peer);
                let connected = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("{address}: TLS with a {} certificate: {e}", peer.as_str()))?;
                Box::new(connected)
            }
            None => Box::new(tcp),
        };
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let mut request = format!("{method} {target} HTTP/1.0\r\nHost: {host}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if head.len() > MAX_HEAD_BYTES {
                return Err(format!("{address}: answer head longer than {MAX_HEAD_BYTES} bytes"));
            }
            let n = stream.read(&mut chunk).await.map_err(|e| format!("{address}: {e}"))?;
            if n == 0 {
                return Err(format!("{address}: closed the connection before answering"));
            }
            head.extend_from_slice(&chunk[..n]);
        };
        let first = head.split_off(end + 4);
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{address}: not an HTTP answer"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Opened {
            status,
            headers,
            body: Body {
                first: Some(first),
                stream,
            },
        })
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| format!("{address}: no answer within {deadline:?}"))?
}

/// `GET target` (path and query) from `address`, a server of role `peer`: the status code
/// and the body (at most [`MAX_BODY_BYTES`]), all within `deadline`.
pub async fn get(address: &str, peer: Role, target: &str, deadline: Duration) -> Result<(u16, String), String> {
    let exchange = async {
        let opened = open(address, peer, target, &[], deadline).await?;
        let status = opened.status;
        let body = opened
            .body
            .read_to_end(MAX_BODY_BYTES)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| format!("{address}: no answer within {deadline:?}"))?
}

/// `value` as a URL query value (everything but unreserved characters and `/`
/// percent-encoded).
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

/// `address`, with an unspecified host (`0.0.0.0`, `[::]`) replaced by `hostname`: how to
/// reach an agent that listens on every interface.
pub fn reachable(address: &str, hostname: &str) -> String {
    match address.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", port)) => format!("{hostname}:{port}"),
        _ => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_keep_only_unreserved_characters() {
        assert_eq!(query_value("frameworks/f 1/tasks/a&b"), "frameworks/f%201/tasks/a%26b");
        assert_eq!(query_value("é"), "%C3%A9");
    }

    #[test]
    fn an_agent_listening_everywhere_is_reached_by_its_hostname() {
        assert_eq!(reachable("0.0.0.0:5051", "h1"), "h1:5051");
        assert_eq!(reachable("[::]:5051", "h1"), "h1:5051");
        assert_eq!(reachable("10.0.0.7:5051", "h1"), "10.0.0.7:5051");
    }

    #[tokio::test]
    async fn an_answer_is_read_head_then_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 1024];
            let n = s.read(&mut request).await.unwrap();
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            s.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such ")
                .await
                .unwrap();
            s.write_all(b"file").await.unwrap();
            request
        });
        let opened = open(
            &address,
            Role::Agent,
            "/a?b=c",
            &[("x-test", "1")],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(opened.status, 404);
        assert_eq!(opened.header("content-type"), Some("text/plain"));
        let body = opened.body.read_to_end(1 << 20).await.unwrap();
        assert_eq!(body, b"no such file");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /a?b=c HTTP/1.0\r\n"), "{request}");
        assert!(request.contains("\r\nx-test: 1\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let _server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let e = get(&address, Role::Master, "/", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
    }
}
