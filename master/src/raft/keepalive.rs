//! Keepalives: a leader whose Raft core is only waiting for its disk still vouches for
//! itself, so that a slow flush does not depose it.
//!
//! openraft 0.9's core awaits every durable write it makes to the log store and sends no
//! heartbeat meanwhile. A leader's own appends no longer make it wait (they are reported
//! when queued; see `corral_raft_store`'s log store, "A leader's own appends"), but a vote,
//! a truncation and the purge point after each snapshot still do. A wait longer than the
//! followers' lease (120 ms at the defaults) then looks to them like a dead leader: seen on a
//! slow disk, where the first flush after a snapshot file was written took 150–330 ms, and
//! the followers deposed a healthy leader every few minutes (when every append still made
//! the core wait).
//!
//! A leader's disk that stops completing flushes altogether no longer silences its core.
//! The peer network stops sending AppendEntries once the log's flush has been outstanding
//! for longer than [`CORE_STALL_LIMIT`] (`network`), so the followers replace it as they
//! would a wedged core, and `/health` answers 503 after [`CORE_UNRESPONSIVE`].
//!
//! So every master probes its own core ([`probe_core`]): a no-op request through openraft's
//! queue (`Raft::with_raft_state`), one at a time, every half heartbeat interval. The core's
//! *silence* ([`CoreProbe::silence`]) is how long a probe has gone unanswered. A leader
//! whose core has been silent for longer than a heartbeat interval (its heartbeats are late)
//! but no longer than [`CORE_STALL_LIMIT`] sends every other voter a `Keepalive`
//! (`raft.proto`) naming itself and its term, once per heartbeat interval ([`run`]). A
//! follower in that term, following that leader, takes it as heard from, as it would an
//! AppendEntries (`RaftService::keepalive`). A core silent for longer is taken for wedged:
//! the keepalives stop, and the followers replace the leader once the lease runs out, as if
//! it had died. A killed or paused leader sends nothing, so failover is as before.
//!
//! Safety does not rest on any of this: keepalives only put off elections. One of an old
//! term is ignored, and votes and the log are untouched.
//!
//! A core silent for [`CORE_UNRESPONSIVE`] makes `/health` answer 503, on any master.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use super::network::{KeepaliveRequest, Network};
use super::types::{NodeId, Raft};

/// The longest a leader's core may go without answering a probe and still be vouched for
/// with keepalives. Past it the core is taken for wedged and its followers elect another
/// leader (so a wedged leader is replaced about this long, plus the lease, after it stalled).
/// Long enough for the slowest flushes seen on a slow disk (330 ms), short enough to keep a
/// wedged leader's failover near a second.
pub const CORE_STALL_LIMIT: Duration = Duration::from_secs(1);

/// A core silent this long is reported on `/health` (503): the master cannot do its job.
pub const CORE_UNRESPONSIVE: Duration = Duration::from_secs(5);

/// When this master's Raft core last answered a probe, and whether one is outstanding.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct CoreProbe(Arc<Mutex<ProbeState>>);

#[derive(Debug)]
struct ProbeState {
    answered: Instant,
    outstanding: bool,
}

impl Default for CoreProbe {
    fn default() -> Self {
        CoreProbe(Arc::new(Mutex::new(ProbeState {
            answered: Instant::now(),
            outstanding: false,
        })))
    }
}

impl CoreProbe {
    fn sent(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).outstanding = true;
    }

    fn answered(&self, at: Instant) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.answered = at;
        s.outstanding = false;
    }

    /// How long the core has left a probe unanswered: zero while none is outstanding,
    /// else the time since the last answer.
    pub fn silence(&self) -> Duration {
        self.silence_at(Instant::now())
    }

    fn silence_at(&self, now: Instant) -> Duration {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.outstanding {
            now.saturating_duration_since(s.answered)
        } else {
            Duration::ZERO
        }
    }
}

/// Keepalives sent and heard, for `/metrics`.
#[derive(Debug, Default)]
pub struct KeepaliveStats {
    /// Keepalives this master sent as leader.
    pub sent: AtomicU64,
    /// Keepalives this master took as hearing from its leader.
    pub heard: AtomicU64,
}

