"""A scheduler written with pymesos's MesosSchedulerDriver, used unchanged, for Corral's
compatibility tests of the Mesos v1 Scheduler HTTP API.

    pymesos_scheduler.py MASTER WORKDIR MODE EXECUTOR_ARGV...

MASTER is one master's host:port (a follower, in the tests). Everything the scheduler sees
is appended to WORKDIR/events.log as one JSON object a line, for the test to read. The
scheduler ends by itself (exit 0) when its MODE is done, or exits 1 after 120 s.

MODE "tour": one accept launches a command task that finishes (cmd-1), one that runs until
killed (sleep-1) and one run by a pymesos executor (exe-1, EXECUTOR_ARGV); the scheduler
kills sleep-1 once RUNNING, reconciles cmd-1 once FINISHED, exchanges messages with the
executor ("hello" → "echo:hello"; then "finish:exe-1" finishes exe-1). It reads the cluster
with pymesos's operator driver through the same master ("operator"). Then it logs "done"
and waits for WORKDIR/continue (the test checks the master's state meanwhile), stops its
driver without tearing down, subscribes again with a second driver under the same framework
id, and tears down.

MODE "failover": launches short command tasks (t-1, t-2, ...; each appends its id to
WORKDIR/runs.log), at most two at a time, until WORKDIR/stop exists; reconciles its
unfinished tasks whenever it re-registers, and launches again, under the same id, a task the
master reports it never launched (TASK_UNKNOWN, TASK_DROPPED). Then it waits for its tasks
to end and tears down.
"""

import json
import os
import sys
import threading
import time

from pymesos import MesosSchedulerDriver, Scheduler, decode_data, encode_data
from pymesos.operator_v1 import MesosOperatorMasterDriver

MASTER, WORKDIR, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
EXECUTOR_ARGV = sys.argv[4:]
LOG = os.path.join(WORKDIR, "events.log")
TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
            "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"}
NEVER_LAUNCHED = {"TASK_UNKNOWN", "TASK_DROPPED"}
LOCK = threading.Lock()


def log(kind, **fields):
    fields["kind"] = kind
    fields["at"] = time.time()
    with LOCK, open(LOG, "a") as f:
        f.write(json.dumps(fields) + "\n")


def scalar(name, value):
    return dict(name=name, type="SCALAR", scalar=dict(value=value))


def cpus_of(offer):
    return sum(r["scalar"]["value"] for r in offer.get("resources", []) if r["name"] == "cpus")


def command_task(task_id, agent_id, command):
    return dict(
        name=task_id,
        task_id=dict(value=task_id),
        agent_id=agent_id,
        resources=[scalar("cpus", 0.1), scalar("mem", 16)],
        command=dict(value=command, shell=True),
    )


class Base(Scheduler):
    def __init__(self):
        self.done = threading.Event()
        self.framework_id = None

    def registered(self, driver, framework_id, master_info):
        self.framework_id = framework_id["value"]
        log("registered", framework_id=self.framework_id, master=master_info)

    def reregistered(self, driver, master_info):
        log("reregistered", framework_id=driver.framework_id, master=master_info)

    def disconnected(self, driver):
        log("disconnected")

    def error(self, driver, message):
        log("error", message=message)

    def statusUpdate(self, driver, update):
        log("update", task_id=update["task_id"]["value"], state=update["state"],
            reason=update.get("reason"), source=update.get("source"),
            uuid=update.get("uuid"), message=update.get("message"))


class Tour(Base):
    def __init__(self):
        Base.__init__(self)
        self.launched = False
        self.reconciled = False
        self.states = {}

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched or cpus_of(offer) < 0.5:
                driver.declineOffer(offer["id"], filters=dict(refuse_seconds=1))
                continue
            self.launched = True
            agent_id = offer["agent_id"]
            executor = dict(
                executor_id=dict(value="py"),
                name="pymesos executor",
                command=dict(value=EXECUTOR_ARGV[0], shell=False, arguments=EXECUTOR_ARGV),
                resources=[scalar("cpus", 0.1), scalar("mem", 32)],
            )
            tasks = [
                command_task("cmd-1", agent_id, "echo hello from cmd-1"),
                command_task("sleep-1", agent_id, "sleep 600"),
                dict(name="exe-1", task_id=dict(value="exe-1"), agent_id=agent_id,
                     resources=[scalar("cpus", 0.1), scalar("mem", 16)], executor=executor),
            ]
            log("launch", offer_id=offer["id"]["value"], tasks=[t["task_id"]["value"] for t in tasks])
            driver.launchTasks(offer["id"], tasks)

    def statusUpdate(self, driver, update):
        Base.statusUpdate(self, driver, update)
        task, state = update["task_id"]["value"], update["state"]
        if update.get("reason") == "REASON_RECONCILIATION":
            log("reconciled", task_id=task, state=state)
            self.reconciled = True
        else:
            self.states[task] = state
        if task == "sleep-1" and state == "TASK_RUNNING":
            driver.killTask(dict(value="sleep-1"))
        if task == "cmd-1" and state == "TASK_FINISHED" and not self.reconciled:
            driver.reconcileTasks([dict(task_id=dict(value="cmd-1"))])
        self.check()

    def frameworkMessage(self, driver, executor_id, agent_id, data):
        text = decode_data(data).decode()
        log("message", executor_id=executor_id["value"], text=text)
        if text == "launched:exe-1":
            driver.sendFrameworkMessage(executor_id, agent_id, encode_data(b"hello"))
        elif text == "echo:hello":
            driver.sendFrameworkMessage(executor_id, agent_id, encode_data(b"finish:exe-1"))

    def check(self):
        want = {"cmd-1": "TASK_FINISHED", "sleep-1": "TASK_KILLED", "exe-1": "TASK_FINISHED"}
        if self.reconciled and all(self.states.get(t) == s for t, s in want.items()):
            self.done.set()


