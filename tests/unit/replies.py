"""Test scaffolding: client replies built by hand and the real strategies that take them.

Not a test module: ``test_hostile_replies.py``, ``test_robust.py``, ``test_bad_updates.py`` and
``test_fedit_strategy.py`` import it.
"""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedft.algorithms.lora_fair import LoraFairConfig
from fedft.config import RobustSection, ZoSection
from fedft.flower_records import UPDATE_KEY, ZO_REPLY_KEY, factors_to_record, record_to_factors
from fedft.v1 import zo_pb2
from fedft.wire.update import encode_update
from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id
from server.strategies.fedit import FedIT
from server.strategies.lora_fair import LoraFair
from server.strategies.zo import ZoStrategy

MODULES = ("l0.q", "l1.v")
NAMES = [f"base_model.model.{m}.lora_{f}.weight" for m in MODULES for f in "AB"]
ROUND, RUN_SEED, NUM_CLIENTS = 1, 5, 8
ZO = ZoSection(pool_size=64, local_steps=4)
STRATEGIES = ("fedit", "lora_fair", "zo")


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"A": (4, 16), "B": (16, 4)}
    return {n: torch.randn(shapes[n[-8]], generator=g) for n in NAMES}


GLOBAL = _state(0)


def moved(seed, size=0.1, state=GLOBAL):
    """``state`` plus Gaussian noise of standard deviation ``size`` (a client's round)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return {k: v + size * torch.randn(v.shape, generator=g) for k, v in state.items()}


class Grid:
    """What a strategy asks of Flower's Grid when it samples: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def reply(node, content, examples=10.0, metrics=None):
    """Node ``node``'s reply to a TRAIN instruction: ``content`` and ``metrics`` (None: no count).

    Flower's task identity is set once for the test session (``tests/conftest.py``).
    """
    instruction = Message(RecordDict({"config": ConfigRecord()}), node, MessageType.TRAIN)
    values = {} if examples is None else {"num-examples": examples}
    values |= metrics or {}
    content = RecordDict({**content, "metrics": MetricRecord(values)})
    return Message(content, reply_to=instruction)


def array_reply(node, factors, examples=10.0, **metrics):
    record = ArrayRecord({k: v.contiguous() for k, v in factors.items()})
    return reply(node, {"arrays": record}, examples, metrics)


def update_reply(node, payload, examples=10.0):
    return reply(node, {UPDATE_KEY: ConfigRecord({UPDATE_KEY: payload})}, examples)


def zo_payload(client, steps=ZO.local_steps, zo=ZO, grads=None, **overrides):
    """A valid zo reply of ``client`` (derived seeds, the run's fixed scale), fields overridable."""
    pid = seed_pool_id(RUN_SEED, ROUND, zo.pool_size)
    indices = derived_seed_indices(pid, ROUND, client, steps, zo.pool_size)
    grads = grads or [3.0 - t for t in range(steps)]
    records = [ZoRecord(i, g) for i, g in zip(indices, grads, strict=True)]
    args = {"pool_id": pid, "round": ROUND, "client": client, "pool_size": zo.pool_size}
    args |= {"grad_encoding": zo.grad_encoding, "grad_scale": zo.grad_scale}
    return encode_zo_reply(records, **(args | overrides))


def zo_edit(payload, **fields):
    """A serialized ZoReply with some header fields replaced (a hostile client's edit)."""
    message = zo_pb2.ZoReply()
    message.ParseFromString(payload)
    for name, value in fields.items():
        setattr(message, name, value)
    return message.SerializeToString()


def zo_reply(node, payload, examples=10.0, **metrics):
    return reply(node, {ZO_REPLY_KEY: ConfigRecord({"records": payload})}, examples, metrics)


def good_replies(kind):
    """Honest replies: every first-order encoding plus a zo client (mixed), or zo clients only."""
    if kind == "zo":
        return [zo_reply(n, zo_payload(client=n - 1), examples=10.0 * n) for n in (1, 2, 3)]
    return [
        array_reply(1, moved(1), examples=30),
        update_reply(2, encode_update(moved(2), "fp32"), examples=20),
        update_reply(3, encode_update(moved(3), "int8"), examples=10),
        zo_reply(4, zo_payload(client=3), examples=5),
    ]


def make_strategy(kind, zo=ZO, min_replies=1, **robust):
    common = {
        "zo": zo,
        "run_seed": RUN_SEED,
        "num_clients": NUM_CLIENTS,
        "robust": RobustSection(**robust),
        "min_available_nodes": 1,
        "min_train_nodes": min_replies,
    }
    if kind == "lora_fair":
        return LoraFair(solver=LoraFairConfig(steps=20), **common)
    if kind == "zo":
        return ZoStrategy(**common)
    return FedIT(**common)


def run_round(strategy, replies, nodes=range(1, 200)):
    """One real round: configure (sampling ``nodes``), aggregate ``replies``; factors or None."""
    strategy.configure_train(ROUND, factors_to_record(GLOBAL), ConfigRecord(), Grid(nodes))
    arrays, _ = strategy.aggregate_train(ROUND, replies)
    return None if arrays is None else record_to_factors(arrays)
