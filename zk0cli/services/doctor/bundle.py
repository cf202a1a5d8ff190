"""`zk0 doctor --bundle`: one .tar.gz to send to whoever helps you, with every secret taken out.

Private keys are never read (the PKI directory is not part of it); every text that goes in
passes through ``redact`` first, which also removes PEM private-key blocks and token-like strings
that ended up in logs.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

from zk0cli.core.errors import bad_input
from zk0cli.core.files import atomic_write_bytes
from zk0cli.core.paths import Paths
from zk0cli.core.versions import STACK, package_versions

ROOT = "zk0-support"
MASK = "***"
LOG_FILES_MAX = 20  # the most recently written ones
LOG_TAIL_BYTES = 256 * 1024  # the end of a log is where the failure is
KEY_FILE = re.compile(r"(\.key|\.pem|_key|\.p12|\.pfx)$", re.IGNORECASE)
ENV_PREFIXES = ("ZK0_", "HF_", "FLWR_", "CUDA_", "NVIDIA_", "TORCH", "PYTORCH_")
SECRET_NAME = re.compile(r"token|secret|passw|api[_-]?key|access[_-]?key|credential|auth", re.IGNORECASE)
SECRET_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    # PEM private keys, also a block cut off by a log's end
    (
        re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL),
        r"[\1PRIVATE KEY removed]",
    ),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), MASK),  # Hugging Face tokens
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), MASK),  # GitHub tokens
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),  # AWS access key ids
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), MASK),  # Slack tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),  # JWTs
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),  # Authorization headers
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1" + MASK + "@"),  # passwords in URLs
    # key = value / "key": "value" where the key names a secret
    (
        re.compile(
            r"(?i)([\w.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|access[_-]?key|credential)s?[\w.-]*[\"']?\s*[=:]\s*[\"']?)([^\s\"',}]+)"
        ),
        r"\1" + MASK,
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def write_bundle(target: Path, paths: Paths, config_file: Path, doctor_report: dict) -> list[str]:
    """Write the archive atomically; returns the names of its members."""
    target = Path(target)
    if target.is_dir():
        raise bad_input(
            f"--bundle {target} is a directory", hint=f"name a file, e.g. --bundle {target / 'zk0-support.tar.gz'}"
        )
    members = {
        "doctor.json": _json(doctor_report),
        "versions.json": _json(_versions()),
        "pip-freeze.txt": _freeze(),
        "environment.json": _json(_environment()),
    }
    if config_file.is_file():
        members["config.toml"] = config_file.read_text(encoding="utf-8", errors="replace")
    members.update({f"logs/{name}": text for name, text in _recent_logs(paths.log_dir)})
    atomic_write_bytes(target, _tar_gz({name: redact(text) for name, text in members.items()}), mode=0o600)
    return list(members)


def _versions() -> dict:
    extra = ("av", "torchcodec", "torchvision", "huggingface_hub", "datasets", "httpx", "cryptography", "typer", "rich")
    packages = package_versions(STACK + extra)
    return {"python": sys.version, "executable": sys.executable, "platform": platform.platform(), "packages": packages}


def _freeze() -> str:
    """``pip freeze``'s content from the installed distributions' metadata (no pip process)."""
    lines = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def _environment() -> dict[str, str]:
    chosen = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    return {k: MASK if SECRET_NAME.search(k) else v for k, v in sorted(chosen.items())}


def _recent_logs(log_dir: Path) -> list[tuple[str, str]]:
    if not log_dir.is_dir():
        return []
    files = [p for p in log_dir.rglob("*") if p.is_file() and not p.is_symlink() and not KEY_FILE.search(p.name)]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    logs = []
    for path in files[:LOG_FILES_MAX]:
        data = _tail(path)
        if b"\0" not in data:  # binary files are not logs
            logs.append((str(path.relative_to(log_dir)), data.decode("utf-8", errors="replace")))
    return logs


def _tail(path: Path) -> bytes:
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        return fh.read()


def _json(data: object) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def _tar_gz(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{ROOT}/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
