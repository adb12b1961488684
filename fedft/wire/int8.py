r"""Symmetric int8 quantization, the one quantizer of both wire formats.

A vector ``x`` (a tensor's row in ``fedft.v1.LoraUpdate``, a zo reply's ``g`` values) travels as
int8 codes and one float32 scale:

.. math::

    s = \mathrm{f32}\!\left(\frac{\max_i |x_i|}{127}\right), \qquad
    c_i = \mathrm{clip}\!\left(\mathrm{rint}\!\left(\frac{x_i}{s}\right), -127, 127\right), \qquad
    \hat x_i = \mathrm{f32}(c_i \cdot s)

in float64 with ties to even; ``s < 2**-126`` (no normal float32) sends the row as zeros with
``s = 0``; the code -128 is never used. Unclipped values come back within ``s / 2``. A zo client
may fix ``s`` before its round (``zo.grad_scale``), clipping larger ``|g|``: it quantizes each
step's ``g`` with it before applying the step, so one byte a step rebuilds it exactly.

Examples
--------
>>> import numpy as np
>>> codes, scales = quantize_matrix(np.array([[1.27, -0.5], [0.0, 0.0]]))
>>> codes.tolist(), scales.tolist()
([[127, -50], [0, 0]], [0.009999999776482582, 0.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedft.errors import ZoError
from fedft.wire.errors import WireError

INT8_LEVELS = 127  # codes in [-127, 127]: symmetric, -128 unused
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126: smaller peaks are sent as zeros


def peak_scales(peaks: np.ndarray) -> np.ndarray:
    """``float32(peak / 127)`` per row, 0 where that is below the smallest normal float32."""
    scales = (np.asarray(peaks, np.float64) / INT8_LEVELS).astype(np.float32)
    scales[scales < FLOAT32_TINY] = 0.0
    return scales


def codes_at(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 codes of ``x`` (rows, cols) at one float32 scale per row (zero codes where 0)."""
    scales = np.asarray(scales, np.float32)
    safe = np.where(scales > 0, scales.astype(np.float64), 1.0)[:, None]  # (rows, 1)
    codes = np.clip(np.rint(x / safe), -INT8_LEVELS, INT8_LEVELS) * (scales > 0)[:, None]
    return codes.astype(np.int8)


def dequantize_matrix(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``float32(code * scale)`` for every code (rows, cols) and its row's scale (rows,)."""
    return np.asarray(codes).astype(np.float32) * np.asarray(scales, np.float32)[:, None]


def quantize_matrix(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a (rows, cols) matrix with one scale per row (``fedft.v1.LoraUpdate`` int8).

    Raises
    ------
    WireError
        If a value is NaN or infinite.
    """
    x = np.asarray(x, np.float64)  # (rows, cols)
    if x.size and not np.all(np.isfinite(x)):
        raise WireError("update", "data", "cannot quantize non-finite values (NaN or Inf)")
    scales = peak_scales(np.max(np.abs(x), axis=1, initial=0.0))  # (rows,)
    return codes_at(x, scales), scales


def quantize_grads(grads: Sequence[float], scale: float | None = None) -> tuple[np.ndarray, float]:
    """Quantize a zo reply's ``g`` values to int8 codes with one float32 scale.

    ``scale = float32(max|g| / 127)`` unless given (then rounded to float32); a given scale clips
    larger ``|g|``: this is how a client quantizes each step before applying it.

    Returns
    -------
    tuple[np.ndarray, float]
        int8 codes and the float32 scale; ``|g - dequantize| <= scale / 2`` for unclipped ``g``.

    Raises
    ------
    ZoError
        If a ``g`` is not finite (names its index) or a given scale is not a normal float32.
    """
    values = np.asarray(grads, dtype=np.float64).reshape(1, -1)  # (1, steps)
    bad = np.flatnonzero(~np.isfinite(values[0]))
    if bad.size:
        raise ZoError(f"grad {int(bad[0])} is {values[0, bad[0]]}: cannot quantize")
    if scale is None:
        scales = peak_scales(np.max(np.abs(values), axis=1, initial=0.0))
    else:
        with np.errstate(over="ignore"):
            scale = float(np.float32(scale))
        if not (math.isfinite(scale) and scale >= FLOAT32_TINY):
            raise ZoError(f"`grad_scale` must be a finite float32 >= 1.2e-38, got {scale!r}")
        scales = np.array([scale], np.float32)
    return codes_at(values, scales)[0], float(scales[0])


def dequantize_grads(codes: np.ndarray, scale: float) -> list[float]:
    """Return ``float32(code * scale)`` for each code (exact inverse up to rounding)."""
    matrix = np.asarray(codes).reshape(1, -1)
    return dequantize_matrix(matrix, np.array([scale], np.float32))[0].tolist()
