"""Run config: defaults, the Flower app's mirror of them, and validation that names the key."""

import tomllib
from pathlib import Path

import pytest

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.fl import run_config as rc
from zk0cli.fl.run_config import RunConfig

APP_PYPROJECT = Path(rc.__file__).parent / "app" / "pyproject.toml"


def test_defaults_are_valid():
    config = rc.RunConfig()
    config.validate()
    assert rc.RunConfig.from_mapping({}) == config


def test_flower_app_config_mirrors_the_defaults():
    table = tomllib.loads(APP_PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert table == rc.RunConfig().to_flwr()


def test_kebab_keys_and_ints_for_floats_are_accepted():
    config = rc.RunConfig.from_mapping({"local-steps": 5, "lr": 1, "eta-min": 0})
    assert config.local_steps == 5 and config.lr == 1.0 and isinstance(config.lr, float)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"eta-min": -1e-6}, "eta-min"),
        ({"t-mult": 1.5}, "t-mult"),
        ({"t-mult": 0}, "t-mult"),
        ({"lr-boost-factor": 1.0}, "lr-boost-factor"),
        ({"mu-adjust-factor": 0.9}, "mu-adjust-factor"),
        ({"high-loss-multiplier": 1}, "high-loss-multiplier"),
        ({"plateau-factor": 1.0}, "plateau-factor"),
        ({"lr-schedule": "linear"}, "lr-schedule"),
        ({"local-steps": "ten"}, "local-steps"),
        ({"adaptive-lr": 1}, "adaptive-lr"),
        ({"num-server-rounds": True}, "num-server-rounds"),
        ({"lr": float("nan")}, "lr"),
        ({"mu-min": 0.5, "mu-max": 0.1}, "mu-min"),
        ({"lr": 1e-6, "eta-min": 1e-5}, "eta-min"),
        ({"no-such-key": 1}, "no-such-key"),
        ({"wire-encoding": "fp16-delta"}, "wire-encoding"),
        ({"int8-block-size": 0}, "int8-block-size"),
        ({"int8-block-size": 100}, "int8-block-size"),
        ({"wire-encoding": "int8-delta", "keep-globals": 0}, "keep-globals"),
        ({"uplink-bf16-delta": False}, "uplink-bf16-delta"),
        ({"trim-fraction": 0.5}, "trim-fraction"),
        ({"clip-update-norm": -1.0}, "clip-update-norm"),
        ({"straggler-grace-s": -1.0}, "straggler-grace-s"),
        ({"aggregation": "krum", "min-available-nodes": 4}, "byzantine-nodes"),
    ],
)
def test_bad_values_name_their_key(values, named):
    with pytest.raises(Zk0Error) as info:
        rc.RunConfig.from_mapping(values)
    assert named in info.value.message and "\n" not in info.value.message
    assert info.value.code == ExitCode.BAD_INPUT


def test_the_retired_uplink_key_points_at_its_successor():
    with pytest.raises(Zk0Error) as info:
        rc.RunConfig.from_mapping({"uplink-bf16-delta": False})
    assert "wire-encoding" in info.value.hint


def test_parse_overrides_reads_toml_literals():
    parsed = rc.parse_overrides(
        ["local-steps=5", "lr=3e-4", "lr-schedule=cosine", "adaptive-lr=false", "datasets='a b'"]
    )
    assert parsed == {"local-steps": 5, "lr": 3e-4, "lr-schedule": "cosine", "adaptive-lr": False, "datasets": "a b"}
    with pytest.raises(Zk0Error, match="KEY=VALUE"):
        rc.parse_overrides(["local-steps"])


