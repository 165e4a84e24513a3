//! gRPC services of the master.

pub mod agents;
pub mod operator;
pub mod scheduler;
