//! The DRF allocator: a pure function from a read-only view of the cluster to offers.
//!
//! Dominant Resource Fairness (Ghodsi et al., NSDI 2011, section 4): a framework's dominant
//! share is the largest, over resource kinds, of its allocation of that kind divided by the
//! cluster's total; weighted DRF divides it by its role's weight. Each pass walks the agents
//! and offers each agent's free resources (total − used − already offered) to the eligible
//! framework of lowest weighted dominant share, then counts the offer in that framework's
//! allocation, as Mesos' hierarchical allocator does. A framework is eligible for an agent
//! unless it is suppressed or has an active decline filter for that agent.
//!
//! The frameworks sit in a binary heap ordered by (share, id), so a pass costs
//! O(agents · log frameworks) plus the frameworks skipped for filters. No I/O, no clock:
//! the caller decides what is filtered.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use corral_proto::resources::{Resources, MILLI};

/// Free resources smaller than this are not worth an offer (Mesos' minimum allocatable
/// resources): at least 0.01 cpus or 32 MiB of memory.
pub const MIN_OFFER_CPUS_MILLI: u64 = 10;
/// See [`MIN_OFFER_CPUS_MILLI`]: the memory half of the minimum.
pub const MIN_OFFER_MEM_MILLI: u64 = 32 * MILLI;

/// An agent as the allocator sees it.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The agent's id.
    pub id: String,
    /// Total − used by tasks − outstanding offers.
    pub free: Resources,
}

/// A framework as the allocator sees it.
#[derive(Debug, Clone)]
pub struct FrameworkView {
    /// The framework's id.
    pub id: String,
    /// Weight of its role (> 0).
    pub weight: f64,
    /// Resources of its non-terminal tasks plus its outstanding offers.
    pub allocation: Resources,
    /// Connected and not suppressed.
    pub active: bool,
    /// Agents it declined recently (filters still running).
    pub filtered: HashSet<String>,
}

/// One offer decided by a pass: the agent's free resources to the framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Index of the framework in the pass's framework list.
    pub framework: usize,
    /// Index of the agent in the pass's agent list.
    pub agent: usize,
    /// What is offered.
    pub resources: Resources,
}

/// A heap entry: lowest share first, then lowest id (deterministic ties).
struct Entry {
    share: f64,
    index: usize,
    id: String,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the smallest share on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.share.total_cmp(&self.share).then_with(|| other.id.cmp(&self.id))
    }
}

/// Whether `free` is worth offering.
pub fn offerable(free: &Resources) -> bool {
    free.scalar_milli("cpus") >= MIN_OFFER_CPUS_MILLI || free.scalar_milli("mem") >= MIN_OFFER_MEM_MILLI
}

/// A framework's weighted dominant share of `total`.
pub fn weighted_share(allocation: &Resources, total: &Resources, weight: f64) -> f64 {
    allocation.dominant_share(total) / weight
}

