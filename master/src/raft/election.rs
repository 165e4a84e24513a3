//! When a master stands for election: sooner than openraft 0.9 would, with a fresh random
//! wait for every election, and leaving it to a peer with a longer log.
//!
//! openraft 0.9 draws a node's election timeout once, when the node starts, and a follower
//! stands only after the leader lease (`2t`) plus that timeout, plus `4t` more whenever an
//! earlier election showed it a longer log (a flag cleared only by its next election). Seen
//! under churn: both followers stood 720 ms after the leader died; the one with the shorter
//! log, which cannot win, stood first and voted for itself, so the other's request in the
//! same term was refused, and the two traded terms until a timer ran out (1 s to a leader).
//!
//! The driver here ([`run`]) decides instead; openraft's own timer is off
//! (`enable_elect: false`), so that every stand against a leader that may be alive goes
//! through the pre-vote. A voter stands when:
//! - **the leader has gone silent**: no AppendEntries has arrived for the lease
//!   ([`Timing::lease`]: the election timeout plus one heartbeat interval, 120 ms at the
//!   defaults) plus a fresh random `0.1t..0.5t` (counted from the last one, the last term
//!   change or the start), and a majority of the voters, asked first (**pre-vote**, Raft
//!   thesis 9.6), miss the leader too. A master that alone does not hear a live leader (its
//!   runtime starved, a one-sided partition) so never bumps the term and deposes it; it
//!   asks again after a short wait. A voter that granted a peer's pre-vote in the last
//!   `t/2` leaves the election to that peer rather than split the vote, and so does one
//!   that granted it while asking for its own, if that peer goes first by [`yields_to`]
//!   (the longer log, then the lower id): two followers that miss their leader at the same
//!   moment otherwise both stand, and the split term costs an undecided round;
//! - **an election is undecided**: no leader `0.75t..1.5t` (drawn anew each round) after its
//!   term last changed, as a candidate or as a follower that voted in a term nobody won
//!   yet (no lease is at stake then);
//! - **a peer with a shorter log stands in its way** ([`Elections::stand_now`]): it refused
//!   a candidate whose log is shorter than its own while its leader was silent, or a peer
//!   with a shorter log refused its own request because that peer voted for itself in the
//!   term. Standing again at once takes a higher term, which that peer grants.
//!
//! It does not stand by silence or by timer for `4t` after a peer showed a longer log
//! ([`Elections::outlogged`]): that peer can win and this one cannot.
//!
//! openraft's vote lease (a voter refuses votes while it heard a leader within
//! `election_timeout_max`) is set to `t`, shorter than the driver's lease, so that a voter
//! whose Raft core is a little behind its network (a slow flush) still grants the vote
//! that its pre-vote promised.
//!
//! Standing for election is always safe in Raft; these rules only decide how soon a
//! leader is elected.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use tokio::sync::{watch, Notify};

use super::network::{LeaderContact, Network, PreVoteRequest};
use super::types::{NodeId, Raft};

/// How often the driver looks at its clocks.
const TICK: Duration = Duration::from_millis(5);

/// Hints from the Raft traffic to the election driver. Cheap to clone.
#[derive(Clone, Default)]
pub struct Elections(Arc<Inner>);

#[derive(Default)]
struct Inner {
    hints: Mutex<Hints>,
    wake: Notify,
}

#[derive(Default, Clone, Copy)]
struct Hints {
    outlogged_at: Option<Instant>,
    stand_now: bool,
    granted_pre_vote_at: Option<Instant>,
    /// The last pre-vote this master granted: to whom, and that peer's log.
    granted_to: Option<Grant>,
}

/// A pre-vote this master granted.
#[derive(Debug, Clone, Copy)]
struct Grant {
    at: Instant,
    candidate: NodeId,
    last_log_index: Option<u64>,
}

/// Whether a master that asked for pre-votes at the same moment as `peer` leaves the
/// election to it: two followers that both miss their leader, ask each other at once and
/// both grant would both stand, each vote for itself, and split the term. One rule, the
/// same on both sides, picks one of them: the longer log stands (the other could not win
/// against it), and between equal logs the lower id.
pub fn yields_to(me: NodeId, my_last: Option<u64>, peer: NodeId, peer_last: Option<u64>) -> bool {
    (peer_last, std::cmp::Reverse(peer)) > (my_last, std::cmp::Reverse(me))
}

