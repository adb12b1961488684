"""fedft: federated and on-device fine-tuning of language models."""

import logging

# bitsandbytes (imported by peft) warns at import, on CPUs with AVX512-BF16, that an optional hub
# kernel for its packed 4-bit CPU inference path is missing. fedft never takes that path: it
# computes with the training kernel in every mode (fedft.quantize.pin_compute_).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
