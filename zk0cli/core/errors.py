"""One error type for every known failure, carrying its exit code and a hint."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Stable exit codes, documented in the README. Keep this list short."""

    OK = 0
    FAILED = 1  # a check or a run failed
    BAD_INPUT = 2  # bad argument, URI or config file
    UNREACHABLE = 3  # network peer unreachable, or a timeout
    ENV_NOT_READY = 4  # the machine lacks something zk0 needs (GPU driver, disk, keys...)


class Zk0Error(Exception):
    """A failure zk0 understands: printed as one line plus a hint, never a traceback."""

    def __init__(self, message: str, *, hint: str = "", code: ExitCode = ExitCode.FAILED):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def to_dict(self) -> dict[str, str | int]:
        return {"error": self.message, "hint": self.hint, "exit_code": int(self.code)}


def bad_input(message: str, hint: str = "") -> Zk0Error:
    return Zk0Error(message, hint=hint, code=ExitCode.BAD_INPUT)


def unreachable(message: str, hint: str = "") -> Zk0Error:
    return Zk0Error(message, hint=hint, code=ExitCode.UNREACHABLE)


def env_not_ready(message: str, hint: str = "") -> Zk0Error:
    return Zk0Error(message, hint=hint, code=ExitCode.ENV_NOT_READY)