impl Elections {
    /// A peer's answer to a vote request showed a longer log than this master's.
    pub fn outlogged(&self) {
        self.0.hints.lock().unwrap_or_else(|p| p.into_inner()).outlogged_at = Some(Instant::now());
    }

    /// A peer with a shorter log stands in the way of an election this master can win.
    pub fn stand_now(&self) {
        self.0.hints.lock().unwrap_or_else(|p| p.into_inner()).stand_now = true;
        self.0.wake.notify_one();
    }

    /// This master granted `candidate`'s pre-vote: the peer is about to stand.
    pub fn granted_pre_vote(&self, candidate: NodeId, last_log_index: Option<u64>) {
        let now = Instant::now();
        let mut h = self.0.hints.lock().unwrap_or_else(|p| p.into_inner());
        h.granted_pre_vote_at = Some(now);
        h.granted_to = Some(Grant {
            at: now,
            candidate,
            last_log_index,
        });
    }

    /// The peer whose pre-vote this master granted at or after `since`, and its log.
    fn granted_since(&self, since: Instant) -> Option<(NodeId, Option<u64>)> {
        let h = self.0.hints.lock().unwrap_or_else(|p| p.into_inner());
        h.granted_to
            .filter(|g| g.at >= since)
            .map(|g| (g.candidate, g.last_log_index))
    }

    fn take(&self) -> Hints {
        let mut h = self.0.hints.lock().unwrap_or_else(|p| p.into_inner());
        let out = *h;
        h.stand_now = false;
        out
    }
}

/// The election's durations.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The election timeout `t`.
    pub t: Duration,
    /// How long a leader must be silent before a follower asks to replace it.
    pub lease: Duration,
}

impl Timing {
    /// The lease is the election timeout plus one heartbeat interval: a leader is taken for
    /// gone once `t` has passed without a heartbeat, and then the next heartbeat's time too.
    pub fn new(election_timeout: Duration, heartbeat: Duration) -> Timing {
        Timing {
            t: election_timeout,
            lease: election_timeout + heartbeat,
        }
    }
}

/// What the driver knows between ticks.
#[derive(Debug, Default)]
pub struct Clock {
    /// The term last seen, and when it was first seen.
    term: Option<(u64, Instant)>,
    /// The basis the current deadline was drawn for, and the deadline.
    plan: Option<(Instant, Instant)>,
    /// The last stand: when, and in which term (the term it left; openraft's metrics show
    /// the new one a moment later).
    stood: Option<(Instant, u64)>,
    /// After a refused pre-vote: not before this.
    retry_at: Option<Instant>,
}

/// What one look at the clocks decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do now.
    Wait,
    /// Stand for election, and why.
    Stand(&'static str),
    /// The leader went silent: ask the other voters first (pre-vote), then stand if a
    /// majority misses it too.
    AskThenStand,
}

/// Inputs of one decision, read from the Raft metrics and the hints.
#[derive(Debug, Clone, Copy)]
pub struct Look {
    /// When the look was taken.
    pub now: Instant,
    /// The driver's start: a master that never heard a leader counts its silence from here.
    pub started: Instant,
    /// This master's Raft role.
    pub state: ServerState,
    /// Whether it votes.
    pub voter: bool,
    /// Its current term.
    pub term: u64,
    /// Whether a leader was established in this term (openraft's vote is committed): only
    /// then is there a lease to respect.
    pub leader_known: bool,
    /// When a leader's AppendEntries was last accepted.
    pub last_heard: Option<Instant>,
    /// When a peer last showed a longer log than this master's ([`Elections::outlogged`]).
    pub outlogged_at: Option<Instant>,
    /// A peer with a shorter log stands in the way: stand at once ([`Elections::stand_now`]).
    pub stand_now: bool,
    /// When this master last granted a peer's pre-vote ([`Elections::granted_pre_vote`]).
    pub granted_pre_vote_at: Option<Instant>,
}

