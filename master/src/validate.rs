//! Validation of what clients send, shared by the gRPC handlers (which answer
//! INVALID_ARGUMENT with these messages) and by apply (which re-checks them, so a stale or
//! buggy leader cannot commit what a correct one would refuse). Messages name the field
//! and quote at most a short prefix of an offending value ([`corral_proto::quote`]).
//!
//! Every field, map and list a client can fill has a named limit here, and each message
//! that becomes part of a replicated command is bounded as a whole, so that no accepted
//! request can make a command over [`crate::raft::write::MAX_COMMAND_BYTES`] (checked again,
//! as a last line, before anything is proposed: `Shared::submit`).
//!
//! Two tiers. The rules apply re-checks ([`framework_info`], [`agent_info`], [`launch`],
//! [`id`], [`role`]) are part of the replicated state machine: a newer master replays an
//! older master's log with them, so they may never become stricter, or replicas of two
//! versions would disagree about old entries. Rules added since (printable text, labels,
//! list counts, encoded sizes) are the leader's alone, in the `*_request` functions that
//! the services call: they keep new bad input out of the log without judging old entries.

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::convert::resources_from_wire;
use corral_proto::quote;
use corral_proto::resources::Resources;
use corral_proto::v1;
use prost::Message;

/// Longest id (task, framework, agent, offer) accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text field (names, hostnames, users, addresses, messages) accepted.
pub const MAX_TEXT_LEN: usize = 1024;
/// Longest agent version string.
pub const MAX_VERSION_LEN: usize = 128;
/// Most tasks in one accept.
pub const MAX_TASKS_PER_ACCEPT: usize = 1024;
/// Most operations in one accept.
pub const MAX_OPERATIONS_PER_ACCEPT: usize = 64;
/// Most offer ids in one accept or decline.
pub const MAX_OFFERS_PER_CALL: usize = 1024;
/// Most status updates acknowledged in one Acknowledge call.
pub const MAX_ACKS_PER_CALL: usize = 1024;
/// Most tasks named in one explicit reconciliation (each answer is up to a few KiB).
pub const MAX_RECONCILE_TASKS: usize = 1024;
/// Most argv entries of a command, and most environment variables.
pub const MAX_ARGV: usize = 1024;
/// Longest total of a command's argv and environment, in bytes.
pub const MAX_ARGV_ENV_BYTES: usize = 64 * 1024;
pub use corral_proto::MAX_FRAMEWORK_MESSAGE_BYTES;
/// Most capabilities an agent may advertise.
pub const MAX_CAPABILITIES: usize = 32;
/// Longest capability name.
pub const MAX_CAPABILITY_LEN: usize = 64;
/// Largest `data` of a task or an executor (opaque bytes handed to the executor).
pub const MAX_TASK_DATA_BYTES: usize = 64 * 1024;
/// Most labels of a task or a framework.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 256;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 4096;
/// Longest total of one map of labels (keys and values), in bytes.
pub const MAX_LABELS_BYTES: usize = 16 * 1024;
/// Most attributes of an agent.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most tasks an agent may report in its inventory when it registers.
pub const MAX_INVENTORY_TASKS: usize = 8192;
/// Largest encoded `AgentInfo` (resources with many ranges, attributes).
pub const MAX_AGENT_INFO_BYTES: usize = 128 * 1024;
/// Largest encoded `FrameworkInfo`.
pub const MAX_FRAMEWORK_INFO_BYTES: usize = 64 * 1024;
/// Largest encoded task inventory an agent's re-registration writes to the log.
pub const MAX_INVENTORY_BYTES: usize = 512 * 1024;
/// Largest encoded total of the tasks of one launch.
pub const MAX_LAUNCH_BYTES: usize = 512 * 1024;
/// Longest status update uuid.
pub const MAX_UUID_LEN: usize = 64;
/// Longest framework failover timeout accepted (one week).
pub const MAX_FAILOVER_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// Longest decline filter accepted (one year, as a bound, not a meaningful value).
pub const MAX_REFUSE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

