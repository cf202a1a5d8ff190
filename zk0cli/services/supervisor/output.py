"""The output of supervised processes: read from their pipes without blocking, handed on line by line."""

from __future__ import annotations

import os
import re
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from zk0cli.services.supervisor.process import SupervisedProcess

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
READ_CHUNK = 65536  # also the longest line handed on in one piece

LineSink = Callable[[SupervisedProcess, str], None]


@dataclass
class _Reader:
    stream: IO[bytes]
    owner: SupervisedProcess
    pending: bytearray = field(default_factory=bytearray)  # the start of a line not ended yet


class OutputPump:
    """Every process's stdout (with stderr) in one selector; each line, without colour codes, goes to ``on_line``."""

    def __init__(self, on_line: LineSink):
        self.on_line = on_line
        self.selector = selectors.DefaultSelector()

    def add(self, stream: IO[bytes], owner: SupervisedProcess) -> None:
        os.set_blocking(stream.fileno(), False)
        self.selector.register(stream, selectors.EVENT_READ, data=_Reader(stream, owner))

    def pump(self, timeout: float) -> None:
        """Read what is there (waiting at most ``timeout`` for something) and hand on the complete lines."""
        for key, _ in self.selector.select(timeout):
            self._read(key.data)

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            self._remove(key.data)

    def _read(self, reader: _Reader) -> None:
        try:
            chunk = os.read(reader.stream.fileno(), READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # end of output: the process exited
            if reader.pending:
                self._hand_on(reader, reader.pending)
            self._remove(reader)
            return
        reader.pending.extend(chunk)
        *lines, rest = reader.pending.split(b"\n")
        for line in lines:
            self._hand_on(reader, line)
        if len(rest) > READ_CHUNK:  # a line without end: hand it on in pieces
            self._hand_on(reader, rest)
            rest = bytearray()
        reader.pending = rest

    def _hand_on(self, reader: _Reader, raw: bytes | bytearray) -> None:
        self.on_line(reader.owner, ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace")).rstrip("\r"))

    def _remove(self, reader: _Reader) -> None:
        self.selector.unregister(reader.stream)
        reader.stream.close()
