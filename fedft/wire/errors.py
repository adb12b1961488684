"""The one error of fedft's wire codecs."""

from __future__ import annotations

from fedft.errors import ReplyError


class WireError(ReplyError):
    """A message cannot be encoded or decoded.

    A :class:`~fedft.errors.ReplyError`, so a server drops the reply that caused it.

    Parameters
    ----------
    kind : str
        The message, in words: ``"update"``, ``"zo reply"``, ``"zo history"``.
    field : str
        The offending message field (``version``, ``grads``, ``shape``, ...).
    message : str
        What is wrong with it.
    tensor : str, optional
        The tensor the field belongs to, if any (``fedft.v1.LoraUpdate``).
    """

    def __init__(self, kind: str, field: str, message: str, tensor: str | None = None) -> None:
        self.kind = kind
        self.field = field
        self.tensor = tensor
        where = f"{kind} `{field}`" if tensor is None else f"{kind} tensor {tensor!r} `{field}`"
        super().__init__(f"{where}: {message}")
