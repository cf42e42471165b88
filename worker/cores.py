"""How many CPU cores this process may use: the fewer of the cores it may run on (affinity,
`taskset`, a cpuset) and its CPU quota (a container's `cpu.max`, Kubernetes' CPU limit).

The quota matters: in a pod limited to 4 CPUs on a 64-core node, the affinity says 64, and 64
scoring threads would be throttled to 4 cores' worth, each holding its own activations.
`quota_cores` and `cgroup_quota` are pure (text in, number out); `usable_cores` reads the machine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def quota_cores(cpu_max: str) -> int | None:
    """Whole cores a cgroup quota allows, rounded up ("max 100000" or "" = no quota: None).
    `cpu_max` is cgroup v2's `cpu.max` ("QUOTA PERIOD"), or v1's quota and period joined by a
    space."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:  # v1 writes -1 for no quota
        return None
    return max(1, math.ceil(quota / period))


def _ancestors(path: str) -> list[str]:
    """"/a/b" -> ["/a/b", "/a", ""]: a cgroup and every cgroup above it, as suffixes of the mount."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return ["/" + "/".join(parts[:k]) if k else "" for k in range(len(parts), -1, -1)]


def cgroup_quota(proc_cgroup: str, read: Callable[[str], str | None]) -> int | None:
    """The tightest CPU quota, in whole cores, on this process's cgroup or any above it (a quota
    may sit on a parent: a pod, a slice), from `/proc/self/cgroup`'s text; None without one.
    `read("cpu.max")` returns a file's text under /sys/fs/cgroup, or None. cgroup v2 reads
    `cpu.max`; v1 reads `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`. The mount's own files
    count too (a container's private cgroup view shows its own cgroup at the root)."""
    found = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            found += [quota_cores(read(f"{d}/cpu.max".lstrip("/")) or "") for d in _ancestors(path)]
        elif "cpu" in controllers.split(","):
            for d in _ancestors(path):
                quota, period = read(f"cpu{d}/cpu.cfs_quota_us"), read(f"cpu{d}/cpu.cfs_period_us")
                if quota is not None and period is not None:
                    found.append(quota_cores(f"{quota.strip()} {period.strip()}"))
    quotas = [q for q in found if q is not None]
    return min(quotas) if quotas else None


def _read_cgroup_file(name: str) -> str | None:
    try:
        return (CGROUP_ROOT / name).read_text(errors="replace")
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may use (at least 1): affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        proc_cgroup = PROC_SELF_CGROUP.read_text(errors="replace")
    except OSError:
        proc_cgroup = ""
    quota = cgroup_quota(proc_cgroup, _read_cgroup_file)
    return max(1, min(cores, quota) if quota else cores)
