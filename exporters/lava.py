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

Running: the samples go through one Lava network back to back, T steps each, with netx's
``reset_interval = T``: each layer's neurons reset at the start of its own window, and each
window starts one step after the previous layer's (every Dense/Conv adds one step of latency), so
a sample's spikes of on-chip layer k sit at steps ``b*T + t + k + offset``. Direct encoding pauses
between samples to set the input block's bias; Poisson input plays from a ``RingBuffer`` source.
``Extractor`` processes stream every layer's spikes out, a ``Read`` process samples the output
voltage at the end of each window.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import UserError
from ..inputs import InputSpec, ModelInput
from ..loihi_quant import LoihiNet, QuantLayer, host_bias, quantise, readout_logits, run_quantised
from ..neurons import Encoding
from ..student import AvgPool, Conv, Dropout, Flatten, Linear, Shortcut, SpikingStudent
from .target import RunResult, Target

FORMAT = "lasnn-deploy-netx/1"
NETX_LAYER_TYPES = (Conv, Linear, AvgPool, Flatten, Dropout)  # AvgPool folded, Dropout dropped


def _check(student: SpikingStudent, weight_percentile: float = 100.0) -> None:
    """Raise ``UserError`` naming the layer when netx cannot express ``student`` or its quantisation fails."""
    _quantised(student, weight_percentile)


def _quantised(student: SpikingStudent, weight_percentile: float) -> LoihiNet:
    for i, layer in enumerate(student.config.layers):
        if isinstance(layer, Shortcut):
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
        blocks.append(("conv" if q.kind == "conv" else "dense", q))
    g = layers.create_group("0")
    _str(g, "type", "input")
    if net.encoding == Encoding.DIRECT:
        g.create_dataset("shape", data=np.array(net.layers[0].out_shape))
        _neuron(g, net.v_decay, net.layers[0].v_th)
    else:
        g.create_dataset("shape", data=np.array(net.input_shape))
    for i, (kind, q) in enumerate(blocks, start=1):
        g = layers.create_group(str(i))
        _str(g, "type", kind)
        if q is None:
            continue
        g.create_dataset("shape", data=np.array(q.out_shape))
        g.create_dataset("weight", data=q.weight)
        if q.bias is not None:  # netx: the neurons' bias_mant (per channel for a conv), bias_exp 6
            g.create_dataset("bias", data=q.bias)
        if kind == "conv":
            for key, value in (("stride", q.stride), ("padding", q.padding), ("dilation", 1)):
                g.create_dataset(key, data=np.array([value, value]))
            g.create_dataset("groups", data=np.int64(1))
        _neuron(g, 0 if q.is_output else net.v_decay, q.v_th)


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
    meta = read_metadata(path)
    T, direct = int(meta["timesteps"]), meta["encoding"] == Encoding.DIRECT
    if direct:
        with h5py.File(path, "r") as f:
            drive = host_bias(_host_layer(f), given.image()).numpy()  # [B, ...] bias mantissas
    else:
        drive = np.moveaxis(_numpy(given.steps(T)), 0, 1)  # [B, T, ...]
    voltages, spikes_per_layer = _simulate(Path(path), drive, T, direct)
    logits = readout_logits(voltages, float(meta["output_scale"]), T)
    return RunResult(logits=logits, spikes=spikes_per_layer, layer_names=list(meta["lif_layers"]))


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _lava_order(x: np.ndarray, spatial: bool) -> np.ndarray:
    """torch's [..., C, H, W] <-> Lava's [..., W, H, C] (x, y, z); non-spatial data stays."""
    return np.swapaxes(x, -1, -3) if spatial else x


def _simulate(path: Path, drive: np.ndarray, T: int, direct: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``B`` samples back to back; returns output voltages ``[B, K]`` and spikes ``[T, B, ...]`` per LIF."""
    from ..lava_compat import import_netx

    netx = import_netx()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.io.sink import Read
    from lava.proc.io.source import RingBuffer as Source

    B = len(drive)
    offset = 0 if direct else 1  # Poisson: the source's spikes reach the first LIF one step later
    net = netx.hdf5.Network(net_config=str(path), reset_interval=T, reset_offset=offset)
    lif_blocks, out_block = net.layers[:-1], net.layers[-1]
    latency = len(net.layers) - 1 + offset  # one step per Dense/Conv on chip
    # Extractors stream each step's spikes to this process whole (a Var.get() sends element by element)
    extractors = []
    for block in lif_blocks:
        extractors.append(Extractor(shape=block.out.shape, buffer_size=T + latency))
        block.out.connect(extractors[-1].in_port)
    # read the output voltage only at the end of each sample's window (step b*T + T + latency)
    last_step = T - 1 + latency  # 0-based step index of sample 0's last output step
    first_read = last_step // T  # reads at earlier steps with the same phase come first
    reader = Read(buffer=first_read + B, interval=T, offset=last_step % T)
    reader.connect_var(out_block.neuron.v)
    if direct:
        spatial = len(net.layers[0].shape) == 3
        net.layers[0].neuron.bias_mant.init = _lava_order(drive[0], spatial).astype(np.int32)
    else:
        frames = drive.reshape(B * T, *drive.shape[2:])
        frames = _lava_order(frames, True) if len(net.inp.shape) == 3 else frames.reshape(B * T, -1)
        data = np.zeros((*net.inp.shape, B * T + latency), dtype=np.int32)
        data[..., : B * T] = np.moveaxis(frames, 0, -1)
        source = Source(data=data)
        source.s_out.connect(net.inp)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={Extractor: PyLoihiExtractorModel})  # untagged
    recorded: list[list[np.ndarray]] = [[] for _ in lif_blocks]
    try:
        for b in range(B):  # one sample per run: T steps, plus the pipeline's latency after the last
            if direct and b:
                net.layers[0].neuron.bias_mant.set(_lava_order(drive[b], spatial).astype(np.int32))
            steps = T + (latency if b == B - 1 else 0)
            net.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
            for frames_of_layer, extractor in zip(recorded, extractors, strict=True):
                frames_of_layer.extend(extractor.receive() for _ in range(steps))
        voltages = reader.data.get()
    finally:
        net.stop()
    recorded = [np.stack(frames_of_layer, axis=-1) for frames_of_layer in recorded]  # [..., step]
    at = np.arange(B)[None, :] * T + np.arange(T)[:, None]  # [T, B]: buffer index of step t of sample b, layer 0
    layer_spikes = [
        _lava_order(np.moveaxis(r[..., at + k + offset], (-2, -1), (0, 1)), len(block.shape) == 3).astype(np.float32)
        for k, (r, block) in enumerate(zip(recorded, lif_blocks, strict=True))
    ]
    return voltages[..., first_read:].T.astype(np.int64), layer_spikes


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
    quick_samples = 16  # the Lava simulator takes about half a second per sample

    def _check(self, student: SpikingStudent) -> None:
        _check(student, self.settings["weight_percentile"])

    def _export(self, student: SpikingStudent, path: Path) -> Path:
        return _export(student, path, self.settings["weight_percentile"])

    def _input_spec(self, path: Path) -> InputSpec:
        return _input_spec(path)

    def _run(self, path: Path, x: ModelInput) -> RunResult:
        return _run(path, x)

    def _reference(self, student: SpikingStudent, x: ModelInput) -> RunResult:
        return _reference(student, x, self.settings["weight_percentile"])
