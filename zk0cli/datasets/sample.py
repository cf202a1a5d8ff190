"""Synthetic SO-100 datasets written with LeRobot's own writer.

An episode is a scripted pick-and-place: the arm moves smoothly between key poses computed
from the object's position (a small planar inverse kinematics), the follower's state lags the
commanded action like a real servo, and the camera image is drawn from the current state (a
top-down view of the arm, the gripper and the objects). Images therefore carry the information
a policy needs (where the object is, its colour for `sort`), and each task moves differently,
so samples of different tasks make non-IID federated clients. `sort` alternates the cube's
colour episode by episode (red to the left bin, green to the right), as an operator recording a
sorting set would: any two consecutive episodes show both bins, so a held-out episode is never
of a colour no training episode had.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from zk0cli.core.errors import bad_input

SO100_JOINTS = [
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
]
CAMERA_KEY = "observation.images.front"
CAMERA_VIEWS = {"front": 1.0, "wrist": 2.5}  # camera name -> zoom: front sees the table, wrist the gripper
ROBOT_TYPE = "so100_follower"
TASKS = ("pick", "stack", "sort")
INSTRUCTIONS = {
    "pick": "Pick up the cube and place it in the box",
    "stack": "Stack the red cube on the blue cube",
    "sort": "Put the cube in the bin of its colour",
}

# Arm geometry in table units: shoulder height above the table and the two link lengths.
SHOULDER_HEIGHT = 0.30
UPPER_ARM = 0.55
FOREARM = 0.55
GRIPPER_OPEN = 38.0  # gripper.pos when open (the real SO-101 recording spans about 2..39)
GRIPPER_CLOSED = 4.0
SERVO_RESPONSE = 0.45  # fraction of the remaining error a servo closes each frame
RED, GREEN, BLUE = (210, 40, 40), (40, 170, 60), (50, 80, 220)
# Bump when the same write_sample arguments write different data (2: `sort` alternates colours),
# so callers that cache samples by their arguments can tell an old sample from a current one.
SAMPLE_FORMAT = 2
ON_TABLE, CARRIED, PLACED = 0, 1, 2  # where the cube is: at the pick point, in the gripper, at the place point


@dataclass(frozen=True)
class Placement:
    """Where the arm picks and places in one episode, in table coordinates (x right, y forward)."""

    pick: tuple[float, float]
    place: tuple[float, float]
    place_height: float  # height of the release point (higher when stacking)
    cube_colour: tuple[int, int, int]
    cube_yaw: float  # degrees; the wrist rolls to match it
    extra_objects: tuple[tuple[tuple[float, float], tuple[int, int, int]], ...] = ()  # static scenery
    bins: tuple[tuple[tuple[float, float], tuple[int, int, int]], ...] = ()  # outlined target areas


@dataclass(frozen=True)
class SampleConfig:
    """What write_sample makes; the defaults are the CLI defaults."""

    task: str = "pick"  # one of TASKS: each has its own motions and scene
    episodes: int = 4
    frames_per_episode: int = 60
    image_size: int | tuple[int, int] = 64  # pixels per side (square), or (height, width) as 480x640
    seed: int = 0  # same seed, same dataset
    video: bool = False  # store the cameras as AV1 video instead of PNG images in the parquet
    fps: int = 30
    cameras: tuple[str, ...] = ("front",)  # names from CAMERA_VIEWS; each is observation.images.<name>

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of every camera's frames."""
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size


def parse_image_size(text: str) -> tuple[int, int]:
    """``480x640`` (height x width) or ``64`` (square) -> (height, width); bad_input otherwise."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise bad_input(f"image size {text!r} is not HEIGHTxWIDTH", hint="e.g. --image-size 480x640 or 64")
    height, width = (int(parts[0]), int(parts[-1]))
    return height, width


def parse_cameras(text: str) -> tuple[str, ...]:
    """``front,wrist`` -> ("front", "wrist"); unknown or repeated names are bad input."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CAMERA_VIEWS]
    if not names or unknown or len(set(names)) != len(names):
        detail = f"unknown {', '.join(unknown)}" if unknown else "empty or repeated"
        raise bad_input(f"cameras {text!r}: {detail}", hint=f"a comma-separated list of {', '.join(CAMERA_VIEWS)}")
    return names


