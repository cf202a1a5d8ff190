"""Git LFS pointer files where a dataset's content should be.

A Hub dataset cloned with plain ``git`` (no ``git lfs``) has, in place of every parquet, video
and large JSON file, a ~130-byte text file naming the real object. LeRobot then fails deep
inside pyarrow or json ("Parquet magic bytes not found", "line contains invalid json"). zk0
looks for them first and says what happened and the one command that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from zk0cli.core.errors import bad_input

SIGNATURE = b"version https://git-lfs.github.com/spec/v1"
MAX_POINTER_BYTES = 1024  # the spec's limit for a pointer file


def lfs_pointers(root: Path) -> list[Path]:
    """The files under ``root`` that are Git LFS pointers, in path order (``.git`` is skipped)."""
    found = []
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts or not path.is_file():
            continue
        if path.stat().st_size <= MAX_POINTER_BYTES:
            with path.open("rb") as fh:
                if fh.read(len(SIGNATURE)) == SIGNATURE:
                    found.append(path)
    return found


def refuse_lfs_pointers(root: Path) -> None:
    """A one-line error naming the pointers when ``root`` holds any."""
    pointers = lfs_pointers(root)
    if not pointers:
        return
    first = pointers[0].relative_to(root).as_posix()
    more = f" and {len(pointers) - 1} more" if len(pointers) > 1 else ""
    raise bad_input(
        f"{len(pointers)} file(s) in {root} are Git LFS pointers, not data: {first}{more}",
        hint=f"it was cloned without Git LFS: run `git lfs pull` in {root}",
    )
