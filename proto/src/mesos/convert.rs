//! Between Corral's messages (`corral.v1`) and Mesos' (`mesos.v1`), for the parts both
//! describe. Enums map by name (both use Mesos' names); what one side cannot express is
//! dropped as documented on each function.

use super::v1 as m;
use crate::v1 as c;

/// A Mesos id message from a string.
macro_rules! id {
    ($t:ident, $v:expr) => {
        m::$t { value: $v.to_string() }
    };
}

/// Corral's task state as Mesos names it (TASK_STATE_UNSPECIFIED: TASK_UNKNOWN).
pub fn task_state_to_mesos(state: i32) -> m::TaskState {
    c::TaskState::try_from(state)
        .ok()
        .and_then(|s| m::TaskState::from_str_name(s.as_str_name()))
        .unwrap_or(m::TaskState::TaskUnknown)
}

/// Mesos' task state in Corral (TASK_GONE_BY_OPERATOR is TASK_GONE).
pub fn task_state_from_mesos(state: i32) -> c::TaskState {
    match m::TaskState::try_from(state) {
        Ok(m::TaskState::TaskGoneByOperator) => c::TaskState::TaskGone,
        Ok(s) => c::TaskState::from_str_name(s.as_str_name()).unwrap_or(c::TaskState::Unspecified),
        Err(_) => c::TaskState::Unspecified,
    }
}

/// Corral's reason as Mesos names it, when Mesos has that reason.
pub fn reason_to_mesos(reason: i32) -> Option<m::task_status::Reason> {
    let r = c::Reason::try_from(reason).ok()?;
    match r {
        c::Reason::Unspecified => None,
        c::Reason::CommandExited => Some(m::task_status::Reason::CommandExecutorFailed),
        c::Reason::KilledByFramework => None,
        c::Reason::AgentUnreachable => Some(m::task_status::Reason::AgentDisconnected),
        c::Reason::MemoryLimit => Some(m::task_status::Reason::ContainerLimitationMemory),
        c::Reason::LaunchFailed => Some(m::task_status::Reason::ContainerLaunchFailed),
        other => m::task_status::Reason::from_str_name(other.as_str_name()),
    }
}

/// Mesos' reason in Corral, when Corral has that reason.
pub fn reason_from_mesos(reason: i32) -> c::Reason {
    m::task_status::Reason::try_from(reason)
        .ok()
        .and_then(|r| c::Reason::from_str_name(r.as_str_name()))
        .unwrap_or(c::Reason::Unspecified)
}

/// Corral's resources in Mesos' form (unreserved: role "*").
pub fn resources_to_mesos(resources: &[c::Resource]) -> Vec<m::Resource> {
    resources
        .iter()
        .filter_map(|r| {
            let base = m::Resource {
                name: r.name.clone(),
                role: Some("*".into()),
                ..Default::default()
            };
            Some(match r.value.as_ref()? {
                c::resource::Value::Scalar(v) => m::Resource {
                    r#type: m::value::Type::Scalar as i32,
                    scalar: Some(m::value::Scalar { value: *v }),
                    ..base
                },
                c::resource::Value::Ranges(list) => m::Resource {
                    r#type: m::value::Type::Ranges as i32,
                    ranges: Some(m::value::Ranges {
                        range: list
                            .range
                            .iter()
                            .map(|x| m::value::Range {
                                begin: x.begin,
                                end: x.end,
                            })
                            .collect(),
                    }),
                    ..base
                },
            })
        })
        .collect()
}

/// Mesos' resources in Corral's form. Sets and text have no Corral form: refused, naming
/// the resource (`field` is the list's name).
pub fn resources_from_mesos(field: &str, resources: &[m::Resource]) -> Result<Vec<c::Resource>, String> {
    resources
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let value = match m::value::Type::try_from(r.r#type) {
                Ok(m::value::Type::Scalar) => c::resource::Value::Scalar(
                    r.scalar
                        .as_ref()
                        .ok_or_else(|| format!("{field}[{i}].scalar: missing for a SCALAR resource"))?
                        .value,
                ),
                Ok(m::value::Type::Ranges) => c::resource::Value::Ranges(c::RangeList {
                    range: r
                        .ranges
                        .as_ref()
                        .ok_or_else(|| format!("{field}[{i}].ranges: missing for a RANGES resource"))?
                        .range
                        .iter()
                        .map(|x| c::Range {
                            begin: x.begin,
                            end: x.end,
                        })
                        .collect(),
                }),
                _ => {
                    return Err(format!(
                        "{field}[{i}].type: only SCALAR and RANGES resources are supported"
                    ))
                }
            };
            if r.role.as_deref().is_some_and(|role| role != "*") {
                return Err(format!("{field}[{i}].role: reserved resources are not supported"));
            }
            Ok(c::Resource {
                name: r.name.clone(),
                value: Some(value),
            })
        })
        .collect()
}

