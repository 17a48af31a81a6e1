"""Lava target: a lava-dl netx HDF5 network, run in Lava's fixed-point simulator (docs/semantics.md, 'Lava / netx').

The file holds the Loihi-quantised mode of the student (``lasnn_deploy.loihi_quant``), which is
also what ``reference`` computes, so the Lava run must equal it spike for spike.

Layout (what ``lava.lib.dl.netx.hdf5.Network`` reads; shapes (C, H, W), conv parameters (H, W))::

    layer/0  type=input, shape    direct: the first LIF, fed its current as a bias (the host
                                  computes the first Conv/Linear once per sample); neuron/...
                                  Poisson: the input spikes' shape, no neuron
    layer/i  type=conv, shape, weight [out, in, kH, kW], stride, padding, dilation, groups, neuron/...
             type=flatten         before a dense that reads a [C, H, W] map
             type=dense, shape, weight [out, in], neuron/...
    neuron   type=CUBA, iDecay=4096, vDecay, vThMant, refDelay=1, gradedSpike=False
    layer/i/bias  (a layer with a bias) its bias mantissas [out], int; netx sets them as the
             neurons' bias_mant (per channel for a conv) with its fixed bias_exp 6
    host/    (direct only) the first layer, weight (and bias, if any) in float64; attrs kind, stride,
             padding, scale, v_th, out_shape: ``run`` turns images into the input block's bias with them

A residual student (``Shortcut`` layers) is refused: netx chains each block to the next only.

The last dense is the output integrator (no leak, vThMant = 2**17 - 1, never fires): its voltage
after step T gives the logits. Root attributes: format, timesteps, encoding, input_shape,
num_classes, v_decay, weight_percentile, layer_names, scales, lif_layers, output_scale.

Running: every sample goes through ONE long Lava run, T steps each, with netx's
``reset_interval = T``: each layer's neurons reset at the start of its own window, and each
window starts one step after the previous layer's (every Dense/Conv adds one step of latency), so
a sample's spikes of on-chip layer k sit at steps ``b*T + t + k + 1``. The processes of
``lava_stream`` feed and read it, one message per sample: a source writes each sample's input
bias at its interval (direct) or plays its Poisson spikes; sinks send each layer's spikes, and the
output voltage at the end of each window, back to the host. The run advances ``CHUNK`` samples
per ``net.run``, so memory holds one chunk however many samples stream through.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import UserError
from ..inputs import InputSpec, ModelInput
from ..loihi_quant import LoihiNet, QuantLayer, host_bias, quantise, readout_logits, run_quantised
from ..neurons import Encoding
from ..student import AvgPool, Conv, Dropout, Flatten, Linear, SpikingStudent
from .target import RunResult, Target

FORMAT = "lasnn-deploy-netx/1"
CHUNK = 32  # samples per net.run: the progress bar moves, the pipes hold one chunk
NETX_LAYER_TYPES = (Conv, Linear, AvgPool, Flatten, Dropout)  # AvgPool folded, Dropout dropped


def _check(student: SpikingStudent, weight_percentile: float = 100.0) -> None:
    """Raise ``UserError`` naming the layer when netx cannot express ``student`` or its quantisation fails."""
    _quantised(student, weight_percentile)


def _quantised(student: SpikingStudent, weight_percentile: float) -> LoihiNet:
    for i, layer in enumerate(student.config.layers):
        if layer.sources:  # reads an earlier layer than its input
            raise UserError(
                f"lava-dl netx describes feed-forward layer chains; {student.config.arch} has residual "
                f"shortcuts (layer {i}): export it to onnx or nir instead"
            )
        if not isinstance(layer, NETX_LAYER_TYPES):
            raise UserError(
                f"layer {i} ({layer.type}): netx has no such layer; Lava export supports conv, linear, "
                "avgpool (folded into the next layer), flatten and dropout"
            )
    return quantise(student, weight_percentile)


def _export(student: SpikingStudent, path: Path, weight_percentile: float = 100.0) -> Path:
    """Write the Loihi-quantised (checked) student as a netx HDF5 file, atomically."""
    net = quantise(student, weight_percentile)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write(f, net, weight_percentile)
    return path


def _str(group: h5py.Group, name: str, value: str) -> None:
    group.create_dataset(name, (1,), f"S{max(len(value), 1)}", [value.encode("ascii")])


def _neuron(group: h5py.Group, v_decay: int, v_th: int) -> None:
    n = group.create_group("neuron")
    _str(n, "type", "CUBA")
    for key, value in (("iDecay", 4096), ("vDecay", v_decay), ("vThMant", v_th), ("refDelay", 1)):
        n.create_dataset(key, data=np.int64(value))
    n.create_dataset("gradedSpike", data=False)


def _write(f: h5py.File, net: LoihiNet, weight_percentile: float) -> None:
    f.attrs.update(
        format=FORMAT,
        timesteps=net.timesteps,
        encoding=Encoding(net.encoding).value,
        input_shape=net.input_shape,
        num_classes=net.num_classes,
        v_decay=net.v_decay,
        weight_percentile=weight_percentile,
        layer_names=[q.name for q in net.layers],
        scales=[q.scale for q in net.layers],
        lif_layers=net.lif_names,
        output_scale=net.output_scale,
    )
    layers = f.create_group("layer")
    blocks: list[tuple[str, QuantLayer | None]] = []  # (type, layer or None)
    on_chip = net.layers
    if net.encoding == Encoding.DIRECT:
        host, on_chip = net.layers[0], net.layers[1:]
        h = f.create_group("host")
        h.create_dataset("weight", data=host.weight)
        if host.bias is not None:
            h.create_dataset("bias", data=host.bias)
        h.attrs.update(
            kind=host.kind,
            stride=host.stride,
            padding=host.padding,
            scale=host.scale,
            v_th=host.v_th,
            out_shape=host.out_shape,
        )
    for q in on_chip:
        if q.flatten_before:
            blocks.append(("flatten", None))
        blocks.append(("conv" if q.convolutional else "dense", q))
    g = layers.create_group("0")
    _str(g, "type", "input")
    if net.encoding == Encoding.DIRECT:
        g.create_dataset("shape", data=np.array(net.layers[0].out_shape))
        _neuron(g, net.v_decay, net.layers[0].v_th)
    else:
        g.create_dataset("shape", data=np.array(net.input_shape))
    for i, (kind, block) in enumerate(blocks, start=1):
        g = layers.create_group(str(i))
        _str(g, "type", kind)
        if block is None:
            continue
        g.create_dataset("shape", data=np.array(block.out_shape))
        g.create_dataset("weight", data=block.weight)
        if block.bias is not None:  # netx: the neurons' bias_mant (per channel for a conv), bias_exp 6
            g.create_dataset("bias", data=block.bias)
        if block.convolutional:
            for key, value in (("stride", block.stride), ("padding", block.padding), ("dilation", 1)):
                g.create_dataset(key, data=np.array([value, value]))
            g.create_dataset("groups", data=np.int64(1))
        _neuron(g, 0 if block.is_output else net.v_decay, block.v_th)


# -- running in Lava ---------------------------------------------------------------------------
def _host_layer(f: h5py.File) -> QuantLayer:
    a = f["host"].attrs
    return QuantLayer(
        name="host",
        kind=str(a["kind"]),
        weight=f["host/weight"][()],
        scale=float(a["scale"]),
        v_th=int(a["v_th"]),
        in_shape=(),
        out_shape=tuple(a["out_shape"]),
        stride=int(a["stride"]),
        padding=int(a["padding"]),
        on_host=True,
        bias=f["host/bias"][()] if "host/bias" in f else None,
    )


def read_metadata(path: str | Path) -> dict:
    """The root attributes of a netx file written by ``export``; ``UserError`` for any other file."""
    try:
        with h5py.File(path, "r") as f:
            meta = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    except OSError as err:
        raise UserError(f"{path} is not a readable HDF5 file ({err})") from err
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a lasnn-deploy netx file (format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def _input_spec(path: Path) -> InputSpec:
    meta = read_metadata(path)
    return InputSpec(Encoding(meta["encoding"]), int(meta["timesteps"]), tuple(meta["input_shape"]))


def _run(path: Path, given: ModelInput) -> RunResult:
    """Run the netx file in Lava's fixed-point simulator on a checked input: the images (direct) or spikes (Poisson).

    Spikes come back as ``[T, B, ...]`` per LIF layer in torch's layout, logits as ``[B, K]``.
    """
    return _concat(list(_run_stream(path, [given])))


def _run_stream(path: Path, inputs: Iterable[ModelInput], chunk: int = CHUNK) -> Iterator[RunResult]:
    """Run every checked input, in order, through ONE long Lava run; yield each input's ``RunResult`` as it completes.

    The network is built and compiled once; the samples follow each other at intervals of T steps
    (module docstring). Memory holds one chunk of ``chunk`` samples, however many are streamed.
    """
    meta = read_metadata(path)
    T, direct = int(meta["timesteps"]), meta["encoding"] == Encoding.DIRECT
    host: QuantLayer | None = None
    if direct:
        with h5py.File(path, "r") as f:
            host = _host_layer(f)

    def drives() -> Iterator[np.ndarray]:
        for given in inputs:
            if host is not None:
                yield host_bias(host, given.image()).numpy()  # [B, ...] bias mantissas
            else:
                yield np.moveaxis(_numpy(given.steps(T)), 0, -1)  # [B, ..., T]

    names, scale = list(meta["lif_layers"]), float(meta["output_scale"])
    for voltages, spikes in _simulate(Path(path), drives(), T, direct, chunk):
        yield RunResult(logits=readout_logits(voltages, scale, T), spikes=spikes, layer_names=names)


def _concat(results: list[RunResult]) -> RunResult:
    """One ``RunResult`` of consecutive batches (samples on axis 0 of logits, axis 1 of spikes)."""
    if len(results) == 1:
        return results[0]
    spikes = None
    if all(r.spikes is not None for r in results):
        layers = zip(*(r.spikes or [] for r in results), strict=True)
        spikes = [np.concatenate(layer, axis=1) for layer in layers]
    return RunResult(
        logits=np.concatenate([r.logits for r in results]),
        spikes=spikes,
        layer_names=results[0].layer_names,
    )


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _lava_order(x: np.ndarray, spatial: bool) -> np.ndarray:
    """torch's [..., C, H, W] <-> Lava's [..., W, H, C] (x, y, z); non-spatial data stays."""
    return np.swapaxes(x, -1, -3) if spatial else x


def _simulate(
    path: Path, drives: Iterable[np.ndarray], T: int, direct: bool, chunk: int = CHUNK
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Stream batches of drive (direct: bias ``[B, ...]``; Poisson: spikes ``[B, ..., T]``) through one Lava run.

    Yields, per batch and in order, output voltages ``[B, K]`` and spikes ``[T, B, ...]`` per LIF
    layer (torch's layout). Runs ``chunk`` samples per ``net.run``; a batch's last samples come
    out once the pipeline has moved on by its latency, so a batch is yielded during the next
    one's run (or the final drain).
    """
    from ..lava_compat import import_netx

    netx = import_netx()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv as ConvSynapse

    from .lava_conv import MatmulConvModel
    from .lava_stream import MODELS, BiasSource, SpikeSource, VoltageSink, WindowSink

    drives = iter(drives)
    first = next(drives, None)  # checked before the runtime starts: a runtime never run cannot be stopped
    if first is None:
        return
    drives = itertools.chain([first], drives)
    # Every layer's window starts one step after its input's: the bias (direct) is written after
    # step b*T, the source's spikes (Poisson) reach the first LIF one step after they are sent.
    net = netx.hdf5.Network(net_config=str(path), reset_interval=T, reset_offset=1)
    lif_blocks, out_block = net.layers[:-1], net.layers[-1]
    latency = len(net.layers)  # lag of the output layer's window: one step per block, plus the input's
    pad = -(-latency // T)  # empty windows fed after the last sample while the pipeline drains
    buffer = chunk + pad
    in_shape = net.layers[0].shape if direct else net.inp.shape
    spatial_in = len(in_shape) == 3
    if direct:
        source = BiasSource(tuple(in_shape), T, buffer)
        source.connect_var(net.layers[0].neuron.bias_mant)
    else:
        source = SpikeSource(tuple(in_shape), T, buffer)
        source.s_out.connect(net.inp)
    sinks = []
    for k, block in enumerate(lif_blocks):
        sinks.append(WindowSink(tuple(block.out.shape), T, lag=k + 1, buffer=buffer))
        block.out.connect(sinks[-1].a_in)
    voltage = VoltageSink(tuple(out_block.neuron.v.shape), T, lag=latency, buffer=buffer)
    voltage.connect_var(out_block.neuron.v)
    models: dict[object, type] = {p: MODELS[type(p)] for p in (source, *sinks, voltage)}
    models.update(
        {b.synapse: MatmulConvModel for b in net.layers if isinstance(getattr(b, "synapse", None), ConvSynapse)}
    )
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=models)
    net.create_runtime(run_cfg=cfg)

    def send(sample: np.ndarray) -> None:
        if direct:
            source.send(_lava_order(sample, spatial_in).astype(np.int32))
        else:
            frames = np.moveaxis(_lava_order(np.moveaxis(sample, -1, 0), spatial_in), 0, -1)
            source.send(frames.reshape(*in_shape, T).astype(np.int32))

    windows: list[list[np.ndarray]] = [[] for _ in sinks]
    voltages: list[np.ndarray] = []
    received = [0] * (len(sinks) + 1)
    steps = 0
    batches: list[int] = []  # sizes of the batches fed and not yet yielded

    def advance(num_steps: int) -> None:
        nonlocal steps
        net.run(condition=RunSteps(num_steps=num_steps), run_cfg=cfg)
        steps += num_steps
        taps: list[tuple[WindowSink | VoltageSink, int]] = [
            *((s, k + 1) for k, s in enumerate(sinks)),
            (voltage, latency),
        ]
        for i, (sink, lag) in enumerate(taps):
            done = max(0, (steps - lag) // T)
            store = voltages if sink is voltage else windows[i]
            store.extend(sink.receive() for _ in range(done - received[i]))
            received[i] = done

    def ready() -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        while batches and len(voltages) >= batches[0]:
            n = batches.pop(0)
            out = np.stack(voltages[:n]).astype(np.int64)
            del voltages[:n]
            layers = []
            for store, block in zip(windows, lif_blocks, strict=True):
                w = np.moveaxis(np.stack(store[:n]), -1, 0)  # [T, n, ...] in Lava's order
                del store[:n]
                layers.append(_lava_order(w, len(block.shape) == 3).astype(np.float32))
            yield out, layers

    try:
        for drive in drives:
            batches.append(len(drive))
            for start in range(0, len(drive), chunk):
                part = drive[start : start + chunk]
                for sample in part:
                    send(sample)
                advance(len(part) * T)
                yield from ready()
        zero = np.zeros(tuple(in_shape) if direct else (*in_shape, T), dtype=np.int32)
        for _ in range(pad):
            source.send(zero)
        advance(latency)
        yield from ready()
    finally:
        net.stop()


def _reference(student: SpikingStudent, given: ModelInput, weight_percentile: float = 100.0) -> RunResult:
    """What the Lava run must reproduce: the student's Loihi-quantised mode, in PyTorch."""
    net = _quantised(student, weight_percentile)
    trace = run_quantised(net, given.images, input_spikes=given.spikes)
    return RunResult(
        logits=trace.logits.numpy(),
        spikes=[s.numpy().astype(np.float32) for s in trace.spikes],
        layer_names=net.lif_names,
    )


class LavaTarget(Target):
    """The Loihi-quantised student as a lava-dl netx HDF5 file, run in Lava's fixed-point simulator; spike-exact.

    Option ``weight_percentile``: of the weights that set each layer's 8-bit scale (100: the largest).
    """

    name, suffixes = "lava", (".h5", ".hdf5", ".net")
    options = {"weight_percentile": 100.0}
    chunk = CHUNK

    def _check(self, student: SpikingStudent) -> None:
        _check(student, self.settings["weight_percentile"])

    def _export(self, student: SpikingStudent, path: Path) -> Path:
        return _export(student, path, self.settings["weight_percentile"])

    def _input_spec(self, path: Path) -> InputSpec:
        return _input_spec(path)

    def _run(self, path: Path, x: ModelInput) -> RunResult:
        return _run(path, x)

    def run_stream(self, path: str | Path, inputs: Iterable[ModelInput]) -> Iterator[RunResult]:
        """All ``inputs``, each checked like ``run``'s, through one long Lava run (compiled once),
        each one's result as it completes."""
        path = Path(path)
        spec = self._input_spec(path)
        return _run_stream(path, (spec.check(given, path) for given in inputs), self.chunk)

    def _reference(self, student: SpikingStudent, x: ModelInput) -> RunResult:
        return _reference(student, x, self.settings["weight_percentile"])