// Each bounded message leaves room in a command for the ids around it.
const _: () = assert!(MAX_AGENT_INFO_BYTES + MAX_INVENTORY_BYTES + 4096 <= crate::raft::write::MAX_COMMAND_BYTES);
const _: () = assert!(MAX_LAUNCH_BYTES + 4096 <= crate::raft::write::MAX_COMMAND_BYTES);
const _: () = assert!(MAX_FRAMEWORK_INFO_BYTES + 4096 <= crate::raft::write::MAX_COMMAND_BYTES);

/// A task, framework, agent or offer id: 1..=128 printable characters without `/` or
/// whitespace (ids become directory names in agent sandboxes).
pub fn id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{field}: {} is longer than {MAX_ID_LEN} bytes", quote(value)));
    }
    if value == "." || value == ".." || value.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{field}: {} may not contain '/', whitespace or control characters",
            quote(value)
        ));
    }
    Ok(())
}

/// A role name (also weights' role).
pub fn role(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > crate::state::MAX_ROLE_LEN
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{field}: {} is not a valid role name (1 to {} printable characters, no spaces)",
            quote(value),
            crate::state::MAX_ROLE_LEN
        ));
    }
    Ok(())
}

/// Free text of at most `max` bytes. With `printable`, no control characters either (the
/// text is logged, or shown in a terminal: names, hostnames, users).
fn text_of(field: &str, value: &str, max: usize, printable: bool) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{field}: {} is longer than {max} bytes", quote(value)));
    }
    if printable && value.chars().any(char::is_control) {
        return Err(format!("{field}: {} contains control characters", quote(value)));
    }
    Ok(())
}

/// Free text of at most [`MAX_TEXT_LEN`] bytes (the rule apply re-checks).
fn text(field: &str, value: &str) -> Result<(), String> {
    text_of(field, value, MAX_TEXT_LEN, false)
}

/// A name, hostname or user in a new request: printable, at most [`MAX_TEXT_LEN`] bytes.
fn printable(field: &str, value: &str) -> Result<(), String> {
    text_of(field, value, MAX_TEXT_LEN, true)
}

/// A list of at most `max` entries.
fn count(field: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{field}: {len} entries, at most {max}"));
    }
    Ok(())
}

/// An encoded message of at most `max` bytes.
fn encoded(field: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{field}: encodes to {len} bytes, over the limit of {max}"));
    }
    Ok(())
}

/// Labels: at most [`MAX_LABELS`], printable keys, bounded keys, values and total.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    count(field, labels.len(), MAX_LABELS)?;
    let mut bytes = 0;
    for (k, v) in labels {
        if k.is_empty() {
            return Err(format!("{field}: a label key is empty"));
        }
        // The key names the entry in errors about it; for the key itself, the map does.
        text_of(&format!("{field} key"), k, MAX_LABEL_KEY_LEN, true)?;
        text_of(&format!("{field}[{}]", quote(k)), v, MAX_LABEL_VALUE_LEN, false)?;
        bytes += k.len() + v.len();
    }
    if bytes > MAX_LABELS_BYTES {
        return Err(format!(
            "{field}: {bytes} bytes of keys and values, at most {MAX_LABELS_BYTES}"
        ));
    }
    Ok(())
}

/// A framework's self-description at subscription.
pub fn framework_info(field: &str, info: &v1::FrameworkInfo) -> Result<(), String> {
    if info.name.trim().is_empty() {
        return Err(format!("{field}.name: must not be empty"));
    }
    text(&format!("{field}.name"), &info.name)?;
    text(&format!("{field}.user"), &info.user)?;
    text(&format!("{field}.hostname"), &info.hostname)?;
    text(&format!("{field}.principal"), &info.principal)?;
    if !info.role.is_empty() {
        role(&format!("{field}.role"), &info.role)?;
    }
    if !info.framework_id.is_empty() {
        id(&format!("{field}.framework_id"), &info.framework_id)?;
    }
    let t = info.failover_timeout_seconds;
    if !t.is_finite() || !(0.0..=MAX_FAILOVER_TIMEOUT_SECS).contains(&t) {
        return Err(format!(
            "{field}.failover_timeout_seconds: must be between 0 and {MAX_FAILOVER_TIMEOUT_SECS}, got {t}"
        ));
    }
    Ok(())
}

