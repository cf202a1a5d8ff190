"""Camera-size video data end to end: two 480x640 two-camera datasets written as AV1 video by
LeRobot's encoder, a `zk0 sim` of 2 clients x 1 round on them (frames decoded by LeRobot's video
backend, resized and padded in SmolVLAPolicy.prepare_images, trained and evaluated), and the server's
evaluation video drawn from the held-out episode's real decoded camera frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from zk0_process import process_env, zk0

from zk0cli.datasets.sample import write_sample

pytestmark = pytest.mark.slow

SHAPE = (480, 640)


def test_a_federation_trains_and_renders_from_camera_size_video(tmp_path):
    import av

    from zk0cli.datasets.uri import open_dataset, parse_uri

    roots = [
        write_sample(
            tmp_path / task, task=task, seed=index, episodes=3, frames_per_episode=12,
            image_size=SHAPE, cameras=("front", "wrist"), video=True,
        )
        for index, task in enumerate(("pick", "stack"))
    ]  # fmt: skip
    env = process_env(tmp_path / "home", HF_HUB_OFFLINE="1")
    args = ["--json", "sim", "--clients", "2", "--rounds", "1", "--timeout", "700"]
    args += [item for root in roots for item in ("--dataset", f"local:{root}")]
    for setting in ("policy=tiny", "local-steps=2", "batch-size=2", "eval-batches=1", "client-eval-episodes=1"):
        args += ["-c", setting]
    done = zk0(env, *args, timeout=800)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    last = json.loads((run_dir / "round_1_server_eval.json").read_text())
    assert [c["metrics"]["loss"] > 0 for c in last["clients"]["each"]] == [True, True]
    assert np.isfinite(last["server_eval"]["composite"]["policy_loss"])

    shown = json.loads((run_dir / "videos" / "round_0001.json").read_text())
    with av.open(str(run_dir / "videos" / shown["video"])) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape[0] == SHAPE[0] and first.shape[1] > SHAPE[1]  # the camera at full height, plots beside it
    source = roots[["pick", "stack"].index(shown["dataset"].removesuffix("-heldout"))]
    dataset = open_dataset(parse_uri(f"local:{source}"))
    start = int(dataset.meta.episodes["dataset_from_index"][shown["episode"]])
    frame = dataset[start]["observation.images.front"]  # uint8 (C, H, W), as LeRobot's training reads it
    camera = frame.permute(1, 2, 0).numpy().astype(np.float32)
    difference = np.abs(first[:, : SHAPE[1]].astype(np.float32) - camera).mean()  # H.264: ~1; other frames 3+
    assert difference < 2.0, f"the video's camera panel is not the episode's first decoded frame ({difference:.1f})"