impl Clock {
    /// Decide from one look; `draw` gives a uniform sample in the range it is given.
    pub fn decide(&mut self, look: Look, timing: Timing, draw: &mut dyn FnMut(f64, f64) -> f64) -> Decision {
        let (t, lease) = (timing.t, timing.lease);
        let now = look.now;
        let term_since = match self.term {
            Some((term, since)) if term == look.term => since,
            _ => {
                self.term = Some((look.term, now));
                now
            }
        };
        if !look.voter || !matches!(look.state, ServerState::Follower | ServerState::Candidate) {
            self.plan = None;
            return Decision::Wait;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return Decision::Wait;
        }
        let stood_at = self.stood.map(|(at, _)| at);
        // A hint about the term this master just left is stale: its stand is under way.
        if look.stand_now && self.stood.is_none_or(|(_, term)| look.term > term) {
            self.plan = None;
            self.stood = Some((now, look.term));
            return Decision::Stand("a peer with a shorter log is in the way");
        }
        if look
            .outlogged_at
            .is_some_and(|at| now.saturating_duration_since(at) < t * 4)
        {
            return Decision::Wait;
        }
        let since = term_since.max(stood_at.unwrap_or(term_since));
        // A lease to wait out only when a leader was established in this term; otherwise
        // (a candidate, or a follower that voted in an election nobody won yet) the next
        // round is due after the candidate's window.
        let leased = look.state == ServerState::Follower && look.leader_known;
        // A peer this master just told to go ahead is standing: two stands at once split
        // the vote, and the next round is a candidate's window away.
        if leased
            && look
                .granted_pre_vote_at
                .is_some_and(|at| now.saturating_duration_since(at) < t / 2)
        {
            return Decision::Wait;
        }
        let basis = if leased {
            since.max(look.started).max(look.last_heard.unwrap_or(look.started))
        } else {
            since.max(look.started)
        };
        let deadline = match self.plan {
            Some((b, deadline)) if b == basis => deadline,
            _ => {
                let wait = if leased {
                    lease + t.mul_f64(draw(0.1, 0.5))
                } else {
                    t.mul_f64(draw(0.75, 1.5))
                };
                let deadline = basis + wait;
                self.plan = Some((basis, deadline));
                deadline
            }
        };
        if now < deadline {
            return Decision::Wait;
        }
        self.plan = None;
        self.stood = Some((now, look.term));
        if leased {
            Decision::AskThenStand
        } else {
            Decision::Stand("election undecided")
        }
    }

    /// A majority refused the pre-vote: the leader is alive (this master is the one that
    /// does not hear it). Ask again after a fresh short wait, unless it is heard first.
    pub fn refused(&mut self, now: Instant, t: Duration, draw: &mut dyn FnMut(f64, f64) -> f64) {
        self.stood = None;
        self.plan = None;
        self.retry_at = Some(now + t.mul_f64(draw(0.2, 0.9)));
    }

    /// The pre-vote was granted, but a peer that asked at the same moment goes first
    /// ([`yields_to`]): no stand. The grant this master gave that peer holds it back for
    /// `t/2` (see [`Clock::decide`]); if no leader is heard by then, it asks again.
    pub fn yielded(&mut self) {
        self.stood = None;
        self.plan = None;
    }
}

/// Drive this master's elections until `stop` (see the module docs).
pub async fn run(
    raft: Raft,
    network: Network,
    id: NodeId,
    contact: LeaderContact,
    elections: Elections,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
) {
    let election_timeout = timing.t;
    let started = Instant::now();
    let mut clock = Clock::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = elections.0.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (state, term, voter, leader_known, last_log_index) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voter = m.membership_config.membership().voter_ids().any(|v| v == id);
            (m.state, m.current_term, voter, m.vote.is_committed(), m.last_log_index)
        };
        // Taken before the hints: a pre-vote granted after this moment is one the decision
        // below has not seen, so one given while this master asks (see `yields_to`).
        let looked = Instant::now();
        let hints = elections.take();
        let look = Look {
            now: Instant::now(),
            started,
            state,
            voter,
            term,
            leader_known,
            last_heard: contact.last_heard(),
            outlogged_at: hints.outlogged_at,
            stand_now: hints.stand_now,
            granted_pre_vote_at: hints.granted_pre_vote_at,
        };
        let mut draw = |lo: f64, hi: f64| rand::rng().random_range(lo..hi);
        let why = match clock.decide(look, timing, &mut draw) {
            Decision::Wait => continue,
            Decision::Stand(why) => why,
            Decision::AskThenStand => {
                // The other voters and their addresses, read only when they are asked.
                let peers: Vec<(NodeId, String)> = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    let membership = m.membership_config.membership();
                    membership
                        .voter_ids()
                        .filter(|v| *v != id)
                        .filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
                        .collect()
                };
                let req = PreVoteRequest {
                    candidate: id,
                    term,
                    last_log_index,
                };
                let granted = pre_vote(&network, &peers, &req, election_timeout / 2).await;
                // This master's own vote and the granted ones: a majority of all voters?
                let (votes, voters) = (granted + 1, peers.len() + 1);
                if votes * 2 <= voters {
                    tracing::debug!(term, granted, "pre-vote refused: the leader is alive");
                    clock.refused(Instant::now(), election_timeout, &mut draw);
                    continue;
                }
                if let Some((peer, peer_last)) = elections.granted_since(looked) {
                    if yields_to(id, last_log_index, peer, peer_last) {
                        tracing::debug!(term, peer, "a peer asked at the same moment and goes first");
                        clock.yielded();
                        continue;
                    }
                }
                "leader silent"
            }
        };
        tracing::info!(term, why, "standing for election");
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

