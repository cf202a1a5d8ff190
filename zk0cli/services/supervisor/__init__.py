"""One supervisor for every process zk0 starts: Flower's SuperLink and SuperNode, and zk0's fleet proxy.

A *service* (``server``, ``node-<name>``) is a set of processes run by one supervisor. The
supervisor starts each process in its own session (so a Ctrl-C in the terminal reaches only the
supervisor, which then stops everything in order) with one environment (``proctree.child_env``).
It reads their output through pipes and writes it, time-stamped and without colour codes, to one
rotating log per service, next to its own events (started, exited, restarting in ...).

Restarts: ANY exit is restarted. A run shorter than ``quick_exit_s`` is a quick failure; quick
failures wait ``backoff_initial_s * 2**(n-1)`` (capped) before the next start and, after
``give_up_after`` of them in a row, the service is marked failed with the last log lines, and
stopped. A line matching one of a process's ``fatal`` patterns turns its next exit into an
immediate failure (e.g. a node whose key the server does not know: retrying cannot help).
For processes with a ``preload`` entry point, a warm spare that has already imported it takes
over a restart in ~0.2 s instead of ~2.5 s.

Health: a process is ``healthy`` once ``GET health_url`` (TLS verified against ``health_ca``)
answers one of ``health_ok_status``, and, with a ``ready_event``, once that line was seen. One
that is not healthy within ``start_timeout_s`` is killed and counted as a quick failure.

Where things are:
  spec.py      what runs (ServiceSpec ...), the service's files, the state file (ServiceState)
  runtime.py   the Supervisor: its event loop; process.py, output.py and health.py are its parts
  proctree.py  the child environment, process trees, orphans, stopping
  lock.py      one supervisor per service
  logfile.py   the rotating log and its readers (``zk0 logs``)
  state.py     the state file read from outside (``zk0 status``, ``zk0 stop``)
  launch.py    foreground, detached, systemd; the ``python -m`` entry points (``__main__.py``)
"""

from zk0cli.services.supervisor.launch import run_foreground, service_argv, start_detached, systemd_unit
from zk0cli.services.supervisor.lock import already_running, lock_holder
from zk0cli.services.supervisor.logfile import (
    RotatingLog,
    follow_log,
    log_files,
    logged_services,
    parse_since,
    read_lines,
    read_log,
)
from zk0cli.services.supervisor.proctree import child_env, terminate_processes
from zk0cli.services.supervisor.spec import (
    ProbeSpec,
    ProcessSpec,
    RestartPolicy,
    ServiceFiles,
    ServiceSpec,
    check_service_name,
    flwr_home,
)
from zk0cli.services.supervisor.state import read_state, service_names, stop_service

__all__ = [
    "ProbeSpec",
    "ProcessSpec",
    "RestartPolicy",
    "RotatingLog",
    "ServiceFiles",
    "ServiceSpec",
    "already_running",
    "check_service_name",
    "child_env",
    "flwr_home",
    "follow_log",
    "lock_holder",
    "log_files",
    "logged_services",
    "parse_since",
    "read_lines",
    "read_log",
    "read_state",
    "run_foreground",
    "service_argv",
    "service_names",
    "start_detached",
    "stop_service",
    "systemd_unit",
    "terminate_processes",
]
