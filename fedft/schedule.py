"""The learning rate of each round: constant, or FlowerTune's cosine annealing across rounds.

Every first-order client (``torch``, ``ort``) computes its round's rate from the scenario and the
server round it is sent, so nothing extra travels. The zeroth-order step size ``zo.lr`` is not
scheduled: the server and every catching-up client replay past rounds' records with it, so a
schedule there would have to be replayed too (and the history and wire format would have to know
it); it stays constant.
"""

from __future__ import annotations

import math

from fedft.config import TrainConfig

SCHEDULES = ("constant", "cosine")


def cosine_annealing(server_round: int, num_rounds: int, lr_max: float, lr_min: float) -> float:
    r"""FlowerTune's cosine annealing of the learning rate across rounds.

    .. math::

        \eta_t = \eta_{min} + \tfrac12 (\eta_{max} - \eta_{min})
                  \left(1 + \cos \frac{\pi t}{T}\right)

    with ``t = server_round`` and ``T = num_rounds``. This is ``cosine_annealing`` of Flower's
    FlowerTune LLM example (``examples/flowertune-llm/flowertune_llm/models.py``), called there with
    Flower's ``server-round``, which starts at 1: the first round trains just below ``lr_max`` and
    the last one at exactly ``lr_min`` (so a last round with ``lr_min = 0`` changes nothing).

    Parameters
    ----------
    server_round : int
        The round, from 1 to ``num_rounds`` (0 gives ``lr_max``).
    num_rounds : int
        ``federation.num_rounds`` (> 0).
    lr_max, lr_min : float
        ``train.lr`` and ``train.lr_min``.

    Returns
    -------
    float

    Examples
    --------
    >>> [round(cosine_annealing(t, 4, 1.0, 0.0), 4) for t in range(5)]
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * server_round / num_rounds))


def round_lr(train: TrainConfig, server_round: int, num_rounds: int) -> float:
    """The learning rate first-order clients train with in ``server_round``.

    ``train.lr`` for ``train.lr_schedule = "constant"`` (every round, as before schedules
    existed); :func:`cosine_annealing` from ``train.lr`` to ``train.lr_min`` for ``"cosine"``.
    """
    if train.lr_schedule == "cosine":
        return cosine_annealing(server_round, num_rounds, train.lr, train.lr_min)
    return train.lr
