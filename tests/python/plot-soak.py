"""Plot a soak-bench CSV: leader RSS, data dirs, tasks/s and p99 by the minute.

    python3 tests/python/plot-soak.py soak.csv soak.png "title"

Needs matplotlib (pip install matplotlib). Grey lines mark the leader kills (every 5
minutes), the shaded part the last half that soak-bench judges.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, target, title = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(source)))
minutes = [int(r["minute"]) for r in rows]


def column(name):
    return [float(r[name]) for r in rows]


fig, ax = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
ax[0].plot(minutes, column("leader_rss_mib"), "o-", label="leader RSS (MiB)")
ax[0].set_ylim(0, None)
ax[1].plot(minutes, column("data_dir_mib"), "o-", label="leader data dir (MiB)")
for name in ("dir_m1_mib", "dir_m2_mib", "dir_m3_mib"):
    ax[1].plot(minutes, column(name), "--", label="master %s data dir" % name[5])
ax[1].set_ylim(0, None)
ax[2].plot(minutes, column("tasks_per_s"), "o-", label="tasks/s")
ax[2].set_ylim(0, None)
ax[3].plot(minutes, column("p99_ms"), "o-", label="accept -> RUNNING p99 (ms)")
ax[3].set_ylim(0, None)
ax[3].set_xlabel("minute")
last_half = minutes[len(minutes) // 2]
for a in ax:
    a.legend(fontsize=8)
    for m in range(5, max(minutes) + 1, 5):
        a.axvline(m, color="grey", lw=0.5)
    a.axvspan(last_half - 0.5, max(minutes) + 0.5, color="yellow", alpha=0.1)
fig.suptitle(title)
fig.tight_layout()
fig.savefig(target, dpi=80)
