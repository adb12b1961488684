r"""The SPSA step (MeZO, Malladi et al., 2023, arXiv 2305.17333), written once for every runtime.

.. math::

    g = \frac{L(w + \epsilon z) - L(w - \epsilon z)}{2 \epsilon}, \qquad
    w \leftarrow w - \eta\, g\, z

:func:`spsa_step` takes the perturbation as a function ``perturb(seed, coefficient)`` that adds
``coefficient * z(seed)`` to the trainable tensors in place; :func:`spsa_step_` binds it to torch
tensors (:func:`fedft.zo.rng.perturb_`), :func:`spsa_step_numpy_` to numpy arrays
(:func:`fedft.zo.rng.perturb_numpy_`, bit-identical; importing this module needs no torch).
Every coefficient is a float32 value, so
:func:`fedft.zo.replay.replay_records_` repeats a client's steps bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedft.errors import ZoError
from fedft.wire.int8 import INT8_LEVELS, dequantize_grads, quantize_grads
from fedft.zo.rng import float32_scale, perturb_, perturb_numpy_
from fedft.zo.seeds import unit_draw

if TYPE_CHECKING:  # the torch bindings import torch when called: numpy devices need none
    import torch

_ROUNDING_DOMAIN = 3  # separates the stochastic rounding draws from pools and step indices
Perturb = Callable[[int, float], None]  # perturb(seed, coefficient): w += coefficient * z(seed)


def quantized_grad(grad: float, grad_scale: float | None, seed: int, rounding: str) -> float:
    r"""``g`` as the int8 code the client sends at ``grad_scale`` (unchanged without a scale).

    ``rounding = "nearest"``: ``c = rint(g / s)``. ``"stochastic"`` (unbiased, as QuZO rounds,
    arXiv 2502.12346): ``c = floor(g / s + u)``, ``E[c s] = g`` for unclipped ``g``, with
    ``u = (absorb(absorb(seed, 3), bits32(g)) >> 11) / 2^53`` in ``[0, 1)`` (splitmix64's
    finalizer over the step's seed and ``g``'s float32 bits): integer arithmetic, so every
    runtime draws the same ``u``; the server receives the code and never needs it.
    """
    if grad_scale is None:
        return grad
    if rounding == "stochastic":
        scale = float(np.float32(grad_scale))
        bits = int(np.asarray(grad, np.float32).view(np.uint32))
        u = unit_draw(seed, _ROUNDING_DOMAIN, bits)
        code = min(max(math.floor(grad / scale + u), -INT8_LEVELS), INT8_LEVELS)
        return dequantize_grads(np.array([code], np.int8), scale)[0]
    codes, _ = quantize_grads([grad], grad_scale)
    return dequantize_grads(codes, grad_scale)[0]


def restore_and_step(eps32: float, lr: float, grad: float) -> float:
    """``float32(eps - float32(lr) * float32(g))``: undo ``-eps z`` and take the step, one pass."""
    with np.errstate(over="ignore"):
        return float32_scale(float(np.float32(eps32) - np.float32(lr) * np.float32(grad)))


def check_eps(eps: float) -> float:
    """Return ``eps`` rounded to float32, raising :class:`ZoError` unless it is > 0."""
    eps32 = float32_scale(eps)
    if not eps32 > 0:
        raise ZoError(f"`eps` must be > 0, got {eps!r}")
    return eps32


def spsa_step(
    perturb: Perturb,
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> float:
    r"""Take one SPSA step in place (MeZO), at inference memory; return the ``g`` it applied.

    Passes over ``w`` (each ``perturb``, float32 coefficients):
    ``w += eps z``; ``L+``; ``w -= 2 eps z``; ``L-``; ``g = float32((L+ - L-) / (2 eps))``;
    ``w += (eps - lr g) z`` (restore and step fused). :func:`fedft.zo.replay.replay_records_`
    repeats these passes bit for bit. With ``grad_scale``, ``g`` is quantized to int8 at that scale
    *before* it is applied, so one byte per step rebuilds the client exactly.

    Parameters
    ----------
    perturb : Callable[[int, float], None]
        ``perturb(seed, c)`` adds ``c * z(seed)`` to the trainable tensors, in layout order.
    loss_fn : Callable[[], float]
        Evaluates the loss at the current tensors (a float or a 0-d tensor).
    seed : int
        The step's seed (``pool[seed_index]``).
    eps, lr : float
        Perturbation size and learning rate.
    grad_scale : float, optional
        Fixed int8 scale (e.g. ``clip / 127``); ``g`` is clipped to ``127 * grad_scale``.
    rounding : {"nearest", "stochastic"}
        How ``g`` rounds to its int8 code (:func:`quantized_grad`).
    privatize : Callable[[float], float], optional
        Applied to ``g`` before it is quantized and applied (``[privacy]``: clip, noise;
        :func:`clients.privacy.zo_grad`).

    Returns
    -------
    float
        The applied projected gradient ``g`` (a float32 value).

    Raises
    ------
    ZoError
        If ``eps`` is not > 0 or ``g`` is not finite (the tensors are put back first).
    """
    eps32 = check_eps(eps)
    perturb(seed, eps32)
    loss_plus = float(loss_fn())
    perturb(seed, -2 * eps32)
    loss_minus = float(loss_fn())
    with np.errstate(over="ignore"):
        grad = float(np.float32((loss_plus - loss_minus) / (2 * eps32)))
    if not math.isfinite(grad):
        perturb(seed, eps32)  # back to w (up to rounding) before reporting
        raise ZoError(f"seed {seed}: L+ = {loss_plus}, L- = {loss_minus} give g = {grad}")
    if privatize is not None:
        grad = privatize(grad)
    grad = quantized_grad(grad, grad_scale, seed, rounding)
    perturb(seed, restore_and_step(eps32, lr, grad))
    return grad


def update_coefficient(lr: float, grad: float, perturbations: int) -> float:
    """``float32(float32(lr) * float32(g) / n)``: a direction's step within an n-SPSA step."""
    with np.errstate(over="ignore"):
        step = np.float32(lr) * np.float32(grad) / np.float32(perturbations)
    return float32_scale(float(step))


