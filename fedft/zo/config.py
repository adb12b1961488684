"""The ``[zo]`` scenario section: how zeroth-order clients step and what one step sends.

Guidance for ``lr`` and ``eps`` by model size, measured: ``docs/zo.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from fedft.schema import check

MAX_PERTURBATIONS = 64  # a step's forward passes are 2 x perturbations: bounded at the edge
MAX_SPARSE_FRACTION = 0.1  # beyond that a mask costs more bytes than the weights it masks
# The linear maps of a Llama-style block: what a sparse mask chooses from by default.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ZoSection:
    """Zeroth-order steps with shared seeds (MeZO / FedKSeed), for ``zo`` clients and strategy.

    Each local step perturbs the trainable tensors along ``perturbations`` directions ``z_j``
    from seeds of the round's pool of ``pool_size`` seeds (``2 x perturbations`` forward passes)
    and sends one byte per direction: ``g_j`` quantized to int8 (``grad_encoding = "int8"``), or
    4 bytes (``"fp32"``). The int8 scale is fixed before the round: ``int8_scale`` (``0``:
    ``grad_clip / 127``) with ``grad_scale_rule = "fixed"``; with ``"adaptive"`` the server
    announces each round's scale in the round's config, from the ``|g|`` of the rounds before
    (:mod:`fedft.zo.scale`; round 1 sends exact float32 ``g`` and calibrates it). ``|g|`` beyond
    ``grad_clip`` is clipped (int8) or refused (fp32) either way.
    """

    pool_size: int = 1024
    local_steps: int = 50
    eps: float = 1e-3
    # Measured on the built-in tiny model: |g| ~ 5-20 at eps 1e-3, so a clip of 32 keeps one int8
    # step at 0.25; lr 1e-3 lowers the loss steadily, 3e-3 diverges. Other models: the rule
    # lr = 0.7 / (rms(g) sqrt(trainable values)) of docs/zo.md (benchmarks/zo_curvature.py).
    lr: float = 1e-3
    grad_encoding: Literal["int8", "fp32"] = "int8"
    grad_clip: float = 32.0
    # Empty: perturb the LoRA factors. Else all weights of the modules with these names (e.g.
    # ["lm_head"]); the run then outputs those weights (zo_weights.safetensors), not an adapter.
    trainable_modules: tuple[str, ...] = ()
    # The fixed int8 step of g (0: grad_clip / 127); a 135M model's |g| ~ 0.1-1.3 wants ~0.01.
    int8_scale: float = 0.0
    grad_scale_rule: Literal["fixed", "adaptive"] = "fixed"
    # How g rounds to its int8 code: to nearest, or stochastically (unbiased, as QuZO).
    grad_rounding: Literal["nearest", "stochastic"] = "nearest"
    # Directions per step, their g averaged: 2 x perturbations forward passes and
    # perturbations bytes a step (MeZO's n-SPSA).
    perturbations: int = 1
    # Sensitive sparse zo (arXiv 2406.02913, fedft.zo.sparse): > 0 perturbs only this fraction of
    # the weights of sparse_modules (0.001 in the paper), a mask the server builds once and sends
    # to every node (4 bytes an index); the rest of the model, LoRA included, stays frozen.
    sparse_fraction: float = 0.0
    # "sensitive": top squared gradients on sparse_calibration_batches batches of a public text
    # (Rotten Tomatoes reviews, disjoint from the task); "random": drawn from the run's seed.
    sparse_mask: Literal["sensitive", "random"] = "sensitive"
    sparse_modules: tuple[str, ...] = BLOCK_LINEARS
    sparse_calibration_batches: int = 8

    def __post_init__(self) -> None:
        check(0 < self.pool_size <= 2**32, "zo.pool_size", "must be in [1, 2**32]")
        check(self.local_steps > 0, "zo.local_steps", "must be > 0")
        check(self.eps > 0, "zo.eps", f"must be > 0, got {self.eps}")
        check(self.lr > 0, "zo.lr", f"must be > 0, got {self.lr}")
        check(self.grad_clip > 0, "zo.grad_clip", f"must be > 0, got {self.grad_clip}")
        check(
            math.isfinite(self.grad_clip), "zo.grad_clip", f"must be finite, got {self.grad_clip}"
        )
        check(
            math.isfinite(self.int8_scale) and 0 <= self.int8_scale <= self.grad_clip / 127,
            "zo.int8_scale",
            f"must be in [0, zo.grad_clip / 127 = {self.grad_clip / 127:.6g}] (0: that bound), "
            f"got {self.int8_scale}",
        )
        check(
            self.int8_scale == 0 or self.int8_scale >= 1e-30,
            "zo.int8_scale",
            f"must be 0 or >= 1e-30, got {self.int8_scale}",
        )
        check(
            self.grad_scale_rule == "fixed" or self.grad_encoding == "int8",
            "zo.grad_scale_rule",
            "'adaptive' sets the int8 scale: it needs zo.grad_encoding = 'int8'",
        )
        check(
            self.grad_scale_rule == "fixed" or self.int8_scale == 0,
            "zo.int8_scale",
            "is announced by the server with zo.grad_scale_rule = 'adaptive': leave it 0",
        )
        check(
            isinstance(self.perturbations, int) and 1 <= self.perturbations <= MAX_PERTURBATIONS,
            "zo.perturbations",
            f"must be an integer in [1, {MAX_PERTURBATIONS}], got {self.perturbations!r}",
        )

        check(
            math.isfinite(self.sparse_fraction)
            and 0 <= self.sparse_fraction <= MAX_SPARSE_FRACTION,
            "zo.sparse_fraction",
            f"must be in [0, {MAX_SPARSE_FRACTION}] (0: off), got {self.sparse_fraction}",
        )
        check(
            self.sparse_mask in ("sensitive", "random"),
            "zo.sparse_mask",
            f"must be 'sensitive' or 'random', got {self.sparse_mask!r}",
        )
        check(
            bool(self.sparse_modules)
            and all(isinstance(m, str) and m for m in self.sparse_modules),
            "zo.sparse_modules",
            "must name at least one linear module (e.g. ['q_proj', 'v_proj'])",
        )
        check(
            isinstance(self.sparse_calibration_batches, int)
            and 1 <= self.sparse_calibration_batches <= 1024,
            "zo.sparse_calibration_batches",
            f"must be an integer in [1, 1024], got {self.sparse_calibration_batches!r}",
        )
        check(
            not (self.sparse_fraction and self.trainable_modules),
            "zo.sparse_fraction",
            "a sparse mask replaces zo.trainable_modules: set one of them",
        )

    @property
    def sparse(self) -> bool:
        """Whether the run perturbs a sparse mask of base weights (``sparse_fraction > 0``)."""
        return self.sparse_fraction > 0

    @property
    def grad_scale(self) -> float | None:
        """The int8 scale every client applies this round (None for fp32)."""
        if self.grad_encoding != "int8":
            return None
        return self.int8_scale or self.grad_clip / 127

    @property
    def max_records(self) -> int:
        """Records of a full round: one per direction of every local step."""
        return self.local_steps * self.perturbations

    def for_round(self, announced: float | None) -> ZoSection:
        """The settings of one round given the server's announced scale (adaptive rule only).

        ``announced = 0`` is the calibration round: exact float32 ``g``. ``None`` (fixed rule):
        ``self``. The result has the fixed rule, so it is what a client steps and replies with.
        """
        if self.grad_scale_rule == "fixed" or announced is None:
            return self
        if announced == 0:
            return dataclasses.replace(self, grad_encoding="fp32", grad_scale_rule="fixed")
        return dataclasses.replace(self, int8_scale=announced, grad_scale_rule="fixed")
