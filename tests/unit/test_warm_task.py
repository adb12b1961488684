"""The warm process's pull of a claimed task: short waits for late objects, a dead run's given up.

A stand-in for the SuperNode's Runtime API (glue test): it serves one real Flower message's
objects, available only after some pulls, as the SuperNode does while it still receives them.
"""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.serde import context_to_proto, fab_to_proto, message_to_proto, run_to_proto
from flwr.proto.message_pb2 import PullObjectResponse
from flwr.proto.runtime_pb2 import (
    PullAppMessagesResponse,
    PullPendingTasksResponse,
    PullTaskInputResponse,
)
from flwr.proto.task_pb2 import Task
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
)
from flwr.supercore.run import Run

from fedft.deploy import warm_task
from fedft.deploy.warm_task import StaleTask, newer_task_pending, pull_task_input


def a_message():
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.arange(6.0), np.ones((2, 3))]),
            "config": ConfigRecord({"server-round": 2}),
        }
    )
    msg = Message(content, dst_node_id=7, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


class RuntimeApi:
    """Serves one message; each object answers "not yet" to its first ``late`` pulls."""

    def __init__(self, message, late, empty_pulls=0):
        self.tree = get_object_tree(message)
        self.objects = {k: v.deflate() for k, v in get_all_nested_objects(message).items()}
        self.late, self.pulls, self.empty_pulls, self.confirmed = late, {}, empty_pulls, []

    def PullTaskInput(self, request):
        run = Run.create_empty(5)
        context = Context(run_id=5, node_id=7, node_config={}, state=RecordDict(), run_config={})
        return PullTaskInputResponse(
            context=context_to_proto(context),
            run=run_to_proto(run),
            fab=fab_to_proto(Fab("h", b"fab", {})),
            task_id=11,
        )

    def PullMessages(self, request):
        if self.empty_pulls:
            self.empty_pulls -= 1
            return PullAppMessagesResponse()
        msg = Message(RecordDict(), dst_node_id=7, message_type="train")
        return PullAppMessagesResponse(
            messages_list=[message_to_proto(remove_content_from_message(msg))],
            message_object_trees=[self.tree],
        )

    def PullObject(self, request):
        n = self.pulls[request.object_id] = self.pulls.get(request.object_id, 0) + 1
        if n <= self.late:
            return PullObjectResponse(object_found=True, object_available=False)
        content = self.objects[request.object_id]
        return PullObjectResponse(object_found=True, object_available=True, object_content=content)

    def ConfirmMessageReceived(self, request):
        self.confirmed.append(request.message_object_id)


def test_late_objects_are_pulled_within_short_waits_and_the_message_is_whole():
    sent = a_message()
    api = RuntimeApi(sent, late=3, empty_pulls=2)
    message, context, run, fab = pull_task_input(api, stale=lambda: False)
    assert message.object_id == sent.object_id  # every object, bit for bit
    np.testing.assert_array_equal(message.content["arrays"].to_numpy_ndarrays()[1], np.ones((2, 3)))
    assert message.metadata.message_id == sent.object_id
    assert api.confirmed == [sent.object_id]
    assert context.node_id == 7 and run.run_id == 5 and fab.hash_str == "h"
    assert all(n == 4 for n in api.pulls.values())  # pulled again until there


def test_a_message_the_supernode_gave_up_on_raises_stale_task():
    api = RuntimeApi(a_message(), late=10**9)
    checks = iter([False, False, True])
    with pytest.raises(StaleTask):
        pull_task_input(api, stale=lambda: next(checks, True))


def test_no_message_at_all_and_a_newer_task_raises_stale_task():
    api = RuntimeApi(a_message(), late=0, empty_pulls=10**9)
    with pytest.raises(StaleTask):
        pull_task_input(api, stale=lambda: True)


class SuperExecApi:
    def __init__(self, types):
        self.types, self.calls = types, 0

    def PullPendingTasks(self, request):
        self.calls += 1
        return PullPendingTasksResponse(
            tasks=[Task(task_id=i, type=t) for i, t in enumerate(self.types)]
        )


def test_only_a_pending_clientapp_task_counts_and_the_question_is_rate_limited(monkeypatch):
    api = SuperExecApi(["flwr-serverapp"])
    pending = newer_task_pending(api)
    assert pending() is False
    api.types = ["flwr-clientapp"]
    assert pending() is False and api.calls == 1  # asked again only after STALE_CHECK_S
    monkeypatch.setattr(warm_task, "STALE_CHECK_S", 0.0)
    assert pending() is True and api.calls == 2
