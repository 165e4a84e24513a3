//! Apply: the one match over commands, and what each command does to the state.
//!
//! Every rule is checked again here, whatever the leader checked (see the module docs of
//! [`crate::state`]).

use std::collections::BTreeMap;

use corral_proto::resources::Resources;
use corral_proto::v1;
use prost::Message;
use sha2::{Digest as _, Sha256};

use super::digest::Key;
use crate::raft::types::Outcome;
use crate::validate;

use super::*;

impl ClusterState {
    /// Apply one command. Deterministic; re-validates everything.
    pub fn apply_command(&mut self, command: &v1::Command) -> Outcome {
        use v1::command::Kind;
        let now = command.timestamp_ms;
        let outcome = match &command.kind {
            Some(Kind::SetWeights(set)) => self.apply_set_weights(set),
            Some(Kind::RegisterAgent(c)) => self.apply_register_agent(&c.agent_id, c.info.as_ref(), now, true),
            Some(Kind::ReregisterAgent(c)) => {
                let was = self.agents.get(&c.agent_id).map(|a| a.state);
                let outcome = self.apply_register_agent(&c.agent_id, c.info.as_ref(), now, false);
                // Only an agent that was marked unreachable has tasks to reconcile.
                if outcome == Outcome::Applied && was == Some(AgentState::Unreachable) {
                    self.reconcile_returning_agent(&c.agent_id, &c.tasks, now);
                }
                outcome
            }
            Some(Kind::MarkAgentUnreachable(c)) => self.apply_unreachable(&c.agent_id, now),
            Some(Kind::RegisterFramework(c)) => self.apply_register_framework(&c.framework_id, c.info.as_ref(), now),
            Some(Kind::UpdateFramework(c)) => self.apply_update_framework(c.info.as_ref()),
            Some(Kind::DisconnectFramework(c)) => {
                self.set_framework_state(&c.framework_id, FrameworkState::Disconnected, now)
            }
            Some(Kind::TeardownFramework(c)) => {
                // Its executors keep their resources until their agents report them ended.
                self.set_framework_state(&c.framework_id, FrameworkState::TornDown, now)
            }
            Some(Kind::LaunchTasks(c)) => self.apply_launch(c, now),
            Some(Kind::UpdateStatuses(c)) => self.apply_statuses(&c.statuses),
            Some(Kind::AcknowledgeStatuses(c)) => self.apply_acks(&c.acks),
            Some(Kind::CollectGarbage(c)) => self.apply_collect_garbage(c, now),
            Some(Kind::ExecutorExited(c)) => self.apply_executor_exited(c, now),
            Some(other) => Outcome::Rejected(format!(
                "command {} is not handled by this master version",
                kind_name(other)
            )),
            // An unknown oneof member: written by a newer master. Refusing it (the same way on
            // every master of this version) keeps the replicas identical.
            None => Outcome::Rejected("unknown command kind (written by a newer master?)".into()),
        };
        match outcome {
            Outcome::Applied => self.applied_commands += 1,
            Outcome::Rejected(_) => self.rejected_commands += 1,
        }
        self.settle_digests();
        outcome
    }

    pub(super) fn apply_register_agent(
        &mut self,
        id: &str,
        info: Option<&v1::AgentInfo>,
        now: i64,
        new: bool,
    ) -> Outcome {
        if let Err(e) = validate::id("agent_id", id) {
            return Outcome::Rejected(e);
        }
        let Some(info) = info else {
            return Outcome::Rejected("info: missing".into());
        };
        let resources = match validate::agent_info("info", info) {
            Ok(r) => r,
            Err(e) => return Outcome::Rejected(e),
        };
        let attributes = info
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect();
        self.mark_agent(id);
        match (self.agents.get_mut(id), new) {
            (Some(_), true) => Outcome::Rejected(format!("agent_id: {id} is already registered")),
            (None, false) => Outcome::Rejected(format!("agent_id: {id} is not known")),
            (Some(a), false) => {
                if !resources.contains(&a.used) {
                    return Outcome::Rejected(format!(
                        "info.resources: {resources} cannot hold the {} its tasks and executors use",
                        a.used
                    ));
                }
                a.hostname = info.hostname.clone();
                a.address = info.address.clone();
                a.resources = resources;
                a.attributes = attributes;
                a.isolation = info.isolation;
                a.capabilities = info.capabilities.clone();
                a.state = AgentState::Active;
                a.updated_at_ms = now;
                Outcome::Applied
            }
            (None, true) => {
                self.agents.insert(
                    id.to_string(),
                    AgentRecord {
                        id: id.to_string(),
                        hostname: info.hostname.clone(),
                        address: info.address.clone(),
                        resources,
                        attributes,
                        isolation: info.isolation,
                        state: AgentState::Active,
                        used: Resources::new(),
                        capabilities: info.capabilities.clone(),
                        executors: BTreeMap::new(),
                        registered_at_ms: now,
                        updated_at_ms: now,
                        digest: 0,
                    },
                );
                Outcome::Applied
            }
        }
    }

