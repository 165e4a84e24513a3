//! Who a caller is (its principal) and what it may do: the `--acl-file`, in Mesos'
//! vocabulary.
//!
//! A caller is identified, in this order, by a bearer token (`authorization: Bearer …`,
//! looked up by its SHA-256 in the ACL file), or by its TLS certificate: a client
//! certificate names the principal (its common name, `corral tls cert create --name`); a
//! master certificate is the cluster itself and may do everything; an agent certificate is
//! no client at all. Without TLS and without a token a caller is anonymous.
//!
//! Without an ACL file every caller that got this far (past mutual TLS, when it is on) may
//! do everything, except agents acting as clients. With one, a principal may do only what
//! its entry grants, and an anonymous caller or a principal the file does not list may do
//! nothing. Refusals are `PERMISSION_DENIED` naming the permission and the principal;
//! an unknown token is `UNAUTHENTICATED`. A token is never logged nor echoed.
//!
//! ```toml
//! [principals.ops]                # the client certificate named "ops"
//! operator = "write"              # none | read | write
//! teardown = "any"                # own | any
//! register_roles = ["*"]          # roles it may register frameworks with
//! run_as_users = ["*"]            # users its frameworks' tasks may run as
//!
//! [principals.batch]              # a bearer token (`corral acl token create batch`)
//! token_sha256 = "9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab"
//! register_roles = ["batch"]
//! run_as_users = ["nobody"]
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use corral_proto::tls::{has_role, peer_name, Role};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

/// What an ACL file could not be.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("--acl-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid ACL.
    #[error("--acl-file {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the principal and the key.
        why: String,
    },
}

/// `operator`: what a principal may do with the operator API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAccess {
    /// Nothing.
    #[default]
    None,
    /// Read the cluster's state (status, members, agents, frameworks, tasks, weights, watch,
    /// the web UI and `/state`).
    Read,
    /// Change it too (members, weights, tear frameworks down).
    Write,
}

impl OperatorAccess {
    fn as_str(self) -> &'static str {
        match self {
            OperatorAccess::None => "none",
            OperatorAccess::Read => "read",
            OperatorAccess::Write => "write",
        }
    }
}

/// `teardown`: whose frameworks a principal may tear down or take over (subscribe as).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Teardown {
    /// Only the frameworks it registered.
    #[default]
    Own,
    /// Any framework.
    Any,
}

/// A list of names, `"*"` for all.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    Only(BTreeSet<String>),
}

impl Names {
    fn from_list(list: Vec<String>) -> Names {
        if list.iter().any(|n| n == "*") {
            Names::All
        } else {
            Names::Only(list.into_iter().collect())
        }
    }

    fn allows(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Only(set) => set.contains(name),
        }
    }
}

/// One principal's entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token_sha256: Option<String>,
    #[serde(default)]
    register_roles: Vec<String>,
    #[serde(default)]
    run_as_users: Vec<String>,
    #[serde(default)]
    teardown: Teardown,
    #[serde(default)]
    operator: OperatorAccess,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principals: BTreeMap<String, Entry>,
}

/// What one listed principal may do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grants {
    register_roles: Names,
    run_as_users: Names,
    teardown: Teardown,
    operator: OperatorAccess,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    principals: BTreeMap<String, Grants>,
    /// SHA-256 (lower-case hex) of a token → its principal.
    tokens: HashMap<String, String>,
}