def test_every_key_is_documented():
    docs = rc.documentation()
    assert len(docs) == len(rc.RunConfig().to_flwr())
    assert all(doc for _, _, doc in docs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec's, inside flwr's builder
def test_flower_app_builds_into_a_small_fab_with_flowers_own_builder():
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(APP_PYPROJECT.parent)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert len(fab) < 10 * 2**20 and "pyproject.toml" in names
    assert not [n for n in names if n.endswith(".py")]  # the code comes from the installed zk0cli package
    assert "federations" not in tomllib.loads(APP_PYPROJECT.read_text())["tool"]["flwr"]


def test_min_replies_must_be_a_fraction_or_a_whole_count():
    assert RunConfig.from_mapping({"min-replies": 0.5}).quorum(5) == 3
    assert RunConfig.from_mapping({"min-replies": 3}).quorum(5) == 3
    assert RunConfig.from_mapping({}).quorum(5) == 5
    with pytest.raises(Zk0Error) as refused:
        RunConfig.from_mapping({"min-replies": 2.5})
    assert refused.value.code == ExitCode.BAD_INPUT and "min-replies=0.8" in refused.value.hint


def test_min_replies_above_what_a_round_samples_is_refused_before_round_1():
    """The count is checked once the nodes are known (zk0 sim's clients, zk0 run's online nodes,
    the ServerApp's connected ones); quorum() still caps it for a round quarantine left smaller."""
    config = RunConfig.from_mapping({"min-replies": 9})
    assert config.quorum(5) == 5
    assert config.check_sampling(9, "clients") is None
    with pytest.raises(Zk0Error) as refused:
        config.check_sampling(5, "clients")
    assert refused.value.code == ExitCode.BAD_INPUT
    assert (
        refused.value.message
        == "run-config min-replies 9 is above the 5 node(s) a round samples (5 clients x fraction-train 1)"
    )
    assert "min-replies=5 or fewer" in refused.value.hint and "\n" not in refused.value.message
    half = RunConfig.from_mapping({"min-replies": 3, "fraction-train": 0.5, "min-available-nodes": 4})
    with pytest.raises(
        Zk0Error, match=r"above the 2 node\(s\) a round samples \(min-available-nodes 4 x fraction-train 0.5\)"
    ):
        half.check_sampling(1, "online nodes")  # round 1 waits for 4, and samples half of them
    assert half.check_sampling(6, "online nodes") is None  # 3 of 6
    assert RunConfig.from_mapping({"min-replies": 0.9}).check_sampling(1, "clients") is None  # a fraction always fits


def test_a_trimmed_mean_that_cuts_nobody_is_the_plain_mean_and_says_so():
    trimmed = RunConfig.from_mapping({"aggregation": "trimmed-mean", "trim-fraction": 0.1})
    warning, hint = trimmed.check_sampling(3, "clients")
    assert "cuts no node of the 3 a round samples" in warning and "plain mean" in warning
    assert hint == "trim-fraction=0.34 cuts one node from each end"
    assert RunConfig.from_mapping({"aggregation": "trimmed-mean", "trim-fraction": 0.34}).check_sampling(3, "x") is None
    assert trimmed.check_sampling(10, "clients") is None  # int(0.1 x 10) = 1 from each end
    _, hint = trimmed.check_sampling(2, "clients")
    assert "aggregation=median" in hint  # below 0.5, nothing cuts one of two
    assert RunConfig.from_mapping({"aggregation": "median"}).check_sampling(2, "clients") is None


@pytest.mark.parametrize("rule", ["krum", "multi-krum"])
def test_krum_needs_enough_nodes_for_the_byzantine_count(rule):
    RunConfig.from_mapping({"aggregation": rule, "byzantine-nodes": 1, "min-available-nodes": 5})
    with pytest.raises(Zk0Error) as refused:
        RunConfig.from_mapping({"aggregation": rule, "byzantine-nodes": 2, "min-available-nodes": 5})
    assert refused.value.code == ExitCode.BAD_INPUT and "needs 7 nodes" in refused.value.message
    assert "min-available-nodes=7" in refused.value.hint


@pytest.mark.parametrize("rule", ["krum", "multi-krum"])
def test_krum_counts_the_nodes_fraction_train_samples_not_the_nodes_connected(rule):
    """f=1 needs 5 nodes in each round: 8 nodes at fraction-train 0.5 sample only 4."""
    values = {"aggregation": rule, "byzantine-nodes": 1, "fraction-train": 0.5}
    RunConfig.from_mapping({**values, "min-available-nodes": 10})
    with pytest.raises(Zk0Error) as refused:
        RunConfig.from_mapping({**values, "min-available-nodes": 8})
    assert "needs 5 nodes a round; min-available-nodes 8 x fraction-train 0.5 samples 4" in refused.value.message
    assert "min-available-nodes=10" in refused.value.hint
    with pytest.raises(Zk0Error, match="byzantine-nodes"):
        RunConfig.from_mapping({"byzantine-nodes": -1})
