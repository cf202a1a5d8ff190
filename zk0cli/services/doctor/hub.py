"""Hugging Face checks: Hub reachable, token present (never shown), cache directories."""

from __future__ import annotations

import os
import time
from pathlib import Path

from zk0cli.core.checks import CheckResult, ok, skip, warn
from zk0cli.core.paths import Paths
from zk0cli.services.doctor.context import DoctorContext
from zk0cli.services.doctor.system import GIB, free_bytes, writable

OFFLINE_HINT = "use local datasets (--dataset local:PATH) and set HF_HUB_OFFLINE=1 so nothing waits for the Hub"
TRUE_VALUES = ("1", "true", "yes", "on")


def check_hub(ctx: DoctorContext) -> CheckResult:
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE_VALUES:
        return ok(
            "hf hub",
            "offline mode (HF_HUB_OFFLINE=1): only local datasets and cached models are used",
            endpoint=endpoint,
            offline=True,
        )
    if ctx.skip_network:
        return skip("hf hub", "not checked (--skip-network)", endpoint=endpoint)
    started = time.monotonic()
    try:
        response = httpx.head(endpoint, timeout=ctx.timeout_s, follow_redirects=True)
    except httpx.HTTPError as exc:
        return warn(
            "hf hub",
            f"{endpoint} unreachable ({type(exc).__name__}: {exc})",
            OFFLINE_HINT,
            endpoint=endpoint,
            reachable=False,
        )
    elapsed = time.monotonic() - started
    data = {"endpoint": endpoint, "reachable": True, "status_code": response.status_code, "seconds": round(elapsed, 2)}
    if response.status_code >= 500:
        return warn(
            "hf hub", f"{endpoint} answered HTTP {response.status_code}", "try again later, or " + OFFLINE_HINT, **data
        )
    return ok("hf hub", f"{endpoint} reachable (HTTP {response.status_code} in {elapsed:.2f} s)", **data)


def check_token(_ctx: DoctorContext) -> CheckResult:
    from huggingface_hub import get_token

    # The token itself never leaves this function: only whether there is one and where from.
    present = get_token() is not None
    source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "token file"
    if present:
        return ok("hf token", f"present (from {source}; not shown)", present=True, source=source)
    return ok("hf token", "none: public datasets only (`hf auth login` for private or gated ones)", present=False)


def check_cache(ctx: DoctorContext) -> CheckResult:
    from huggingface_hub import constants

    hf_home = Path(constants.HF_HOME)
    lerobot_home = Path(
        os.environ.get("HF_LEROBOT_HOME", hf_home / "lerobot")
    ).expanduser()  # as lerobot.utils.constants
    free = free_bytes(hf_home)
    data = {
        "hf_home": str(hf_home),
        "hub_cache": str(constants.HF_HUB_CACHE),
        "lerobot_home": str(lerobot_home),
        "free_gib": round(free / GIB, 2),
    }
    detail = f"{hf_home} (lerobot: {lerobot_home}), {free / GIB:.1f} GiB free"
    unwritable = [p for p in (hf_home, lerobot_home) if not writable(p)]
    if unwritable:
        return warn(
            "hf cache",
            f"{detail}: {unwritable[0]} is not writable",
            "set HF_HOME (and HF_LEROBOT_HOME) to a writable directory",
            **data,
        )
    if free < ctx.needs.hf_cache_gib * GIB:
        return warn(
            "hf cache",
            f"{detail}: the base model needs ~{ctx.needs.hf_cache_gib:g} GiB",
            "free space there, or point HF_HOME at a bigger disk",
            **data,
        )
    return ok("hf cache", detail, **data)


HUB_VARIABLES = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE")


def check_serverapp_environment(ctx: DoctorContext) -> CheckResult:
    return serverapp_environment(ctx.paths)


def serverapp_environment(paths: Paths) -> CheckResult:
    """The Hub settings a run's ServerApp gets: the running SuperLink's environment, which every
    ServerApp it starts inherits; compared with what zk0 would give a SuperLink started now
    (`zk0 doctor` on a server, and a run's preflight)."""
    import psutil

    from zk0cli.services import server, supervisor

    wanted = {name: os.environ.get(name, "") for name in HUB_VARIABLES}  # the config's hf.* already applied
    state = supervisor.read_state(paths, server.SERVICE) or {}
    pid = ((state.get("processes") or {}).get("superlink") or {}).get("pid") if state.get("supervisor_alive") else None
    if not pid:
        return ok("serverapp env", "the server is not running; it will start with " + _hub_text(wanted), **wanted)
    try:
        seen = {name: psutil.Process(pid).environ().get(name, "") for name in HUB_VARIABLES}
    except psutil.Error as exc:
        return skip("serverapp env", f"cannot read the SuperLink's environment (pid {pid}: {type(exc).__name__})")
    data = {"running": seen, "configured": wanted}
    if seen != wanted:
        differ = ", ".join(name for name in HUB_VARIABLES if seen[name] != wanted[name])
        return warn(
            "serverapp env",
            f"the running server's ServerApps see {_hub_text(seen)}; zk0 now gives {_hub_text(wanted)} "
            f"({differ} differ)",
            "restart the server to apply hf.* from the config: zk0 stop server, then zk0 server serve --detach",
            **data,
        )
    return ok("serverapp env", "runs see " + _hub_text(seen), **data)


def _hub_text(values: dict[str, str]) -> str:
    return ", ".join(f"{name}={values[name] or '(unset)'}" for name in HUB_VARIABLES)
