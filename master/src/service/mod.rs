//! gRPC services of the master.

pub mod agents;
pub mod http;
pub mod mesos;
pub mod mesos_operator;
pub mod operator;
pub mod scheduler;
pub mod ui;
pub mod watch;
