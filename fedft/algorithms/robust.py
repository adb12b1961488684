"""Byzantine-robust combinations of client factor states: median, trimmed mean, (Multi-)Krum.

Each takes the clients' states (same names and shapes, validated) and works per tensor name, like
Flower's ``FedMedian``, ``FedTrimmedAvg``, ``Krum`` and ``MultiKrum`` (whose maths they follow; the
tests check them against Flower's implementations and against closed forms):

- coordinate-wise median (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates", arXiv 1803.01498): ``X[i] = median_k X_k[i]``;
- coordinate-wise trimmed mean (same paper): drop the ``floor(beta n)`` smallest and largest
  values of every coordinate, average the rest;
- Krum / Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS): score ``s_k = sum of ||X_k - X_j||^2`` over the ``n - f - 2``
  nearest other states ``j``; keep the ``m`` lowest scores (``m = 1``: Krum).

Median and trimmed mean ignore client weights, as Flower's do: a weight is the one thing a
hostile client states about itself. Krum only selects; the caller aggregates what it keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

_F64 = torch.float64


def _stack(states: Sequence[Mapping[str, torch.Tensor]], name: str) -> torch.Tensor:
    return torch.stack([state[name].detach().to(_F64) for state in states])  # (n, *shape)


def coordinate_median(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``X[i] = median_k X_k[i]`` for every tensor; an even count averages the two middle values.

    Computed in float64 and cast back to the first state's dtype (numpy's ``median`` convention,
    not torch's lower median).

    Examples
    --------
    >>> coordinate_median([{"w": torch.tensor([1.0, 9.0])}, {"w": torch.tensor([3.0, 1.0])},
    ...                    {"w": torch.tensor([2.0, 5.0])}])["w"]
    tensor([2., 5.])
    """
    if not states:
        raise ValueError("no client states: nothing to aggregate")
    n, out = len(states), {}
    for name, first in states[0].items():
        ordered = torch.sort(_stack(states, name), dim=0).values  # (n, *shape)
        middle = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        out[name] = middle.to(first.dtype)
    return out


def trimmed_mean(
    states: Sequence[Mapping[str, torch.Tensor]], fraction: float
) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean after dropping ``c = floor(fraction n)`` values at each end.

    ``X[i] = 1 / (n - 2c) sum_{k=c}^{n-c-1} X_(k)[i]`` with ``X_(k)[i]`` the sorted values.

    Parameters
    ----------
    states : Sequence[Mapping[str, torch.Tensor]]
        The clients' states.
    fraction : float
        ``beta`` in ``[0, 0.5)``: the share cut at each end (Flower's ``beta``).

    Examples
    --------
    >>> trimmed_mean([{"w": torch.tensor([v])} for v in (1.0, 2.0, 3.0, 100.0)], 0.25)["w"]
    tensor([2.5000])
    """
    if not states:
        raise ValueError("no client states: nothing to aggregate")
    if not 0 <= fraction < 0.5:
        raise ValueError(f"`fraction` must be in [0, 0.5), got {fraction}")
    cut = int(fraction * len(states))
    out = {}
    for name, first in states[0].items():
        ordered = torch.sort(_stack(states, name), dim=0).values
        out[name] = ordered[cut : len(states) - cut].mean(dim=0).to(first.dtype)
    return out


def krum_scores(states: Sequence[Mapping[str, torch.Tensor]], byzantine: int) -> list[float]:
    """``s_k = sum_{j in N_k} ||X_k - X_j||^2``, ``N_k`` the ``max(1, n - f - 2)`` nearest others.

    Distances are over all tensors, in float64.
    """
    n = len(states)
    if n == 0:
        raise ValueError("no client states: nothing to score")
    flat = torch.stack(
        [torch.cat([s[name].detach().to(_F64).reshape(-1) for name in states[0]]) for s in states]
    )  # (n, numel)
    dist = torch.cdist(flat, flat).square()  # (n, n) squared Euclidean distances
    nearest = max(1, n - byzantine - 2)
    scores = []
    for k in range(n):
        others = torch.cat([dist[k, :k], dist[k, k + 1 :]])
        scores.append(float(torch.sort(others).values[:nearest].sum()))
    return scores


def krum_select(
    states: Sequence[Mapping[str, torch.Tensor]], byzantine: int, keep: int
) -> list[int]:
    """Indices of the ``keep`` states with the lowest Krum scores (ties: lower index), increasing.

    ``keep = 1`` is Krum; ``keep = n - f`` is Multi-Krum as Flower's ``MultiKrum`` uses it.

    Examples
    --------
    >>> states = [{"w": torch.tensor([v])} for v in (0.0, 0.3, 0.4, 0.5, 50.0)]
    >>> krum_select(states, byzantine=1, keep=1)  # scores .25, .05, .02, .05, 2.4e3
    [2]
    >>> krum_select(states, byzantine=1, keep=4)
    [0, 1, 2, 3]
    """
    if not 1 <= keep <= len(states):
        raise ValueError(f"`keep` must be in [1, {len(states)}], got {keep}")
    scores = krum_scores(states, byzantine)
    order = sorted(range(len(states)), key=lambda k: (scores[k], k))
    return sorted(order[:keep])
