"""Lost intermediates: a kept output whose every copy is gone is made again by re-running its producer.

Runs in the client's engine thread (``schedule/engine.py``). A task that wrote
``Output(path, keep=True)`` leaves it in its node's cache only
(``data/replicas.py`` knows who holds it). When every node holding it has left
(killed, scaled away) and a later task reads it, that task cannot be staged
anywhere. :class:`Rebuilds` notices this when the task is about to be sent to a
node (or when its staging failed because the last holder died meanwhile), parks
the task, and hands the engine a re-run of the producer: a copy of the
producer's task under a new id (:data:`REBUILD_ID0` on), run like any task (it
stages its own inputs, and a lost input of its own is rebuilt the same way).
When the re-run succeeds, the waiting tasks go back to the head of the queue,
each input now naming the new copy (a producer that does not write the same
bytes twice gives a new digest: the task reads what the re-run wrote). When it
fails, they fail saying so. One re-run serves every task waiting on any output
of that producer.

Each waiting task's report lists what was rebuilt for it in
``report.extra["rebuilt"]``: the path, the producer's task id, and the re-run's.

Does not cover: who holds what (``replicas.py``), moving bytes (``transfer/``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from loadmaster.data.refs import DataReport, InputRef
from loadmaster.data.replicas import ReplicaTable

REBUILD_ID0 = 1 << 40
"""Task ids of producers' re-runs start here (the executor's own ids count up from 1)."""


@dataclass(slots=True)
class Rerun:
    """One producer's re-run and the tasks waiting for it."""

    spec: Any  # the re-run's TaskSpec
    producer: int  # the original producer's task id
    digests: set[str]  # the lost outputs it makes again
    waiting: list[Any] = field(default_factory=list)  # TaskSpecs


class Rebuilds:
    """Producers of kept outputs, and their re-runs (see the module docstring; engine thread only)."""

    def __init__(self, replicas: ReplicaTable) -> None:
        self.replicas = replicas
        self.producers: dict[str, Any] = {}  # kept output's digest -> the TaskSpec that wrote it
        self.reruns: dict[int, Rerun] = {}  # the re-run's task id -> it
        self._by_producer: dict[int, int] = {}  # producer's task id -> its live re-run's task id
        self._blocked: dict[int, set[str]] = {}  # waiting task id -> digests it still waits for
        self._ids = itertools.count(REBUILD_ID0)

    def produced(self, task: Any, report: DataReport) -> None:
        """``task`` succeeded and kept these outputs: it is what makes them again."""
        for p in report.outputs:
            if p.kept:
                self.producers[p.digest] = task

    def lost(self, task: Any) -> list[InputRef]:
        """``task``'s inputs that are kept outputs no node holds (nor is getting) any more."""
        data = task.data
        if data is None or not self.producers:
            return []
        return [ref for ref in data.inputs if ref.digest in self.producers and not self.replicas.states(ref.digest)]

    def park(self, task: Any, lost: list[InputRef]) -> list[Any]:
        """``task`` waits for ``lost`` to be made again; return the re-runs to queue (those not queued yet)."""
        new = []
        waits = self._blocked.setdefault(task.task_id, set())
        notes = task.extra.setdefault("rebuilt", [])
        for ref in lost:
            spec = self.producers[ref.digest]
            producer = spec.extra.get("rebuild_of", spec.task_id)  # a re-run's own re-run names the first
            rid = self._by_producer.get(producer)
            if rid is None:
                rid = next(self._ids)
                self.reruns[rid] = Rerun(dataclasses.replace(spec, task_id=rid, attempts=0,
                                                             extra={"rebuild_of": producer}), producer, set())
                self._by_producer[producer] = rid
                new.append(self.reruns[rid].spec)
            rerun = self.reruns[rid]
            rerun.digests.add(ref.digest)
            if task not in rerun.waiting:
                rerun.waiting.append(task)
            if ref.digest not in waits:
                waits.add(ref.digest)
                notes.append({"path": ref.key, "producer": producer, "rerun": rid})
        return new

    def is_rerun(self, task_id: int) -> bool:
        """Whether ``task_id`` is a producer's re-run this table started."""
        return task_id in self.reruns

    def finished(self, task_id: int, report: DataReport | None, error: str) -> tuple[list[Any], list[Any], str]:
        """The re-run ``task_id`` ended: (tasks that go now, tasks that fail, why they fail).

        ``report`` is the re-run's data report when it succeeded, ``error`` why it failed otherwise.
        """
        rerun = self.reruns.pop(task_id)
        self._by_producer.pop(rerun.producer, None)
        made = {p.key: p for p in report.outputs if p.kept} if report is not None and not error else {}
        go, fail = [], []
        for task in rerun.waiting:
            waits = self._blocked.get(task.task_id)
            if waits is None:
                continue  # failed already, with another of its inputs' re-runs
            refs = []
            missing = False
            for ref in task.data.inputs:
                if ref.digest in rerun.digests:
                    p = made.get(ref.key)
                    if p is None:
                        missing = True
                    else:  # the new copy (the same digest when the producer wrote the same bytes)
                        waits.discard(ref.digest)
                        ref = dataclasses.replace(ref, digest=p.digest, size=p.size, kind=p.kind,
                                                  sources=self.replicas.sources(p.digest))
                refs.append(ref)
            task.data = dataclasses.replace(task.data, inputs=tuple(refs))
            if missing:
                self._blocked.pop(task.task_id, None)
                fail.append(task)
            elif not waits:
                self._blocked.pop(task.task_id, None)
                go.append(task)
        why = error or "it did not write the output again"
        return go, fail, (f"its input was a kept output of task {rerun.producer} lost with every node holding it; "
                          f"re-running that task (task {task_id}) failed: {why}")
