"""ONNX target: the student with its ``T`` steps unrolled into one graph (docs/semantics.md, 'ONNX').

The graph is built node by node with ``onnx.helper`` rather than traced with ``torch.onnx.export``,
because spike-exactness is the point of this target and a hand-built graph controls every rounding
step: each node mirrors one tensor operation of ``SpikingStudent.run(..., exact=True)`` in the same
order, the recurrence is written out per step (``u = leak * u + i; s = u > theta; u = u * (1 - s)``
or ``u = u - theta * s``), the spike values get stable names that ``run`` can tap, and the result
does not depend on the exporter version or on tracing the autograd ``SpikeFn``.

Layout of the graph (``T`` steps, batch ``B`` dynamic):

- input ``image [B, C, H, W]`` (direct encoding: the layers before the first LIF run once, as in
  ``SpikingStudent.run``) or ``spikes [T, B, C, H, W]`` (Poisson: reshaped to ``[T * B, ...]``);
- every Conv/Linear after the first LIF runs once on the spikes of all steps ``[T * B, ...]``;
  its current is split into ``T`` step currents for the LIF recurrence, whose step spikes are
  concatenated again (value ``lif<k>_spikes``, ``[T * B, ...]``);
- a ``Shortcut`` adds the tensor its source layer produced earlier in the walk (spikes cast to
  float64, or their float64 pool), through a float64 1x1 convolution when it projects, to the
  block's float64 conv current, before that current's one rounding at the LIF;
- a Conv or Linear with a bias ``Add``s it (float64, ``[C, 1, 1]`` for a conv) right after its
  synaptic sum, as ``run(exact=True)`` does, so the bias is inside the current's one rounding;
- outputs ``logits [B, K]`` (``sum_t (W_out s_L[t] + b) / T``) and ``spike_count_<k> [B]`` per LIF layer.

Rounding ("round once", metadata ``currents: float64-rounded``). Plain float32 Conv/MatMul kernels
of PyTorch (oneDNN, MKL) and onnxruntime (MLAS) add their terms in different orders, so a spike
flipped wherever ``u`` lay within a float32 rounding step of ``theta`` (how often: docs/results.md,
"Numbers behind the code's reasons"). So every synaptic operation (Conv,
AvgPool, Flatten, Linear) runs in float64 on float64 weights, and its current is cast to float32
once, right before the LIF: a float64 sum of float32 products is exact or within 2^-53 of it, so
the float32 current no longer depends on the order of the terms. The LIF recurrence runs in
float32 with one IEEE operation per step on both sides; the logits are the float64 mean over the
steps cast to float32. onnxruntime's CPU provider has no float64 ``Conv`` or ``AveragePool``, so a
convolution is one float64 ``MatMul`` per kernel offset over strided slices of the padded input
(summed in offset order) and a pool is its window's strided slices added, then divided by ``k * k``
(PyTorch's order).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..atomic import atomic_path
from ..errors import UserError
from ..inputs import InputSpec, ModelInput
from ..modes import eval_mode
from ..neurons import Encoding
from ..student import (
    AvgPool,
    Conv,
    Dropout,
    Flatten,
    LayerStep,
    Linear,
    ResidualAdd,
    Shortcut,
    SpikingStudent,
    flow,
    table_entry,
)
from .target import RunResult, Target

FORMAT = "lasnn-deploy-onnx/2"  # /1: float32 currents (not spike-exact)
CURRENTS = "float64-rounded"
OPSET = 17
IR_VERSION = 8  # the IR version that came with opset 17; onnxruntime >= 1.13 reads it
MAX_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit for one file, less room for the graph
BATCH = "batch"
RUN_CHUNK = 256  # samples per onnxruntime call in ``run``: bounds the float64 intermediates


def lif_layer_names(student: SpikingStudent) -> list[str]:
    """Names of the LIF layers, after the Conv/Linear they follow (``conv0``, ``linear6``...)."""
    return [step.name for step in student.config.layer_steps if step.lif is not None]


def _check(student: SpikingStudent) -> None:
    """ONNX expresses every student (soft reset included); refuse only what one file cannot hold."""
    params = sum(p.numel() for m in student.weighted_modules() for p in m.parameters())
    if params * 8 > MAX_BYTES:  # weights and biases are stored in float64
        raise UserError(
            f"the student has {params:,} weights, more than one .onnx file can hold "
            "(2 GiB in float64); use a smaller student"
        )


def _export(student: SpikingStudent, path: Path) -> Path:
    """Write ``student`` as one self-contained ``.onnx`` file (atomic) and return its path."""
    data = build_model(student).SerializeToString()
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    return path


@dataclass(frozen=True)
class _Value:
    """What passes between two layers of the graph: the ONNX value ``name``, whether it is float64
    (a current, or a pool of spikes) rather than float32 (spikes, the input), and whether it is still
    ``[B, ...]`` (direct encoding before the first LIF) rather than ``[T * B, ...]``."""

    name: str
    double: bool
    static: bool


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _with_bias(g: _Graph, h: str, i: int, module: nn.Conv2d | nn.Linear, shape: tuple[int, ...]) -> str:
    """``W * s + b`` in float64, like run(exact=True); a conv's bias is ``[C, 1, 1]``, broadcast over its map."""
    if module.bias is None:
        return h
    return g.op("Add", h, g.const(_float64(module.bias).reshape(shape), f"bias{i}"))


