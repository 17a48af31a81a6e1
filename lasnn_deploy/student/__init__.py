"""The student SNN, described once as data, and everything built from that description.

- ``layers``: one frozen spec per layer type, with its output shape, tensors and torch module;
- ``walk``: the one walk over the layer specs (``LayerStep``: shapes, LIF layer, shortcut readers) and
  ``flow``, the one loop that carries a value through the layers;
- ``config``: ``StudentConfig``, the architecture (an ordered tuple of layer specs) plus the run
  settings (time steps, encoding, reset), with its steps (``StudentConfig.layer_steps``);
- ``module``: ``SpikingStudent``, the PyTorch module (weights, shared leak, per-layer thresholds);
- ``files``: the student file (safetensors, loads without code);
- ``deployed``: ``deployed_layers``, the graph every export target and the energy model read.

Index convention: ``source`` (``Shortcut.source``, ``DeployedLayer.source``) is always an index into
``StudentConfig.layers``; ``DeployedShortcut.producer`` is an index into the deployed layers.
"""

from .config import MAX_TIMESTEPS, StudentConfig, check_timesteps
from .deployed import (
    DeployedLayer,
    DeployedShortcut,
    deployed_layers,
    fold_pool_into_conv,
    fold_pool_into_linear,
    has_shortcuts,
)
from .files import FORMAT, STUDENT_FILE, load_student, parameter_shapes, resolve_student_path, save_student
from .layers import (
    LAYER_TYPES,
    AvgPool,
    Conv,
    Dropout,
    Flatten,
    LayerSpec,
    Linear,
    ResidualAdd,
    Shortcut,
    layer_from_dict,
    layer_name,
    layer_to_dict,
    table_entry,
)
from .module import SpikingStudent, Trace, ann_layer, check_images, check_parameters
from .walk import LayerStep, flow, walk

__all__ = [
    "FORMAT",
    "LAYER_TYPES",
    "MAX_TIMESTEPS",
    "STUDENT_FILE",
    "AvgPool",
    "Conv",
    "DeployedLayer",
    "DeployedShortcut",
    "Dropout",
    "Flatten",
    "LayerSpec",
    "LayerStep",
    "Linear",
    "ResidualAdd",
    "Shortcut",
    "SpikingStudent",
    "StudentConfig",
    "Trace",
    "ann_layer",
    "check_images",
    "check_parameters",
    "check_timesteps",
    "deployed_layers",
    "flow",
    "fold_pool_into_conv",
    "fold_pool_into_linear",
    "has_shortcuts",
    "layer_from_dict",
    "layer_name",
    "layer_to_dict",
    "table_entry",
    "load_student",
    "parameter_shapes",
    "resolve_student_path",
    "save_student",
    "walk",
]