def spsa_multi_step(
    perturb: Perturb,
    loss_fn: Callable[[], float],
    seeds: Sequence[int],
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> list[float]:
    r"""One step along ``n = len(seeds)`` directions, their estimates averaged (n-SPSA, MeZO).

    .. math:: w \leftarrow w - \frac{\eta}{n} \sum_{j=1}^{n} g_j z_j, \qquad
        g_j = \frac{L(w + \epsilon z_j) - L(w - \epsilon z_j)}{2 \epsilon}

    ``2 n`` forward passes (all on the step's batch, at the same ``w``) and ``n`` records. With
    one seed it is :func:`spsa_step` (three passes, bit for bit); with more, each direction takes
    ``+eps z``, ``L+``, ``-2 eps z``, ``L-``, ``+eps z`` (restore), then every direction its
    ``-update_coefficient(lr, g_j, n) z_j``, in seed order: :func:`fedft.zo.replay.replay_records_`
    repeats exactly these passes.

    Returns
    -------
    list[float]
        The applied ``g_j`` (float32 values; int8-quantized first with ``grad_scale``).
    """
    if len(seeds) == 1:
        return [
            spsa_step(
                perturb,
                loss_fn,
                seeds[0],
                eps,
                lr,
                grad_scale=grad_scale,
                rounding=rounding,
                privatize=privatize,
            )
        ]
    eps32 = check_eps(eps)
    grads = []
    for seed in seeds:
        perturb(seed, eps32)
        loss_plus = float(loss_fn())
        perturb(seed, -2 * eps32)
        loss_minus = float(loss_fn())
        perturb(seed, eps32)
        with np.errstate(over="ignore"):
            grad = float(np.float32((loss_plus - loss_minus) / (2 * eps32)))
        if not math.isfinite(grad):
            raise ZoError(f"seed {seed}: L+ = {loss_plus}, L- = {loss_minus} give g = {grad}")
        if privatize is not None:
            grad = privatize(grad)
        grads.append(quantized_grad(grad, grad_scale, seed, rounding))
    for seed, grad in zip(seeds, grads, strict=True):
        perturb(seed, -update_coefficient(lr, grad, len(seeds)))
    return grads


def spsa_step_(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> float:
    """:func:`spsa_step` on torch tensors (in layout order), under ``torch.no_grad``."""
    import torch

    with torch.no_grad():
        perturb = functools.partial(perturb_, params)
        return spsa_step(
            perturb,
            loss_fn,
            seed,
            eps,
            lr,
            grad_scale=grad_scale,
            rounding=rounding,
            privatize=privatize,
        )


def spsa_multi_step_(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], float],
    seeds: Sequence[int],
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> list[float]:
    """:func:`spsa_multi_step` on torch tensors (in layout order), under ``torch.no_grad``."""
    import torch

    with torch.no_grad():
        perturb = functools.partial(perturb_, params)
        return spsa_multi_step(
            perturb,
            loss_fn,
            seeds,
            eps,
            lr,
            grad_scale=grad_scale,
            rounding=rounding,
            privatize=privatize,
        )


def spsa_multi_step_numpy_(
    arrays: Sequence[np.ndarray],
    loss_fn: Callable[[], float],
    seeds: Sequence[int],
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> list[float]:
    """:func:`spsa_multi_step` on float32 numpy arrays: from the same losses, torch's bits."""
    perturb = functools.partial(perturb_numpy_, arrays)
    return spsa_multi_step(
        perturb,
        loss_fn,
        seeds,
        eps,
        lr,
        grad_scale=grad_scale,
        rounding=rounding,
        privatize=privatize,
    )


def spsa_step_numpy_(
    arrays: Sequence[np.ndarray],
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> float:
    """:func:`spsa_step` on float32 numpy arrays: from the same arrays and losses, torch's bits."""
    perturb = functools.partial(perturb_numpy_, arrays)
    return spsa_step(
        perturb,
        loss_fn,
        seed,
        eps,
        lr,
        grad_scale=grad_scale,
        rounding=rounding,
        privatize=privatize,
    )
