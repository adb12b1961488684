r"""The per-round int8 scale of ``g`` (``zo.grad_scale_rule = "adaptive"``), fixed before the round.

A zo client quantizes each step's ``g`` at a scale ``s`` fixed before its round, so one byte
rebuilds the step exactly; a fixed ``s = clip / 127`` only fits the model it was tuned on (the
tiny model's ``|g|`` ~ 5-20; SmolLM2-135M's ~ 0.1-1.3 uses +-5 of 127 levels at ``s = 0.252``).
The adaptive rule announces ``s_r`` in round ``r``'s config from the replies the server accepted
before it:

.. math::

    s_1 = 0 \;(\text{float32 } g\text{: the calibration round}), \qquad
    s_{r+1} = \mathrm{clamp}\!\left(\frac{H \cdot \mathrm{median}_k \max_t |g_{k,t}|}{127},\;
        \frac{s_r}{G},\; G s_r\right) \wedge \frac{\text{clip}}{127}

with headroom ``H = 2`` (next round's ``|g|`` may grow), growth bound ``G = 8`` (no round moves
it by more) and the median over replies: a minority of hostile replies cannot move it beyond the
honest range, and none can beyond ``G`` x or ``clip / 127``. A round with no zo reply keeps the
scale. Each round's scale is part of the server's checkpointed state (:class:`ScaleSchedule`),
so a resumed run announces what the uninterrupted one would; the history replayed for catch-up
carries the aggregates of the dequantized ``g``, which need no scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedft.wire.int8 import INT8_LEVELS
from fedft.zo.config import ZoSection

HEADROOM = 2.0
MAX_GROWTH = 8.0
MIN_SCALE = 1e-30  # ZoSection.int8_scale's floor (a normal float32)


def _float32_at_most(value: float, bound: float) -> float:
    """``float32(value)``, rounded down when rounding to nearest would pass ``bound``."""
    out = np.float32(value)
    while float(out) > bound:
        out = np.nextafter(out, np.float32(0))
    return float(out)


def next_scale(previous: float, grads: Sequence[Sequence[float]], clip: float) -> float:
    """The scale after a round whose accepted zo replies sent ``grads`` (one list per reply).

    Parameters
    ----------
    previous : float
        The round's own scale (0 after the calibration round: no growth bound then).
    grads : Sequence[Sequence[float]]
        The dequantized ``g`` of each accepted zo reply; empty replies are ignored.
    clip : float
        ``zo.grad_clip``: the scale never exceeds ``clip / 127``.

    Returns
    -------
    float
        A float32 value in ``[1e-30, clip / 127]``; ``previous`` when no reply has a ``g``.
    """
    peaks = [float(np.max(np.abs(np.asarray(g, np.float64)))) for g in grads if len(g)]
    if not peaks:
        return previous
    target = HEADROOM * float(np.median(peaks)) / INT8_LEVELS
    if previous > 0:
        target = min(max(target, previous / MAX_GROWTH), previous * MAX_GROWTH)
    bound = clip / INT8_LEVELS
    return _float32_at_most(min(max(target, MIN_SCALE), bound), bound)


@dataclass
class ScaleSchedule:
    """Each round's announced scale, kept by the server (JSON state in its checkpoint).

    ``scales[r]`` is what round ``r`` announced; :meth:`announce` gives round ``r``'s, computed
    from the last committed round; :meth:`observe` takes a committed round's replies.
    """

    zo: ZoSection
    scales: dict[int, float] = field(default_factory=dict)
    current: float = 0.0  # the scale the next round announces (0: calibration, float32 g)

    @property
    def active(self) -> bool:
        """Whether the run announces a scale each round (the adaptive rule)."""
        return self.zo.grad_scale_rule == "adaptive"

    def announce(self, server_round: int) -> float | None:
        """Round ``server_round``'s scale (None with the fixed rule: nothing is announced)."""
        if not self.active:
            return None
        self.scales[server_round] = self.current
        return self.current

    def round_zo(self, server_round: int) -> ZoSection:
        """The settings replies of ``server_round`` are checked against."""
        return self.zo.for_round(self.scales.get(server_round) if self.active else None)

    def observe(self, server_round: int, grads: Sequence[Sequence[float]]) -> None:
        """Take round ``server_round``'s accepted replies into the next round's scale."""
        if self.active:
            previous = self.scales.get(server_round, self.current)
            self.current = next_scale(previous, grads, self.zo.grad_clip)

    def state(self) -> dict:
        """JSON-able: every announced scale and the next one (floats are exact in JSON)."""
        return {"scales": {str(r): s for r, s in self.scales.items()}, "current": self.current}

    def load_state(self, state: Mapping) -> None:
        """Restore :meth:`state`."""
        self.scales = {int(r): float(s) for r, s in state["scales"].items()}
        self.current = float(state["current"])
