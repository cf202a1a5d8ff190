"""What the fleet front costs a node, and what a flood of refused calls costs the server.

    .venv/bin/python bench/fleet_front.py [--mib 190] [--nodes 4] [--flood-s 5]

The front (``python -m zk0cli.services.fleet_front``, TLS, node auth against a registry) runs as
the server runs it, in front of a stand-in SuperLink: an HTTP/1.1 server on loopback, TLS too,
that swallows ``push-object`` bodies and answers ``pull-object`` with 5 MiB objects, so what is
measured is the front and not Flower's handlers. Each path is timed against the same stand-in
reached directly, in the same run, alternating:

1. One node moving ``--mib`` MiB up (5 MiB push-object calls, Flower's chunk size, each signed
   as a SuperNode signs it) and the same down: time through the front / time direct.
   Target: <= 1.10.
2. ``--nodes`` nodes doing that at once: aggregate MB/s through the front / direct. Target >= 0.9.
3. The front's peak RSS over all of it. Target < 100 MB.
   Beside it, the CPU seconds per GiB of the client, the stand-in and the front: the front
   decrypts and re-encrypts every byte, the TLS work of both ends together, so while all three
   share the cores the time ratio of (1) is about 1 + front / (client + stand-in).
4. ``--flood-s`` seconds of Control-API calls from outside (each refused with 403): requests/s
   refused, and the bytes of log they wrote (the refusal summary, one line per interval).

Prints each measure and its ratio; exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h11
import httpx
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from node_auth_headers import signed_headers  # noqa: E402

from zk0cli.services.flower import free_port  # noqa: E402
from zk0cli.services.pki import create_server_pki  # noqa: E402

CHUNK = 5 * 1024 * 1024  # Flower's array chunk: one push-object or pull-object call each
TARGET_TIME_RATIO = 1.10
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_FRONT_RSS_MB = 100


class StandInSuperLink:
    """Swallows request bodies, answers pull-object with CHUNK bytes and everything else with 200."""

    def __init__(self, port: int, certfile: Path, keyfile: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.port = port
        self.object = os.urandom(CHUNK)

    async def serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context)
        print("stand-in ready", flush=True)
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        target = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(256 * 1024)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    target = event.target
                elif isinstance(event, h11.EndOfMessage):
                    body = self.object if target.endswith(b"pull-object") else b"ok"
                    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/protobuf")]
                    writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                    writer.write(conn.send(h11.Data(data=body)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (ConnectionError, h11.ProtocolError, ssl.SSLError):
            return
        finally:
            writer.close()


def move(base_url: str, ca: Path, key: ec.EllipticCurvePrivateKey, mib: int) -> float:
    """Seconds for one node to push ``mib`` MiB and pull as much, in CHUNK calls on one connection."""
    body = os.urandom(CHUNK)
    calls = max(1, mib * 1024 * 1024 // CHUNK)
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, verify=ssl.create_default_context(cafile=str(ca)), timeout=60) as client:
        for _ in range(calls):
            pushed = client.post("/v1/fleet/push-object", content=body, headers=dict(signed_headers(key)))
            assert pushed.status_code == 200, pushed.text[:200]
        for _ in range(calls):
            pulled = client.post("/v1/fleet/pull-object", content=b"id", headers=dict(signed_headers(key)))
            assert pulled.status_code == 200 and len(pulled.content) == CHUNK, pulled.status_code
    return time.perf_counter() - started


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def flood(base_url: str, ca: Path, seconds: float) -> int:
    """Refused Control-API calls sent from outside in ``seconds`` (each on a fresh connection: the
    front closes after a refusal)."""
    context = ssl.create_default_context(cafile=str(ca))
    refused = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with httpx.Client(base_url=base_url, verify=context, timeout=10) as client:
            assert client.post("/v1/control/list-runs", content=b"").status_code == 403
            refused += 1
    return refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=190, help="MiB each node moves up, and again down")
    parser.add_argument("--nodes", type=int, default=4, help="nodes at once for the throughput ratio")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings of the one-node move")
    parser.add_argument("--flood-s", type=float, default=5.0, help="seconds of refused control calls")
    parser.add_argument("--stand-in", nargs=3, metavar=("PORT", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_in:  # the stand-in SuperLink, in a process of its own as the real one is
        port, cert, key = args.stand_in
        asyncio.run(StandInSuperLink(int(port), Path(cert), Path(key)).serve())
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = create_server_pki(root / "pki", ["127.0.0.1"])
        keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(args.nodes)]
        registry = {
            str(n): {
                "name": f"node{n}",
                "public_key": key.public_key()
                .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                .decode(),
            }
            for n, key in enumerate(keys, start=1)
        }
        (root / "server-nodes.json").write_text(json.dumps(registry))
        upstream_port, front_port = free_port(), free_port()
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--stand-in", str(upstream_port), str(pki.server_cert), str(pki.server_key)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert upstream.stdout is not None and upstream.stdout.readline().strip() == "stand-in ready"
        log_path = root / "front.log"
        with log_path.open("wb") as log:
            front = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "zk0cli.services.fleet_front",
                    "--listen",
                    f"127.0.0.1:{front_port}",
                    "--upstream",
                    f"127.0.0.1:{upstream_port}",
                    "--certfile",
                    str(pki.server_cert),
                    "--keyfile",
                    str(pki.server_key),
                    "--cafile",
                    str(pki.ca_cert),
                    "--nodes-file",
                    str(root / "server-nodes.json"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        rss_peak = [0]
        sampling = threading.Event()

        def sample_rss() -> None:
            process = psutil.Process(front.pid)
            while not sampling.is_set():
                rss_peak[0] = max(rss_peak[0], process.memory_info().rss)
                time.sleep(0.05)

        try:
            deadline = time.monotonic() + 30
            while b"fleet proxy on" not in log_path.read_bytes():
                assert front.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            threading.Thread(target=sample_rss, daemon=True).start()
            via_front, direct = f"https://127.0.0.1:{front_port}", f"https://127.0.0.1:{upstream_port}"
            move(via_front, pki.ca_cert, keys[0], 10)  # warm both paths (TLS, imports)
            move(direct, pki.ca_cert, keys[0], 10)
            processes = {"client": psutil.Process(), "stand-in": psutil.Process(upstream.pid)}
            processes["front"] = psutil.Process(front.pid)
            cpu = {path: dict.fromkeys(processes, 0.0) for path in ("front", "direct")}

            def timed_move(path: str, base_url: str) -> float:
                before = {name: cpu_seconds(process) for name, process in processes.items()}
                seconds = move(base_url, pki.ca_cert, keys[0], args.mib)
                for name, process in processes.items():
                    cpu[path][name] += cpu_seconds(process) - before[name]
                return seconds

            timings = [(timed_move("front", via_front), timed_move("direct", direct)) for _ in range(args.rounds)]
            front_s = statistics.median(f for f, _ in timings)
            direct_s = statistics.median(d for _, d in timings)

            def together(base_url: str) -> float:
                started = time.perf_counter()
                with ThreadPoolExecutor(args.nodes) as pool:
                    list(pool.map(lambda key: move(base_url, pki.ca_cert, key, args.mib), keys))
                return 2 * args.nodes * args.mib / 1.048576 / (time.perf_counter() - started)  # MB/s, up + down

            front_mbs, direct_mbs = together(via_front), together(direct)
            log_before = log_path.stat().st_size
            refused = flood(via_front, pki.ca_cert, args.flood_s)
            front.send_signal(15)  # the summary of what was refused is flushed on exit
            front.wait(30)
            log_bytes = log_path.stat().st_size - log_before
        finally:
            sampling.set()
            for process in (front, upstream):
                if process.poll() is None:
                    process.kill()
    moved = 2 * args.mib
    time_ratio, throughput_ratio = front_s / direct_s, front_mbs / direct_mbs
    rss_mb = rss_peak[0] / 1e6
    print(
        f"one node, {moved} MiB ({args.mib} up + {args.mib} down, 5 MiB calls), median of {args.rounds}: "
        f"front {front_s:.2f} s, direct {direct_s:.2f} s; ratio {time_ratio:.3f} (target <= {TARGET_TIME_RATIO})"
    )
    print(
        f"{args.nodes} nodes at once: front {front_mbs:.0f} MB/s, direct {direct_mbs:.0f} MB/s; "
        f"ratio {throughput_ratio:.3f} (target >= {TARGET_THROUGHPUT_RATIO})"
    )
    relayed_gib = args.rounds * moved / 1024
    per_gib = {path: {name: seconds / relayed_gib for name, seconds in each.items()} for path, each in cpu.items()}
    ends = per_gib["direct"]["client"] + per_gib["direct"]["stand-in"]
    added = per_gib["front"]["front"] / ends
    print(
        f"CPU s per GiB moved: client {per_gib['direct']['client']:.1f}, stand-in "
        f"{per_gib['direct']['stand-in']:.1f}; the front adds {per_gib['front']['front']:.1f} ({added:.2f}x what "
        f"both ends spend). With all three busy on {os.cpu_count()} cores the time ratio is about {1 + added:.2f}."
    )
    print(f"front peak RSS {rss_mb:.0f} MB (target < {TARGET_FRONT_RSS_MB} MB)")
    print(
        f"flood: {refused / args.flood_s:.0f} refused control calls/s for {args.flood_s:g} s "
        f"({refused} in all) wrote {log_bytes} bytes of log ({log_bytes / max(refused, 1):.2f} bytes per refusal)"
    )
    ok = time_ratio <= TARGET_TIME_RATIO and throughput_ratio >= TARGET_THROUGHPUT_RATIO
    return 0 if ok and rss_mb < TARGET_FRONT_RSS_MB else 1


if __name__ == "__main__":
    sys.exit(main())
