"""Collect's :class:`~rlhpo.collect.Executor` on Ray: work items run as Ray core remote tasks, a few per task.

Ray is an extra (``pip install 'rlhpo[ray]'``), imported only when this executor starts. The
driver keeps what :class:`~rlhpo.collect.LocalExecutor` gives collect: results come back to
the driver, which stays the only writer of the store; workers train with one torch thread each.

Batches. Items go to Ray in tasks of :func:`batch_size` items: ``ceil(items / (16 x CPUs))``,
at least 1 and at most 8. Ray costs about 1 ms per task (measured on 2 CPUs), about 1% of the
tiniest training runs (digits with 200 examples: 0.1 to 0.2 s), so batches stay small: at
least 16 per CPU, so that the last ones end close together, and at most 8 items, so that a
dead worker costs at most 8 reruns and the store and the progress bar hear of finished runs
often. At most :data:`IN_FLIGHT_PER_CPU` batches per CPU are submitted at a time, so each CPU
has its next batch queued and Ctrl-C has little to cancel.

Retries. Ray runs a task again, up to :data:`MAX_RETRIES` times, when its worker process or node
dies. A batch's result reaches the driver once (its object ref leaves the pending list when it
is ready), so each run is written once: a retried batch's first attempt never returned, and the
store's ``put_run`` is keyed by (task, config, seed) and keeps the first writer besides.

Environment. A local instance this executor starts inherits this process's environment; tasks
on a cluster get the driver's ``RLHPO_*``, ``HF_*``, ``TOKENIZERS_*`` and ``TRANSFORMERS_*``
variables through Ray's ``runtime_env``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rlhpo.errors import RlhpoError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

INSTALL = "pip install 'rlhpo[ray]'"
BATCHES_PER_CPU = 16  # a balanced tail: the last batch is a small part of a CPU's share
MAX_BATCH = 8  # a dead worker costs at most this many reruns
IN_FLIGHT_PER_CPU = 2  # one running and one queued per CPU
MAX_RETRIES = 3  # runs of a batch again when its worker dies (Ray's default for tasks)
# Environment that must reach the workers, wherever they run (caches, offline flags, data folder).
FORWARDED_ENV = ("RLHPO_", "HF_", "TOKENIZERS_", "TRANSFORMERS_")


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`RlhpoError` that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RlhpoError(
            f"--executor ray needs Ray, which is not installed ({e}); install it with: {INSTALL}"
        ) from None
    return ray


def check_reachable(address: str) -> None:
    """Fail at once when nothing listens at ``HOST:PORT`` (Ray itself would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RlhpoError(
            f"--address must be 'auto' or HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), but got {address!r}."
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise RlhpoError(
            f"Nothing answers at --address {address!r} ({e}). Start the cluster with `ray start --head` there, "
            "or leave out --address to run a local Ray instance."
        ) from None


def batch_size(n_items: int, cpus: int) -> int:
    """Items per Ray task: ``ceil(n_items / (16 * cpus))``, at least 1 and at most 8."""
    return max(1, min(MAX_BATCH, math.ceil(n_items / (BATCHES_PER_CPU * max(cpus, 1)))))


def forwarded_env() -> dict[str, str]:
    """This process's variables that workers need (``RLHPO_*``, ``HF_*``, ``TOKENIZERS_*``, ...)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def run_batch(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Run ``fn`` on each item in this Ray worker, with one torch thread as a local worker has."""
    import torch

    torch.set_num_threads(1)  # one per CPU Ray gave this task: no oversubscription, repeatable numerics
    return [fn(item) for item in items]


class RayExecutor:
    """Runs items as Ray remote tasks: on a local Ray instance, or on the cluster at ``address``.

    Without ``address`` it starts a local instance with ``num_cpus`` CPUs and no dashboard, and
    shuts it down when the work is done or stopped. With ``address`` (``"auto"`` or
    ``"HOST:PORT"``) it connects to a running cluster and uses all its CPUs. When Ray is already
    initialised in this process, it uses that and leaves it running. With ``keep``, a
    ``map_unordered`` that finished leaves the connection (and the instance it started) up for
    the next one, until :meth:`shutdown` (``tune --workers`` maps a round at a time).
    """

    def __init__(self, address: str | None = None, num_cpus: int = 1, keep: bool = False) -> None:
        if num_cpus < 1:
            raise RlhpoError(f"A local Ray instance needs at least 1 CPU, but got {num_cpus=}.")
        self.ray = import_ray()  # fail before any work is planned
        if address is not None and address != "auto":
            check_reachable(address)
        self.address = address
        self.num_cpus = num_cpus
        self.keep = keep
        self._owned = False  # whether shutdown() ends our connection (and the instance we started)
        self._pending: list[Any] = []

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        if not items:
            return
        ray = self.ray
        self._connect()
        finished = False
        try:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            size = batch_size(len(items), cpus)
            batches = [list(items[i : i + size]) for i in range(0, len(items), size)]
            options = {"num_cpus": 1, "max_retries": MAX_RETRIES}
            if not (self._owned and self.address is None):  # a local instance we started inherits our environment
                options["runtime_env"] = {"env_vars": forwarded_env()}
            remote = ray.remote(run_batch).options(**options)
            log.info("ray: %d items in %d tasks of up to %d on %d CPUs", len(items), len(batches), size, cpus)
            fn_ref = ray.put(fn)
            queued = iter(batches)
            sizes: dict[Any, int] = {}  # pending ref -> its number of items

            def submit() -> None:
                batch = next(queued, None)
                if batch is not None:
                    ref = remote.remote(fn_ref, batch)
                    sizes[ref] = len(batch)
                    self._pending.append(ref)

            for _ in range(IN_FLIGHT_PER_CPU * cpus):
                submit()
            while self._pending:
                (ready,), self._pending = ray.wait(self._pending, num_returns=1)
                submit()  # first: the CPU that finished has work while the driver writes
                yield from self._results(ready, sizes.pop(ready))
            finished = True
        finally:
            if not (self.keep and finished):  # an error or Ctrl-C stops the work all the same
                self.shutdown()

    def _results(self, ref: Any, n: int) -> list[Any]:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError:
            raise  # fn itself raised, as a local worker's future would
        except ray.exceptions.RayError as e:
            raise RlhpoError(
                f"A Ray task of {n} runs was lost, after up to {MAX_RETRIES} retries ({type(e).__name__}: {e}); "
                "the runs finished so far are kept: run the same command again to resume."
            ) from None

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return  # someone else's: use it, leave it running
        try:
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=self.address, logging_level=logging.WARNING)
        except ConnectionError as e:
            raise RlhpoError(
                f"Could not connect to a Ray cluster at --address {self.address!r}: {str(e).rstrip('.')}. Start "
                "one with `ray start --head`, or leave out --address to run a local Ray instance."
            ) from None
        self._owned = True

    def shutdown(self) -> None:
        """Stop the work in flight: end our Ray job (and the instance we started), or cancel our tasks on another's."""
        ray = self.ray
        pending, self._pending = self._pending, []
        if self._owned:
            # Ending the job stops its tasks; cancelling them first can crash Ray 2.60's driver when a
            # task finishes meanwhile ("Tried to complete task that was not pending").
            self._owned = False
            with _sigint_ignored():  # a Ctrl-C halfway through leaves Ray to exit the process with status 1
                ray.shutdown()
            return
        try:
            for ref in pending:  # a Ray someone else started keeps running: stop our tasks on it
                ray.cancel(ref)
        except ray.exceptions.RayError as e:
            log.warning("could not cancel %d pending Ray tasks: %s", len(pending), e)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C for the block (in the main thread, the only one that receives it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
