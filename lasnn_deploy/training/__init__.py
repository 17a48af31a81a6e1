"""Training pipeline of ``lasnn-deploy train``: teacher, intermediate ANN, conversion, fine-tuning.

From Python::

    from lasnn_deploy.training import train
    run = train(dataset="digits", out="runs/digits", preset="quick", method="lasnn")

From a CLI: ``add_train_arguments(parser)``, then ``train(config_from_args(args))``.
"""

from .config import METHODS, PRESETS, TrainConfig, add_train_arguments, config_from_args, load_config_file, make_config
from .pipeline import train

__all__ = [
    "METHODS",
    "PRESETS",
    "TrainConfig",
    "add_train_arguments",
    "config_from_args",
    "load_config_file",
    "make_config",
    "train",
]
