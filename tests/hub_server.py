"""A real Hugging Face Hub API on loopback: olah serving git repositories offline (see
../shared/notes/hub-offline.md). Started by a test, stopped by it, by the process id it started.

One difference from the real Hub is corrected in front of it: for a file a repository does not
have, olah answers 401, which huggingface_hub reads as "no such repository", while the Hub
answers 404 with ``X-Error-Code: EntryNotFound``. transformers probes optional files and folders
(a VLM's chat templates, processor configs) and only a 404 lets it go on, so ``endpoint`` is a
small loopback proxy that forwards everything to olah and turns a 401 for a file (``/resolve/``)
or a folder listing (``/tree/``) into that 404."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

OLAH = Path(__file__).resolve().parents[1] / ".venv-olah" / "bin" / "olah-cli"


class OlahHub:
    def __init__(self, root: Path):
        self.root = root
        self.mirrors = root / "mirrors"
        self.port = _free_port()  # olah's own
        self._process: subprocess.Popen | None = None
        self._front = ThreadingHTTPServer(("127.0.0.1", 0), _front_handler(f"http://127.0.0.1:{self.port}"))
        self.endpoint = f"http://127.0.0.1:{self._front.server_address[1]}"

    def start(self, timeout_s: float = 60.0) -> OlahHub:
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "repos"}"\nmirrors-path = ["{self.mirrors}"]\n'
            f'mirror-netloc = "127.0.0.1:{self.port}"\nmirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            "[accessibility]\noffline = true\n"
        )
        log = open(self.root / "olah.log", "w")  # noqa: SIM115 - closed with the process
        self._process = subprocess.Popen(
            [str(OLAH), "-c", str(config)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.log').read_text()[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}", timeout=1)
                threading.Thread(target=self._front.serve_forever, daemon=True).start()
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer within {timeout_s:g} s")

    def stop(self) -> None:
        self._front.shutdown()
        self._front.server_close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def add_dataset(self, repo_id: str, source: Path, *, tag: str = "v3.0") -> str:
        """Serve ``source`` (a dataset directory) as the dataset repo ``repo_id``; returns its hf: URI."""
        self._add_repo(self.mirrors / "datasets" / repo_id, source, tag)
        return f"hf:{repo_id}"

    def add_model(self, repo_id: str, source: Path, *, tag: str | None = None) -> str:
        self._add_repo(self.mirrors / "models" / repo_id, source, tag)
        return repo_id

    def commit_model(self, repo_id: str, source: Path, *, tag: str | None = None) -> str:
        """A new commit on model ``repo_id``'s main branch with ``source``'s files (replacing the
        files of the same names); returns its commit id."""
        repo = self.mirrors / "models" / repo_id
        shutil.copytree(source, repo, dirs_exist_ok=True)
        for args in (["add", "-A"], ["commit", "-q", "-m", "update"], *([["tag", tag]] if tag else [])):
            subprocess.run([*_git(repo), *args], check=True, capture_output=True)
        return self.commit_of(repo_id, "HEAD")

    def commit_of(self, repo_id: str, revision: str) -> str:
        """The commit id a branch or tag of model ``repo_id`` names."""
        done = subprocess.run(
            [*_git(self.mirrors / "models" / repo_id), "rev-parse", f"{revision}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def client_env(self, hf_home: Path) -> dict[str, str]:
        """What a process that downloads needs: this Hub, its own cache, not offline."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_LEROBOT_HOME")}
        return {**env, "HF_ENDPOINT": self.endpoint, "HF_HOME": str(hf_home)}

    @staticmethod
    def _add_repo(repo: Path, source: Path, tag: str | None) -> None:
        shutil.copytree(source, repo)
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "dataset"]):
            subprocess.run([*_git(repo), *args], check=True, capture_output=True)
        if tag:
            subprocess.run([*_git(repo), "tag", tag], check=True, capture_output=True)


def _git(repo: Path) -> list[str]:
    return ["git", "-c", "user.name=zk0-test", "-c", "user.email=test@zk0.invalid", "-C", str(repo)]


def _front_handler(upstream: str) -> type[BaseHTTPRequestHandler]:
    client = httpx.Client(base_url=upstream, timeout=60, follow_redirects=False)

    hop_by_hop = ("content-length", "transfer-encoding", "content-encoding", "connection")

    class Front(BaseHTTPRequestHandler):
        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            reply = client.request(self.command, self.path, headers=headers, content=self.rfile.read(length))
            status, body = reply.status_code, reply.content
            kept = {k: v for k, v in reply.headers.items() if k.lower() not in hop_by_hop}
            size = reply.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(body))
            if status == 401 and ("/resolve/" in self.path or "/tree/" in self.path):
                status, body = 404, b'{"error": "Entry not found"}'
                size = str(len(body))
                kept = {"X-Error-Code": "EntryNotFound", "Content-Type": "application/json"}
            self.send_response(status)
            for key, value in kept.items():
                self.send_header(key, value)
            self.send_header("Content-Length", size)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self.forward()

        def do_HEAD(self) -> None:  # noqa: N802
            self.forward()

        def do_POST(self) -> None:  # noqa: N802
            self.forward()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    return Front


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
