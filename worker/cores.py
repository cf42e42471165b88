"""How many CPU cores this process may use: the fewer of the cores it may run on (affinity,
`taskset`, a cpuset) and its CPU quota (a container's `cpu.max`, Kubernetes' CPU limit).

The quota matters: in a pod limited to 4 CPUs on a 64-core node, the affinity says 64, and 64
scoring threads would be throttled to 4 cores' worth, each holding its own activations.
`quota_cores` is pure (text in, number out); `usable_cores` reads the machine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


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


def usable_cores() -> int:
    """Cores this process may use (at least 1): affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = None
    try:
        if CGROUP_V2_MAX.exists():
            quota = quota_cores(CGROUP_V2_MAX.read_text())
        elif CGROUP_V1_QUOTA.exists():
            quota = quota_cores(f"{CGROUP_V1_QUOTA.read_text().strip()} {CGROUP_V1_PERIOD.read_text().strip()}")
    except OSError:
        quota = None
    return max(1, min(cores, quota) if quota else cores)
