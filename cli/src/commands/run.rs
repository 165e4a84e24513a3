//! `corral run`: register a framework, wait for offers, launch, print each status change,
//! exit with the task's exit code (several tasks: 0 only if all finished).
//!
//! It never hangs silently: a launch the leader did not confirm (an Accept cut by a
//! failover) is reconciled and launched again if the master never made it, and the caller
//! gives up after a time without progress, saying what it was waiting for ([`Progress`]),
//! and says what it waits for every few seconds meanwhile. A task no registered agent could
//! ever hold is refused at once, naming the largest agent. Ctrl-C tears the framework down
//! (the master kills its tasks) and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::client::Masters;
use corral_proto::convert::{resources_from_wire, resources_to_wire};
use corral_proto::resources::{scalar_from_f64, Resources, Value};
use corral_proto::scheduler::placement::{DelayScheduling, Preference};
use corral_proto::scheduler::{Driver, Scheduler};
use corral_proto::v1;
use v1::TaskState;

use super::logs::{agent_address, Output, Stream};
use crate::output::{describe, usage, Failure};

/// The running task whose output is followed: framework, agent and task ids.
type Running = Arc<Mutex<Option<(String, String, String)>>>;

/// `corral run`'s options.
#[derive(Debug, clap::Args)]
pub struct RunOpts {
    /// Task name (and id; with --count, ids are NAME-0, NAME-1, ...).
    #[arg(long, default_value = "corral-run")]
    name: String,
    /// CPUs per task (at least 0.001 when not 0).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    cpus: f64,
    /// Memory in MiB per task (at least 0.001 when not 0).
    #[arg(long, default_value_t = 32.0, allow_negative_numbers = true)]
    mem: f64,
    /// The framework's role (its DRF share and weight).
    #[arg(long, default_value = "*")]
    role: String,
    /// How many tasks to run (progress is printed as they end).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Prefer agents with this hostname, or this attribute (`name:value`).
    #[arg(long)]
    prefer: Option<String>,
    /// How long to wait for a preferred agent before taking any (delay scheduling), e.g. 2s.
    #[arg(long, default_value = "0s")]
    locality_wait: String,
    /// Give up after this long without progress (no registration, launch or status
    /// update), saying what was awaited, e.g. 60s, 5m.
    #[arg(long, default_value = "60s")]
    timeout: String,
    /// Do not print the task's output (printed as it comes when one task runs).
    #[arg(long)]
    quiet: bool,
    /// The user the tasks run as on the agents (default: yours). An agent running as root
    /// refuses `root` unless it was started with --allow-root-tasks.
    #[arg(long)]
    user: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How often a run that waits says what it waits for.
const WAITING_NOTE_EVERY: Duration = Duration::from_secs(5);
/// How long a run interrupted by Ctrl-C waits for its teardown to be sent.
const TEARDOWN_WAIT: Duration = Duration::from_secs(10);
/// The exit code after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// The name of the user running this command: `$USER`, else the account of the effective
/// uid (containers often set no `$USER`), else empty (the agent's choice).
fn caller_user_name() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    corral_agent::users::name_of(uid).unwrap_or_default()
}

