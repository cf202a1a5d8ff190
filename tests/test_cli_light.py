"""Start-up stays light: the everyday commands never import the heavy ML stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "lerobot", "transformers", "flwr", "numpy", "pandas", "pyarrow")

# Runs one command through the real entry point, then reports which heavy modules got imported.
PROBE = f"""
import json, sys
from zk0cli.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {set(HEAVY)!r})
found = sorted({{n.split(".")[0] for n in heavy}})
sys.__stderr__.write("\\nHEAVY=" + json.dumps({{"code": code, "heavy": found}}) + "\\n")
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["config", "show"], ["init", "--help"], ["doctor", "--help"]],
    ids=lambda args: " ".join(args),
)
def test_command_imports_no_heavy_module(args, tmp_path):
    env = {"ZK0_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60, env=env)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert marker, proc.stderr
    found = json.loads(marker[-1].removeprefix("HEAVY="))
    assert found["code"] in (0, None), proc.stdout + proc.stderr
    assert found["heavy"] == [], f"`zk0 {' '.join(args)}` imported {found['heavy']}"
