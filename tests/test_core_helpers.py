"""core/: the one JSON reader, the one time format and the one child-process logger."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zk0cli.core.files import JsonFileError, atomic_write_json, read_json
from zk0cli.core.timefmt import epoch_from_iso, iso_from_epoch, utc_now_iso


def test_read_json_returns_the_document_or_the_default(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"round": 3})
    assert read_json(tmp_path / "a.json") == {"round": 3}
    assert read_json(tmp_path / "missing.json", None) is None
    assert read_json(tmp_path / "missing.json", {}) == {}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "x.json is missing"),
        (b"", "x.json is empty"),
        (b"{", "x.json is not valid JSON"),
        (b"\xff\xfe", "x.json is not UTF-8 text"),
    ],
)
def test_read_json_says_in_one_line_what_is_wrong(tmp_path, content, reason):
    if content is not None:
        (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(JsonFileError) as caught:
        read_json(tmp_path / "x.json")
    assert caught.value.reason.startswith(reason)
    assert "\n" not in caught.value.reason


def test_times_round_trip_and_read_flowers_forms():
    assert iso_from_epoch(1796189297.25) == "2026-12-02T05:28:17.250Z"
    assert epoch_from_iso("2026-12-02T05:28:17.250Z") == 1796189297.25
    assert epoch_from_iso("2026-12-02 05:28:17") == 1796189297.0  # Flower's CLI: no zone, UTC
    assert epoch_from_iso("2026-12-02T06:28:17+01:00") == 1796189297.0
    assert epoch_from_iso("N/A") is None and epoch_from_iso("") is None and epoch_from_iso(None) is None
    assert utc_now_iso().endswith("Z")


def test_child_logger_writes_plain_prefixed_lines_once():
    code = (
        "from zk0cli.core.childlog import child_logger\n"
        "log = child_logger('host'); log.info('ready: %s', 1); log.warning('slow')\n"
        "child_logger('host').info('again')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == ["zk0: ready: 1", "zk0: WARNING slow", "zk0: again"]
    assert done.stderr == ""


def test_exclusive_read_modify_writes_never_lose_each_others_change(tmp_path):
    import threading
    import time

    from zk0cli.core.files import exclusively

    registry = tmp_path / "server-nodes.json"
    atomic_write_json(registry, {})

    def add(name: str) -> None:
        with exclusively(registry):
            entries = read_json(registry)
            time.sleep(0.2)  # the Flower call between reading and writing the registry
            atomic_write_json(registry, {**entries, name: {"name": name}})

    threads = [threading.Thread(target=add, args=(name,)) for name in ("alice", "bob", "carol")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(read_json(registry)) == ["alice", "bob", "carol"]
