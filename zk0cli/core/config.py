"""zk0's configuration: schema, the one loader, and atomic writes.

Precedence, implemented only here: command-line flag > ``ZK0_*`` environment variable >
config file > the defaults written in the dataclasses below.

The ``[run]`` table is open: its keys are run-config keys (``zk0 run --list-keys``), the defaults
of every run this server starts. The run-config schema lives with the Flower app, so whoever
writes the table passes its check (``check_run``); this module only keeps it TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zk0cli.core.errors import bad_input
from zk0cli.core.files import atomic_write_text

ROLES = ("server", "node")
RUN_TABLE = "run"
RunCheck = Callable[[Mapping[str, Any]], None]  # raises a Zk0Error when a [run] table is not a valid run config


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"  # address the public (fleet-only) endpoint listens on
    port: int = 9092  # public port node operators join through
    public_addresses: list[str] = field(default_factory=list)  # names/IPs put in the server cert
    database: str = ""  # SuperLink SQLite state; empty means <data dir>/superlink.db
    require_node_auth: bool = True  # only registered node keys may join


@dataclass
class NodeConfig:
    server: str = ""  # HOST:PORT of the federation's public endpoint
    dataset: str = ""  # dataset URI: hf:org/name[@rev], local:PATH or a path
    name: str = ""  # node name shown to the admin; empty derives it from the dataset


@dataclass
class HubConfig:
    # Set here, they replace HF_ENDPOINT / HF_HOME for zk0 and every process it starts (the SuperLink
    # and its ServerApps, SuperNodes and their ClientApps), whatever shell the server was started in.
    endpoint: str = ""  # Hugging Face Hub URL (HF_ENDPOINT); empty keeps the environment's
    home: str = ""  # Hugging Face cache root (HF_HOME); empty keeps the environment's

    def environment(self) -> dict[str, str]:
        values = {"HF_ENDPOINT": self.endpoint.rstrip("/"), "HF_HOME": os.path.expanduser(self.home)}
        return {name: value for name, value in values.items() if value}


@dataclass
class Config:
    role: str = ""  # "server" or "node", set by `zk0 init`
    server: ServerConfig = field(default_factory=ServerConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    hf: HubConfig = field(default_factory=HubConfig)
    run: dict[str, Any] = field(default_factory=dict)  # run-config defaults of `zk0 run` ([run] table)


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path  # the file it was read from (may not exist yet)
    sources: dict[str, str]  # dotted key -> "default" | "file" | "env" | "flag"


def keys() -> list[str]:
    """Every dotted key the schema knows, in schema order (``run.*`` keys are open, not listed)."""
    return [key for key, _ in _walk_fields(Config())]


def is_run_key(key: str) -> bool:
    return key.startswith(RUN_TABLE + ".") and key.count(".") == 1


def run_keys(config: Config) -> list[str]:
    return [f"{RUN_TABLE}.{name}" for name in config.run]


def env_var(key: str) -> str:
    return "ZK0_" + key.replace(".", "_").replace("-", "_").upper()


def load(path: Path, *, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Build the effective config from defaults, the file, ``ZK0_*`` env vars and flags."""
    env = os.environ if env is None else env
    config = Config()
    sources = {key: "default" for key in keys()}
    for key, value in _flatten(read_file(path)).items():
        _assign(config, key, value)
        sources[key] = "file"
    for key in keys():
        if env_var(key) in env:
            _assign(config, key, coerce(key, env[env_var(key)], origin=env_var(key)))
            sources[key] = "env"
    for key, value in (flags or {}).items():
        if value is not None:
            _assign(config, key, value)
            sources[key] = "flag"
    validate(config)
    return LoadedConfig(config, path, sources)


def read_file(path: Path) -> dict[str, Any]:
    """The file's table, checked against the schema; ``{}`` when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise bad_input(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad_input(
            f"config file {path} is not valid TOML: {exc}",
            hint=f"fix or remove the file (zk0 never overwrites a broken config): {path}",
        ) from exc
    known = set(keys())
    for key, value in _flatten(data).items():
        if is_run_key(key):
            continue  # checked against the run-config schema by whoever uses it (see check_run)
        if key not in known:
            raise bad_input(
                f"config file {path}, line {_line_of(text, key)}: unknown key '{key}'",
                hint="known keys: " + ", ".join(sorted(known)),
            )
        _check_type(key, value, origin=f"{path}, line {_line_of(text, key)}")
    return data


def set_value(path: Path, key: str, raw: str, *, check_run: RunCheck | None = None) -> Any:
    """Set one key in the file from its string form and return the typed value written.
    ``run.*`` values are TOML literals (bare words are strings) checked by ``check_run``."""
    if is_run_key(key):
        if check_run is None:
            raise bad_input(f"{key} is a run-config default", hint="set it with `zk0 config set` on the server")
        value = parse_literal(raw)
    else:
        _require_known(key)
        value = coerce(key, raw, origin=key)
    update_file(path, {key: value}, check_run=check_run)
    return value


def unset_value(path: Path, key: str, *, run_keys: Collection[str]) -> bool:
    """Remove one key from the file (its default applies again); False when the file did not set it.
    ``run_keys`` are the run-config's key names: a run key the file holds is removed even when the
    schema no longer knows it (that is how a retired key leaves the file)."""
    flat = _flatten(read_file(path))
    if not is_run_key(key):
        _require_known(key)
    elif key not in flat:
        _require_run_key(key, run_keys)
    if flat.pop(key, None) is None:
        return False
    write_file(path, flat)
    return True


def update_file(path: Path, updates: Mapping[str, Any], *, check_run: RunCheck | None = None) -> None:
    """Merge dotted-key values into the file, validated, written atomically.

    A malformed file is refused (read_file raises), so a broken config is never overwritten.
    """
    flat = _flatten(read_file(path))
    flat.update(updates)
    candidate = Config()
    for key, value in flat.items():
        _assign(candidate, key, value)
    validate(candidate)
    if check_run is not None:
        check_run(candidate.run)
    write_file(path, flat)


def parse_literal(raw: str) -> Any:
    """A value typed on a command line: a TOML literal (``5``, ``1e-4``, ``true``), else the bare string."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def write_file(path: Path, flat: Mapping[str, Any]) -> None:
    import tomli_w

    nested: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[head] = value
    atomic_write_text(path, tomli_w.dumps(nested))