/// `corral run [OPTIONS] -- COMMAND...`: the exit code to leave with.
pub async fn command(masters: &Masters, deadline: Duration, opts: RunOpts) -> Result<i32, Failure> {
    let RunOpts {
        name,
        cpus,
        mem,
        role,
        count,
        prefer,
        locality_wait,
        timeout,
        quiet,
        user,
        command,
    } = opts;
    let opts_user = match user {
        Some(u) if u.trim().is_empty() => return Err(usage("--user: must not be empty")),
        Some(u) => u,
        None => caller_user_name(),
    };
    let timeout = corral_proto::time::parse_duration(&timeout).map_err(|e| usage(format!("--timeout: {e}")))?;
    if timeout.is_zero() {
        return Err(usage("--timeout: must be longer than 0s"));
    }
    let prefer = prefer
        .map(|p| Preference::parse(&p).map_err(|e| usage(format!("--prefer: {e}"))))
        .transpose()?;
    let locality_wait =
        corral_proto::time::parse_duration(&locality_wait).map_err(|e| usage(format!("--locality-wait: {e}")))?;
    let runner = Run::new(RunArgs {
        name: name.clone(),
        cpus,
        mem,
        count,
        prefer,
        locality_wait,
        command,
    })
    .map_err(usage)?;
    // Before registering: a task that no registered agent could ever hold would wait forever.
    let wait = deadline.min(timeout);
    let agents = corral_proto::client::list_all(masters, wait, v1::ListAgentsRequest::default()).await;
    match agents {
        Ok(agents) => check_fits(&runner.per_task, &agents)?,
        // A principal that may run tasks but not read the cluster (operator = none): the
        // check is left to the offers.
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        Err(s) => {
            return Err(match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Failure::Cluster(format!(
                    "gave up after {wait:?} without progress, waiting for a leader to answer ({})",
                    describe(&s)
                )),
                _ => Failure::Cluster(describe(&s)),
            })
        }
    }
    let info = v1::FrameworkInfo {
        name: format!("corral run {name}"),
        role,
        user: opts_user,
        failover_timeout_seconds: 10.0,
        ..Default::default()
    };
    let progress = runner.progress();
    let driver = runner.driver.clone();
    let running = runner.running.clone();
    // One task: its stdout and stderr are printed as they come.
    let mut follow = count == 1 && !quiet;
    let mut output: Option<[Output; 2]> = None;
    let work = corral_proto::scheduler::run(masters.addresses().to_vec(), info, runner);
    tokio::pin!(work);
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    let mut noted = Instant::now();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            done = &mut work => {
                let code = done.map_err(|e| e.to_string())?.exit_code();
                if follow {
                    // The task has ended: what it wrote is all there.
                    if output.is_none() {
                        output = open_output(masters, deadline, &running).await.ok().flatten();
                    }
                    for o in output.iter_mut().flatten() {
                        drain(o).await;
                    }
                }
                return Ok(code);
            }
            _ = &mut interrupted => break,
            _ = watchdog.tick() => {
                if let Some(what) = progress.stalled(timeout) {
                    return Err(Failure::Cluster(format!("gave up after {timeout:?} without progress, waiting for {what}")));
                }
                if follow {
                    if output.is_none() {
                        match open_output(masters, deadline, &running).await {
                            Ok(opened) => output = opened,
                            Err(e) => {
                                // Said once; the run goes on without the output.
                                eprintln!("corral: cannot show the task's output: {e}");
                                follow = false;
                            }
                        }
                    }
                    for o in output.iter_mut().flatten() {
                        if let Err(e) = o.print_more().await {
                            tracing::debug!(error = %e, "task output not read");
                        }
                    }
                }
                let (idle, what) = progress.idle();
                if idle >= WAITING_NOTE_EVERY && noted.elapsed() >= WAITING_NOTE_EVERY {
                    noted = Instant::now();
                    eprintln!("corral: waiting {}s for {what}", idle.as_secs());
                }
            }
        }
    }
    // Ctrl-C: end the framework, which kills its tasks, rather than leave them running until
    // its failover timeout.
    let registered = driver.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match registered {
        Some((framework_id, driver)) => {
            eprintln!("corral: interrupted: tearing down framework {framework_id}; the master kills its tasks");
            driver.stop(true);
            if tokio::time::timeout(TEARDOWN_WAIT, &mut work).await.is_err() {
                eprintln!("corral: the teardown was not confirmed within {TEARDOWN_WAIT:?}; the framework ends after its failover timeout (10s)");
            }
        }
        None => eprintln!("corral: interrupted before the framework registered; nothing was launched"),
    }
    Ok(EXIT_INTERRUPTED)
}

/// The task's stdout and stderr once it runs (`Ok(None)` before), or why they cannot be read.
async fn open_output(masters: &Masters, deadline: Duration, running: &Running) -> Result<Option<[Output; 2]>, Failure> {
    let Some((framework_id, agent_id, task_id)) = running.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return Ok(None);
    };
    let agent = agent_address(masters, deadline, &agent_id).await?;
    // `corral run` launches command tasks.
    let sandbox = corral_proto::sandbox_dir(&framework_id, &task_id, "");
    Ok(Some([
        Output::new(agent.clone(), &sandbox, Stream::Stdout, Stream::Stdout, deadline),
        Output::new(agent, &sandbox, Stream::Stderr, Stream::Stderr, deadline),
    ]))
}

/// Print what is left of `output` (bounded, in case the task wrote without end).
async fn drain(output: &mut Output) {
    for _ in 0..64 {
        match output.print_more().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                eprintln!("corral: the rest of the task's output could not be read: {e}");
                return;
            }
        }
    }
}