/// Probe this master's Raft core every `every` (one probe at a time) until `stop`, or until
/// the core stops (its failure is then on `/health` through openraft's metrics).
pub async fn probe_core(raft: Raft, probe: CoreProbe, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        probe.sent();
        tokio::select! {
            answer = raft.with_raft_state(|_| ()) => {
                if answer.is_err() {
                    return;
                }
                probe.answered(Instant::now());
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Whether a keepalive is due now: this master leads, its core's heartbeats are late
/// (`silence` past one `heartbeat`) but it is not wedged (`silence` within
/// [`CORE_STALL_LIMIT`]), and the last keepalive went out at least a heartbeat ago.
pub fn keepalive_due(leading: bool, silence: Duration, since_last: Option<Duration>, heartbeat: Duration) -> bool {
    leading && silence > heartbeat && silence <= CORE_STALL_LIMIT && since_last.is_none_or(|d| d >= heartbeat)
}

/// Send keepalives while they are due (see the module docs) until `stop`.
pub async fn run(
    raft: Raft,
    network: Network,
    id: NodeId,
    heartbeat: Duration,
    probe: CoreProbe,
    stats: Arc<KeepaliveStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent: Option<Instant> = None;
    // One keepalive in flight per peer: a peer that does not answer is not piled on.
    let mut in_flight: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (leading, term, peers) = {
            let m = raft.metrics();
            let m = m.borrow();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(id);
            let membership = m.membership_config.membership();
            let peers: Vec<(NodeId, String)> = if leading {
                membership
                    .voter_ids()
                    .filter(|v| *v != id)
                    .filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
                    .collect()
            } else {
                Vec::new()
            };
            (leading, m.current_term, peers)
        };
        let now = Instant::now();
        if !keepalive_due(leading, probe.silence(), last_sent.map(|at| now - at), heartbeat) {
            continue;
        }
        // A leader whose log flush is stuck is not vouched for either (see the module docs).
        if network.flush_outstanding() > CORE_STALL_LIMIT {
            continue;
        }
        last_sent = Some(now);
        let req = KeepaliveRequest { leader: id, term };
        for (target, addr) in peers {
            if in_flight.get(&target).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let (network, req, stats) = (network.clone(), req.clone(), stats.clone());
            let handle = tokio::spawn(async move {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let heard = network.keepalive(target, &addr, &req, heartbeat * 2).await;
                tracing::debug!(target, term = req.term, ?heard, "keepalive");
            });
            in_flight.insert(target, handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_leader_whose_core_is_answering_sends_no_keepalive() {
        assert!(!keepalive_due(true, Duration::ZERO, None, HB));
        assert!(!keepalive_due(true, ms(30), None, HB));
    }

    #[test]
    fn a_leader_whose_core_waits_on_the_disk_sends_one_per_heartbeat() {
        assert!(keepalive_due(true, ms(31), None, HB));
        assert!(keepalive_due(true, ms(400), Some(ms(30)), HB));
        // Not again within a heartbeat interval.
        assert!(!keepalive_due(true, ms(400), Some(ms(29)), HB));
    }

    #[test]
    fn a_wedged_core_or_a_follower_sends_none() {
        assert!(keepalive_due(true, CORE_STALL_LIMIT, Some(HB), HB));
        assert!(!keepalive_due(true, CORE_STALL_LIMIT + ms(1), Some(HB), HB));
        assert!(!keepalive_due(false, ms(400), None, HB));
    }

    #[test]
    fn the_probe_is_silent_only_while_a_probe_is_outstanding() {
        let p = CoreProbe::default();
        let t0 = Instant::now();
        p.answered(t0);
        assert_eq!(p.silence_at(t0 + ms(50)), Duration::ZERO);
        p.sent();
        assert_eq!(p.silence_at(t0 + ms(50)), ms(50));
        p.answered(t0 + ms(60));
        assert_eq!(p.silence_at(t0 + ms(70)), Duration::ZERO);
    }
}
