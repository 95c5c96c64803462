"""The rate limiter: the seed's three-GPU example (R1 per device, R2 global), counts given
by --rate-limit-resource, priority as a weight (served models: tests/e2e/
test_e2e_rate_limit_host_policy.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from llmserve.config.parse import parse_config_text
from llmserve.scheduling.rate_limiter import RateLimiter

SEED_GROUP = """
instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0, 1, 2 ]
  rate_limiter { resources [ { name: "R1" count: 4 }, { name: "R2" global: True count: 2 } ]
                 priority: 2 } } ]
"""


def _group(text: str):
    return parse_config_text(text).instance_group[0]


def _held(limiter: RateLimiter, grantees) -> list[bool]:
    """Which grantees get their resources right away (each acquired one after another)."""
    return [limiter.acquire(g, timeout=0.05) for g in grantees]


def test_seed_example_r2_is_shared_by_all_three_devices():
    limiter = RateLimiter()
    group = _group(SEED_GROUP)
    gpus = [limiter.register(f"m_{d}", group, d) for d in (0, 1, 2)]
    # R2 has as many copies as one instance needs (2): one instance at a time
    assert _held(limiter, gpus) == [True, False, False]
    assert limiter.in_use() == {("R1", 0): 4, ("R2", -1): 2}
    limiter.release(gpus[0])
    assert limiter.acquire(gpus[1], timeout=0.05)


def test_seed_example_r1_is_per_device():
    limiter = RateLimiter([("R2", 6, None)])  # enough R2 for all three
    group = _group(SEED_GROUP)
    gpus = [limiter.register(f"m_{d}", group, d) for d in (0, 1, 2)]
    assert _held(limiter, gpus) == [True, True, True]  # R1 of one device is not another's
    other = limiter.register("other_0", _group("""instance_group [ { kind: KIND_GPU gpus: [0]
        rate_limiter { resources [ { name: "R1" count: 4 } ] } } ]"""), 0)
    other_on_1 = limiter.register("other_1", _group("""instance_group [ { kind: KIND_GPU
        gpus: [1] rate_limiter { resources [ { name: "R1" count: 4 } ] } } ]"""), 1)
    assert not limiter.acquire(other, timeout=0.05)  # device 0's R1 is held by m_0
    limiter.release(gpus[0])
    assert limiter.acquire(other, timeout=0.05)
    assert not limiter.acquire(other_on_1, timeout=0.05)


def test_a_given_count_below_an_instance_need_fails_its_registration():
    limiter = RateLimiter([("R1", 2, 0)])
    with pytest.raises(Exception, match="needs 4 copies of resource 'R1' on device 0"):
        limiter.register("m_0", _group(SEED_GROUP), 0)


def test_priority_two_gets_half_the_chances_of_priority_one():
    """Three instances of priority 1 and three of priority 2 keep asking for one global
    resource: the priority-1 class gets about twice the grants."""
    limiter = RateLimiter()
    group = """instance_group [ { kind: KIND_CPU
        rate_limiter { resources [ { name: "R" global: true count: 1 } ] priority: %d } } ]"""
    workers = [(limiter.register(f"p{p}_{i}", _group(group % p), 0), p)
               for p in (1, 2) for i in range(3)]
    grants: Counter[int] = Counter()
    stop = threading.Event()
    gate = threading.Lock()

    def run(grantee, priority):
        while not stop.is_set():
            if limiter.acquire(grantee, timeout=0.1):
                with gate:
                    grants[priority] += 1
                time.sleep(0.0005)
                limiter.release(grantee)

    threads = [threading.Thread(target=run, args=w) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while sum(grants.values()) < 600 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    ratio = grants[1] / max(grants[2], 1)
    assert 1.6 < ratio < 2.5, grants
