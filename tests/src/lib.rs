//! Cluster harness (later issues).
