"""`zk0 dataset`: check a dataset before joining (validate), describe it (info), make one (sample)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from zk0cli.cli.common import JsonOption, out
from zk0cli.core.errors import ExitCode
from zk0cli.core.units import duration, size

app = typer.Typer(help="Check, describe and create LeRobot datasets.", no_args_is_help=True)

UriArgument = Annotated[
    str,
    typer.Argument(
        help="hf:org/name[@revision], local:PATH, or a path to a LeRobot dataset directory.", show_default=False
    ),
]


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A transient rich progress bar on the message console; services report (what, done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out().err,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    with bar:
        yield report


@app.command("validate")
def validate(
    uri: UriArgument,
    spec: Annotated[
        str, typer.Option("--spec", help="Federation spec: a built-in name or a spec .toml path.")
    ] = "so100",
    tolerance_s: Annotated[
        float, typer.Option("--tolerance-s", min=0.0, help="Allowed |timestamp - frame_index/fps| in seconds.")
    ] = 1e-4,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also decode the first and last frame of every episode.")
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Will this dataset be accepted? Format, federation fit, counts, time, values, tasks and media.

    Exit code 0 when there is no error (warnings allowed), 1 on errors, 2 for a bad URI or
    something that is not a dataset, 3 when the Hub cannot be reached.
    """
    from zk0cli.datasets.uri import parse_uri
    from zk0cli.datasets.validate import validate_dataset
    from zk0cli.ui.checks import render_checks

    parsed = parse_uri(uri)
    with _progress() as progress:
        report = validate_dataset(parsed, spec=spec, tolerance_s=tolerance_s, deep=deep, progress=progress)

    def render(console) -> None:
        s = report.summary()
        verdict = "[red]not accepted[/red]" if report.errors else "[green]accepted[/green]"
        line = (
            f"{verdict}: {s['errors']} error(s), {s['warnings']} warning(s); {s['episodes']} episodes, "
            f"{s['frames']} frames, {duration(s['duration_s'])}, {size(s['size_bytes'])}"
        )
        render_checks(console, report.checks, title=f"{report.uri} (spec {report.spec})", summary=line)

    out().result(report.to_dict(), render)
    if report.exit_code is not ExitCode.OK:
        raise typer.Exit(int(report.exit_code))


@app.command("info")
def info(
    uri: UriArgument,
    fingerprint: Annotated[
        bool,
        typer.Option(
            "--fingerprint", help="Also the content fingerprint runs record (fetches data/ of a Hub dataset)."
        ),
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Summary: robot type, fps, episodes, frames, duration, features, cameras, tasks, size, version."""
    from rich.table import Table

    from zk0cli.datasets.info import dataset_info
    from zk0cli.datasets.uri import dataset_fingerprint, parse_uri

    data = dataset_info(parse_uri(uri))
    if fingerprint:
        with out().err.status("hashing meta/ and data/"):
            data["fingerprint"] = dataset_fingerprint(parse_uri(uri))

    def render(console) -> None:
        console.print(
            f"[bold]{data['uri']}[/bold]  LeRobot {data['codebase_version']}, {data['robot_type']}", markup=True
        )
        console.print(
            f"{data['episodes']} episodes, {data['frames']} frames at {data['fps']} fps "
            f"({duration(data['duration_s'] or 0)}), {size(data['size_bytes'])} on disk",
            markup=False,
        )
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for column in ("feature", "dtype", "shape"):
            table.add_column(column)
        for key, feature in data["features"].items():
            table.add_row(key, str(feature["dtype"]), str(tuple(feature["shape"] or ())))
        console.print(table)
        console.print(f"cameras: {', '.join(data['cameras']) or 'none'}", markup=False)
        for task in data["tasks"]:
            console.print(f"task: {task}", markup=False)
        if "fingerprint" in data:
            console.print(f"fingerprint: {data['fingerprint']}", markup=False, soft_wrap=True)

    out().result(data, render)


@app.command("sample")
def sample(
    directory: Annotated[
        Path, typer.Argument(help="New (or empty) directory to write the dataset to.", show_default=False)
    ],
    episodes: Annotated[int, typer.Option("--episodes", help="Number of episodes.")] = 4,
    frames_per_episode: Annotated[int, typer.Option("--frames-per-episode", help="Frames in each episode.")] = 60,
    task: Annotated[str, typer.Option("--task", help="pick, stack or sort: each moves differently.")] = "pick",
    image_size: Annotated[
        str, typer.Option("--image-size", metavar="HxW", help="Camera frame size: 480x640 (height x width) or 64.")
    ] = "64",
    cameras: Annotated[
        str, typer.Option("--cameras", help="Comma-separated cameras: front (the table), wrist (the gripper).")
    ] = "front",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same dataset.")] = 0,
    video: Annotated[
        bool, typer.Option("--video", help="Store the cameras as AV1 video (LeRobot's encoder), not images.")
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Write a synthetic SO-100 dataset (LeRobot v3.0) to train and test on without a robot."""
    from zk0cli.datasets.sample import parse_cameras, parse_image_size, write_sample

    shape, camera_names = parse_image_size(image_size), parse_cameras(cameras)
    with _progress() as progress:
        root = write_sample(
            directory,
            task=task,
            episodes=episodes,
            frames_per_episode=frames_per_episode,
            image_size=shape,
            seed=seed,
            video=video,
            cameras=camera_names,
            progress=lambda done, total: progress("writing episodes", done, total),
        )
    data = {
        "path": str(root),
        "uri": f"local:{root}",
        "task": task,
        "episodes": episodes,
        "frames": episodes * frames_per_episode,
        "image_size": list(shape),
        "cameras": list(camera_names),
        "video": video,
        "seed": seed,
    }
    out().result(
        data,
        lambda console: console.print(
            f"[green]✓[/green] wrote {episodes} '{task}' episodes ({data['frames']} frames) to {root}\n"
            f"  next: zk0 dataset validate local:{root}"
        ),
    )


@app.command("convert")
def convert(
    uri: UriArgument,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the v3.0 copy (default: next to it, named <dir>-v30)."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Convert a local LeRobot v2.1 dataset to v3.0 with LeRobot's converter, offline, on a copy."""
    from zk0cli.datasets.convert import convert_to_v30
    from zk0cli.datasets.uri import parse_uri

    with out().err.status("converting with LeRobot's converter…"):
        target = convert_to_v30(parse_uri(uri), output)
    data = {"path": str(target), "uri": f"local:{target}"}
    out().result(
        data,
        lambda console: console.print(
            f"[green]✓[/green] v3.0 copy written to {target}\n  next: zk0 dataset validate local:{target}"
        ),
    )
