"""A real Hugging Face Hub API on loopback: olah serving git repositories offline (see
../shared/notes/hub-offline.md). Started by a test, stopped by it, by the process id it started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

OLAH = Path(__file__).resolve().parents[1] / ".venv-olah" / "bin" / "olah-cli"


class OlahHub:
    def __init__(self, root: Path):
        self.root = root
        self.mirrors = root / "mirrors"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

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
                httpx.get(self.endpoint, timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer within {timeout_s:g} s")

    def stop(self) -> None:
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

    def add_model(self, repo_id: str, source: Path) -> str:
        self._add_repo(self.mirrors / "models" / repo_id, source, None)
        return repo_id

    def client_env(self, hf_home: Path) -> dict[str, str]:
        """What a process that downloads needs: this Hub, its own cache, not offline."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_LEROBOT_HOME")}
        return {**env, "HF_ENDPOINT": self.endpoint, "HF_HOME": str(hf_home)}

    @staticmethod
    def _add_repo(repo: Path, source: Path, tag: str | None) -> None:
        shutil.copytree(source, repo)
        git = ["git", "-c", "user.name=zk0-test", "-c", "user.email=test@zk0.invalid", "-C", str(repo)]
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "dataset"]):
            subprocess.run([*git, *args], check=True, capture_output=True)
        if tag:
            subprocess.run([*git, "tag", tag], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