/// Refuse a task no registered agent could ever hold, naming the largest agent. With no
/// agent registered yet, the run waits for one (saying so).
fn check_fits(per_task: &Resources, agents: &[v1::AgentSummary]) -> Result<(), Failure> {
    let totals: Vec<(String, Resources)> = agents
        .iter()
        .filter(|a| a.state == v1::AgentState::AgentActive as i32)
        .map(|a| {
            let total = resources_from_wire("resources", &a.resources).unwrap_or_default();
            (a.hostname.clone(), total)
        })
        .collect();
    if totals.is_empty() || totals.iter().any(|(_, total)| total.contains(per_task)) {
        return Ok(());
    }
    let (host, largest) = totals
        .iter()
        .max_by_key(|(_, t)| (t.scalar_milli("cpus"), t.scalar_milli("mem")))
        .expect("not empty");
    Err(Failure::Cluster(format!(
        "no registered agent can ever hold a task of {per_task}: the largest ({host}) has {largest}"
    )))
}

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
    /// The framework's id and driver once registered (for Ctrl-C).
    driver: Arc<Mutex<Option<(String, Driver)>>>,
    /// The task once it runs (its output is followed when it is the only one).
    running: Running,
    delay: DelayScheduling,
    next: u32,
    /// task id → (state, exit code)
    tasks: BTreeMap<String, (TaskState, Option<i32>)>,
    suppressed: bool,
    registered: bool,
    /// Tasks whose Accept failed, until a reconciliation says whether they were launched.
    unconfirmed: BTreeSet<String>,
    /// Tasks to launch again: their Accept failed and the master never launched them.
    relaunch: Vec<String>,
    progress: Progress,
}

/// When `corral run` last made progress (registered, launched, heard of a task) and what it
/// is waiting for now; shared with the watchdog that gives up after `--timeout`.
#[derive(Clone)]
pub struct Progress(Arc<Mutex<(Instant, String)>>);