    pub(super) fn apply_register_framework(&mut self, id: &str, info: Option<&v1::FrameworkInfo>, now: i64) -> Outcome {
        if let Err(e) = validate::id("framework_id", id) {
            return Outcome::Rejected(e);
        }
        let Some(info) = info else {
            return Outcome::Rejected("info: missing".into());
        };
        if let Err(e) = validate::framework_info("info", info) {
            return Outcome::Rejected(e);
        }
        if self.frameworks.contains_key(id) {
            return Outcome::Rejected(format!("framework_id: {id} is already registered"));
        }
        self.mark_framework(id);
        self.frameworks.insert(
            id.to_string(),
            FrameworkRecord {
                id: id.to_string(),
                name: info.name.clone(),
                role: if info.role.is_empty() {
                    DEFAULT_ROLE.to_string()
                } else {
                    info.role.clone()
                },
                user: info.user.clone(),
                hostname: info.hostname.clone(),
                failover_timeout_ms: (info.failover_timeout_seconds * 1000.0) as u64,
                state: FrameworkState::Connected,
                registered_at_ms: now,
                disconnected_at_ms: None,
                principal: info.principal.clone(),
                digest: 0,
            },
        );
        Outcome::Applied
    }

    pub(super) fn apply_update_framework(&mut self, info: Option<&v1::FrameworkInfo>) -> Outcome {
        let Some(info) = info else {
            return Outcome::Rejected("info: missing".into());
        };
        if let Err(e) = validate::framework_info("info", info) {
            return Outcome::Rejected(e);
        }
        self.mark_framework(&info.framework_id);
        match self.frameworks.get_mut(&info.framework_id) {
            None => Outcome::Rejected(format!("info.framework_id: {} is not known", info.framework_id)),
            Some(f) if f.state == FrameworkState::TornDown => {
                Outcome::Rejected(format!("info.framework_id: {} was torn down", info.framework_id))
            }
            Some(f) => {
                f.name = info.name.clone();
                f.failover_timeout_ms = (info.failover_timeout_seconds * 1000.0) as u64;
                f.state = FrameworkState::Connected;
                f.disconnected_at_ms = None;
                Outcome::Applied
            }
        }
    }

    pub(super) fn set_framework_state(&mut self, id: &str, state: FrameworkState, now: i64) -> Outcome {
        self.mark_framework(id);
        match self.frameworks.get_mut(id) {
            None => Outcome::Rejected(format!("framework_id: {id} is not known")),
            Some(f) if f.state == FrameworkState::TornDown => {
                Outcome::Rejected(format!("framework_id: {id} was torn down"))
            }
            Some(f) => {
                f.state = state;
                f.disconnected_at_ms = (state != FrameworkState::Connected).then_some(now);
                Outcome::Applied
            }
        }
    }