/// Ask every peer for a pre-vote at once; how many granted it within `timeout`.
async fn pre_vote(network: &Network, peers: &[(NodeId, String)], req: &PreVoteRequest, timeout: Duration) -> usize {
    let mut asks = tokio::task::JoinSet::new();
    for (target, addr) in peers {
        let (network, target, addr, req) = (network.clone(), *target, addr.clone(), req.clone());
        asks.spawn(async move { network.pre_vote(target, &addr, &req, timeout).await });
    }
    let mut granted = 0;
    while let Some(answer) = asks.join_next().await {
        if matches!(answer, Ok(Some(true))) {
            granted += 1;
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(90);
    /// The defaults: t = 90 ms, heartbeat 30 ms, so a lease of 120 ms.
    const TM: Timing = Timing {
        t: T,
        lease: Duration::from_millis(120),
    };

    fn look(at: Instant, state: ServerState, term: u64) -> Look {
        Look {
            now: at,
            started: at,
            state,
            voter: true,
            term,
            leader_known: state == ServerState::Follower,
            last_heard: None,
            outlogged_at: None,
            stand_now: false,
            granted_pre_vote_at: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Always draws the low end of the range.
    fn low(lo: f64, _hi: f64) -> f64 {
        lo
    }

    #[test]
    fn a_follower_asks_once_its_leader_is_silent_past_the_lease_and_its_draw() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 5);
        l.last_heard = Some(t0);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        // Lease 120 ms plus 0.1 × 90 ms = 129 ms.
        l.now = t0 + ms(128);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(129);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
        // A heartbeat moves the deadline.
        let mut c = Clock::default();
        l.now = t0;
        c.decide(l, TM, &mut low);
        l.last_heard = Some(t0 + ms(150));
        l.now = t0 + ms(278);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(279);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
    }

    #[test]
    fn a_refused_pre_vote_is_asked_again_after_a_short_wait_or_never_if_the_leader_is_heard() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 5);
        l.last_heard = Some(t0);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(129);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
        c.refused(l.now, T, &mut low);
        // 0.2 × 90 ms later it asks again.
        l.now = t0 + ms(129 + 17);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(129 + 18);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
        c.refused(l.now, T, &mut low);
        // Heard meanwhile: the whole lease again.
        l.last_heard = Some(t0 + ms(220));
        l.now = t0 + ms(240);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(220 + 128);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(220 + 129);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
    }

    #[test]
    fn each_round_draws_a_fresh_wait() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut draws = vec![0.5, 0.9, 1.4];
        let mut draw = |_lo: f64, _hi: f64| draws.remove(0);
        let mut l = look(t0, ServerState::Candidate, 7);
        assert_eq!(c.decide(l, TM, &mut draw), Decision::Wait);
        l.now = t0 + T.mul_f64(0.5);
        assert_eq!(c.decide(l, TM, &mut draw), Decision::Stand("election undecided"));
        // The stand moved the term on: the next round has its own draw.
        l.term = 8;
        l.now = t0 + ms(60);
        assert_eq!(c.decide(l, TM, &mut draw), Decision::Wait);
        l.now = t0 + ms(60) + T.mul_f64(0.9);
        assert_eq!(c.decide(l, TM, &mut draw), Decision::Stand("election undecided"));
        assert_eq!(draws, vec![1.4]);
    }

    #[test]
    fn a_voter_outlogged_by_a_peer_leaves_the_election_to_it() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Candidate, 3);
        l.outlogged_at = Some(t0);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(300);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(360);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Stand("election undecided"));
    }

    #[test]
    fn a_peer_in_the_way_makes_it_stand_at_once_but_only_as_a_voting_non_leader() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 3);
        l.last_heard = Some(t0);
        l.stand_now = true;
        assert_eq!(
            c.decide(l, TM, &mut low),
            Decision::Stand("a peer with a shorter log is in the way")
        );
        l.state = ServerState::Leader;
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.state = ServerState::Learner;
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.state = ServerState::Follower;
        l.voter = false;
        l.now = t0 + ms(10_000);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
    }

    #[test]
    fn a_stand_is_not_repeated_while_openraft_takes_it_up() {
        // openraft's metrics show the new term a moment after the stand; until then the
        // master looks just as it did, and must not stand again (and again) on each tick.
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 5);
        l.last_heard = Some(t0);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(129);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
        for tick in 1..30 {
            l.now = t0 + ms(129 + tick);
            assert_eq!(c.decide(l, TM, &mut low), Decision::Wait, "tick {tick}");
        }
        // A stale hint about the term it left does not make it stand twice either...
        l.stand_now = true;
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        // ...but one about its new term does.
        l.term = 6;
        l.state = ServerState::Candidate;
        l.leader_known = false;
        assert_eq!(
            c.decide(l, TM, &mut low),
            Decision::Stand("a peer with a shorter log is in the way")
        );
        l.now += ms(1);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
    }

    #[test]
    fn a_follower_that_voted_gives_the_candidate_its_window_then_stands_without_asking() {
        // A follower that granted a vote (its term moved on, no leader yet) gives the
        // candidate a candidate's window to win; then it stands itself. No lease is at
        // stake (nobody leads the term), so it does not ask first.
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 3);
        l.last_heard = Some(t0);
        c.decide(l, TM, &mut low);
        l.term = 4;
        l.leader_known = false;
        l.now = t0 + ms(150);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        // 0.75 × 90 ms = 67.5 ms after the term changed.
        l.now = t0 + ms(150 + 67);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(150 + 68);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Stand("election undecided"));
    }

    /// Two masters that ask at once each grant the other: exactly one of them stands.
    #[test]
    fn of_two_masters_asking_at_once_exactly_one_goes_first() {
        for (a, b) in [(1, 2), (2, 1), (3, 7)] {
            for (la, lb) in [
                (Some(10), Some(10)),
                (Some(10), Some(11)),
                (None, Some(0)),
                (None, None),
            ] {
                let a_yields = yields_to(a, la, b, lb);
                let b_yields = yields_to(b, lb, a, la);
                assert!(a_yields != b_yields, "{a}@{la:?} vs {b}@{lb:?}: exactly one yields");
                // The longer log goes first; between equal logs, the lower id.
                let a_first = la > lb || (la == lb && a < b);
                assert_eq!(!a_yields, a_first, "{a}@{la:?} vs {b}@{lb:?}");
            }
        }
    }

    /// A master that yielded is held back by the grant it gave, then asks again if the
    /// peer did not make it.
    #[test]
    fn a_master_that_yielded_asks_again_only_after_the_grant_has_run_out() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 5);
        l.last_heard = Some(t0);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(129);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
        // While it asked, it granted a peer's pre-vote (at 130 ms), and the peer goes first.
        c.yielded();
        l.granted_pre_vote_at = Some(t0 + ms(130));
        l.now = t0 + ms(131);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(130 + 44);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(130 + 45);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
    }

    /// Only a grant given while this master asked counts, and the latest one.
    #[test]
    fn the_grant_that_counts_is_one_given_while_asking() {
        let e = Elections::default();
        let before = Instant::now();
        e.granted_pre_vote(2, Some(7));
        let asked = Instant::now();
        assert_eq!(e.granted_since(before), Some((2, Some(7))));
        assert_eq!(e.granted_since(asked + ms(1)), None);
        e.granted_pre_vote(3, Some(9));
        assert_eq!(e.granted_since(asked), Some((3, Some(9))));
    }

    #[test]
    fn a_follower_that_just_granted_a_pre_vote_leaves_the_election_to_that_peer() {
        let t0 = Instant::now();
        let mut c = Clock::default();
        let mut l = look(t0, ServerState::Follower, 5);
        l.last_heard = Some(t0);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        // Its own deadline (129 ms) passes just after it granted a peer's pre-vote.
        l.granted_pre_vote_at = Some(t0 + ms(125));
        l.now = t0 + ms(130);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        l.now = t0 + ms(125 + 44);
        assert_eq!(c.decide(l, TM, &mut low), Decision::Wait);
        // The peer did not make it (no new term, no leader heard): t/2 later it asks itself.
        l.now = t0 + ms(125 + 45);
        assert_eq!(c.decide(l, TM, &mut low), Decision::AskThenStand);
    }
}
