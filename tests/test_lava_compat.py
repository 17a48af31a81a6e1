"""lava-nc 0.10 on Python 3.11 through the in-memory import hook, and a netx network run by hand."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lasnn_deploy import lava_compat


def _neuron(group: h5py.Group, v_th: int, v_decay: int = 0) -> None:
    n = group.create_group("neuron")
    n.create_dataset("type", (1,), "S4", [b"CUBA"])
    for key, value in (("iDecay", 4096), ("vDecay", v_decay), ("vThMant", v_th), ("refDelay", 1)):
        n.create_dataset(key, data=value)


def _dense(layers: h5py.Group, index: int, weight: list[list[int]], v_th: int, v_decay: int = 0) -> None:
    g = layers.create_group(str(index))
    g.create_dataset("type", (1,), "S5", [b"dense"])
    g.create_dataset("shape", data=np.array([len(weight)]))
    g.create_dataset("weight", data=np.array(weight))
    _neuron(g, v_th, v_decay)


def test_netx_two_layer_network_runs_bit_exactly(tmp_path):
    netx = lava_compat.import_netx()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    path = tmp_path / "net.h5"
    with h5py.File(path, "w") as f:
        layers = f.create_group("layer")
        g = layers.create_group("0")
        g.create_dataset("type", (1,), "S5", [b"input"])
        g.create_dataset("shape", data=np.array([2]))
        _dense(layers, 1, [[30, 0], [20, 40]], v_th=50)  # inputs 30 and 60 per step
        _dense(layers, 2, [[60, 0], [0, 40]], v_th=65, v_decay=2048)  # v halves every step
    steps = 9
    net = netx.hdf5.Network(net_config=str(path))
    source = Source(data=np.ones((2, steps), dtype=np.int32))  # both inputs spike at every step
    sink = Sink(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = sink.data.get()
    finally:
        net.stop()
    # Each dense adds one step of latency; v in units of 64, spike when v > vThMant.
    # Layer 1 (input from step 2): neuron 0 gets 30 per step: v = 30, 60 > 50 fires at 3, 5, 7, 9;
    # neuron 1 gets 60 > 50 and fires at 2..9.
    # Layer 2 (input from step 3), v = v / 2 + input: neuron 0 gets 60 at 4, 6, 8 (from layer-1 neuron 0):
    # v = 60, 30, 15 + 60 = 75 > 65 fires at 6, then 0, 60, 30. Neuron 1 gets 40 at 3..9: v = 40, 60,
    # 70 > 65 fires at 5, then 40, 60, 70 fires at 8, then 40. Without the leak it would fire at 4, 6, 8.
    assert out.tolist() == [[0, 0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 1, 0]]


VAR_MODEL = "lava.magma.compiler.var_model"  # the module with the Python 3.11 dataclass error


@pytest.mark.parametrize("name", sorted(lava_compat.PATCHES))
def test_hook_patches_in_memory_and_never_writes_site_packages(monkeypatch, name):
    finder = lava_compat._LavaFinder()
    assert finder.find_spec("lava.magma.core.process.process", None) is None
    assert finder.find_spec("dataclasses", None) is None
    parent = importlib.util.find_spec(name.rpartition(".")[0])
    spec = finder.find_spec(name, parent.submodule_search_locations)
    package_dir = Path(spec.origin).parent
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in package_dir.rglob("*")}
    source = Path(spec.origin).read_bytes()
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # a standard loader would now cache bytecode
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    assert isinstance(spec.loader, lava_compat._PatchedSourceLoader)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in package_dir.rglob("*")} == before
    assert Path(spec.origin).read_bytes() == source


def test_installed_hook_leaves_other_lava_modules_to_the_standard_loaders():
    lava_compat.import_netx()
    lava_modules = {name: m for name, m in sys.modules.items() if name.startswith("lava.") and m is not None}
    patched = {
        name
        for name, m in lava_modules.items()
        if isinstance(getattr(m, "__loader__", None), lava_compat._PatchedSourceLoader)
    }
    assert VAR_MODEL in patched and patched <= set(lava_compat.PATCHES)
    assert len(lava_modules) > 50


def test_without_the_hook_lava_fails_on_python_311():
    """The hook is needed: the unpatched module raises the dataclass error (until upstream fixes it)."""
    result = subprocess.run([sys.executable, "-c", f"import {VAR_MODEL}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "mutable default" in result.stderr


def test_importing_netx_prints_nothing():
    """slayer's Prophesee note and torch's "No CUDA runtime" log stay off the user's terminal."""
    code = "from lasnn_deploy.lava_compat import import_netx; import_netx()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "CUDA" not in result.stderr and "Prophesee" not in result.stderr