/// A framework's self-description in a Subscribe: [`framework_info`], and the leader's
/// rules for new requests.
pub fn framework_request(field: &str, info: &v1::FrameworkInfo) -> Result<(), String> {
    framework_info(field, info)?;
    printable(&format!("{field}.name"), &info.name)?;
    printable(&format!("{field}.user"), &info.user)?;
    printable(&format!("{field}.hostname"), &info.hostname)?;
    labels(&format!("{field}.labels"), &info.labels)?;
    encoded(field, info.encoded_len(), MAX_FRAMEWORK_INFO_BYTES)
}

/// An agent's description at registration; returns its resources.
pub fn agent_info(field: &str, info: &v1::AgentInfo) -> Result<Resources, String> {
    if info.hostname.is_empty() {
        return Err(format!("{field}.hostname: must not be empty"));
    }
    text(&format!("{field}.hostname"), &info.hostname)?;
    text(&format!("{field}.address"), &info.address)?;
    let resources = resources_from_wire(&format!("{field}.resources"), &info.resources).map_err(|e| e.to_string())?;
    if resources.is_empty() {
        return Err(format!("{field}.resources: an agent must offer some resources"));
    }
    for (i, a) in info.attributes.iter().enumerate() {
        if a.name.is_empty() {
            return Err(format!("{field}.attributes[{i}].name: must not be empty"));
        }
        text(&format!("{field}.attributes[{i}]"), &a.value)?;
    }
    count(
        &format!("{field}.capabilities"),
        info.capabilities.len(),
        MAX_CAPABILITIES,
    )?;
    for (i, c) in info.capabilities.iter().enumerate() {
        text_of(&format!("{field}.capabilities[{i}]"), c, MAX_CAPABILITY_LEN, true)?;
    }
    Ok(resources)
}

/// An agent's description in a Register: [`agent_info`], and the leader's rules for new
/// requests; returns its resources.
pub fn agent_request(field: &str, info: &v1::AgentInfo) -> Result<Resources, String> {
    count(&format!("{field}.attributes"), info.attributes.len(), MAX_ATTRIBUTES)?;
    let resources = agent_info(field, info)?;
    printable(&format!("{field}.hostname"), &info.hostname)?;
    printable(&format!("{field}.address"), &info.address)?;
    text_of(&format!("{field}.version"), &info.version, MAX_VERSION_LEN, true)?;
    for (i, a) in info.attributes.iter().enumerate() {
        text_of(
            &format!("{field}.attributes[{i}].name"),
            &a.name,
            MAX_LABEL_KEY_LEN,
            true,
        )?;
        printable(&format!("{field}.attributes[{i}].value"), &a.value)?;
    }
    encoded(field, info.encoded_len(), MAX_AGENT_INFO_BYTES)?;
    Ok(resources)
}

/// An agent's task inventory at registration, as reported (`field`: its path).
pub fn inventory(field: &str, tasks: &[v1::TaskRecord]) -> Result<(), String> {
    count(field, tasks.len(), MAX_INVENTORY_TASKS)?;
    for (i, t) in tasks.iter().enumerate() {
        id(&format!("{field}[{i}].framework_id"), &t.framework_id)?;
        let task = t.task.as_ref().ok_or_else(|| format!("{field}[{i}].task: missing"))?;
        id(&format!("{field}[{i}].task.task_id"), &task.task_id)?;
    }
    Ok(())
}

/// The inventory as it goes into a re-registration command (see `inventory_for_log`).
pub fn logged_inventory(field: &str, tasks: &[v1::TaskRecord]) -> Result<(), String> {
    let bytes: usize = tasks.iter().map(|t| t.encoded_len() + 4).sum();
    encoded(field, bytes, MAX_INVENTORY_BYTES)
}

