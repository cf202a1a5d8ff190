"""Reading a run record back, and ``zk0 report``: one self-contained HTML page plus a Markdown
summary of a run, built only from what the record holds.

The HTML embeds its plots as PNG data URIs and, up to :data:`VIDEO_EMBED_LIMIT` bytes in all,
the evaluation videos as MP4 data URIs; the videos are also copied next to it (``videos/``), so
the Markdown can link them and a page with larger videos still plays them from the folder.
The plots are redrawn from the record with the run's own plot writer (:mod:`zk0cli.fl.plots`).
"""

from __future__ import annotations

import base64
import html
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zk0cli.core.errors import bad_input
from zk0cli.core.files import JsonFileError, atomic_write_text, read_json
from zk0cli.core.paths import Paths
from zk0cli.core.units import ACTION_ERROR_MEANING, ACTION_UNIT, action_error, duration, size
from zk0cli.fl.record_follow import STATUS_FILE, round_files
from zk0cli.fl.records import FINAL_LINK, find_record, node_label, record_flower_ids, summary

if TYPE_CHECKING:
    from zk0cli.services.simulation import SimRequest

VIDEO_EMBED_LIMIT = 25 * 2**20  # bytes of video embedded as data URIs; beyond that they play from videos/
REQUIRED_FILES = ("config.json", "policy_loss_history.json")
SERVER_EVAL_OFF = "off: the server had no held-out data (zk0 config set run.eval-datasets URI turns it on)"


# ----------------------------------------------------------------------------- reading a record


@dataclass(frozen=True)
class EvalPoint:
    """One server evaluation of a run, placed by the optimizer steps taken before it."""

    round: int
    steps: int  # optimizer steps of every client together (or of the centralized run) up to this round
    policy_loss: float
    action_error: float


@dataclass
class RunData:
    """A run record as written by zk0cli.fl.records, loaded and checked for completeness."""

    root: Path
    config: dict[str, Any]
    status: dict[str, Any]
    rounds: list[dict[str, Any]]  # full round records, round 0 first
    history: list[dict[str, Any]]  # policy_loss_history.json

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def run_config(self) -> dict[str, Any]:
        return self.config.get("run_config") or {}

    @property
    def mode(self) -> str:
        """'federated', 'centralized' or 'local-only' (records without the key are federated)."""
        return str(self.config.get("mode", "federated"))

    @property
    def seed(self) -> int | None:
        return self.run_config.get("seed")

    @property
    def final_checkpoint(self) -> Path | None:
        link = self.root / FINAL_LINK
        return link.resolve() if link.exists() else None

    def cumulative_steps(self) -> dict[int, int]:
        """Optimizer steps taken up to and including each round."""
        total, steps = 0, {}
        for entry in self.rounds:
            total += round_steps(entry)
            steps[entry["round"]] = total
        return steps

    def eval_points(self) -> list[EvalPoint]:
        steps = self.cumulative_steps()
        return [
            EvalPoint(int(h["round"]), steps[int(h["round"])], float(h["policy_loss"]), float(h["action_error"]))
            for h in self.history
        ]

    def summaries(self) -> list[dict[str, Any]]:
        """federated_metrics.json's lines, made by the record's own summary()."""
        return [summary(entry) for entry in self.rounds]


def round_steps(entry: dict[str, Any]) -> int:
    """Optimizer steps that reached the model in one round: those of the accepted clients."""
    clients = (entry.get("clients") or {}).get("each") or []
    return int(sum(int((client.get("metrics") or {}).get("steps", 0)) for client in clients))


def resolve_run(ref: str | Path, runs_dir: Path | None = None) -> Path:
    """A run's record from a directory, a record name, a Flower run id or a unique prefix."""
    return find_record(runs_dir or Paths.resolve().runs_dir, ref)


