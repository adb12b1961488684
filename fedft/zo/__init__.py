r"""Zeroth-order fine-tuning with shared seeds: one home for the zo path's maths.

MeZO (Malladi et al., 2023, "Fine-Tuning Language Models with Just Forward Passes", arXiv
2305.17333) estimates the directional derivative along a random ``z`` with two forward passes (SPSA,
Spall, 1992) and updates in place, at inference memory:

.. math::

    g = \frac{L(w + \epsilon z) - L(w - \epsilon z)}{2 \epsilon}, \qquad
    w \leftarrow w - \eta\, g\, z

FedKSeed (Qin et al., ICML 2024, "Federated Full-Parameter Tuning of Billion-Sized Language Models
with Communication Cost under 18 Kilobytes", arXiv 2312.06353) draws ``z`` from a pool of ``K``
seeds shared by the server, so a client's update is its list of records ``(seed index, g)``; the
server sums ``g`` per seed and every party rebuilds the model by replaying that history. "Just One
Byte (per gradient)" (Zelikman et al., 2023, arXiv 2308.10865) sends each ``g`` in one byte.

Every float operation is pinned (float32, fixed order, :func:`fedft.zo.rng.perturb_`), so a replay
gives the same bits as the training it mirrors, on any machine (see :mod:`fedft.zo.replay`).

=================  ====================================================================
module             what
=================  ====================================================================
``rng``            the portable perturbation generator ``z(seed)`` (torch and numpy)
``seeds``          seed pools, the derived per-step seed indices, :class:`ZoRecord`
``step``           the SPSA step, written once over a perturb function (torch, numpy)
``replay``         aggregation per seed, replay of records and histories, the server's
                   rebuild of a zo client in a mixed round, replay-or-checkpoint catch-up
``trainable``      what a zo run perturbs: the LoRA factors, or chosen base modules
``config``         the ``[zo]`` section (:class:`ZoSection`), checked at the edge
``scale``          the per-round int8 scale of ``g`` the server announces (adaptive rule)
=================  ====================================================================

The codecs of the zo messages (``fedft.v1.ZoReply``, ``fedft.v1.ZoHistory``) are in
:mod:`fedft.wire`; the tensor order every party perturbs in is :func:`fedft.wire.order.zo_order`.
"""