/// SHA-256 of a token, lower-case hex: what an ACL file stores.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Acl {
    /// Read and check the ACL file at `path`.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text).map_err(|why| AclError::Invalid {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Check and parse an ACL file's text; the error names the principal and the key.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut acl = Acl::default();
        for (name, entry) in file.principals {
            if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "principals.{name:?}: a principal's name is 1 to 128 printable characters"
                ));
            }
            if let Some(hash) = entry.token_sha256 {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "principals.{name}.token_sha256: must be 64 hex digits (`corral acl token create` prints it)"
                    ));
                }
                let hash = hash.to_ascii_lowercase();
                if let Some(other) = acl.tokens.insert(hash, name.clone()) {
                    return Err(format!(
                        "principals.{name}.token_sha256: the same token is also {other}'s"
                    ));
                }
            }
            for (key, list) in [
                ("register_roles", &entry.register_roles),
                ("run_as_users", &entry.run_as_users),
            ] {
                if let Some(bad) = list.iter().find(|n| n.is_empty() || n.chars().any(|c| c.is_control())) {
                    return Err(format!("principals.{name}.{key}: {bad:?} is not a name"));
                }
            }
            acl.principals.insert(
                name,
                Grants {
                    register_roles: Names::from_list(entry.register_roles),
                    run_as_users: Names::from_list(entry.run_as_users),
                    teardown: entry.teardown,
                    operator: entry.operator,
                },
            );
        }
        Ok(acl)
    }

    /// What the principal `name` may do: its entry's grants, or nothing.
    fn may(&self, name: &str) -> May {
        self.principals
            .get(name)
            .cloned()
            .map_or(May::Nothing("not in the ACL file"), May::Listed)
    }

    /// How many principals it lists.
    pub fn len(&self) -> usize {
        self.principals.len()
    }

    /// Whether it lists none.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }
}

/// What a caller may do.
#[derive(Debug, Clone)]
enum May {
    /// Everything: no ACL file, or a master.
    All,
    /// What its entry grants.
    Listed(Grants),
    /// Nothing, for this reason (said in refusals).
    Nothing(&'static str),
}

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its name: the principal's, or empty for an anonymous caller (no TLS, no token).
    pub name: String,
    may: May,
}

impl Principal {
    fn who(&self) -> String {
        if self.name.is_empty() {
            "an anonymous caller (no client certificate, no token)".to_string()
        } else {
            format!("principal {:?}", self.name)
        }
    }

    fn refuse(&self, permission: &str, why: &str) -> Status {
        Status::permission_denied(format!("{permission}: denied to {} ({why})", self.who()))
    }

    /// `permission`, granted when the caller may do everything, or its entry passes
    /// `granted` (whose error says why not).
    fn check(&self, permission: &str, granted: impl FnOnce(&Grants) -> Result<(), String>) -> Result<(), Status> {
        match &self.may {
            May::All => Ok(()),
            May::Listed(g) => granted(g).map_err(|why| self.refuse(permission, &why)),
            May::Nothing(why) => Err(self.refuse(permission, why)),
        }
    }

    /// The operator API at `level`.
    pub fn operator(&self, level: OperatorAccess) -> Result<(), Status> {
        self.check(&format!("operator {}", level.as_str()), |g| {
            if g.operator >= level {
                Ok(())
            } else {
                Err(format!("its operator is {}", g.operator.as_str()))
            }
        })
    }

    /// Registering a framework with `role`.
    pub fn register_role(&self, role: &str) -> Result<(), Status> {
        self.check(&format!("register_roles {role:?}"), |g| {
            g.register_roles
                .allows(role)
                .then_some(())
                .ok_or_else(|| "the role is not in its register_roles".to_string())
        })
    }

    /// Running tasks as `user`.
    pub fn run_as(&self, user: &str) -> Result<(), Status> {
        self.check(&format!("run_as_users {user:?}"), |g| {
            g.run_as_users
                .allows(user)
                .then_some(())
                .ok_or_else(|| "the user is not in its run_as_users".to_string())
        })
    }

    /// Tearing down, or subscribing as, framework `framework_id` registered by `owner`.
    pub fn teardown(&self, framework_id: &str, owner: &str) -> Result<(), Status> {
        let own = !owner.is_empty() && owner == self.name;
        self.check("teardown", |g| {
            if g.teardown == Teardown::Any || own {
                return Ok(());
            }
            let by = if owner.is_empty() {
                "an anonymous caller".to_string()
            } else {
                format!("{owner:?}")
            };
            Err(format!(
                "teardown is own, and framework {framework_id} was registered by {by}"
            ))
        })
    }
}

/// The header in which a master relaying a client's HTTP request to the leader names the
/// client's principal (see [`Access::identify_http`]).
pub const ON_BEHALF_OF: &str = "x-corral-on-behalf-of";

/// The master's access control: the ACL in force (replaced on SIGHUP) and whether TLS is on.
#[derive(Debug)]
pub struct Access {
    file: Option<PathBuf>,
    acl: RwLock<Option<Arc<Acl>>>,
    tls: bool,
    cluster: String,
}

