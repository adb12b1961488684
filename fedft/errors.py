"""Typed errors shared across fedft.

Every user-facing error is a :class:`FedftError`; the command line prints its message on one line
and exits with code 2, without a traceback.
"""


class FedftError(Exception):
    """Base class of the errors a user can cause (bad config, data, model files)."""


class ConfigError(FedftError, ValueError):
    """A scenario key is unknown, has the wrong type or an impossible value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"`{key}`: {message}")


class ReplyError(FedftError, ValueError):
    """A client's reply cannot be aggregated (names, shapes, dtypes, non-finite values)."""


class ZoError(FedftError, ValueError):
    """A seed pool, record, gradient, weight or scale of the zeroth-order path is invalid."""


class SimulationBackendError(FedftError):
    """Flower's simulation runtime died (Ray did not start or crashed): the run cannot go on."""


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C): the run folder keeps its last completed round."""
