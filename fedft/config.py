"""The scenario schema: one frozen tree of dataclasses, built once from TOML plus overrides.

A scenario file is a TOML document whose tables mirror the dataclasses below. Overrides are
``section.key=value`` strings whose value is parsed as TOML (``train.lr=1e-3``,
``lora.target_modules=["q_proj","v_proj"]``) and falls back to a plain string (``model.path=/x``).
Nothing deeper in fedft reads raw dicts: everything takes these objects.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedft.errors import ConfigError
from fedft.lora_checks import check_ranks
from fedft.optim_config import FedProxSection, ServerOptSection
from fedft.privacy.config import PrivacySection
from fedft.schema import build, check, to_dict
from fedft.strategies import STRATEGIES, StrategySpec
from fedft.zo.config import ZoSection


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it is seeded."""

    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    resume_dir: str = ""  # a run folder to continue from its last checkpoint
    # Save the global adapter every N rounds into adapters/round-N/ (0: only the final adapter/).
    save_every: int = 0

    def __post_init__(self) -> None:
        check(self.save_every >= 0, "run.save_every", "must be >= 0 (0: only the final adapter)")


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the built-in tiny Llama-style model (random init, seeded by ``run.seed``)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    # 0.2, not transformers' 0.02: a random frozen base with wider weights lets LoRA reach
    # confident logits within a few rounds (eval loss 4.7 -> 0.65 vs 1.05 in 60 steps, measured).
    init_std: float = 0.2

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            check(getattr(self, name) > 0, f"model.tiny.{name}", "must be > 0")
        check(self.init_std > 0, "model.tiny.init_std", "must be > 0")
        check(
            self.hidden_size % self.num_heads == 0,
            "model.tiny.num_heads",
            "must divide hidden_size",
        )
        check(
            self.num_heads % self.num_kv_heads == 0,
            "model.tiny.num_kv_heads",
            "must divide num_heads",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The frozen base model: built-in tiny, a local Hugging Face folder, or a GGUF file."""

    source: Literal["tiny", "hf", "gguf"] = "tiny"
    path: str = ""
    dtype: Literal["float32", "bfloat16"] = "float32"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        if self.source != "tiny":
            check(bool(self.path), "model.path", f"is required when model.source = {self.source!r}")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter hyperparameters (Hu et al., 2021): W + (alpha / r) B A."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        check(self.rank > 0, "lora.rank", f"must be > 0, got {self.rank}")
        check(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they become token tensors.

    ``source = "hf"`` reads a local Hugging Face ``datasets`` folder or data file at ``path``
    (``hf_format``: ``auto``, ``disk`` for ``save_to_disk``, ``parquet``, ``json``, ``csv``;
    ``split`` of a ``DatasetDict``): see :mod:`fedft.data.hf_datasets`. A record is an
    instruction pair (``prompt_field``, ``response_field``), a conversation (``messages_field``:
    ``{role, content}`` messages ending with the assistant's) or a text (``text_field``).
    """

    source: Literal["builtin", "jsonl", "csv", "hf", "chatterbot", "rotten_tomatoes"] = "builtin"
    path: str = ""
    hf_format: Literal["auto", "disk", "parquet", "json", "csv"] = "auto"
    split: str = "train"
    prompt_field: str = "instruction"
    response_field: str = "response"
    text_field: str = "text"
    messages_field: str = "messages"
    input_field: str = ""  # an instruction's optional context column (Alpaca: "input")
    key_field: str = ""
    num_examples: int = 1200
    max_examples: int = 0
    max_length: int = 32
    template: str = "{prompt}\n"
    chat: bool = False
    eval_fraction: float = 0.1
    global_eval_size: int = 128

    def __post_init__(self) -> None:
        if self.source in ("jsonl", "csv", "hf"):
            check(bool(self.path), "data.path", f"is required when data.source = {self.source!r}")
        check(bool(self.split), "data.split", "must name a split, e.g. 'train'")
        check(self.num_examples > 0, "data.num_examples", "must be > 0")
        check(self.max_examples >= 0, "data.max_examples", "must be >= 0 (0 keeps all)")
        check(self.max_length >= 4, "data.max_length", f"must be >= 4, got {self.max_length}")
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
        check(self.global_eval_size > 0, "data.global_eval_size", "must be > 0")
        check("{prompt}" in self.template, "data.template", "must contain {prompt}")

    def global_eval_count(self, num_examples: int) -> int:
        """How many of ``num_examples`` examples the global eval set holds out (at most a fifth)."""
        return min(self.global_eval_size, max(1, num_examples // 5))

    @property
    def known_count(self) -> int | None:
        """The examples a run keeps, when the scenario alone tells (``builtin``); else None."""
        if self.source != "builtin":
            return None
        return min(self.num_examples, self.max_examples or self.num_examples)


@dataclass(frozen=True)
class PartitionConfig:
    """How examples are split across clients: iid, dirichlet(alpha) over the key, or natural."""

    method: Literal["iid", "dirichlet", "natural"] = "natural"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check(self.alpha > 0, "partition.alpha", f"must be > 0, got {self.alpha}")


@dataclass(frozen=True)
class FederationConfig:
    """Clients, rounds, sampling and the server's aggregation strategy."""

    num_clients: int = 3
    num_rounds: int = 3
    fraction_train: float = 1.0
    min_train_clients: int = 1  # sampled per round, and the valid replies a round needs
    strategy: str = "fedit"
    round_timeout_s: float = 3600.0
    # Torch clients' reply: an ArrayRecord, or a fedft.v1.LoraUpdate (fp32; int8 + per-row scale)
    update_encoding: Literal["fp32_array", "fp32", "int8"] = "fp32_array"

    def __post_init__(self) -> None:
        check(self.num_clients > 0, "federation.num_clients", "must be > 0")
        check(self.num_rounds > 0, "federation.num_rounds", "must be > 0")
        check(0 < self.fraction_train <= 1, "federation.fraction_train", "must be in (0, 1]")
        check(
            0 < self.min_train_clients <= self.num_clients,
            "federation.min_train_clients",
            f"must be in [1, num_clients={self.num_clients}]",
        )
        check(
            self.strategy in STRATEGIES,
            "federation.strategy",
            f"expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
        )
        check(self.round_timeout_s > 0, "federation.round_timeout_s", "must be > 0")

    @property
    def spec(self) -> StrategySpec:
        """What the configured strategy is and can do (:mod:`fedft.strategies`)."""
        return STRATEGIES[self.strategy]


@dataclass(frozen=True)
class LoraFairConfig:
    """The ``[lora_fair]`` table: the LoRA-FAIR residual solve (``strategy = "lora_fair"``).

    ``dB* = argmin S(dW, (B_bar + dB) A_bar) + lam ||dB||_F`` (Bian et al., arXiv 2411.14961),
    solved by :func:`fedft.algorithms.lora_fair.correct_module`; the defaults are the paper's
    scripts'.

    Parameters
    ----------
    lam : float
        Weight ``lam >= 0`` of the ``||dB||_F`` regulariser.
    steps : int
        Maximum number of gradient steps (``0`` returns the plain averages).
    lr : float
        Gradient-descent step size, ``> 0``.
    tol : float
        Early stop when the objective changes by at most ``tol`` in one step; ``0`` disables it.
    """

    lam: float = 0.01
    steps: int = 500
    lr: float = 0.01
    tol: float = 1e-7

    def __post_init__(self) -> None:
        ok = {
            "lam": math.isfinite(self.lam) and self.lam >= 0,
            "steps": isinstance(self.steps, int) and self.steps >= 0,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "tol": math.isfinite(self.tol) and self.tol >= 0,
        }
        bounds = {"lam": ">= 0", "steps": "an integer >= 0", "lr": "> 0", "tol": ">= 0"}
        for key, good in ok.items():
            value = getattr(self, key)
            check(good, f"lora_fair.{key}", f"must be finite and {bounds[key]}, got {value!r}")


@dataclass(frozen=True)
class FerretSection:
    """Ferret (arXiv 2409.06277): first-order local steps, the update sent as seed coordinates.

    Each round has a pool of ``pool_size`` seeds; block ``b`` of a client's update gets
    ``n_b = max(floor(K ||Delta_b|| / max ||Delta||), 2)`` of them and sends ``n_b`` coordinates
    (``coord_encoding``: one int8 code each, or a 4-bit one (two a byte), plus one float32 scale
    per block, or float32). The
    server rebuilds ``sum_k p_k Delta_k`` per block (``scaling``: ``unbiased``, ``1 / n_b``, or
    ``projection``, the MSE-optimal ``1 / (n_b + d_b - 1)``) and applies it times ``server_lr``.
    ``block_size = 0`` groups tensors into blocks of about 0.9 x the median tensor size, as the
    reference does. What trains is the LoRA factors, or, with ``trainable_modules`` (e.g.
    ``["lm_head"]``), every weight of the base modules with those names (Ferret's full-parameter
    setting, on a chosen part of the model); the run then outputs those weights
    (``ferret_weights.safetensors``), not an adapter.
    """

    # The reference's default is 4096 and its scripts use 200; K bounds one block's coordinates.
    # Measured (docs/ferret.md, seeds 0 and 1, 5 rounds of the default scenario): K = 64 with int4
    # codes and server lr 0.5 gets >= 90 % of fedit's eval-loss drop for ~0.8 % of its uplink; at
    # the same bytes int4 beats int8 (twice the coordinates: the projection's noise, ~d_b / n_b
    # times the signal, dwarfs a 4-bit code's rounding).
    pool_size: int = 64
    server_lr: float = 0.5
    scaling: Literal["unbiased", "projection"] = "unbiased"
    coord_encoding: Literal["int8", "int4", "fp32"] = "int4"
    block_size: int = 0
    trainable_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(2 <= self.pool_size <= 2**16, "ferret.pool_size", "must be in [2, 65536]")
        check(
            0 < self.server_lr < float("inf"),
            "ferret.server_lr",
            f"must be a finite number > 0, got {self.server_lr}",
        )
        check(self.block_size >= 0, "ferret.block_size", "must be >= 0 (0: 0.9 x median tensor)")


AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum")


@dataclass(frozen=True)
class RobustSection:
    """What the server lets a reply weigh and change, and how it combines the factors.

    Every reply's weight is ``min(num-examples, max_num_examples, median_multiple x the round's
    median claim)`` (the median rule with >= 3 replies only), and its change must satisfy
    ``||X_k - X|| <= min(max_update_norm, max_relative_update x ||X||)`` (``X`` the round's global
    factors), with ``B_k A_k`` finite in float32 for every LoRA module. On top, with >= 3 replies,
    a change over ``norm_outlier_factor`` x the median of the others' is dropped.

    ``aggregator``: ``mean`` (the strategy's weighted average), ``median`` / ``trimmed_mean``
    (coordinate-wise over the factors, unweighted, as Flower's FedMedian / FedTrimmedAvg; ``fedit``
    only), ``krum`` / ``multi_krum`` (keep the reply, or the ``n - byzantine`` replies, with the
    lowest Krum score, then aggregate them as the strategy does).
    """

    aggregator: Literal["mean", "median", "trimmed_mean", "krum", "multi_krum"] = "mean"
    trim_fraction: float = 0.1
    byzantine: int = 1
    max_num_examples: int = 1_000_000
    median_multiple: float = 10.0
    max_update_norm: float = 1e4
    max_relative_update: float = 10.0
    norm_outlier_factor: float = 10.0

    def __post_init__(self) -> None:
        check(
            0 <= self.trim_fraction < 0.5,
            "robust.trim_fraction",
            f"must be in [0, 0.5), got {self.trim_fraction}",
        )
        check(self.byzantine >= 0, "robust.byzantine", f"must be >= 0, got {self.byzantine}")
        # Weights stay integers far below 2**53, so their float sum is exact.
        check(
            0 < self.max_num_examples <= 2**40,
            "robust.max_num_examples",
            f"must be in [1, 2**40], got {self.max_num_examples}",
        )
        check(self.median_multiple >= 1, "robust.median_multiple", "must be >= 1")
        check(self.max_update_norm > 0, "robust.max_update_norm", "must be > 0")
        check(self.max_relative_update > 0, "robust.max_relative_update", "must be > 0")
        check(self.norm_outlier_factor > 1, "robust.norm_outlier_factor", "must be > 1")


@dataclass(frozen=True)
class TrainConfig:
    """A client's local first-order training in each round."""

    local_steps: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Across rounds: "constant" (train.lr every round) or "cosine" (FlowerTune's annealing from
    # train.lr down to train.lr_min, reached in the last round; see fedft.schedule). zo.lr is
    # never scheduled.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = 0.0

    def __post_init__(self) -> None:
        check(self.local_steps > 0, "train.local_steps", "must be > 0")
        check(self.batch_size > 0, "train.batch_size", "must be > 0")
        check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        check(
            0 <= self.lr_min <= self.lr,
            "train.lr_min",
            f"must be in [0, train.lr = {self.lr}], got {self.lr_min}",
        )
        check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 disables clipping)")


@dataclass(frozen=True)
class EvalSection:
    """What the server and the clients evaluate each round, and the caps that keep rounds fast.

    Every round the server scores the global model on the global eval set (loss, perplexity, token
    accuracy) and each client its trained model on its own eval split (personalisation). On
    instruction data (examples with a prompt) both also decode greedy answers to the first
    examples of their set and score them against the references: normalised exact match and
    ROUGE-L (:mod:`fedft.generation`). Plain text has no reference answer: loss, perplexity and
    next-token accuracy only.
    """

    # Greedy answers scored on the global eval set (its first N examples; 0: no generation).
    max_generate_examples: int = 32
    # Greedy answers scored by each client on its own eval split (0: none).
    client_generate_examples: int = 8
    max_new_tokens: int = 32
    # Generate in rounds 0, N, 2N, ... and the last round (loss is evaluated every round).
    generate_every: int = 1
    # A generation pass stops starting new batches after this many seconds (0: no limit); the
    # number of answers scored is recorded (``gen_examples``), as a cut pass is not paired.
    generate_timeout_s: float = 120.0
    # Rows per evaluation batch (0: 4 x train.batch_size).
    batch_size: int = 0
    # Threads of the server's evaluation (0: the cores idle when it starts; the clients wait).
    threads: int = 0
    # Also write TensorBoard event files into <run>/tensorboard (needs fedft[tensorboard]).
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("max_generate_examples", "client_generate_examples", "batch_size", "threads"):
            check(getattr(self, name) >= 0, f"eval.{name}", "must be >= 0")
        check(self.max_new_tokens > 0, "eval.max_new_tokens", "must be > 0")
        check(self.generate_every > 0, "eval.generate_every", "must be > 0 (rounds)")
        check(self.generate_timeout_s >= 0, "eval.generate_timeout_s", "must be >= 0 (0: none)")

    def generates_in(self, server_round: int, num_rounds: int) -> bool:
        """Whether ``server_round`` scores greedy answers (round 0 is the untrained adapter)."""
        return server_round % self.generate_every == 0 or server_round == num_rounds


BACKENDS = ("torch", "ort", "zo", "ferret")
"""``client.backend`` names: each has its runtimes in ``clients/runtimes/`` (registered by these
names; ``tests/unit/test_runtime_registry.py`` checks the two agree)."""
QUANTIZATIONS = ("none", "int8", "nf4")


@dataclass(frozen=True)
class ClientConfig:
    """How a client trains: its runtime, the base's quantization, and the device.

    ``backend``: ``torch`` (first-order, peft), ``ort`` (ONNX Runtime on-device training) or ``zo``
    (zeroth-order steps, forward passes only). ``quantization`` holds the frozen base in 8-bit or
    4-bit NF4 (bitsandbytes); adapters stay float32 whatever it is. ``device``: ``auto`` takes CUDA
    when present, else the CPU.
    """

    backend: str = "torch"
    quantization: str = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        check(self.backend in BACKENDS, "client.backend", f"expected one of {BACKENDS}")
        check(
            self.quantization in QUANTIZATIONS,
            "client.quantization",
            f"expected one of {QUANTIZATIONS}, got {self.quantization!r}",
        )


@dataclass(frozen=True)
class ClientGroup:
    """Settings for some clients (by partition id) that differ from ``[client]``.

    A scenario mixes runtimes with tables like::

        [[client_groups]]
        partitions = [0, 1]
        quantization = "nf4"

    ``lora_rank`` gives the partitions a LoRA rank below ``lora.rank`` (the server's, the largest):
    they train the leading ``lora_rank`` components of the global factors, at the server's scale
    ``lora.alpha / lora.rank`` (:meth:`Scenario.lora_for`); ``0`` keeps ``lora.rank``.
    """

    partitions: tuple[int, ...] = ()
    backend: str = ""
    quantization: str = ""
    device: str = ""
    lora_rank: int = 0

    def __post_init__(self) -> None:
        check(len(self.partitions) > 0, "client_groups.partitions", "must list partition ids")
        check(min(self.partitions) >= 0, "client_groups.partitions", "ids must be >= 0")
        if self.backend:
            check(self.backend in BACKENDS, "client_groups.backend", f"expected one of {BACKENDS}")
        if self.quantization:
            check(
                self.quantization in QUANTIZATIONS,
                "client_groups.quantization",
                f"expected one of {QUANTIZATIONS}",
            )
        if self.device:
            check(
                self.device in ("auto", "cpu", "cuda"), "client_groups.device", "auto, cpu or cuda"
            )
        check(self.lora_rank >= 0, "client_groups.lora_rank", "must be >= 0 (0: lora.rank)")


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of the Flower simulation engine (Ray backend).

    ``gpus_per_client``: the fraction of a GPU each virtual client holds (Ray's ``num_gpus``;
    0.25 lets four clients share one GPU). ``"auto"`` shares this machine's CUDA GPUs evenly
    among the clients that run at once, and is 0 (CPU only) where there is no CUDA GPU.
    """

    cpus_per_client: float = 1.0
    threads_per_client: int = 1
    gpus_per_client: float | Literal["auto"] = "auto"
    # "": a Ray instance of this run's own, on this machine. "auto" or "HOST:PORT": attach to a
    # running Ray cluster (Ray's `address`; docs/scale.md), whose nodes host the client actors.
    ray_address: str = ""

    def __post_init__(self) -> None:
        check(self.cpus_per_client > 0, "simulation.cpus_per_client", "must be > 0")
        check(
            not any(c.isspace() for c in self.ray_address),
            "simulation.ray_address",
            f'must be "", "auto" or HOST:PORT, got {self.ray_address!r}',
        )
        check(self.threads_per_client > 0, "simulation.threads_per_client", "must be > 0")
        if self.gpus_per_client != "auto":
            check(
                0 <= self.gpus_per_client <= 1,
                "simulation.gpus_per_client",
                f'must be "auto" or in [0, 1], got {self.gpus_per_client}',
            )


@dataclass(frozen=True)
class Scenario:
    """A whole fedft scenario: every table of a scenario file."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    lora_fair: LoraFairConfig = field(default_factory=LoraFairConfig)
    zo: ZoSection = field(default_factory=ZoSection)
    ferret: FerretSection = field(default_factory=FerretSection)
    robust: RobustSection = field(default_factory=RobustSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    client_groups: tuple[ClientGroup, ...] = ()
    server_opt: ServerOptSection = field(default_factory=ServerOptSection)
    fedprox: FedProxSection = field(default_factory=FedProxSection)

    def __post_init__(self) -> None:
        if (count := self.data.known_count) is not None:  # as fedft.task.split_clients checks
            held_out = self.data.global_eval_count(count)
            check(
                count - held_out >= self.federation.num_clients,
                "federation.num_clients",
                f"{self.federation.num_clients} clients but only {count} examples "
                f"({held_out} held out for the global eval set)",
            )
        seen: set[int] = set()
        for group in self.client_groups:
            for pid in group.partitions:
                check(
                    pid < self.federation.num_clients,
                    "client_groups.partitions",
                    f"partition {pid} >= federation.num_clients ({self.federation.num_clients})",
                )
                check(
                    pid not in seen, "client_groups.partitions", f"partition {pid} is listed twice"
                )
                seen.add(pid)

        aggregator, spec = self.robust.aggregator, self.federation.spec
        if aggregator not in spec.aggregators:
            takers = [name for name, other in STRATEGIES.items() if aggregator in other.aggregators]
            why = (
                f"a {spec.name} run sums bounded scalars per seed: only 'mean' applies"
                if spec.shared_seeds
                else f"{aggregator!r} combines factors coordinate-wise: {', '.join(takers)} only "
                "(LoRA-FAIR's target is the weighted mean of B_k A_k, zo's the weighted sum per "
                "seed); use krum"
            )
            check(False, "robust.aggregator", why)

        check_ranks(self)
        backends = {self.client.backend, *(g.backend for g in self.client_groups if g.backend)}
        if self.federation.strategy == "ferret":
            check(
                "zo" not in backends,
                "client.backend",
                "a ferret run takes first-order clients (torch, ort, ferret), not 'zo'",
            )

        for section in ("zo", "ferret"):
            if getattr(self, section).trainable_modules:
                check(
                    spec.settings == section,
                    f"{section}.trainable_modules",
                    f"module weights can only be trained in a {section} run "
                    f"(federation.strategy = '{section}')",
                )
                clients = [
                    self.client,
                    *(self.client_for(p) for g in self.client_groups for p in g.partitions),
                ]
                for c in clients:
                    check(
                        c.quantization == "none" and c.backend != "ort",
                        f"{section}.trainable_modules",
                        "module weights need float torch clients (no quantization, no ort backend)",
                    )

        if self.zo.sparse:
            check(
                spec.name == "zo",
                "zo.sparse_fraction",
                "a sparse mask trains base weights, which a first-order round's LoRA aggregation "
                "cannot carry: it needs federation.strategy = 'zo' (no mixed rounds)",
            )

        if self.privacy.enabled:
            self._check_privacy(backends)

    def _check_privacy(self, backends: set[str]) -> None:
        """What differential privacy is built for (``docs/privacy.md``)."""
        spec, mode = self.federation.spec, self.privacy.mode
        check(
            self.robust.aggregator == "mean",
            "robust.aggregator",
            "privacy needs 'mean': a robust aggregator lets one client move others' weight",
        )
        check(
            spec.name in ("fedit", "lora_fair", "zo", "ferret"),
            "privacy.mode",
            f"privacy is built for fedit, lora_fair, zo and ferret, not {spec.name!r}",
        )
        check(
            not (spec.name == "ferret" and self.ferret.trainable_modules),
            "ferret.trainable_modules",
            "privacy clips LoRA factor updates: a private ferret run trains the LoRA factors",
        )
        check(
            not (spec.name == "lora_fair" and mode == "central"),
            "privacy.mode",
            "lora_fair needs each client's factors, which central noise never releases: use local",
        )
        check(
            self.zo.grad_scale_rule == "fixed" or not spec.shared_seeds,
            "zo.grad_scale_rule",
            "privacy needs the fixed int8 scale: the adaptive one follows the clients' raw g",
        )
        check(
            self.zo.perturbations == 1 or not spec.shared_seeds,
            "zo.perturbations",
            "privacy accounts one g per step: a private zo run takes zo.perturbations = 1",
        )
        allowed = {"torch", "zo", "ort"} if spec.shared_seeds else {"torch", "ort"}
        check(
            backends <= allowed,
            "client.backend",
            f"a private {spec.name} run takes {' or '.join(sorted(allowed))} clients",
        )

    @property
    def trained_modules(self) -> tuple[str, ...]:
        """The modules whose whole weights the run trains; ``()``: it trains the LoRA factors.

        ``zo.trainable_modules`` or ``ferret.trainable_modules``, which only a run of that
        strategy may set.
        """
        settings = self.federation.spec.settings
        if settings in ("zo", "ferret"):
            return getattr(self, settings).trainable_modules
        return ()

    def client_for(self, partition_id: int) -> ClientConfig:
        """The client settings of one partition: ``[client]`` with its group's overrides."""
        for group in self.client_groups:
            if partition_id in group.partitions:
                changes = {
                    k: getattr(group, k)
                    for k in ("backend", "quantization", "device")
                    if getattr(group, k)
                }
                return dataclasses.replace(self.client, **changes)
        return self.client

    def rank_for(self, partition_id: int) -> int:
        """The LoRA rank a partition trains: its group's ``lora_rank``, else ``lora.rank``."""
        for group in self.client_groups:
            if partition_id in group.partitions and group.lora_rank:
                return group.lora_rank
        return self.lora.rank

    def lora_for(self, partition_id: int) -> LoraConfig:
        """The partition's LoRA settings: its rank ``r_k``, alpha ``lora.alpha r_k / lora.rank``.

        Every client keeps the server's scale ``alpha / r``, so its ``B_k A_k`` adds to the base
        weight exactly as the same product in the server's adapter does.
        """
        rank = self.rank_for(partition_id)
        if rank == self.lora.rank:
            return self.lora
        return dataclasses.replace(
            self.lora, rank=rank, alpha=self.lora.alpha * rank / self.lora.rank
        )

    @property
    def heterogeneous_ranks(self) -> bool:
        """Whether some partition trains another rank than ``lora.rank``."""
        return any(g.lora_rank not in (0, self.lora.rank) for g in self.client_groups)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every value (resolved defaults included)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Scenario:
        """Validate a nested dict (e.g. from TOML or JSON) into a scenario."""
        return build(cls, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and value (TOML value, else a plain string).

    A string key takes the text as it is unless it is a quoted TOML string: ``run.name=123`` and
    ``run.name=2024-01-01`` are names, not an integer and a date.
    """
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override must look like section.key=value")
    path, raw_value = key.split("."), raw_value.strip()
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    if not isinstance(value, str) and _field_type(path) is str:
        value = raw_value
    return path, value


def _field_type(path: list[str]) -> Any:
    """The schema type of the scenario key at ``path`` (None if there is no such key)."""
    hint: Any = Scenario
    for part in path:
        if not dataclasses.is_dataclass(hint):
            return None
        hints = typing.get_type_hints(hint)
        if part not in hints:
            return None
        hint = hints[part]
    return hint


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``section.key=value`` override set."""
    return set_values(raw, (parse_override(text) for text in overrides))


def set_values(raw: Mapping[str, Any], values: Iterable[tuple[list[str], Any]]) -> dict[str, Any]:
    """Return a copy of ``raw`` with the value at each key path set (tables created as needed)."""
    merged = copy.deepcopy(dict(raw))
    for path, value in values:
        node = merged
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: depth + 1]), "is a value, not a table")
            node = child
        node[path[-1]] = value
    return merged


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a scenario file, naming the file in any error."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("scenario", f"file not found: {file}")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("scenario", f"{file} is not valid TOML: {err}") from None


def load_scenario(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Scenario:
    """Build the scenario from a TOML file (or the defaults) plus ``key=value`` overrides."""
    raw = read_toml(path) if path is not None else {}
    return Scenario.from_dict(apply_overrides(raw, overrides))
