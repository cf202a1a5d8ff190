"""How commands run a service: in the foreground, detached, or as a systemd unit; and the two ``python -m``
entry points (``run``: a detached supervisor, ``preload``: a warm spare)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zk0cli.core.childlog import child_logger
from zk0cli.core.errors import ExitCode, Zk0Error, env_not_ready, unreachable
from zk0cli.core.files import atomic_write_json, read_json
from zk0cli.core.paths import Paths
from zk0cli.services.supervisor.lock import already_running, lock_holder, stop_command
from zk0cli.services.supervisor.logfile import tail_lines
from zk0cli.services.supervisor.runtime import EventSink, Supervisor
from zk0cli.services.supervisor.spec import ServiceFiles, ServiceSpec, check_service_name
from zk0cli.services.supervisor.state import read_state

USAGE = "usage: python -m zk0cli.services.supervisor run SPEC.json PATHS_JSON | preload MODULE:FUNC -- ARGV..."


def run_foreground(paths: Paths, spec: ServiceSpec, on_event: EventSink) -> None:
    """Supervise in this process until Ctrl-C (returns) or failure (raises Zk0Error with the reason)."""
    _prepare(paths, spec)
    supervisor = Supervisor(paths, spec, detached=False, on_event=on_event)
    if supervisor.run() != 0:
        raise failure_error(spec.name, supervisor.failed_reason, supervisor.failed_lines, supervisor.files.log)


def start_detached(
    paths: Paths,
    spec: ServiceSpec,
    *,
    wait_s: float = 120.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Start a supervisor in a new session (it survives the terminal); return once the service is healthy."""
    files = ServiceFiles.of(paths, spec.name)
    holder = lock_holder(paths, spec.name)
    if holder:
        raise already_running(spec.name, holder)
    _prepare(paths, spec)
    atomic_write_json(files.spec, spec.to_dict())
    files.supervisor_out.parent.mkdir(parents=True, exist_ok=True)
    with open(files.supervisor_out, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "zk0cli.services.supervisor", "run", str(files.spec), paths.to_json()],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=paths.state_dir,  # never pin the caller's directory
        )
    deadline = time.monotonic() + wait_s
    last = None
    while time.monotonic() < deadline:
        code = popen.poll()
        state = read_state(paths, spec.name)
        fresh = state if state is not None and state.get("supervisor", {}).get("pid") == popen.pid else None
        if fresh is not None and fresh != last and on_progress is not None:
            on_progress(fresh)
        last = state
        if fresh is not None and fresh["state"] == "healthy":
            return fresh
        if code is not None:
            raise _exit_error(paths, spec, code, fresh)
        time.sleep(0.2)
    raise unreachable(
        f"{spec.name} did not become healthy within {wait_s:g} s (it keeps trying in the background)",
        hint=f"watch it with `zk0 logs {_logs_target(spec.name)} -f`, or `{stop_command(spec.name)}`",
    )


def _exit_error(paths: Paths, spec: ServiceSpec, code: int, state: dict[str, Any] | None) -> Zk0Error:
    """Why a detached supervisor exited before its service was healthy."""
    files = ServiceFiles.of(paths, spec.name)
    if state is not None and state["state"] == "failed":
        return failure_error(spec.name, state["reason"], state.get("last_log_lines", []), files.log)
    if code == ExitCode.BAD_INPUT:
        return already_running(spec.name, lock_holder(paths, spec.name))
    tail = tail_lines(files.supervisor_out, 5)
    return Zk0Error(
        f"the {spec.name} supervisor exited with code {code}: {tail[-1] if tail else 'no output'}",
        hint=f"see {files.supervisor_out} and `zk0 logs {_logs_target(spec.name)}`",
    )


