"""A Ray cluster as the pipeline sees it: its two addresses, whether it can place what a stage asks
for, and an ordered map over Ray tasks for the data stages. Ray is imported only when used: the
defaults (`make demo`, `make dev`) need no cluster and no Ray.

Two addresses, because Ray has two front doors:
- the *job* address, the head's dashboard (`http://head:8265`, what `ray job submit --address`
  takes): training runs there as a Ray job (train/ray_job.py);
- the *driver* address, which a process that fans out tasks itself connects to: Ray Client
  (`ray://head:10001`) from a machine that is not a node of the cluster, or the head's GCS
  (`head:6379`) from one that is. By default the job address's host with Ray Client's port.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from llm_pipeline.redact import redacted
from llm_pipeline.storage.folders import bounded

RAY_CLIENT_PORT = 10001
CONNECT_ATTEMPTS = 3

# Where a data stage's per-file (per-row-group) work runs: this machine's cores, or Ray tasks on the cluster.
Executor = Literal["local", "ray"]


def driver_address(job_address: str, given: str = "") -> str:
    if given:
        return given
    host = urllib.parse.urlparse(job_address).hostname
    if not host:
        raise ValueError(f"Ray address {job_address!r} is not a URL like http://head:8265")
    return f"ray://{host}:{RAY_CLIENT_PORT}"


_VERSION_LIMIT = 64 << 10  # /api/version answers a few hundred bytes


def check_reachable(job_address: str, timeout_s: float = 10.0) -> str:
    """The cluster's Ray version, or ValueError naming the address when nothing answers there. The
    whole check ends within `timeout_s` (a server that answers a byte at a time cannot hold it) and
    reads at most 64 KB of answer."""
    shown = bounded(redacted(job_address))
    parsed = urllib.parse.urlparse(job_address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"Ray address {shown!r}: give the head's dashboard URL, like http://head:8265")
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            with urllib.request.urlopen(job_address.rstrip("/") + "/api/version", timeout=timeout_s) as response:
                answer["response"] = response
                answer["body"] = response.read(_VERSION_LIMIT + 1)
        except Exception as e:  # noqa: BLE001 - reported by the caller's thread
            answer["error"] = e

    asking = threading.Thread(target=ask, name="ray-version-check", daemon=True)
    asking.start()
    asking.join(timeout_s)
    if asking.is_alive():  # still reading: close its socket so the thread ends too
        with contextlib.suppress(Exception):
            answer["response"].close()
        reason: object = f"no whole answer within {timeout_s:g} s"
    elif "error" in answer:
        reason = getattr(answer["error"], "reason", answer["error"])
    elif len(answer["body"]) > _VERSION_LIMIT:
        reason = f"its answer is larger than {_VERSION_LIMIT:,} bytes: not a Ray dashboard"
    else:
        try:
            version = json.loads(answer["body"])
        except (ValueError, RecursionError):
            version = None
        if isinstance(version, dict):
            return str(version.get("ray_version", "unknown"))[:100]
        reason = "its /api/version answer is not a Ray dashboard's"
    raise ValueError(
        f"the Ray cluster at {shown} cannot be reached ({bounded(redacted(str(reason)))}); is its head running, with its dashboard?"
    ) from None


def placement_problem(nodes: list[dict[str, float]], workers: int, per_worker: dict[str, float]) -> str | None:
    """Why `workers` workers of `per_worker` resources each cannot all be placed on these nodes (each
    node's total resources), or None. Each worker must fit on one node, as Ray places it; nodes are
    filled greedily, which is exact for the one shape of worker a run asks for."""
    asked = {k: v for k, v in per_worker.items() if v > 0}
    placed = 0
    for node in nodes:
        fits = [int(node.get(k, 0) // v) for k, v in asked.items()]
        placed += min(fits) if fits else workers
    if placed >= workers:
        return None
    totals = {k: sum(n.get(k, 0) for n in nodes) for k in asked}
    missing = [f"{k}: {workers * v:g} asked ({v:g} x {workers} workers), {totals[k]:g} in the cluster" for k, v in asked.items()]
    largest = {k: max((n.get(k, 0) for n in nodes), default=0) for k in asked}
    return (
        f"the Ray cluster cannot place {workers} workers of {_resources(asked)} each: only {placed} fit on its "
        f"{len(nodes)} nodes ({'; '.join(missing)}; the largest node has {_resources(largest)})"
    )


def _resources(r: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in r.items()) or "nothing"


def alive_node_resources(job_address: str | None = None) -> list[dict[str, float]]:
    """Each alive node's total resources: of the cluster at `job_address` (through its dashboard), or
    of the one `ray.init` connected this process to."""
    import ray

    if job_address is None:
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    from ray.util.state import list_nodes

    # raise_on_missing_output=False: a node that left the cluster (its data gone with it) is not an error here.
    nodes = list_nodes(address=job_address, filters=[("state", "=", "ALIVE")], detail=True, timeout=10, raise_on_missing_output=False)
    return [dict(n.resources_total) for n in nodes]


@contextlib.contextmanager
def connected(address: str) -> Iterator[None]:
    """This process as a Ray driver of the cluster at `address` (Ray Client or GCS address)."""
    import ray

    for attempt in range(CONNECT_ATTEMPTS):
        try:
            ray.init(address=address, log_to_driver=False)
            break
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            # Ray Client starts a server process per connection, which now and then dies starting
            # ("Starting Ray client server failed", seen here about once in ten): try again.
            if attempt == CONNECT_ATTEMPTS - 1:
                raise ValueError(
                    f"cannot connect to the Ray cluster at {bounded(redacted(address))}: {bounded(redacted(str(e)))}"
                ) from None
            time.sleep(2)
    try:
        yield
    finally:
        ray.shutdown()


def ordered_map(function: Callable[..., Any], items: Iterable[tuple], window: int, num_cpus: float = 1) -> Iterator[Any]:
    """`function(*item)` for each item as a Ray task, results yielded in the items' order, at most
    `window` tasks in flight (so results waiting for the caller stay bounded). A task's exception
    is raised here, at its place in the order."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=3)(function)  # a task lost with its node runs again
    in_flight: deque = deque()
    for item in items:
        in_flight.append(remote.remote(*item))
        if len(in_flight) >= window:
            yield ray.get(in_flight.popleft())
    while in_flight:
        yield ray.get(in_flight.popleft())


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))