/// Corral's command in Mesos' form: a shell command line in `value`, or `value` the program
/// and `arguments` the whole argv.
pub fn command_to_mesos(cmd: &c::CommandInfo) -> m::CommandInfo {
    let environment = (!cmd.environment.is_empty()).then(|| m::Environment {
        variables: cmd
            .environment
            .iter()
            .map(|(k, v)| m::environment::Variable {
                name: k.clone(),
                value: Some(v.clone()),
                r#type: Some(m::environment::variable::Type::Value as i32),
            })
            .collect(),
    });
    if cmd.shell {
        m::CommandInfo {
            value: cmd.argv.first().cloned(),
            shell: Some(true),
            environment,
            ..Default::default()
        }
    } else {
        m::CommandInfo {
            value: cmd.argv.first().cloned(),
            arguments: cmd.argv.clone(),
            shell: Some(false),
            environment,
            ..Default::default()
        }
    }
}

/// Mesos' command in Corral's form. URIs (Corral fetches nothing) and secrets are refused,
/// naming the field.
pub fn command_from_mesos(field: &str, cmd: &m::CommandInfo) -> Result<c::CommandInfo, String> {
    if !cmd.uris.is_empty() {
        return Err(format!("{field}.uris: fetching URIs is not supported"));
    }
    let mut environment = std::collections::BTreeMap::new();
    for (i, v) in cmd.environment.iter().flat_map(|e| e.variables.iter()).enumerate() {
        if v.r#type == Some(m::environment::variable::Type::Secret as i32) {
            return Err(format!("{field}.environment.variables[{i}]: secrets are not supported"));
        }
        environment.insert(v.name.clone(), v.value.clone().unwrap_or_default());
    }
    let shell = cmd.shell.unwrap_or(true);
    let value = cmd.value.clone().unwrap_or_default();
    let argv = if shell || cmd.arguments.is_empty() {
        vec![value]
    } else {
        // Mesos runs `value` with `arguments` as its argv (arguments[0] its name).
        let mut argv = cmd.arguments.clone();
        if !value.is_empty() {
            argv[0] = value;
        }
        argv
    };
    Ok(c::CommandInfo {
        argv,
        shell,
        environment,
    })
}

/// Corral's executor in Mesos' form, for framework `framework_id`.
pub fn executor_to_mesos(framework_id: &str, e: &c::ExecutorInfo) -> m::ExecutorInfo {
    m::ExecutorInfo {
        executor_id: id!(ExecutorId, e.executor_id),
        framework_id: Some(id!(FrameworkId, framework_id)),
        name: (!e.name.is_empty()).then(|| e.name.clone()),
        command: e.command.as_ref().map(command_to_mesos),
        resources: resources_to_mesos(&e.resources),
        data: (!e.data.is_empty()).then(|| e.data.clone()),
        r#type: Some(m::executor_info::Type::Custom as i32),
        ..Default::default()
    }
}

/// Mesos' executor in Corral's form (`field` names it in errors).
pub fn executor_from_mesos(field: &str, e: &m::ExecutorInfo) -> Result<c::ExecutorInfo, String> {
    if e.r#type == Some(m::executor_info::Type::Default as i32) {
        return Err(format!(
            "{field}.type: the DEFAULT executor (task groups) is not supported"
        ));
    }
    Ok(c::ExecutorInfo {
        executor_id: e.executor_id.value.clone(),
        name: e.name.clone().unwrap_or_default(),
        command: e
            .command
            .as_ref()
            .map(|cmd| command_from_mesos(&format!("{field}.command"), cmd))
            .transpose()?,
        resources: resources_from_mesos(&format!("{field}.resources"), &e.resources)?,
        data: e.data.clone().unwrap_or_default(),
    })
}

/// Corral's framework in Mesos' form. Corral checkpoints every framework's tasks.
pub fn framework_to_mesos(f: &c::FrameworkInfo) -> m::FrameworkInfo {
    m::FrameworkInfo {
        user: f.user.clone(),
        name: f.name.clone(),
        id: (!f.framework_id.is_empty()).then(|| id!(FrameworkId, f.framework_id)),
        failover_timeout: Some(f.failover_timeout_seconds),
        checkpoint: Some(true),
        role: Some(if f.role.is_empty() { "*".into() } else { f.role.clone() }),
        hostname: (!f.hostname.is_empty()).then(|| f.hostname.clone()),
        principal: (!f.principal.is_empty()).then(|| f.principal.clone()),
        labels: labels_to_mesos(&f.labels),
        ..Default::default()
    }
}

