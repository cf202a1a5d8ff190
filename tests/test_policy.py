"""The policy layer with the real SmolVLAPolicy on the tiny offline backbone, on CPU."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from zk0cli.core.errors import ExitCode, Zk0Error

torch = pytest.importorskip("torch")

from zk0cli.policy.backbone import (  # noqa: E402
    MARKER_FILE,
    TINY,
    ensure_tiny_backbone,
    write_real_geometry_backbone,
)
from zk0cli.policy.build import PolicySpec, build_policy  # noqa: E402
from zk0cli.policy.train import (  # noqa: E402
    TrainConfig,
    add_proximal_gradient,
    evaluate,
    predict_episode,
    train,
)
from zk0cli.policy.trainable import VLM_PREFIX, get_trainable, set_trainable, trainable_names  # noqa: E402

CHUNK = 10  # short action chunks: 30-frame episodes, fast steps


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a small shared CPU, several torch threads per process thrash; one is fastest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """Offline Hub and private caches for the module-scoped fixtures below."""
    root = tmp_path_factory.mktemp("policy-env")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(root / "hf"))
        patch.setenv("HF_LEROBOT_HOME", str(root / "hf" / "lerobot"))
        yield root


@pytest.fixture(scope="module")
def datasets_root(offline_env) -> Path:
    """Two small datasets of different tasks, written with LeRobot's writer (2 episodes x 30 frames)."""
    from zk0cli.datasets.sample import write_sample

    for task, seed in (("pick", 0), ("stack", 1)):
        write_sample(
            offline_env / "data" / task, task=task, episodes=2, frames_per_episode=30, image_size=64, seed=seed
        )
    return offline_env / "data"


@pytest.fixture(scope="module")
def backbones(offline_env) -> Path:
    return offline_env / "backbones"


