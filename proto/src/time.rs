//! Time as every Corral program reads and writes it: durations on the command line, wall
//! clock milliseconds in commands and status updates, and which task states are final.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::v1;

/// Longest duration a flag accepts: ten years. Beyond it a value is a typo, and a
/// `Duration` from it could overflow an `Instant` sum.
pub const MAX_FLAG_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a duration flag was refused.
// Each variant's message says what its fields are.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 500ms, 1.5s, 2m or 168h")]
    NotADuration(String),
    #[error("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")]
    UnknownUnit { text: String, unit: String },
    #[error("{0:?} is too long (at most ten years)")]
    TooLong(String),
}

/// Parse `500ms`, `15s`, `1.5s`, `2m`, `168h`, or a bare number of seconds. Clap's
/// `value_parser` for every duration flag of the master, the agent and the CLI.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
        return Err(DurationError::NotADuration(text.to_string()));
    }
    let n: f64 = number
        .parse()
        .map_err(|_| DurationError::NotADuration(text.to_string()))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    if !seconds.is_finite() || seconds > MAX_FLAG_DURATION.as_secs_f64() {
        return Err(DurationError::TooLong(text.to_string()));
    }
    // Whole milliseconds, as every duration Corral uses is.
    Ok(Duration::from_millis((seconds * 1000.0).round() as u64))
}

/// Milliseconds since the Unix epoch by this host's clock: how commands, status updates
/// and checkpoints are stamped. A clock before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl v1::TaskState {
    /// A final state: the task's resources are free again and it never changes state after.
    pub fn is_terminal(self) -> bool {
        use v1::TaskState::*;
        matches!(
            self,
            TaskFinished | TaskFailed | TaskKilled | TaskError | TaskLost | TaskDropped | TaskGone
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_refuse_what_is_not_one() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("168h"), Ok(Duration::from_secs(168 * 3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "ms", "-1s", "1.s", ".5s", "1..5s", "1.2.3s", "abc", "1 s"] {
            assert!(
                matches!(
                    parse_duration(bad),
                    Err(DurationError::NotADuration(_) | DurationError::UnknownUnit { .. })
                ),
                "{bad:?}: {:?}",
                parse_duration(bad)
            );
        }
        assert!(parse_duration("5d").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_duration("99999999999999999h")
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert!(parse_duration("87601h").unwrap_err().to_string().contains("too long"));
    }

    #[test]
    fn terminal_states_are_the_final_ones() {
        use v1::TaskState::*;
        for s in [
            TaskFinished,
            TaskFailed,
            TaskKilled,
            TaskError,
            TaskLost,
            TaskDropped,
            TaskGone,
        ] {
            assert!(s.is_terminal(), "{s:?}");
        }
        for s in [
            TaskStaging,
            TaskStarting,
            TaskRunning,
            TaskKilling,
            TaskUnreachable,
            TaskUnknown,
        ] {
            assert!(!s.is_terminal(), "{s:?}");
        }
    }
}
