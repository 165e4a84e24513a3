//! Corral agent: runs tasks as processes for the leader. Built in the issue "Agents,
//! frameworks, DRF offers and the task lifecycle"; this crate holds only its place in the
//! workspace for now.
