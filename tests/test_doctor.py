"""`zk0 doctor`: the real checks on this machine, the GPU path from recorded nvidia-smi output,
server/node role checks against real certificates and a real TLS /health server, and the bundle."""

from __future__ import annotations

import datetime as dt
import http.server
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from zk0cli.core import config as config_mod
from zk0cli.core.checks import Status, ok
from zk0cli.core.config import Config
from zk0cli.core.paths import Paths
from zk0cli.services import doctor
from zk0cli.services.doctor import gpu, system
from zk0cli.services.doctor.bundle import redact
from zk0cli.services.init import init_node, init_server
from zk0cli.services.pki import ServerPki

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
NAMES_ALWAYS = [
    "config",
    "python",
    "packages",
    "gpu",
    "cpu/ram",
    "disk",
    "video decoding",
    "hf hub",
    "hf token",
    "hf cache",
    "role",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def by_name(results) -> dict:
    return {r.name: r for r in results}


# --- this machine, for real ------------------------------------------------------------------


def test_doctor_json_on_this_machine(cli, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")  # let the Hub check really try (unreachable here: a warning)
    started = time.monotonic()
    result = cli("doctor", "--json")
    elapsed = time.monotonic() - started
    report = result.json()
    assert set(report) == {"role", "ready", "summary", "checks"}
    assert [c["name"] for c in report["checks"]] == NAMES_ALWAYS
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "fix", "data"}
        assert check["status"] in {"ok", "warn", "fail", "skip"}
        assert check["detail"]
        if check["status"] in ("warn", "fail"):
            assert check["fix"], f"{check['name']} has no fix"
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert result.code == (4 if failed else 0) and report["ready"] is not failed
    assert report["summary"]["fail"] == len(failed)
    checks = {c["name"]: c for c in report["checks"]}
    if shutil.which("nvidia-smi") is None:  # the no-GPU machine this project is developed on
        assert checks["gpu"]["status"] == "warn" and "no GPU" in checks["gpu"]["detail"]
        assert "slow" in checks["gpu"]["detail"]
    assert checks["video decoding"]["data"]["backends"]["pyav"] == ""  # PyAV decodes our own clip
    if checks["hf hub"]["status"] == "warn":
        assert "HF_HUB_OFFLINE=1" in checks["hf hub"]["fix"]
    assert checks["role"]["status"] == "warn" and "zk0 init" in checks["role"]["fix"]
    assert elapsed < 60


def test_doctor_human_output_has_a_fix_under_every_problem(cli):
    result = cli("doctor", "--skip-network")
    rows = [line.strip() for line in result.stdout.splitlines()]
    problems = [row for row in rows if row.startswith(("! ", "✗ "))]
    assert problems, "this machine has at least the no-role warning"
    assert sum(row.startswith("fix:") for row in rows) == len(problems)
    assert any(re.match(r"✓\s+python\s", row) for row in rows)
    assert result.code == (4 if any(row.startswith("✗ ") for row in rows) else 0)


def test_offline_mode_and_skip_network(tmp_path):
    paths = Paths.resolve(tmp_path / "home")
    results = by_name(
        doctor.run_checks(paths, Config(), role="", skip_network=True, checks=_only("hf hub", "hf token"))
    )
    assert (
        results["hf hub"].status is Status.OK and "offline" in results["hf hub"].detail
    )  # conftest sets HF_HUB_OFFLINE=1
    assert results["hf token"].status is Status.OK and results["hf token"].data["present"] is False


def test_token_is_reported_but_never_shown(tmp_path, monkeypatch):
    secret = "hf_doctorNeverPrintsThis1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    result = doctor.run_checks(Paths.resolve(tmp_path), Config(), role="", checks=_only("hf token"))[0]
    assert result.status is Status.OK and result.data["present"] is True
    assert secret not in str(result.to_dict())


def test_broken_config_is_a_failed_check_not_a_crash(cli, zk0_home):
    config_file = Paths.resolve().config_file
    config_file.parent.mkdir(parents=True)
    config_file.write_text("role = \n")
    result = cli("doctor", "--json", "--skip-network")
    checks = {c["name"]: c for c in result.json()["checks"]}
    assert result.code == 4
    assert checks["config"]["status"] == "fail" and str(config_file) in checks["config"]["detail"]
    assert config_file.read_text() == "role = \n"


def test_bad_input(cli, tmp_path):
    result = cli("doctor", "--role", "banana")
    assert (
        result.code == 2 and "banana" in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr
    )
    result = cli("doctor", "--skip-network", "--bundle", str(tmp_path))
    assert result.code == 2 and "is a directory" in result.stderr and "Traceback" not in result.stderr


def test_zk0_home_that_cannot_be_created_fails_the_disk_check(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = doctor.run_checks(Paths.resolve(blocker / "home"), Config(), role="", checks=_only("disk"))[0]
    assert result.status is Status.FAIL and "not writable" in result.detail and "ZK0_HOME" in result.fix


def test_known_good_set_matches_requirements_lock():
    pins = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    assert system.KNOWN_GOOD == {name: pins[name] for name in system.KNOWN_GOOD}


# --- the runner: nothing hangs, nothing crashes the command ----------------------------------


def test_a_hanging_or_crashing_check_is_reported_and_does_not_block(tmp_path):
    def hangs(ctx):
        time.sleep(30)

    def crashes(ctx):
        raise RuntimeError("driver exploded")

    checks = [
        doctor.Check("hangs", hangs, budget_s=0.3),
        doctor.Check("crashes", crashes),
        doctor.Check("fine", lambda _ctx: ok("fine", "fine")),
    ]
    started = time.monotonic()
    results = by_name(doctor.run_checks(Paths.resolve(tmp_path), Config(), role="", checks=checks))
    assert time.monotonic() - started < 5
    assert (
        results["hangs"].status is Status.FAIL
        and "no answer within" in results["hangs"].detail
        and results["hangs"].fix
    )
    assert results["crashes"].status is Status.FAIL and "driver exploded" in results["crashes"].detail
    assert "RuntimeError" in results["crashes"].data["traceback"]
    assert results["fine"].status is Status.OK


# --- GPU path: recorded nvidia-smi output, torch.cuda mocked (this machine has no GPU) --------


def recorded_smi(name: str):
    """A command runner answering nvidia-smi from tests/data/nvidia_smi_<name>*."""

    def run(argv: list[str], timeout_s: float) -> str:
        if argv == list(gpu.SMI_QUERY):
            return (DATA / f"nvidia_smi_{name}_query.csv").read_text()
        if argv == list(gpu.SMI_BANNER):
            return (DATA / f"nvidia_smi_{name}.txt").read_text()
        raise AssertionError(f"unexpected command {argv}")

    return run


def fake_cuda(monkeypatch, devices: list[tuple[str, int, int, tuple[int, int]]], runtime: str = "13.0"):
    """Make torch.cuda report ``devices`` as (name, total bytes, free bytes, capability)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(devices))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: SimpleNamespace(
            name=devices[i][0], total_memory=devices[i][1], major=devices[i][3][0], minor=devices[i][3][1]
        ),
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (devices[i][2], devices[i][1]))
    monkeypatch.setattr(torch.version, "cuda", runtime)


def gpu_check(tmp_path, runner):
    return doctor.run_checks(Paths.resolve(tmp_path), Config(), role="", run_command=runner, checks=_only("gpu"))[0]


def test_parse_recorded_nvidia_smi_samples():
    h100 = gpu.parse_smi_query((DATA / "nvidia_smi_h100_query.csv").read_text())
    assert h100 == [gpu.SmiGpu(0, "NVIDIA H100 80GB HBM3", 81559, 81004, "9.0", "580.159.04")]
    pair = gpu.parse_smi_query((DATA / "nvidia_smi_2x4090_query.csv").read_text())
    assert [(g.index, g.memory_free_mib) for g in pair] == [(0, 1187), (1, 23990)]
    unified = gpu.parse_smi_query((DATA / "nvidia_smi_unified_memory_query.csv").read_text())
    assert unified[0].memory_total_mib is None and unified[0].compute_capability == "12.1"
    assert gpu.parse_smi_query((DATA / "nvidia_smi_no_driver.txt").read_text()) == []
    assert gpu.parse_smi_driver_cuda((DATA / "nvidia_smi_h100.txt").read_text()) == "13.0"
    assert gpu.parse_smi_driver_cuda((DATA / "nvidia_smi_t4.txt").read_text()) == "12.2"
    assert gpu.parse_smi_driver_cuda("no banner") == ""


def test_gpu_h100_fits(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, [("NVIDIA H100 80GB HBM3", 81559 * 2**20, 81004 * 2**20, (9, 0))])
    result = gpu_check(tmp_path, recorded_smi("h100"))
    assert result.status is Status.OK, result.detail
    assert "NVIDIA H100 80GB HBM3" in result.detail and "driver 580.159.04 (CUDA 13.0)" in result.detail
    assert "fits on GPU 0" in result.detail and "8 GiB" in result.detail
    device = result.data["devices"][0]
    assert device["compute_capability"] == "9.0" and device["bf16"] and device["smolvla_training_fits"]
    assert result.data["training_memory_needed_gib"] == 8.0 and "estimate" in result.data["training_memory_source"]


def test_gpu_busy_card_and_free_card_picks_the_free_one(tmp_path, monkeypatch):
    total = 24564 * 2**20
    fake_cuda(
        monkeypatch,
        [
            ("NVIDIA GeForce RTX 4090", total, 1187 * 2**20, (8, 9)),
            ("NVIDIA GeForce RTX 4090", total, 23990 * 2**20, (8, 9)),
        ],
        runtime="12.4",
    )
    result = gpu_check(tmp_path, recorded_smi("2x4090"))
    assert result.status is Status.OK and "fits on GPU 1" in result.detail
    assert [d["smolvla_training_fits"] for d in result.data["devices"]] == [False, True]


def test_gpu_without_bf16_or_memory_warns(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, [("Tesla T4", 15360 * 2**20, 14913 * 2**20, (7, 5))], runtime="12.1")
    result = gpu_check(tmp_path, recorded_smi("t4"))
    assert result.status is Status.WARN and "no bf16" in result.detail and "8.0" in result.fix
    fake_cuda(monkeypatch, [("Tesla T4", 15360 * 2**20, 3 * GIB, (7, 5))], runtime="12.1")
    result = gpu_check(tmp_path, recorded_smi("t4"))
    assert result.status is Status.WARN and "does not fit" in result.detail and "nvidia-smi" in result.fix


def test_driver_too_old_for_torch_cuda_runtime(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, [("Tesla T4", 15360 * 2**20, 14913 * 2**20, (7, 5))], runtime="13.0")
    result = gpu_check(tmp_path, recorded_smi("t4"))
    assert result.status is Status.FAIL and "driver is too old" in result.detail
    assert "CUDA 13.0" in result.fix


def test_gpu_present_but_unusable_by_this_torch(tmp_path):
    """Real torch (a CUDA 13.0 build that finds no GPU here) against a driver that only does CUDA 12.2."""
    import torch

    if torch.cuda.is_available() or torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch on a machine without a GPU")
    result = gpu_check(tmp_path, recorded_smi("t4"))
    assert result.status is Status.FAIL and "Tesla T4" in result.detail and "cannot use it" in result.detail
    assert "driver" in result.fix


def test_torch_warning_explains_why_a_visible_gpu_is_unusable(tmp_path, monkeypatch):
    import warnings

    import torch

    def refuses():
        warnings.warn(
            "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020).", stacklevel=2
        )
        return False

    monkeypatch.setattr(torch.cuda, "is_available", refuses)
    monkeypatch.setattr(torch.version, "cuda", "12.1")  # within what the driver supports: the warning is the reason
    result = gpu_check(tmp_path, recorded_smi("t4"))
    assert result.status is Status.FAIL and "driver on your system is too old" in result.detail


def test_nvidia_smi_without_driver_is_a_warning(tmp_path):
    def broken(argv, timeout_s):
        raise subprocess.CalledProcessError(9, argv, output=(DATA / "nvidia_smi_no_driver.txt").read_text())

    result = gpu_check(tmp_path, broken)
    assert result.status is Status.WARN and "couldn't communicate with the NVIDIA driver" in result.detail
    assert "driver" in result.fix


def test_nvidia_smi_hanging_is_cut_off(tmp_path):
    def hangs(argv, timeout_s):
        raise subprocess.TimeoutExpired(argv, timeout_s)

    result = gpu_check(tmp_path, hangs)
    assert result.status is Status.WARN and "did not answer" in result.data["nvidia_smi"]


# --- server role -----------------------------------------------------------------------------


@pytest.fixture
def server_home(tmp_path, monkeypatch) -> Paths:
    """A server initialised by the real `zk0 init` service, listening config on a free port."""
    paths = Paths.resolve()
    init_server(paths, paths.config_file, ["fl.example.org"], force=False)
    monkeypatch.setenv("ZK0_SERVER_PORT", str(free_port()))
    return paths


def test_server_role_without_certificates(cli):
    result = cli("doctor", "--role", "server", "--skip-network", "--json")
    checks = {c["name"]: c for c in result.json()["checks"]}
    assert result.code == 4
    assert checks["server certs"]["status"] == "fail" and "zk0 init --role server" in checks["server certs"]["fix"]


def test_server_role_with_certificates(cli, server_home):
    result = cli("doctor", "--skip-network", "--json")  # the role comes from the config init wrote
    report = result.json()
    checks = {c["name"]: c for c in report["checks"]}
    assert report["role"] == "server"
    assert checks["server certs"]["status"] == "ok", checks["server certs"]
    assert set(checks["server certs"]["data"]["names"]) == {"fl.example.org", "localhost", "127.0.0.1"}
    assert checks["server port"]["status"] == "ok"
    assert result.code == (4 if report["summary"]["fail"] else 0)


def replace_server_cert(paths: Paths, *, not_after: dt.datetime) -> None:
    """Sign a new server certificate with the zk0 CA, valid until ``not_after``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    pki = ServerPki.at(paths.pki_dir)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    old = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    cert = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=400))
        .not_valid_after(not_after)
        .add_extension(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
        .sign(ca_key, hashes.SHA384())
    )
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(("days", "status", "words"), [(10, Status.WARN, "expires in"), (-3, Status.FAIL, "expired")])
def test_expiring_and_expired_server_certificate(server_home, days, status, words):
    replace_server_cert(server_home, not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=days, hours=1))
    config = config_mod.load(server_home.config_file).config
    result = doctor.run_checks(server_home, config, role="server", checks=_only("server certs"))[0]
    assert result.status is status and words in result.detail
    assert "zk0 init --role server --force" in result.fix


