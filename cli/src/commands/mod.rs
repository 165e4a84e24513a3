//! One module per `corral` command; each takes what it needs and prints its own output
//! through [`crate::output`].

pub mod acl;
pub mod agents;
pub mod frameworks;
pub mod health;
pub mod local;
pub mod logs;
pub mod members;
pub mod run;
pub mod status;
pub mod tasks;
pub mod tls;
pub mod watch;
pub mod weights;
