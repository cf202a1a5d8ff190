"""`zk0 run`, `zk0 runs`, `zk0 run stop`: submit the zk0 app to the local SuperLink, resume a
stopped run from its checkpoint, follow a run's record round by round, list and stop runs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zk0cli.core import files
from zk0cli.core.errors import Zk0Error, bad_input
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import epoch_from_iso, iso_seconds_or_none
from zk0cli.services import flower, preflight
from zk0cli.services.flower_control import ControlRefusedError, FlowerRun, LocalControl
from zk0cli.services.server import require_running

if TYPE_CHECKING:
    from zk0cli.fl.run_config import RunConfig


@dataclass
class SubmittedRun:
    run_id: str  # Flower's run id
    run_dir: Path  # where the ServerApp writes the run record
    rounds: int
    notes: list[str] = field(default_factory=list)  # what was done on the way (e.g. a stale run stopped)


def app_dir() -> Path:
    """The zk0 Flower app (pyproject with [tool.flwr.app]) shipped inside the package."""
    import zk0cli.fl

    return Path(zk0cli.fl.__file__).resolve().parent / "app"


def run_config_for(
    paths: Paths, *, rounds: int | None, settings: Mapping[str, Any], defaults: Mapping[str, Any]
) -> RunConfig:
    """The run config of a new run: ``defaults`` (the config's ``[run]`` table), overridden by
    ``settings`` (``--set``) and ``rounds``, checked here so a bad key never reaches Flower."""
    from zk0cli.fl.records import new_run_name
    from zk0cli.fl.run_config import RunConfig, check_defaults

    check_defaults(defaults)
    values: dict = {**defaults, **settings}
    if rounds is not None:
        values["num-server-rounds"] = rounds
    values.setdefault("runs-dir", str(paths.runs_dir))
    values.setdefault("run-name", f"{new_run_name()}-run")
    config = RunConfig.from_mapping(values)
    if config.resume:
        raise bad_input(
            "run-config resume is set by `zk0 run --resume RUN_ID`, not by hand",
            hint="zk0 run --resume RUN_ID continues a run from its last checkpoint",
        )
    return config


def submit_run(
    paths: Paths,
    *,
    rounds: int | None,
    settings: Mapping[str, Any],
    defaults: Mapping[str, Any],
    no_wait: bool = False,
) -> SubmittedRun:
    """Check the run before anything is submitted (:mod:`preflight`), then `flwr run` on zk0-local."""
    config = run_config_for(paths, rounds=rounds, settings=settings, defaults=defaults)
    checks = preflight.run_preflight(paths, config, no_wait=no_wait)
    preflight.require_passed(checks)
    submitted = _submit(paths, config)
    if defaults:
        submitted.notes.append("run defaults from the config: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    submitted.notes += preflight.warnings(checks)
    return submitted


def resume_run(paths: Paths, run_ref: str, *, rounds: int | None) -> SubmittedRun:
    """Continue a run that stopped from its last checkpoint: same record, same round numbers.

    The run config is the one recorded (only the number of rounds may grow); a run Flower still
    runs is refused, so two ServerApps never write one record.
    """
    from zk0cli.fl.record_follow import STATUS_FILE
    from zk0cli.fl.records import RunRecord
    from zk0cli.fl.run_config import RunConfig

    record = RunRecord(find_run_record(paths, run_ref))
    values = {
        **record.read_config()["run_config"],
        "resume": True,
        "runs-dir": str(record.root.parent),
        "run-name": record.root.name,
    }
    if rounds is not None:
        values["num-server-rounds"] = rounds
    config = RunConfig.from_mapping(values)
    point = record.resume_point(config.num_server_rounds)
    notes = _settle_earlier_runs(paths, record.flwr_run_ids())
    previous = files.read_json(record.root / STATUS_FILE, None)
    # follow_run must not take the interrupted run's last status for this one's
    record.write_status("resuming", from_round=point.round, rounds=config.num_server_rounds)
    try:
        submitted = _submit(paths, config)
    except Zk0Error:
        if previous:
            files.atomic_write_json(record.root / STATUS_FILE, previous)
        raise
    submitted.notes = notes
    return submitted


def _settle_earlier_runs(paths: Paths, flwr_run_ids: list[int]) -> list[str]:
    """No earlier Flower run of a record may still run when it is resumed.

    One that started before the SuperLink's last (re)start lost its ServerApp with that restart
    (the supervisor leaves no orphan), but Flower keeps calling it running until its heartbeat
    expires: it is stopped here (unless Flower finishes it first, between the two calls). Any other
    live one is refused.
    """
    superlink_started = epoch_from_iso(require_running(paths)["processes"]["superlink"].get("started_at"))
    notes = []
    with LocalControl(paths) as control:
        for flwr_run_id in flwr_run_ids:
            run = control.run(flwr_run_id)
            if run is None or run.finished:
                continue
            if not orphaned_by_restart(run, superlink_started):
                raise bad_input(
                    f"run {flwr_run_id} is still {run.status} on the SuperLink",
                    hint=f"stop it first (zk0 run stop {flwr_run_id}), then resume it",
                )
            try:
                control.stop_run(flwr_run_id)
            except ControlRefusedError:
                settled = control.run(flwr_run_id)
                if settled is None or settled.finished:
                    continue  # its heartbeat expired in between: Flower finished it itself
                raise
            notes.append(
                f"stopped run {flwr_run_id}: Flower still listed it as {run.status}, but its ServerApp ended "
                f"when the SuperLink restarted"
            )
    return notes


def orphaned_by_restart(run: FlowerRun, superlink_started_at: float | None) -> bool:
    """A run that was started or running before the SuperLink's last start.
    A pending one is not: the restarted SuperLink will start it."""
    began = run.running_at or run.starting_at
    return began is not None and superlink_started_at is not None and began < superlink_started_at


def find_run_record(paths: Paths, run_ref: str) -> Path:
    """A run's record directory from a Flower run id, a record name, a unique prefix or a path."""
    from zk0cli.fl.records import find_record

    return find_record(paths.runs_dir, run_ref)


def flower_run_id(paths: Paths, run_ref: str) -> int:
    """The Flower run a reference means: a Flower id as typed, else the latest Flower run of the
    record it names (a resumed record: its last resume)."""
    from zk0cli.fl.records import record_flower_ids

    try:
        ids = record_flower_ids(find_run_record(paths, run_ref))
    except Zk0Error:
        if run_ref.isdigit():  # a run Flower knows that has no record (yet)
            return int(run_ref)
        raise
    if run_ref.isdigit() and int(run_ref) in ids:
        return int(run_ref)
    if not ids:
        raise bad_input(
            f"run {run_ref} has no Flower run (a centralized run, or it never started)",
            hint="`zk0 runs` lists the federated runs with their Flower ids",
        )
    return ids[-1]


def _submit(paths: Paths, config) -> SubmittedRun:
    import tomli_w

    overrides = paths.state_dir / "run-configs" / f"{config.run_name}.toml"
    files.atomic_write_text(overrides, tomli_w.dumps(config.to_flwr()))
    document = flower.run_flwr(paths, ["run", str(app_dir()), flower.CLI_CONNECTION, "--run-config", str(overrides)])
    return SubmittedRun(str(document["run-id"]), Path(config.runs_dir) / config.run_name, config.num_server_rounds)


def run_status(paths: Paths, run_id: str) -> str:
    """Flower's status of a run (``pending``, ``running``, ``finished:completed`` ...); "" if unknown."""
    with LocalControl(paths) as control:
        run = control.run(int(run_id))
    return run.status if run else ""


def follow_run(paths: Paths, run: SubmittedRun, on_round, *, poll_s: float = 1.0) -> dict:
    """Report each round (``on_round(summary, total_rounds)``) as its record appears; return the
    record's final status, raise if the run failed."""
    from zk0cli.fl.record_follow import FollowedRun, follow_record
    from zk0cli.fl.records import summary

    return follow_record(
        FollowedRun(run.run_dir, f"run {run.run_id}", f"zk0 logs run {run.run_id}; the record is in {run.run_dir}"),
        on_round=lambda entry: on_round(summary(entry), run.rounds),
        flower_status=lambda: run_status(paths, run.run_id),
        poll_s=poll_s,
    )


def list_runs(paths: Paths, *, limit: int = 20) -> tuple[list[dict], str]:
    """Every run on this machine, newest first: the records (federated and centralized) joined to
    the Flower runs the local SuperLink knows, read as `zk0 status` reads them (one elapsed time,
    one status). Returns the rows and why Flower's view is missing ("" when it is not)."""
    from zk0cli.services.status.runs import RunRecordReader, merge_runs
    from zk0cli.services.status.superlink import SuperLinkData

    now = time.time()
    reader = RunRecordReader()
    records = [reader.read(root, now=now) for root in reader.recent(paths.runs_dir, limit=limit)]
    link, missing = None, ""
    try:
        require_running(paths)
        with LocalControl(paths) as control:
            link = SuperLinkData(runs=[run.to_dict() for run in control.list_runs()], now=control.now)
    except Zk0Error as error:
        missing = f"Flower's runs left out: {error.message}"
    views = merge_runs(records, link, now)
    views.sort(key=lambda v: -(v.started_at or 0.0))
    rows = [
        {
            "name": Path(view.record).name if view.record else "",
            "flwr_run_id": view.flwr_run_id,
            "mode": view.mode,
            "status": view.status,
            "started_at": iso_seconds_or_none(view.started_at),
            "elapsed_s": None if view.elapsed_s is None else round(view.elapsed_s, 1),
            "rounds": view.round,
            "rounds_total": view.rounds_total,
            "record": view.record,
        }
        for view in views
    ]
    return rows, missing


def stop_run(paths: Paths, run_ref: str) -> dict:
    """Stop a run named by its Flower id, record name or a unique prefix."""
    run_id = flower_run_id(paths, run_ref)
    require_running(paths)
    with LocalControl(paths) as control:
        stopped = control.stop_run(run_id)
    return {"run_id": str(run_id), "stopped": stopped}