def _conv_to_onnx(g: _Graph, h: str, step: LayerStep, module: nn.Conv2d, saved: Mapping[int, _Value]) -> str:
    spec = cast(Conv, step.spec)
    h = g.conv(h, _float64(module.weight), spec.stride, spec.padding, _map(step.out_shape))
    return _with_bias(g, h, step.index, module, (-1, 1, 1))


def _linear_to_onnx(g: _Graph, h: str, step: LayerStep, module: nn.Linear, saved: Mapping[int, _Value]) -> str:
    h = g.op("MatMul", h, g.const(np.ascontiguousarray(_float64(module.weight).T), f"weight{step.index}"))
    return _with_bias(g, h, step.index, module, (-1,))


def _avgpool_to_onnx(g: _Graph, h: str, step: LayerStep, module: nn.Module, saved: Mapping[int, _Value]) -> str:
    return g.avgpool(h, cast(AvgPool, step.spec).kernel_size, _map(step.out_shape))


def _flatten_to_onnx(g: _Graph, h: str, step: LayerStep, module: nn.Module, saved: Mapping[int, _Value]) -> str:
    return g.op("Flatten", h, axis=1)


def _dropout_to_onnx(g: _Graph, h: str, step: LayerStep, module: nn.Module, saved: Mapping[int, _Value]) -> str:
    """No node: the identity at inference."""
    return h


def _shortcut_to_onnx(g: _Graph, h: str, step: LayerStep, module: ResidualAdd, saved: Mapping[int, _Value]) -> str:
    spec = cast(Shortcut, step.spec)
    weight = None if module.proj is None else _float64(module.proj.weight)
    source = saved[spec.source]
    return g.op("Add", h, g.shortcut(source.name, source.double, weight, spec.stride, _map(step.out_shape)))


