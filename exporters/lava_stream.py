"""Lava processes that stream samples through one long netx run, one window of T steps per sample.

Imported only once ``lava_compat`` has made Lava importable (``exporters.lava`` does so). Each
process exchanges one message per sample with the host over a Lava external pipe, not one per
step, so the host's cost per sample does not grow with T or the number of steps:

- ``SpikeSource``: receives a sample's input spikes ``[..., T]`` at the first step of its window
  and sends step ``t``'s frame at step ``t`` (Poisson encoding).
- ``BiasSource``: receives a sample's input-layer bias and writes it into the input neurons'
  ``bias_mant`` (a ``RefPort``) after the step before its window (direct encoding).
- ``WindowSink``: collects a layer's spikes over one window, ``lag`` steps behind the input, and
  sends the window ``[..., T]`` to the host when it is complete.
- ``VoltageSink``: reads a layer's voltage (a ``RefPort``) at the end of each window, ``lag``
  steps behind the input, and sends it to the host.

A pipe whose buffer is full blocks the sender, an empty one the receiver: the host sends a chunk's
samples before running it and drains the sinks after, so buffers sized for a chunk never block.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class SpikeSource(AbstractProcess):
    """Plays each sample's input spikes ``[*shape, T]``, given by ``send``, in its window of T steps."""

    def __init__(self, shape: tuple[int, ...], timesteps: int, buffer: int) -> None:
        super().__init__(shape=shape, timesteps=timesteps)
        self.host = InPort(shape=(*shape, timesteps))
        self.host.flag_external_pipe(buffer_size=buffer)
        self.s_out = OutPort(shape=shape)

    def send(self, window: np.ndarray) -> None:
        self.host.external_pipe_csp_send_port.send(window)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSourceModel(PyLoihiProcessModel):
    host: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.T = proc_params["timesteps"]
        self.window: np.ndarray | None = None

    def run_spk(self) -> None:
        t = (self.time_step - 1) % self.T
        if t == 0:
            self.window = self.host.recv()
        assert self.window is not None  # received at the first step of every window
        self.s_out.send(self.window[..., t])


class BiasSource(AbstractProcess):
    """Writes each sample's bias, given by ``send``, into a Var after step ``b * T + offset - 1`` (1-based)."""

    def __init__(self, shape: tuple[int, ...], timesteps: int, buffer: int, offset: int = 1) -> None:
        super().__init__(shape=shape, timesteps=timesteps, offset=offset)
        self.host = InPort(shape=shape)
        self.host.flag_external_pipe(buffer_size=buffer)
        self.bias = RefPort(shape=shape)

    def connect_var(self, var: Var) -> None:
        self.bias.connect_var(var)

    def send(self, bias: np.ndarray) -> None:
        self.host.external_pipe_csp_send_port.send(bias)


@implements(proc=BiasSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyBiasSourceModel(PyLoihiProcessModel):
    host: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    bias: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.T, self.offset = proc_params["timesteps"], proc_params["offset"]

    def post_guard(self) -> bool:
        return self.time_step % self.T == self.offset % self.T

    def run_post_mgmt(self) -> None:
        self.bias.write(self.host.recv())
        self.bias.wait()  # the write has landed before the next step runs


class WindowSink(AbstractProcess):
    """Sends the host each window ``[*shape, T]`` of the spikes it receives, ``lag`` steps behind step 0."""

    def __init__(self, shape: tuple[int, ...], timesteps: int, lag: int, buffer: int) -> None:
        super().__init__(shape=shape, timesteps=timesteps, lag=lag)
        self.a_in = InPort(shape=shape)
        self.host = OutPort(shape=(*shape, timesteps))
        self.host.flag_external_pipe(buffer_size=buffer)

    def receive(self) -> np.ndarray:
        return self.host.external_pipe_csp_recv_port.recv()


@implements(proc=WindowSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowSinkModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    host: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.T, self.lag = proc_params["timesteps"], proc_params["lag"]
        self.window = np.zeros((*proc_params["shape"], self.T), dtype=np.int32)

    def run_spk(self) -> None:
        frame = self.a_in.recv()
        step = self.time_step - 1 - self.lag
        if step < 0:
            return
        self.window[..., step % self.T] = frame
        if step % self.T == self.T - 1:
            self.host.csp_ports[-1].send(self.window)


class VoltageSink(AbstractProcess):
    """Reads a Var at the end of each window, ``lag`` steps behind step 0, and sends it to the host."""

    def __init__(self, shape: tuple[int, ...], timesteps: int, lag: int, buffer: int) -> None:
        super().__init__(shape=shape, timesteps=timesteps, lag=lag)
        self.state = RefPort(shape=shape)
        self.host = OutPort(shape=shape)
        self.host.flag_external_pipe(buffer_size=buffer)

    def connect_var(self, var: Var) -> None:
        self.state.connect_var(var)

    def receive(self) -> np.ndarray:
        return self.host.external_pipe_csp_recv_port.recv()


@implements(proc=VoltageSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyVoltageSinkModel(PyLoihiProcessModel):
    state: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32)
    host: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.T, self.lag = proc_params["timesteps"], proc_params["lag"]

    def post_guard(self) -> bool:
        step = self.time_step - 1 - self.lag
        return step >= 0 and step % self.T == self.T - 1

    def run_post_mgmt(self) -> None:
        self.host.csp_ports[-1].send(self.state.read())


MODELS = {
    SpikeSource: PySpikeSourceModel,
    BiasSource: PyBiasSourceModel,
    WindowSink: PyWindowSinkModel,
    VoltageSink: PyVoltageSinkModel,
}
"""Each process's model, handed to the run config per process instance: Lava then does not search
(and import) every module beside this one for models."""
