//! Between Corral's messages (`corral.v1`) and Mesos' (`mesos.v1`), for the parts both
//! describe. Enums map by name (both use Mesos' names); what one side cannot express is
//! dropped as documented on each function.

use super::v1 as m;
use super::v1::scheduler as ms;
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

/// Mesos' framework in Corral's form (`field` names it in errors). Corral frameworks have
/// one role: `role`, or the only entry of `roles` (MULTI_ROLE frameworks with one role).
pub fn framework_from_mesos(field: &str, f: &m::FrameworkInfo) -> Result<c::FrameworkInfo, String> {
    let role = match (f.role.as_deref(), f.roles.as_slice()) {
        (_, [one]) => one.clone(),
        (_, [_, _, ..]) => {
            return Err(format!(
                "{field}.roles: {} roles; a Corral framework has exactly one",
                f.roles.len()
            ))
        }
        (Some(role), []) => role.to_string(),
        (None, []) => String::new(),
    };
    let failover = f.failover_timeout.unwrap_or(0.0);
    if !failover.is_finite() || failover < 0.0 {
        return Err(format!(
            "{field}.failover_timeout: must be a number of seconds, 0 or more"
        ));
    }
    Ok(c::FrameworkInfo {
        framework_id: f.id.as_ref().map(|i| i.value.clone()).unwrap_or_default(),
        name: f.name.clone(),
        role: if role == "*" { String::new() } else { role },
        user: f.user.clone(),
        hostname: f.hostname.clone().unwrap_or_default(),
        failover_timeout_seconds: failover,
        labels: f
            .labels
            .iter()
            .flat_map(|l| l.labels.iter())
            .map(|l| (l.key.clone(), l.value.clone().unwrap_or_default()))
            .collect(),
        principal: f.principal.clone().unwrap_or_default(),
    })
}

/// Corral's agent attributes (name:value text) in Mesos' form: TEXT attributes.
pub fn attributes_to_mesos(attributes: &[c::Attribute]) -> Vec<m::Attribute> {
    attributes
        .iter()
        .map(|a| m::Attribute {
            name: a.name.clone(),
            r#type: m::value::Type::Text as i32,
            text: Some(m::value::Text { value: a.value.clone() }),
            ..Default::default()
        })
        .collect()
}

/// Corral's offer in Mesos' form.
pub fn offer_to_mesos(o: &c::Offer) -> m::Offer {
    m::Offer {
        id: id!(OfferId, o.offer_id),
        framework_id: id!(FrameworkId, o.framework_id),
        agent_id: id!(AgentId, o.agent_id),
        hostname: o.hostname.clone(),
        resources: resources_to_mesos(&o.resources),
        executor_ids: Vec::new(),
        attributes: attributes_to_mesos(&o.attributes),
    }
}

/// A master's `host:port` as Mesos' MasterInfo: `ip` is the IPv4 address in network byte
/// order read as a little-endian number (Mesos' encoding: 127.0.0.1 is 16777343), 0 for a
/// host name.
pub fn master_info_to_mesos(id: u64, address: &str) -> m::MasterInfo {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5050"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().unwrap_or(5050);
    let ipv4: Option<std::net::Ipv4Addr> = host.parse().ok();
    m::MasterInfo {
        id: id.to_string(),
        ip: ipv4.map_or(0, |ip| u32::from_le_bytes(ip.octets())),
        port: u32::from(port),
        pid: Some(format!("master@{address}")),
        hostname: Some(host.to_string()),
        version: Some(MESOS_VERSION.to_string()),
        address: Some(m::Address {
            hostname: Some(host.to_string()),
            ip: ipv4.map(|ip| ip.to_string()),
            port: i32::from(port),
        }),
    }
}

/// The Mesos version whose HTTP APIs Corral serves: what Mesos clients read from
/// `/version` and `MasterInfo.version` (digits and dots; they compare it to the versions
/// they support).
pub const MESOS_VERSION: &str = "1.11.0";

