//! Logging set-up shared by `corral-master`, `corral-agent` and `corral local`: `tracing`
//! events on stderr, as text (coloured only when stderr is a terminal, so log files hold no
//! escape codes) or as one JSON object per line (`--log-format json`, for log shippers).
//! `RUST_LOG` overrides the default filter.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, `fields`.
    Json,
}

/// A `--log-format` value that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a log format (text or json)")]
pub struct LogFormatError(String);

impl std::str::FromStr for LogFormat {
    type Err = LogFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LogFormatError(crate::quote(other))),
        }
    }
}

/// Install the global subscriber: `format` on stderr, events passing `RUST_LOG` or, when it
/// is unset or invalid, `default_filter`. Only the first call in a process takes effect.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_formats_parse_and_anything_else_is_refused_by_name() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let e = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(
            e.to_string().contains("yaml") && e.to_string().contains("text or json"),
            "{e}"
        );
    }
}