/// A status update from an agent, before it is committed. The message is cut to
/// [`MAX_TEXT_LEN`] (an agent's diagnostics, not the client's data); ids and the uuid must
/// be valid.
pub fn agent_status(field: &str, status: &mut v1::TaskStatus) -> Result<(), String> {
    id(&format!("{field}.task_id"), &status.task_id)?;
    id(&format!("{field}.framework_id"), &status.framework_id)?;
    if status.uuid.len() > MAX_UUID_LEN {
        return Err(format!("{field}.uuid: longer than {MAX_UUID_LEN} bytes"));
    }
    if status.message.len() > MAX_TEXT_LEN {
        let cut = (0..=MAX_TEXT_LEN)
            .rev()
            .find(|&i| status.message.is_char_boundary(i))
            .unwrap_or(0);
        status.message.truncate(cut);
    }
    Ok(())
}

/// The offer ids of an accept or decline: bounded, each a valid id, none twice.
pub fn offer_ids(field: &str, ids: &[String]) -> Result<(), String> {
    count(field, ids.len(), MAX_OFFERS_PER_CALL)?;
    let mut seen = BTreeSet::new();
    for (i, o) in ids.iter().enumerate() {
        id(&format!("{field}[{i}]"), o)?;
        if !seen.insert(o.as_str()) {
            return Err(format!("{field}[{i}]: {} appears twice", quote(o)));
        }
    }
    Ok(())
}

/// The tasks of an explicit reconciliation.
pub fn reconcile_tasks(field: &str, tasks: &[v1::ReconcileTask]) -> Result<(), String> {
    count(field, tasks.len(), MAX_RECONCILE_TASKS)?;
    for (i, t) in tasks.iter().enumerate() {
        id(&format!("{field}[{i}].task_id"), &t.task_id)?;
        if !t.agent_id.is_empty() {
            id(&format!("{field}[{i}].agent_id"), &t.agent_id)?;
        }
    }
    Ok(())
}

/// The tasks of one LAUNCH in an Accept: [`launch`], and the leader's rules for new
/// requests (printable names, bounded labels, the whole launch within
/// [`MAX_LAUNCH_BYTES`]). Returns each task's resources and their sum.
pub fn launch_request(
    field: &str,
    agent_id: &str,
    tasks: &[v1::TaskInfo],
) -> Result<(Vec<Resources>, Resources), String> {
    let checked = launch(field, agent_id, tasks)?;
    let mut bytes = 0;
    for (i, t) in tasks.iter().enumerate() {
        let f = format!("{field}[{i}]");
        printable(&format!("{f}.name"), &t.name)?;
        labels(&format!("{f}.labels"), &t.labels)?;
        if let Some(k) = t
            .command
            .iter()
            .flat_map(|c| c.environment.keys())
            .find(|k| k.chars().any(char::is_control))
        {
            return Err(format!("{f}.command.environment: invalid variable name {}", quote(k)));
        }
        bytes += t.encoded_len();
    }
    encoded(field, bytes, MAX_LAUNCH_BYTES)?;
    Ok(checked)
}

/// The tasks of one LAUNCH, for one agent: ids unique within the launch and valid, resources
/// valid and non-empty, a command to run. Returns each task's resources and their sum.
pub fn launch(field: &str, agent_id: &str, tasks: &[v1::TaskInfo]) -> Result<(Vec<Resources>, Resources), String> {
    if tasks.is_empty() {
        return Err(format!("{field}: no tasks to launch"));
    }
    if tasks.len() > MAX_TASKS_PER_ACCEPT {
        return Err(format!(
            "{field}: {} tasks, at most {MAX_TASKS_PER_ACCEPT}",
            tasks.len()
        ));
    }
    let mut seen = BTreeSet::new();
    let mut each = Vec::with_capacity(tasks.len());
    let mut total = Resources::new();
    for (i, t) in tasks.iter().enumerate() {
        let f = format!("{field}[{i}]");
        id(&format!("{f}.task_id"), &t.task_id)?;
        if !seen.insert(t.task_id.as_str()) {
            return Err(format!(
                "{f}.task_id: {} appears twice in this launch",
                quote(&t.task_id)
            ));
        }
        text(&format!("{f}.name"), &t.name)?;
        if t.agent_id != agent_id {
            return Err(format!(
                "{f}.agent_id: {} is not the agent of the offers ({})",
                quote(&t.agent_id),
                quote(agent_id)
            ));
        }
        let r = resources_from_wire(&format!("{f}.resources"), &t.resources).map_err(|e| e.to_string())?;
        if r.scalar_milli("cpus") == 0 && r.scalar_milli("mem") == 0 {
            return Err(format!("{f}.resources: a task needs some cpus or mem"));
        }
        match (&t.command, &t.executor) {
            (Some(cmd), None) => command(&format!("{f}.command"), cmd)?,
            (None, Some(e)) => executor(&format!("{f}.executor"), e).map(drop)?,
            (None, None) => return Err(format!("{f}.command: missing (a task has a command or an executor)")),
            (Some(_), Some(_)) => {
                return Err(format!("{f}.executor: a task has a command or an executor, not both"));
            }
        }
        bytes_of(&format!("{f}.data"), t.data.len(), MAX_TASK_DATA_BYTES)?;
        total = total.checked_add(&r).map_err(|e| format!("{f}.resources: {e}"))?;
        each.push(r);
    }
    Ok((each, total))
}

