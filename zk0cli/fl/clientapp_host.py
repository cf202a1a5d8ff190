"""The node's resident ClientApp: one long-lived process runs every train and evaluate task.

In Flower's default ``subprocess`` isolation the SuperNode starts ``flower-superexec``, which
starts a fresh ``flwr-clientapp`` process for every message, so imports, the policy build and
opening the dataset are paid again each round (bench/round_overhead.py measured 21-39 s of
start-up per message against ~25 s of training). zk0 starts the SuperNode with
``--isolation process`` and runs this host beside it instead: it takes the node's tasks from the
SuperNode's Runtime API as SuperExec does, and runs each one in this process as
``flwr-clientapp`` does (the same Flower calls), so :mod:`zk0cli.fl.node`'s cache of the built
policy and datasets lives as long as the node.

It runs only the ClientApp of the zk0 package installed here. A run whose app names another
ClientApp gets an error reply: whoever controls the server cannot make a node execute code its
operator did not install (with subprocess isolation, any FAB's code would run on every node).

    python -m zk0cli.fl.clientapp_host --runtime-api-address 127.0.0.1:9094
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zk0cli.core.childlog import child_logger

if TYPE_CHECKING:
    from flwr.supercore.protobuf.client import ProtobufClientInterceptor

log = child_logger("clientapp_host")
CLIENTAPP = "zk0cli.fl.client_app:app"  # the one ClientApp this host runs
READY_LINE = "clientapp host ready"  # the supervisor waits for this line (imports done)
POLL_S = 0.1  # between task polls; Flower's SuperExec waits 1 s
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.1, 0.5  # retrying arrays the SuperNode is still downloading
TASK_RETRY_S = 30.0  # how long one task's calls retry a SuperNode that does not answer
RETRYABLE_STATUS = (502, 503, 504)


def serve(runtime_api_address: str, *, poll_s: float = POLL_S) -> None:
    """Take and run the SuperNode's ClientApp tasks until the process is stopped."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType

    from zk0cli.fl.client_app import app  # torch, lerobot, zk0: imported once, before the first task

    tasks = _runtime_client(runtime_api_address, component="SuperExec")
    log.info("%s: taking tasks from the SuperNode at %s", READY_LINE, runtime_api_address)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while True:
            response = tasks.AcquireTask(request)
            if response.HasField("task") and response.token:
                run_task(runtime_api_address, response.token, app)
            else:
                time.sleep(poll_s)
    finally:
        tasks.close()


def run_task(runtime_api_address: str, token: str, app: Any) -> None:
    """One task, as ``flwr-clientapp`` runs it: pull the message, call the app, push the reply."""
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = _runtime_client(runtime_api_address, component="flwr-clientapp", token=token, retry_for_s=TASK_RETRY_S)
    heartbeat = HeartbeatSender(_heartbeat(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "the ClientApp task failed"
    started = time.monotonic()
    try:
        message, context, run, fab = _pull_task_input(client)
        log.info(
            "task for run %s: %s message (pulled in %.1f s)",
            run.run_id,
            message.metadata.message_type,
            time.monotonic() - started,
        )
        requested = _clientapp_of(fab.content)
        if requested != CLIENTAPP:
            raise LoadClientAppError(
                f"this node runs only zk0's ClientApp ({CLIENTAPP}); run {run.run_id} asks for {requested!r}"
            )
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - any failure becomes the error reply, as in flwr-clientapp
        code = (
            ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            if isinstance(exc, LoadClientAppError)
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        )
        details = f"{type(exc).__name__}: {exc}"
        log.warning("task failed: %s", details)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
                log.info("reply pushed after %.1f s", time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - the SuperNode went away (restart): nothing to answer to
            log.warning("could not push the reply: %s: %s", type(exc).__name__, exc)
        push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()


def _pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Message, Context, Run and FAB of the acquired task: Flower's ``pull_task_input`` with a
    0.1 s first retry instead of 1 s. The host takes a task as soon as the SuperNode has it,
    often while the SuperNode is still downloading the message's arrays, and the doubling
    backoff from 1 s then cost about a second per round (up to 10 s for SmolVLA's 84 objects)."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    task = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (
        task.task_id,
        task.run.run_id,
        task.context.node_id,
    )
    context, run, fab = context_from_proto(task.context), run_from_proto(task.run), fab_from_proto(task.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed over a task without its message")
    tree, node = pulled.message_object_trees[0], Node(node_id=context.node_id)
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_BACKOFF_S,
        backoff_cap=PULL_BACKOFF_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message does not carry its own id
    return message, context, run, fab


def _runtime_client(address: str, *, component: str, token: str = "", retry_for_s: float | None = None) -> Any:
    """A client of the SuperNode's Runtime API on loopback (plain HTTP, as Flower's own SuperExec uses it)."""
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[ProtobufClientInterceptor] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=_retry_invoker(retry_for_s),
    )


def _retry_invoker(max_time_s: float | None) -> Any:
    """Retry while the SuperNode is away for a moment (restarting); give up on any HTTP refusal.

    Not Flower's ``make_simple_http_retry_invoker``: on a 401 it SIGINTs its own process, right
    for a one-task ``flwr-clientapp`` and wrong here. A restarted SuperNode no longer knows the
    token of the task in flight; that task is lost, and the host goes on to the next one.
    """
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    def refused(exc: Exception) -> bool:
        return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in RETRYABLE_STATUS

    return RetryInvoker(
        lambda: exponential(base_delay=0.2, max_delay=5),
        (httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=max_time_s,
        should_giveup=refused,
    )


def _heartbeat(client: Any) -> Callable[[], bool]:
    """The task's heartbeat: False (retried later) on any failure. Flower's own raises SIGINT when
    the SuperNode says no, which would end this long-lived process."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=no-name-in-module

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    return beat


def _clientapp_of(fab_content: bytes) -> str:
    """The ClientApp reference a FAB's pyproject names (its code is never imported here)."""
    from flwr.common.config import get_fab_config

    try:
        return str(get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        return f"<unreadable FAB: {exc}>"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zk0-clientapp-host", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    args = parser.parse_args(argv)
    try:
        serve(args.runtime_api_address)
    except KeyboardInterrupt:  # Ctrl-C in a foreground node: a clean stop
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
