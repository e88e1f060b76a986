"""finetune_opt: fine-tune HF Transformers through Accelerate with pluggable optimizer factories."""

from finetune_opt import _quiet_imports  # noqa: F401  (before anything imports torchao)
from finetune_opt.errors import ConfigError
from finetune_opt.optim import create_optimizer, list_optimizers, trainer_optimizers

__version__ = "0.1.0"
__all__ = ["ConfigError", "create_optimizer", "list_optimizers", "trainer_optimizers", "__version__"]
