r"""NIR target (docs/semantics.md, 'NIR'): the student as a ``nir.NIRGraph``, run in snnTorch's importer.

The graph is a chain ``Input -> (Conv2d | AvgPool2d | Flatten | Linear | LIF)* -> Output`` built
straight from the student's layers (Dropout is dropped, it is the identity at inference), plus one
branch per residual block: a ``Shortcut`` is a 1x1 ``Conv2d`` node (``shortcut<i>``, zero bias; an
identity shortcut has identity weights) from the node holding its source's output (a LIF, or the
AvgPool after one) into the block's LIF, which thus has two incoming edges; NIR sums them, and
snnTorch's importer (nirtorch's graph executor) adds them before the LIF. The metadata names the
shortcut nodes (``shortcuts``), so that reading a graph back tells branch from chain. It ends
at the last ``Linear``: the output integrator ``u_out[T] = sum_t W_out s_L[t]`` is the sum of the
graph's output over the ``T`` steps, so ``logits = sum_t output[t] / T``. No ``I``/``LI`` node is
written because snnTorch 1.0's importer maps neither. The metadata says so (``output_form``) and
carries what the graph itself cannot: ``dt``, ``timesteps``, ``encoding``, ``input_shape``,
``num_classes``, the student's exact ``leak``, ``arch`` and the shortcut node names.

A layer's bias (a constant current every step) is the ``bias`` of its ``Conv2d`` node (zero for a
bias-free conv), and a ``Linear`` with a bias is an ``Affine`` node: NIR's ``W x + b``, which
snnTorch imports as an ``nn.Linear`` with that bias. Reading back, a Conv2d with any nonzero bias
is a biased Conv; an all-zero bias reads as none (it computes the same).

Neurons follow NIR's LIF ``tau dv/dt = (v_leak - v) + r I`` discretised by forward Euler with
``dt = 1e-4`` (the dt snnTorch's importer assumes)::

    v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]     with tau = dt / (1 - lam), r = 1 / (1 - lam)
         = lam v[t-1] + I[t]                          v_leak = v_reset = 0, v_threshold = theta

``tau`` is stored in float32 and nudged by a few ulps so that ``1 - dt/tau`` evaluated in float32,
as snnTorch does, gives back ``lam`` bit for bit where a float32 ``tau`` can (for how many leaks:
docs/results.md, "Numbers behind the code's reasons"; otherwise the nearest float32 leak).

``lam = 1`` is written as a LIF with ``tau = dt * 2**64`` and ``r = 2**64`` (leak ``2**-64`` per
step, which rounds to exactly 1 in float32 and float64), not as NIR's ``IF``: snnTorch maps ``IF`` to
``snn.Leaky(beta=0.9, reset_mechanism="subtract", init_hidden=False)`` and requires ``r == 1``, which
is neither an integrate-and-fire neuron nor a module its graph executor can chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import UserError
from ..inputs import InputSpec, ModelInput
from ..neurons import Encoding
from ..nir_read import DT, FORMAT, OUTPUT_FORM, leak_to_tau, lif_layers, read_graph
from ..student import AvgPool, Conv, Dropout, Flatten, Linear, Shortcut, SpikingStudent, table_entry
from . import nir_runtimes
from .nir_runtimes.order import ordered_reference, plain_reference
from .target import RunResult, Target


# -- export ----------------------------------------------------------------------------------
def _check(student: SpikingStudent) -> None:
    """Raise ``UserError`` naming the layer when NIR (or its importers) cannot express ``student``.

    Finite parameters and a leak in (0, 1] are checked before, by ``Target.check``.
    """
    cfg = student.config
    lifs = cfg.spiking_layers
    if cfg.reset != "hard":
        first = lifs[0] if lifs else 0
        raise UserError(
            f"layer {first}: soft reset cannot be expressed in NIR, which resets to a value; train with --reset hard"
        )
    for k, i in enumerate(lifs):
        theta = float(student.thresholds[k].detach())
        if theta <= 0:
            raise UserError(
                f"layer {i}: threshold {theta} must be a finite positive number for NIR's reset-to-zero LIF"
            )


def _conv_node(
    weight: np.ndarray, input_hw: tuple[int, ...], stride: int, padding: int, bias: np.ndarray | None = None
) -> nir.Conv2d:
    """A Conv2d node; a bias-free conv gets NIR's zero bias (adding 0 is exact in every runtime)."""
    bias = np.zeros(weight.shape[0], dtype=np.float32) if bias is None else bias
    return nir.Conv2d(
        input_shape=input_hw, weight=weight, stride=stride, padding=padding, dilation=1, groups=1, bias=bias
    )