    pub(super) fn apply_launch(&mut self, c: &v1::LaunchTasks, now: i64) -> Outcome {
        match self.frameworks.get(&c.framework_id) {
            None => return Outcome::Rejected(format!("framework_id: {} is not known", c.framework_id)),
            Some(f) if f.state == FrameworkState::TornDown => {
                return Outcome::Rejected(format!("framework_id: {} was torn down", c.framework_id))
            }
            Some(_) => {}
        }
        let (each, total) = match validate::launch("tasks", &c.agent_id, &c.tasks) {
            Ok(v) => v,
            Err(e) => return Outcome::Rejected(e),
        };
        let executors = match validate::launch_executors("tasks", &c.tasks) {
            Ok(e) => e,
            Err(e) => return Outcome::Rejected(e),
        };
        for (i, t) in c.tasks.iter().enumerate() {
            if self.tasks.contains_key(&(c.framework_id.clone(), t.task_id.clone())) {
                return Outcome::Rejected(format!("tasks[{i}].task_id: {:?} was already launched (S2)", t.task_id));
            }
        }
        self.mark_agent(&c.agent_id);
        for t in &c.tasks {
            self.mark_task(&c.framework_id, &t.task_id);
        }
        let Some(agent) = self.agents.get_mut(&c.agent_id) else {
            return Outcome::Rejected(format!("agent_id: {} is not known", c.agent_id));
        };
        if agent.state != AgentState::Active {
            return Outcome::Rejected(format!("agent_id: {} is not active", c.agent_id));
        }
        // The executors this launch starts: those not already running on the agent. One
        // that runs must be the one the tasks describe.
        let mut started = Vec::new();
        let mut total = total;
        for (eid, (info, resources)) in executors {
            let i = c
                .tasks
                .iter()
                .position(|t| t.executor.as_ref().is_some_and(|e| e.executor_id == eid))
                .unwrap_or_default();
            if !agent.can(CAPABILITY_EXECUTORS) {
                return Outcome::Rejected(format!(
                    "tasks[{i}].executor: agent {} does not run executors (it runs command tasks only)",
                    c.agent_id
                ));
            }
            let encoded = info.encode_to_vec();
            match agent.executors.get(&(c.framework_id.clone(), eid.clone())) {
                Some(running) if running.info != encoded => {
                    return Outcome::Rejected(format!(
                        "tasks[{i}].executor: executor {} runs on agent {} with a different ExecutorInfo",
                        corral_proto::quote(&eid),
                        c.agent_id
                    ));
                }
                Some(_) => {}
                None => {
                    total = match total.checked_add(&resources) {
                        Ok(t) => t,
                        Err(e) => return Outcome::Rejected(format!("tasks[{i}].executor.resources: {e}")),
                    };
                    started.push(ExecutorRecord {
                        framework_id: c.framework_id.clone(),
                        executor_id: eid,
                        info: encoded,
                        resources,
                        launched_at_ms: now,
                    });
                }
            }
        }
        // S1, re-checked here whatever the leader checked: the agent must hold it all,
        // tasks and the executors they start.
        let used = match agent.used.checked_add(&total) {
            Ok(u) if agent.resources.contains(&u) => u,
            _ => {
                return Outcome::Rejected(format!(
                    "launch would over-commit agent {}: {} used + {} asked > {} (S1)",
                    c.agent_id, agent.used, total, agent.resources
                ))
            }
        };
        agent.used = used;
        for e in started {
            agent
                .executors
                .insert((e.framework_id.clone(), e.executor_id.clone()), e);
        }
        let fw_used = self.framework_used.entry(c.framework_id.clone()).or_default();
        *fw_used = fw_used.checked_add(&total).unwrap_or_else(|_| fw_used.clone());
        let index = self.agent_tasks.entry(c.agent_id.clone()).or_default();
        for (t, resources) in c.tasks.iter().zip(each) {
            let key = (c.framework_id.clone(), t.task_id.clone());
            index.insert(key.clone());
            self.staging.insert(key.clone());
            let status = StatusRecord {
                state: v1::TaskState::TaskStaging as i32,
                message: String::new(),
                reason: 0,
                source: v1::Source::Master as i32,
                exit_code: None,
                uuid: Vec::new(),
                timestamp_ms: now,
            };
            self.tasks.insert(
                key,
                TaskRecord {
                    framework_id: c.framework_id.clone(),
                    task_id: t.task_id.clone(),
                    name: t.name.clone(),
                    agent_id: c.agent_id.clone(),
                    resources,
                    info: t.encode_to_vec(),
                    status,
                    unacked: Vec::new(),
                    launched_at_ms: now,
                    digest: 0,
                },
            );
        }
        Outcome::Applied
    }

