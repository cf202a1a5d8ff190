"""`zk0 server serve` and `zk0 server nodes`: the SuperLink behind its fleet-only front.

Layout of a served federation (defaults from config ``server.*``):

    nodes --TLS--> fleet proxy on HOST:PORT (public, 0.0.0.0:9092)   only /v1/fleet/* and /health
                      --TLS--> flower-superlink on 127.0.0.1:CONTROL_PORT (PORT+1 by default)
    admin: flwr CLI / `zk0 run` --TLS--> 127.0.0.1:CONTROL_PORT        Control + Runtime stay local

Both processes run under one supervisor (service ``server``). The SuperLink keeps its state in
SQLite (``<data dir>/superlink.db`` unless ``--database``), so a restart loses no run and no
registered node, and nodes reconnect by themselves.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from zk0cli.core import files
from zk0cli.core.errors import Zk0Error, bad_input, env_not_ready, unreachable
from zk0cli.core.paths import Paths
from zk0cli.services import flower, supervisor
from zk0cli.services.pki import ServerPki, fingerprint

SERVICE = "server"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
NODE_NAMES_FILE = "server-nodes.json"  # node id -> name, kept by `zk0 server nodes add`


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"  # public address of the fleet proxy
    port: int = 9092  # public port nodes join through
    control_port: int = 0  # the SuperLink's own port on 127.0.0.1 (Control/Runtime/Fleet); 0 = port + 1
    insecure: bool = False  # plain HTTP everywhere (demo/debug only)
    database: str = ""  # SuperLink SQLite file; empty = <data dir>/superlink.db
    require_node_auth: bool = True  # only registered node keys may join (needs TLS)
    auto_run: bool = False  # start a training session whenever min_nodes nodes are online and none runs
    min_nodes: int = 2  # auto-run: online nodes a session needs
    rounds: int = 3  # auto-run: rounds per session
    run_settings: list[str] = field(default_factory=list)  # auto-run: run-config KEY=VALUE for each session

    @property
    def superlink_port(self) -> int:
        return self.control_port or self.port + 1


def build_spec(paths: Paths, options: ServeOptions) -> supervisor.ServiceSpec:
    """Check everything that can be checked before starting, and describe the processes to run."""
    if options.insecure and options.require_node_auth:
        raise bad_input(
            "node authentication needs TLS, and --insecure turns TLS off",
            hint="add --no-require-node-auth to run insecure (demo only), or drop --insecure",
        )
    if not 1 <= options.superlink_port <= 65535 or options.superlink_port == options.port:
        raise bad_input(
            f"control port {options.superlink_port} is not usable next to public port {options.port}",
            hint="pass --control-port N (a free port other than --port)",
        )
    holder = supervisor.lock_holder(paths, SERVICE)
    if holder:
        raise supervisor.already_running(SERVICE, holder)
    pki = None if options.insecure else _server_pki(paths)
    health_host = _health_host(options.host)
    if pki is not None:
        _check_certificate_names(pki, options.host)
    ensure_port_free(options.host, options.port, flag="--port")
    ensure_port_free("127.0.0.1", options.superlink_port, flag="--control-port")
    database = Path(options.database).expanduser().absolute() if options.database else paths.data_dir / "superlink.db"
    database.parent.mkdir(parents=True, exist_ok=True)

    tls = flower.TlsFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert)) if pki else None
    ca = str(pki.ca_cert) if pki else ""
    scheme = "http" if options.insecure else "https"
    superlink_address = f"127.0.0.1:{options.superlink_port}"
    superlink = supervisor.ProcessSpec(
        name="superlink",
        argv=flower.superlink_argv(
            host="127.0.0.1",
            port=options.superlink_port,
            database=str(database),
            tls=tls,
            node_auth=options.require_node_auth,
        ),
        health_url=f"{scheme}://{superlink_address}/health",
        health_ca=ca,
        ports={"control": options.superlink_port},
        flwr_home=str(supervisor.flwr_home(paths, SERVICE)),
        preload=flower.SUPERLINK_ENTRY,
    )
    proxy_argv = [
        sys.executable,
        "-m",
        "zk0cli.services.fleet_proxy",
        "--listen",
        _join(options.host, options.port),
        "--upstream",
        superlink_address,
    ]
    proxy_argv += (
        ["--insecure"]
        if tls is None
        else ["--certfile", tls.certfile, "--keyfile", tls.keyfile, "--cafile", tls.cafile]
    )
    if options.require_node_auth:  # the front verifies node signatures before any body reaches the SuperLink
        proxy_argv += ["--nodes-file", str(paths.data_dir / NODE_NAMES_FILE)]
    proxy = supervisor.ProcessSpec(
        name="fleet-proxy",
        argv=proxy_argv,
        health_url=f"{scheme}://{_join(health_host, options.port)}/health",
        health_ca=ca,
        health_ok_status=[200, 502],  # 502: the proxy is up, the SuperLink behind it is (re)starting
        ports={"public": options.port},
    )
    processes = [superlink, proxy]
    if options.auto_run:
        processes.append(_auto_run_spec(options))
    info = {
        "public_address": _join(options.host, options.port),
        "control_address": superlink_address,
        "tls": not options.insecure,
        "node_auth": options.require_node_auth,
        "database": str(database),
        "ca_cert": ca or None,
        "ca_fingerprint": fingerprint(pki.ca_cert) if pki else None,
        "auto_run": {"min_nodes": options.min_nodes, "rounds": options.rounds} if options.auto_run else None,
    }
    return supervisor.ServiceSpec(name=SERVICE, kind="server", processes=processes, info=info)


def _auto_run_spec(options: ServeOptions) -> supervisor.ProcessSpec:
    """The auto-run loop as one more supervised process: restarted like the others, logged to the
    server log, stopped with the server, in the foreground and with --detach alike."""
    from zk0cli.fl.run_config import RunConfig, parse_overrides

    if options.min_nodes < 1 or options.rounds < 1:
        raise bad_input("--min-nodes and --rounds must be at least 1", hint="e.g. --auto-run --min-nodes 2 --rounds 3")
    RunConfig.from_mapping(parse_overrides(options.run_settings))  # a bad --set stops `serve`, not each session
    argv = [
        sys.executable,
        "-m",
        "zk0cli.services.server",
        "auto-run",
        "--min-nodes",
        str(options.min_nodes),
        "--rounds",
        str(options.rounds),
    ]
    for pair in options.run_settings:
        argv += ["--set", pair]
    return supervisor.ProcessSpec(name="auto-run", argv=argv)


def prepare_cli_connection(paths: Paths, spec: supervisor.ServiceSpec) -> Path:
    """Write the flwr CLI's ``zk0-local`` connection for this server (Control API on loopback)."""
    return flower.write_cli_connection(paths, address=spec.info["control_address"], root_ca=spec.info["ca_cert"])


