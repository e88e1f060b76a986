"""Silence two import-time warnings that torchao (an optional extra) triggers on every run, in
every process, whether or not a low-bit optimizer is chosen: accelerate and transformers import
it when installed. On a machine without CUDA its CUDA-only kernels "fail to load", and torch
deprecates the way it registers two enums. Neither is actionable for a user of this toolkit, and
both bury the one-line messages this toolkit prints. Other warnings pass through."""

import logging

_NOISE = ("Failed to load", "is an Enum subclass and is now natively supported by torch.compile")


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


for name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(name).addFilter(_DropKnownNoise())
