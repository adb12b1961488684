"""Quantized frozen bases with bitsandbytes: 8-bit or 4-bit NF4, on CUDA or the CPU.

A client's ``quantization`` (``client.quantization``) holds its frozen base in fewer bits; the
LoRA factors it trains stay float32, so its reply has the same names, shapes and dtype as an
unquantized client's and the server cannot tell them apart.

- ``int8``: LLM.int8() weights (Dettmers et al., 2022, arXiv 2208.07339): one absmax scale per
  output row, ``W ~ CB * SCB / 127`` with ``CB`` int8.
- ``nf4``: QLoRA's data type (Dettmers et al., 2023, arXiv 2305.14314): 4-bit NormalFloat in
  blocks of 64 weights with one float32 scale each (4.5 bits a weight), matmuls in the model's
  dtype (float32 by default). No double quantization of the scales: on fedft's small models it
  saves under 3% of the base (SmolLM2-135M: 173 -> 168 MB, its unquantized embedding dominates),
  while each layer's extra 1 KB codebook outweighs it on the tiny model, and it adds a
  dequantization to every matmul.

Both paths go through transformers' own bitsandbytes integration: a Hugging Face folder loads with
``from_pretrained(quantization_config=...)``, and the built-in tiny model, which is built from a
config, is saved to a temporary folder and reloaded the same way. Transformers then keeps the
embeddings and ``lm_head`` (the output embedding, tied or not) unquantized, as it does for any
model.

No ``peft.prepare_model_for_kbit_training``. It freezes the base (``get_peft_model`` already
does), casts half-precision norms and embeddings to float32 (the base is float32 unless
``model.dtype = "bfloat16"`` asks otherwise), and turns on gradient checkpointing with input
gradients. fedft's training loop does not checkpoint, so none of it is needed to train. It would
pay on larger batches: on SmolLM2-135M at batch 4 x 32 tokens a step's activations take about
250 MiB beside a 165 MiB nf4 base (``benchmarks/quantization.py``). Whoever adds checkpointing
must call ``model.enable_input_require_grads()`` with it: the frozen embeddings give checkpointed
blocks no input that requires grad.

One function in every mode. On the CPU, bitsandbytes 0.50 picks kernels by the module's mode, and
fedft pins the training kernel (:func:`pin_compute_`):

- ``Linear4bit``: on a CPU with AVX512-BF16, the first forward in eval mode without gradients
  repacks the weight for a bfloat16 kernel (``gemv_4bit``) and keeps it so. That kernel has no
  autograd: every later training forward silently drops the gradient through the frozen layer, so
  LoRA factors below it learn from a wrong gradient (measured: the input's ``.grad`` is ``None``).
- ``Linear8bitLt``: training dequantizes the weight and multiplies in float (``MatMul8bitFp``);
  eval runs LLM.int8 with the activations rounded to int8 too (logits 3% away from training's on
  the tiny model). A zeroth-order step differences two forward passes ``eps`` apart, which that
  rounding swamps (measured: SPSA's ``g`` 92% away from the directional derivative).

With the pin, every forward computes ``x @ dequantize(W).T`` in the compute dtype, the same
function in training, evaluation and zeroth-order steps.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from fedft.config import Scenario
from fedft.devices import select_device
from fedft.errors import ConfigError

QUANTIZED = ("int8", "nf4")
NF4_BLOCKSIZE = 64  # bitsandbytes' 4-bit block: one scale per 64 weights (QLoRA)


def require_bitsandbytes() -> ModuleType:
    """Import bitsandbytes, or raise the one-line error a user can act on.

    Raises
    ------
    ConfigError
        Naming ``client.quantization`` if bitsandbytes is missing or fails to import (a broken
        native library raises ``RuntimeError`` or ``OSError`` rather than ``ImportError``).
    """
    try:
        return importlib.import_module("bitsandbytes")
    except Exception as err:  # a broken native library may raise anything
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ConfigError(
            "client.quantization",
            f"needs bitsandbytes, which cannot be imported here ({reason}); "
            "install bitsandbytes>=0.45 or set quantization = 'none'",
        ) from None


def check_platform(quantization: str, device: torch.device) -> None:
    """Raise unless bitsandbytes can run ``quantization`` on ``device`` here.

    Imports bitsandbytes, checks that it has a backend for the device type, and quantizes one
    block on the device (a failing kernel raises here, not in the middle of a round).

    Raises
    ------
    ConfigError
        Naming ``client.quantization``, the quantization and the device.
    """
    if quantization not in QUANTIZED:
        raise ConfigError(
            "client.quantization", f"expected one of {QUANTIZED}, got {quantization!r}"
        )
    bnb = require_bitsandbytes()
    supported = sorted(getattr(bnb, "supported_torch_devices", ()))
    if device.type not in supported:
        raise ConfigError(
            "client.quantization",
            f"{quantization!r} cannot run on device {device.type!r}: bitsandbytes "
            f"{bnb.__version__} has backends for {', '.join(supported) or 'no device'}",
        )
    try:
        probe = torch.linspace(-1, 1, NF4_BLOCKSIZE, device=device).reshape(2, -1)
        if quantization == "nf4":
            packed, state = bnb.functional.quantize_4bit(
                probe, blocksize=NF4_BLOCKSIZE, quant_type="nf4"
            )
            bnb.functional.dequantize_4bit(packed, state)
        else:
            bnb.functional.int8_vectorwise_quant(probe.half())
    except Exception as err:  # whatever the kernel raises: it cannot run here
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ConfigError(
            "client.quantization",
            f"bitsandbytes {bnb.__version__} cannot run {quantization!r} on {device}: {reason}",
        ) from None


def check_clients(scenario: Scenario) -> None:
    """Check, before any process starts, that this machine can run every client's quantization.

    For ``fedft simulate``, where the clients run here: a client that fails at load time only
    shows as a traceback in a worker's log and a round without its reply.

    Raises
    ------
    ConfigError
        Naming ``client.device`` or ``client.quantization``.
    """
    wanted = {scenario.client_for(p) for p in range(scenario.federation.num_clients)}
    for client in sorted(wanted, key=str):
        if client.quantization != "none":
            check_platform(client.quantization, select_device(client.device))


def bnb_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The transformers ``BitsAndBytesConfig`` of a fedft quantization (``int8`` or ``nf4``)."""
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    raise ConfigError("client.quantization", f"expected one of {QUANTIZED}, got {quantization!r}")


