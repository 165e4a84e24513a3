//! Watch events (`Operator.Watch`) as JSON, one object per event with its `kind`
//! (`task`, `agent`, `framework`, `leader`), its fields, states by name, and the `index` it
//! was read at: what `corral watch --json` prints and the master's `/events` stream sends.

use serde_json::{json, Value};

use crate::v1;

/// A task state's name (`TASK_RUNNING`).
pub fn task_state(s: i32) -> &'static str {
    v1::TaskState::try_from(s).map_or("TASK_UNKNOWN", |s| s.as_str_name())
}

/// An agent state's name (`AGENT_ACTIVE`).
pub fn agent_state(s: i32) -> &'static str {
    v1::AgentState::try_from(s).map_or("AGENT_STATE_UNSPECIFIED", |s| s.as_str_name())
}

/// A framework state's name (`FRAMEWORK_CONNECTED`).
pub fn framework_state(s: i32) -> &'static str {
    v1::FrameworkState::try_from(s).map_or("FRAMEWORK_STATE_UNSPECIFIED", |s| s.as_str_name())
}

/// One JSON object per event: `kind` and the event's fields.
pub fn to_json(e: &v1::WatchEvent) -> Value {
    use v1::watch_event::Event;
    let body = match &e.event {
        Some(Event::Task(t)) => json!({
            "kind": "task", "framework_id": t.framework_id, "task_id": t.task_id,
            "agent_id": t.agent_id, "state": task_state(t.state), "exit_code": t.exit_code,
            "removed": t.removed,
        }),
        Some(Event::Agent(a)) => json!({
            "kind": "agent", "agent_id": a.agent_id, "hostname": a.hostname,
            "state": agent_state(a.state), "removed": a.removed,
        }),
        Some(Event::Framework(f)) => json!({
            "kind": "framework", "framework_id": f.framework_id, "name": f.name, "role": f.role,
            "state": framework_state(f.state), "removed": f.removed,
        }),
        Some(Event::Leader(l)) => json!({
            "kind": "leader", "leader_id": l.leader_id, "address": l.address, "term": l.term,
        }),
        None => json!({"kind": "unknown"}),
    };
    let mut body = body;
    body["index"] = json!(e.index);
    body
}
