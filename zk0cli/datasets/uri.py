"""Dataset URIs: the one parser every command uses, and opening a URI through LeRobot.

Accepted forms: ``hf:org/name``, ``hf:org/name@revision``, ``local:PATH`` and a bare path
that exists. ``str(uri)`` gives the canonical form back, and :meth:`DatasetUri.toml_value`
quotes it for Flower's ``--node-config``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zk0cli.core.errors import Zk0Error, bad_input, unreachable
from zk0cli.core.files import JsonFileError, read_json
from zk0cli.datasets.hub_progress import counting
from zk0cli.datasets.lfs import refuse_lfs_pointers

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

ACCEPTED_FORMS = "hf:org/name, hf:org/name@revision, local:PATH, or a path to an existing directory"
CONVERT_MODULE = "lerobot.scripts.convert_dataset_v21_to_v30"
# LeRobot 0.6.1 reads codebase v3.x only; older layouts need its converter.
SUPPORTED_MAJOR = 3

_HUB_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HF_RE = re.compile(rf"^(?P<repo>{_HUB_NAME}/{_HUB_NAME})(?:@(?P<rev>[^\s@]+))?$")


@dataclass(frozen=True)
class DatasetUri:
    kind: Literal["hf", "local"]
    repo_id: str  # Hub repo id; for local datasets "local/<dir name>" (LeRobot wants one)
    revision: str | None = None  # hf only: branch, tag or commit
    path: Path | None = None  # local only: absolute, not symlink-resolved

    def __str__(self) -> str:
        if self.kind == "local":
            return f"local:{self.path}"
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def name(self) -> str:
        """Short display name, safe as a node or file name (letters, digits, . _ -)."""
        base = self.path.name if self.path is not None else self.repo_id.split("/")[-1]
        return _safe_name(base)

    def toml_value(self) -> str:
        """The URI as a quoted TOML string for ``--node-config "dataset-uri=<this>"``."""
        text = str(self)
        if "\n" in text or ("'" in text and '"' in text):
            raise bad_input(
                f"dataset path cannot be passed to Flower's --node-config: {text!r}",
                hint="move or link the dataset to a path without quotes or newlines",
            )
        if "'" not in text:
            return f"'{text}'"  # TOML literal string: backslashes stay as they are
        return '"' + text.replace("\\", "\\\\") + '"'


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "dataset"


def parse_uri(text: str) -> DatasetUri:
    """Parse a dataset URI; anything unrecognised is bad input naming the accepted forms."""
    text = text.strip()
    if text.startswith("hf:"):
        match = _HF_RE.match(text[3:])
        if not match:
            raise bad_input(f"not a Hugging Face dataset id: {text!r}", hint=f"use one of: {ACCEPTED_FORMS}")
        return DatasetUri("hf", match["repo"], revision=match["rev"])
    if text.startswith("local:"):
        if not text[6:]:
            raise bad_input("local: needs a directory, e.g. local:./my-dataset", hint=f"use one of: {ACCEPTED_FORMS}")
        return _local(Path(text[6:]))
    if text and Path(text).expanduser().exists():
        return _local(Path(text))
    hint = f"use one of: {ACCEPTED_FORMS}"
    if _HF_RE.match(text):
        hint = f"for the Hub write hf:{text}; " + hint
    raise bad_input(f"not a dataset URI and no such path: {text!r}", hint=hint)


def _local(path: Path) -> DatasetUri:
    path = path.expanduser().absolute()
    return DatasetUri("local", f"local/{_safe_name(path.name)}", path=path)


# --- opening through LeRobot ------------------------------------------------------------------


def convert_command(uri: DatasetUri) -> str:
    """How to convert this v2.1 dataset: zk0's offline copy-and-convert, and LeRobot's own command."""
    if uri.kind == "local":
        return (
            f"zk0 dataset convert {uri.path} (a converted copy; or in place with LeRobot: "
            f"python -m {CONVERT_MODULE} --repo-id={uri.repo_id} --root={uri.path} --push-to-hub=false)"
        )
    return f"python -m {CONVERT_MODULE} --repo-id={uri.repo_id}"


def check_local_dataset(uri: DatasetUri) -> Path:
    """Make sure a local URI points at a LeRobot v3 dataset directory; return its root.

    LeRobot would create a missing root and then try the Hub for anything absent, so
    every "not a dataset" case is answered here first, with a hint.
    """
    root = local_dataset_dir(uri)
    check_version(uri, read_info(root))
    for required in ("meta/tasks.parquet", "meta/episodes", "data"):
        if not (root / required).exists():
            raise bad_input(
                f"{root} is not a complete LeRobot dataset: {required} is missing",
                hint=f"run `zk0 dataset validate {uri}` for the full report",
            )
    return root


def local_dataset_dir(uri: DatasetUri) -> Path:
    """The directory of a local URI: it must exist, be a directory and hold something other than
    Git LFS pointers."""
    root = uri.path
    assert root is not None
    see = f"make one with `zk0 dataset sample {root}` or point at a LeRobot dataset directory"
    if not root.exists():
        raise bad_input(f"no such dataset directory: {root}", hint=see)
    if not root.is_dir():
        raise bad_input(
            f"{root} is a file, not a dataset directory", hint="give the directory that holds meta/ and data/"
        )
    if not any(root.iterdir()):
        raise bad_input(f"{root} is empty", hint=see)
    refuse_lfs_pointers(root)
    return root


def dataset_root(uri: DatasetUri, *, meta_only: bool = False, folders: tuple[str, ...] | None = None) -> Path:
    """A local directory holding the dataset: the local path, or the Hub snapshot in the HF cache
    (only its meta/ folder with ``meta_only``, only ``folders`` when given, else everything).

    Only existence is checked here (the validator reports everything else).
    """
    if uri.kind == "local":
        return local_dataset_dir(uri)
    from huggingface_hub import snapshot_download

    wanted = ("meta",) if meta_only else folders
    with lerobot_errors(uri), counting(str(uri)) as bars:
        return Path(
            snapshot_download(
                uri.repo_id,
                repo_type="dataset",
                revision=uri.revision,
                cache_dir=lerobot_hub_cache(),
                allow_patterns=[f"{folder}/*" for folder in wanted] if wanted else None,
                tqdm_class=bars,  # files and bytes to whoever shows them (hub_progress), HF's own bars never
            )
        )


FINGERPRINTED = ("meta", "data")  # videos are left out: large, and indexed by the same data files


def dataset_fingerprint(uri: DatasetUri) -> str:
    """The dataset's fingerprint, the same whatever the HF cache held before: the meta/ and data/
    files it covers are fetched first when the dataset is on the Hub."""
    return fingerprint_dir(dataset_root(uri, folders=FINGERPRINTED))


def fingerprint_dir(root: Path) -> str:
    """SHA-256 over the relative paths and bytes of a LeRobot dataset's meta/ and data/ files."""
    h = hashlib.sha256()
    for path in sorted(p for sub in FINGERPRINTED for p in (root / sub).rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix().encode()
        h.update(len(relative).to_bytes(8, "little") + relative)
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def lerobot_hub_cache() -> Path:
    """LeRobot's Hub cache ($HF_LEROBOT_HOME/hub), so files fetched here are not fetched again for
    training. Computed as lerobot.utils.constants does, without importing LeRobot (and torch)."""
    from huggingface_hub.constants import HF_HOME

    return Path(os.getenv("HF_LEROBOT_HOME", Path(HF_HOME) / "lerobot")).expanduser() / "hub"


def read_info(root: Path) -> dict[str, Any]:
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise bad_input(
            f"{root} is not a LeRobot dataset: meta/info.json is missing",
            hint="give the directory that holds meta/info.json, data/ (and videos/)",
        )
    try:
        info = read_json(info_path)
    except JsonFileError as exc:
        raise bad_input(
            f"malformed {info_path}: {exc.reason}", hint="restore meta/info.json from the original recording"
        ) from exc
    if not isinstance(info, dict):
        raise bad_input(
            f"malformed {info_path}: not a JSON object", hint="restore meta/info.json from the original recording"
        )
    return info


def info_features(info: dict[str, Any]) -> dict[str, Any]:
    """The ``features`` table of an info.json; ``{}`` when it is absent or not a table."""
    features = info.get("features")
    return features if isinstance(features, dict) else {}


def codebase_major(info: dict[str, Any]) -> int | None:
    match = re.match(r"^v?(\d+)", str(info.get("codebase_version", "")))
    return int(match[1]) if match else None


def check_version(uri: DatasetUri, info: dict[str, Any]) -> None:
    version = info.get("codebase_version")
    major = codebase_major(info)
    if major is None:
        raise bad_input(
            f"{uri}: meta/info.json has no usable codebase_version ({version!r})",
            hint='a LeRobot v3.0 dataset says "codebase_version": "v3.0"',
        )
    if major < SUPPORTED_MAJOR:
        raise bad_input(
            f"{uri} is a LeRobot {version} dataset; zk0 and LeRobot 0.6.1 read v3.0",
            hint=f"convert it: {convert_command(uri)}",
        )
    if major > SUPPORTED_MAJOR:
        raise bad_input(f"{uri} is a LeRobot {version} dataset, newer than this LeRobot reads", hint="upgrade lerobot")


def open_metadata(uri: DatasetUri) -> LeRobotDatasetMetadata:
    """LeRobot's metadata for the URI, every failure turned into a Zk0Error."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    root = check_local_dataset(uri) if uri.kind == "local" else None
    with lerobot_errors(uri):
        return LeRobotDatasetMetadata(uri.repo_id, root=root, revision=uri.revision)


def open_dataset(
    uri: DatasetUri,
    *,
    episodes: list[int] | None = None,
    delta_timestamps: dict[str, list[float]] | None = None,
) -> LeRobotDataset:
    """A LeRobotDataset for the URI (optionally a subset of episodes), with the pyav backend and,
    as LeRobot's own training opens it (``lerobot.datasets.factory.make_dataset``), video frames
    as uint8: a quarter of the bytes to collate; ``policy.train.prepare_batch`` makes them [0, 1]
    floats per batch."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = check_local_dataset(uri) if uri.kind == "local" else None
    with lerobot_errors(uri):
        return LeRobotDataset(
            uri.repo_id,
            root=root,
            revision=uri.revision,
            episodes=episodes,
            delta_timestamps=delta_timestamps,
            video_backend="pyav",
            return_uint8=True,
        )


@contextmanager
def lerobot_errors(uri: DatasetUri) -> Iterator[None]:
    """Turns LeRobot / Hub exceptions raised inside the block into one-line Zk0Errors."""
    try:
        yield
    except Zk0Error:
        raise
    except Exception as exc:  # noqa: BLE001 - LeRobot and the Hub raise many unrelated types
        raise translate_error(uri, exc) from exc


def translate_error(uri: DatasetUri, exc: Exception) -> Zk0Error:
    # Matched by name: importing lerobot only to compare classes would cost seconds.
    kind = type(exc).__name__
    if kind == "BackwardCompatibilityError":
        return bad_input(f"{uri} is in an old LeRobot format (v2.x)", hint=f"convert it: {convert_command(uri)}")
    if kind == "ForwardCompatibilityError":
        return bad_input(f"{uri} is newer than this LeRobot reads", hint="upgrade lerobot")
    if uri.kind == "hf" and kind in ("RepositoryNotFoundError", "GatedRepoError"):
        return bad_input(
            f"no such dataset on the Hub: {uri.repo_id}", hint="check the name, or log in with `hf auth login`"
        )
    if uri.kind == "hf" and kind == "RevisionNotFoundError":
        return bad_input(f"{uri}: revision {uri.revision!r} not found", hint=f"try hf:{uri.repo_id} without @revision")
    if uri.kind == "hf" and _is_network_error(exc):
        return unreachable(
            f"cannot reach the Hugging Face Hub for {uri} and it is not in the local cache ({kind})",
            hint=f"download it where there is network, copy the folder here, and use local:PATH "
            f"(e.g. `hf download {uri.repo_id} --repo-type dataset --local-dir ./{uri.name}`)",
        )
    return bad_input(
        f"LeRobot cannot read {uri}: {type(exc).__name__}: {_first_line(exc)}",
        hint=f"run `zk0 dataset validate {uri}` to see what is wrong",
    )


def _is_network_error(exc: Exception) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    network = {
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "ConnectionError",
        "TimeoutError",
        "TransportError",
        "RequestException",
        "HfHubHTTPError",
    }
    return bool(names & network)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