/// One allocation pass. `total` is the sum of every active agent's resources.
pub fn allocate(total: &Resources, agents: &[AgentView], frameworks: &[FrameworkView]) -> Vec<Allocation> {
    let mut allocations: Vec<Resources> = frameworks.iter().map(|f| f.allocation.clone()).collect();
    let mut heap: BinaryHeap<Entry> = frameworks
        .iter()
        .enumerate()
        .filter(|(_, f)| f.active)
        .map(|(index, f)| Entry {
            share: weighted_share(&f.allocation, total, f.weight),
            index,
            id: f.id.clone(),
        })
        .collect();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (agent_index, agent) in agents.iter().enumerate() {
        if heap.is_empty() {
            break;
        }
        if !offerable(&agent.free) {
            continue;
        }
        // The lowest-share framework that has not filtered this agent.
        let chosen = loop {
            match heap.pop() {
                None => break None,
                Some(e) if frameworks[e.index].filtered.contains(&agent.id) => skipped.push(e),
                Some(e) => break Some(e),
            }
        };
        heap.extend(skipped.drain(..));
        let Some(mut entry) = chosen else { continue };
        let f = entry.index;
        // Sums of valid resources within a cluster's total cannot overflow; if they did,
        // the framework simply keeps its old share for ordering.
        if let Ok(a) = allocations[f].checked_add(&agent.free) {
            allocations[f] = a;
        }
        entry.share = weighted_share(&allocations[f], total, frameworks[f].weight);
        heap.push(entry);
        out.push(Allocation {
            framework: f,
            agent: agent_index,
            resources: agent.free.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(text: &str) -> Resources {
        Resources::parse(text).unwrap()
    }

    fn fw(id: &str, weight: f64) -> FrameworkView {
        FrameworkView {
            id: id.into(),
            weight,
            allocation: Resources::new(),
            active: true,
            filtered: HashSet::new(),
        }
    }

    /// Drive the allocator the way frameworks do in the paper's example: each framework takes
    /// one task per offer if it fits and declines the rest with refuse_seconds 0.
    fn simulate(total: &Resources, frameworks: &mut [FrameworkView], task: &[Resources]) -> Vec<u32> {
        let mut used = Resources::new();
        let mut launched = vec![0u32; frameworks.len()];
        let mut stuck = vec![false; frameworks.len()];
        for _ in 0..1000 {
            let free = total.checked_sub(&used).unwrap();
            let agents = [AgentView {
                id: "agent".into(),
                free: free.clone(),
            }];
            for (f, s) in frameworks.iter_mut().zip(&stuck) {
                f.active = !s;
            }
            let offers = allocate(total, &agents, frameworks);
            let Some(offer) = offers.first() else { break };
            let f = offer.framework;
            if offer.resources.contains(&task[f]) {
                used = used.checked_add(&task[f]).unwrap();
                frameworks[f].allocation = frameworks[f].allocation.checked_add(&task[f]).unwrap();
                launched[f] += 1;
            } else {
                stuck[f] = true; // declines: nothing it can run fits any more
            }
        }
        launched
    }

    #[test]
    fn drf_paper_example() {
        // <9 CPU, 18 GB>; A runs <1 CPU, 4 GB>, B runs <3 CPU, 1 GB>.
        let total = res("cpus:9;mem:18432");
        let task = [res("cpus:1;mem:4096"), res("cpus:3;mem:1024")];
        let mut frameworks = [fw("A", 1.0), fw("B", 1.0)];
        let launched = simulate(&total, &mut frameworks, &task);
        assert_eq!(launched, vec![3, 2], "A gets 3 tasks, B gets 2");
        for f in &frameworks {
            let share = f.allocation.dominant_share(&total);
            assert!((share - 2.0 / 3.0).abs() < 1e-9, "{} ends at {share}", f.id);
        }
    }

    #[test]
    fn weighted_drf_gives_twice_the_share_to_weight_two() {
        let total = res("cpus:90;mem:92160");
        let task = [res("cpus:1;mem:1024"), res("cpus:1;mem:1024")];
        let mut frameworks = [fw("heavy", 2.0), fw("light", 1.0)];
        let launched = simulate(&total, &mut frameworks, &task);
        let heavy = frameworks[0].allocation.dominant_share(&total);
        let light = frameworks[1].allocation.dominant_share(&total);
        assert_eq!(launched.iter().sum::<u32>(), 90, "the cluster is fully used");
        assert!(
            (heavy - 2.0 * light).abs() <= 2.0 / 90.0,
            "heavy {heavy} vs light {light}"
        );
        assert_eq!(launched, vec![60, 30]);
    }

    #[test]
    fn filters_suppression_and_small_leftovers() {
        let total = res("cpus:8;mem:8192");
        let agents = [
            AgentView {
                id: "a1".into(),
                free: res("cpus:4;mem:4096"),
            },
            AgentView {
                id: "a2".into(),
                free: res("cpus:4;mem:4096"),
            },
            AgentView {
                id: "a3".into(),
                free: res("cpus:0.001;mem:1"),
            },
        ];
        let mut a = fw("A", 1.0);
        a.filtered.insert("a1".into());
        let b = FrameworkView {
            active: false,
            ..fw("B", 1.0)
        };
        let offers = allocate(&total, &agents, &[a, b]);
        // a1 is filtered for A and B is suppressed: only a2 is offered, to A; a3's
        // leftovers are too small to offer.
        assert_eq!(offers.len(), 1);
        assert_eq!((offers[0].framework, offers[0].agent), (0, 1));
    }

    #[test]
    fn each_agent_goes_to_the_lowest_share_and_shares_even_out() {
        let total = res("cpus:40;mem:40960");
        let agents: Vec<AgentView> = (0..10)
            .map(|i| AgentView {
                id: format!("a{i}"),
                free: res("cpus:4;mem:4096"),
            })
            .collect();
        let mut rich = fw("rich", 1.0);
        rich.allocation = res("cpus:8;mem:8192");
        let offers = allocate(&total, &agents, &[rich, fw("poor", 1.0)]);
        let to_poor = offers.iter().filter(|o| o.framework == 1).count();
        // poor first catches up with rich's 8 cpus (2 agents), then they alternate.
        assert_eq!(to_poor, 6, "{offers:?}");
        assert_eq!(offers.len(), 10);
    }
}
