//! Corral master: the Raft node, the replicated cluster state, the DRF allocator and the
//! leader-only services. Built from the next issue ("Replicated master quorum") on; this
//! crate holds only its place in the workspace for now.
