//! Corral agent (built in later issues).
