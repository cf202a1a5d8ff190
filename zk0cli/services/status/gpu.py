"""Per-process GPU utilisation and memory from NVML (pynvml) or nvidia-smi; nothing without either."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from zk0cli.services.status.local import process_tree_pids
from zk0cli.services.status.model import ServiceView


@dataclass
class GpuUse:
    percent: float | None = None
    memory_bytes: int | None = None


def gpu_tool() -> str:
    """'nvml' when pynvml is installed, 'nvidia-smi' when that is on PATH, '' when neither."""
    import importlib.util

    if importlib.util.find_spec("pynvml") is not None:
        return "nvml"
    return "nvidia-smi" if shutil.which("nvidia-smi") else ""


def read_gpu(tool: str, *, timeout_s: float) -> dict[int, GpuUse]:
    """GPU use per pid from every GPU on the machine."""
    return _read_nvml() if tool == "nvml" else _read_nvidia_smi(timeout_s)


def _read_nvml() -> dict[int, GpuUse]:
    import pynvml

    pynvml.nvmlInit()
    try:
        usage: dict[int, GpuUse] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                use = usage.setdefault(proc.pid, GpuUse())
                use.memory_bytes = (use.memory_bytes or 0) + int(proc.usedGpuMemory or 0)
            try:
                samples = pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
            except pynvml.NVMLError:
                samples = []  # no samples yet, or not supported on this GPU
            for sample in samples:
                use = usage.setdefault(sample.pid, GpuUse())
                use.percent = (use.percent or 0.0) + float(sample.smUtil)
        return usage
    finally:
        pynvml.nvmlShutdown()


def _read_nvidia_smi(timeout_s: float) -> dict[int, GpuUse]:
    apps = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    ).stdout
    pmon = subprocess.run(
        ["nvidia-smi", "pmon", "-c", "1", "-s", "u"], capture_output=True, text=True, timeout=timeout_s, check=True
    ).stdout
    return parse_smi_usage(apps, pmon)


def parse_smi_usage(compute_apps_csv: str, pmon_text: str) -> dict[int, GpuUse]:
    """Per-pid memory (``--query-compute-apps=pid,used_memory``, MiB) and SM % (``pmon -s u``)."""
    usage: dict[int, GpuUse] = {}
    for line in compute_apps_csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 2 and cells[0].isdigit() and cells[1].isdigit():
            use = usage.setdefault(int(cells[0]), GpuUse())
            use.memory_bytes = (use.memory_bytes or 0) + int(cells[1]) * 1024 * 1024
    for line in pmon_text.splitlines():
        cells = line.split()
        if line.startswith("#") or len(cells) < 4 or not cells[1].isdigit():
            continue
        if re.fullmatch(r"\d+(\.\d+)?", cells[3]):  # '-' when the process had no sample
            use = usage.setdefault(int(cells[1]), GpuUse())
            use.percent = (use.percent or 0.0) + float(cells[3])
    return usage


def apply_gpu(services: list[ServiceView], usage: dict[int, GpuUse]) -> None:
    for service in services:
        for proc in service.processes:
            if proc.pid is None:
                continue
            tree = [usage[pid] for pid in process_tree_pids(proc.pid) if pid in usage]
            proc.gpu_percent = sum(u.percent or 0.0 for u in tree) if tree else 0.0
            proc.gpu_memory_bytes = sum(u.memory_bytes or 0 for u in tree) if tree else 0
