"""`zk0 dataset convert`: LeRobot's own v2.1 -> v3.0 converter, run offline on a copy.

LeRobot's converter works in place and keeps the original next to it as ``<dir>_old``; zk0
copies the dataset first so the operator's recording is never touched.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from zk0cli.core.errors import bad_input
from zk0cli.datasets.uri import DatasetUri, local_dataset_dir, read_info

CONVERTIBLE = "v2.1"


def convert_to_v30(uri: DatasetUri, output: Path | None = None) -> Path:
    """Write a v3.0 copy of the local v2.1 dataset at ``uri`` to ``output`` (default ``<dir>-v30``)."""
    if uri.kind != "local":
        raise bad_input(
            f"zk0 converts local copies only, not {uri}",
            hint=f"download it first (`hf download {uri.repo_id} --repo-type dataset --local-dir ./{uri.name}`), "
            f"then `zk0 dataset convert ./{uri.name}`",
        )
    source = local_dataset_dir(uri)
    version = read_info(source).get("codebase_version")
    if version != CONVERTIBLE:
        hint = (
            "it is already v3.0: `zk0 dataset validate " + str(uri) + "`"
            if str(version).startswith("v3")
            else "convert it to v2.1 first with the lerobot release that reads it, then run this again"
        )
        raise bad_input(f"{uri} is {version!r}; LeRobot's converter reads {CONVERTIBLE} only", hint=hint)
    target = (output or source.with_name(f"{source.name}-v30")).expanduser().absolute()
    # The converter's own working names next to the target: an existing one would be clobbered.
    scratch = [target.with_name(f"{target.name}_old"), target.with_name(f"{target.name}_v30")]
    for path in (target, *scratch):
        if path.exists():
            raise bad_input(f"{path} already exists", hint="choose another --output, or move that directory away")
    shutil.copytree(source, target)
    try:
        _run_lerobot_converter(target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        for path in scratch:  # the backup of our copy, or a half-converted tree
            shutil.rmtree(path, ignore_errors=True)
    return target


def _run_lerobot_converter(root: Path) -> None:
    from lerobot.scripts.convert_dataset_v21_to_v30 import convert_dataset

    chatter = io.StringIO()  # its tqdm bars and log lines; zk0 shows one status line instead
    try:
        with contextlib.redirect_stderr(chatter), contextlib.redirect_stdout(chatter):
            convert_dataset(repo_id=f"local/{root.name}", root=root, push_to_hub=False)
    except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
        raise bad_input(
            f"LeRobot's converter failed on {root.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            hint="a v2.1 dataset needs meta/info.json, episodes.jsonl, episodes_stats.jsonl, tasks.jsonl and "
            "data/chunk-*/episode_*.parquet",
        ) from exc
