"""The ONNX Runtime edge runtime: an edge bundle built once, then training on devices.

An *edge bundle* is a folder made once per (model, LoRA, optimizer) configuration
(:mod:`fedft.edge.export`): the ONNX export of base + LoRA turned into ONNX Runtime training
artifacts (train, eval and optimizer graphs plus a checkpoint, only the LoRA factors trainable), a
forward-only graph whose LoRA factors are graph inputs, the tokenizer and a manifest with the
configuration hash (:mod:`fedft.edge.bundle`). Simulations keep bundles in a cache folder keyed
by that hash (:mod:`fedft.edge.cache`); devices get one from ``fedft edge export``
(:mod:`fedft.edge.cli`). Clients then train with ``onnxruntime.training.api``
(:mod:`fedft.edge.ort_train`), or with two forward passes per step and a plain ``InferenceSession``
(:mod:`fedft.edge.ort_zo`), which needs no training runtime.
"""
