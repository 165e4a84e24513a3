//! `corral acl token create NAME`: a new bearer token, and the ACL file lines that grant it
//! a principal. The token is printed once and stored nowhere; the masters keep only its
//! SHA-256.

use rand::Rng;

use crate::output::{usage, Failure};

/// Print a new token for principal `name` and the lines for the masters' ACL file.
pub fn token_create(name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(usage(
            "NAME: a principal's name is 1 to 128 printable characters, without quotes",
        ));
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token: String = std::iter::once("corral_".to_string())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let key = if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        name.to_string()
    } else {
        format!("\"{name}\"")
    };
    println!("{token}");
    println!();
    println!("# Give the token above to {name} (`corral --token`, CORRAL_TOKEN); it is shown only now.");
    println!("# Add this to the masters' --acl-file, with the permissions to grant, then send them SIGHUP:");
    println!("[principals.{key}]");
    println!("token_sha256 = \"{}\"", corral_master::acl::token_sha256(&token));
    println!("# register_roles = [\"...\"], run_as_users = [\"...\"], teardown = \"own\", operator = \"none\"");
    Ok(())
}