def write_sample(
    root: Path,
    *,
    task: str = "pick",
    episodes: int = 4,
    frames_per_episode: int = 60,
    image_size: int | tuple[int, int] = 64,
    seed: int = 0,
    video: bool = False,
    fps: int = 30,
    cameras: Sequence[str] = ("front",),
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a LeRobot v3.0 SO-100-shaped dataset to ``root`` and return it.

    Deterministic given the arguments. ``progress(done_episodes, episodes)`` is called after
    each saved episode. The dataset is written next to ``root`` and renamed into place, so an
    interrupted run leaves no half dataset behind.
    """
    root = Path(root).expanduser().absolute()
    config = SampleConfig(task, episodes, frames_per_episode, image_size, seed, video, fps, tuple(cameras))
    _check_arguments(root, config)
    root.parent.mkdir(parents=True, exist_ok=True)
    if video:
        import av.logging

        os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's banner would bury the progress bar
        av.logging.set_libav_level(av.logging.ERROR)  # and the muxer's "second pass" notes
    with _datasets_progress_bars_off():
        _write(root, config, progress)
    return root


def _write(root: Path, config: SampleConfig, progress: Callable[[int, int], None] | None) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    task, episodes, frames = config.task, config.episodes, config.frames_per_episode

    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        dataset = LeRobotDataset.create(
            repo_id=f"zk0/sample-{task}",
            fps=config.fps,
            features=sample_features(config.shape, config.video, config.cameras),
            root=staging / "dataset",  # LeRobot insists on creating the root itself
            robot_type=ROBOT_TYPE,
            use_videos=config.video,
            video_backend="pyav",
        )
        rng = np.random.default_rng(config.seed)
        for episode in range(episodes):
            placement = _placement(task, rng, episode)
            actions, states, phases = _trajectory(placement, frames, rng)
            for t in range(frames):
                views = {
                    camera_key(name): render(states[t], placement, int(phases[t]), config.shape, CAMERA_VIEWS[name])
                    for name in config.cameras
                }
                dataset.add_frame(
                    {"observation.state": states[t], "action": actions[t], **views, "task": INSTRUCTIONS[task]}
                )
            dataset.save_episode()
            if progress:
                progress(episode + 1, episodes)
        dataset.finalize()
        if config.video:  # the frames LeRobot staged as images for the encoder; the videos hold them
            shutil.rmtree(staging / "dataset" / "images", ignore_errors=True)
        if root.exists():
            root.rmdir()  # known to be empty: checked above
        (staging / "dataset").rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _datasets_progress_bars_off() -> Iterator[None]:
    """LeRobot's writer runs `datasets.map`, whose tqdm bars would fight zk0's own progress bar."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def camera_key(name: str) -> str:
    return f"observation.images.{name}"


def sample_features(shape: tuple[int, int], video: bool, cameras: Sequence[str] = ("front",)) -> dict:
    joints = {"dtype": "float32", "shape": (6,), "names": list(SO100_JOINTS)}
    camera = {"dtype": "video" if video else "image", "shape": (*shape, 3), "names": ["height", "width", "channels"]}
    return {
        "observation.state": dict(joints),
        "action": dict(joints),
        **{camera_key(name): dict(camera) for name in cameras},
    }


def _check_arguments(root: Path, config: SampleConfig) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise bad_input(
            f"{root} already exists and is not empty",
            hint="choose a new directory (zk0 never writes a sample over existing files)",
        )
    if config.task not in TASKS:
        raise bad_input(f"unknown task {config.task!r}", hint=f"choose one of: {', '.join(TASKS)}")
    parse_cameras(",".join(config.cameras))
    height, width = config.shape
    minimums = (
        ("episodes", config.episodes, 1),
        ("frames per episode", config.frames_per_episode, 10),
        ("image height", height, 16),
        ("image width", width, 16),
        ("fps", config.fps, 1),
    )
    for name, value, minimum in minimums:
        if value < minimum:
            raise bad_input(f"{name} must be at least {minimum}, got {value}", hint=f"use {name} >= {minimum}")


# --- scripted motion --------------------------------------------------------------------------


def _placement(task: str, rng: np.random.Generator, episode: int = 0) -> Placement:
    yaw = float(rng.uniform(-40, 40))
    if task == "pick":
        pick = (float(rng.uniform(-0.55, -0.1)), float(rng.uniform(0.45, 0.8)))
        box = (0.45, 0.55)
        return Placement(pick, box, 0.12, RED, yaw, bins=((box, (90, 60, 30)),))
    if task == "stack":
        pick = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.4, 0.55)))
        base = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.7, 0.85)))
        return Placement(pick, base, 0.14, RED, yaw, extra_objects=((base, BLUE),))
    colour_is_red = episode % 2 == 0  # alternating: both bins in every pair of episodes
    pick = (float(rng.uniform(-0.2, 0.2)), float(rng.uniform(0.55, 0.85)))
    left, right = (-0.5, 0.35), (0.5, 0.35)
    place = left if colour_is_red else right
    return Placement(pick, place, 0.10, RED if colour_is_red else GREEN, yaw, bins=((left, RED), (right, GREEN)))


