//! Launch flow control: how many launches may be in flight, following commit latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long committing a launch should take (an Accept call, from the check of its offers
/// to the launch committed): the commit pipeline's latency, which every write of the
/// cluster shares. The number of launches allowed in flight adapts to keep it this short
/// (see [`Launches`]).
pub const LAUNCH_COMMIT_TARGET: Duration = Duration::from_millis(40);

/// Bounds of the adaptive limit on launches in flight (tasks).
pub const MIN_LAUNCHES_IN_FLIGHT: usize = 32;

/// Upper bound of the adaptive limit on launches in flight (tasks).
pub const MAX_LAUNCHES_IN_FLIGHT: usize = 16_384;

/// The limit a new leader starts from.
pub(super) const INITIAL_LAUNCHES_IN_FLIGHT: usize = 256;

/// The limit is reconsidered at most this often, and only on this many launches.
pub(super) const LIMIT_WINDOW: Duration = Duration::from_millis(250);

pub(super) const LIMIT_WINDOW_SAMPLES: usize = 16;

/// Commit latencies kept per window (a longer window keeps every other one).
pub(super) const LIMIT_WINDOW_CAP: usize = 4096;

/// A launch whose first status has not come within this time stops counting towards the
/// limit (its agent may have died; the agent timeouts deal with it), so that lost agents
/// cannot hold back every other launch.
pub const LAUNCH_TTL: Duration = Duration::from_secs(5);

/// Launches in flight (accepted, not yet reported on by their agent) and the adaptive
/// limit on them: offers wait while the limit is reached. Every launch turns into Raft
/// commits (the launch, its status updates, their acknowledgements); offering faster than
/// they complete only lengthens the queues, which under load is all of a launch's latency.
///
/// The limit follows the latency of committing launches, additive increase and
/// multiplicative decrease, as a TCP sender follows its round-trip time: while the 90th
/// percentile stays under [`LAUNCH_COMMIT_TARGET`] and the limit is what holds offers
/// back, it grows by an eighth; when the percentile is over the target it shrinks by a
/// quarter. The cluster so runs at the rate it commits, with each launch waiting a few
/// commit rounds, on a small machine or a large one. The signal is the master's own
/// pipeline, not how long agents take to start tasks: slow-starting tasks only keep their
/// place in flight (for [`LAUNCH_TTL`] at most), and the limit grows to make room.
pub struct Launches {
    pub(super) started: HashMap<(String, String), Instant>,
    /// Average tasks per Accept (exponentially weighted), to turn the room left into a
    /// number of agents to offer.
    pub(super) per_accept: f64,
    pub(super) limit: usize,
    /// Launch commit latencies (µs) since the window began.
    pub(super) window: Vec<u32>,
    pub(super) window_began: Instant,
    /// Whether the limit held offers back during the window.
    pub(super) limited: bool,
}

impl Default for Launches {
    fn default() -> Self {
        Launches {
            started: HashMap::new(),
            per_accept: 0.0,
            limit: INITIAL_LAUNCHES_IN_FLIGHT,
            window: Vec::new(),
            window_began: Instant::now(),
            limited: false,
        }
    }
}

impl Launches {
    /// Tasks `task_ids` of `framework_id` were accepted.
    pub fn start<'a>(&mut self, framework_id: &str, task_ids: impl Iterator<Item = &'a str>, now: Instant) {
        let mut n = 0;
        for id in task_ids {
            self.started.insert((framework_id.to_string(), id.to_string()), now);
            n += 1;
        }
        if n > 0 {
            self.per_accept = if self.per_accept == 0.0 {
                n as f64
            } else {
                0.9 * self.per_accept + 0.1 * n as f64
            };
        }
    }

    /// The task's launch is over: its agent reported on it, or it was not committed.
    pub fn done(&mut self, framework_id: &str, task_id: &str) {
        self.started.remove(&(framework_id.to_string(), task_id.to_string()));
    }

    /// An Accept's launch was committed `took` after its offers were checked.
    pub fn committed(&mut self, took: Duration) {
        if self.window.len() == LIMIT_WINDOW_CAP {
            // Keep every other sample: the percentile stays, the memory is bounded.
            let mut i = 0;
            self.window.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
        self.window.push(took.as_micros().min(u32::MAX as u128) as u32);
    }

    /// Forget launches older than [`LAUNCH_TTL`].
    pub(super) fn expire(&mut self, now: Instant) {
        self.started.retain(|_, at| now.duration_since(*at) < LAUNCH_TTL);
    }

    /// Launches in flight.
    pub fn len(&self) -> usize {
        self.started.len()
    }

    /// No launch is in flight.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    /// The current limit on launches in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reconsider the limit from the window's latencies (see [`Launches`]).
    pub(super) fn adapt(&mut self, now: Instant) {
        if now.duration_since(self.window_began) < LIMIT_WINDOW || self.window.len() < LIMIT_WINDOW_SAMPLES {
            return;
        }
        let rank = self.window.len() * 9 / 10;
        let (_, p90, _) = self.window.select_nth_unstable(rank);
        let p90 = Duration::from_micros(u64::from(*p90));
        if p90 > LAUNCH_COMMIT_TARGET {
            self.limit = (self.limit * 3 / 4).max(MIN_LAUNCHES_IN_FLIGHT);
        } else if self.limited {
            self.limit = (self.limit + (self.limit / 8).max(8)).min(MAX_LAUNCHES_IN_FLIGHT);
        }
        self.window.clear();
        self.window_began = now;
        self.limited = false;
    }

    /// How many agents one pass may offer: as many as the room left would take if each
    /// offer is accepted as the average one was (at least one while there is room).
    pub(super) fn agents_to_offer(&mut self) -> usize {
        let room = self.limit.saturating_sub(self.started.len());
        if room == 0 {
            self.limited = true;
            return 0;
        }
        ((room as f64 / self.per_accept.max(1.0)) as usize).max(1)
    }
}
