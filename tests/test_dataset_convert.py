"""`zk0 dataset convert`: LeRobot's v2.1 -> v3.0 converter, offline, on a copy."""

from __future__ import annotations

import json


def test_convert_writes_a_valid_copy_and_leaves_the_original(v21_dataset, tmp_path, cli):
    before = sorted(p.relative_to(v21_dataset).as_posix() for p in v21_dataset.rglob("*"))
    result = cli("dataset", "convert", str(v21_dataset), "--output", str(tmp_path / "converted"), "--json")
    assert result.code == 0, result.stderr
    assert "convert data files" not in result.stderr  # LeRobot's own progress bars stay quiet
    converted = tmp_path / "converted"
    assert result.json()["uri"] == f"local:{converted}"
    assert json.loads((converted / "meta/info.json").read_text())["codebase_version"] == "v3.0"
    assert sorted(p.relative_to(v21_dataset).as_posix() for p in v21_dataset.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("converted")) == ["converted"]
    validated = cli("dataset", "validate", str(converted), "--deep", "--json")
    assert validated.code == 0, [c for c in validated.json()["checks"] if c["status"] != "ok"]


def test_convert_refuses_what_it_cannot_convert(real_dataset, v21_dataset, cli):
    for args, code in (
        ((str(real_dataset),), 2),  # already v3.0
        (("hf:org/name",), 2),  # not local
        ((str(v21_dataset), "--output", str(real_dataset)), 2),  # target exists
    ):
        result = cli("dataset", "convert", *args)
        assert result.code == code and "hint:" in result.stderr and "Traceback" not in result.stderr


def test_convert_failure_leaves_nothing_behind(v21_dataset, tmp_path, cli):
    (v21_dataset / "meta/episodes_stats.jsonl").unlink()
    result = cli("dataset", "convert", str(v21_dataset), "--output", str(tmp_path / "out"))
    assert result.code == 2 and "converter failed" in result.stderr
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
