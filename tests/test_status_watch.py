"""`zk0 status --watch` in a real terminal (tmux) against a live local federation.

The test starts a real server (`zk0 server serve --insecure`, SuperLink + fleet proxy) and a real
node (`zk0 node join`), then writes a run's rounds one by one through zk0's run record writer
(replaying a real recorded run) while the dashboard runs: the round counter must advance on
screen, and q / Ctrl-C must leave the terminal as it was (primary screen, cursor shown, canonical
mode and echo back on).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from serve_args import insecure_loopback_serve
from test_status import RECORD, free_port, replay_record

from zk0cli.core.paths import Paths

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux)"),
]
ZK0 = str(Path(sys.executable).parent / "zk0")


class Terminal:
    """One tmux session on a private server socket, driven with send-keys and capture-pane."""

    def __init__(self, env: dict[str, str], width: int = 100, height: int = 50):
        self.socket = f"zk0-test-{uuid.uuid4().hex[:8]}"
        exports = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
        self.tmux(
            "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), *exports, "bash --norc --noprofile -i"
        )

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)
        self.tmux("send-keys", "-t", "t", "Enter")

    def key(self, key: str) -> None:
        self.tmux("send-keys", "-t", "t", key)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def flags(self) -> tuple[str, str]:
        """(alternate screen on, cursor visible) as tmux sees the pane: '0'/'1' each."""
        alternate, cursor = self.tmux("display-message", "-p", "-t", "t", "#{alternate_on} #{cursor_flag}").split()
        return alternate, cursor

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on screen within {timeout_s:g} s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def zk0(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([ZK0, *args], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def federation(zk0_home, real_dataset):
    """A real local federation under this test's ZK0_HOME: server (insecure, loopback) + one node."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    port = free_port()
    zk0(
        *insecure_loopback_serve(port),
        "--detach",
        env=env,
    )
    try:
        zk0(
            "node",
            "join",
            "--server",
            f"127.0.0.1:{port}",
            "--dataset",
            str(real_dataset),
            "--name",
            "alice",
            "--insecure",
            "--skip-validation",
            "--detach",
            env=env,
        )
        yield env
    finally:
        subprocess.run([ZK0, "stop", "--all"], capture_output=True, env=env, timeout=120)


def assert_terminal_clean(term: Terminal) -> None:
    screen = term.wait_for(r"rc=0")
    assert "local services" not in screen, "the dashboard was left on the primary screen"
    assert term.flags() == ("0", "1"), "alternate screen still on or cursor still hidden"
    term.type("echo MODES=$(stty -a | tr ' ' '\\n' | grep -xE -- '-?(icanon|echo)' | tr '\\n' ,)")
    modes = re.search(r"^MODES=(\S*)$", term.wait_for(r"(?m)^MODES=\S*$"), re.M).group(1)
    assert set(modes.strip(",").split(",")) == {"icanon", "echo"}, f"terminal left with: {modes}"


def test_watch_follows_live_federation_and_quits_cleanly(federation):
    paths = Paths.resolve()
    record = replay_record(paths.runs_dir, rounds=1, state="running")
    term = Terminal(
        {"ZK0_HOME": federation["ZK0_HOME"], "PATH": federation["PATH"], "PS1": "$ ", "TERM": "xterm-256color"}
    )
    try:
        term.type(f"{ZK0} status --watch; echo rc=$?")
        screen = term.wait_for(r"1/3", timeout_s=60)
        assert "node · alice" in screen and "q or Ctrl-C to quit" in screen
        term.wait_for(r"federation · 1 online")
        assert term.flags()[0] == "1"  # drawn in the alternate screen: nothing scrolls into history

        record.write_round(json.loads((RECORD / "round_2_server_eval.json").read_text()))
        term.wait_for(r"2/3")
        record.write_round(json.loads((RECORD / "round_3_server_eval.json").read_text()))
        record.write_status("completed", rounds=3)
        screen = term.wait_for(r"4242 +━+ 3/3 .*\n.*completed")  # 100 columns: the status goes under the run id
        assert "round 3 of run 4242" in screen

        term.key("q")
        assert_terminal_clean(term)

        term.type("clear")
        term.type(f"{ZK0} status --watch; echo rc=$?")
        term.wait_for(r"local services", timeout_s=60)
        term.key("C-c")
        assert_terminal_clean(term)
    finally:
        term.close()
