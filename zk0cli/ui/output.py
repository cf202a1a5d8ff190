"""How every command talks to the user.

Human output goes through rich (which honours NO_COLOR and plain pipes). With ``--json`` the
command's result is ONE JSON document on stdout and every message goes to stderr, so scripts
can parse stdout as it is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from zk0cli.core.errors import Zk0Error


@dataclass
class Output:
    json_mode: bool = False
    verbose: bool = False
    out: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @property
    def messages(self) -> Console:
        """Where progress and notes go: stderr in JSON mode so stdout stays parseable."""
        return self.err if self.json_mode else self.out

    def result(self, data: Any, render: Callable[[Console], None] | None = None) -> None:
        """A command's result: JSON document or a human rendering of the same data."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(self.out)
        else:
            self.out.print(data)

    def info(self, message: str) -> None:
        self.messages.print(message)

    def success(self, message: str) -> None:
        self.messages.print(f"[green]✓[/green] {message}")

    def warning(self, message: str) -> None:
        self.err.print(f"[yellow]![/yellow] {message}")

    def debug(self, message: str) -> None:
        if self.verbose:
            self.err.print(f"[dim]{message}[/dim]", markup=False)

    def error(self, error: Zk0Error) -> None:
        # soft_wrap: an error stays one line however narrow the terminal, so it greps and pastes whole
        self.err.print(f"[bold red]Error:[/bold red] {_escape(error.message)}", soft_wrap=True)
        if error.hint:
            self.err.print(f"[dim]hint:[/dim] {_escape(error.hint)}", soft_wrap=True)
        if self.json_mode:
            sys.stdout.write(json.dumps(error.to_dict()) + "\n")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


_current = Output()


def current() -> Output:
    return _current


def configure(*, json_mode: bool, verbose: bool) -> Output:
    global _current
    _current = Output(json_mode=json_mode, verbose=verbose)
    return _current