def load_quantized(
    folder: str | Path, quantization: str, device: torch.device, dtype: torch.dtype
) -> PreTrainedModel:
    """Load a Hugging Face folder with its linear layers quantized, placed on ``device``.

    Parameters
    ----------
    folder : str or Path
        A Hugging Face model folder (``config.json`` and weights).
    quantization : str
        ``int8`` or ``nf4``.
    device : torch.device
        Where the quantized weights live (bitsandbytes quantizes them there).
    dtype : torch.dtype
        dtype of the unquantized parts (embeddings, norms, ``lm_head``) and of the matmuls.
    """
    check_platform(quantization, device)
    with _quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            quantization_config=bnb_config(quantization, dtype),
            device_map={"": str(device)},
            dtype=dtype,
        )
    _copy_out_of_checkpoint_(model)
    pin_compute_(model)
    return model


def _copy_out_of_checkpoint_(model: torch.nn.Module) -> None:
    """Copy the unquantized tensors (embeddings, norms, lm_head) out of the checkpoint's mmap.

    transformers leaves them as views of the memory-mapped safetensors file. Quantizing read every
    page of that file, and the mapping keeps all of them resident, fp32 linear weights included
    (SmolLM2-135M after an nf4 load: 514 MB of file pages; once copied out, only the 100 MB of
    shared libraries every process maps).
    """
    bnb = require_bitsandbytes()
    quantized = (bnb.nn.Params4bit, bnb.nn.Int8Params)
    done: set[int] = set()
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for tensor in tensors:
            if isinstance(tensor, quantized) or id(tensor) in done:
                continue
            done.add(id(tensor))  # a tied parameter is one object: copied once, stays tied
            tensor.data = tensor.data.clone()


