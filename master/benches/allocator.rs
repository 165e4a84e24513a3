//! One DRF allocation pass: 1,000 frameworks in 10 roles with weights 1–5, agents with
//! mixed free resources, a few decline filters and suppressed frameworks.
//!
//! `cargo bench -p corral-master --bench allocator`

use std::collections::HashSet;

use corral_master::allocator::{allocate, AgentView, FrameworkView};
use corral_proto::resources::{Resources, Value, MILLI};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn resources(cpus: u64, mem: u64) -> Resources {
    let mut r = Resources::new();
    r.insert_new("cpus", Value::Scalar(cpus * MILLI)).unwrap();
    r.insert_new("mem", Value::Scalar(mem * MILLI)).unwrap();
    r
}

fn setup(agents: usize, frameworks: usize) -> (Resources, Vec<AgentView>, Vec<FrameworkView>) {
    let agents: Vec<AgentView> = (0..agents)
        .map(|i| AgentView {
            id: format!("agent-{i:05}"),
            free: resources(1 + (i % 16) as u64, 1024 * (1 + (i % 32) as u64)),
        })
        .collect();
    let total = agents
        .iter()
        .fold(Resources::new(), |t, a| t.checked_add(&a.free).unwrap());
    let frameworks: Vec<FrameworkView> = (0..frameworks)
        .map(|i| {
            let filtered: HashSet<String> = if i % 10 == 0 {
                (0..20)
                    .map(|j| format!("agent-{:05}", (i * 7 + j) % agents.len()))
                    .collect()
            } else {
                HashSet::new()
            };
            FrameworkView {
                id: format!("fw-{i:04}"),
                weight: 1.0 + (i % 10 / 2) as f64,
                allocation: resources((i % 50) as u64, 512 * (i % 40) as u64),
                active: i % 25 != 0,
                filtered,
            }
        })
        .collect();
    (total, agents, frameworks)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocation_pass");
    group.sample_size(20);
    for agents in [1_000usize, 5_000, 10_000] {
        let (total, a, f) = setup(agents, 1_000);
        group.bench_with_input(BenchmarkId::new("agents_x1000_frameworks", agents), &agents, |b, _| {
            b.iter(|| allocate(&total, &a, &f))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