def load_run(ref: str | Path, runs_dir: Path | None = None) -> RunData:
    """Load a run record; a record without its config, loss history or any round is refused."""
    root = resolve_run(ref, runs_dir)
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise bad_input(
            f"run {root.name} is incomplete: {', '.join(missing)} missing in {root}",
            hint=f"the run may still be starting or may have failed: see {root / STATUS_FILE}",
        )
    config = _read_json(root / "config.json")
    history = _read_json(root / "policy_loss_history.json")
    status = _read_json(root / STATUS_FILE) if (root / STATUS_FILE).is_file() else {}
    rounds = [_read_json(path) for _, path in sorted(round_files(root).items())]
    present = [entry.get("round") for entry in rounds]
    if not rounds or present != list(range(len(rounds))):
        gaps = sorted(set(range(max(present or [0]) + 1)) - set(present))
        raise bad_input(
            f"run {root.name} is incomplete: round records {gaps or [0]} missing",
            hint=f"the run may still be starting or may have failed: see {root / STATUS_FILE}",
        )
    known = {entry["round"] for entry in rounds}
    if any(h.get("round") not in known for h in history):
        raise bad_input(
            f"run {root.name}: policy_loss_history.json names rounds without a round record",
            hint="the record was edited or copied partly; re-run it with --from-record",
        )
    return RunData(root, config, status, rounds, history)


def sim_request_from_record(
    ref: str | Path, *, overrides: dict[str, Any] | None = None, runs_dir: Path | None = None
) -> SimRequest:
    """What ``zk0 sim --from-record`` submits: the record's clients, rounds and full run config
    (``overrides`` on top, e.g. another seed), into a new run. Refused when a dataset the record
    trained or evaluated on is missing or its content changed (fingerprints)."""
    from zk0cli.fl.records import new_run_name
    from zk0cli.services.simulation import SimRequest

    run = load_run(ref)
    if run.mode != "federated":
        raise bad_input(f"run {run.run_id} is a {run.mode} run", hint=f"re-run it with `{reproduce_command(run)}`")
    settings = dict(run.run_config)
    if not str(settings.get("datasets", "")).split():
        raise bad_input(
            f"run {run.run_id} does not name its datasets (a deployment run: each node brought its own)",
            hint="re-run it with `zk0 sim --dataset URI ...` and the record's run config",
        )
    clients = int(settings.get("min-available-nodes", 1))
    _check_record_datasets(run, clients)
    settings["run-name"] = f"{new_run_name()}-sim"
    settings["runs-dir"] = str(runs_dir or Paths.resolve().runs_dir)
    settings.update({key.replace("_", "-"): value for key, value in (overrides or {}).items()})
    return SimRequest(clients=clients, rounds=int(settings["num-server-rounds"]), run_config=settings)


def _check_record_datasets(run: RunData, clients: int) -> None:
    """The datasets the clients trained on and the server evaluated on still hold what they held."""
    from zk0cli.datasets.uri import dataset_fingerprint, parse_uri

    def refuse(uri: str) -> None:
        raise bad_input(
            f"dataset {uri} is not the one run {run.run_id} used (its content fingerprint differs)",
            hint="restore the recorded dataset, or start a new run with `zk0 sim`",
        )

    uris = str(run.run_config["datasets"]).split()
    trained = {
        str(c.get("dataset_fingerprint", ""))
        for entry in run.rounds
        for c in (entry.get("clients") or {}).get("each") or []
    } - {""}
    for uri in dict.fromkeys(uris[client % len(uris)] for client in range(clients)):  # each client's dataset
        if trained and dataset_fingerprint(parse_uri(uri)) not in trained:
            refuse(uri)
    for uri, fingerprint in (run.config.get("dataset_fingerprints") or {}).items():  # the server's
        if dataset_fingerprint(parse_uri(uri)) != fingerprint:
            refuse(uri)


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except JsonFileError as exc:
        raise bad_input(
            f"cannot read {path}: {exc.reason}", hint="the run record is damaged; re-run it with --from-record"
        ) from None


# ----------------------------------------------------------------------------- the report's content


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class ReportContent:
    title: str
    facts: list[tuple[str, Any]]  # the summary at the top
    tables: list[Table]
    plots: list[Path]  # PNG files, alongside the report
    videos: list[dict[str, Any]] = field(default_factory=list)  # video JSONs, with "file" alongside


