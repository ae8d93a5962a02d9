"""Task wrappers the engine tests run on Ray workers (importable there: tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
from typing import Any

from streamprune.errors import StreamPruneError


def task_name(task: Any) -> str:
    """A file-name-safe name of a task (a shard number, or the index path of an index task)."""
    return str(task) if isinstance(task, int) else os.path.basename(str(task[1]))


class DieOnce:
    """Runs ``fn`` but kills its own worker process (``os._exit``) on the first attempt of each task.

    A marker file per task in ``marker_dir`` says the attempt was made, so the retry runs ``fn``.
    """

    def __init__(self, fn, marker_dir: str) -> None:
        self.fn, self.marker_dir = fn, marker_dir

    def __call__(self, state: Any, task: Any) -> Any:
        marker = os.path.join(self.marker_dir, task_name(task))
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-task, as on a lost node
        return self.fn(state, task)


class StopAt:
    """Runs ``fn`` for the tasks before ``stop`` and fails the others: a driver interrupted half-way."""

    def __init__(self, fn, stop: int) -> None:
        self.fn, self.stop = fn, stop

    def __call__(self, state: Any, task: int) -> Any:
        if task >= self.stop:
            raise StreamPruneError(f"interrupted before shard {task}")
        return self.fn(state, task)