def test_server_certificate_missing_a_configured_address(server_home):
    config = config_mod.load(server_home.config_file).config
    config.server.public_addresses.append("other.example.org")
    result = doctor.run_checks(server_home, config, role="server", checks=_only("server certs"))[0]
    assert result.status is Status.WARN and "other.example.org" in result.detail


def test_server_key_readable_by_others_fails(server_home):
    ServerPki.at(server_home.pki_dir).server_key.chmod(0o644)
    config = config_mod.load(server_home.config_file).config
    result = doctor.run_checks(server_home, config, role="server", checks=_only("server certs"))[0]
    assert result.status is Status.FAIL and "chmod 600" in result.fix


class HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server(server_home):
    """A tiny HTTPS server with the certificate `zk0 init --role server` made, answering GET /health."""
    pki = ServerPki.at(server_home.pki_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_server_port_held_by_our_server_or_by_another_program(server_home, health_server, monkeypatch):
    monkeypatch.setenv("ZK0_SERVER_PORT", str(health_server))
    config = config_mod.load(server_home.config_file).config
    config.server.host = "127.0.0.1"
    result = doctor.run_checks(server_home, config, role="server", checks=_only("server port"))[0]
    assert result.status is Status.OK and "running zk0 server" in result.detail
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        config.server.port = other.getsockname()[1]  # accepts TCP, never speaks TLS: the probe waits out its timeout
        result = doctor.run_checks(server_home, config, role="server", timeout_s=0.5, checks=_only("server port"))[0]
    assert result.status is Status.FAIL and "another program" in result.detail and "server.port" in result.fix


# --- node role -------------------------------------------------------------------------------


def make_node(tmp_path, server_paths: Paths, port: int) -> Paths:
    node_paths = Paths.resolve(tmp_path / "node")
    init_node(
        node_paths,
        node_paths.config_file,
        ServerPki.at(server_paths.pki_dir).ca_cert,
        server=f"127.0.0.1:{port}",
        force=False,
    )
    return node_paths


def node_checks(node_paths: Paths) -> dict:
    config = config_mod.load(node_paths.config_file).config
    return by_name(doctor.run_checks(node_paths, config, role="node", checks=_only("node keys", "server")))


def test_node_with_server_down_is_unreachable_fast(tmp_path, server_home):
    node_paths = make_node(tmp_path, server_home, free_port())
    started = time.monotonic()
    results = node_checks(node_paths)
    assert time.monotonic() - started < 5
    assert results["node keys"].status is Status.OK
    assert results["server"].status is Status.FAIL and "UNREACHABLE" in results["server"].detail
    assert "zk0 server serve" in results["server"].fix and results["server"].data["stage"] == "tcp"


def test_node_with_real_tls_health_server(tmp_path, server_home, health_server):
    results = node_checks(make_node(tmp_path, server_home, health_server))
    server = results["server"]
    assert server.status is Status.OK, server.detail
    assert "TLS chain to the pinned CA ok" in server.detail and "GET /health 200" in server.detail
    assert 800 < server.data["days_left"] <= 825


def test_node_pinning_another_ca_fails_the_chain(tmp_path, server_home, health_server):
    other_ca = Paths.resolve(tmp_path / "other")
    init_server(other_ca, other_ca.config_file, [], force=False)
    results = node_checks(make_node(tmp_path, other_ca, health_server))
    assert results["server"].status is Status.FAIL and "not trusted by the pinned CA" in results["server"].detail
    assert results["server"].data["stage"] == "tls" and "--ca-cert" in results["server"].fix


def test_node_without_init_or_server(tmp_path):
    paths = Paths.resolve(tmp_path / "bare")
    results = by_name(doctor.run_checks(paths, Config(), role="node", checks=_only("node keys", "server")))
    assert results["node keys"].status is Status.FAIL and "zk0 init --role node" in results["node keys"].fix
    assert results["server"].status is Status.WARN and "zk0 config set node.server" in results["server"].fix


# --- support bundle --------------------------------------------------------------------------


def test_bundle_is_complete_and_redacted(cli, server_home, tmp_path, monkeypatch):
    token = "hf_PlantedTokenThatMustNotLeak0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    key_text = ServerPki.at(server_home.pki_dir).server_key.read_text()
    key_body = key_text.splitlines()[1]
    server_home.log_dir.mkdir(parents=True, exist_ok=True)
    (server_home.log_dir / "superlink.log").write_text(
        f"INFO started\nDEBUG env HF_TOKEN={token}\nERROR dumped a key by mistake:\n{key_text}INFO after\n"
    )
    (server_home.log_dir / "blob.bin").write_bytes(b"\0\1binary")
    target = tmp_path / "out" / "support.tar.gz"
    result = cli("doctor", "--skip-network", "--json", "--bundle", str(target))
    assert result.code in (0, 4) and result.json()["bundle"]["path"] == str(target)
    with tarfile.open(target) as archive:
        texts = {m.name: archive.extractfile(m).read().decode() for m in archive.getmembers()}
    assert set(texts) == {
        f"zk0-support/{name}"
        for name in (
            "doctor.json",
            "versions.json",
            "pip-freeze.txt",
            "environment.json",
            "config.toml",
            "logs/superlink.log",
        )
    }
    everything = "\n".join(texts.values())
    assert token not in everything and key_body not in everything and "PRIVATE KEY-----" not in everything
    log = texts["zk0-support/logs/superlink.log"]
    assert "HF_TOKEN=***" in log and "[PRIVATE KEY removed]" in log and "INFO after" in log
    assert '"HF_TOKEN": "***"' in texts["zk0-support/environment.json"]
    assert "flwr==" in texts["zk0-support/pip-freeze.txt"] and '"server certs"' in texts["zk0-support/doctor.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert not list(target.parent.glob(".*.tmp"))  # written atomically: no temp file left


def test_redact_common_secret_shapes():
    cases = {
        "Authorization: Bearer abcdefgh12345678": "abcdefgh12345678",
        '{"password": "hunter2"}': "hunter2",
        "api_key = 'sk-live-123456'": "sk-live-123456",
        "https://user:pa55w0rd@example.org/x": "pa55w0rd",
        "ghp_abcdefghijklmnopqrstuvwxyz0123": "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n(cut)": "b3BlbnNzaC1rZXk",
    }
    for text, secret in cases.items():
        assert secret not in redact(text), text
    assert redact("round 3 loss=0.12") == "round 3 loss=0.12"


def _only(*names: str) -> list[doctor.Check]:
    return [c for c in doctor.CHECKS if c.name in names]
