"""An executor written with pymesos's MesosExecutorDriver, used unchanged, for Corral's
compatibility test. Every event it sees is appended to <sandbox>/events.log, one per line:
REGISTERED, LAUNCH <task>, KILL <task>, MESSAGE <text>, ACKNOWLEDGED <task>, SHUTDOWN.

Tasks are reported RUNNING at launch; the framework's message "finish:<task>" makes it
FINISHED; a kill makes it KILLED; every other message is echoed as "echo:<text>". Each
launch is announced to the framework with the message "launched:<task>".
"""

import os
import sys
import time
import uuid

from pymesos import Executor, MesosExecutorDriver, decode_data, encode_data

LOG = os.path.join(os.environ.get("MESOS_SANDBOX", "."), "events.log")


def log(line):
    with open(LOG, "a") as f:
        f.write(line + "\n")
        f.flush()


class Driver(MesosExecutorDriver):
    def on_acknowledged(self, event):
        log("ACKNOWLEDGED %s" % event["task_id"]["value"])
        super(Driver, self).on_acknowledged(event)


class TestExecutor(Executor):
    def __init__(self):
        self.tasks = {}

    def registered(self, driver, executor_info, framework_info, agent_info):
        log("REGISTERED %s" % executor_info["executor_id"]["value"])

    def status(self, driver, task_id, state, message):
        driver.sendStatusUpdate(
            dict(
                task_id=dict(value=task_id),
                state=state,
                message=message,
                timestamp=time.time(),
                uuid=encode_data(uuid.uuid4().bytes),
            )
        )

    def launchTask(self, driver, task):
        task_id = task["task_id"]["value"]
        log("LAUNCH %s" % task_id)
        self.tasks[task_id] = task
        self.status(driver, task_id, "TASK_RUNNING", "running under pymesos")
        driver.sendFrameworkMessage(encode_data(("launched:%s" % task_id).encode()))

    def killTask(self, driver, task_id):
        log("KILL %s" % task_id["value"])
        self.status(driver, task_id["value"], "TASK_KILLED", "killed under pymesos")

    def frameworkMessage(self, driver, message):
        text = decode_data(message).decode()
        log("MESSAGE %s" % text)
        if text.startswith("finish:"):
            self.status(driver, text[len("finish:"):], "TASK_FINISHED", "finished under pymesos")
        else:
            driver.sendFrameworkMessage(encode_data(("echo:%s" % text).encode()))

    def shutdown(self, driver):
        log("SHUTDOWN")


if __name__ == "__main__":
    driver = Driver(TestExecutor())
    driver.run()
    sys.exit(0)