def get_value(config: Config, key: str, *, run_keys: Collection[str] | None = None) -> Any:
    """The key's effective value. ``run_keys`` (the run-config's key names) tells a ``run.*`` key
    that is merely not set from a typo; without them every unset run key reads as not set."""
    if is_run_key(key):
        name = key.partition(".")[2]
        if name not in config.run:
            if run_keys is not None:
                _require_run_key(key, run_keys)
            raise bad_input(
                f"{key} is not set: runs take the run-config default", hint="`zk0 run --list-keys` shows the defaults"
            )
        return config.run[name]
    _require_known(key)
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, part.replace("-", "_"))
    return obj


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def coerce(key: str, raw: str, *, origin: str) -> Any:
    """Turn a string from the environment or the command line into the key's type."""
    kind = _type_of(key)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise bad_input(f"{origin}: '{raw}' is not a boolean", hint="use true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise bad_input(f"{origin}: '{raw}' is not an integer", hint=f"{key} takes a whole number") from None
    if kind is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def validate(config: Config) -> None:
    if config.role not in ("", *ROLES):
        raise bad_input(f"role '{config.role}' is not one of {', '.join(ROLES)}", hint="zk0 init --role server|node")
    if not 1 <= config.server.port <= 65535:
        raise bad_input(
            f"server.port {config.server.port} is outside 1..65535", hint="the federation's usual port is 9092"
        )
    if config.node.server:
        parse_host_port(config.node.server, origin="node.server")
    if config.hf.endpoint and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", config.hf.endpoint):
        raise bad_input(
            f"hf.endpoint '{config.hf.endpoint}' is not an http(s) URL",
            hint="for example https://huggingface.co or http://mirror.example:8090",
        )
    if config.hf.home:
        _check_hf_home(config.hf.home)


def _check_hf_home(value: str) -> None:
    home = Path(value).expanduser()
    if not home.is_absolute():  # each process zk0 starts has its own working directory
        raise bad_input(
            f"hf.home '{value}' is a relative path", hint="give an absolute one, e.g. ~/hf-cache or /data/hf"
        )
    if home.exists() and not home.is_dir():
        raise bad_input(
            f"hf.home {home} is a file, not a directory",
            hint="give the Hugging Face cache's directory (zk0 creates it when missing)",
        )


def _require_known(key: str) -> None:
    if key not in keys():
        raise bad_input(
            f"unknown config key '{key}'",
            hint="see `zk0 config show` for the keys; run-config defaults are run.KEY (`zk0 run --list-keys`)",
        )


def _require_run_key(key: str, run_keys: Collection[str]) -> None:
    name = key.partition(".")[2]
    if name not in run_keys:
        close = difflib.get_close_matches(name, run_keys, n=1)
        raise bad_input(
            f"unknown run-config key '{name}'",
            hint=(f"did you mean {RUN_TABLE}.{close[0]}? " if close else "") + "`zk0 run --list-keys` lists them",
        )


def parse_host_port(value: str, *, origin: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) into its parts, or a bad-input error that shows the form."""
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", value.strip())
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise bad_input(f"{origin}: '{value}' is not HOST:PORT", hint="for example --server fl.example.org:9092")
    return match.group(1), int(match.group(2))


def _walk_fields(obj: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name.replace("_", "-") if prefix else f.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            yield from _walk_fields(value, key + ".")
        elif not isinstance(value, dict):  # the open [run] table has no fixed keys
            yield key, f


def _type_of(key: str) -> type:
    default = dict(_walk_fields(Config()))[key]
    sample = default.default_factory() if default.default_factory is not dataclasses.MISSING else default.default
    return type(sample)


def _check_type(key: str, value: Any, *, origin: str) -> None:
    kind = _type_of(key)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is list:
        ok = ok and all(isinstance(item, str) for item in value)
    if not ok:
        raise bad_input(f"{origin}: '{key}' must be {kind.__name__}, got {value!r}")


def _assign(config: Config, key: str, value: Any) -> None:
    if is_run_key(key):
        config.run[key.partition(".")[2]] = value
        return
    *parents, leaf = key.split(".")
    obj: Any = config
    for part in parents:
        obj = getattr(obj, part.replace("-", "_"))
    setattr(obj, leaf.replace("-", "_"), value)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _line_of(text: str, key: str) -> int:
    """Line number of ``key`` in a TOML text (its table header, then its own line)."""
    *tables, leaf = key.split(".")
    table = ".".join(tables)
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
            if current == key:
                return number
        elif current == table and re.match(rf"{re.escape(leaf)}\s*=", stripped):
            return number
    return 1