impl Progress {
    fn new(waiting_for: String) -> Self {
        Progress(Arc::new(Mutex::new((Instant::now(), waiting_for))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Instant, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long nothing moved, and what is awaited.
    pub fn idle(&self) -> (Duration, String) {
        let p = self.lock();
        (p.0.elapsed(), p.1.clone())
    }

    /// What is awaited, if nothing moved for `timeout`.
    pub fn stalled(&self, timeout: Duration) -> Option<String> {
        let p = self.lock();
        (p.0.elapsed() >= timeout).then(|| p.1.clone())
    }
}

impl Run {
    pub fn new(args: RunArgs) -> Result<Run, String> {
        let mut per_task = Resources::new();
        let cpus = scalar_from_f64("cpus", args.cpus).map_err(|e| format!("--cpus: {e}"))?;
        let mem = scalar_from_f64("mem", args.mem).map_err(|e| format!("--mem: {e}"))?;
        for (flag, value, milli) in [("--cpus", args.cpus, cpus), ("--mem", args.mem, mem)] {
            if value > 0.0 && milli == 0 {
                return Err(format!("{flag}: {value} is below the smallest amount, 0.001"));
            }
        }
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
            driver: Arc::default(),
            running: Arc::default(),
            delay,
            next: 0,
            tasks: BTreeMap::new(),
            suppressed: false,
            registered: false,
            unconfirmed: BTreeSet::new(),
            relaunch: Vec::new(),
            progress: Progress::new("a leader to accept the framework's subscription".into()),
        })
    }

    /// The progress clock the watchdog reads.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Tasks not launched yet (never tried, or to launch again).
    fn to_launch(&self) -> u32 {
        self.args.count - self.next + self.relaunch.len() as u32
    }

    /// What this run waits for now, in words.
    fn waiting_for(&self) -> String {
        if !self.registered {
            return "a leader to accept the framework's subscription".into();
        }
        let launched = self.args.count - self.to_launch() - self.unconfirmed.len() as u32;
        if self.to_launch() > 0 {
            return format!(
                "an offer with room for {} ({launched} of {} tasks launched; no agent may be large enough)",
                self.per_task, self.args.count
            );
        }
        if let Some(id) = self.unconfirmed.iter().next() {
            return format!("the master to confirm whether task {id} was launched");
        }
        let open: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, (s, _))| !s.is_terminal())
            .map(|(id, (s, _))| format!("{id} is {}", s.as_str_name()))
            .collect();
        let silent = self.args.count as usize - self.tasks.len();
        match (open.first(), silent) {
            (Some(first), _) => format!("{} unfinished task(s) to end ({first})", open.len() + silent),
            (None, n) => format!("the first status update of {n} launched task(s)"),
        }
    }

    /// Something moved: restart the clock.
    fn moved(&self) {
        *self.progress.lock() = (Instant::now(), self.waiting_for());
    }

    /// Nothing moved, but what is awaited may be said better now.
    fn still_waiting(&self) {
        self.progress.lock().1 = self.waiting_for();
    }

    fn all_done(&self) -> bool {
        self.tasks.len() == self.args.count as usize && self.tasks.values().all(|(s, _)| s.is_terminal())
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

fn reconcile_task(task_id: &str) -> v1::ReconcileTask {
    v1::ReconcileTask {
        task_id: task_id.to_string(),
        agent_id: String::new(),
    }
}

impl Scheduler for Run {
    fn registered(&mut self, driver: &Driver, framework_id: &str, master: &v1::MasterInfo) {
        *self.driver.lock().unwrap_or_else(|p| p.into_inner()) = Some((framework_id.to_string(), driver.clone()));
        println!(
            "registered as framework {framework_id} with leader {}; waiting for offers",
            master.address
        );
        self.registered = true;
        self.moved();
    }

    fn reregistered(&mut self, driver: &Driver, master: &v1::MasterInfo) {
        println!("re-registered with the new leader {}", master.address);
        if !self.unconfirmed.is_empty() {
            // The reconciliation asked of the last leader may have been lost with it.
            driver.reconcile(self.unconfirmed.iter().map(|id| reconcile_task(id)).collect());
        }
        self.moved();
    }

    fn offers(&mut self, driver: &Driver, offers: Vec<v1::Offer>) {
        let now = Instant::now();
        for offer in offers {
            let remaining = self.to_launch();
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
                let id = match self.relaunch.pop() {
                    Some(id) => id,
                    None => {
                        let id = if self.args.count == 1 {
                            self.args.name.clone()
                        } else {
                            format!("{}-{}", self.args.name, self.next)
                        };
                        self.next += 1;
                        id
                    }
                };
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
            self.moved();
        }
        if self.to_launch() == 0 && !self.suppressed {
            self.suppressed = true;
            driver.suppress();
        }
        self.still_waiting();
    }

    fn accept_failed(&mut self, driver: &Driver, tasks: &[v1::TaskInfo], message: &str) {
        eprintln!("corral: the leader did not confirm a launch: {message}");
        for t in tasks {
            println!(
                "{}: launch not confirmed; asking the master whether it was launched",
                t.task_id
            );
            self.unconfirmed.insert(t.task_id.clone());
        }
        driver.reconcile(tasks.iter().map(|t| reconcile_task(&t.task_id)).collect());
        self.still_waiting();
    }

    fn status_update(&mut self, driver: &Driver, status: &v1::TaskStatus) {
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        let was_unconfirmed = self.unconfirmed.remove(&status.task_id);
        if was_unconfirmed && state == TaskState::TaskUnknown {
            // The master never launched it: launch it again on the next offer.
            println!("{} was not launched; launching it again", status.task_id);
            self.relaunch.push(status.task_id.clone());
            if self.suppressed {
                self.suppressed = false;
                driver.revive();
            }
            self.moved();
            return;
        }
        if self.tasks.get(&status.task_id).map(|(s, _)| *s) == Some(state) {
            // A reconciliation answer repeating what was already reported.
            return;
        }
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
        if state == TaskState::TaskRunning {
            *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                status.framework_id.clone(),
                status.agent_id.clone(),
                status.task_id.clone(),
            ));
        }
        self.tasks.insert(status.task_id.clone(), (state, status.exit_code));
        self.moved();
        if self.args.count > 1 && state.is_terminal() {
            let ended = self.tasks.values().filter(|(s, _)| s.is_terminal()).count();
            let finished = self
                .tasks
                .values()
                .filter(|(s, _)| *s == TaskState::TaskFinished)
                .count();
            println!("{ended}/{} tasks ended ({finished} finished)", self.args.count);
        }
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
