r"""Ferret: first-order local training, the update sent as coordinates along shared directions.

Ferret (Shu et al., ICML 2025, "Ferret: Federated Full-Parameter Tuning at Scale for Large Language
Models", arXiv 2409.06277) sits between first-order LoRA (megabytes up per round) and zeroth-order
shared-seed steps (bytes up, little learning): a client trains first-order, then projects its
update ``Delta = start - end`` block by block onto ``n_b`` directions regenerated from a seed pool,
and sends the ``sum_b n_b`` coordinates; the server sums them per (block, seed), and every party
applies the same reconstruction, exactly as the zo path replays its history.

=================  ====================================================================
module             what
=================  ====================================================================
``blocks``         blocks over the trainable tensors (zo order), ``n_b`` per block (exact
                   integer norms), each block's window of seed indices
``projection``     the Rademacher signs of many seeds at once (numpy), the projection
                   ``gamma = <Delta_b, v>`` and the combination ``sum c v``, exact on
                   fixed-point grids so torch and numpy agree bit for bit
``aggregate``      a client's coordinates, the server's scaled sums per slot ``b K + s``,
                   applying a round, replaying a history, rebuilding one client
=================  ====================================================================

The directions are :mod:`fedft.zo.rng`'s Rademacher vectors (``E[v v^T] = I``), so
``(1 / n_b) sum_j gamma_j v_j`` is an unbiased estimate of ``Delta_b``
(:mod:`fedft.ferret.projection` states its variance). The wire formats are
``fedft.v1.FerretReply`` / ``fedft.v1.FerretHistory`` (:mod:`fedft.wire.ferret`,
``protos/fedft/v1/ferret.proto``).
"""