def quantize_model(
    model: PreTrainedModel, quantization: str, device: torch.device
) -> PreTrainedModel:
    """Quantize a model built in memory (the tiny model): save it, reload it quantized.

    The round trip through a temporary folder runs the same transformers loader as a folder on
    disk, so both sources quantize the same layers the same way.
    """
    check_platform(quantization, device)
    with tempfile.TemporaryDirectory(prefix="fedft-quantize-") as folder:
        with _quiet_progress():
            model.save_pretrained(folder)
        return load_quantized(folder, quantization, device, model.dtype)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' progress bars: a client logs rounds, not a bar for every load."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def pin_compute_(model: torch.nn.Module) -> None:
    """Make every bitsandbytes layer of ``model`` compute with its training kernel in every mode.

    See the module docstring: without this, bitsandbytes 0.50 on the CPU switches ``Linear4bit`` to
    a bfloat16 kernel without autograd after an eval pass, and ``Linear8bitLt`` to int8
    activations in eval mode.
    """
    bnb = require_bitsandbytes()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # never repack for the bf16 gemv kernel
        elif isinstance(module, bnb.nn.Linear8bitLt) and type(module) is bnb.nn.Linear8bitLt:
            module.__class__ = _weight_only_int8_class()


@functools.cache
def _weight_only_int8_class() -> type:
    """``Linear8bitLt`` whose forward always takes bitsandbytes' training path.

    Built on first use: this module must import without bitsandbytes (to report it missing).
    """
    bnb: Any = require_bitsandbytes()  # (imported at run time: its classes are Any to mypy)

    class WeightOnlyLinear8bitLt(bnb.nn.Linear8bitLt):
        """An int8 linear layer that multiplies by the dequantized weight in every mode.

        bitsandbytes reads ``self.training`` to pick its kernel; the flag means nothing else to
        this layer (no dropout, no running state), so its forward runs with the flag set.
        """

        training: bool  # nn.Module's flag (declared for mypy: the base class is Any to it)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mode, self.training = self.training, True
            try:
                return super().forward(x)
            finally:
                self.training = mode

    return WeightOnlyLinear8bitLt


def quantized_layers(model: torch.nn.Module) -> dict[str, str]:
    """Names of the bitsandbytes layers of ``model`` and their kind (``int8`` or ``nf4``)."""
    bnb = require_bitsandbytes()
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            kinds[name] = "nf4"
        elif isinstance(module, bnb.nn.Linear8bitLt):
            kinds[name] = "int8"
    return kinds


def dequantized_weight(module: torch.nn.Module) -> torch.Tensor:
    """The float32 weight a bitsandbytes linear layer multiplies by: ``dequantize(Q)``.

    Raises
    ------
    TypeError
        If ``module`` is not a bitsandbytes ``Linear4bit`` or ``Linear8bitLt``.
    """
    bnb = require_bitsandbytes()
    weight: Any = module.weight  # a bitsandbytes Params4bit or Int8Params (untyped here)
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    if isinstance(module, bnb.nn.Linear8bitLt):
        # the row scales live on the weight until the first forward, then on the layer's state
        scales = weight.SCB if weight.SCB is not None else module.state.SCB
        return weight.data.float() * (scales.float().unsqueeze(1) / 127)
    raise TypeError(f"{type(module).__name__} is not a bitsandbytes linear layer")


def _quant_state_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors a bitsandbytes layer keeps beside its quantized weight (scales, codebooks)."""
    weight = getattr(module, "weight", None)
    found = []
    state = getattr(weight, "quant_state", None)  # 4-bit: absmax, code, nested absmax and code
    while state is not None:
        found += [state.absmax, state.code, state.offset]
        state = state.state2
    # 8-bit: one float32 scale per row, on the weight until the first forward, then on the layer
    found += [getattr(weight, "SCB", None), getattr(getattr(module, "state", None), "SCB", None)]
    return [t for t in found if torch.is_tensor(t)]


def base_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the frozen base's tensors that ``model`` holds, LoRA factors excluded.

    Parameters, buffers and bitsandbytes' quantization states (block scales, codebooks), each
    storage counted once (tied embeddings share one).
    """
    seen: set[int] = set()
    total = 0
    for name, module in model.named_modules():
        if "lora_" in name:
            continue
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        tensors += _quant_state_tensors(module)
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total