def report_content(run: RunData, out_dir: Path) -> ReportContent:
    from zk0cli.fl import plots

    points = run.eval_points()
    final = points[-1] if points else None
    best = min(points, key=lambda p: p.policy_loss) if points else None
    seconds = [
        float(entry["seconds"]) for entry in run.rounds if entry["round"] > 0 and entry.get("seconds") is not None
    ]
    traffic = bytes_transferred(run)
    checkpoint = run.final_checkpoint
    facts = [
        ("run", _run_names(run)),
        ("mode", run.mode),
        ("state", _state(run.status)),
        ("seed", run.seed),
        ("rounds", max(entry["round"] for entry in run.rounds)),
        ("optimizer steps", run.cumulative_steps()[run.rounds[-1]["round"]]),
        *([("server eval", SERVER_EVAL_OFF)] if run.config.get("server_eval") is False else []),
        ("final server eval loss", f"{_num(final.policy_loss)} (round {final.round})" if final else "-"),
        ("final action error", f"{_num(final.action_error)} ({ACTION_ERROR_MEANING})" if final else "-"),
        ("best server eval loss", f"{_num(best.policy_loss)} (round {best.round})" if best else "-"),
        ("elapsed", duration(_elapsed_s(run))),  # as zk0 status and zk0 runs show it
        (
            "time in rounds",
            f"{duration(sum(seconds))} over {len(seconds)} rounds ({duration(sum(seconds) / len(seconds))} per round)"
            if seconds
            else "-",
        ),
        ("bytes transferred", _bytes_text(traffic)),
        ("final checkpoint", str(checkpoint) if checkpoint else "none"),
        ("reproduce", reproduce_command(run)),
    ]
    tables = [
        _participants_table(run),
        *([_alone_table(run, final)] if run.mode == "federated" else []),
        _rounds_table(run),
        _rejections_table(run),
        Table(
            "Reproducibility",
            ["what", "value"],
            [[f"version {name}", version] for name, version in (run.config.get("versions") or {}).items()]
            + [
                [f"fingerprint {uri}", digest] for uri, digest in (run.config.get("dataset_fingerprints") or {}).items()
            ],
        ),
        Table("Configuration", ["key", "value"], [[key, value] for key, value in sorted(run.run_config.items())]),
    ]
    drawn = plots.write_plots(out_dir / "plots", run.summaries())
    return ReportContent(f"zk0 run {run.run_id}", facts, tables, drawn, _copy_videos(run, out_dir))


def _run_names(run: RunData) -> str:
    flower = record_flower_ids(run.root)
    return f"{run.run_id} (Flower run {', '.join(map(str, flower))})" if flower else run.run_id


def _elapsed_s(run: RunData) -> float | None:
    from zk0cli.services.status.runs import RunRecordReader

    return RunRecordReader().read(run.root, now=time.time()).elapsed_s


def bytes_transferred(run: RunData) -> dict[str, int] | None:
    """Bytes down (server to nodes) and up over the run, when the record has them."""
    rounds = [round_bytes(entry) for entry in run.rounds]
    found = [traffic for traffic in rounds if traffic is not None]
    if not found:
        return None
    return {"down": sum(t["down"] for t in found), "up": sum(t["up"] for t in found)}


def round_bytes(entry: dict[str, Any]) -> dict[str, int] | None:
    """One round's weight bytes from its clients' ``bytes_down`` / ``bytes_up`` (the keys `zk0 status`
    reads too), training and federated evaluation; None when no client has them."""
    totals, found = {"down": 0, "up": 0}, False
    trained = (entry.get("clients") or {}).get("each") or []
    evaluated = (entry.get("federated_eval") or {}).get("each") or []
    for client in [*trained, *evaluated]:
        metrics = client.get("metrics") or {}
        for direction in totals:
            value = client.get(f"bytes_{direction}", metrics.get(f"bytes_{direction}"))
            if value is not None:
                found = True
                totals[direction] += int(value)
    return totals if found else None


def reproduce_command(run: RunData) -> str:
    command = "sim" if run.mode == "federated" else "train"  # centralized and local-only: zk0 train
    return f"zk0 {command} --from-record {run.root}"


def _state(status: dict[str, Any]) -> str:
    state = str(status.get("state", "unknown"))
    return f"{state}: {status['error']}" if status.get("error") else state


