"""Python, package versions, CPU/RAM and disk checks."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from zk0cli.core.checks import CheckResult, fail, ok, warn
from zk0cli.core.versions import package_versions
from zk0cli.services.doctor.context import DoctorContext

GIB = 1024**3
MIN_PYTHON = (3, 12)
# The tested set: the pins of requirements.lock (a test keeps the two equal).
KNOWN_GOOD = {"flwr": "1.42.0", "lerobot": "0.6.1", "torch": "2.11.0", "transformers": "5.5.4"}
REINSTALL = "run ./install.sh in the zk0 checkout (it installs the tested versions from requirements.lock)"


def check_python(_ctx: DoctorContext) -> CheckResult:
    version = platform.python_version()
    data = {"version": version, "executable": sys.executable}
    if sys.version_info[:2] < MIN_PYTHON:
        return fail(
            "python",
            f"Python {version}: zk0 and lerobot need >= 3.12",
            "install Python 3.12 and rerun ./install.sh",
            **data,
        )
    return ok("python", f"Python {version} ({sys.executable})", **data)


def check_packages(_ctx: DoctorContext) -> CheckResult:
    versions = package_versions()
    listing = ", ".join(f"{name} {version or 'missing'}" for name, version in versions.items())
    data = {"versions": versions, "known_good": KNOWN_GOOD}
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        return fail("packages", f"{listing}: {', '.join(missing)} not installed", REINSTALL, **data)
    other_series = [name for name, pin in KNOWN_GOOD.items() if _series(versions[name]) != _series(pin)]
    if other_series:
        tested = ", ".join(f"{name} {KNOWN_GOOD[name]}" for name in other_series)
        return warn("packages", f"{listing}: untested combination (tested: {tested})", REINSTALL, **data)
    exact = all(_public(versions[name]) == pin for name, pin in KNOWN_GOOD.items())
    note = "the tested set" if exact else "same series as the tested set, other patch versions"
    return ok("packages", f"{listing} ({note})", **data)


def check_resources(ctx: DoctorContext) -> CheckResult:
    import psutil

    cores, ram = os.cpu_count() or 1, psutil.virtual_memory()
    needs = ctx.needs
    detail = f"{cores} CPU cores, {ram.total / GIB:.1f} GiB RAM ({ram.available / GIB:.1f} GiB available)"
    data = {
        "cpu_cores": cores,
        "ram_total_gib": round(ram.total / GIB, 2),
        "ram_available_gib": round(ram.available / GIB, 2),
        "ram_needed_gib": needs.ram_gib,
        "cpu_cores_recommended": needs.cpu_cores,
    }
    if ram.total < needs.ram_gib * GIB:
        return warn(
            "cpu/ram",
            f"{detail}: a SmolVLA run wants >= {needs.ram_gib:g} GiB",
            "close other programs or use a machine with more RAM",
            **data,
        )
    if cores < needs.cpu_cores:
        return warn(
            "cpu/ram",
            f"{detail}: data loading and video decoding will compete with training (>= {needs.cpu_cores} cores "
            "recommended)",
            "use a machine with more cores, or expect slower rounds",
            **data,
        )
    return ok("cpu/ram", detail, **data)


def check_disk(ctx: DoctorContext) -> CheckResult:
    data_dir = ctx.paths.data_dir
    free = free_bytes(data_dir)
    needs = ctx.needs
    data = {"data_dir": str(data_dir), "free_gib": round(free / GIB, 2), "needed_gib": needs.disk_gib}
    detail = f"{free / GIB:.1f} GiB free for {data_dir}"
    where = "free space there, or move zk0's data with ZK0_HOME=/bigger/disk"
    read_only = [d for d in ctx.paths.all_dirs() if not writable(d)]
    if read_only:
        return fail(
            "disk",
            f"{read_only[0]} is not writable",
            "make it writable, or set ZK0_HOME to a writable directory",
            **data,
        )
    if free < needs.disk_min_gib * GIB:
        return fail(
            "disk", f"{detail}: a run cannot write its checkpoints (needs >= {needs.disk_min_gib:g} GiB)", where, **data
        )
    if free < needs.disk_gib * GIB:
        return warn(
            "disk",
            f"{detail}: a SmolVLA run needs ~{needs.disk_gib:g} GiB (base model, dataset, checkpoints)",
            where,
            **data,
        )
    return ok("disk", f"{detail} (a run needs ~{needs.disk_gib:g} GiB)", **data)


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or would, once it is created)."""
    return shutil.disk_usage(_nearest_existing(path)).free


def writable(path: Path) -> bool:
    """Whether zk0 can write ``path``, or create it in its nearest existing parent (a file there blocks it)."""
    existing = _nearest_existing(path)
    return existing.is_dir() and os.access(existing, os.W_OK)


def _nearest_existing(path: Path) -> Path:
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _public(version: str | None) -> str:
    return (version or "").split("+")[0]  # "2.11.0+cu130" -> "2.11.0"


def _series(version: str | None) -> tuple[str, ...]:
    return tuple(_public(version).split(".")[:2])
