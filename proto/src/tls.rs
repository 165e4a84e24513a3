//! Mutual TLS between Corral's programs: TLS 1.3 only, every party with a certificate from
//! the cluster's CA, and the party's role in its certificate.
//!
//! `corral tls cert create --role R` puts the DNS name `R.<cluster>.corral` (R is `master`,
//! `agent` or `client`) among a certificate's subject alternative names, as Nomad writes
//! `server.<region>.nomad`. A client checks a master's certificate for
//! `master.<cluster>.corral`, not for the address it dialled, so a master is reached by any
//! address and nothing but a master certificate can pose as one; a master checks the
//! certificate its peer presented for the role the call needs ([`has_role`]): only masters
//! speak Raft, only agents attach as agents.
//!
//! A program that is given TLS files calls [`set_client`] once at start; every channel
//! [`crate::client::channel`] makes from then on speaks TLS with that identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What a TLS set-up could not do, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The files do not make a TLS configuration (a key that is not the certificate's...).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Only some of `--tls-ca`, `--tls-cert` and `--tls-key` were given.
    #[error("--tls-ca, --tls-cert and --tls-key go together: {0} missing")]
    Incomplete(&'static str),
}

/// The roles a certificate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A master: speaks Raft, serves the APIs.
    Master,
    /// An agent: attaches to masters, runs tasks.
    Agent,
    /// The CLI, a framework, an operator's tool.
    Client,
}

impl Role {
    /// The role's name, as certificates and flags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Agent => "agent",
            Role::Client => "client",
        }
    }

    /// The role named `s`, if any.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "master" => Some(Role::Master),
            "agent" => Some(Role::Agent),
            "client" => Some(Role::Client),
            _ => None,
        }
    }
}

/// The DNS name that marks a certificate of `role` in cluster `cluster`.
pub fn role_name(role: Role, cluster: &str) -> String {
    format!("{}.{cluster}.corral", role.as_str())
}

/// The TLS flags every Corral program takes (`--tls-ca`, `--tls-cert`, `--tls-key`, or
/// `CORRAL_TLS_*` in the environment): all three or none.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM). With --tls-cert and --tls-key, every connection
    /// is mutual TLS 1.3 and each peer's certificate must be of the role it acts in.
    #[arg(long, env = "CORRAL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// This program's certificate (PEM), made by `corral tls cert create` with the role it
    /// acts in (master, agent or client).
    #[arg(long, env = "CORRAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, env = "CORRAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files the flags name, if any: all three or none.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        TlsFiles::from_flags(self.tls_ca.clone(), self.tls_cert.clone(), self.tls_key.clone())
    }
}

/// Whether a server may listen on `listen`: on loopback always; elsewhere only with TLS, or
/// when told `--insecure`. The error is the one line the program exits with.
pub fn check_listen(flag: &str, listen: std::net::SocketAddr, tls: bool, insecure: bool) -> Result<(), String> {
    if tls || insecure || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "{flag} {listen}: will not serve plaintext beyond loopback; make certificates with \
         `corral tls ca create` and `corral tls cert create` and give --tls-ca, --tls-cert and \
         --tls-key, or pass --insecure to serve without TLS anyway"
    ))
}

