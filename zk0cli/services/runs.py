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
from zk0cli.services.flower_control import FlowerRun, LocalControl
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
    expires: it is stopped here. Any other live one is refused.
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
            control.stop_run(flwr_run_id)
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
    """A run's record directory from a Flower run id (the first run or a resume), a run name or a path."""
    from zk0cli.services.report import resolve_run

    if run_ref.isdigit():
        for config_file in sorted(paths.runs_dir.glob("*/config.json")):
            config = files.read_json(config_file, None) or {}
            ids = [config.get("flwr_run_id"), *(r.get("flwr_run_id") for r in config.get("resumes", []))]
            if int(run_ref) in ids:
                return config_file.parent
        raise bad_input(
            f"no run record under {paths.runs_dir} belongs to run {run_ref}",
            hint="`zk0 runs` lists run ids; or pass the run's directory",
        )
    return resolve_run(run_ref, paths.runs_dir)


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


def list_runs(paths: Paths) -> list[dict]:
    """The runs the local SuperLink knows (its 20 most recent), newest first, with ISO 8601 UTC
    times and the seconds each has run."""
    require_running(paths)
    with LocalControl(paths) as control:
        runs = control.list_runs()
        now = control.now or time.time()

    return [
        {
            "run_id": run.run_id,
            "app": run.app,
            "status": run.status,
            "submitted_at": iso_seconds_or_none(run.pending_at),
            "finished_at": iso_seconds_or_none(run.finished_at),
            "elapsed_s": None if (elapsed := run.elapsed_s(now)) is None else round(elapsed, 1),
            "details": run.details,
        }
        for run in runs
    ]


def stop_run(paths: Paths, run_id: str) -> dict:
    if not run_id.isdigit():
        raise bad_input(f"'{run_id}' is not a run id", hint="run ids are numbers: see `zk0 runs`")
    require_running(paths)
    with LocalControl(paths) as control:
        stopped = control.stop_run(int(run_id))
    return {"run_id": run_id, "stopped": stopped}
