"""The per-round aggregate history that shared-seed strategies (zo, Ferret) keep and replay.

Each round's aggregate is checked first (``pending``), appended only in :meth:`commit` once the
factors passed every screen, so a failed round leaves the history as it was; ``synced`` holds,
per node, the last round it has the global state of, so it is sent exactly what it misses.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from server.replies import ClientUpdate


class _Round(Protocol):
    @property
    def round(self) -> int: ...


EntryT = TypeVar("EntryT", bound=_Round)


class RoundHistory(Generic[EntryT]):
    """Mixed in before FedIT: committed aggregates, the checked one, each node's synced round."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # cooperative: the strategy class (FedIT) comes next
        self.history: list[EntryT] = []
        self.synced: dict[int, int] = {}
        self.pending: EntryT | None = None

    def commit(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """Append the round's aggregate to the history; the nodes synced to the round's start."""
        if self.pending is None or self.pending.round != server_round:
            raise RuntimeError(f"round {server_round}: no aggregate to commit")
        self.history.append(self.pending)
        self.pending = None
        for update in updates:  # they started this round from the round's global state
            self.synced[update.node_id] = server_round - 1