/// The three files of a TLS identity: the cluster's CA, this party's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate (PEM) every peer's certificate must be signed by.
    pub ca: PathBuf,
    /// This party's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files from the three flags: all or none.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (None, _, _) => Err(TlsError::Incomplete("--tls-ca")),
            (_, None, _) => Err(TlsError::Incomplete("--tls-cert")),
            (_, _, None) => Err(TlsError::Incomplete("--tls-key")),
        }
    }

    fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bad = |why: String| TlsError::File {
            path: path.to_path_buf(),
            why,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        Ok(certs)
    }

    fn key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::File {
            path: self.key.clone(),
            why: format!("not a PEM private key: {e}"),
        })
    }

    fn pem(path: &Path) -> Result<String, TlsError> {
        std::fs::read_to_string(path).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(files: &TlsFiles) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in TlsFiles::certs(&files.ca)? {
        roots.add(ca).map_err(|e| TlsError::File {
            path: files.ca.clone(),
            why: format!("not a CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The configuration of a server that takes only TLS 1.3 and only clients with a
/// certificate from the CA (the role each call needs is checked per call, [`has_role`]).
/// It speaks HTTP/2 (gRPC) and HTTP/1.1 (the plain HTTP endpoints, browsers).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = roots(files)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(TlsFiles::certs(&files.cert)?, files.key_der()?)
        .map_err(|e| TlsError::Config(format!("{} with {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The identity and trust of this process's client connections, once set.
#[derive(Clone)]
pub struct ClientTls {
    /// The cluster whose role names servers must carry.
    pub cluster: String,
    /// The CA certificate, PEM.
    ca_pem: String,
    /// This party's certificate and key, PEM.
    cert_pem: String,
    key_pem: String,
    /// The same identity for connections made with rustls directly (plain HTTP over TLS).
    rustls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Read `files` for the client connections of cluster `cluster`.
    pub fn load(files: &TlsFiles, cluster: &str) -> Result<ClientTls, TlsError> {
        // Parse them now, so that a bad file is said at start, not at the first call.
        let roots = roots(files)?;
        let chain = TlsFiles::certs(&files.cert)?;
        let key = files.key_der()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("{} with {}: {e}", files.cert.display(), files.key.display())))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            cluster: cluster.to_string(),
            ca_pem: TlsFiles::pem(&files.ca)?,
            cert_pem: TlsFiles::pem(&files.cert)?,
            key_pem: TlsFiles::pem(&files.key)?,
            rustls: Arc::new(config),
        })
    }

    /// rustls's configuration of this identity (HTTP/1.1), and the name a server of `role`
    /// must carry.
    pub fn rustls(&self, role: Role) -> (Arc<rustls::ClientConfig>, ServerName<'static>) {
        let name = ServerName::try_from(role_name(role, &self.cluster))
            .unwrap_or_else(|_| ServerName::try_from("invalid.corral").expect("a valid DNS name"));
        (self.rustls.clone(), name)
    }

    /// tonic's configuration for connecting to a server of `role`.
    ///
    /// `handshake` bounds the TLS handshake. tonic's `connect_timeout` covers the TCP connect
    /// only, and a paused or wedged peer accepts TCP (the kernel does) but never answers the
    /// handshake: without this bound every call on the channel would wait behind it.
    pub fn tonic(&self, role: Role, handshake: std::time::Duration) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(role_name(role, &self.cluster))
            .timeout(handshake)
    }
}

static CLIENT: RwLock<Option<ClientTls>> = RwLock::new(None);

/// Make every channel this process opens from now on speak TLS with `tls` (or plaintext
/// again with `None`). Called once at start; again on a certificate reload.
pub fn set_client(tls: Option<ClientTls>) {
    *CLIENT.write().unwrap_or_else(|p| p.into_inner()) = tls;
}

/// This process's client TLS, if set.
pub fn client() -> Option<ClientTls> {
    CLIENT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Read `files` again (certificate rotation, on SIGHUP): the server configuration in
/// `server` (if this process serves TLS) and this process's client identity are replaced
/// together, for the connections made from now on. A file that does not read or does not
/// fit leaves both as they were, and the error says which.
pub fn reload(files: &TlsFiles, cluster: &str, server: Option<&SharedServerConfig>) -> Result<(), TlsError> {
    let new_server = server.map(|_| server_config(files)).transpose()?;
    let new_client = ClientTls::load(files, cluster)?;
    if let (Some(shared), Some(config)) = (server, new_server) {
        *shared.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
    set_client(Some(new_client));
    Ok(())
}

/// The certificates of a PEM text.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Whether `certs` (the peer's chain, leaf first, as the handshake verified it against the
/// CA) is a certificate of `role` in `cluster`.
pub fn has_role(certs: &[CertificateDer<'_>], role: Role, cluster: &str) -> bool {
    let Some(leaf) = certs.first() else { return false };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(role_name(role, cluster)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The name a certificate was made for (its subject's common name: `corral tls cert create
/// --name`), from the peer's chain, leaf first.
pub fn peer_name(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Why a TLS call is refused: the peer's certificate is not of `role` (or there is none).
/// `None` when the call may go on: TLS is off (`tls_on` false), or the certificate fits.
pub fn refuse_unless(
    tls_on: bool,
    certs: Option<&[CertificateDer<'_>]>,
    role: Role,
    cluster: &str,
    what: &str,
) -> Option<tonic::Status> {
    if !tls_on {
        return None;
    }
    match certs {
        Some(certs) if has_role(certs, role, cluster) => None,
        Some(_) => Some(tonic::Status::permission_denied(format!(
            "{what} needs a {} certificate of cluster {cluster} ({}); the one presented is not",
            role.as_str(),
            role_name(role, cluster)
        ))),
        None => Some(tonic::Status::unauthenticated(format!(
            "{what} needs a {} certificate; none was presented",
            role.as_str()
        ))),
    }
}

/// How long a connection may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A server configuration that can be replaced while the server runs (certificate
/// rotation): each new connection takes the one current when it arrives.
pub type SharedServerConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// The TLS connections of `listener`, handshakes done (each on its own task, so that a slow
/// or silent client holds up no one): what a tonic server serves with
/// `serve_with_incoming`. A connection whose handshake fails (plaintext, no certificate,
/// another CA's, expired) is closed and logged at debug level; it never reaches a service.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: SharedServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.read().unwrap_or_else(|p| p.into_inner()).clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
