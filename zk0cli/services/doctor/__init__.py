"""`zk0 doctor`: is this machine ready to be a zk0 server or node?

Every check is a small function ``(DoctorContext) -> CheckResult``. ``run_checks`` runs them
side by side in daemon threads, each under a wall-clock limit, so one hanging driver or network
call can never hang the command: past its limit a check is reported as failed and left behind.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zk0cli.core import config as config_mod
from zk0cli.core.checks import CheckResult, Status, fail, ok, summarize
from zk0cli.core.config import Config
from zk0cli.core.errors import Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.services.doctor import gpu, hub, role, system, video
from zk0cli.services.doctor.context import CommandRunner, DoctorContext, RunNeeds, run_command

ALL_ROLES = ("", "server", "node")
REPORT_FIX = (
    "rerun `zk0 -v doctor`; if it happens again send `zk0 doctor --bundle zk0-support.tar.gz` to whoever supports you"
)


@dataclass(frozen=True)
class Check:
    name: str
    probe: Callable[[DoctorContext], CheckResult]
    roles: tuple[str, ...] = ALL_ROLES  # the roles it applies to
    budget_s: float = 15.0  # its wall-clock limit, network time aside
    network_steps: int = 0  # network operations it makes, each limited by timeout_s

    def limit_s(self, timeout_s: float) -> float:
        return self.budget_s + self.network_steps * timeout_s


CHECKS: tuple[Check, ...] = (
    Check("python", system.check_python),
    Check("packages", system.check_packages),
    Check(gpu.NAME, gpu.check_gpu, budget_s=60.0 + 2 * gpu.SMI_TIMEOUT_S),  # importing torch cold takes a while
    Check("cpu/ram", system.check_resources),
    Check("disk", system.check_disk),
    Check(video.NAME, video.check_video, budget_s=60.0),  # torchcodec imports torch
    Check("hf hub", hub.check_hub, network_steps=1),
    Check("hf token", hub.check_token),
    Check("hf cache", hub.check_cache),
    Check("role", role.check_role),
    Check("server port", role.check_server_port, roles=("server",), network_steps=3),
    Check("server certs", role.check_server_certificates, roles=("server",)),
    Check("serverapp env", hub.check_serverapp_environment, roles=("server",)),
    Check("node keys", role.check_node_keys, roles=("node",)),
    Check("server", role.check_server_connection, roles=("node",), network_steps=3),
)


def run_checks(
    paths: Paths,
    config: Config,
    *,
    role: str,
    timeout_s: float = 3.0,
    skip_network: bool = False,
    run_command: CommandRunner = run_command,
    checks: Sequence[Check] = CHECKS,
) -> list[CheckResult]:
    """Run the checks that apply to ``role`` concurrently; results in the order of ``checks``."""
    ctx = DoctorContext(paths, config, role, timeout_s=timeout_s, skip_network=skip_network, run_command=run_command)
    chosen = [c for c in checks if role in c.roles]
    started = time.monotonic()
    boxes = [_start(check, ctx) for check in chosen]
    results = []
    for check, (thread, box) in zip(chosen, boxes, strict=True):
        thread.join(max(0.0, started + check.limit_s(timeout_s) - time.monotonic()))
        results.append(
            box.get("result") or fail(check.name, f"no answer within {check.limit_s(timeout_s):.0f} s", REPORT_FIX)
        )
    return results


@dataclass(frozen=True)
class Diagnosis:
    role: str  # the role checked: --role, else the config's, else "" (not initialised)
    results: list[CheckResult]

    @property
    def ready(self) -> bool:
        return not any(r.status is Status.FAIL for r in self.results)

    def to_dict(self) -> dict:
        """The doctor's answer as data: what `--json` prints and what the support bundle holds."""
        return {
            "role": self.role or None,
            "ready": self.ready,
            "summary": summarize(self.results),
            "checks": [r.to_dict() for r in self.results],
        }


def diagnose(
    paths: Paths,
    config_file: Path,
    *,
    role: str | None = None,
    timeout_s: float = 3.0,
    skip_network: bool = False,
    run_command: CommandRunner = run_command,
) -> Diagnosis:
    """Load the config as a check of its own (a broken one is a finding, not a crash), then run the rest."""
    try:
        loaded = config_mod.load(config_file)
    except Zk0Error as exc:
        config, config_result = Config(), fail("config", exc.message, exc.hint or f"fix or remove {config_file}")
    else:
        config = loaded.config
        state = "" if config_file.exists() else " (not created yet: defaults in effect)"
        config_result = ok("config", f"{config_file}{state}", file=str(config_file))
    chosen_role = role if role is not None else config.role
    rest = run_checks(
        paths, config, role=chosen_role, timeout_s=timeout_s, skip_network=skip_network, run_command=run_command
    )
    return Diagnosis(chosen_role, [config_result, *rest])


def _start(check: Check, ctx: DoctorContext) -> tuple[threading.Thread, dict]:
    box: dict[str, CheckResult] = {}

    def target() -> None:
        try:
            box["result"] = check.probe(ctx)
        except Exception as exc:  # noqa: BLE001 - a crashing check is reported, it must not stop the others
            box["result"] = fail(
                check.name, f"check crashed: {type(exc).__name__}: {exc}", REPORT_FIX, traceback=traceback.format_exc()
            )

    thread = threading.Thread(target=target, name=f"zk0-doctor-{check.name}", daemon=True)
    thread.start()
    return thread, box


__all__ = ["CHECKS", "Check", "Diagnosis", "DoctorContext", "RunNeeds", "diagnose", "run_checks"]
