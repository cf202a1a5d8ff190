"""GPU / CUDA check: what torch sees, what the driver (nvidia-smi) says, and whether SmolVLA fits.

The nvidia-smi parsers are pure functions over its text output so tests can feed recorded
samples; torch is imported only inside ``probe_torch`` (start-up stays light).
"""

from __future__ import annotations

import re
import subprocess
import warnings
from dataclasses import dataclass, field

from zk0cli.core.checks import CheckResult, fail, ok, warn
from zk0cli.services.doctor.context import CommandRunner, DoctorContext, RunNeeds

NAME = "gpu"
GIB = 1024**3
SMI_QUERY = (
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version",
    "--format=csv,noheader,nounits",
)
SMI_BANNER = ("nvidia-smi",)  # its header line carries the highest CUDA version the driver supports
SMI_TIMEOUT_S = 10.0  # nvidia-smi can take seconds to wake a driver without persistence mode
BF16_MIN_CAPABILITY = (8, 0)  # Ampere and newer have bf16 tensor cores; older GPUs emulate it slowly


@dataclass(frozen=True)
class SmiGpu:
    """One row of ``nvidia-smi --query-gpu`` (memory in MiB; None where the driver says [N/A])."""

    index: int
    name: str
    memory_total_mib: int | None
    memory_free_mib: int | None
    compute_capability: str | None
    driver_version: str


@dataclass(frozen=True)
class SmiReport:
    gpus: list[SmiGpu] = field(default_factory=list)
    driver_version: str = ""
    driver_cuda: str = ""  # e.g. "13.0": the newest CUDA runtime this driver can run
    error: str = ""  # why nvidia-smi gave nothing: its own message, a timeout...
    installed: bool = True

    @property
    def present(self) -> bool:
        return bool(self.gpus)


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.capability >= BF16_MIN_CAPABILITY


@dataclass(frozen=True)
class TorchView:
    torch_version: str
    cuda_runtime: str | None  # torch.version.cuda: None for a CPU-only build
    devices: list[CudaDevice] = field(default_factory=list)
    mps: bool = False
    error: str = ""  # torch.cuda raised while probing (broken driver...)
    cuda_warning: str = ""  # what torch warned when CUDA did not start (driver too old, none found...)