def _map(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A layer's ``[C, H, W]`` output shape as such (a conv's, a pool's, a shortcut's: ``StudentConfig`` checked it)."""
    c, h, w = shape
    return c, h, w


# layer-spec type -> its float64 ONNX nodes, given the value ``h`` the layer reads; returns its output
_TO_ONNX: dict[type, Callable[[_Graph, str, LayerStep, Any, Mapping[int, _Value]], str]] = {
    Conv: _conv_to_onnx,
    Linear: _linear_to_onnx,
    AvgPool: _avgpool_to_onnx,
    Flatten: _flatten_to_onnx,
    Dropout: _dropout_to_onnx,
    Shortcut: _shortcut_to_onnx,
}


def build_model(student: SpikingStudent) -> onnx.ModelProto:
    """The unrolled graph of ``student``, checked with ``onnx.checker``."""
    cfg = student.config
    g = _Graph()
    T = cfg.timesteps
    leak = g.const(student.leak.detach().cpu().float().numpy(), "leak")
    thresholds = student.thresholds.detach().cpu().float().numpy()

    if cfg.encoding is Encoding.DIRECT:
        inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [BATCH, *cfg.input_shape])]
        start = _Value("image", double=False, static=True)
    else:
        inputs = [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, [T, BATCH, *cfg.input_shape])]
        spikes = g.op("Reshape", "spikes", g.const(np.array([-1, *cfg.input_shape], np.int64)))
        start = _Value(spikes, double=False, static=False)
    outputs = []

    def through(step: LayerStep, x: _Value, saved: Mapping[int, _Value]) -> _Value:
        h = x.name if x.double else g.op("Cast", x.name, to=TensorProto.DOUBLE)
        h = table_entry(_TO_ONNX, type(step.spec), "the ONNX exporter")(g, h, step, student.body[step.index], saved)
        return _Value(h, double=True, static=x.static)

    def fire(step: LayerStep, k: int, x: _Value) -> _Value:
        current = g.op("Cast", x.name, to=TensorProto.FLOAT)  # the one rounding of the current
        currents = [current] * T if x.static else g.split(current, T)
        h = g.lif(currents, leak, g.const(thresholds[k], f"threshold{k}"), cfg.reset, name=f"lif{k}_spikes")
        neurons = int(np.prod(step.out_shape))
        per_step = g.op("Reshape", h, g.const(np.array([T, -1, neurons], np.int64)))
        g.op("ReduceSum", per_step, g.const(np.array([0, 2], np.int64)), keepdims=0, name=f"spike_count_{k}")
        outputs.append(helper.make_tensor_value_info(f"spike_count_{k}", TensorProto.FLOAT, [BATCH]))
        return _Value(h, double=False, static=False)

    out = flow(cfg.layer_steps, start, through, fire)
    h = out.name
    if not out.static:  # output integrator: u_out[T] / T, the float64 mean over steps like torch's mean(0)
        per_step = g.op("Reshape", h, g.const(np.array([T, -1, cfg.num_classes], np.int64)))
        total = g.op("ReduceSum", per_step, g.const(np.array([0], np.int64)), keepdims=0)
        h = g.op("Div", total, g.const(np.array(T, np.float64)))
    # else: direct encoding without any LIF layer, the output layer sees the image once
    g.op("Cast", h, to=TensorProto.FLOAT, name="logits")
    outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, cfg.num_classes]))

    graph = helper.make_graph(g.nodes, f"{cfg.arch}_T{T}", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="lasnn-deploy",
        doc_string=f"LaSNN student {cfg.arch}, {T} time steps unrolled, docs/semantics.md; "
        "synaptic currents in float64, rounded once to float32 at each LIF",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "format": FORMAT,
            "currents": CURRENTS,
            "timesteps": str(T),
            "encoding": cfg.encoding.value,
            "reset": cfg.reset,
            "input_shape": json.dumps(list(cfg.input_shape)),
            "num_classes": str(cfg.num_classes),
            "layer_names": json.dumps(lif_layer_names(student)),
            "student_config": json.dumps(cfg.to_dict()),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


class _Graph:
    """Collects nodes and initializers; every ``op`` returns the name of its (first) output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def _name(self, stem: str) -> str:
        return f"{stem}_{len(self.nodes) + len(self.initializers)}"

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, np.int64))

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs) -> str:
        out = name or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{len(self.nodes)}", **attrs))
        return out

    def split(self, h: str, parts: int) -> list[str]:
        """``[T * B, ...]`` -> ``T`` tensors ``[B, ...]`` (equal parts along axis 0)."""
        outs = [self._name(f"step{t}") for t in range(parts)]
        self.nodes.append(helper.make_node("Split", [h], outs, name=f"Split_{len(self.nodes)}", axis=0))
        return outs

    def window(self, h: str, dy: int, dx: int, step: int, out_hw: tuple[int, int]) -> str:
        """``h[:, :, dy::step, dx::step]`` cut to ``out_hw``: the inputs at one window offset."""
        ends = (dy + step * (out_hw[0] - 1) + 1, dx + step * (out_hw[1] - 1) + 1)
        return self.op("Slice", h, self.ints(dy, dx), self.ints(*ends), self.ints(2, 3), self.ints(step, step))

    def conv(self, h: str, weight: np.ndarray, stride: int, padding: int, out_shape: tuple[int, int, int]) -> str:
        """Float64 convolution without a Conv node: ``sum over (a, b) of W[:, :, a, b] @ x[a::s, b::s]``.

        The input goes channels-first (``[C, N, H, W]``) so that each kernel offset is one large
        ``[O, C] @ [C, N * OH * OW]`` MatMul; no im2col buffer ``kh * kw`` times the input is built.
        """
        out_channels, channels, kh, kw = weight.shape
        x = self.op("Transpose", h, perm=[1, 0, 2, 3])
        if padding:
            x = self.op("Pad", x, self.ints(0, 0, padding, padding, 0, 0, padding, padding))
        total = ""  # the sum so far; empty before the first term
        for a in range(kh):
            for b in range(kw):
                cols = self.op("Reshape", self.window(x, a, b, stride, out_shape[1:]), self.ints(channels, -1))
                part = self.op("MatMul", self.const(np.ascontiguousarray(weight[:, :, a, b])), cols)
                total = part if not total else self.op("Add", total, part)
        y = self.op("Reshape", total, self.ints(out_channels, -1, *out_shape[1:]))
        return self.op("Transpose", y, perm=[1, 0, 2, 3])

    def shortcut(
        self, source: str, is_double: bool, weight: np.ndarray | None, stride: int, out_shape: tuple[int, int, int]
    ) -> str:
        """A residual input in float64: the source as it is, or through its 1x1 projection ``weight``."""
        x = source if is_double else self.op("Cast", source, to=TensorProto.DOUBLE)
        return x if weight is None else self.conv(x, weight, stride, 0, out_shape)

    def avgpool(self, h: str, k: int, out_shape: tuple[int, int, int]) -> str:
        """Float64 average pool: the window's slices added row by row, then divided by ``k * k`` (torch's order)."""
        total = ""  # the sum so far; empty before the first term
        for dy in range(k):
            for dx in range(k):
                part = self.window(h, dy, dx, k, out_shape[1:])
                total = part if not total else self.op("Add", total, part)
        return self.op("Div", total, self.const(np.array(k * k, np.float64)))

    def lif(self, currents: list[str], leak: str, theta: str, reset: str, name: str) -> str:
        """The LIF recurrence for one layer, step by step in float32; returns the step spikes concatenated on axis 0."""
        one = self.const(np.array(1.0, np.float32)) if reset == "hard" and len(currents) > 1 else ""
        spikes, u = [], None
        for t, current in enumerate(currents):
            u = current if u is None else self.op("Add", self.op("Mul", leak, u), current)  # leak * 0 + i == i
            s = self.op("Cast", self.op("Greater", u, theta), to=TensorProto.FLOAT)
            spikes.append(s)
            if t < len(currents) - 1:
                u = (
                    self.op("Mul", u, self.op("Sub", one, s))
                    if reset == "hard"
                    else self.op("Sub", u, self.op("Mul", theta, s))
                )
        return self.op("Concat", *spikes, axis=0, name=name)


