"""The inbox index answers Flower's ``get_message_ins`` exactly as Flower's own walk does.

Both run on real ``InMemoryLinkState`` objects set up as ``flwr.simulation.run_simulation`` sets
one up (no Ray): one with Flower's methods, one indexed; the same pushes, polls, expiries and
deletions go to each, and every poll must return the same instructions.
"""

import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedft.flower_inbox import FLOWER_METHODS, index_inboxes


@pytest.fixture(autouse=True)
def indexed():
    assert index_inboxes()
    TaskIdentity.node_id = SUPERLINK_NODE_ID  # the ServerApp side pushes
    yield
    TaskIdentity.node_id = 0


class Link:
    """A link state, its grid and nodes; ``flower=True`` polls with Flower's own walk."""

    def __init__(self, nodes, flower):
        factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        run = Run.create_empty(run_id=1)
        run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
        self.state = factory.state()
        self.state.run_ids[1] = RunRecord(run=run)
        self.state.task_store[1] = Task(task_id=1, run_id=1)
        self.grid = InMemoryGrid(state_factory=factory)
        self.grid.set_run(run)
        self.nodes = list(_register_nodes(nodes, factory))
        self.flower = flower

    def push(self, index, tag, ttl=None):
        msg = Message(
            RecordDict({"config": ConfigRecord({"tag": tag})}), self.nodes[index], "train"
        )
        if ttl is not None:
            msg.metadata.ttl = ttl
        return next(iter(self.grid.push_messages([msg])))

    def poll(self, index, limit=1, run_id=None):
        node = self.nodes[index]
        if self.flower:
            got = FLOWER_METHODS["get_message_ins"](self.state, node, limit, run_id=run_id)
        else:
            got = self.state.get_message_ins(node, limit, run_id=run_id)
        assert all(m.metadata.delivered_at for m in got)
        return [m.content.config_records["config"]["tag"] for m in got]


def both(nodes):
    return Link(nodes, flower=True), Link(nodes, flower=False)


def test_polls_return_what_flowers_walk_returns():
    links = both(6)
    for link in links:
        for tag, index in enumerate([0, 3, 3, 5, 0, 3, 1]):  # several for some nodes, none for 2
            link.push(index, tag)
    for sweep in range(4):
        for index in range(6):
            flower, indexed = (link.poll(index) for link in links)
            assert flower == indexed, (sweep, index)
    for link in links:
        link.push(2, 99)
        link.push(2, 100)
    assert links[0].poll(2, limit=None) == links[1].poll(2, limit=None) == [99, 100]
    assert links[0].poll(2, run_id=7) == links[1].poll(2, run_id=7) == []


def test_expired_and_deleted_instructions_are_not_delivered():
    links = both(3)
    for link in links:
        link.push(0, "short", ttl=0.05)
        gone = link.push(1, "deleted")
        link.push(1, "kept")
        link.state.delete_messages({gone})
    time.sleep(0.1)
    for index in range(3):
        assert links[0].poll(index) == links[1].poll(index)
    assert links[1].poll(0) == [] and links[1].poll(1) == []


def test_a_sweep_over_a_thousand_nodes_looks_only_at_their_own_inboxes():
    link = Link(1000, flower=False)
    for index in range(1000):
        link.push(index, index)
    calls = []
    check = link.state._check_stored_messages
    link.state._check_stored_messages = lambda ids, *a: calls.append(len(ids)) or check(ids, *a)
    assert [link.poll(i) for i in range(1000)] == [[i] for i in range(1000)]
    assert [link.poll(i) for i in range(1000)] == [[]] * 1000  # delivered, awaiting replies
    assert len(calls) == 1000  # one check per delivered instruction; Flower's walk: ~500,000