impl Access {
    /// Access control from `file` (read now) for a master with or without TLS.
    pub fn new(file: Option<PathBuf>, tls: bool, cluster: &str) -> Result<Access, AclError> {
        let acl = file.as_deref().map(Acl::load).transpose()?.map(Arc::new);
        Ok(Access {
            file,
            acl: RwLock::new(acl),
            tls,
            cluster: cluster.to_string(),
        })
    }

    /// Read the ACL file again (SIGHUP). A file that no longer reads or parses leaves the ACL
    /// in force as it was, and the error says why. Returns the number of principals.
    pub fn reload(&self) -> Result<Option<usize>, AclError> {
        let Some(path) = &self.file else { return Ok(None) };
        let acl = Acl::load(path)?;
        let n = acl.len();
        *self.acl.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(acl));
        Ok(Some(n))
    }

    fn current(&self) -> Option<Arc<Acl>> {
        self.acl.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Who the caller is, from its `authorization` header value (if sent) and the
    /// certificates it presented (if TLS is on). Fails only for a malformed header or a
    /// token the ACL does not know (UNAUTHENTICATED; the token is not repeated).
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Principal, Status> {
        let acl = self.current();
        if let (Some(value), Some(acl)) = (authorization, acl.as_ref()) {
            let token = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer <token>`"))?;
            let name = acl.tokens.get(&token_sha256(token)).ok_or_else(|| {
                Status::unauthenticated("authorization: the bearer token is not one of this cluster's")
            })?;
            return Ok(Principal {
                name: name.clone(),
                may: acl.may(name),
            });
        }
        let certs = if self.tls { certs.unwrap_or_default() } else { &[] };
        if self.tls {
            let name = peer_name(certs).unwrap_or_default();
            if has_role(certs, Role::Master, &self.cluster) {
                return Ok(Principal {
                    name: format!("master {name}"),
                    may: May::All,
                });
            }
            if !has_role(certs, Role::Client, &self.cluster) {
                return Ok(Principal {
                    name,
                    may: May::Nothing("not a client certificate: clients use `corral tls cert create --role client`"),
                });
            }
            let may = acl.map_or(May::All, |acl| acl.may(&name));
            return Ok(Principal { name, may });
        }
        Ok(Principal {
            name: String::new(),
            may: match acl {
                None => May::All,
                Some(_) => May::Nothing("the ACL file grants nothing to anonymous callers; send a bearer token"),
            },
        })
    }

    /// [`Access::identify`] for an HTTP request: its `Authorization` header and the
    /// certificates of its connection. A request a master relays from a client
    /// (`x-corral-on-behalf-of`, [`ON_BEHALF_OF`]) is identified as that client: the
    /// header names the principal of the client's certificate, and is believed only from a
    /// master certificate (a master may do everything anyway), never from a client. A
    /// client's bearer token is relayed as it came, and identifies it as usual.
    pub fn identify_http(
        &self,
        headers: &http::HeaderMap,
        certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Principal, Status> {
        let authorization = headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        let caller = self.identify(authorization, certs)?;
        let relayed_for = headers.get(ON_BEHALF_OF).and_then(|v| v.to_str().ok());
        let from_master = self.tls && has_role(certs.unwrap_or_default(), Role::Master, &self.cluster);
        match relayed_for {
            Some(name) if from_master && authorization.is_none() => {
                let may = self.current().map_or(May::All, |acl| acl.may(name));
                Ok(Principal {
                    name: name.to_string(),
                    may,
                })
            }
            _ => Ok(caller),
        }
    }

    /// What a master relaying `caller`'s request to the leader sends in
    /// [`ON_BEHALF_OF`]: the principal of its client certificate, when that (not a token,
    /// which is relayed itself) identified it.
    pub fn relayed_name(&self, headers: &http::HeaderMap, caller: &Principal) -> Option<String> {
        (self.tls && headers.get(http::header::AUTHORIZATION).is_none() && !caller.name.is_empty())
            .then(|| caller.name.clone())
    }

    /// [`Access::identify`] for a gRPC request. A request made in this process on behalf
    /// of a caller the HTTP front end identified (the Mesos APIs) carries that
    /// [`Principal`] in its extensions, which no peer can set.
    pub fn caller<T>(&self, req: &tonic::Request<T>) -> Result<Principal, Status> {
        if let Some(p) = req.extensions().get::<Principal>() {
            return Ok(p.clone());
        }
        let certs = req.peer_certs();
        self.identify(
            req.metadata().get("authorization").map(|v| v.as_bytes()),
            certs.as_deref().map(Vec::as_slice),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [principals.ops]
        operator = "write"
        teardown = "any"
        register_roles = ["*"]
        run_as_users = ["*"]

        [principals.batch]
        token_sha256 = "TOKENHASH"
        register_roles = ["batch"]
        run_as_users = ["nobody"]
        operator = "read"
    "#;

    fn access(tls: bool) -> (tempfile::TempDir, Access) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.toml");
        std::fs::write(&path, FILE.replace("TOKENHASH", &token_sha256("s3cret"))).unwrap();
        let access = Access::new(Some(path), tls, "corral").unwrap();
        (dir, access)
    }

    #[test]
    fn a_token_names_its_principal_and_its_grants_hold() {
        let (_d, access) = access(false);
        let batch = access.identify(Some(b"Bearer s3cret"), None).unwrap();
        assert_eq!(batch.name, "batch");
        batch.register_role("batch").unwrap();
        let e = batch.register_role("prod").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("register_roles \"prod\"") && e.message().contains("\"batch\""),
            "{e:?}"
        );
        batch.run_as("nobody").unwrap();
        assert!(batch
            .run_as("root")
            .unwrap_err()
            .message()
            .contains("run_as_users \"root\""));
        batch.operator(OperatorAccess::Read).unwrap();
        let e = batch.operator(OperatorAccess::Write).unwrap_err();
        assert!(
            e.message().starts_with("operator write: denied to principal \"batch\""),
            "{e:?}"
        );
        batch.teardown("fw-1", "batch").unwrap();
        let e = batch.teardown("fw-2", "ops").unwrap_err();
        assert!(
            e.message().contains("teardown") && e.message().contains("\"ops\""),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_or_malformed_tokens_are_unauthenticated_and_not_repeated() {
        let (_d, access) = access(false);
        for header in [&b"Bearer wrong-token"[..], b"Basic abc", b"Bearer "] {
            let e = access.identify(Some(header), None).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(!e.message().contains("wrong-token"), "{e:?}");
        }
        // Anonymous, with an ACL: nothing.
        let anon = access.identify(None, None).unwrap();
        assert!(anon
            .operator(OperatorAccess::Read)
            .unwrap_err()
            .message()
            .contains("anonymous"));
    }

    #[test]
    fn without_an_acl_file_everyone_may_do_everything() {
        let access = Access::new(None, false, "corral").unwrap();
        let p = access.identify(Some(b"Bearer anything"), None).unwrap();
        p.operator(OperatorAccess::Write).unwrap();
        p.teardown("fw", "someone").unwrap();
    }

    #[test]
    fn bad_files_name_the_principal_and_key() {
        assert!(Acl::parse("[principals.a]\noperator = \"admin\"").is_err());
        assert!(Acl::parse("[principals.a]\nbogus = 1").is_err());
        let e = Acl::parse("[principals.a]\ntoken_sha256 = \"abc\"").unwrap_err();
        assert!(e.starts_with("principals.a.token_sha256"), "{e}");
        let h = token_sha256("t");
        let e = Acl::parse(&format!(
            "[principals.a]\ntoken_sha256 = \"{h}\"\n[principals.b]\ntoken_sha256 = \"{h}\""
        ))
        .unwrap_err();
        assert!(e.contains("also a's"), "{e}");
        assert_eq!(Acl::parse("").unwrap().len(), 0);
    }

    #[test]
    fn a_reload_that_fails_keeps_the_acl_in_force() {
        let (dir, access) = access(false);
        std::fs::write(dir.path().join("acl.toml"), "not toml [").unwrap();
        assert!(access.reload().is_err());
        assert_eq!(access.identify(Some(b"Bearer s3cret"), None).unwrap().name, "batch");
        std::fs::write(dir.path().join("acl.toml"), "[principals.x]\n").unwrap();
        assert_eq!(access.reload().unwrap(), Some(1));
        assert!(access.identify(Some(b"Bearer s3cret"), None).is_err());
    }
}
