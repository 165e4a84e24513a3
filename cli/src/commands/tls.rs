//! `corral tls ca create` and `corral tls cert create`: a cluster's CA and the certificates
//! of its masters, agents and clients, with the role and cluster in each certificate (the
//! DNS name `ROLE.CLUSTER.corral`, see `corral_proto::tls`). Keys are written 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use corral_proto::tls::{role_name, Role};

use crate::output::{usage, Failure};

/// How long a CA certificate is valid.
pub const CA_DAYS: i64 = 10 * 365;
/// How long a certificate is valid unless `--days` says otherwise.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// The most `--days` may ask for.
pub const MAX_CERT_DAYS: u32 = 10 * 365;

/// The organizational unit a CA's subject carries its cluster name in.
const CLUSTER_PREFIX: &str = "corral cluster ";

fn failed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Cluster(format!("{what}: {e}"))
}

/// Write `text` to `path`, creating it with `mode`, refusing to overwrite.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                usage(format!("{} exists already: not overwriting it", path.display()))
            } else {
                failed(&path.display().to_string(), e)
            }
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| failed(&path.display().to_string(), e))
}

fn valid_name(flag: &str, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "{flag}: {} must be 1 to 63 letters, digits or inner dashes (it goes into DNS names)",
            corral_proto::quote(name)
        )))
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// `corral tls ca create --dir DIR [--cluster NAME]`.
pub fn ca_create(dir: &Path, cluster: &str) -> Result<(), Failure> {
    valid_name("--cluster", cluster)?;
    std::fs::create_dir_all(dir).map_err(|e| failed(&dir.display().to_string(), e))?;
    let key = KeyPair::generate().map_err(|e| failed("generating the CA key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Corral CA of cluster {cluster}"));
    dn.push(DnType::OrganizationalUnitName, format!("{CLUSTER_PREFIX}{cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(|e| failed("signing the CA", e))?;
    write_new(&dir.join("ca-key.pem"), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join("ca.pem"), &cert.pem(), 0o644)?;
    println!(
        "wrote {} and {} (the CA of cluster {cluster}; keep ca-key.pem off the cluster's hosts)",
        dir.join("ca.pem").display(),
        dir.join("ca-key.pem").display()
    );
    Ok(())
}

/// The cluster a CA certificate made by [`ca_create`] is for.
fn cluster_of(ca_pem: &str) -> Option<String> {
    let der = corral_proto::tls::parse_certs(ca_pem.as_bytes())
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let cluster = cert
        .subject()
        .iter_organizational_unit()
        .find_map(|ou| ou.as_str().ok()?.strip_prefix(CLUSTER_PREFIX).map(str::to_string));
    cluster
}

/// What `corral tls cert create` is asked for.
#[derive(Debug)]
pub struct CertRequest<'a> {
    /// The directory holding `ca.pem` and `ca-key.pem`, where the certificate is written.
    pub dir: &'a Path,
    /// `master`, `agent` or `client`.
    pub role: &'a str,
    /// The certificate's name (its common name and file name).
    pub name: &'a str,
    /// Extra host names and IP addresses it is valid for (browsers, curl).
    pub hosts: &'a [String],
    /// Days of validity.
    pub days: u32,
}

/// `corral tls cert create --dir DIR --role ROLE --name NAME [--hosts H,...] [--days N]`.
pub fn cert_create(req: CertRequest<'_>) -> Result<(), Failure> {
    let role = Role::parse(req.role).ok_or_else(|| {
        usage(format!(
            "--role: {} is not master, agent or client",
            corral_proto::quote(req.role)
        ))
    })?;
    valid_name("--name", req.name)?;
    if req.days == 0 || req.days > MAX_CERT_DAYS {
        return Err(usage(format!("--days: must be 1 to {MAX_CERT_DAYS}")));
    }
    let ca_path = req.dir.join("ca.pem");
    let ca_key_path = req.dir.join("ca-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| {
        usage(format!(
            "--dir: {}: {e} (make the CA first: corral tls ca create)",
            ca_path.display()
        ))
    })?;
    let ca_key_pem =
        std::fs::read_to_string(&ca_key_path).map_err(|e| usage(format!("--dir: {}: {e}", ca_key_path.display())))?;
    let cluster = cluster_of(&ca_pem).ok_or_else(|| {
        usage(format!(
            "--dir: {} is not a CA made by corral tls ca create",
            ca_path.display()
        ))
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| usage(format!("{}: {e}", ca_key_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| usage(format!("{}: {e}", ca_path.display())))?;

    let mut sans = vec![SanType::DnsName(
        role_name(role, &cluster)
            .try_into()
            .map_err(|e| failed("the role name", e))?,
    )];
    for host in req.hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        sans.push(match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_string().try_into().map_err(|_| {
                usage(format!(
                    "--hosts: {} is neither a host name nor an IP address",
                    corral_proto::quote(host)
                ))
            })?),
        });
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name);
    dn.push(
        DnType::OrganizationalUnitName,
        format!("{} of {CLUSTER_PREFIX}{cluster}", role.as_str()),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Masters and agents serve and call; clients only call.
    params.extended_key_usages = match role {
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Role::Master | Role::Agent => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, i64::from(req.days));
    let key = KeyPair::generate().map_err(|e| failed("generating the key", e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| failed("signing the certificate", e))?;
    let key_path = req.dir.join(format!("{}-key.pem", req.name));
    let cert_path = req.dir.join(format!("{}.pem", req.name));
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    println!(
        "wrote {} and {} ({} {} of cluster {cluster}, valid {} days)",
        cert_path.display(),
        key_path.display(),
        role.as_str(),
        req.name,
        req.days
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_carries_its_role_and_cluster_and_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        ca_create(dir.path(), "prod").unwrap();
        let hosts = vec!["10.0.0.5".to_string(), "m1.example".to_string()];
        cert_create(CertRequest {
            dir: dir.path(),
            role: "master",
            name: "m1",
            hosts: &hosts,
            days: 30,
        })
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca-key.pem", "m1-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let pem = std::fs::read(dir.path().join("m1.pem")).unwrap();
        let certs = corral_proto::tls::parse_certs(&pem).unwrap();
        assert!(corral_proto::tls::has_role(&certs, Role::Master, "prod"));
        assert!(!corral_proto::tls::has_role(&certs, Role::Agent, "prod"));
        assert!(
            !corral_proto::tls::has_role(&certs, Role::Master, "corral"),
            "another cluster"
        );
        // Never overwritten.
        let again = cert_create(CertRequest {
            dir: dir.path(),
            role: "agent",
            name: "m1",
            hosts: &[],
            days: 30,
        });
        assert!(matches!(again, Err(Failure::Usage(m)) if m.contains("exists already")));
    }

    #[test]
    fn bad_requests_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let req = |role, name, days| CertRequest {
            dir: dir.path(),
            role,
            name,
            hosts: &[],
            days,
        };
        assert!(matches!(cert_create(req("root", "x", 1)), Err(Failure::Usage(m)) if m.starts_with("--role")));
        assert!(matches!(cert_create(req("agent", "a b", 1)), Err(Failure::Usage(m)) if m.starts_with("--name")));
        assert!(matches!(cert_create(req("agent", "a", 0)), Err(Failure::Usage(m)) if m.starts_with("--days")));
        assert!(
            matches!(cert_create(req("agent", "a", 1)), Err(Failure::Usage(m)) if m.contains("corral tls ca create"))
        );
    }
}
