"""ONNX graph surgery for edge bundles: names, the causal-LM loss, factors as inputs, IR version.

Pure ``onnx`` + ``numpy``: no torch, no ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedft.edge.errors import EdgeError

IGNORE_INDEX = -100  # fedft.data.encode.IGNORE_INDEX: prompt and padding take no loss
MAX_IR_VERSION = 10  # the newest IR onnxruntime 1.19 loads
_INT64_MAX = 2**63 - 1
_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Remove graph inputs that are initializers (left by ``keep_initializers_as_inputs=True``).

    The legacy exporter deduplicates initializers with equal values (every zero ``lora_B``, every
    all-ones norm weight) unless it keeps them as inputs; exporting that way and dropping the inputs
    afterwards keeps one initializer per parameter, under the parameter's own name.
    """
    names = {init.name for init in model.graph.initializer}
    keep = [value for value in model.graph.input if value.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename values (initializers, node inputs and outputs, graph inputs and outputs) in place."""
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in _GRAPH_ATTRS else []:
                rename_values(sub, mapping)


def _int64_constant(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.node.append(
        helper.make_node(
            "Constant",
            [],
            [name],
            name=name,
            value=numpy_helper.from_array(np.array(values, np.int64), name),
        )
    )
    return name


def add_causal_lm_loss(
    graph: onnx.GraphProto,
    logits: str,
    labels: str = "labels",
    *,
    loss: str = "",
    prefix: str = "causal_lm_loss",
) -> str:
    r"""Append Hugging Face's causal-LM loss on ``logits`` (B, L, V) and int64 ``labels`` (B, L).

    .. math::

        \mathcal{L} = \frac{1}{|T|} \sum_{(b,t) \in T} -\log \mathrm{softmax}(z_{b,t})_{y_{b,t+1}},
        \quad T = \{(b, t) : t < L-1,\ y_{b,t+1} \ne -100\}

    Position ``t`` predicts token ``t + 1`` (``logits[:, :-1]`` against ``labels[:, 1:]``),
    flattened to ``(B (L-1), V)`` for ``SoftmaxCrossEntropyLoss`` (which reads axis 1 as the
    classes) with ``ignore_index = -100`` and a mean over the kept positions. ``labels`` becomes a
    graph input if it is not one. The constants are ``Constant`` nodes, not initializers, so ONNX
    Runtime's artifact generator never takes them for model parameters.

    Parameters
    ----------
    graph : onnx.GraphProto
        Edited in place.
    logits, labels : str
        Names of the logits value and of the labels (graph input).
    loss : str, optional
        Name of the loss value (default ``<prefix>/loss``).
    prefix : str
        Prefix of the names of the added nodes and values.

    Returns
    -------
    str
        The name of the scalar float32 loss.
    """
    if labels not in {value.name for value in graph.input}:
        graph.input.append(
            helper.make_tensor_value_info(labels, TensorProto.INT64, ["batch", "sequence"])
        )

    def name(part: str) -> str:
        return f"{prefix}/{part}"

    zero = _int64_constant(graph, name("zero"), [0])
    one = _int64_constant(graph, name("one"), [1])
    minus_one = _int64_constant(graph, name("minus_one"), [-1])
    end = _int64_constant(graph, name("end"), [_INT64_MAX])
    loss = loss or name("loss")
    graph.node.extend(
        [
            # (B, L, V) -> (B, L-1, V): the last position predicts nothing
            helper.make_node(
                "Slice",
                [logits, zero, minus_one, one],
                [name("shift_logits")],
                name("slice_logits"),
            ),
            # (B, L) -> (B, L-1): the first token is predicted by nothing
            helper.make_node(
                "Slice", [labels, one, end, one], [name("shift_labels")], name("slice_labels")
            ),
            # (B, L-1, V) -> (B (L-1), V)
            helper.make_node(
                "Flatten", [name("shift_logits")], [name("flat_logits")], name("flat"), axis=2
            ),
            # (B, L-1) -> (B (L-1),)
            helper.make_node(
                "Reshape",
                [name("shift_labels"), minus_one],
                [name("flat_labels")],
                name("flat_labels_reshape"),
            ),
            helper.make_node(
                "SoftmaxCrossEntropyLoss",
                [name("flat_logits"), name("flat_labels")],
                [loss],
                name("cross_entropy"),
                reduction="mean",
                ignore_index=IGNORE_INDEX,
            ),
        ]
    )
    return loss


def factors_as_inputs(model: onnx.ModelProto, names: Iterable[str]) -> None:
    """Turn the initializers ``names`` into required float graph inputs of the same shape.

    Raises
    ------
    EdgeError
        If a name is not an initializer of the graph.
    """
    wanted = list(names)
    by_name = {init.name: init for init in model.graph.initializer}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise EdgeError(f"the exported graph has no initializer {missing[0]!r}")
    for n in wanted:
        init = by_name[n]
        model.graph.input.append(helper.make_tensor_value_info(n, init.data_type, list(init.dims)))
    keep = [init for init in model.graph.initializer if init.name not in set(wanted)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def weights_as_overridable_inputs(model: onnx.ModelProto, names: Iterable[str]) -> None:
    """Declare the initializers ``names`` graph inputs too: their values become feedable defaults.

    ONNX (IR >= 4) lets an input share its name with an initializer: ONNX Runtime then lists it
    under ``get_overridable_initializers`` (not ``get_inputs``), uses the stored weight when the
    feed omits it and the fed array when given one. Sparse zo feeds the masked weights this way.

    Raises
    ------
    EdgeError
        If a name is not an initializer of the graph.
    """
    by_name = {init.name: init for init in model.graph.initializer}
    for n in names:
        init = by_name.get(n)
        if init is None:
            raise EdgeError(f"the exported graph has no initializer {n!r}")
        model.graph.input.append(helper.make_tensor_value_info(n, init.data_type, list(init.dims)))


def cap_ir_version(path: Path, max_ir: int = MAX_IR_VERSION) -> tuple[int, int]:
    """Lower an ONNX file's ``ir_version`` to ``max_ir`` in place; return (before, after).

    ``generate_artifacts`` builds the optimizer graph with ``onnx.helper.make_model``, which stamps
    the installed onnx's IR version (14 with onnx 1.23), while onnxruntime 1.19 loads at most IR
    10. The graph itself (``AdamWOptimizer`` and ``InplaceClipGradNorm`` from ``com.microsoft``,
    tensor sequences, the base model's opset) needs nothing newer than IR 7, so only the header
    field changes; the opsets are the base model's and are left alone.
    """
    model = onnx.load(path)
    before = model.ir_version
    if before > max_ir:
        model.ir_version = max_ir
        onnx.save(model, path)
    return before, model.ir_version
