//! Corral's wire API (`corral.v1`), exact resource arithmetic, and the client side of the
//! protocol shared by the master, the agent, the CLI and frameworks.
//!
//! # Layout
//! - [`resources`]: resources in exact milli-units and range sets; text form and checks.

pub mod resources;