/// Labels in Mesos' form (none: `None`).
pub fn labels_to_mesos(labels: &std::collections::BTreeMap<String, String>) -> Option<m::Labels> {
    (!labels.is_empty()).then(|| m::Labels {
        labels: labels
            .iter()
            .map(|(k, v)| m::Label {
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect(),
    })
}

/// Corral's task in Mesos' form, for framework `framework_id`.
pub fn task_to_mesos(framework_id: &str, t: &c::TaskInfo) -> m::TaskInfo {
    m::TaskInfo {
        name: if t.name.is_empty() {
            t.task_id.clone()
        } else {
            t.name.clone()
        },
        task_id: id!(TaskId, t.task_id),
        agent_id: id!(AgentId, t.agent_id),
        resources: resources_to_mesos(&t.resources),
        executor: t.executor.as_ref().map(|e| executor_to_mesos(framework_id, e)),
        data: (!t.data.is_empty()).then(|| t.data.clone()),
        command: t.command.as_ref().map(command_to_mesos),
        labels: labels_to_mesos(&t.labels),
        kill_policy: (t.kill_grace_period_ms > 0).then(|| m::KillPolicy {
            grace_period: Some(duration_ms(t.kill_grace_period_ms)),
        }),
    }
}

/// Mesos' task in Corral's form (`field` names it in errors).
pub fn task_from_mesos(field: &str, t: &m::TaskInfo) -> Result<c::TaskInfo, String> {
    let grace = t
        .kill_policy
        .as_ref()
        .and_then(|k| k.grace_period.as_ref())
        .map_or(0, |d| u64::try_from(d.nanoseconds / 1_000_000).unwrap_or(0));
    Ok(c::TaskInfo {
        task_id: t.task_id.value.clone(),
        name: t.name.clone(),
        agent_id: t.agent_id.value.clone(),
        resources: resources_from_mesos(&format!("{field}.resources"), &t.resources)?,
        command: t
            .command
            .as_ref()
            .map(|cmd| command_from_mesos(&format!("{field}.command"), cmd))
            .transpose()?,
        kill_grace_period_ms: grace,
        labels: t
            .labels
            .iter()
            .flat_map(|l| l.labels.iter())
            .map(|l| (l.key.clone(), l.value.clone().unwrap_or_default()))
            .collect(),
        executor: t
            .executor
            .as_ref()
            .map(|e| executor_from_mesos(&format!("{field}.executor"), e))
            .transpose()?,
        data: t.data.clone().unwrap_or_default(),
    })
}

/// A duration of `ms` milliseconds.
pub fn duration_ms(ms: u64) -> m::DurationInfo {
    m::DurationInfo {
        nanoseconds: i64::try_from(ms)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000),
    }
}

/// Corral's status in Mesos' form.
pub fn status_to_mesos(s: &c::TaskStatus, executor_id: Option<&str>) -> m::TaskStatus {
    m::TaskStatus {
        task_id: id!(TaskId, s.task_id),
        state: task_state_to_mesos(s.state) as i32,
        message: (!s.message.is_empty()).then(|| s.message.clone()),
        agent_id: (!s.agent_id.is_empty()).then(|| id!(AgentId, s.agent_id)),
        executor_id: executor_id.map(|e| id!(ExecutorId, e)),
        timestamp: Some(s.timestamp_ms as f64 / 1000.0),
        source: Some(match c::Source::try_from(s.source) {
            Ok(c::Source::Master) => m::task_status::Source::Master as i32,
            Ok(c::Source::Executor) => m::task_status::Source::Executor as i32,
            _ => m::task_status::Source::Agent as i32,
        }),
        reason: reason_to_mesos(s.reason).map(|r| r as i32),
        uuid: (!s.uuid.is_empty()).then(|| s.uuid.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_reasons_map_by_name() {
        assert_eq!(
            task_state_to_mesos(c::TaskState::TaskRunning as i32),
            m::TaskState::TaskRunning
        );
        assert_eq!(
            task_state_from_mesos(m::TaskState::TaskFinished as i32),
            c::TaskState::TaskFinished
        );
        assert_eq!(
            task_state_from_mesos(m::TaskState::TaskStaging as i32),
            c::TaskState::TaskStaging
        );
        assert_eq!(task_state_from_mesos(99), c::TaskState::Unspecified);
        assert_eq!(
            reason_to_mesos(c::Reason::ExecutorTerminated as i32),
            Some(m::task_status::Reason::ExecutorTerminated)
        );
        assert_eq!(
            reason_from_mesos(m::task_status::Reason::ExecutorTerminated as i32),
            c::Reason::ExecutorTerminated
        );
    }

    #[test]
    fn commands_round_trip_in_both_forms() {
        for cmd in [
            c::CommandInfo {
                argv: vec!["echo hi && exit 3".into()],
                shell: true,
                environment: [("A".to_string(), "1".to_string())].into(),
            },
            c::CommandInfo {
                argv: vec!["/bin/echo".into(), "a b".into()],
                shell: false,
                environment: Default::default(),
            },
        ] {
            let back = command_from_mesos("command", &command_to_mesos(&cmd)).unwrap();
            assert_eq!(back, cmd);
        }
        let fetch = m::CommandInfo {
            uris: vec![m::command_info::Uri {
                value: "http://x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(command_from_mesos("task.command", &fetch)
            .unwrap_err()
            .contains("task.command.uris"));
    }
}