def _pose(x: float, y: float, height: float, roll: float, gripper: float) -> np.ndarray:
    """Joint targets (degrees, gripper 0..100) that put the gripper tip at (x, y, height)."""
    pan = math.degrees(math.atan2(x, y))
    reach = math.hypot(x, y)
    dz = height - SHOULDER_HEIGHT
    distance = min(math.hypot(reach, dz), UPPER_ARM + FOREARM - 1e-6)
    cos_elbow = (distance**2 - UPPER_ARM**2 - FOREARM**2) / (2 * UPPER_ARM * FOREARM)
    elbow = math.acos(max(-1.0, min(1.0, cos_elbow)))
    # Shoulder angle from vertical, elbow-up solution.
    shoulder = math.atan2(reach, dz) - math.atan2(FOREARM * math.sin(elbow), UPPER_ARM + FOREARM * math.cos(elbow))
    wrist = 180.0 - math.degrees(shoulder + elbow)  # keep the gripper pointing down
    return np.array([pan, math.degrees(shoulder) - 45.0, math.degrees(elbow), wrist - 90.0, roll, gripper])


def _trajectory(
    placement: Placement, frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Commanded actions, lagging servo states, and each frame's cube phase (ON_TABLE, CARRIED, PLACED)."""
    (px, py), (qx, qy) = placement.pick, placement.place
    roll = placement.cube_yaw
    home = _pose(0.0, 0.45, 0.45, 0.0, GRIPPER_CLOSED)
    keys = [  # (fraction of the episode, pose)
        (0.00, home),
        (0.18, _pose(px, py, 0.25, roll, GRIPPER_OPEN)),
        (0.30, _pose(px, py, 0.03, roll, GRIPPER_OPEN)),
        (0.38, _pose(px, py, 0.03, roll, GRIPPER_CLOSED)),
        (0.50, _pose(px, py, 0.30, roll, GRIPPER_CLOSED)),
        (0.68, _pose(qx, qy, 0.30, 0.0, GRIPPER_CLOSED)),
        (0.78, _pose(qx, qy, placement.place_height, 0.0, GRIPPER_CLOSED)),
        (0.85, _pose(qx, qy, placement.place_height, 0.0, GRIPPER_OPEN)),
        (1.00, home),
    ]
    # Jitter the timing a little per episode (an operator is never twice as fast the same way).
    times = np.array([k[0] for k in keys])
    times[1:-1] += rng.uniform(-0.02, 0.02, size=len(times) - 2)
    poses = np.stack([k[1] for k in keys])
    t = np.linspace(0.0, 1.0, frames)
    segment = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    local = (t - times[segment]) / (times[segment + 1] - times[segment])
    ease = local * local * (3 - 2 * local)  # smoothstep: zero velocity at each key pose
    actions = poses[segment] + (poses[segment + 1] - poses[segment]) * ease[:, None]
    actions += rng.normal(0.0, 0.15, size=actions.shape)  # teleoperation tremor
    states = np.empty_like(actions)
    states[0] = actions[0]
    for i in range(1, frames):
        states[i] = states[i - 1] + SERVO_RESPONSE * (actions[i - 1] - states[i - 1])
    states += rng.normal(0.0, 0.05, size=states.shape)  # encoder noise
    # Grasp at key 3 (gripper closed), release at key 7 (gripper open at the place point).
    phase = (t >= times[3]).astype(int) + (t >= times[7]).astype(int)
    return actions.astype(np.float32), states.astype(np.float32), phase


# --- rendering --------------------------------------------------------------------------------


def _forward(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Table-plane positions of the elbow and the gripper tip, and the tip height."""
    pan, shoulder, elbow = math.radians(state[0]), math.radians(state[1] + 45.0), math.radians(state[2])
    elbow_reach = UPPER_ARM * math.sin(shoulder)
    tip_reach = elbow_reach + FOREARM * math.sin(shoulder + elbow)
    tip_height = SHOULDER_HEIGHT + UPPER_ARM * math.cos(shoulder) + FOREARM * math.cos(shoulder + elbow)
    direction = np.array([math.sin(pan), math.cos(pan)])
    return elbow_reach * direction, tip_reach * direction, tip_height


def render(
    state: np.ndarray, placement: Placement, phase: int, shape: int | tuple[int, int], zoom: float = 1.0
) -> np.ndarray:
    """Top-down camera image (height x width x 3, uint8) of the scene at this state. ``zoom`` > 1
    is a camera riding on the gripper: centred on it, seeing less of the table, larger."""
    rows, columns = (shape, shape) if isinstance(shape, int) else shape
    size = int(min(rows, columns) * zoom)  # drawing scale: objects keep their proportions in any aspect
    image = Image.new("RGB", (columns, rows), (205, 200, 190))
    draw = ImageDraw.Draw(image)
    view_x, view_y = _forward(state)[1] if zoom > 1 else (0.0, 0.45)  # what the image centre sees

    def pixel(point: Sequence[float] | np.ndarray) -> tuple[float, float]:
        """Table (x, y) to image coordinates; the (unzoomed) base sits bottom centre."""
        return columns / 2 + size * 0.7 * (point[0] - view_x), rows / 2 - size * (point[1] - view_y)

    def square(
        centre: Sequence[float] | np.ndarray, half: float, colour: tuple[int, int, int], outline: bool = False
    ) -> None:
        cx, cy = pixel(centre)
        box = [cx - half, cy - half, cx + half, cy + half]
        draw.rectangle(box, outline=colour, width=max(1, size // 32)) if outline else draw.rectangle(box, fill=colour)

    cube = size / 20
    for centre, colour in placement.bins:
        square(centre, size / 9, colour, outline=True)
    for centre, colour in placement.extra_objects:
        square(centre, cube, colour)
    elbow, tip, height = _forward(state)
    cube_at = (placement.pick, tip, placement.place)[phase]
    lifted = 1 + 0.6 * max(height, 0.0) if phase == CARRIED else 1  # closer to the camera looks bigger
    square(cube_at, cube * lifted, placement.cube_colour)
    base = pixel((0.0, 0.0))
    width = max(1, size // 16)
    draw.line([base, pixel(elbow)], fill=(60, 60, 60), width=width + 1)
    shade = int(np.clip(40 + 250 * height, 40, 230))  # the higher the wrist, the lighter the forearm
    draw.line([pixel(elbow), pixel(tip)], fill=(shade, shade, 70), width=width)
    _draw_gripper(draw, pixel(tip), state, size)
    return np.asarray(image)


def _draw_gripper(draw: ImageDraw.ImageDraw, centre: tuple[float, float], state: np.ndarray, size: int) -> None:
    roll = math.radians(state[4])
    opening = (size / 28) * (1 + float(state[5]) / 20)
    dx, dy = math.cos(roll) * opening, math.sin(roll) * opening
    radius = max(1.0, size / 40)
    for sign in (-1, 1):
        x, y = centre[0] + sign * dx, centre[1] + sign * dy
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(20, 20, 20))
