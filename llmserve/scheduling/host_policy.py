"""Host policies (--host-policy NAME,KEY=VALUE): an instance's worker thread runs on the
CPUs its policy names (`cpu-cores`, or the CPUs of `numa-node`). The instance's policy is
its instance_group's host_policy, else "cpu", "model" or "gpu_<device>" by kind, as in
Triton. What cannot be applied here (NUMA memory binding, a machine without
sched_setaffinity) is said in a warning naming it."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.base import InstanceSpec
from llmserve.config import host_policy_name
from llmserve.options import ServerOptions

log = logging.getLogger(__name__)
KEYS = ("numa-node", "cpu-cores")
_NODE_CPUS = Path("/sys/devices/system/node")


def parse_cpu_list(text: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}; ValueError for anything else."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range '{part}'")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("no CPUs")
    return cpus


def numa_node_cpus(node: int) -> set[int]:
    path = _NODE_CPUS / f"node{node}" / "cpulist"
    if not path.is_file():
        raise ValueError(f"NUMA node {node} does not exist on this machine")
    return parse_cpu_list(path.read_text().strip())


def host_policy_cpus(options: ServerOptions, group: mc.ModelInstanceGroup,
                     ispec: InstanceSpec) -> set[int] | None:
    """The CPUs an instance's worker should run on, or None for no pinning."""
    kind = mc.ModelInstanceGroup.Kind.Value(ispec.kind)
    g = mc.ModelInstanceGroup()
    g.CopyFrom(group)
    g.kind = kind
    name = host_policy_name(g, ispec.device_id)
    policy = options.host_policies.get(name)
    if not policy:
        return None
    cpus: set[int] | None = None
    if "cpu-cores" in policy:
        cpus = parse_cpu_list(policy["cpu-cores"])
    if "numa-node" in policy:
        node_cpus = numa_node_cpus(int(policy["numa-node"]))
        cpus = node_cpus if cpus is None else cpus & node_cpus
        log.warning("host policy '%s': numa-node %s pins instance '%s' to that node's CPUs; "
                    "its memory is not bound to the node (no libnuma binding in llmserve)",
                    name, policy["numa-node"], ispec.name)
    return cpus


def _usable(cpus: set[int], model: str) -> set[int]:
    """The policy's CPUs this process may use; empty (said in a warning) when none."""
    if not hasattr(os, "sched_setaffinity"):
        log.warning("model '%s': host policy CPUs %s not applied: this platform has no "
                    "sched_setaffinity", model, sorted(cpus))
        return set()
    usable = cpus & os.sched_getaffinity(0)
    if not usable:
        log.warning("model '%s': host policy CPUs %s not applied: none of them is available "
                    "to this process", model, sorted(cpus))
    return usable


def pin_current_thread(cpus: set[int], model: str) -> None:
    """Pins the calling thread (Linux: a thread id is a valid sched_setaffinity target)."""
    usable = _usable(cpus, model)
    if usable:
        os.sched_setaffinity(threading.get_native_id(), usable)


def pin_process(pid: int, cpus: set[int], model: str) -> None:
    """Pins every thread of process pid (a stub: in Triton it inherits the pinned
    instance thread's affinity); threads it starts later inherit it."""
    usable = _usable(cpus, model)
    if not usable:
        return
    tasks = Path(f"/proc/{pid}/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, usable)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
