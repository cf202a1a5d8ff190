"""Evaluation videos: a held-out episode's camera frames beside its joint trajectories.

Left: the camera frame. Right: one small plot per joint with the recorded action (grey) and the
policy's predicted action (colour), a cursor marking the current frame. The plot panel is drawn
once with matplotlib; each frame only pastes the camera image and draws the cursor, so a few
hundred frames encode in seconds. H.264 through PyAV at the dataset's fps, with a JSON alongside.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from zk0cli.core.files import atomic_write_bytes, atomic_write_json

PANEL_HEIGHT = 480  # pixels; the camera frame is scaled to this height too


@dataclass
class EpisodeTrajectories:
    """What the video shows: one held-out episode, the policy's actions and the recorded ones."""

    frames: NDArray[Any]  # (T, H, W, 3) uint8
    predicted: NDArray[Any]  # (T, D)
    recorded: NDArray[Any]  # (T, D)
    joint_names: Sequence[str]
    fps: int
    dataset: str
    episode: int

    def action_error(self) -> float:
        """Mean absolute error between predicted and recorded actions, in the action's units."""
        return float(np.mean(np.abs(self.predicted - self.recorded)))


def write_video(path: Path, episode: EpisodeTrajectories, server_round: int) -> dict[str, Any]:
    """Write ``path`` (.mp4) and ``path.with_suffix('.json')``; return the JSON's content."""
    panel, axes_x = _trajectory_panel(episode, server_round)
    steps = len(episode.frames)
    encoded = _encode(
        (_compose(episode.frames[t], panel, axes_x, t / max(steps - 1, 1)) for t in range(steps)), episode.fps
    )
    atomic_write_bytes(path, encoded)
    info = {
        "round": server_round,
        "dataset": episode.dataset,
        "episode": episode.episode,
        "frames": steps,
        "fps": episode.fps,
        "action_error": episode.action_error(),
        # Not strict: a dataset may name fewer joints than it records (the panel labels them j<N>).
        "action_error_per_joint": dict(
            zip(
                episode.joint_names,
                np.mean(np.abs(episode.predicted - episode.recorded), axis=0).tolist(),
                strict=False,
            )
        ),
        "video": path.name,
    }
    atomic_write_json(path.with_suffix(".json"), info)
    return info


def _trajectory_panel(episode: EpisodeTrajectories, server_round: int) -> tuple[NDArray[Any], tuple[int, int]]:
    """The static plot panel as RGB, plus the pixel columns where the time axis starts and ends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    joints = episode.recorded.shape[1]
    dpi = 100
    fig = Figure(figsize=(6.4, PANEL_HEIGHT / dpi), dpi=dpi)
    axes = fig.subplots(joints, 1, sharex=True, squeeze=False)[:, 0]
    steps = np.arange(len(episode.recorded))
    for j, ax in enumerate(axes):
        ax.plot(steps, episode.recorded[:, j], color="0.55", linewidth=1.5, label="recorded")
        ax.plot(steps, episode.predicted[:, j], color="tab:red", linewidth=1.2, label="predicted")
        ax.set_ylabel(_short(episode.joint_names[j] if j < len(episode.joint_names) else f"j{j}"), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlim(0, max(len(steps) - 1, 1))
    axes[0].legend(fontsize=6, loc="upper right", ncol=2)
    axes[0].set_title(
        f"round {server_round} · {episode.dataset} ep {episode.episode} · error {episode.action_error():.3g}",
        fontsize=8,
    )
    axes[-1].set_xlabel("frame", fontsize=7)
    fig.subplots_adjust(left=0.16, right=0.98, top=0.94, bottom=0.08, hspace=0.15)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # type: ignore[no-untyped-call]  # matplotlib's Agg backend is not annotated
    panel = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]  # same
    box = axes[0].get_window_extent()
    return panel, (int(round(box.x0)), int(round(box.x1)))


def _short(name: str) -> str:
    return name.replace(".pos", "").replace("_", " ")


def _compose(frame: NDArray[Any], panel: NDArray[Any], axes_x: tuple[int, int], progress: float) -> NDArray[Any]:
    from PIL import Image

    height = panel.shape[0]
    camera = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    width = max(2, round(camera.width * height / camera.height))
    resized = np.asarray(camera.resize((width, height), Image.Resampling.BILINEAR))
    canvas: NDArray[Any] = np.concatenate([resized, panel], axis=1)
    cursor = width + axes_x[0] + round(progress * (axes_x[1] - axes_x[0]))
    canvas[:, max(cursor - 1, width) : cursor + 1] = (30, 90, 220)
    # H.264 with yuv420p needs even dimensions
    return canvas[: canvas.shape[0] // 2 * 2, : canvas.shape[1] // 2 * 2]


def _encode(images: Iterable[NDArray[Any]], fps: int) -> bytes:
    import av
    import av.logging

    # LeRobot's video code restores libav's own log callback, which prints libx264's banner and
    # statistics (dozens of lines per video) to stderr at INFO: only libav's errors are news here.
    av.logging.set_libav_level(av.logging.ERROR)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = None
        for image in images:
            if stream is None:
                stream = container.add_stream("libx264", rate=int(fps))
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "26", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return buffer.getvalue()
