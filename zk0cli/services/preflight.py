"""The checks before a run is submitted: seconds here instead of a run that fails on the server.

Each check answers one question a failed run would otherwise answer late: is the run config
valid, is the server up, are enough nodes online, does what a round samples from them meet
min-replies (and does trimmed-mean cut any), can the policy be built from what this
machine can fetch (the ServerApp fetches it the same way, with the environment zk0 gives it),
and is every held-out dataset readable. ``zk0 run --dry-run`` prints them alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from zk0cli.core.checks import CheckResult, Status, fail, ok, warn
from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.fl.run_config import RunConfig

SERVER_EVAL_OFF = "off (no eval-datasets): the nodes' federated evaluation judges the rounds"
NOTHING_EVALUATES = (
    "off (no eval-datasets), and so is federated evaluation (fraction-evaluate or client-eval-episodes "
    "is 0): nothing measures these rounds"
)
EVAL_ON_HINT = (
    "to evaluate on held-out data: zk0 config set run.eval-datasets hf:ORG/HELDOUT (or --set eval-datasets=URI "
    "for one run)"
)
SAMPLEABLE = "online nodes out of quarantine"
POLICY_HINT = (
    "use a local checkpoint (zk0 config set run.policy /path/to/checkpoint, with run.vlm-model-name "
    "/path/to/vlm), or --set policy=tiny for a test run"
)


def run_preflight(paths: Paths, config: RunConfig, *, no_wait: bool = False) -> list[CheckResult]:
    """Every check, in order; a check that cannot pass leaves the ones after it unasked where they
    depend on it (no node count without a server)."""
    from zk0cli.services.doctor.hub import serverapp_environment

    results = [ok("run config", _config_text(config))]
    server = _checked("server", lambda: _server(paths))
    results.append(server)
    sampleable = 0  # online nodes not quarantined: what round 1 samples from
    if server.status is Status.OK:
        # the policy and held-out checks below fetch with this shell's Hub settings; the ServerApp
        # fetches with the running SuperLink's, so say when those differ
        results.append(serverapp_environment(paths))
        nodes = _checked("nodes", lambda: _nodes(paths, config, no_wait=no_wait))
        results.append(nodes)
        sampleable = nodes.data.get("sampleable", 0)
    results.append(_checked("sampling", lambda: _sampling(config, sampleable)))
    results.append(_checked("policy", lambda: _policy(config)))
    results += [_checked(f"held-out {uri}", functools.partial(_dataset, uri)) for uri in config.eval_dataset_uris()]
    results.append(_server_eval(config))
    if config.wandb_project:
        results.append(_checked("W&B", lambda: _wandb(config)))
    return results


def warnings(results: list[CheckResult]) -> list[str]:
    """The warnings, one line each, as a run prints them beside its id."""
    return [f"{r.name}: {r.detail}; {r.fix}" for r in results if r.status is Status.WARN]


def first_failure(results: list[CheckResult]) -> Zk0Error | None:
    """The first failed check as the error a run would have ended with."""
    failed = next((r for r in results if r.status is Status.FAIL), None)
    if failed is None:
        return None
    code = ExitCode(failed.data.get("exit_code", ExitCode.FAILED))
    return Zk0Error(f"preflight: {failed.name}: {failed.detail}", hint=failed.fix, code=code)


def require_passed(results: list[CheckResult]) -> None:
    if (error := first_failure(results)) is not None:
        raise error


def _checked(name: str, check: Callable[[], CheckResult | str]) -> CheckResult:
    """A check's result; a Zk0Error it raises is its failure, with the error's own hint and exit code."""
    try:
        found = check()
    except Zk0Error as error:
        return fail(name, error.message, error.hint, exit_code=int(error.code))
    return ok(name, found) if isinstance(found, str) else found


def _config_text(config: RunConfig) -> str:
    return (
        f"{config.num_server_rounds} round(s), {config.local_steps} local steps, batch {config.batch_size}, "
        f"policy {config.policy}"
    )


def _server(paths: Paths) -> str:
    from zk0cli.services.server import require_running

    require_running(paths)
    return "the SuperLink is running"


def _nodes(paths: Paths, config: RunConfig, *, no_wait: bool) -> CheckResult:
    from zk0cli.services.server import list_nodes

    nodes = list_nodes(paths)
    online = [n["name"] or n["node_id"] for n in nodes if n["status"] == "online"]
    needed = config.min_available_nodes
    sampleable = sum(1 for n in nodes if n["status"] == "online" and not n["quarantined"])
    counts = {"online": len(online), "needed": needed, "sampleable": sampleable}
    found = f"{len(online)} of {len(nodes)} registered node(s) online" + (f": {', '.join(online)}" if online else "")
    if len(online) >= needed:
        return ok("nodes", found, **counts)
    missing = f"{found}; min-available-nodes is {needed}"
    if no_wait:
        return fail(
            "nodes",
            missing,
            "wait for the nodes to join (zk0 server nodes list), or --set min-available-nodes=N",
            exit_code=int(ExitCode.UNREACHABLE),
            **counts,
        )
    return warn(
        "nodes",
        f"{missing}: round 1 waits for {needed - len(online)} more",
        "`zk0 run --no-wait` exits instead of waiting; --set min-available-nodes=N starts with fewer",
        **counts,
    )


def _sampling(config: RunConfig, sampleable: int) -> CheckResult:
    if (found := config.check_sampling(sampleable, SAMPLEABLE)) is not None:
        return warn("sampling", *found)
    sampled, how = config.round_sample(sampleable, SAMPLEABLE)
    return ok("sampling", f"{sampled} node(s) a round ({how}); aggregation {config.aggregation}", sampled=sampled)


def _policy(config: RunConfig) -> str:
    from zk0cli.policy.build import check_sources

    try:
        return check_sources(config.policy_spec())
    except Zk0Error as error:
        if error.code is ExitCode.UNREACHABLE:
            raise Zk0Error(error.message, hint=POLICY_HINT, code=error.code) from error
        raise


def _wandb(config: RunConfig) -> str:
    import os

    from zk0cli.fl.tracking import require_wandb

    require_wandb(config)
    mode = os.environ.get("WANDB_MODE", "online")
    return f"every round goes to project {config.wandb_project} (WANDB_MODE {mode}, as the server sees it)"


def _dataset(text: str) -> str:
    from zk0cli.datasets.uri import check_version, dataset_root, parse_uri, read_info

    uri = parse_uri(text)
    info = read_info(dataset_root(uri, meta_only=True))
    check_version(uri, info)
    return f"{info.get('total_episodes', '?')} episodes, {info.get('total_frames', '?')} frames, {info.get('fps')} fps"


def _server_eval(config: RunConfig) -> CheckResult:
    if config.server_evaluates():
        return ok("server eval", f"on: {len(config.eval_dataset_uris())} held-out dataset(s)")
    federated = config.fraction_evaluate > 0 and config.client_eval_episodes > 0
    return warn("server eval", SERVER_EVAL_OFF if federated else NOTHING_EVALUATES, EVAL_ON_HINT)
