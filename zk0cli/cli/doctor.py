"""`zk0 doctor`: is this machine ready to serve or to train? One line per check, a fix under each problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zk0cli.cli.common import JsonOption, out, session
from zk0cli.cli.init import Role
from zk0cli.core.errors import ExitCode


def doctor(
    role: Annotated[
        Role | None, typer.Option("--role", help="Check as a server or a node (default: the role in the config).")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Also write a support archive (.tar.gz) with secrets redacted.", dir_okay=False),
    ] = None,
    skip_network: Annotated[bool, typer.Option("--skip-network", help="Skip checks that go over the network.")] = False,
    json_: JsonOption = False,
) -> None:
    """Check Python, packages, GPU/CUDA, CPU/RAM/disk, video decoding, Hugging Face and this role's setup.

    Exit code 0 when nothing failed (warnings allowed), 4 when something must be fixed first.
    """
    from zk0cli.services import doctor as doctor_service
    from zk0cli.ui.checks import render_checks

    s = session()
    with out().err.status("checking this machine…"):
        diagnosis = doctor_service.diagnose(
            s.paths, s.config_file, role=role.value if role else None, skip_network=skip_network
        )
    data = diagnosis.to_dict()
    if bundle is not None:
        from zk0cli.services.doctor.bundle import write_bundle

        data["bundle"] = {
            "path": str(bundle),
            "members": write_bundle(bundle, s.paths, s.config_file, diagnosis.to_dict()),
        }
        out().success(f"support bundle written to {bundle} (secrets redacted)")
    title = f"zk0 doctor ({diagnosis.role or 'no role yet'})"
    out().result(data, lambda console: render_checks(console, diagnosis.results, title=title))
    if not diagnosis.ready:
        raise typer.Exit(int(ExitCode.ENV_NOT_READY))