    /// Apply task status updates. Each is checked on its own: an update for an unknown task,
    /// from the wrong agent, a duplicate (same uuid) or one after a terminal state is
    /// skipped. Rejected only if no update at all could be applied and one was invalid.
    pub(super) fn apply_statuses(&mut self, statuses: &[v1::TaskStatus]) -> Outcome {
        let mut problems = Vec::new();
        for (i, s) in statuses.iter().enumerate() {
            if let Err(e) = self.apply_status(s) {
                problems.push(format!("statuses[{i}]: {e}"));
            }
        }
        if !problems.is_empty() && problems.len() == statuses.len() {
            return Outcome::Rejected(problems.join("; "));
        }
        Outcome::Applied
    }

    pub(super) fn apply_status(&mut self, s: &v1::TaskStatus) -> Result<(), String> {
        let key = (s.framework_id.clone(), s.task_id.clone());
        self.mark(Key::Task(key.clone()));
        let Some(task) = self.tasks.get_mut(&key) else {
            return Err(format!("task {}/{} is not known", s.framework_id, s.task_id));
        };
        if task.agent_id != s.agent_id {
            return Err(format!(
                "task {} runs on agent {}, not {}",
                s.task_id, task.agent_id, s.agent_id
            ));
        }
        let new_state = v1::TaskState::try_from(s.state).map_err(|_| format!("unknown task state {}", s.state))?;
        if new_state == v1::TaskState::Unspecified {
            return Err("state: unspecified".into());
        }
        // Only the master decides that a task is unreachable, gone or unknown (a task an
        // agent could park in UNREACHABLE would never be reconciled).
        if (s.source == v1::Source::Agent as i32 || s.source == v1::Source::Executor as i32)
            && matches!(
                new_state,
                v1::TaskState::TaskUnreachable
                    | v1::TaskState::TaskGone
                    | v1::TaskState::TaskUnknown
                    | v1::TaskState::TaskStaging
            )
        {
            return Err(format!(
                "state: {} is decided by the master, not reported by agents",
                new_state.as_str_name()
            ));
        }
        if !s.uuid.is_empty() && (task.status.uuid == s.uuid || task.unacked.iter().any(|u| u.uuid == s.uuid)) {
            return Ok(()); // a retry of an update already applied
        }
        if task.is_terminal() {
            return Ok(()); // a terminal state is final
        }
        let record = StatusRecord {
            state: s.state,
            message: s.message.chars().take(validate::MAX_TEXT_LEN).collect(),
            reason: s.reason,
            source: s.source,
            exit_code: s.exit_code,
            uuid: s.uuid.clone(),
            timestamp_ms: s.timestamp_ms,
        };
        let becomes_terminal = new_state.is_terminal();
        task.status = record.clone();
        let mut unindex = None;
        let mut index = None;
        if !record.uuid.is_empty() {
            if task.unacked.len() >= MAX_UNACKED_PER_TASK {
                let old = task.unacked.remove(0);
                unindex = Some((old.timestamp_ms, s.task_id.clone(), old.uuid));
            }
            index = Some((record.timestamp_ms, s.task_id.clone(), record.uuid.clone()));
            task.unacked.push(record);
        }
        let resources = task.resources.clone();
        let agent_id = task.agent_id.clone();
        if let Some(old) = unindex {
            self.unindex_unacked(&s.framework_id, &old);
        }
        if let Some(new) = index {
            self.index_unacked(&s.framework_id, new);
        }
        if becomes_terminal {
            self.completed
                .entry(s.framework_id.clone())
                .or_default()
                .insert((s.timestamp_ms, s.task_id.clone()));
            self.mark_agent(&agent_id);
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                // Cannot fail while S1's bookkeeping holds (validate() checks it).
                agent.used = agent.used.checked_sub(&resources).unwrap_or_default();
            }
            if let Some(u) = self.framework_used.get_mut(&s.framework_id) {
                *u = u.checked_sub(&resources).unwrap_or_default();
            }
        }
        // Agents never report STAGING, and the master's own updates are not STAGING either.
        self.staging.remove(&key);
        Ok(())
    }

    /// A status the master produces itself. Its uuid is derived from what the command holds,
    /// so every replica makes the same one (apply draws no random numbers).
    pub(super) fn master_status(
        task: &TaskRecord,
        state: v1::TaskState,
        reason: v1::Reason,
        message: &str,
        exit_code: Option<i32>,
        now: i64,
    ) -> v1::TaskStatus {
        let digest = Sha256::digest(format!("{}/{}/{}/{now}", task.framework_id, task.task_id, state as i32));
        v1::TaskStatus {
            task_id: task.task_id.clone(),
            state: state as i32,
            message: message.to_string(),
            agent_id: task.agent_id.clone(),
            framework_id: task.framework_id.clone(),
            uuid: digest[..16].to_vec(),
            exit_code,
            reason: reason as i32,
            source: v1::Source::Master as i32,
            timestamp_ms: now,
        }
    }

    /// The agent has been silent too long: it is unreachable and so are its tasks.
    pub(super) fn apply_unreachable(&mut self, agent_id: &str, now: i64) -> Outcome {
        self.mark_agent(agent_id);
        match self.agents.get_mut(agent_id) {
            None => return Outcome::Rejected(format!("agent_id: {agent_id} is not known")),
            Some(a) if a.state != AgentState::Active => {
                return Outcome::Rejected(format!("agent_id: {agent_id} is not active"))
            }
            Some(a) => a.state = AgentState::Unreachable,
        }
        self.end_tasks_of(
            agent_id,
            v1::TaskState::TaskUnreachable,
            v1::Reason::AgentUnreachable,
            "the agent is unreachable",
            now,
        );
        Outcome::Applied
    }

    /// Give every unfinished task of `agent_id` the master-made status `state`.
    pub(super) fn end_tasks_of(
        &mut self,
        agent_id: &str,
        state: v1::TaskState,
        reason: v1::Reason,
        message: &str,
        now: i64,
    ) {
        let statuses: Vec<v1::TaskStatus> = self
            .tasks_on(agent_id)
            .filter(|t| !t.is_terminal())
            .map(|t| Self::master_status(t, state, reason, message, None, now))
            .collect();
        for s in &statuses {
            let _ = self.apply_status(s);
        }
    }

    /// An agent came back: its UNREACHABLE tasks take the state it reports, or are LOST.
    pub(super) fn reconcile_returning_agent(&mut self, agent_id: &str, inventory: &[v1::TaskRecord], now: i64) {
        let reported: BTreeMap<(String, String), &v1::TaskRecord> = inventory
            .iter()
            .filter_map(|r| {
                r.task
                    .as_ref()
                    .map(|t| ((r.framework_id.clone(), t.task_id.clone()), r))
            })
            .collect();
        let statuses: Vec<v1::TaskStatus> = self
            .tasks_on(agent_id)
            .filter(|t| t.state() == v1::TaskState::TaskUnreachable)
            .map(|t| match reported.get(&(t.framework_id.clone(), t.task_id.clone())) {
                Some(r) => {
                    let state = v1::TaskState::try_from(r.state).unwrap_or(v1::TaskState::TaskRunning);
                    let state = if state == v1::TaskState::TaskStaging {
                        v1::TaskState::TaskRunning
                    } else {
                        state
                    };
                    Self::master_status(
                        t,
                        state,
                        v1::Reason::Reconciliation,
                        "the agent is back",
                        r.exit_code,
                        now,
                    )
                }
                None => Self::master_status(
                    t,
                    v1::TaskState::TaskLost,
                    v1::Reason::Reconciliation,
                    "the agent came back without this task",
                    None,
                    now,
                ),
            })
            .collect();
        for s in &statuses {
            let _ = self.apply_status(s);
        }
    }

    pub(super) fn apply_acks(&mut self, acks: &[v1::StatusAck]) -> Outcome {
        for a in acks {
            self.mark_task(&a.framework_id, &a.task_id);
            let mut acked = None;
            if let Some(t) = self.tasks.get_mut(&(a.framework_id.clone(), a.task_id.clone())) {
                if let Some(i) = t.unacked.iter().position(|u| u.uuid == a.uuid) {
                    let u = t.unacked.remove(i);
                    acked = Some((u.timestamp_ms, a.task_id.clone(), u.uuid));
                }
            }
            if let Some(key) = acked {
                self.unindex_unacked(&a.framework_id, &key);
            }
        }
        Outcome::Applied
    }

    /// An executor ended: what it held on its agent is free, and its unfinished tasks fail
    /// (REASON_EXECUTOR_TERMINATED; the agent may have reported them already).
    pub(super) fn apply_executor_exited(&mut self, c: &v1::ExecutorExited, now: i64) -> Outcome {
        for (f, v) in [
            ("framework_id", &c.framework_id),
            ("agent_id", &c.agent_id),
            ("executor_id", &c.executor_id),
        ] {
            if let Err(e) = validate::id(f, v) {
                return Outcome::Rejected(e);
            }
        }
        let key = (c.framework_id.clone(), c.executor_id.clone());
        if !self
            .agents
            .get(&c.agent_id)
            .is_some_and(|a| a.executors.contains_key(&key))
        {
            return Outcome::Rejected(format!(
                "executor_id: {} of framework {} does not run on agent {}",
                corral_proto::quote(&c.executor_id),
                c.framework_id,
                c.agent_id
            ));
        }
        let message: String = c.message.chars().take(validate::MAX_TEXT_LEN).collect();
        let message = if message.is_empty() {
            "the executor terminated".to_string()
        } else {
            format!("the executor terminated: {message}")
        };
        let statuses: Vec<v1::TaskStatus> = self
            .tasks_on(&c.agent_id)
            .filter(|t| t.framework_id == c.framework_id && !t.is_terminal())
            .filter(|t| {
                t.task_info()
                    .and_then(|i| i.executor)
                    .is_some_and(|e| e.executor_id == c.executor_id)
            })
            .map(|t| {
                Self::master_status(
                    t,
                    v1::TaskState::TaskFailed,
                    v1::Reason::ExecutorTerminated,
                    &message,
                    None,
                    now,
                )
            })
            .collect();
        for s in &statuses {
            let _ = self.apply_status(s);
        }
        self.remove_executor(&c.agent_id, &key);
        Outcome::Applied
    }

    /// Forget one executor of an agent and free what it held.
    pub(super) fn remove_executor(&mut self, agent_id: &str, key: &(String, String)) {
        self.mark_agent(agent_id);
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        let Some(e) = agent.executors.remove(key) else { return };
        // Cannot fail while S1's bookkeeping holds (validate() checks it).
        agent.used = agent.used.checked_sub(&e.resources).unwrap_or_default();
        if let Some(u) = self.framework_used.get_mut(&key.0) {
            *u = u.checked_sub(&e.resources).unwrap_or_default();
        }
    }

    /// Forget every executor of `agent_id` (the agent is gone).
    pub(super) fn remove_executors_of_agent(&mut self, agent_id: &str) {
        let keys: Vec<(String, String)> = self
            .agents
            .get(agent_id)
            .map(|a| a.executors.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            self.remove_executor(agent_id, &key);
        }
    }

    pub(super) fn apply_set_weights(&mut self, set: &v1::SetWeights) -> Outcome {
        let mut checked = Vec::with_capacity(set.weights.len());
        for (i, w) in set.weights.iter().enumerate() {
            let weight = w.weight_milli as f64 / 1000.0;
            match validate_weight(&format!("weights[{i}]"), &w.role, weight) {
                Ok(_) => checked.push((w.role.clone(), w.weight_milli)),
                Err(e) => return Outcome::Rejected(e),
            }
        }
        self.weights.extend(checked);
        Outcome::Applied
    }
}

/// Why a weight is not acceptable; the message names the field.
pub fn validate_weight(field: &str, role: &str, weight: f64) -> Result<u64, String> {
    if role.is_empty() || role.len() > MAX_ROLE_LEN || role.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{field}.role: {} is not a valid role name (1 to {MAX_ROLE_LEN} printable characters, no spaces)",
            corral_proto::quote(role)
        ));
    }
    if !weight.is_finite() || weight <= 0.0 {
        return Err(format!(
            "{field}.weight: must be a finite number greater than 0, got {weight}"
        ));
    }
    if weight > MAX_WEIGHT {
        return Err(format!("{field}.weight: {weight} is over the maximum of {MAX_WEIGHT}"));
    }
    let milli = (weight * 1000.0).round() as u64;
    if milli == 0 {
        return Err(format!("{field}.weight: {weight} rounds to 0 at 0.001 precision"));
    }
    Ok(milli)
}
