//! Corral master (built in later issues).
