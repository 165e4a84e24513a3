//! Validation of what clients send, shared by the gRPC handlers (which answer
//! INVALID_ARGUMENT with these messages) and by apply (which re-checks them, so a stale or
//! buggy leader cannot commit what a correct one would refuse). Messages name the field.

use std::collections::BTreeSet;

use corral_proto::convert::resources_from_wire;
use corral_proto::resources::Resources;
use corral_proto::v1;

/// Longest id (task, framework, agent) accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text field (names, hostnames, messages) accepted.
pub const MAX_TEXT_LEN: usize = 1024;
/// Most tasks in one accept.
pub const MAX_TASKS_PER_ACCEPT: usize = 1024;
/// Most status updates acknowledged in one Acknowledge call.
pub const MAX_ACKS_PER_CALL: usize = 1024;
/// Most argv entries of a command, and most environment variables.
pub const MAX_ARGV: usize = 1024;
/// Longest total of a command's argv and environment, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Longest framework failover timeout accepted (one week).
pub const MAX_FAILOVER_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// Longest decline filter accepted (one year, as a bound, not a meaningful value).
pub const MAX_REFUSE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A task, framework or agent id: 1..=128 printable characters without `/` or whitespace
/// (ids become directory names in agent sandboxes).
pub fn id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{field}: longer than {MAX_ID_LEN} bytes"));
    }
    if value == "." || value == ".." || value.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{field}: {value:?} may not contain '/', whitespace or control characters"
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
            "{field}: {value:?} is not a valid role name (1 to {} printable characters, no spaces)",
            crate::state::MAX_ROLE_LEN
        ));
    }
    Ok(())
}

fn text(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_TEXT_LEN {
        return Err(format!("{field}: longer than {MAX_TEXT_LEN} bytes"));
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
    Ok(resources)
}

/// The tasks of one LAUNCH, for one agent: ids unique within the launch and valid, resources
/// valid and non-empty, a command to run. Returns each task's resources and their sum.
pub fn launch(field: &str, agent_id: &str, tasks: &[v1::TaskInfo]) -> Result<(Vec<Resources>, Resources), String> {
    if tasks.is_empty() {
        return Err(format!("{field}: no tasks to launch"));
    }
    if tasks.len() > MAX_TASKS_PER_ACCEPT {
        return Err(format!("{field}: more than {MAX_TASKS_PER_ACCEPT} tasks"));
    }
    let mut seen = BTreeSet::new();
    let mut each = Vec::with_capacity(tasks.len());
    let mut total = Resources::new();
    for (i, t) in tasks.iter().enumerate() {
        let f = format!("{field}[{i}]");
        id(&format!("{f}.task_id"), &t.task_id)?;
        if !seen.insert(t.task_id.as_str()) {
            return Err(format!("{f}.task_id: {:?} appears twice in this launch", t.task_id));
        }
        text(&format!("{f}.name"), &t.name)?;
        if t.agent_id != agent_id {
            return Err(format!(
                "{f}.agent_id: {:?} is not the agent of the offers ({agent_id:?})",
                t.agent_id
            ));
        }
        let r = resources_from_wire(&format!("{f}.resources"), &t.resources).map_err(|e| e.to_string())?;
        if r.scalar_milli("cpus") == 0 && r.scalar_milli("mem") == 0 {
            return Err(format!("{f}.resources: a task needs some cpus or mem"));
        }
        let cmd = t.command.as_ref().ok_or_else(|| format!("{f}.command: missing"))?;
        if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
            return Err(format!("{f}.command.argv: nothing to run"));
        }
        if cmd.shell && cmd.argv.len() != 1 {
            return Err(format!("{f}.command.argv: a shell command is exactly one string"));
        }
        if cmd.argv.len() > MAX_ARGV || cmd.environment.len() > MAX_ARGV {
            return Err(format!("{f}.command: more than {MAX_ARGV} arguments or variables"));
        }
        let bytes: usize = cmd.argv.iter().map(String::len).sum::<usize>()
            + cmd.environment.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if bytes > MAX_COMMAND_BYTES {
            return Err(format!("{f}.command: larger than {MAX_COMMAND_BYTES} bytes"));
        }
        if cmd
            .environment
            .keys()
            .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(format!("{f}.command.environment: invalid variable name"));
        }
        if cmd
            .argv
            .iter()
            .chain(cmd.environment.values())
            .any(|a| a.contains('\0'))
        {
            return Err(format!("{f}.command: NUL byte in an argument or value"));
        }
        total = total.checked_add(&r).map_err(|e| format!("{f}.resources: {e}"))?;
        each.push(r);
    }
    Ok((each, total))
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