def meta_of(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    return LeRobotDatasetMetadata(f"local/{root.name}", root=root)


def tiny_spec(backbones: Path, **overrides) -> PolicySpec:
    settings = {"tiny": True, "chunk_size": CHUNK, "device": "cpu", "backbone_dir": backbones, **overrides}
    return PolicySpec(**settings)


def open_for(built, root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(
        f"local/{root.name}", root=root, delta_timestamps=built.delta_timestamps(meta_of(root)), video_backend="pyav"
    )


@pytest.fixture(scope="module")
def pick(datasets_root, backbones):
    """A built tiny policy and its dataset; tests that train copy the policy first."""
    meta = meta_of(datasets_root / "pick")
    built = build_policy(tiny_spec(backbones), meta)
    return built, open_for(built, datasets_root / "pick")


def fresh(backbones, datasets_root, task="pick", **overrides):
    built = build_policy(tiny_spec(backbones, **overrides), meta_of(datasets_root / task))
    return built, open_for(built, datasets_root / task)


def frozen_state(policy) -> dict:
    trainable = set(trainable_names(policy))
    return {name: p.detach().clone() for name, p in policy.named_parameters() if name not in trainable}


# --- backbone ---------------------------------------------------------------------------------


def test_tiny_backbone_is_written_once_and_complete(tmp_path):
    directory = tmp_path / "tiny"
    assert ensure_tiny_backbone(directory) == directory
    written = {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}
    assert {"config.json", "tokenizer.json", "processor_config.json", MARKER_FILE} <= set(written)
    assert ensure_tiny_backbone(directory) == directory  # second call: nothing rewritten
    assert {path.name: path.stat().st_mtime_ns for path in directory.iterdir()} == written
    assert [path.name for path in tmp_path.iterdir()] == ["tiny"]  # no staging dirs left behind

    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(directory)
    assert config.vision_config.image_size == TINY.image_size
    tokenizer = AutoProcessor.from_pretrained(directory).tokenizer
    ids = tokenizer("Stack the red cube\n")["input_ids"]
    assert len(ids) == len("Stack the red cube\n")  # one token per byte: any task text tokenizes
    assert tokenizer.unk_token_id not in ids


def test_real_geometry_backbone_has_smolvlm2_500m_sizes(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    directory = write_real_geometry_backbone(tmp_path / "real")
    config = AutoConfig.from_pretrained(directory)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        960,
        32,
        15,
        5,
    )
    assert (text.intermediate_size, text.vocab_size) == (2560, 49280)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (768, 12, 512, 16)
    assert config.scale_factor == 4 and AutoProcessor.from_pretrained(directory).image_seq_len == 64
    assert not list(directory.glob("*.safetensors"))  # sizes only: weights start random, nothing downloaded


def test_backbone_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(Zk0Error) as error:
        ensure_tiny_backbone(tmp_path / "mine")
    assert error.value.code == ExitCode.BAD_INPUT
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_backbone_defaults_to_the_data_dir(zk0_home):
    assert ensure_tiny_backbone() == zk0_home / "data" / "backbones" / TINY.name


# --- build ------------------------------------------------------------------------------------


def test_build_tiny_policy_on_cpu(pick, datasets_root):
    built, _ = pick
    assert built.device.type == "cpu" and built.autocast_dtype is None
    assert type(built.policy).__name__ == "SmolVLAPolicy"
    assert built.config.resize_imgs_with_padding == (TINY.image_size, TINY.image_size)
    assert built.config.chunk_size == built.config.n_action_steps == CHUNK
    assert built.delta_timestamps(meta_of(datasets_root / "pick"))["action"][:2] == [0.0, 1 / 30]


def test_trainable_parameters_are_the_expert_and_projections_never_the_vlm(pick):
    policy = pick[0].policy
    names = trainable_names(policy)
    assert names == [name for name, p in policy.named_parameters() if p.requires_grad]
    assert not [name for name in names if name.startswith(VLM_PREFIX)]
    vlm = [name for name, _ in policy.named_parameters() if name.startswith(VLM_PREFIX)]
    assert vlm and not set(vlm) & set(names)
    for projection in ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out"):
        assert f"model.{projection}.weight" in names
    assert any(".lm_expert." in name for name in names)


def test_each_node_normalises_with_its_own_dataset_stats(pick, datasets_root, backbones):
    stack_meta = meta_of(datasets_root / "stack")
    stack = build_policy(tiny_spec(backbones), stack_meta)

    def action_mean(pipeline):
        (stats,) = [step.stats for step in pipeline.steps if getattr(step, "stats", None)]
        return torch.as_tensor(stats["action"]["mean"])

    pick_meta = meta_of(datasets_root / "pick")
    assert torch.allclose(action_mean(pick[0].preprocessor), torch.as_tensor(pick_meta.stats["action"]["mean"]))
    assert torch.allclose(action_mean(stack.preprocessor), torch.as_tensor(stack_meta.stats["action"]["mean"]))
    assert torch.allclose(action_mean(stack.postprocessor), torch.as_tensor(stack_meta.stats["action"]["mean"]))
    assert not torch.allclose(action_mean(pick[0].preprocessor), action_mean(stack.preprocessor))
    # ...while the weights (what a node starts from) are the same on both nodes
    for (name, a), (_, b) in zip(pick[0].policy.state_dict().items(), stack.policy.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_local_checkpoint_is_a_base(pick, datasets_root, tmp_path):
    built, _ = pick
    built.policy.save_pretrained(tmp_path / "checkpoint")
    reloaded = build_policy(
        PolicySpec(base=str(tmp_path / "checkpoint"), device="cpu"), meta_of(datasets_root / "pick")
    )
    assert reloaded.config.chunk_size == CHUNK
    for (name, a), (_, b) in zip(built.policy.state_dict().items(), reloaded.policy.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_checkpoint_outlives_its_run_directory_and_the_backbone_it_was_built_on(datasets_root, tmp_path, monkeypatch):
    """Issue 15: a demo's checkpoint named its VLM by the demo's backbone folder; removed, the
    checkpoint no longer loaded. The VLM directory now travels inside the checkpoint: LeRobot
    loads it with the original folder gone, and zk0 after the run was moved too."""
    import shutil

    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from zk0cli.policy.build import save_checkpoint

    demo = tmp_path / "demo"
    built = build_policy(tiny_spec(demo / "backbones"), meta_of(datasets_root / "pick"))
    checkpoint = tmp_path / "run" / "checkpoint"
    save_checkpoint(built, checkpoint)
    shutil.rmtree(demo)

    monkeypatch.chdir(tmp_path)  # LeRobot's own loaders, as a robot machine would run them
    policy = SmolVLAPolicy.from_pretrained(str(checkpoint))
    preprocessor, _ = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    assert policy.config.vlm_model_name == str(checkpoint.resolve() / "vlm") and preprocessor is not None

    shutil.move(tmp_path / "run", tmp_path / "moved")  # moved: zk0 falls back to the checkpoint's vlm/
    moved = tmp_path / "moved" / "checkpoint"
    reloaded = build_policy(PolicySpec(base=str(moved), device="cpu"), meta_of(datasets_root / "pick"))
    assert reloaded.config.vlm_model_name == str(moved / "vlm")
    for (name, a), (_, b) in zip(built.policy.state_dict().items(), reloaded.policy.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow  # waits out huggingface_hub's retries against an unreachable Hub (~20 s)
def test_smolvla_base_offline_is_a_clear_unreachable_error(datasets_root, zk0_home):
    with pytest.raises(Zk0Error) as error:
        build_policy(PolicySpec(), meta_of(datasets_root / "pick"))  # lerobot/smolvla_base
    assert error.value.code == ExitCode.UNREACHABLE
    assert "lerobot/smolvla_base" in error.value.message and "\n" not in error.value.message
    assert "tiny" in error.value.hint and "local" in error.value.hint


@pytest.mark.slow  # waits out huggingface_hub's retries against an unreachable Hub (~20 s)
def test_hub_vlm_offline_is_unreachable_and_a_missing_dir_is_bad_input(datasets_root, zk0_home, tmp_path):
    meta = meta_of(datasets_root / "pick")
    with pytest.raises(Zk0Error) as error:
        build_policy(PolicySpec(base=None, device="cpu"), meta)  # fresh expert on SmolVLM2 from the Hub
    assert error.value.code == ExitCode.UNREACHABLE and "SmolVLM2" in error.value.message
    with pytest.raises(Zk0Error) as error:
        build_policy(PolicySpec(base="./no/such/checkpoint", device="cpu"), meta)
    assert error.value.code == ExitCode.BAD_INPUT
    with pytest.raises(Zk0Error) as error:
        build_policy(PolicySpec(base=str(tmp_path), device="cpu"), meta)  # a directory, not a checkpoint
    assert error.value.code == ExitCode.BAD_INPUT and "config.json" in error.value.message


def test_spec_and_device_checks(datasets_root, backbones):
    with pytest.raises(Zk0Error):
        PolicySpec(tiny=True, real_geometry=True)
    with pytest.raises(Zk0Error):
        PolicySpec(device="tpu")
    with pytest.raises(Zk0Error) as error:
        build_policy(tiny_spec(backbones, n_action_steps=CHUNK + 1), meta_of(datasets_root / "pick"))
    assert error.value.code == ExitCode.BAD_INPUT
    if not torch.cuda.is_available():  # the absent-GPU path is a clean answer
        with pytest.raises(Zk0Error) as error:
            build_policy(tiny_spec(backbones, device="cuda"), meta_of(datasets_root / "pick"))
        assert error.value.code == ExitCode.ENV_NOT_READY


# --- trainable get/set -----------------------------------------------------------------------


def test_get_set_trainable_round_trip_and_strict_checks(datasets_root, backbones):
    built, _ = fresh(backbones, datasets_root)
    state = get_trainable(built.policy)
    assert list(state) == trainable_names(built.policy)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    shifted = {name: tensor + 0.5 for name, tensor in state.items()}
    set_trainable(built.policy, shifted)
    assert all(torch.equal(a, shifted[name]) for name, a in get_trainable(built.policy).items())
    shifted[next(iter(shifted))] += 1  # the getter returned copies, not views
    assert not torch.equal(get_trainable(built.policy)[next(iter(shifted))], shifted[next(iter(shifted))])

    first = next(iter(state))
    for broken in (
        {name: t for name, t in state.items() if name != first},  # missing
        {**state, "model.vlm_with_expert.vlm.extra": torch.zeros(1)},  # unexpected
        {**state, first: torch.zeros(3, 3)},  # wrong shape
    ):
        with pytest.raises(Zk0Error):
            set_trainable(built.policy, broken)


# --- FedProx ----------------------------------------------------------------------------------


def test_fedprox_term_is_zero_at_the_global_weights_and_grows_quadratically():
    torch.manual_seed(0)
    anchor = [torch.randn(4, 3), torch.randn(5)]
    direction = [torch.randn(4, 3), torch.randn(5)]

    def term(scale: float, mu: float = 0.1) -> tuple[float, list]:
        params = [(a + scale * d).requires_grad_() for a, d in zip(anchor, direction)]
        return add_proximal_gradient(params, anchor, mu), params

    value, params = term(0.0)
    assert value == 0.0 and all(torch.count_nonzero(p.grad) == 0 for p in params)
    one, _ = term(1.0)
    two, _ = term(2.0)
    assert one > 0 and math.isclose(two, 4 * one, rel_tol=1e-5)
    assert term(1.0, mu=0.0)[0] == 0.0

    # the gradient added is exactly that of (mu/2)*||w - w_global||^2
    value, params = term(1.0)
    reference = [p.detach().clone().requires_grad_() for p in params]
    (0.05 * sum((r - a).pow(2).sum() for r, a in zip(reference, anchor))).backward()
    expected = 0.05 * sum(float((r - a).detach().pow(2).sum()) for r, a in zip(reference, anchor))
    assert math.isclose(value, expected, rel_tol=1e-5)
    for p, r in zip(params, reference):
        assert torch.allclose(p.grad, r.grad)


# --- training and evaluation ------------------------------------------------------------------


@pytest.mark.slow
def test_training_lowers_the_loss_and_never_touches_the_frozen_vlm(datasets_root, backbones):
    built, dataset = fresh(backbones, datasets_root)
    frozen = frozen_state(built.policy)
    start = get_trainable(built.policy)
    before = evaluate(built, dataset, seed=0, max_batches=2)
    seen = []
    result = train(
        built,
        dataset,
        TrainConfig(steps=10, batch_size=8, lr=1e-3, proximal_mu=0.01),
        progress=lambda step, total, _loss: seen.append((step, total)),
    )
    after = evaluate(built, dataset, seed=0, max_batches=2)

    assert after["policy_loss"] < before["policy_loss"]
    assert seen[0] == (1, 10) and seen[-1] == (10, 10)
    # 60 frames in batches of 8: a pass is 7 full batches and one of 4, then the data reshuffles
    assert result.steps == 10 and result.samples == 60 + 2 * 8
    assert result.lr_first == 1e-3 and result.lr_last == pytest.approx(2.5e-6)
    assert result.fedprox_loss > 0 and result.loss == pytest.approx(result.policy_loss + result.fedprox_loss)
    assert result.grad_norm > 0 and result.seconds > 0
    end = get_trainable(built.policy)
    distance = math.sqrt(sum(float((end[n] - start[n]).pow(2).sum()) for n in start))
    assert result.update_norm == pytest.approx(distance, rel=1e-4) and distance > 0
    for name, param in built.policy.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"


@pytest.mark.slow
def test_same_seed_same_training_and_evaluation(datasets_root, backbones):
    config = TrainConfig(steps=4, batch_size=4, seed=3, proximal_mu=0.1)
    runs = []
    for _ in range(2):
        built, dataset = fresh(backbones, datasets_root)
        metrics = train(built, dataset, config).metrics()
        metrics.pop("seconds")
        runs.append((metrics, get_trainable(built.policy), evaluate(built, dataset, seed=5, max_batches=2)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, runs[1][1][name]) for name, a in runs[0][1].items())
    assert runs[0][2] == runs[1][2]
    assert evaluate(built, dataset, seed=6, max_batches=2) != runs[1][2]


def test_evaluation_is_deterministic_and_in_dataset_units(pick):
    built, dataset = pick
    first = evaluate(built, dataset, seed=0, max_batches=2, batch_size=4)
    assert first == evaluate(built, dataset, seed=0, max_batches=2, batch_size=4)
    assert first["samples"] == 8 and first["policy_loss"] > 0
    joints = [key for key in first if key.startswith("action_mae.")]
    assert "action_mae.gripper.pos" in joints and len(joints) == 6
    assert first["action_mae"] == pytest.approx(sum(first[key] for key in joints) / 6)
    assert built.policy.training  # evaluation leaves the policy ready to train


def test_epochs_are_full_passes(datasets_root, backbones):
    built, dataset = fresh(backbones, datasets_root)
    result = train(built, dataset, TrainConfig(epochs=1, steps=999, batch_size=16))
    assert result.samples == len(dataset) == 60 and result.steps == math.ceil(60 / 16)


def test_a_subset_of_episodes_trains_on_its_own_frames(datasets_root, backbones):
    built, _ = fresh(backbones, datasets_root)
    subset = open_subset(built, datasets_root / "pick", episodes=[1])
    result = train(built, subset, TrainConfig(epochs=1, batch_size=16))
    assert result.samples == len(subset) == 30 and result.steps == 2
    trace = predict_episode(built, subset, 1, max_frames=3)
    assert trace.frame_indices == [0, 1, 2]  # positions in the subset, not in the full dataset
    assert int(subset[0]["episode_index"]) == 1


def open_subset(built, root: Path, episodes: list[int]):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(
        f"local/{root.name}",
        root=root,
        episodes=episodes,
        delta_timestamps=built.delta_timestamps(meta_of(root)),
        video_backend="pyav",
    )


def test_predicted_and_recorded_actions_for_one_episode(pick):
    built, dataset = pick
    trace = predict_episode(built, dataset, 1, seed=0, max_frames=12)
    assert trace.predicted.shape == trace.recorded.shape == (12, 6)
    assert trace.frame_indices == list(range(30, 42)) and trace.fps == 30
    assert int(dataset[trace.frame_indices[0]]["episode_index"]) == 1
    assert trace.action_names[-1] == "gripper.pos"
    recorded_first = dataset[trace.frame_indices[0]]["action"][0].numpy()
    assert (trace.recorded[0] == recorded_first).all()
    again = predict_episode(built, dataset, 1, seed=0, max_frames=12)
    assert (again.predicted == trace.predicted).all() and trace.action_mae > 0
    with pytest.raises(Zk0Error):
        predict_episode(built, dataset, 7)


def test_dataset_without_action_chunks_and_bad_settings_are_refused(pick, datasets_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    built, _ = pick
    plain = LeRobotDataset("local/pick", root=datasets_root / "pick", video_backend="pyav")
    with pytest.raises(Zk0Error) as error:
        train(built, plain, TrainConfig(steps=1))
    assert error.value.code == ExitCode.BAD_INPUT and "delta_timestamps" in error.value.hint
    for bad in ({"eta_min": 1.0}, {"steps": 0}, {"proximal_mu": -1.0}, {"betas": (0.9, 1.5)}):
        with pytest.raises(Zk0Error) as error:
            TrainConfig(**bad)
        assert next(iter(bad)) in error.value.message


def test_no_stdout_noise_from_building(datasets_root, backbones, capfd):
    """lerobot prints progress on stdout; `--json` commands need stdout clean."""
    capfd.readouterr()
    build_policy(tiny_spec(backbones), meta_of(datasets_root / "pick"))
    assert capfd.readouterr().out == ""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
