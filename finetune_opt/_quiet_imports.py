"""Silence import-time warnings that the optional low-bit extras trigger on every run, in every
process, whether or not a low-bit optimizer is chosen: accelerate, transformers and peft import
torchao and bitsandbytes when installed. On a machine without CUDA torchao's CUDA-only kernels
"fail to load", and torch deprecates the way it registers two enums; with the `kernels` package
installed (transformers 5.25 requires it), bitsandbytes' CPU backend "fails to load" a kernel from
the Hugging Face Hub, and offline `kernels` says it skips that kernel's publisher check. None is
actionable for a user of this toolkit, and each buries the one-line messages this toolkit prints.
Other warnings pass through. A logger's filter sees only the records logged on that logger, so
each logger is named as its module names it."""

import logging

_NOISE = ("Failed to load", "is an Enum subclass and is now natively supported by torch.compile",
          "Skipping publisher trust check")


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


for name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(name).addFilter(_DropKnownNoise())
