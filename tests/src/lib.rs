//! Corral's real-process cluster harness and scenario tests arrive with the replicated
//! master; this crate holds only its place in the workspace for now.