def parse_smi_query(text: str) -> list[SmiGpu]:
    """Parse ``nvidia-smi --query-gpu=<SMI_QUERY fields> --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 6 or not cells[0].isdigit():
            continue  # blank lines and messages such as "No devices were found"
        index, name, total, free, capability, driver = cells
        gpus.append(SmiGpu(int(index), name, _mib(total), _mib(free), _na(capability), driver))
    return gpus


def parse_smi_driver_cuda(text: str) -> str:
    """The driver's CUDA version from nvidia-smi's banner (``CUDA Version: 13.0``), or ''."""
    match = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", text)
    return match.group(1) if match else ""


def probe_smi(run: CommandRunner, timeout_s: float) -> SmiReport:
    """Ask nvidia-smi; every way it can be missing or broken becomes ``SmiReport.error``."""
    try:
        gpus = parse_smi_query(run(list(SMI_QUERY), timeout_s))
        banner = run(list(SMI_BANNER), timeout_s)
    except FileNotFoundError:
        return SmiReport(error="nvidia-smi not installed", installed=False)
    except subprocess.TimeoutExpired:
        return SmiReport(error=f"nvidia-smi did not answer within {timeout_s:g} s")
    except subprocess.CalledProcessError as exc:
        message = (exc.stdout or exc.stderr or "").strip().splitlines()
        return SmiReport(error=message[0] if message else f"nvidia-smi exited with {exc.returncode}")
    driver = gpus[0].driver_version if gpus else ""
    return SmiReport(gpus=gpus, driver_version=driver, driver_cuda=parse_smi_driver_cuda(banner))


def probe_torch() -> TorchView:
    """What torch can use on this machine. The only place the GPU check imports torch."""
    import torch

    view = TorchView(torch_version=torch.__version__, cuda_runtime=torch.version.cuda, mps=_mps_available(torch))
    try:
        with warnings.catch_warnings(record=True) as caught:  # torch explains a failed CUDA start in a warning
            warnings.simplefilter("always")
            available = torch.cuda.is_available()
        if not available:
            reason = str(caught[0].message).strip().splitlines()[0] if caught else ""
            return TorchView(view.torch_version, view.cuda_runtime, mps=view.mps, cuda_warning=reason)
        devices = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            devices.append(CudaDevice(index, props.name, int(total), int(free), (props.major, props.minor)))
    except Exception as exc:  # noqa: BLE001 - a broken driver surfaces as many error types
        return TorchView(view.torch_version, view.cuda_runtime, mps=view.mps, error=f"{type(exc).__name__}: {exc}")
    return TorchView(view.torch_version, view.cuda_runtime, devices, view.mps)


def check_gpu(ctx: DoctorContext) -> CheckResult:
    return assess_gpu(probe_torch(), probe_smi(ctx.run_command, SMI_TIMEOUT_S), ctx.needs)


def assess_gpu(torch_view: TorchView, smi: SmiReport, needs: RunNeeds) -> CheckResult:
    """Turn what torch and the driver report into one verdict with a concrete fix."""
    data = {
        "torch": torch_view.torch_version,
        "torch_cuda_runtime": torch_view.cuda_runtime,
        "driver_version": smi.driver_version or None,
        "driver_cuda": smi.driver_cuda or None,
        "nvidia_smi": smi.error or "ok",
        "devices": [_device_dict(d, needs) for d in torch_view.devices],
        "mps": torch_view.mps,
        "training_memory_needed_gib": needs.gpu_memory_gib,
        "training_memory_source": needs.gpu_memory_source,
    }
    need = f"SmolVLA training needs ~{needs.gpu_memory_gib:g} GiB (zk0 estimate for bf16, batch 8; see --json)"
    if torch_view.devices:
        return _assess_cuda(torch_view, smi, needs, need, data)
    if smi.present:
        return _unusable_gpu(torch_view, smi, data)
    if torch_view.error:
        return fail(
            NAME,
            f"torch.cuda failed: {torch_view.error}",
            "check the NVIDIA driver with `nvidia-smi`, then rerun `zk0 doctor`",
            **data,
        )
    if torch_view.mps:
        return ok(NAME, f"Apple GPU (MPS) available to torch {torch_view.torch_version}; {need}", **data)
    if smi.installed and smi.error:
        return warn(
            NAME,
            f"no usable GPU: nvidia-smi fails ({smi.error}); training on CPU will be slow",
            "fix the NVIDIA driver (reboot after a driver update, or reinstall it), then rerun `zk0 doctor`",
            **data,
        )
    torch_says = f" (torch: {torch_view.cuda_warning})" if torch_view.cuda_warning else ""
    return warn(
        NAME,
        f"no GPU found{torch_says}: training on CPU will be slow (fine for tests and tiny runs)",
        f"for real runs use an NVIDIA GPU with >= {needs.gpu_memory_gib:g} GiB free and compute capability >= 8.0 "
        "(bf16)",
        **data,
    )


def _assess_cuda(torch_view: TorchView, smi: SmiReport, needs: RunNeeds, need: str, data: dict) -> CheckResult:
    runtime, driver = torch_view.cuda_runtime or "", smi.driver_cuda
    versions = (
        f"torch {torch_view.torch_version} (CUDA {runtime or '?'}), driver {smi.driver_version or '?'} "
        f"(CUDA {driver or '?'})"
    )
    devices = "; ".join(_describe(d) for d in torch_view.devices)
    if runtime and driver and _version_tuple(runtime)[0] > _version_tuple(driver)[0]:
        return fail(
            NAME,
            f"{devices}; {versions}: the driver is too old for torch's CUDA runtime",
            f"update the NVIDIA driver to one that supports CUDA {runtime}, or install a torch built for CUDA {driver}",
            **data,
        )
    best = max(torch_view.devices, key=lambda d: d.free_bytes)
    if best.free_bytes < needs.gpu_memory_gib * GIB:
        busy = best.total_bytes >= needs.gpu_memory_gib * GIB
        fix = (
            "free GPU memory: stop other processes shown by `nvidia-smi`"
            if busy
            else "train with a smaller batch size, or use a GPU with more memory"
        )
        return warn(NAME, f"{devices}; {versions}; {need}, {_gib(best.free_bytes)} free: does not fit", fix, **data)
    if not best.bf16:
        return warn(
            NAME,
            f"{devices}; {versions}; no bf16 on compute capability {best.capability[0]}.{best.capability[1]}: "
            "training runs in fp32, slower",
            "use a GPU with compute capability >= 8.0 (Ampere or newer) for bf16",
            **data,
        )
    if runtime and driver and _version_tuple(runtime) > _version_tuple(driver):
        return warn(
            NAME,
            f"{devices}; {versions}: driver older than torch's CUDA minor version (works through minor-version "
            "compatibility; JIT-compiled kernels may fail)",
            f"update the NVIDIA driver to one that supports CUDA {runtime}",
            **data,
        )
    return ok(NAME, f"{devices}; {versions}; {need}: fits on GPU {best.index}", **data)


def _unusable_gpu(torch_view: TorchView, smi: SmiReport, data: dict) -> CheckResult:
    names = ", ".join(g.name for g in smi.gpus)
    seen = (
        f"nvidia-smi sees {names} (driver {smi.driver_version}, CUDA {smi.driver_cuda or '?'}) but torch "
        f"{torch_view.torch_version} cannot use it"
    )
    if torch_view.cuda_runtime is None:
        return fail(
            NAME,
            f"{seen}: torch is a CPU-only build",
            "reinstall with ./install.sh (it installs a CUDA build of torch)",
            **data,
        )
    if smi.driver_cuda and _version_tuple(torch_view.cuda_runtime) > _version_tuple(smi.driver_cuda):
        return fail(
            NAME,
            f"{seen}: torch needs CUDA {torch_view.cuda_runtime}, the driver supports up to {smi.driver_cuda}",
            f"update the NVIDIA driver to one that supports CUDA {torch_view.cuda_runtime}, or install a torch "
            f"built for CUDA {smi.driver_cuda}",
            **data,
        )
    reason = torch_view.error or torch_view.cuda_warning or "torch.cuda.is_available() is False"
    return fail(
        NAME,
        f"{seen}: {reason}",
        "check CUDA_VISIBLE_DEVICES and that this user may open /dev/nvidia*, then rerun `zk0 doctor`",
        **data,
    )


def _device_dict(device: CudaDevice, needs: RunNeeds) -> dict:
    return {
        "index": device.index,
        "name": device.name,
        "memory_total_gib": round(device.total_bytes / GIB, 2),
        "memory_free_gib": round(device.free_bytes / GIB, 2),
        "compute_capability": f"{device.capability[0]}.{device.capability[1]}",
        "bf16": device.bf16,
        "smolvla_training_fits": device.free_bytes >= needs.gpu_memory_gib * GIB,
    }


def _describe(device: CudaDevice) -> str:
    major, minor = device.capability
    bf16 = "bf16" if device.bf16 else "no bf16"
    return (
        f"GPU {device.index} {device.name}, {_gib(device.free_bytes)} free of {_gib(device.total_bytes)}, sm "
        f"{major}.{minor}, {bf16}"
    )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def _mib(cell: str) -> int | None:
    return int(float(cell)) if re.fullmatch(r"\d+(\.\d+)?", cell) else None


def _na(cell: str) -> str | None:
    return None if cell.startswith("[") else cell  # "[N/A]", "[Not Supported]"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])
