"""Where a per-shard pass runs: this machine's processes, or a Ray cluster.

A per-shard pass is a picklable module-level function ``fn(state, task) -> summary``. It
reads one shard's inputs, writes that shard's outputs itself (to a temporary name, renamed
when complete, at the shard's sidecar location) and returns a small summary; large arrays
never travel back. ``state`` is what the pass's ``setup()`` built once per worker (a model,
the source being sharded; ``None`` without a setup), so a model is loaded once per worker,
not once per shard. An :class:`Engine` maps such a function over the pass's tasks:

* :class:`LocalEngine` runs them in this process (``processes=1``) or in forked processes
  (what the passes always did);
* :class:`ThreadEngine` runs them on threads of this process, for passes that mostly wait on
  the network (indexing shards at URLs);
* :class:`RayEngine` runs them on a pool of Ray actors (each calls ``setup`` once), with
  ``num_cpus`` / ``num_gpus`` per actor, and retries a task whose worker process died.

Both skip the tasks that ``done(i)`` says are finished (their outputs exist and verify),
record how many tasks ran and how many were skipped (:class:`MapReport`, in
:attr:`Engine.reports`), and raise an error a task raised as that same exception on the
driver: a :class:`~streamprune.errors.StreamPruneError` keeps its type and its message (which
names the shard), not a remote traceback.

Because every engine runs the same per-shard function on the same inputs, the files a pass
writes do not depend on the engine or on the number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import pickle
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ArgumentError, StreamPruneError
from .optional import require_ray

__all__ = ["ENGINES", "Engine", "LocalEngine", "MapReport", "RayEngine", "TaskFn", "ThreadEngine", "make_engine", "recorded_options", "same_options"]

log = logging.getLogger(__name__)

#: ``fn(state, task) -> summary``: one shard's work; writes its own outputs, returns something small.
TaskFn = Callable[[Any, Any], Any]
#: ``setup() -> state``: run once per worker before its first task (builds a model, opens a source).
Setup = Callable[[], Any]
#: Engine names accepted by :func:`make_engine` and ``--engine``.
ENGINES = ("local", "ray")


@dataclass
class MapReport:
    """What one :meth:`Engine.map` call did.

    Attributes:
        desc: The pass (``index``, ``shard``, ``embed``).
        engine: The engine's name.
        workers: Workers the tasks ran on (0 when nothing ran).
        ran: Task numbers that ran, in completion order.
        skipped: Task numbers skipped because their outputs were already complete.
        seconds: Wall time of the call.
    """

    desc: str
    engine: str
    workers: int = 0
    ran: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Tasks in the pass."""
        return len(self.ran) + len(self.skipped)

    def summary(self) -> str:
        """``"ran N, skipped M (already complete) of T"``: what a resumed pass did, for users."""
        return f"ran {len(self.ran)}, skipped {len(self.skipped)} (already complete) of {self.total}"