def _weight(module: torch.nn.Module) -> np.ndarray:
    return module.get_parameter("weight").detach().cpu().numpy().astype(np.float32)


def _bias(module: torch.nn.Module) -> np.ndarray | None:
    return None if module.bias is None else module.get_parameter("bias").detach().cpu().numpy().astype(np.float32)


def _shortcut_weight(spec: Shortcut, module: torch.nn.Module) -> np.ndarray:
    """The 1x1 kernel of a shortcut: its projection, or the identity."""
    if not isinstance(module.proj, torch.nn.Module):
        return np.eye(spec.out_channels, dtype=np.float32)[:, :, None, None]
    return _weight(module.proj)


@dataclass
class _Builder:
    """The graph being written: its nodes and edges, the chain's last node, and per layer index the
    node holding that layer's output (``produced``), where a shortcut branch starts."""

    nodes: dict[str, nir.NIRNode]
    shapes: list[tuple[int, ...]]
    edges: list[tuple[str, str]] = field(default_factory=list)
    previous: str = "input"
    produced: dict[int, str] = field(default_factory=dict)
    into_lif: str | None = None  # a branch node waiting for the LIF that follows it

    def add(self, name: str, node: nir.NIRNode) -> None:
        """Append ``node`` to the chain, fed by its last node."""
        self.nodes[name] = node
        self.edges.append((self.previous, name))
        self.previous = name


def _conv_to_nir(b: _Builder, name: str, layer: Conv, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    weight = _weight(module)
    b.add(name, _conv_node(weight, shape[1:], layer.stride, layer.padding, _bias(module)))


def _linear_to_nir(b: _Builder, name: str, layer: Linear, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """``W s + b`` is NIR's Affine, ``W s`` its Linear."""
    weight = _weight(module)
    bias = _bias(module)
    b.add(name, nir.Linear(weight=weight) if bias is None else nir.Affine(weight=weight, bias=bias))


def _avgpool_to_nir(b: _Builder, name: str, layer: AvgPool, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    k = layer.kernel_size
    b.add(name, nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0])))


def _flatten_to_nir(b: _Builder, name: str, layer: Flatten, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    b.add(name, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))


