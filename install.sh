#!/usr/bin/env bash
# Install zk0 into a virtualenv, with the exact dependency versions it is tested with.
#
#   ./install.sh            install (or update) zk0 into .venv  (ZK0_VENV=/path overrides)
#   ./install.sh --test     also install the test tools, then run lint, types and the whole test suite
#   ./install.sh --test ARGS  ... or only `pytest ARGS` (e.g. tests/test_config.py -x)
#
# Safe to run again: when nothing changed since the last install it only checks and returns.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${ZK0_VENV:-$here/.venv}
mode=${1:-install}
case "$mode" in
  install|--test) ;;
  *) echo "usage: ./install.sh [--test [pytest args...]]" >&2; exit 2 ;;
esac
[ $# -gt 0 ] && shift

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

is_python312() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && is_python312 "$(command -v "$candidate")"; then
      command -v "$candidate"; return 0
    fi
  done
  # pyenv shims may refuse to run a version that is not selected: use the interpreters directly.
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$candidate" ] && is_python312 "$candidate"; then echo "$candidate"; return 0; fi
  done
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  python=$(find_python) || {
    echo "zk0 needs Python >= 3.12. Looked for python3.13, python3.12 and python3 on PATH and in" >&2
    echo "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12*. Install one (e.g. 'pyenv install 3.12') and rerun." >&2
    exit 4
  }
  say "creating virtualenv $venv with $python"
  "$python" -m venv "$venv"
fi

extras=""; [ "$mode" = "--test" ] && extras="[dev]"
stamp_file="$venv/.zk0-install-stamp"
stamp=$(cat "$here/pyproject.toml" "$here/requirements.lock" | sha256sum | cut -d' ' -f1)"$extras"
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && "$venv/bin/zk0" --version >/dev/null 2>&1; then
  say "zk0 is up to date in $venv"
else
  say "installing zk0 and its dependencies into $venv (first time: several minutes, ~6 GB)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$here/requirements.lock" -e "$here$extras"
  echo "$stamp" > "$stamp_file"
  say "installed: $("$venv/bin/zk0" --version)"
fi

# zk0's own modules, byte-compiled once: where PYTHONDONTWRITEBYTECODE is set, every start would
# otherwise compile them again (pip already did this for the dependencies).
"$venv/bin/python" -m compileall -q "$here/zk0cli" >/dev/null || true

if [ "$mode" = "--test" ]; then
  # System tools some tests drive: tmux (the live status screen), chromium (the HTML report).
  missing=()
  command -v tmux >/dev/null 2>&1 || missing+=(tmux)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing test tools: ${missing[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      say "not installed: ${missing[*]} (as root: apt-get install ${missing[*]}); the tests needing them will skip"
    fi
  fi
  # olah: a real Hugging Face Hub API on loopback for the hf: tests, in its own venv (it pins its
  # own huggingface_hub, fastapi and uvicorn); it only ever runs as a process.
  olah_venv="$here/.venv-olah"
  if [ ! -x "$olah_venv/bin/olah-cli" ]; then
    say "installing olah (the tests' offline Hub) into $olah_venv"
    "$venv/bin/python" -m venv "$olah_venv"
    "$olah_venv/bin/python" -m pip install --quiet "olah==0.5.4"
  fi
  cd "$here"
  [ $# -gt 0 ] && exec "$venv/bin/python" -m pytest "$@"  # a chosen subset: just those tests
  # Cheapest first, so a mistake fails in seconds rather than after the slow lane.
  say "lint, format, types and import contracts"
  "$venv/bin/ruff" check --quiet .
  "$venv/bin/ruff" format --check --quiet .
  "$venv/bin/mypy"
  "$venv/bin/lint-imports" --no-cache --no-logo
  say "fast tests"
  "$venv/bin/python" -m pytest -m "not slow"
  say "slow tests: real Flower processes, training, the demo"
  exec "$venv/bin/python" -m pytest -m slow
fi
say "run zk0 as $venv/bin/zk0, or put it on PATH:  export PATH=\"$venv/bin:\$PATH\""
