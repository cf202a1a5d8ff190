"""The result of one check, shared by `zk0 doctor` and `zk0 dataset validate`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"  # not applicable here (e.g. a server check on a node)


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str  # what was found, in one line
    fix: str = ""  # for WARN and FAIL: the command or concrete step that mends it
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable findings for --json

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


def ok(name: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(name, Status.OK, detail, data=data)


def warn(name: str, detail: str, fix: str, **data: Any) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, fix, data=data)


def fail(name: str, detail: str, fix: str, **data: Any) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail, fix, data=data)


def skip(name: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(name, Status.SKIP, detail, data=data)


def summarize(results: list[CheckResult]) -> dict[str, int]:
    return {status.value: sum(r.status is status for r in results) for status in Status}
