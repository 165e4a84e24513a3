//! What changed between two views of the applied state, as watch events
//! (`Operator.Watch`). A view is cheap (the task and agent maps are persistent trees, shared
//! with the state until apply changes them), and the diff skips every subtree the two views
//! still share, so it costs what changed, not what is retained.

use std::collections::BTreeMap;

use corral_proto::v1;
use imbl::ordmap::DiffItem;
use imbl::OrdMap;

use super::{AgentRecord, AgentState, ClusterState, FrameworkRecord, FrameworkState, TaskRecord};

/// The parts of the applied state that watch events describe, at one applied index.
#[derive(Debug, Clone, Default)]
pub struct WatchView {
    /// The applied index the view was taken at.
    pub index: u64,
    agents: OrdMap<String, AgentRecord>,
    frameworks: BTreeMap<String, FrameworkRecord>,
    tasks: OrdMap<(String, String), TaskRecord>,
}

impl ClusterState {
    /// A view for [`changes`], taken at applied index `index` (O(frameworks): the task and
    /// agent maps are shared, not copied).
    pub fn watch_view(&self, index: u64) -> WatchView {
        WatchView {
            index,
            agents: self.agents.clone(),
            frameworks: self.frameworks.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

/// The wire form of an agent state.
pub fn agent_state(s: AgentState) -> v1::AgentState {
    match s {
        AgentState::Active => v1::AgentState::AgentActive,
        AgentState::Unreachable => v1::AgentState::AgentUnreachable,
        AgentState::Draining => v1::AgentState::AgentDraining,
        AgentState::Gone => v1::AgentState::AgentGone,
    }
}

/// The wire form of a framework state.
pub fn framework_state(s: FrameworkState) -> v1::FrameworkState {
    match s {
        FrameworkState::Connected => v1::FrameworkState::FrameworkConnected,
        FrameworkState::Disconnected => v1::FrameworkState::FrameworkDisconnected,
        FrameworkState::TornDown => v1::FrameworkState::FrameworkTornDown,
    }
}

fn task_event(t: &TaskRecord, removed: bool) -> v1::watch_event::Event {
    v1::watch_event::Event::Task(v1::TaskChanged {
        framework_id: t.framework_id.clone(),
        task_id: t.task_id.clone(),
        agent_id: t.agent_id.clone(),
        state: t.status.state,
        exit_code: t.status.exit_code,
        removed,
    })
}

fn agent_event(a: &AgentRecord, removed: bool) -> v1::watch_event::Event {
    v1::watch_event::Event::Agent(v1::AgentChanged {
        agent_id: a.id.clone(),
        hostname: a.hostname.clone(),
        state: agent_state(a.state) as i32,
        removed,
    })
}

fn framework_event(f: &FrameworkRecord, removed: bool) -> v1::watch_event::Event {
    v1::watch_event::Event::Framework(v1::FrameworkChanged {
        framework_id: f.id.clone(),
        name: f.name.clone(),
        role: f.role.clone(),
        state: framework_state(f.state) as i32,
        removed,
    })
}

/// The events that take a watcher from `old` to `new`: agents, then frameworks, then tasks,
/// each in id order. A record counts as changed when its state changes (a task's exit code
/// too), not on every update of its other fields.
pub fn changes(old: &WatchView, new: &WatchView) -> Vec<v1::WatchEvent> {
    let mut events = Vec::new();
    let mut push = |event| {
        events.push(v1::WatchEvent {
            index: new.index,
            event: Some(event),
        })
    };
    for item in old.agents.diff(&new.agents) {
        match item {
            DiffItem::Add(_, a) => push(agent_event(a, false)),
            DiffItem::Update {
                old: (_, was),
                new: (_, a),
            } if was.state != a.state => push(agent_event(a, false)),
            DiffItem::Update { .. } => {}
            DiffItem::Remove(_, a) => push(agent_event(a, true)),
        }
    }
    for (id, f) in &new.frameworks {
        match old.frameworks.get(id) {
            Some(was) if was.state == f.state => {}
            _ => push(framework_event(f, false)),
        }
    }
    for (id, f) in &old.frameworks {
        if !new.frameworks.contains_key(id) {
            push(framework_event(f, true));
        }
    }
    for item in old.tasks.diff(&new.tasks) {
        match item {
            DiffItem::Add(_, t) => push(task_event(t, false)),
            DiffItem::Update {
                old: (_, was),
                new: (_, t),
            } if was.status.state != t.status.state || was.status.exit_code != t.status.exit_code => {
                push(task_event(t, false))
            }
            DiffItem::Update { .. } => {}
            DiffItem::Remove(_, t) => push(task_event(t, true)),
        }
    }
    events
}
