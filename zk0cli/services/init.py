"""`zk0 init`: make the directories, the keys and certificates, and the config for a role."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zk0cli.core import config as config_mod
from zk0cli.core.errors import bad_input, env_not_ready
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import folder_stamp
from zk0cli.services import pki


@dataclass
class InitResult:
    role: str
    config_file: Path
    files: dict[str, str]  # what was created, by purpose
    backup_dir: Path | None = None
    ca_fingerprint: str = ""  # server: what node operators pin
    public_key: str = ""  # node: what the admin registers
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "config_file": str(self.config_file),
            "files": self.files,
            "backup_dir": str(self.backup_dir) if self.backup_dir else None,
            "ca_fingerprint": self.ca_fingerprint or None,
            "public_key": self.public_key or None,
        }


def init_server(paths: Paths, config_file: Path, public_addresses: list[str], *, force: bool) -> InitResult:
    server_pki = pki.ServerPki.at(paths.pki_dir)
    config_mod.read_file(config_file)  # a broken config stops us before any key is written
    _refuse_overwrite(server_pki.files(), force)
    _make_dirs(paths, config_file)
    backup = _backup(server_pki.files(), paths, force)
    pki.create_server_pki(paths.pki_dir, public_addresses)
    config_mod.update_file(config_file, {"role": "server", "server.public-addresses": public_addresses})
    return InitResult(
        role="server",
        config_file=config_file,
        files={
            "ca_cert": str(server_pki.ca_cert),
            "ca_key": str(server_pki.ca_key),
            "server_cert": str(server_pki.server_cert),
            "server_key": str(server_pki.server_key),
        },
        backup_dir=backup,
        ca_fingerprint=pki.fingerprint(server_pki.ca_cert),
    )


def init_node(
    paths: Paths, config_file: Path, ca_cert: Path, *, server: str = "", dataset: str = "", force: bool
) -> InitResult:
    node_pki = pki.NodePki.at(paths.pki_dir)
    pki.load_ca_certificate(ca_cert)  # refuse bad input before anything is written
    config_mod.read_file(config_file)
    if server:
        config_mod.parse_host_port(server, origin="--server")
    _refuse_overwrite(node_pki.files(), force)
    _make_dirs(paths, config_file)
    backup = _backup(node_pki.files(), paths, force)
    pki.store_ca_certificate(ca_cert, paths.pki_dir)
    pki.create_node_key(paths.pki_dir)
    updates = {"role": "node"}
    if server:
        updates["node.server"] = server
    if dataset:
        updates["node.dataset"] = dataset
    config_mod.update_file(config_file, updates)
    return InitResult(
        role="node",
        config_file=config_file,
        files={
            "ca_cert": str(node_pki.ca_cert),
            "private_key": str(node_pki.private_key),
            "public_key": str(node_pki.public_key),
        },
        backup_dir=backup,
        ca_fingerprint=pki.fingerprint(node_pki.ca_cert),
        public_key=node_pki.public_key.read_text().strip(),
    )


def _refuse_overwrite(files: tuple[Path, ...], force: bool) -> None:
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise bad_input(
            f"already initialised: {existing[0]} exists",
            hint="keep it, or pass --force to make new keys (the old ones are backed up first)",
        )


def _make_dirs(paths: Paths, config_file: Path) -> None:
    try:
        for directory in (*paths.all_dirs(), config_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        paths.pki_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise env_not_ready(
            f"cannot create {exc.filename}: {exc.strerror}",
            hint="make the directory writable, or set ZK0_HOME to a writable directory",
        ) from exc


def _backup(files: tuple[Path, ...], paths: Paths, force: bool) -> Path | None:
    if not force:
        return None
    if not any(path.exists() for path in files):
        return None
    base = paths.config_dir / f"pki.bak-{folder_stamp()}"
    for attempt in range(1, 1000):  # a backup never lands on an earlier one (several --force in a second)
        target = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            target.mkdir(mode=0o700)
        except FileExistsError:
            continue
        pki.backup_existing(files, target)
        return target
    raise env_not_ready(f"{base}-999 exists: too many backups this second", hint=f"clean up {paths.config_dir}")