/// Corral's scheduler event in Mesos' form (`mesos.v1.scheduler.Event`), for framework
/// `framework_id` on master `master` (`(id, address)`).
pub fn scheduler_event_to_mesos(ev: &c::Event, master: (u64, &str)) -> ms::Event {
    use c::event::Event as E;
    use ms::event as me;
    let of = |t: me::Type| ms::Event {
        r#type: Some(t as i32),
        ..Default::default()
    };
    match &ev.event {
        Some(E::Subscribed(s)) => ms::Event {
            subscribed: Some(me::Subscribed {
                framework_id: id!(FrameworkId, s.framework_id),
                heartbeat_interval_seconds: Some(s.heartbeat_interval_seconds),
                master_info: Some(master_info_to_mesos(master.0, master.1)),
            }),
            ..of(me::Type::Subscribed)
        },
        Some(E::Offers(o)) => ms::Event {
            offers: Some(me::Offers {
                offers: o.offers.iter().map(offer_to_mesos).collect(),
            }),
            ..of(me::Type::Offers)
        },
        Some(E::Rescind(r)) => ms::Event {
            rescind: Some(me::Rescind {
                offer_id: id!(OfferId, r.offer_id),
            }),
            ..of(me::Type::Rescind)
        },
        Some(E::Update(u)) => ms::Event {
            update: Some(me::Update {
                status: u.status.as_ref().map(|s| status_to_mesos(s, None)).unwrap_or_default(),
            }),
            ..of(me::Type::Update)
        },
        Some(E::Message(msg)) => ms::Event {
            message: Some(me::Message {
                agent_id: id!(AgentId, msg.agent_id),
                executor_id: id!(ExecutorId, msg.executor_id),
                data: msg.data.clone(),
            }),
            ..of(me::Type::Message)
        },
        Some(E::Failure(f)) => {
            let executor = (!f.executor_id.is_empty()).then(|| id!(ExecutorId, f.executor_id));
            ms::Event {
                failure: Some(me::Failure {
                    agent_id: (!f.agent_id.is_empty()).then(|| id!(AgentId, f.agent_id)),
                    // An executor's end always carries a status (clients read it): its exit
                    // code, or -1 when it has none (killed by a signal).
                    status: executor.as_ref().map(|_| f.exit_code.unwrap_or(-1)),
                    executor_id: executor,
                }),
                ..of(me::Type::Failure)
            }
        }
        Some(E::Error(e)) => ms::Event {
            error: Some(me::Error {
                message: e.message.clone(),
            }),
            ..of(me::Type::Error)
        },
        Some(E::Heartbeat(_)) | None => of(me::Type::Heartbeat),
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
    fn a_mesos_framework_has_one_role() {
        let info = |role: Option<&str>, roles: &[&str]| m::FrameworkInfo {
            user: "u".into(),
            name: "n".into(),
            role: role.map(str::to_string),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let f = framework_from_mesos("fi", &info(Some("a"), &[])).unwrap();
        assert_eq!(f.role, "a");
        // MULTI_ROLE with one role; "*" is the default role.
        assert_eq!(framework_from_mesos("fi", &info(None, &["b"])).unwrap().role, "b");
        assert_eq!(framework_from_mesos("fi", &info(Some("*"), &[])).unwrap().role, "");
        let e = framework_from_mesos("fi", &info(None, &["a", "b"])).unwrap_err();
        assert!(e.starts_with("fi.roles"), "{e}");
        let mut bad = info(None, &[]);
        bad.failover_timeout = Some(-1.0);
        assert!(framework_from_mesos("fi", &bad)
            .unwrap_err()
            .starts_with("fi.failover_timeout"));
    }

    #[test]
    fn master_info_and_failures_are_as_mesos_writes_them() {
        let info = master_info_to_mesos(2, "127.0.0.1:5051");
        assert_eq!(info.ip, 16_777_343, "127.0.0.1 in network order, read little-endian");
        assert_eq!((info.port, info.id.as_str()), (5051, "2"));
        assert_eq!(info.address.as_ref().and_then(|a| a.ip.as_deref()), Some("127.0.0.1"));
        assert_eq!(master_info_to_mesos(1, "m1.example:5050").ip, 0);
        let ev = |f: c::Failure| {
            scheduler_event_to_mesos(
                &c::Event {
                    event: Some(c::event::Event::Failure(f)),
                },
                (1, "h:1"),
            )
            .failure
            .unwrap()
        };
        // An executor's end always carries a status; a lost agent's has none.
        let exited = ev(c::Failure {
            agent_id: "a".into(),
            executor_id: "e".into(),
            exit_code: None,
            message: String::new(),
        });
        assert_eq!(exited.status, Some(-1));
        let lost = ev(c::Failure {
            agent_id: "a".into(),
            ..Default::default()
        });
        assert_eq!((lost.executor_id, lost.status), (None, None));
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
