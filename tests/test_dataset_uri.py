"""Dataset URIs: parsing, round trips (also through Flower's --node-config), and opening."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.datasets.uri import DatasetUri, open_dataset, open_metadata, parse_uri


def test_hf_forms():
    uri = parse_uri("hf:lerobot/svla_so100_pickplace")
    assert (uri.kind, uri.repo_id, uri.revision, uri.path) == ("hf", "lerobot/svla_so100_pickplace", None, None)
    assert uri.name == "svla_so100_pickplace"
    pinned = parse_uri("hf:org/name@v3.0")
    assert pinned.revision == "v3.0" and str(pinned) == "hf:org/name@v3.0"


def test_local_forms_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my set").mkdir()
    uri = parse_uri("local:my set")
    assert uri.kind == "local" and uri.path == tmp_path / "my set"
    assert uri.repo_id == "local/my-set" and uri.name == "my-set"
    assert parse_uri("my set") == uri  # a bare existing path
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hf:",
        "hf:noslash",
        "hf:a/b/c",
        "hf:org/name@",
        "s3://bucket/x",
        "org/name",
        "local:",
        "/no/such/dir/anywhere",
    ],
)
def test_bad_uris_name_the_accepted_forms(text):
    with pytest.raises(Zk0Error) as err:
        parse_uri(text)
    assert err.value.code is ExitCode.BAD_INPUT
    assert "hf:org/name" in err.value.hint and "local:PATH" in err.value.hint


def test_bare_hub_id_suggests_hf_prefix():
    with pytest.raises(Zk0Error) as err:
        parse_uri("lerobot/pusht")
    assert "hf:lerobot/pusht" in err.value.hint


def _through_node_config(uri: DatasetUri) -> str:
    from flwr.common.config import parse_config_args

    # Exactly what flower-supernode does with --node-config "<pairs>".
    parsed = parse_config_args([f"dataset-uri={uri.toml_value()} partition-id=0"])
    assert parsed["partition-id"] == 0
    return parsed["dataset-uri"]


@pytest.mark.parametrize(
    "uri",
    [
        DatasetUri("hf", "org/name"),
        DatasetUri("hf", "org/name", revision="main"),
        DatasetUri("local", "local/set", path=Path("/data/my set")),
        DatasetUri("local", "local/here", path=Path("/d/it's here")),
        DatasetUri("local", "local/set", path=Path("/mnt/C:\\robots\\set")),
    ],
)
def test_round_trip_through_flower_node_config(uri):
    assert _through_node_config(uri) == str(uri)


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(org=_names, name=_names, rev=st.none() | st.from_regex(r"[A-Za-z0-9._/-]{1,12}", fullmatch=True))
def test_hf_round_trip_property(org, name, rev):
    uri = DatasetUri("hf", f"{org}/{name}", revision=rev)
    assert parse_uri(str(uri)) == uri
    assert parse_uri(_through_node_config(uri)) == uri


def test_quotes_that_toml_cannot_carry_are_refused():
    with pytest.raises(Zk0Error):
        DatasetUri("local", "local/x", path=Path("/a'b\"c")).toml_value()


# --- opening ----------------------------------------------------------------------------------


def _error(call) -> Zk0Error:
    with pytest.raises(Zk0Error) as err:
        call()
    return err.value


def test_open_local_problems_are_bad_input_with_hints(tmp_path):
    missing = parse_uri(f"local:{tmp_path / 'nope'}")
    assert "no such dataset directory" in _error(lambda: open_metadata(missing)).message
    assert not (tmp_path / "nope").exists()  # LeRobot would have created it

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is a file" in _error(lambda: open_metadata(parse_uri(str(a_file)))).message

    (tmp_path / "empty").mkdir()
    assert "is empty" in _error(lambda: open_metadata(parse_uri(f"local:{tmp_path / 'empty'}"))).message

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("hello")
    err = _error(lambda: open_dataset(parse_uri(f"local:{tmp_path / 'other'}")))
    assert "meta/info.json is missing" in err.message and err.code is ExitCode.BAD_INPUT and err.hint


def test_open_malformed_info_json(sample_dataset):
    (sample_dataset / "meta" / "info.json").write_text("{not json")
    err = _error(lambda: open_metadata(parse_uri(str(sample_dataset))))
    assert "malformed" in err.message and err.code is ExitCode.BAD_INPUT


def test_open_v21_names_the_conversion_command(v21_dataset):
    err = _error(lambda: open_dataset(parse_uri(str(v21_dataset))))
    assert err.code is ExitCode.BAD_INPUT and "v2.1" in err.message
    assert f"zk0 dataset convert {v21_dataset}" in err.hint
    assert (
        f"python -m lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=local/sample --root={v21_dataset}" in err.hint
    )


def test_open_incomplete_dataset(sample_dataset):
    shutil.rmtree(sample_dataset / "meta" / "episodes")
    err = _error(lambda: open_dataset(parse_uri(str(sample_dataset))))
    assert "meta/episodes is missing" in err.message and "zk0 dataset validate" in err.hint


def test_open_truncated_parquet_is_bad_input(sample_dataset):
    data_file = next((sample_dataset / "data").rglob("*.parquet"))
    data_file.write_bytes(data_file.read_bytes()[:200])
    err = _error(lambda: open_dataset(parse_uri(str(sample_dataset))))
    assert err.code is ExitCode.BAD_INPUT and "zk0 dataset validate" in err.hint


def test_hf_offline_not_cached_is_unreachable():
    err = _error(lambda: open_metadata(parse_uri("hf:zk0-test/not-cached-anywhere")))
    assert err.code is ExitCode.UNREACHABLE and "local:" in err.hint


def test_open_dataset_episode_subset(sample_dataset):
    full = open_dataset(parse_uri(str(sample_dataset)))
    subset = open_dataset(parse_uri(f"local:{sample_dataset}"), episodes=[1])
    assert len(full) == 120 and len(subset) == 40
    assert {int(subset[i]["episode_index"]) for i in range(len(subset))} == {1}
    assert open_metadata(parse_uri(str(sample_dataset))).total_episodes == 3
