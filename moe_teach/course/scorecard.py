"""The scorecard of ``moe-teach check``: one verdict per task, and the cells that raised."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .checks import DONE, FAILED, NOT_DONE

NOT_RUN = "not run"
STATUSES = (DONE, FAILED, NOT_DONE, NOT_RUN)
_SYMBOLS = {DONE: "✅", FAILED: "❌", NOT_DONE: "⏳", NOT_RUN: "·"}


class GradingError(RuntimeError):
    """The notebook could not be read or executed."""


@dataclass
class TaskScore:
    task: str
    status: str
    message: str = ""
    hint: str = ""
    key: str = ""


@dataclass
class Scorecard:
    notebook: str
    tasks: list[TaskScore]
    cell_errors: list[str] = field(default_factory=list)

    @property
    def num_done(self) -> int:
        return sum(t.status == DONE for t in self.tasks)

    @property
    def all_done(self) -> bool:
        return bool(self.tasks) and self.num_done == len(self.tasks)

    def statuses(self) -> dict[str, str]:
        return {t.task: t.status for t in self.tasks}

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"Scorecard for {self.notebook}"]
        width = max((len(t.task) for t in self.tasks), default=0)
        for t in self.tasks:
            detail = f": {t.message}" if t.status in (FAILED, NOT_RUN) and t.message else ""
            lines.append(f"  {_SYMBOLS.get(t.status, '?')} {t.task:<{width}}  {t.status}{detail}")
            if t.status == FAILED and t.hint:
                lines.append(f"      hint: {t.hint}")
        for error in self.cell_errors:
            lines.append(f"  ! {error}")
        lines.append(f"{self.num_done} of {len(self.tasks)} tasks done.")
        return "\n".join(lines)



@dataclass(frozen=True)
class TaskSpec:
    """One task of a lesson: the task's name and the name of the function the learner writes for it."""

    task: str
    function: str
