"""fedft's wire formats: every message a client and the server exchange, encoded and checked here.

=================  ====================================================================
module             what
=================  ====================================================================
``errors``         :class:`WireError`, the one error of every decoder (message, field, tensor)
``int8``           the symmetric int8 quantizer both formats use (per row, or one scale)
``order``          the zo tensor order: the layout every party perturbs (names sorted)
``update``         ``fedft.v1.LoraUpdate``: a first-order client's factors (fp32 or int8 rows)
``zo_reply``       ``fedft.v1.ZoReply``: a zo client's ``(seed index, g)`` steps
``zo_history``     ``fedft.v1.ZoHistory``: the per-round aggregates a zo client replays
=================  ====================================================================

The byte layouts are specified in ``protos/fedft/v1/*.proto`` (the contract); the generated code is
``fedft/v1/*_pb2.py``. Decoders trust nothing: every field is checked against the run's config
before anything is allocated, and a bad message raises :class:`~fedft.wire.errors.WireError`.
"""