def _participants_table(run: RunData) -> Table:
    declared = run.config.get("participants")
    if declared:  # written by the run itself: datasets with their episodes and frames
        return Table(
            "Participants",
            ["name", "dataset", "episodes", "frames", "fingerprint"],
            [
                [
                    p.get("name", ""),
                    p.get("uri", ""),
                    _episodes_text(p.get("episodes")),
                    p.get("frames", ""),
                    str(p.get("fingerprint", ""))[:12],
                ]
                for p in declared
            ],
        )
    seen: dict[str, dict[str, Any]] = {}
    for entry in run.rounds:
        for client in (entry.get("clients") or {}).get("each") or []:
            row = seen.setdefault(
                node_label(client),
                {
                    "node_id": client.get("node", ""),
                    "dataset": client.get("dataset", ""),
                    "rounds": 0,
                    "samples": 0,
                    "traffic": None,
                    "fingerprint": client.get("dataset_fingerprint", ""),
                },
            )
            row["rounds"] += 1
            row["samples"] += int(client.get("samples") or 0)
            if client.get("bytes_down") is not None:
                traffic = row["traffic"] or {"down": 0, "up": 0}
                traffic["down"] += int(client["bytes_down"])
                traffic["up"] += int(client.get("bytes_up") or 0)
                row["traffic"] = traffic
    return Table(
        "Participants",
        ["node", "node id", "dataset", "rounds trained", "samples used", "bytes (train)", "fingerprint"],
        [
            [
                node,
                row["node_id"],
                row["dataset"],
                row["rounds"],
                row["samples"],
                _bytes_text(row["traffic"], missing="-"),
                str(row["fingerprint"])[:12],
            ]
            for node, row in seen.items()
        ],
        note="episodes and frames per node are not in this record; the counts are from the round records",
    )


def _alone_table(run: RunData, final: EvalPoint | None) -> Table:
    """Each node's dataset trained alone (`zk0 train --match-run RUN --local-only`) against this
    federated run, on the same held-out data: what federation pays each node."""
    rows = []
    for root in sorted(run.root.parent.iterdir()):
        config = _local_only_config(root)
        if not config or (config.get("matched_run") or {}).get("run_id") != run.run_id:
            continue
        alone = load_run(root).eval_points()
        if not alone or final is None:
            continue
        gap = 100 * (final.policy_loss / alone[-1].policy_loss - 1)
        side = "lower" if gap < 0 else "higher"
        names = ", ".join(p.get("name", "") for p in config.get("participants") or [])
        rows.append([names, root.name, _num(alone[-1].policy_loss), _num(final.policy_loss), f"{abs(gap):.1f}% {side}"])
    return Table(
        "Each node alone",
        ["dataset", "local-only run", "its final loss", "federated", "federated is"],
        rows,
        note="final server eval loss on the same held-out data"
        if rows
        else f"no local-only runs yet: `zk0 train --match-run {run.run_id} --local-only` trains each node alone",
    )


def _local_only_config(root: Path) -> dict[str, Any] | None:
    config = read_json(root / "config.json", default=None)
    return config if isinstance(config, dict) and config.get("mode") == "local-only" else None


def _rounds_table(run: RunData) -> Table:
    steps = run.cumulative_steps()
    rows = []
    for entry, line in zip(run.rounds, run.summaries(), strict=True):
        rows.append(
            [
                line["round"],
                line["num_clients"],
                line["rejected"],
                line["failed"],
                _mean_std(line["loss_avg"], line["loss_std"]),
                _num(line["server_policy_loss"]),
                _num(line["server_action_error"]),
                _num(line["federated_eval_loss"]),
                _num(line["lr"]),
                _num(line["mu"]),
                steps[line["round"]],
                duration(entry.get("seconds")),
                _bytes_text(round_bytes(entry), missing="-"),
            ]
        )
    return Table(
        "Rounds",
        [
            "round",
            "clients",
            "rejected",
            "failed",
            "train loss",
            "server loss",
            f"action error ({ACTION_UNIT})",
            "fed. eval loss",
            "lr",
            "mu",
            "steps (total)",
            "time",
            "bytes down / up",
        ],
        rows,
    )


def _rejections_table(run: RunData) -> Table:
    rows = [
        [entry["round"], outcome, node_label(item), item.get("dataset", ""), item.get("reason", "")]
        for entry in run.rounds
        for outcome in ("rejected", "failed", "late", "quarantined")
        for item in entry.get(outcome) or []
    ] + [
        [
            entry["round"],
            "flagged (aggregated)",
            node_label(client),
            client.get("dataset", ""),
            "; ".join(client["flags"]),
        ]
        for entry in run.rounds
        for client in (entry.get("clients") or {}).get("each") or []
        if client.get("flags")
    ]
    return Table(
        "Rejected, failed, late and flagged updates",
        ["round", "outcome", "node", "dataset", "reason"],
        rows,
        note="" if rows else "every update was accepted",
    )


def _copy_videos(run: RunData, out_dir: Path) -> list[dict[str, Any]]:
    videos = []
    for info_path in sorted((run.root / "videos").glob("*.json")):
        info = _read_json(info_path)
        source = info_path.with_name(str(info.get("video", info_path.with_suffix(".mp4").name)))
        if not source.is_file():
            continue
        target = out_dir / "videos" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        videos.append({**info, "file": target})
    return videos


