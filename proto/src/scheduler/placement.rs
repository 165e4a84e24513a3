//! Framework-side placement policies from the Mesos paper's examples: data locality
//! ([`Preference`]) and delay scheduling.

use std::time::{Duration, Instant};

use crate::v1;

/// Data locality: where a task would rather run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preference {
    /// An agent with this hostname.
    Hostname(String),
    /// An agent with this attribute value.
    Attribute {
        /// The attribute's name.
        name: String,
        /// The value wanted.
        value: String,
    },
}

impl Preference {
    /// `host-b` prefers a hostname; `rack:r1` prefers an attribute value.
    pub fn parse(text: &str) -> Result<Preference, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty preference".into());
        }
        Ok(match text.split_once(':') {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => Preference::Attribute {
                name: name.to_string(),
                value: value.to_string(),
            },
            Some(_) => return Err(format!("{text:?} is neither a hostname nor name:value")),
            None => Preference::Hostname(text.to_string()),
        })
    }

    /// Whether `offer` comes from a preferred agent.
    pub fn matches(&self, offer: &v1::Offer) -> bool {
        match self {
            Preference::Hostname(h) => offer.hostname == *h,
            Preference::Attribute { name, value } => {
                offer.attributes.iter().any(|a| a.name == *name && a.value == *value)
            }
        }
    }
}

/// Delay scheduling (Zaharia et al., EuroSys 2010): skip offers that are not preferred
/// for up to `wait`, counted from the first one skipped, then take any offer.
#[derive(Debug, Clone)]
pub struct DelayScheduling {
    wait: Duration,
    skipping_since: Option<Instant>,
}

impl DelayScheduling {
    /// Delay scheduling that waits up to `wait` for a preferred agent.
    pub fn new(wait: Duration) -> Self {
        DelayScheduling {
            wait,
            skipping_since: None,
        }
    }

    /// Whether to use an offer that is (or is not) preferred, at `now`.
    pub fn take(&mut self, preferred: bool, now: Instant) -> bool {
        if preferred {
            self.skipping_since = None;
            return true;
        }
        let since = *self.skipping_since.get_or_insert(now);
        now.duration_since(since) >= self.wait
    }

    /// How much longer non-preferred offers will be skipped.
    pub fn remaining(&self, now: Instant) -> Duration {
        match self.skipping_since {
            Some(since) => self.wait.saturating_sub(now.duration_since(since)),
            None => self.wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences() {
        let offer = v1::Offer {
            hostname: "b".into(),
            attributes: vec![v1::Attribute {
                name: "rack".into(),
                value: "r2".into(),
            }],
            ..Default::default()
        };
        assert!(Preference::parse("b").unwrap().matches(&offer));
        assert!(!Preference::parse("a").unwrap().matches(&offer));
        assert!(Preference::parse("rack:r2").unwrap().matches(&offer));
        assert!(!Preference::parse("rack:r1").unwrap().matches(&offer));
        assert!(Preference::parse(":x").is_err());
    }

    #[test]
    fn delay_scheduling_waits_then_takes_any() {
        let t0 = Instant::now();
        let mut d = DelayScheduling::new(Duration::from_secs(2));
        assert!(!d.take(false, t0));
        assert!(!d.take(false, t0 + Duration::from_millis(1500)));
        assert!(d.take(false, t0 + Duration::from_secs(2)));
        // A preferred offer is always taken and restarts the wait.
        assert!(d.take(true, t0 + Duration::from_secs(3)));
        assert!(!d.take(false, t0 + Duration::from_secs(3)));
    }
}
