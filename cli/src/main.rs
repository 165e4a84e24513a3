//! `corral`, the operator CLI. Its commands (DESIGN.md "corral CLI") arrive with the master
//! and agent; until then it says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!("corral: no commands yet; the operator CLI arrives with the replicated master");
    std::process::ExitCode::from(2)
}