class Engine:
    """Runs a per-shard function over tasks; subclasses say where.

    A context manager: ``with make_engine("ray") as engine: ...`` closes it on leaving.

    Attributes:
        reports: One :class:`MapReport` per :meth:`map` call, oldest first.
    """

    name = "engine"

    def __init__(self) -> None:
        self.reports: list[MapReport] = []

    @property
    def last_report(self) -> MapReport | None:
        """The report of the latest :meth:`map` call (``None`` before the first)."""
        return self.reports[-1] if self.reports else None

    def threads_per_worker(self) -> int | None:
        """CPU threads a worker may use (``None``: leave the process's setting alone)."""
        return None

    def map(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        *,
        setup: Setup | None = None,
        done: Callable[[int], bool] | None = None,
        on_result: Callable[[int, Any], None] | None = None,
        desc: str = "tasks",
        gpu: bool = False,
        keep_results: bool = True,
    ) -> list[Any]:
        """Run ``fn(state, tasks[i])`` for every unfinished task; return the summaries.

        Args:
            fn: Module-level (picklable) per-shard function.
            tasks: One picklable argument per shard (small: paths, positions, a shard number).
            setup: Picklable ``setup() -> state``, run once per worker (``None``: state is ``None``).
            done: ``done(i)`` is true when task ``i``'s outputs already exist and verify; such
                tasks are skipped (checked here, on the driver, before anything is scheduled).
            on_result: Called on the driver as ``on_result(i, summary)`` when task ``i`` finishes.
                New tasks are handed to workers only as results are delivered (a few per worker
                ahead), so a slow ``on_result`` slows the pass instead of piling up outputs.
            desc: Name of the pass, for the report and the log.
            gpu: The pass can use a GPU (a Ray actor then asks for one when the cluster has GPUs).
            keep_results: Hold every summary for the returned list; ``False`` for a pass whose
                ``on_result`` reduces them (a histogram per shard), so the driver holds one at a time.

        Returns:
            ``summaries[i]`` for every task; ``None`` for skipped ones (and for all without ``keep_results``).

        Raises:
            Exception: The first error a task raised, re-raised as itself.
        """
        tasks = list(tasks)
        t0 = time.perf_counter()
        skipped = [i for i in range(len(tasks)) if done is not None and done(i)]
        finished = set(skipped)
        todo = [i for i in range(len(tasks)) if i not in finished]
        report = MapReport(desc=desc, engine=self.name, skipped=skipped)
        self.reports.append(report)
        results: list[Any] = [None] * len(tasks)

        def deliver(i: int, summary: Any) -> None:
            if keep_results:
                results[i] = summary
            report.ran.append(i)
            if on_result is not None:
                on_result(i, summary)

        if todo:
            report.workers = self._run(fn, tasks, todo, setup, deliver, gpu)
        report.seconds = time.perf_counter() - t0
        log.info("%s: %d task(s) ran, %d skipped (already complete) on %s in %.1f s", desc, len(todo), len(skipped), self.name, report.seconds)
        return results

    def _run(
        self, fn: TaskFn, tasks: list[Any], todo: list[int], setup: Setup | None, deliver: Callable[[int, Any], None], gpu: bool
    ) -> int:
        """Run tasks ``todo`` and ``deliver`` each summary; return the number of workers used."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine started (a local Ray instance); nothing by default."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        # ``with make_engine(...) as engine:`` closes it however the pass ends
        self.close()


# --------------------------------------------------------------------------------------------
# local processes

# The setup of the pass being run, and the state it built in this worker process. Set before
# the pool forks, so a large setup (the in-memory source being sharded) reaches the workers
# without being pickled.
_LOCAL_SETUP: Setup | None = None
_LOCAL_STATE: Any = None


def _init_local_worker() -> None:
    global _LOCAL_STATE
    _LOCAL_STATE = _LOCAL_SETUP() if _LOCAL_SETUP is not None else None


def _call_local(fn: TaskFn, task: Any) -> Any:
    return fn(_LOCAL_STATE, task)


def _worker_count(workers: int) -> int:
    """``workers`` (processes, threads or actors) as an int, checked: the ``--workers`` every engine takes."""
    if workers < 1:
        raise ArgumentError(f"workers={workers}: must be at least 1")
    return int(workers)


class LocalEngine(Engine):
    """Tasks in this process (``processes=1``) or in forked worker processes.

    Args:
        processes: Worker processes (1: run in this process, in task order).
    """

    name = "local"
    #: Tasks per worker process handed out ahead of the results delivered.
    WINDOW = 2

    def __init__(self, processes: int = 1) -> None:
        super().__init__()
        self.processes = _worker_count(processes)

    def __repr__(self) -> str:
        return f"LocalEngine(processes={self.processes})"

    def threads_per_worker(self) -> int | None:
        """CPU cores divided among the worker processes (``None`` in this process)."""
        if self.processes == 1:
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.processes)

    def _run(self, fn, tasks, todo, setup, deliver, gpu) -> int:
        global _LOCAL_SETUP
        if self.processes == 1 or len(todo) == 1:
            state = setup() if setup is not None else None
            for i in todo:
                deliver(i, fn(state, tasks[i]))
            return 1
        workers = min(self.processes, len(todo))
        _LOCAL_SETUP = setup
        try:
            # fork shares the setup (and what it refers to) with the workers without pickling it
            pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_init_local_worker)
            try:
                # A task is handed out only as an earlier result is delivered, at most WINDOW per
                # worker ahead, so a slow on_result (an upload) holds the writers back and their
                # finished-but-undelivered outputs stay few, as with Ray's actor pool.
                waiting = iter(todo)
                futures: dict[cf.Future, int] = {}
                for i in itertools.islice(waiting, self.WINDOW * workers):
                    futures[pool.submit(_call_local, fn, tasks[i])] = i
                while futures:
                    ready, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
                    for future in ready:
                        following = next(waiting, None)
                        if following is not None:
                            futures[pool.submit(_call_local, fn, tasks[following])] = following
                        deliver(futures.pop(future), future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # a failed pass stops at the first error
                raise
            pool.shutdown(wait=True)
        finally:
            _LOCAL_SETUP = None
        return workers


class ThreadEngine(Engine):
    """Tasks on a pool of threads in this process: for passes that wait on I/O, not on the CPU.

    The setup runs once, in this thread, and its state is shared by every task (it must be
    safe to share). Tasks start in order; summaries are delivered as tasks finish.

    Args:
        threads: Threads running tasks at once.
    """

    name = "threads"

    def __init__(self, threads: int = 8) -> None:
        super().__init__()
        self.threads = _worker_count(threads)

    def __repr__(self) -> str:
        return f"ThreadEngine(threads={self.threads})"

    def _run(self, fn, tasks, todo, setup, deliver, gpu) -> int:
        state = setup() if setup is not None else None
        workers = min(self.threads, len(todo))
        pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="streamprune-task")
        try:
            futures = {pool.submit(fn, state, tasks[i]): i for i in todo}
            for future in cf.as_completed(futures):
                deliver(futures[future], future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a failed pass stops at the first error
            raise
        pool.shutdown(wait=True)
        return workers


# --------------------------------------------------------------------------------------------
# Ray


def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling (to be re-raised on the driver), else a plain error saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # an exception holding an unpicklable object: keep its type name and message
        return StreamPruneError(f"{type(exc).__name__}: {exc}")
    return exc


class RayWorker:
    """One Ray actor: builds a pass's state once (``setup()``), then runs that pass's per-shard calls on it.

    The actor outlives a pass: the engine reuses its actors for the next pass, so a worker
    process starts (and imports torch) once per engine, not once per pass. It keeps the state
    of the latest pass only.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.state: Any = None

    def run(self, i: int, key: str, setup_ref: list[Any], fn: TaskFn, task: Any) -> tuple[int, bool, Any]:
        """``(i, ok, summary or exception)``; an error travels back as a value, re-raised on the driver.

        Args:
            i: Task number.
            key: The pass; its state is built on the first call of the pass (again after a restart).
            setup_ref: ``[object ref]`` of the pass's setup, in a list so Ray hands over the
                reference and the actor fetches the setup only when it builds the state.
            fn: The per-shard function.
            task: Its argument.
        """
        try:
            if key != self.key:
                self.state, self.key = None, None  # release the previous pass's state (a model) first
                setup = require_ray().get(setup_ref[0])
                self.state, self.key = (setup() if setup is not None else None), key
            return i, True, fn(self.state, task)
        except Exception as exc:  # re-raised as itself by RayEngine, not as a RayTaskError wall of text
            log.debug("task %d failed", i, exc_info=True)
            return i, False, _portable(exc)