/// An executor as a task names it: an id, a command to start, valid resources. Returns
/// its resources (which may be empty: an executor may run on its tasks' resources alone).
pub fn executor(f: &str, e: &v1::ExecutorInfo) -> Result<Resources, String> {
    id(&format!("{f}.executor_id"), &e.executor_id)?;
    text(&format!("{f}.name"), &e.name)?;
    let cmd = e.command.as_ref().ok_or_else(|| format!("{f}.command: missing"))?;
    command(&format!("{f}.command"), cmd)?;
    bytes_of(&format!("{f}.data"), e.data.len(), MAX_TASK_DATA_BYTES)?;
    resources_from_wire(&format!("{f}.resources"), &e.resources).map_err(|e| e.to_string())
}

/// The executors the tasks of one launch name, by executor id, each with its ExecutorInfo
/// and resources. Tasks naming the same executor must carry the same ExecutorInfo.
pub fn launch_executors(
    field: &str,
    tasks: &[v1::TaskInfo],
) -> Result<BTreeMap<String, (v1::ExecutorInfo, Resources)>, String> {
    let mut out: BTreeMap<String, (v1::ExecutorInfo, Resources)> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let Some(e) = &t.executor else { continue };
        let f = format!("{field}[{i}].executor");
        match out.get(&e.executor_id) {
            Some((seen, _)) if seen != e => {
                return Err(format!(
                    "{f}: executor {} is described differently by another task of this launch",
                    quote(&e.executor_id)
                ));
            }
            Some(_) => {}
            None => {
                let r = executor(&f, e)?;
                out.insert(e.executor_id.clone(), (e.clone(), r));
            }
        }
    }
    Ok(out)
}

fn bytes_of(f: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{f}: {len} bytes, at most {max}"));
    }
    Ok(())
}

/// What a task runs: argv and environment bounded, no NUL bytes, valid variable names.
fn command(f: &str, cmd: &v1::CommandInfo) -> Result<(), String> {
    if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
        return Err(format!("{f}.argv: nothing to run"));
    }
    if cmd.shell && cmd.argv.len() != 1 {
        return Err(format!("{f}.argv: a shell command is exactly one string"));
    }
    count(&format!("{f}.argv"), cmd.argv.len(), MAX_ARGV)?;
    count(&format!("{f}.environment"), cmd.environment.len(), MAX_ARGV)?;
    let bytes: usize = cmd.argv.iter().map(String::len).sum::<usize>()
        + cmd.environment.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if bytes > MAX_ARGV_ENV_BYTES {
        return Err(format!(
            "{f}: argv and environment are {bytes} bytes, at most {MAX_ARGV_ENV_BYTES}"
        ));
    }
    if let Some(k) = cmd
        .environment
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(format!("{f}.environment: invalid variable name {}", quote(k)));
    }
    if cmd.argv.iter().any(|a| a.contains('\0')) {
        return Err(format!("{f}.argv: NUL byte in an argument"));
    }
    if let Some(k) = cmd.environment.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(format!("{f}.environment[{}]: NUL byte in the value", quote(k)));
    }
    Ok(())
}