class Failover(Base):
    IN_FLIGHT = 2

    def __init__(self):
        Base.__init__(self)
        self.next = 1
        self.pending = {}  # task id -> last state
        self.relaunch = []
        self.stopping = False

    def reregistered(self, driver, master_info):
        Base.reregistered(self, driver, master_info)
        unfinished = [t for t, s in self.pending.items() if s not in TERMINAL]
        if unfinished:
            driver.reconcileTasks([dict(task_id=dict(value=t)) for t in unfinished])

    def resourceOffers(self, driver, offers):
        self.stopping = self.stopping or os.path.exists(os.path.join(WORKDIR, "stop"))
        for offer in offers:
            running = [t for t, s in self.pending.items() if s not in TERMINAL]
            if self.stopping or len(running) >= self.IN_FLIGHT or cpus_of(offer) < 0.1:
                driver.declineOffer(offer["id"], filters=dict(refuse_seconds=0.2))
                continue
            if self.relaunch:
                task_id = self.relaunch.pop(0)
            else:
                task_id = "t-%d" % self.next
                self.next += 1
            self.pending[task_id] = "LAUNCHING"
            runs = os.path.join(WORKDIR, "runs.log")
            task = command_task(task_id, offer["agent_id"], "echo %s >> %s; sleep 0.3" % (task_id, runs))
            log("launch", offer_id=offer["id"]["value"], tasks=[task_id])
            driver.launchTasks(offer["id"], [task])
        self.check()

    def statusUpdate(self, driver, update):
        Base.statusUpdate(self, driver, update)
        task, state = update["task_id"]["value"], update["state"]
        if task not in self.pending:
            return
        if state in NEVER_LAUNCHED and self.pending[task] not in TERMINAL:
            # The master never launched it (its accept went to a leader that died): the
            # same id is free to launch again.
            self.pending[task] = state
            self.relaunch.append(task)
            log("relaunch", task_id=task, state=state)
        elif update.get("reason") != "REASON_RECONCILIATION" or state in TERMINAL:
            self.pending[task] = state
        self.check()

    def check(self):
        unfinished = [t for t, s in self.pending.items() if s not in TERMINAL]
        if self.stopping and not unfinished and not self.relaunch:
            self.done.set()


def framework(framework_id=None):
    info = dict(user="root" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
                name="pymesos-" + MODE, failover_timeout=60.0, hostname="localhost",
                # Named as frameworks often name themselves, without authenticating.
                principal="pymesos")
    if framework_id:
        info["id"] = dict(value=framework_id)
    return info


def run(scheduler, info):
    driver = MesosSchedulerDriver(scheduler, info, MASTER, use_addict=False)
    driver.start()
    return driver


def main():
    scheduler = Tour() if MODE == "tour" else Failover()
    driver = run(scheduler, framework())
    if not scheduler.done.wait(120):
        log("timeout")
        driver.stop(failover=True)
        sys.exit(1)
    if MODE == "tour":
        # The operator API through the same master, with pymesos's operator driver.
        # (Its daemon driver lacks the lock its calls take; the master driver, not started,
        # makes the same calls.)
        operator = MesosOperatorMasterDriver(MASTER)
        state = operator.getState()["get_state"]
        log("operator",
            healthy=operator.getHealth()["get_health"]["healthy"],
            version=operator.getVersion()["get_version"]["version_info"]["version"],
            frameworks=[f["framework_info"]["id"]["value"]
                        for f in state["get_frameworks"].get("frameworks", [])],
            completed_tasks=[t["task_id"]["value"] for t in state["get_tasks"].get("completed_tasks", [])],
            agents=[a["agent_info"]["hostname"] for a in operator.getAgents()["get_agents"]["agents"]],
            roles=[r["name"] for r in operator.getRoles()["get_roles"].get("roles", [])])
        # The test checks that the master holds no unacknowledged update, then lets it go on:
        # stop without a teardown, subscribe again as the same framework, tear down.
        log("done")
        go_on = os.path.join(WORKDIR, "continue")
        deadline = time.time() + 60
        while not os.path.exists(go_on):
            if time.time() > deadline:
                log("timeout")
                sys.exit(1)
            time.sleep(0.1)
        driver.stop(failover=True)
        driver.join()
        log("resubscribe", framework_id=scheduler.framework_id)
        again = Base()
        again.registered = lambda d, fid, mi: (log("registered-again", framework_id=fid["value"]),
                                               again.done.set())
        again.reregistered = lambda d, mi: (log("registered-again", framework_id=d.framework_id),
                                            again.done.set())
        driver = run(again, framework(scheduler.framework_id))
        if not again.done.wait(60):
            log("timeout")
            sys.exit(1)
    log("teardown")
    driver.stop()
    driver.join()
    log("stopped")


if __name__ == "__main__":
    main()