# -- running the file --------------------------------------------------------------------------
def _load(path: Path) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model and its metadata; one UserError for a missing, truncated, outdated or foreign file."""
    if not path.is_file():
        raise UserError(
            f"no ONNX file at {path}; create one with `lasnn-deploy export MODEL --target onnx --out {path}`"
        )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, checker ValidationError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable ONNX model ({first}); export it again") from err
    meta = {p.key: p.value for p in model.metadata_props}
    found = meta.get("format", "")
    if found != FORMAT and found.startswith(FORMAT.split("/")[0] + "/"):
        raise UserError(f"{path} is an older lasnn-deploy ONNX export ({found}, not spike-exact); export it again")
    if found != FORMAT:
        raise UserError(f"{path} is not a lasnn-deploy ONNX export (format {found or None!r}, expected {FORMAT!r})")
    return model, meta


def _numpy(x) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float32, copy=False)


def _feed(meta: dict[str, str], x: ModelInput) -> tuple[str, np.ndarray]:
    """The graph input for an input ``Target.run`` checked against the file: the image (direct), else the spikes."""
    if meta["encoding"] == Encoding.DIRECT:
        return "image", _numpy(x.image())
    return "spikes", _numpy(x.steps(int(meta["timesteps"])))


def _input_spec(path: Path) -> InputSpec:
    meta = _load(path)[1]
    return InputSpec(Encoding(meta["encoding"]), int(meta["timesteps"]), tuple(json.loads(meta["input_shape"])))


def _run(path: Path, x: ModelInput) -> RunResult:
    """Run the file in onnxruntime (CPU, default optimisations) and return logits and the spikes of every LIF layer.

    The spike tensors are internal values of the graph; they are made outputs of an in-memory copy
    of the model, so the file on disk stays as exported. Samples go through in chunks of
    ``RUN_CHUNK`` so that the float64 intermediates stay small for any number of samples.
    """
    import onnxruntime as ort

    model, meta = _load(path)
    name, feed = _feed(meta, x)
    names = json.loads(meta["layer_names"])
    taps = [f"lif{k}_spikes" for k in range(len(names))]
    for tap in taps:
        model.graph.output.append(helper.make_tensor_value_info(tap, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    T, batch_axis = int(meta["timesteps"]), 0 if name == "image" else 1
    chunks = []
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for start in range(0, feed.shape[batch_axis], RUN_CHUNK):
            part = feed[start : start + RUN_CHUNK] if batch_axis == 0 else feed[:, start : start + RUN_CHUNK]
            logits, *spikes = session.run(["logits", *taps], {name: part})
            chunks.append((logits, [s.reshape(T, len(logits), *s.shape[1:]) for s in spikes]))
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise UserError(f"onnxruntime cannot run {path} ({str(err).strip().splitlines()[0]}); export it again") from err
    return RunResult(
        logits=np.concatenate([c[0] for c in chunks]),
        spikes=[np.concatenate([c[1][k] for c in chunks], axis=1) for k in range(len(taps))],
        layer_names=names,
    )


def _reference(student: SpikingStudent, given: ModelInput) -> RunResult:
    """The PyTorch student on the same inputs in its exact mode (what the ONNX file reproduces bit for bit).

    ``exact=True`` computes the currents in float64 and rounds them once, like the graph. Samples
    go through in chunks of ``RUN_CHUNK`` (float64 currents take twice the memory of float32).
    """
    dtype = student.leak.dtype  # float32; float64 for a student converted with .double()
    input_spikes = given.spikes
    x = torch.as_tensor(input_spikes if input_spikes is not None else given.images, dtype=dtype)
    batch_axis = 0 if input_spikes is None else 1
    traces = []
    with eval_mode(student), torch.no_grad():
        for part in torch.split(x, RUN_CHUNK, dim=batch_axis):
            if input_spikes is not None:
                traces.append(student.run(input_spikes=part, record=True, exact=True))
            else:
                traces.append(student.run(part, record=True, exact=True))
    return RunResult(
        logits=torch.cat([t.logits for t in traces]).numpy(),
        spikes=[torch.cat([t.spikes[k] for t in traces], dim=1).numpy() for k in range(len(traces[0].spikes))],
        layer_names=lif_layer_names(student),
    )


class OnnxTarget(Target):
    """The student unrolled over T in one ONNX graph, run in onnxruntime; bit-exact against ``run(exact=True)``."""

    name, suffixes = "onnx", (".onnx",)
    chunk = 32  # validate's batch: onnxruntime's float64 intermediates of 64 samples took validate past 1.5 GB (docs/performance.md)

    def _check(self, student: SpikingStudent) -> None:
        _check(student)

    def _export(self, student: SpikingStudent, path: Path) -> Path:
        return _export(student, path)

    def _input_spec(self, path: Path) -> InputSpec:
        return _input_spec(path)

    def _run(self, path: Path, x: ModelInput) -> RunResult:
        return _run(path, x)

    def _reference(self, student: SpikingStudent, x: ModelInput) -> RunResult:
        return _reference(student, x)