/// Decline/accept filters: refuse_seconds (default 5) must be finite, ≥ 0 and bounded.
pub fn refuse_seconds(field: &str, filters: Option<&v1::Filters>) -> Result<f64, String> {
    let v = filters.and_then(|f| f.refuse_seconds).unwrap_or(DEFAULT_REFUSE_SECONDS);
    if !v.is_finite() || !(0.0..=MAX_REFUSE_SECONDS).contains(&v) {
        return Err(format!(
            "{field}.refuse_seconds: must be between 0 and {MAX_REFUSE_SECONDS}, got {v}"
        ));
    }
    Ok(v)
}

/// Mesos' default decline filter.
pub const DEFAULT_REFUSE_SECONDS: f64 = 5.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: id.into(),
            agent_id: "a1".into(),
            resources: vec![v1::Resource {
                name: "cpus".into(),
                value: Some(v1::resource::Value::Scalar(1.0)),
            }],
            command: Some(v1::CommandInfo {
                argv: vec!["true".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn launch_rules_name_the_field() {
        assert!(launch("tasks", "a1", &[task("t1"), task("t2")]).is_ok());
        let cases: Vec<(Vec<v1::TaskInfo>, &str)> = vec![
            (vec![], "tasks: no tasks"),
            (vec![task("")], "tasks[0].task_id: must not be empty"),
            (vec![task("a/b")], "tasks[0].task_id"),
            (vec![task("t"), task("t")], "tasks[1].task_id"),
            (
                vec![v1::TaskInfo {
                    agent_id: "a2".into(),
                    ..task("t")
                }],
                "tasks[0].agent_id",
            ),
            (
                vec![v1::TaskInfo {
                    command: None,
                    ..task("t")
                }],
                "tasks[0].command",
            ),
            (
                vec![v1::TaskInfo {
                    resources: vec![],
                    ..task("t")
                }],
                "tasks[0].resources",
            ),
        ];
        for (tasks, fragment) in cases {
            let e = launch("tasks", "a1", &tasks).unwrap_err();
            assert!(e.starts_with(fragment), "{e} lacks {fragment}");
        }
        let mut nan = task("t");
        nan.resources[0].value = Some(v1::resource::Value::Scalar(f64::NAN));
        assert!(launch("tasks", "a1", &[nan])
            .unwrap_err()
            .contains("tasks[0].resources[0]"));
    }

    /// R2: whatever a client sends, a request that passes validation makes a command within
    /// the entry-safe limit. Sizes are drawn around every limit (under, at, just over, far
    /// over), with ids at their longest.
    mod bounded {
        use super::super::*;
        use crate::raft::write::MAX_COMMAND_BYTES;
        use proptest::prelude::*;

        fn long_id(c: char) -> String {
            std::iter::repeat_n(c, MAX_ID_LEN).collect()
        }

        fn around(limit: usize) -> impl Strategy<Value = usize> {
            prop_oneof![
                0..4usize,
                Just(limit.saturating_sub(1)),
                Just(limit),
                Just(limit + 1),
                0..=limit * 2
            ]
        }

        fn map(n: usize, key_len: usize, value_len: usize) -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("{i:0>width$}", width = key_len.max(4)), "v".repeat(value_len)))
                .collect()
        }

        fn cpus() -> Vec<v1::Resource> {
            vec![v1::Resource {
                name: "cpus".into(),
                value: Some(v1::resource::Value::Scalar(0.1)),
            }]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            #[test]
            fn an_accepted_launch_fits_in_a_command(
                n_tasks in prop_oneof![1..4usize, Just(64usize), Just(MAX_TASKS_PER_ACCEPT), Just(MAX_TASKS_PER_ACCEPT + 1)],
                name_len in around(MAX_TEXT_LEN),
                n_labels in around(MAX_LABELS),
                label_len in around(MAX_LABEL_VALUE_LEN),
                n_env in around(64),
                env_len in around(MAX_ARGV_ENV_BYTES / 16),
                n_argv in around(MAX_ARGV),
                data_len in around(MAX_TASK_DATA_BYTES),
                with_executor in any::<bool>(),
            ) {
                let per_task = name_len + n_labels * (label_len + 8) + n_env * (env_len + 8) + n_argv * 4;
                // Keep the test's own memory sane; far over the limit is still over.
                prop_assume!(per_task.saturating_mul(n_tasks) <= 64 << 20);
                let agent = long_id('a');
                let task = |i: usize| v1::TaskInfo {
                    task_id: format!("{i:0>128}"),
                    name: "n".repeat(name_len),
                    agent_id: agent.clone(),
                    resources: cpus(),
                    command: Some(v1::CommandInfo {
                        argv: vec!["arg".to_string(); n_argv.max(1)],
                        environment: map(n_env, 8, env_len),
                        shell: false,
                    }),
                    labels: map(n_labels, 8, label_len),
                    kill_grace_period_ms: u64::MAX,
                    executor: None,
                    data: vec![7; data_len],
                };
                // As many as the tasks, one executor each, as large as allowed.
                let task = |i: usize| {
                    let mut t = task(i);
                    if with_executor {
                        t.executor = Some(v1::ExecutorInfo {
                            executor_id: format!("{i:0>128}"),
                            name: "e".repeat(name_len),
                            command: t.command.take(),
                            resources: cpus(),
                            data: vec![8; data_len],
                        });
                    }
                    t
                };
                let tasks: Vec<v1::TaskInfo> = (0..n_tasks).map(task).collect();
                if launch_request("tasks", &agent, &tasks).is_ok() {
                    let command = v1::Command {
                        timestamp_ms: i64::MAX,
                        kind: Some(v1::command::Kind::LaunchTasks(v1::LaunchTasks {
                            framework_id: long_id('f'),
                            agent_id: agent.clone(),
                            tasks,
                        })),
                    };
                    prop_assert!(command.encoded_len() <= MAX_COMMAND_BYTES, "{} bytes", command.encoded_len());
                }
            }

            #[test]
            fn an_accepted_subscription_fits_in_a_command(
                name_len in around(MAX_TEXT_LEN),
                n_labels in around(MAX_LABELS),
                key_len in around(MAX_LABEL_KEY_LEN),
                label_len in around(MAX_LABEL_VALUE_LEN),
            ) {
                let info = v1::FrameworkInfo {
                    framework_id: long_id('f'),
                    name: "n".repeat(name_len.max(1)),
                    role: "r".repeat(crate::state::MAX_ROLE_LEN),
                    user: "u".repeat(MAX_TEXT_LEN),
                    hostname: "h".repeat(MAX_TEXT_LEN),
                    failover_timeout_seconds: 1.0,
                    labels: map(n_labels, key_len, label_len),
                    principal: "p".repeat(MAX_TEXT_LEN),
                };
                if framework_request("framework", &info).is_ok() {
                    let command = v1::Command {
                        timestamp_ms: i64::MAX,
                        kind: Some(v1::command::Kind::RegisterFramework(v1::RegisterFramework {
                            framework_id: long_id('f'),
                            info: Some(info),
                        })),
                    };
                    prop_assert!(command.encoded_len() <= MAX_COMMAND_BYTES, "{} bytes", command.encoded_len());
                }
            }

            #[test]
            fn an_accepted_registration_fits_in_a_command(
                n_attributes in around(MAX_ATTRIBUTES),
                value_len in around(MAX_TEXT_LEN),
                version_len in around(MAX_VERSION_LEN),
                n_ranges in around(corral_proto::resources::MAX_RANGES),
                n_tasks in around(MAX_INVENTORY_TASKS),
            ) {
                let ranges = v1::RangeList {
                    range: (0..n_ranges as u64).map(|i| v1::Range { begin: i * 1_000_000_000, end: i * 1_000_000_000 + 1 }).collect(),
                };
                let resources = (0..corral_proto::convert::MAX_RESOURCE_ENTRIES)
                    .map(|i| v1::Resource {
                        name: format!("ports{i}"),
                        value: Some(v1::resource::Value::Ranges(ranges.clone())),
                    })
                    .collect();
                let info = v1::AgentInfo {
                    hostname: "h".repeat(MAX_TEXT_LEN),
                    address: "a".repeat(MAX_TEXT_LEN),
                    resources,
                    attributes: (0..n_attributes)
                        .map(|i| v1::Attribute { name: format!("{i:0>256}"), value: "v".repeat(value_len) })
                        .collect(),
                    version: "1".repeat(version_len),
                    isolation: true,
                    capabilities: (0..MAX_CAPABILITIES).map(|i| format!("{i:0>64}")).collect(),
                };
                let tasks: Vec<v1::TaskRecord> = (0..n_tasks)
                    .map(|i| v1::TaskRecord {
                        framework_id: long_id('f'),
                        task: Some(v1::TaskInfo { task_id: format!("{i:0>128}"), ..Default::default() }),
                        state: v1::TaskState::TaskRunning as i32,
                        exit_code: Some(i32::MIN),
                    })
                    .collect();
                let accepted = agent_request("register.info", &info).is_ok()
                    && inventory("register.tasks", &tasks).is_ok()
                    && logged_inventory("register.tasks", &tasks).is_ok();
                if accepted {
                    let command = v1::Command {
                        timestamp_ms: i64::MAX,
                        kind: Some(v1::command::Kind::ReregisterAgent(v1::ReregisterAgent {
                            agent_id: long_id('a'),
                            info: Some(info),
                            tasks,
                        })),
                    };
                    prop_assert!(command.encoded_len() <= MAX_COMMAND_BYTES, "{} bytes", command.encoded_len());
                }
            }
        }
    }

    #[test]
    fn new_request_rules_quote_and_name_the_field() {
        let mut t = task("t1");
        t.labels.insert("k".into(), "v".repeat(MAX_LABEL_VALUE_LEN + 1));
        let e = launch_request("tasks", "a1", &[t]).unwrap_err();
        assert!(e.starts_with("tasks[0].labels[\"k\"]"), "{e}");
        assert!(e.len() < 200, "the message quotes only a prefix: {e}");
        let mut t = task("t1");
        t.name = "evil\nname\u{1b}[31m".into();
        assert!(launch_request("tasks", "a1", &[t.clone()])
            .unwrap_err()
            .starts_with("tasks[0].name"));
        // Apply's rules are the old ones: a replayed entry with such a name still applies.
        assert!(launch("tasks", "a1", &[t]).is_ok());
        let long = "x".repeat(1 << 20);
        let e = id("task_id", &long).unwrap_err();
        assert!(e.len() < 200, "{}", e.len());
        let e = offer_ids("offer_ids", &["o1".into(), "o1".into()]).unwrap_err();
        assert!(e.starts_with("offer_ids[1]"), "{e}");
        let e = offer_ids("offer_ids", &vec!["o".to_string(); 10_000]).unwrap_err();
        assert!(e.starts_with("offer_ids: 10000 entries"), "{e}");
    }

    #[test]
    fn filters_and_framework_info() {
        assert_eq!(refuse_seconds("f", None).unwrap(), 5.0);
        assert!(refuse_seconds(
            "f",
            Some(&v1::Filters {
                refuse_seconds: Some(-1.0)
            })
        )
        .is_err());
        assert!(refuse_seconds(
            "f",
            Some(&v1::Filters {
                refuse_seconds: Some(f64::NAN)
            })
        )
        .is_err());
        let ok = v1::FrameworkInfo {
            name: "x".into(),
            ..Default::default()
        };
        assert!(framework_info("framework", &ok).is_ok());
        let bad = v1::FrameworkInfo {
            name: "".into(),
            ..Default::default()
        };
        assert!(framework_info("framework", &bad)
            .unwrap_err()
            .starts_with("framework.name"));
        let bad = v1::FrameworkInfo {
            name: "x".into(),
            failover_timeout_seconds: f64::INFINITY,
            ..Default::default()
        };
        assert!(framework_info("framework", &bad)
            .unwrap_err()
            .contains("failover_timeout"));
    }
}
