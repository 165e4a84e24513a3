//! `corral run`: register a framework, wait for offers, launch, print each status change,
//! exit with the task's exit code (several tasks: 0 only if all finished).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_proto::convert::{resources_from_wire, resources_to_wire};
use corral_proto::resources::{scalar_from_f64, Resources, Value};
use corral_proto::scheduler::placement::{DelayScheduling, Preference};
use corral_proto::scheduler::{Driver, Scheduler};
use corral_proto::v1;
use v1::TaskState;

pub struct RunArgs {
    pub name: String,
    pub cpus: f64,
    pub mem: f64,
    pub count: u32,
    pub prefer: Option<Preference>,
    pub locality_wait: Duration,
    pub command: Vec<String>,
}

pub struct Run {
    args: RunArgs,
    per_task: Resources,
    delay: DelayScheduling,
    next: u32,
    /// task id → (state, exit code)
    tasks: BTreeMap<String, (TaskState, Option<i32>)>,
    suppressed: bool,
}

impl Run {
    pub fn new(args: RunArgs) -> Result<Run, String> {
        let mut per_task = Resources::new();
        let cpus = scalar_from_f64("cpus", args.cpus).map_err(|e| format!("--cpus: {e}"))?;
        let mem = scalar_from_f64("mem", args.mem).map_err(|e| format!("--mem: {e}"))?;
        if cpus == 0 && mem == 0 {
            return Err("--cpus and --mem: a task needs some cpus or memory".into());
        }
        per_task
            .insert_new("cpus", Value::Scalar(cpus))
            .map_err(|e| e.to_string())?;
        per_task
            .insert_new("mem", Value::Scalar(mem))
            .map_err(|e| e.to_string())?;
        if args.count == 0 {
            return Err("--count: must be at least 1".into());
        }
        if args.command.is_empty() {
            return Err("no command given: corral run [OPTIONS] -- CMD ARGS...".into());
        }
        let delay = DelayScheduling::new(args.locality_wait);
        Ok(Run {
            args,
            per_task,
            delay,
            next: 0,
            tasks: BTreeMap::new(),
            suppressed: false,
        })
    }

    fn all_done(&self) -> bool {
        self.tasks.len() == self.args.count as usize && self.tasks.values().all(|(s, _)| is_terminal(*s))
    }

    /// The process exit code once every task ended.
    pub fn exit_code(&self) -> i32 {
        if self.args.count == 1 {
            return match self.tasks.values().next() {
                Some((TaskState::TaskFinished, _)) => 0,
                Some((_, Some(code))) if *code != 0 => *code,
                _ => 1,
            };
        }
        if self.tasks.values().all(|(s, _)| *s == TaskState::TaskFinished) {
            0
        } else {
            1
        }
    }

    fn task_info(&self, id: String, agent_id: &str) -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: id.clone(),
            name: self.args.name.clone(),
            agent_id: agent_id.to_string(),
            resources: resources_to_wire(&self.per_task),
            command: Some(v1::CommandInfo {
                argv: self.args.command.clone(),
                shell: false,
                environment: Default::default(),
            }),
            ..Default::default()
        }
    }
}

fn is_terminal(s: TaskState) -> bool {
    use TaskState::*;
    matches!(
        s,
        TaskFinished | TaskFailed | TaskKilled | TaskError | TaskLost | TaskDropped | TaskGone
    )
}

impl Scheduler for Run {
    fn registered(&mut self, _d: &Driver, framework_id: &str, master: &v1::MasterInfo) {
        println!(
            "registered as framework {framework_id} with leader {}; waiting for offers",
            master.address
        );
    }

    fn reregistered(&mut self, _d: &Driver, master: &v1::MasterInfo) {
        println!("re-registered with the new leader {}", master.address);
    }

    fn offers(&mut self, driver: &Driver, offers: Vec<v1::Offer>) {
        let now = Instant::now();
        for offer in offers {
            let remaining = self.args.count - self.next;
            if remaining == 0 {
                driver.decline(vec![offer.offer_id], Some(60.0));
                continue;
            }
            let mut free = resources_from_wire("offer.resources", &offer.resources).unwrap_or_default();
            if !free.contains(&self.per_task) {
                // Too small for a task: it says nothing about locality either way.
                driver.decline(vec![offer.offer_id], Some(1.0));
                continue;
            }
            if let Some(pref) = &self.args.prefer {
                if !self.delay.take(pref.matches(&offer), now) {
                    // Not where the task would rather run: wait a little for a better offer.
                    let refuse = self.delay.remaining(now).as_secs_f64().clamp(0.2, 1.0);
                    driver.decline(vec![offer.offer_id], Some(refuse));
                    continue;
                }
            }
            let mut tasks = Vec::new();
            while (tasks.len() as u32) < remaining && free.contains(&self.per_task) {
                free = free.checked_sub(&self.per_task).unwrap_or_default();
                let id = if self.args.count == 1 {
                    self.args.name.clone()
                } else {
                    format!("{}-{}", self.args.name, self.next)
                };
                self.next += 1;
                tasks.push(self.task_info(id, &offer.agent_id));
            }
            if tasks.is_empty() {
                driver.decline(vec![offer.offer_id], Some(1.0));
                continue;
            }
            for t in &tasks {
                println!("launching {} on {} ({})", t.task_id, offer.hostname, offer.agent_id);
            }
            driver.accept(vec![offer.offer_id], tasks, Some(0.0));
        }
        if self.next == self.args.count && !self.suppressed {
            self.suppressed = true;
            driver.suppress();
        }
    }

    fn status_update(&mut self, driver: &Driver, status: &v1::TaskStatus) {
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        let code = status
            .exit_code
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default();
        let message = if status.message.is_empty() {
            String::new()
        } else {
            format!(": {}", status.message)
        };
        println!("{} {}{code}{message}", status.task_id, state.as_str_name());
        self.tasks.insert(status.task_id.clone(), (state, status.exit_code));
        if self.all_done() {
            driver.stop(true);
        }
    }

    fn error(&mut self, _d: &Driver, message: &str) {
        eprintln!("corral: master: {message}");
    }

    fn disconnected(&mut self, _d: &Driver) {
        println!("lost the leader; re-subscribing");
    }
}