def _episodes_text(episodes: Any) -> str:
    if isinstance(episodes, list):
        from zk0cli.datasets.layout import short_ranges

        return f"{len(episodes)} ({short_ranges(episodes)})"
    return "" if episodes is None else str(episodes)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _mean_std(mean: Any, std: Any) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if std else f"{mean:.4g}"


def _bytes_text(traffic: dict[str, int] | None, *, missing: str = "not recorded") -> str:
    if traffic is None:
        return missing
    return f"{size(traffic['down'])} down / {size(traffic['up'])} up"


# ----------------------------------------------------------------------------- writing it


def write_report(ref: str | Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Write ``report.html`` and ``report.md`` (plots and videos alongside) and say where."""
    run = load_run(ref)
    out_dir = Path(out_dir) if out_dir is not None else run.root / "report"
    content = report_content(run, out_dir)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    embedded = _embeddable(content.videos)
    atomic_write_text(html_path, render_html(content, embedded))
    atomic_write_text(md_path, render_markdown(content, out_dir))
    return {
        "run": run.run_id,
        "html": str(html_path),
        "markdown": str(md_path),
        "plots": [str(p) for p in content.plots],
        "videos": [str(v["file"]) for v in content.videos],
        "videos_embedded": len(embedded),
    }


def _embeddable(videos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen, total = [], 0
    for video in videos:
        size = video["file"].stat().st_size
        if total + size <= VIDEO_EMBED_LIMIT:
            chosen.append(video)
            total += size
    return chosen


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td { font-variant-numeric: tabular-nums; }
img, video { max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0; }
.note { color: #666; font-size: 0.85rem; }
"""


def render_html(content: ReportContent, embedded: list[dict[str, Any]]) -> str:
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(content.title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(content.title)}</h1>",
        _html_table(Table("Summary", ["", ""], [[k, v] for k, v in content.facts]), header=False),
    ]
    parts.append("<h2>Plots</h2>")
    for plot in content.plots:
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(f"<img alt='{esc(plot.stem)}' src='data:image/png;base64,{data}'>")
    for table in content.tables:
        parts.append(_html_table(table))
    if content.videos:
        parts.append("<h2>Evaluation videos</h2>")
    for video in content.videos:
        inline = any(video["file"] == chosen["file"] for chosen in embedded)
        source = (
            "data:video/mp4;base64," + base64.b64encode(video["file"].read_bytes()).decode("ascii")
            if inline
            else f"videos/{video['file'].name}"
        )
        parts.append(
            f"<p>round {esc(str(video.get('round')))}, {esc(str(video.get('dataset')))} episode "
            f"{esc(str(video.get('episode')))}: action error {esc(action_error(video.get('action_error')))}</p>"
            f"<video controls preload='metadata' src='{esc(source)}'></video>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_table(table: Table, *, header: bool = True) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers) if header else ""
    rows = "".join(
        "<tr>" + "".join(_html_cell(i, cell, header) for i, cell in enumerate(row)) + "</tr>" for row in table.rows
    )
    note = f"<p class='note'>{esc(table.note)}</p>" if table.note else ""
    body = f"<table>{f'<tr>{head}</tr>' if head else ''}{rows}</table>" if table.rows else ""
    return f"<h2>{esc(table.title)}</h2>{body}{note}"


def _html_cell(index: int, cell: Any, header: bool) -> str:
    tag = "th" if not header and index == 0 else "td"
    return f"<{tag}>{html.escape(str(cell))}</{tag}>"


def render_markdown(content: ReportContent, out_dir: Path) -> str:
    lines = [f"# {content.title}", "", *_md_rows(["", ""], [[f"**{k}**", v] for k, v in content.facts]), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in content.plots] + [""]
    for table in content.tables:
        lines += [f"## {table.title}", ""]
        if table.rows:
            lines += [*_md_rows(table.headers, table.rows), ""]
        if table.note:
            lines += [f"_{table.note}_", ""]
    if content.videos:
        lines += ["## Evaluation videos", ""]
        lines += [
            f"- round {v.get('round')}, {v.get('dataset')} episode {v.get('episode')}: action error "
            f"{action_error(v.get('action_error'))} ([{v['file'].name}]({v['file'].relative_to(out_dir).as_posix()}))"
            for v in content.videos
        ]
        lines.append("")
    return "\n".join(lines)


def _md_rows(headers: list[str], rows: Iterable[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows
    ]