def systemd_unit(service: str, argv: list[str], description: str) -> str:
    """A systemd user unit running ``zk0 ARGV`` in the foreground; its supervisor does the restarts.

    KillMode=mixed: systemd sends SIGTERM to the supervisor only (which stops its tree in order),
    and SIGKILL to whatever is left after TimeoutStopSec.
    """
    import shlex

    command = " ".join(shlex.quote(part) for part in [sys.executable, "-m", "zk0cli", *argv])
    home = os.environ.get("ZK0_HOME")
    environment = f"Environment=ZK0_HOME={shlex.quote(home)}\n" if home else ""
    return (
        f"# ~/.config/systemd/user/zk0-{service}.service, then: systemctl --user daemon-reload && "
        f"systemctl --user enable --now zk0-{service}\n"
        f"[Unit]\nDescription={description}\nAfter=network-online.target\n\n"
        f"[Service]\nType=simple\n{environment}WorkingDirectory={os.getcwd()}\nExecStart={command}\n"
        f"Restart=on-failure\nRestartSec=10\n"
        f"KillMode=mixed\nTimeoutStopSec=30\n\n[Install]\nWantedBy=default.target\n"
    )


def service_argv(argv: list[str], *, drop: tuple[str, ...] = ("--install-service", "--detach", "--json")) -> list[str]:
    """The current command line without the flags that make no sense inside a unit."""
    return [arg for arg in argv if arg not in drop]


def failure_error(service: str, reason: str, lines: list[str], log: Path) -> Zk0Error:
    last = f" Last output: {lines[-1]}" if lines else ""
    return Zk0Error(
        f"{service} failed: {reason}.{last}", hint=f"full log: `zk0 logs {_logs_target(service)} --tail 50` ({log})"
    )


def _logs_target(service: str) -> str:
    return "server" if service == "server" else f"node {service.removeprefix('node-')}"


def _prepare(paths: Paths, spec: ServiceSpec) -> None:
    """Private directories for what a service keeps: its state and logs, the SuperLink database
    and the node registry are the admin's alone (0700), and one that cannot be written stops the
    start here, with a hint, instead of inside the supervisor."""
    check_service_name(spec.name, what="service name")
    for directory in (paths.state_dir, paths.state_dir / "services", paths.log_dir, paths.data_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            directory.chmod(0o700)
            probe = directory / f".zk0-write-check-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise env_not_ready(
                f"cannot write {directory}: {exc.strerror or exc}",
                hint="make it writable for this user, or point ZK0_HOME at a directory that is",
            ) from None


# --------------------------------------------------------------------------- python -m entry points


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "preload" and "--" in argv:
        split = argv.index("--")
        return _preload_main(argv[1], argv[split + 1 :])
    if len(argv) == 3 and argv[0] == "run":
        return _run_spec_main(argv[1], argv[2])
    print(USAGE, file=sys.stderr)
    return int(ExitCode.BAD_INPUT)


def _preload_main(entry: str, argv: list[str]) -> int:
    """Warm spare: import the entry point now, run it when the supervisor writes ``go [JSON]``.

    Starting a Flower process costs ~2.5 s of imports on a small CPU; a spare that already has them
    is healthy ~0.2 s after ``go``. The optional JSON carries a restart hook and the process's last
    watch events; the hook runs first (in this process, where Flower is already imported) and may
    only log what it did.
    """
    target = _import(entry)
    command, _, payload = sys.stdin.readline().strip().partition(" ")
    if command != "go":
        return 0
    if payload:
        order = json.loads(payload)
        try:
            _import(order["hook"])(list(argv), order.get("events", {}))
        except Exception as exc:  # noqa: BLE001 - a failed hook must not keep the process from starting
            child_logger("supervisor").warning("restart hook %s failed: %s: %s", order["hook"], type(exc).__name__, exc)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.argv = list(argv)
    result = target()
    return result if isinstance(result, int) else 0


def _import(entry: str) -> Callable[..., Any]:
    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(module), function)


def _run_spec_main(spec_path: str, paths_json: str) -> int:
    """A detached supervisor: ``python -m zk0cli.services.supervisor run SPEC.json PATHS_JSON``.

    The caller's Paths travel with the command, so the supervisor writes its state where the
    caller will look for it, whatever the environment says.
    """
    spec = ServiceSpec.from_dict(read_json(Path(spec_path)))
    paths = Paths.from_json(paths_json)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return Supervisor(paths, spec, detached=True).run()
    except Zk0Error as error:
        print(f"Error: {error.message}", file=sys.stderr)
        return int(error.code)
