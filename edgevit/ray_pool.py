"""Ray for edgevit's fan-outs (`edgevit sweep`, `analyze --workers`, `quantize --bits auto --workers`): a quiet
local instance or a given cluster, and a `map` whose calls run as Ray tasks with one torch thread each.

One place, so every fan-out starts Ray the same way: never joining a cluster that a `ray start` left behind
in /tmp/ray unless asked (`address`), no dashboard, a small object store, and the token that `ray start`
clusters of Ray ≥ 2.50 require.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from edgevit.errors import UsageError

OBJECT_STORE_BYTES = 100 * 1024 ** 2


def require_ray():
    """`import ray`, or a UsageError naming the extra."""
    try:
        import ray
    except ImportError as e:
        raise UsageError("this fan-out runs on Ray: pip install 'edgevit[ray]'") from e
    return ray


def start_ray(address: str | None, cpus: int):
    """(ray, whether we started it). Quiet and small: the laptop this runs on is doing the work."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        # `ray start` clusters require the token it wrote there (Ray's token auth); without saying so, the
        # driver retries unauthenticated for minutes
        os.environ["RAY_AUTH_MODE"] = "token"
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.ERROR)
    try:
        if address:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        else:
            # "local": always a new instance, never one a `ray start` left in /tmp/ray/ray_current_cluster
            ray.init(address="local", num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, **quiet)
    except ConnectionError as e:
        raise UsageError(f"no Ray cluster at {address} ({str(e).splitlines()[0][:120]}); start one with "
                         "`ray start --head` or leave --address out for a local one") from e
    return ray, True


def _one_thread_call(fn, item):
    import torch
    torch.set_num_threads(1)
    return fn(item)


def ray_map(workers: int | None = None, address: str | None = None, progress=None):
    """A `map(fn, items)` that runs each call as a Ray task (1 CPU, 1 torch thread) and returns the results in
    the order of `items`; `fn` is shipped once through the object store. `progress(total=N)` → a bar."""
    def map_fn(fn, items):
        items = list(items)
        if not items:
            return []
        n = max(1, min(workers or os.cpu_count() or 1, len(items)))
        ray, owns = start_ray(address, n)
        try:
            task = ray.remote(num_cpus=1, max_retries=1)(_one_thread_call)
            fref = ray.put(fn)
            refs = [task.remote(fref, it) for it in items]
            bar = progress(total=len(refs)) if progress else None
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                if bar is not None:
                    bar.update(len(done))
            if bar is not None:
                bar.close()
            return ray.get(refs)
        finally:
            if owns:
                ray.shutdown()
    return map_fn