def _dropout_to_nir(b: _Builder, name: str, layer: Dropout, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """No node: Dropout is the identity at inference."""


def _shortcut_to_nir(b: _Builder, name: str, layer: Shortcut, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """A branch, not a link of the chain: from its source's node into the block's LIF, a second input."""
    b.nodes[name] = _conv_node(_shortcut_weight(layer, module), b.shapes[layer.source][1:], layer.stride, 0)
    b.edges.append((b.produced[layer.source], name))
    b.into_lif = name


# layer-spec type -> its NIR node(s); the inverse is nir_read's NODES
_TO_NIR: dict[type, Callable[[_Builder, str, Any, torch.nn.Module, tuple[int, ...]], None]] = {
    Conv: _conv_to_nir,
    Linear: _linear_to_nir,
    AvgPool: _avgpool_to_nir,
    Flatten: _flatten_to_nir,
    Dropout: _dropout_to_nir,
    Shortcut: _shortcut_to_nir,
}


def to_nir_graph(student: SpikingStudent) -> nir.NIRGraph:
    """The student as NIR nodes: a chain, plus a branch per shortcut (see the module docstring)."""
    cfg = student.config
    tau, r = leak_to_tau(float(student.leak.detach()))
    thresholds = student.thresholds.detach().cpu().numpy().astype(np.float32)
    b = _Builder({"input": nir.Input(input_type={"input": np.array(cfg.input_shape)})}, cfg.shapes())
    for step, module in zip(cfg.layer_steps, student.body, strict=True):
        table_entry(_TO_NIR, type(step.spec), "the NIR exporter")(b, step.name, step.spec, module, step.in_shape)
        if step.lif is not None:
            zeros = np.zeros(step.out_shape, dtype=np.float32)
            b.add(
                f"lif{step.index}",
                nir.LIF(
                    tau=np.full(step.out_shape, tau),
                    r=np.full(step.out_shape, r),
                    v_leak=zeros,
                    v_reset=zeros.copy(),
                    v_threshold=np.full(step.out_shape, thresholds[step.lif]),
                ),
            )
            if b.into_lif is not None:
                b.edges.append((b.into_lif, b.previous))
                b.into_lif = None
        b.produced[step.index] = b.previous
    b.add("output", nir.Output(output_type={"output": np.array([cfg.num_classes])}))
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=_metadata(student))


def _metadata(student: SpikingStudent) -> dict[str, Any]:
    cfg = student.config
    return {
        "format": FORMAT,
        "arch": cfg.arch,
        "dt": DT,
        "timesteps": cfg.timesteps,
        "encoding": cfg.encoding.value,
        "reset": cfg.reset,
        "input_shape": np.array(cfg.input_shape),
        "num_classes": cfg.num_classes,
        "leak": float(student.leak.detach()),
        "output_form": OUTPUT_FORM,
        "shortcuts": " ".join(f"shortcut{i}" for i, l in enumerate(cfg.layers) if isinstance(l, Shortcut)),
        "readout": "logits = sum over the T steps of the Output node / T (the output integrator)",
        "neuron": "LIF, forward Euler at dt: v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]; reset to v_reset",
    }


class NirTarget(Target):
    """The student as a NIR graph (``nir.write``), run in a NIR importer; spike-exact in float32.

    Option ``runtime``: the importer (``exporters.nir_runtimes.RUNTIMES``) the file is written for and
    run in, and whose order of computation the reference follows. None: on export, the plain file;
    on a file, the runtime a flavoured file was written for, else snnTorch. A runtime's file is the
    plain graph in its flavour, its metadata naming the runtime (``nir_for``); ``export --nir-for R``
    is this target with ``runtime=R``.
    """

    name, suffixes = "nir", (".nir",)
    options = {"runtime": None}
    in_batches = False  # the reference's order: one image at a time (the plain file in snnTorch); see for_file
    _check = staticmethod(_check)

    @classmethod
    def for_file(cls, path: str | Path, **options: Any) -> NirTarget:
        """The target with the runtime resolved for the file at ``path`` (its own, or the one asked for)."""
        graph = read_graph(path)[0]
        target = cls(**{**options, "runtime": nir_runtimes.runtime_of(graph, options.get("runtime"), path)})
        target.in_batches = nir_runtimes.batched(graph, target.settings["runtime"])
        return target

    def _export(self, student: SpikingStudent, path: Path) -> Path:
        """Write the student's graph (in the runtime's flavour, when one is set) atomically with ``nir.write``."""
        graph = to_nir_graph(student)
        if self.settings["runtime"] is not None:
            graph = nir_runtimes.flavour(graph, self.settings["runtime"])
        with atomic_path(path) as tmp:
            nir.write(tmp, graph)
        return path

    def _input_spec(self, path: Path) -> InputSpec:
        settings = read_graph(path)[1]
        return InputSpec(Encoding(settings["encoding"]), settings["timesteps"], settings["input_shape"])

    def _run(self, path: Path, x: ModelInput) -> RunResult:
        return nir_runtimes.run(path, x, runtime=self.settings["runtime"])

    def _reference(self, student: SpikingStudent, x: ModelInput) -> RunResult:
        if self.settings["runtime"] is None:
            return plain_reference(student, x)
        return ordered_reference(student, x, in_batches=self.in_batches)

    def trace_layout(self, path: str | Path) -> tuple[float, dict[str, str]]:
        """The file's ``dt``, and the LIF node that follows each reference layer."""
        graph, settings = read_graph(path)
        return settings["dt"], {layer: node for node, layer in lif_layers(graph, path).items()}
