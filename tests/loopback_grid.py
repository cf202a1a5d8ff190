"""An in-process Grid: the real strategy and the real ClientApp, without processes in between.

Every message is deflated into Flower's content-addressed objects and inflated again on the
other side, exactly the bytes Flower's transport moves, and counted. Tests use it to drive many
rounds of the strategy quickly and deterministically; ``bench/wire_bytes.py`` uses
:func:`wire_bytes`. Runs through the Simulation Engine and real SuperLink/SuperNode processes
are covered separately (``zk0 sim`` and the deployment tests).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from zk0cli.fl import integrity

TINY_RUN = {  # the smallest real run: the tiny policy, a few CPU steps and batches per round
    "policy": "tiny",
    "local-steps": 2,
    "batch-size": 2,
    "chunk-size": 10,
    "eval-batches": 1,
    "device": "cpu",
}


def serialise(message: Message) -> dict[str, bytes]:
    """The unique objects Flower pushes for ``message`` (identical chunks travel once)."""
    return {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}


def wire_bytes(message: Message) -> int:
    return sum(len(content) for content in serialise(message).values())


def transmit(message: Message) -> Message:
    """``message`` as the receiving side sees it: rebuilt from its serialised objects."""
    objects = serialise(message)
    received = inflate_object_from_contents(message.object_id, objects)
    received.metadata.__dict__["_message_id"] = message.metadata.message_id
    return received


@dataclass
class LoopbackGrid(Grid):
    client_app: ClientApp
    node_configs: list[dict[str, Any]]  # one per node, as a SuperNode's --node-config would give
    run_config: dict[str, Any]
    run_id: int = 1
    bytes_down: list[int] = field(default_factory=list)  # per message, server -> node
    bytes_up: list[int] = field(default_factory=list)  # per reply, node -> server
    array_names: set[str] = field(default_factory=set)  # every parameter name that crossed, either way
    _contexts: dict[int, Context] = field(default_factory=dict)
    _replies: dict[str, Message] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        # what flwr-serverapp sets for its process; Message() reads it
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, self.run_id, SUPERLINK_NODE_ID
        for index, node_config in enumerate(self.node_configs):
            node_id = 1000 + index
            self._contexts[node_id] = Context(
                self.run_id, node_id, dict(node_config), RecordDict(), dict(self.run_config)
            )

    def set_run(self, run: Run) -> None:
        self.run_id = run.run_id

    @property
    def run(self) -> Run:
        return Run.create_empty(self.run_id)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self.run_id
            self.bytes_down.append(wire_bytes(message))
            self._note_arrays(message)
            received = transmit(message)
            try:
                reply = self.client_app(received, self._contexts[message.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - what Flower's ClientApp runtime does too
                reason = str(type(exc)) + ":<'" + str(exc) + "'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=received)
            self.bytes_up.append(wire_bytes(reply))
            self._note_arrays(reply)
            self._replies[message_id] = transmit(reply)
            ids.append(message_id)
        return ids

    def _note_arrays(self, message: Message) -> None:
        if message.has_content():
            for record in message.content.array_records.values():
                self.array_names.update(name for name, _ in integrity.read_layout(record))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        del timeout  # every reply is already there: nothing to wait for
        return self.pull_messages(self.push_messages(messages))