# This driver's actors, by (Ray job, CPUs, GPUs per actor): kept from pass to pass and shared by
# every RayEngine of the process, so two engines never wait for each other's idle actors' CPUs.
_RAY_ACTORS: dict[tuple[str, float, float], list[Any]] = {}


class RayEngine(Engine):
    """Tasks on a pool of Ray actors: one call per shard, a model built once per actor.

    Args:
        address: Ray cluster to join (``"auto"``, ``"ray://head:10001"``, ``"head:6379"``).
            ``None``: Ray's own rule, i.e. ``RAY_ADDRESS`` if set, else a cluster started on
            this machine with ``ray start`` if there is one, else a new local instance.
        workers: Actors (``None``: the cluster's CPUs / ``num_cpus``, or GPUs / ``num_gpus``
            for a pass that uses a GPU).
        num_cpus: CPUs each actor reserves.
        num_gpus: GPUs each actor of a GPU pass reserves (``None``: 1 when the cluster has
            GPUs, else 0).
        max_retries: Times a task whose worker process died is retried (on a restarted actor).
        runtime_env: Ray runtime environment for the workers (``env_vars``, ``py_modules``,
            ``pip``); on an existing cluster it is how the workers get this code.
        init_kwargs: Further :func:`ray.init` arguments (``num_cpus=2`` for a small local instance).

    Raises:
        MissingExtraError: Ray is not installed (names the ``ray`` extra).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        num_cpus: float = 1.0,
        num_gpus: float | None = None,
        max_retries: int = 3,
        runtime_env: dict[str, Any] | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        require_ray()  # fail at once, naming the extra, not when the first pass starts
        self.address = address
        self.workers = None if workers is None else _worker_count(workers)
        self.num_cpus = float(num_cpus)
        self.num_gpus = num_gpus
        self.max_retries = int(max_retries)
        self.runtime_env = runtime_env
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, workers={self.workers})"

    def connect(self) -> Any:
        """Join (or start) the Ray cluster unless this process already has; return the ``ray`` module."""
        ray = require_ray()
        if not ray.is_initialized():
            kwargs = dict(self.init_kwargs)
            if self.runtime_env is not None:
                kwargs["runtime_env"] = self.runtime_env
            ray.init(address=self.address, **kwargs)
            self._started = True
            log.info("ray: connected, resources %s", ray.cluster_resources())
        return ray

    def release(self) -> None:
        """End this process's Ray actors (the next pass starts new ones)."""
        ray = require_ray()
        for actors in _RAY_ACTORS.values():
            for actor in actors:
                with contextlib.suppress(Exception):  # already gone with its cluster
                    ray.kill(actor)
        _RAY_ACTORS.clear()

    def close(self) -> None:
        """End the actors, and shut down the Ray connection this engine opened (a cluster it joined keeps running)."""
        if require_ray().is_initialized():
            self.release()
        if self._started:
            require_ray().shutdown()
            self._started = False

    def threads_per_worker(self) -> int | None:
        """The CPUs each actor reserves (Ray also sets ``OMP_NUM_THREADS`` to this)."""
        return max(1, int(self.num_cpus))

    def _run(self, fn, tasks, todo, setup, deliver, gpu) -> int:
        ray = self.connect()
        # Deferred with ray itself: an optional extra, imported only when the Ray engine runs.
        from ray.util import ActorPool

        resources = ray.cluster_resources()
        num_gpus = 0.0  # only a pass that can use a GPU asks for one
        if gpu:
            num_gpus = self.num_gpus if self.num_gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        if self.workers is not None:
            workers = self.workers
        elif num_gpus:
            workers = int(resources.get("GPU", 0) // num_gpus)
        else:
            workers = int(resources.get("CPU", 1) // max(self.num_cpus, 1e-9))
        workers = max(1, min(workers, len(todo)))
        actors = _RAY_ACTORS.setdefault((ray.get_runtime_context().get_job_id(), self.num_cpus, num_gpus), [])
        if len(actors) < workers:
            actor_cls = ray.remote(RayWorker).options(
                num_cpus=self.num_cpus,
                num_gpus=num_gpus,
                max_restarts=self.max_retries,  # a worker process that dies is restarted (its state rebuilt) ...
                max_task_retries=self.max_retries,  # ... and the call it was running is retried there
            )
            actors += [actor_cls.remote() for _ in range(workers - len(actors))]
        setup_ref = ray.put(setup)  # one copy in the object store, however many actors read it
        key = uuid.uuid4().hex
        pool = ActorPool(actors[:workers])
        try:
            for i in todo:
                pool.submit(lambda actor, item: actor.run.remote(item[0], key, [setup_ref], fn, item[1]), (i, tasks[i]))
            while pool.has_next():
                i, ok, value = pool.get_next_unordered()
                if not ok:
                    raise value
                deliver(i, value)
        except BaseException:
            self.release()  # the actors may still hold queued calls of the failed pass
            raise
        return workers


def make_engine(
    engine: str | Engine | None = None, *, workers: int | None = None, address: str | None = None, **ray_options: Any
) -> Engine:
    """The engine a pass runs on, from a name, an engine, or ``None``.

    Args:
        engine: ``"local"`` or ``None`` (this machine's processes), ``"ray"``, or an :class:`Engine` (returned as is).
        workers: Local processes (default 1), or Ray actors (default: the cluster's CPUs).
        address: Ray cluster address (only with ``"ray"``; see :class:`RayEngine`).
        **ray_options: Further :class:`RayEngine` options.

    Returns:
        The engine.

    Raises:
        ValueError: Unknown engine name, or ``address`` given for the local engine.
        MissingExtraError: ``"ray"`` without the ``ray`` extra installed.
    """
    if isinstance(engine, Engine):
        return engine
    name = engine or "local"
    if name == "local":
        if address:
            raise ArgumentError("--ray-address needs --engine ray")
        return LocalEngine(workers or 1)
    if name == "ray":
        return RayEngine(address, workers, **ray_options)
    raise ArgumentError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}")


def recorded_options(out_dir: str | os.PathLike, name: str) -> Any:
    """The options a resumable pass recorded in ``out_dir/name`` (``None`` when absent or unreadable)."""
    try:
        with open(os.path.join(os.fspath(out_dir), name), "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def same_options(out_dir: str, name: str, options: dict[str, Any]) -> bool:
    """Record a resumable pass's options in ``out_dir/name``; return whether the previous run used the same.

    A rerun may keep a previous run's per-shard outputs only when they were made with the same
    options; the record is a plain write, since a torn file only means the next run does not resume.
    """
    path = os.path.join(out_dir, name)
    same = recorded_options(out_dir, name) == options
    if not same:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(options, fh)
    return same
