"""A claimed task's input, as the warm ClientApp process pulls it: at once, and never a dead run's.

Flower 1.39's SuperNode creates a message's task *before* it has pulled the message's objects
from the SuperLink (``_pull_and_store_message`` in ``flwr/supernode/start_client_internal.py``),
so a process that polls for tasks as fast as :mod:`fedft.deploy.warm_clientapp` does usually
claims the task while the objects are still coming. Flower's own pull
(``flwr.supernode.runtime.run_clientapp.pull_task_input``) then waits for them with its
object-pull backoff (1 s, doubling to 10 s), seconds of nothing every round. Here the wait
between pulls of an object not yet there starts at :data:`OBJECT_POLL_S` and is capped at
:data:`OBJECT_POLL_CAP_S`.

And the objects may never come: if the SuperLink dies while the SuperNode pulls them, the
SuperNode, reconnected, finds the run no longer running and ignores the message ("Run ID ... is
not in `RUNNING` status. Ignoring message"), leaving its task claimed and the objects missing.
Flower's one-shot ``flwr-clientapp`` would wait for them up to two hours, but its SuperExec
meanwhile starts other processes for other tasks; a warm process serves one task at a time and
would never serve the next run (the hang of a server restarted with ``fedft server --resume``).
The SuperNode handles one message at a time and creates the next message's task only once it is
done with the current one, so a *pending* ClientApp task while this task's objects are missing
means the SuperNode gave up on this one: :class:`StaleTask` is raised and the process moves on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    PullAppMessagesRequest,
    PullPendingTasksRequest,
    PullTaskInputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectUnavailableError,
    pull_and_inflate_object_from_tree,
)
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity

OBJECT_POLL_S = 0.02  # first wait before pulling an object the SuperNode does not have yet
OBJECT_POLL_CAP_S = 0.25  # longest wait between two pulls of it (Flower's: 10 s)
STALE_CHECK_S = 1.0  # how often a missing object makes the process ask for pending tasks


class StaleTask(Exception):
    """The SuperNode gave up on the claimed task's message: its objects will never arrive."""


def newer_task_pending(superexec: RuntimeHttpClient) -> Callable[[], bool]:
    """Whether the SuperNode holds a pending ClientApp task (asked at most every STALE_CHECK_S).

    One per claimed task (an answer is kept for STALE_CHECK_S: the previous task's "yes" must
    not drop the next one). Thread-safe: Flower pulls a message's objects from several threads.
    """
    lock = threading.Lock()
    last = [0.0, False]

    def pending() -> bool:
        with lock:
            if time.monotonic() - last[0] >= STALE_CHECK_S:
                res = superexec.PullPendingTasks(PullPendingTasksRequest())
                last[:] = [time.monotonic(), any(t.type == TaskType.CLIENT_APP for t in res.tasks)]
            return bool(last[1])

    return pending


def pull_task_input(
    client: RuntimeHttpClient, stale: Callable[[], bool]
) -> tuple[Message, Context, Run, Fab]:
    """Pull the claimed task's message, context, run and FAB from the SuperNode.

    As Flower's ``pull_task_input``, but with short waits for objects the SuperNode has not yet
    received, and :class:`StaleTask` once ``stale()`` says the SuperNode moved on.
    """
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run, fab = run_from_proto(res.run), fab_from_proto(res.fab)
    wait = OBJECT_POLL_S
    # the SuperNode stores the message just after it creates the task: it may not be there yet
    while not (messages := client.PullMessages(PullAppMessagesRequest())).messages_list:
        if stale():
            raise StaleTask("the SuperNode holds no message for this task")
        time.sleep(wait)
        wait = min(2 * wait, OBJECT_POLL_CAP_S)
    node = Node(node_id=context.node_id)
    pull = make_pull_object_fn_protobuf(client.PullObject, node, context.run_id)

    def pull_object(object_id: str) -> bytes:
        try:
            return pull(object_id)
        except ObjectUnavailableError:
            if stale():
                raise StaleTask(f"object {object_id} of its message never arrived") from None
            raise

    tree = messages.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        pull_object,
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        max_tries_per_object=None,  # a large message on a slow link: only Flower's max_time
        initial_backoff=OBJECT_POLL_S,
        backoff_cap=OBJECT_POLL_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's pull_task_input
    return message, context, run, fab
