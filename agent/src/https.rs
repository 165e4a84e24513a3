//! The agent's HTTP endpoint over mutual TLS: connections come from
//! [`corral_proto::tls::incoming`] (handshakes done, every peer holding a certificate of the
//! cluster's CA), each with the certificate its peer presented, so that a route can ask for
//! a role: the sandboxes (`/files/*`) are served to masters (the web UI's task output) and
//! clients (`corral logs`) only, never to another agent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use corral_proto::tls::{has_role, Role};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The certificate chain it presented (leaf first), verified against the CA.
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

/// A listener whose connections are TLS, for `axum::serve`.
pub struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    local: SocketAddr,
}

impl TlsListener {
    /// TLS on `listener` with the server configuration `config`.
    pub fn new(
        listener: tokio::net::TcpListener,
        config: corral_proto::tls::SharedServerConfig,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            incoming: corral_proto::tls::incoming(listener, config),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(tls)) => {
                    let (tcp, connection) = tls.get_ref();
                    let addr = tcp.peer_addr().unwrap_or(self.local);
                    let certs = connection
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default();
                    return (
                        tls,
                        Peer {
                            addr,
                            certs: Arc::new(certs),
                        },
                    );
                }
                Some(Err(e)) => tracing::debug!(error = %e, "a TLS connection failed before its first request"),
                // The acceptor only ends with the runtime: wait for the server's shutdown.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            certs: Arc::new(Vec::new()),
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Refuse (403, saying which roles may) a request to the sandboxes from a peer whose
/// certificate is neither a master's nor a client's of `cluster`.
pub async fn sandboxes_for_masters_and_clients(
    State(cluster): State<Arc<str>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = [Role::Master, Role::Client]
        .into_iter()
        .any(|role| has_role(&peer.certs, role, &cluster));
    if allowed {
        return next.run(request).await;
    }
    tracing::warn!(peer = %peer.addr, name = ?corral_proto::tls::peer_name(&peer.certs), "refused a sandbox read from a certificate that is not a master's or a client's");
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": format!("the sandboxes are served to master and client certificates of cluster {cluster} only")
        })),
    )
        .into_response()
}
