//! gRPC services of the master.

pub mod operator;
