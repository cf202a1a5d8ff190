"""Hugging Face checks: Hub reachable, token present (never shown), cache directories."""

from __future__ import annotations

import os
import time
from pathlib import Path

from zk0cli.core.checks import CheckResult, ok, skip, warn
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
