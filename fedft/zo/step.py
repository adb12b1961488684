r"""The SPSA step (MeZO, Malladi et al., 2023, arXiv 2305.17333), written once for every runtime.

.. math::

    g = \frac{L(w + \epsilon z) - L(w - \epsilon z)}{2 \epsilon}, \qquad
    w \leftarrow w - \eta\, g\, z

:func:`spsa_step` takes the perturbation as a function ``perturb(seed, coefficient)`` that adds
``coefficient * z(seed)`` to the trainable tensors in place; :func:`spsa_step_` binds it to torch
tensors (:func:`fedft.zo.rng.perturb_`), :func:`spsa_step_numpy_` to numpy arrays
(:func:`fedft.zo.rng.perturb_numpy_`, bit-identical). Every coefficient is a float32 value, so
:func:`fedft.zo.replay.replay_records_` repeats a client's steps bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedft.errors import ZoError
from fedft.wire.int8 import dequantize_grads, quantize_grads
from fedft.zo.rng import float32_scale, perturb_, perturb_numpy_

Perturb = Callable[[int, float], None]  # perturb(seed, coefficient): w += coefficient * z(seed)


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
    if grad_scale is not None:
        codes, _ = quantize_grads([grad], grad_scale)
        grad = dequantize_grads(codes, grad_scale)[0]
    perturb(seed, restore_and_step(eps32, lr, grad))
    return grad


def spsa_step_(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
    privatize: Callable[[float], float] | None = None,
) -> float:
    """:func:`spsa_step` on torch tensors (in layout order), under ``torch.no_grad``."""
    with torch.no_grad():
        perturb = functools.partial(perturb_, params)
        return spsa_step(
            perturb, loss_fn, seed, eps, lr, grad_scale=grad_scale, privatize=privatize
        )


def spsa_step_numpy_(
    arrays: Sequence[np.ndarray],
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
) -> float:
    """:func:`spsa_step` on float32 numpy arrays: from the same arrays and losses, torch's bits."""
    perturb = functools.partial(perturb_numpy_, arrays)
    return spsa_step(perturb, loss_fn, seed, eps, lr, grad_scale=grad_scale)
