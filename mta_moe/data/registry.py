"""Task names and task types found in the data, checked against the configured types, with stable ids."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from ..names import name_problem
from .formats import DataError


class TaskRegistry:
    """Task name -> (task id, task type, task-type id). Task ids follow sorted names, so they do not
    depend on file order, or an explicit ``order`` (a model that routes by task fixes it in ``mta.tasks``);
    task-type ids are positions in ``mta.task_types``."""

    def __init__(
        self, task_types: Sequence[str], task_to_type: Mapping[str, str], order: Sequence[str] | None = None
    ) -> None:
        self.task_types = list(task_types)
        for name in (*task_to_type, *self.task_types):
            problem = name_problem(name)
            if problem is not None:
                raise DataError(f"task or task type name: {problem}")
        bad = {t: ty for t, ty in task_to_type.items() if ty not in self.task_types}
        if bad:
            name, kind = next(iter(bad.items()))
            raise DataError(
                f"task {name!r} has type {kind!r}, which is not configured; configured task types: {self.task_types}"
            )
        if order is not None and sorted(order) != sorted(task_to_type):
            raise DataError(f"task order {list(order)} does not name exactly the tasks {sorted(task_to_type)}")
        self.names = list(order) if order is not None else sorted(task_to_type)
        self.type_of = {name: task_to_type[name] for name in self.names}
        self._ids = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_rows(
        cls, task_types: Sequence[str], sources: Iterable[tuple[str, Iterable[str], Iterable[str]]]
    ) -> "TaskRegistry":
        """``sources``: (source name, task column, type column); a task seen with two types is an error."""
        seen: dict[str, tuple[str, str]] = {}
        for source, tasks, types in sources:
            for task, kind in zip(tasks, types):
                first = seen.setdefault(task, (kind, source))
                if first[0] != kind:
                    raise DataError(
                        f"{source}: task {task!r} has type {kind!r} here but {first[0]!r} in "
                        f"{first[1]}; a task has exactly one type"
                    )
        return cls(task_types, {task: kind for task, (kind, _) in seen.items()})

    def task_id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise DataError(f"task {name!r} is not among the training tasks {self.names}") from None

    def in_order(self, names: Sequence[str], key: str = "mta.tasks") -> "TaskRegistry":
        """This registry with task ids in the order of ``names`` (which must be exactly its tasks)."""
        if sorted(names) != sorted(self.names):
            extra, missing = sorted(set(names) - set(self.names)), sorted(set(self.names) - set(names))
            raise DataError(
                f"{key}: the model's tasks {list(names)} are not the data's tasks {self.names} "
                f"(not in the data: {extra}; not in the model: {missing})"
            )
        return TaskRegistry(self.task_types, self.type_of, order=names)

    def type_id(self, name: str) -> int:
        return self.task_types.index(self.type_of[name])

    def check_known(self, source: str, tasks: Iterable[str]) -> None:
        """Evaluation data may only hold tasks the model was trained on."""
        unknown = sorted(set(tasks) - set(self.names))
        if unknown:
            raise DataError(f"{source}: tasks {unknown} are not among the training tasks {self.names}")

    def to_dict(self) -> dict[str, object]:
        return {"task_types": self.task_types, "tasks": self.type_of}