def ensure_port_free(host: str, port: int, *, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise env_not_ready(
                    f"port {port} on {host or '0.0.0.0'} is already in use{_port_owner(port)}",
                    hint=f"stop what uses it (`zk0 status` shows zk0's services), or pick another: {flag} N",
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise bad_input(
                    f"{host} is not an address of this machine",
                    hint="use --host 0.0.0.0, or one of this machine's addresses",
                ) from None
            if exc.errno == errno.EACCES:
                raise env_not_ready(
                    f"port {port} needs privileges this user does not have", hint=f"use a port above 1023: {flag} N"
                ) from None
            raise


def _port_owner(port: int) -> str:
    """`` (pid N, NAME)`` for the process listening on port, when this user may see it."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" (pid {conn.pid}, {psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def _server_pki(paths: Paths) -> ServerPki:
    pki = ServerPki.at(paths.pki_dir)
    missing = [p for p in (pki.ca_cert, pki.server_cert, pki.server_key) if not p.exists()]
    if missing:
        raise env_not_ready(
            f"no server certificate: {missing[0]} is missing",
            hint="zk0 init --role server --public-address YOUR.HOST (or --insecure for a local demo)",
        )
    return pki


def _check_certificate_names(pki: ServerPki, host: str) -> None:
    """A specific bind address must be in the certificate, or nodes (and our health check) fail TLS."""
    if host in WILDCARD_HOSTS:
        return
    names = certificate_names(pki.server_cert)
    if host not in names:
        raise bad_input(
            f"the server certificate is not valid for {host} (it names {', '.join(names)})",
            hint=f"zk0 init --role server --public-address {host} --force, or --host 0.0.0.0",
        )


def certificate_names(cert_path: Path) -> list[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _health_host(host: str) -> str:
    """Where the health check reaches a proxy bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _join(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# --------------------------------------------------------------------------- zk0 server nodes


def require_running(paths: Paths) -> dict:
    state = supervisor.read_state(paths, SERVICE)
    if state is None or not state["supervisor_alive"] or state["state"] not in ("healthy", "restarting", "starting"):
        raise unreachable("the server is not running on this machine", hint="start it: zk0 server serve --detach")
    return state


def add_node(paths: Paths, public_key_file: Path, name: str) -> dict:
    """Register a node's public key with the SuperLink (``flwr supernode register``)."""
    supervisor.check_service_name(name, what="node name")
    key = _read_public_key(public_key_file)
    require_running(paths)
    document = flower.run_flwr(
        paths, ["supernode", "register", str(public_key_file), flower.CLI_CONNECTION, "--name", name]
    )
    node_id = str(document["node-id"])
    names = _node_names(paths)
    names[node_id] = {"name": name, "public_key": key}
    files.atomic_write_json(paths.data_dir / NODE_NAMES_FILE, names)
    return {"node_id": node_id, "name": name}


def list_nodes(paths: Paths) -> list[dict]:
    require_running(paths)
    document = flower.run_flwr(paths, ["supernode", "list", flower.CLI_CONNECTION])
    names = _node_names(paths)
    return [
        {
            "node_id": str(node["node-id"]),
            "name": names.get(str(node["node-id"]), {}).get("name", ""),
            "status": node.get("status", ""),
            "created_at": node.get("created-at"),
            "online_at": node.get("online-at"),
            "offline_at": node.get("offline-at"),
        }
        for node in document.get("nodes", [])
    ]


def remove_node(paths: Paths, node_id: str) -> dict:
    if not node_id.isdigit():
        raise bad_input(f"'{node_id}' is not a node id", hint="node ids are numbers: see `zk0 server nodes list`")
    require_running(paths)
    flower.run_flwr(paths, ["supernode", "unregister", node_id, flower.CLI_CONNECTION])
    names = _node_names(paths)
    removed = names.pop(node_id, {})
    files.atomic_write_json(paths.data_dir / NODE_NAMES_FILE, names)
    return {"node_id": node_id, "name": removed.get("name", "")}


def _read_public_key(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise bad_input(
            f"public key file {path} does not exist",
            hint="the node operator sends node_key.pub from `zk0 init --role node`",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_input(f"cannot read public key file {path}: {exc}") from None
    if not text.startswith("ecdsa-sha2-nistp") or len(text.split()) < 2:
        raise bad_input(
            f"{path} is not an OpenSSH ECDSA public key",
            hint="pass the node's node_key.pub (starts with ecdsa-sha2-nistp384), not its private key",
        )
    return text


def _node_names(paths: Paths) -> dict:
    import json

    try:
        return json.loads((paths.data_dir / NODE_NAMES_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


# --------------------------------------------------------------------------- zk0 run / runs


@dataclass
class SubmittedRun:
    run_id: str  # Flower's run id
    run_dir: Path  # where the ServerApp writes the run record
    rounds: int
    notes: list[str] = field(default_factory=list)  # what was done on the way (e.g. a stale run stopped)


def app_dir() -> Path:
    """The zk0 Flower app (pyproject with [tool.flwr.app]) shipped inside the package."""
    import zk0cli.fl

    return Path(zk0cli.fl.__file__).resolve().parent / "app"


def submit_run(paths: Paths, *, rounds: int | None, settings: dict) -> SubmittedRun:
    """Validate the run config here (a bad key never reaches Flower), then `flwr run` on zk0-local."""
    from zk0cli.fl.records import new_run_name
    from zk0cli.fl.run_config import RunConfig

    values: dict = dict(settings)
    if rounds is not None:
        values["num-server-rounds"] = rounds
    values.setdefault("runs-dir", str(paths.runs_dir))
    values.setdefault("run-name", f"{new_run_name()}-run")
    config = RunConfig.from_mapping(values)
    if config.resume:
        raise bad_input(
            "run-config resume is set by `zk0 run --resume RUN_ID`, not by hand",
            hint="zk0 run --resume RUN_ID continues a run from its last checkpoint",
        )
    require_running(paths)
    return _submit(paths, config)


def resume_run(paths: Paths, run_ref: str, *, rounds: int | None) -> SubmittedRun:
    """Continue a run that stopped from its last checkpoint: same record, same round numbers.

    The run config is the one recorded (only the number of rounds may grow); a run Flower still
    runs is refused, so two ServerApps never write one record.
    """
    from zk0cli.fl.records import STATUS_FILE, RunRecord
    from zk0cli.fl.run_config import RunConfig

    record = RunRecord(find_run_record(paths, run_ref))
    values = {
        **record.read_config()["run_config"],
        "resume": True,
        "runs-dir": str(record.root.parent),
        "run-name": record.root.name,
    }
    if rounds is not None:
        values["num-server-rounds"] = rounds
    config = RunConfig.from_mapping(values)
    point = record.resume_point(config.num_server_rounds)
    notes = _settle_earlier_runs(paths, record.flwr_run_ids())
    previous = _json_or_none(record.root / STATUS_FILE)
    # follow_run must not take the interrupted run's last status for this one's
    record.write_status("resuming", from_round=point.round, rounds=config.num_server_rounds)
    try:
        submitted = _submit(paths, config)
    except Zk0Error:
        if previous:
            files.atomic_write_json(record.root / STATUS_FILE, previous)
        raise
    submitted.notes = notes
    return submitted


def _settle_earlier_runs(paths: Paths, flwr_run_ids: list[int]) -> list[str]:
    """No earlier Flower run of a record may still run when it is resumed.

    One that started before the SuperLink's last (re)start lost its ServerApp with that restart
    (the supervisor leaves no orphan), but Flower keeps calling it running until its heartbeat
    expires: it is stopped here. Any other live one is refused.
    """
    superlink_started = require_running(paths)["processes"]["superlink"].get("started_at")
    notes = []
    for flwr_run_id in flwr_run_ids:
        run = flower_run(paths, str(flwr_run_id))
        status = str(run.get("status", ""))
        if not status or status.startswith("finished"):
            continue
        if not orphaned_by_restart(run, superlink_started):
            raise bad_input(
                f"run {flwr_run_id} is still {status} on the SuperLink",
                hint=f"stop it first (zk0 run stop {flwr_run_id}), then resume it",
            )
        flower.run_flwr(paths, ["stop", str(flwr_run_id), flower.CLI_CONNECTION])
        notes.append(
            f"stopped run {flwr_run_id}: Flower still listed it as {status}, but its ServerApp ended "
            f"when the SuperLink restarted"
        )
    return notes


def orphaned_by_restart(run: dict, superlink_started_at: str | None) -> bool:
    """A run (``flwr ls`` JSON) that was started or running before the SuperLink's last start.
    A pending one is not: the restarted SuperLink will start it."""
    began = _instant(run.get("running-at")) or _instant(run.get("starting-at"))
    restarted = _instant(superlink_started_at)
    return began is not None and restarted is not None and began < restarted


def _instant(text) -> float | None:
    """Epoch seconds of an ISO time as zk0's state files and Flower's CLI write it ("N/A": None)."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(str(text).replace(" ", "T").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def find_run_record(paths: Paths, run_ref: str) -> Path:
    """A run's record directory from a Flower run id (the first run or a resume), a run name or a path."""
    from zk0cli.services.report import resolve_run

    if run_ref.isdigit():
        for config_file in sorted(paths.runs_dir.glob("*/config.json")):
            config = _json_or_none(config_file) or {}
            ids = [config.get("flwr_run_id"), *(r.get("flwr_run_id") for r in config.get("resumes", []))]
            if int(run_ref) in ids:
                return config_file.parent
        raise bad_input(
            f"no run record under {paths.runs_dir} belongs to run {run_ref}",
            hint="`zk0 runs` lists run ids; or pass the run's directory",
        )
    return resolve_run(run_ref, paths.runs_dir)


def _submit(paths: Paths, config) -> SubmittedRun:
    import tomli_w

    overrides = paths.state_dir / "run-configs" / f"{config.run_name}.toml"
    files.atomic_write_text(overrides, tomli_w.dumps(config.to_flwr()))
    document = flower.run_flwr(paths, ["run", str(app_dir()), flower.CLI_CONNECTION, "--run-config", str(overrides)])
    return SubmittedRun(str(document["run-id"]), Path(config.runs_dir) / config.run_name, config.num_server_rounds)


def flower_run(paths: Paths, run_id: str) -> dict:
    """What Flower knows of a run (``flwr ls --run-id``): status, times, traffic; {} if unknown."""
    runs = flower.run_flwr(paths, ["ls", flower.CLI_CONNECTION, "--run-id", run_id]).get("runs", [])
    return dict(runs[0]) if runs else {}


def run_status(paths: Paths, run_id: str) -> str:
    """Flower's status of a run (``pending``, ``running``, ``finished:completed`` ...)."""
    return str(flower_run(paths, run_id).get("status", ""))


def follow_run(paths: Paths, run: SubmittedRun, on_round, *, poll_s: float = 1.0, flower_every_s: float = 10.0) -> dict:
    """Report each round as its record appears; return the record's final status, raise if the run failed.

    The run record says how the ServerApp ended; Flower's own status catches a ServerApp that died
    without writing it (killed, out of memory).
    """
    from zk0cli.fl.records import ROUND_FILE, STATUS_FILE, summary

    reported: set[int] = set()
    next_flower_check = time.monotonic() + flower_every_s
    while True:
        fresh = [
            e for e in map(_json_or_none, run.run_dir.glob(ROUND_FILE.format("*"))) if e and e["round"] not in reported
        ]
        for entry in sorted(fresh, key=lambda e: e["round"]):
            reported.add(entry["round"])
            on_round(summary(entry), run.rounds)
        status = _json_or_none(run.run_dir / STATUS_FILE) or {}
        if status.get("state") == "completed":
            return status
        if status.get("state") == "failed":
            raise Zk0Error(
                f"run {run.run_id} failed: {status.get('error', 'unknown error')}",
                hint=status.get("hint") or f"zk0 logs run {run.run_id}",
            )
        if time.monotonic() >= next_flower_check:
            next_flower_check = time.monotonic() + flower_every_s
            flower_status = run_status(paths, run.run_id)
            if flower_status.startswith("finished"):
                time.sleep(poll_s)  # the record's last write may trail Flower's bookkeeping by a moment
                if (_json_or_none(run.run_dir / STATUS_FILE) or {}).get("state") not in ("completed", "failed"):
                    raise Zk0Error(
                        f"run {run.run_id} ended ({flower_status}) before its record was complete",
                        hint=f"zk0 logs run {run.run_id}; partial record in {run.run_dir}",
                    )
                continue
        time.sleep(poll_s)


def list_runs(paths: Paths) -> list[dict]:
    require_running(paths)
    return flower.run_flwr(paths, ["ls", flower.CLI_CONNECTION]).get("runs", [])


def stop_run(paths: Paths, run_id: str) -> dict:
    if not run_id.isdigit():
        raise bad_input(f"'{run_id}' is not a run id", hint="run ids are numbers: see `zk0 runs`")
    require_running(paths)
    flower.run_flwr(paths, ["stop", run_id, flower.CLI_CONNECTION])
    return {"run_id": run_id, "stopped": True}


def _json_or_none(path: Path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- serve --auto-run

AUTO_RUN_FILE = "auto-run.json"  # the session in progress, so a restarted loop never starts a second one
FAILED_SESSION_PAUSE_S = 60.0


def auto_run(
    paths: Paths,
    *,
    min_nodes: int,
    rounds: int,
    settings: dict,
    poll_s: float = 10.0,
    say=lambda message: print(message, flush=True),
) -> None:
    """Start a session when ``min_nodes`` nodes are online and none is running; repeat forever.
    A SuperLink that is (re)starting is waited for, not fatal."""
    marker = paths.state_dir / AUTO_RUN_FILE
    current = _json_or_none(marker) or {}
    waiting_said = -1
    while True:
        try:
            if current.get("run_id"):
                status = run_status(paths, current["run_id"])
                if status and not status.startswith("finished"):
                    time.sleep(poll_s)
                    continue
                say(f"auto-run: session run {current['run_id']} ended ({status or 'unknown to the SuperLink'})")
                current = {}
                marker.unlink(missing_ok=True)
                if status != "finished:completed":  # a broken config would otherwise fail one session per poll
                    say(
                        f"auto-run: next session in {FAILED_SESSION_PAUSE_S:g} s; see `zk0 logs server` for why "
                        "it failed"
                    )
                    time.sleep(FAILED_SESSION_PAUSE_S)
            online = [n for n in list_nodes(paths) if n["status"] == "online"]
            if len(online) >= min_nodes:
                values = {**settings, "min-available-nodes": min_nodes}
                run = submit_run(paths, rounds=rounds, settings=values)
                current = {"run_id": run.run_id, "run_dir": str(run.run_dir), "nodes": [n["node_id"] for n in online]}
                files.atomic_write_json(marker, current)
                say(
                    f"auto-run: {len(online)} node(s) online: started run {run.run_id} ({rounds} rounds) -> "
                    f"{run.run_dir}"
                )
            elif len(online) != waiting_said:
                waiting_said = len(online)
                say(f"auto-run: {len(online)}/{min_nodes} node(s) online, waiting")
        except Zk0Error as error:
            say(f"auto-run: {error.message} (retrying in {poll_s:g} s)")
        time.sleep(poll_s)


def _auto_run_main(argv: list[str]) -> int:
    import argparse

    from zk0cli.fl.run_config import parse_overrides

    parser = argparse.ArgumentParser(prog="zk0-auto-run")
    parser.add_argument("--min-nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    auto_run(Paths.resolve(), min_nodes=args.min_nodes, rounds=args.rounds, settings=parse_overrides(args.set))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["auto-run"]:
        sys.exit(_auto_run_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.executable} -m zk0cli.services.server auto-run --min-nodes N --rounds R [--set K=V]")
