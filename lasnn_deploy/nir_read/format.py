"""What a NIR file says beyond its nodes: our format's constants and metadata, the leak <-> (tau, r)
mapping our exporter writes, and each exporter's convention (``CONVENTIONS``: the ``dt`` and the
discretisation it meant, ours among them)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nir
import numpy as np

from ..errors import UserError
from ..neurons import Encoding

FORMAT = "lasnn-deploy-nir/1"
DT = 1e-4  # snnTorch's importer hard-codes this dt for LIF nodes
NO_LEAK_STEPS = 2.0**64  # lam = 1: tau = dt * 2**64, so 1 - dt/tau rounds to exactly 1
OUTPUT_FORM = "linear"  # the graph ends at the last Linear; logits = sum_t output[t] / T
EXPORT_HINT = "re-export it with `lasnn-deploy export MODEL --target nir --out FILE`"
HINT = "pass --from snntorch|norse|sinabs|spikingjelly (the exporter) or --dt SECONDS"


# -- leak <-> (tau, r) -----------------------------------------------------------------------
def importer_leak(tau: np.ndarray, dt: float = DT) -> np.ndarray:
    """The leak ``1 - dt/tau`` evaluated in float32, exactly as snnTorch's importer computes it."""
    return np.float32(1) - np.float32(dt) / np.asarray(tau, dtype=np.float32)


def leak_to_tau(leak: float, dt: float = DT) -> tuple[np.float32, np.float32]:
    """``tau`` and ``r`` (float32) of the forward-Euler mapping (docs/semantics.md, 'NIR') for the shared leak ``lam``.

    ``tau = dt / (1 - lam)`` is moved by at most 16 ulps to the value whose float32 leak equals
    ``lam`` exactly (the nearest one if none does); ``r = tau / dt`` keeps the input gain
    ``r dt / tau`` at 1.
    """
    lam = np.float32(leak)
    if lam == 1:
        return np.float32(dt) * np.float32(NO_LEAK_STEPS), np.float32(NO_LEAK_STEPS)
    tau0 = np.array([dt / (1.0 - float(lam))], dtype=np.float32)
    offsets = np.arange(-16, 17, dtype=np.int32)
    candidates = (tau0.view(np.int32) + offsets).view(np.float32)
    error = np.abs(importer_leak(candidates, dt).astype(np.float64) - float(lam))
    tau = candidates[np.lexsort((np.abs(offsets), error))[0]]
    return tau, np.float32(float(tau) / dt)


# -- conventions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Convention:
    """How an exporter meant its neurons: the time step and how ``tau`` turns into a leak."""

    dt: float
    exact: bool = False  # True: lam = exp(-dt/tau) (Sinabs); False: forward Euler, lam = 1 - dt/tau
    norse: bool = False  # Norse 1.1.0 writes tau = dt * tau_mem and an IF's r = 1 as a gain of 1 per step
    own: bool = False  # ours: lam = 1 - dt/tau in float32 (snnTorch's arithmetic), input gain 1, v_leak = 0


CONVENTIONS = {
    "lasnn-deploy": Convention(DT, own=True),  # exporters/nir.py; the file's metadata says its dt
    "snntorch": Convention(1e-4),  # snntorch.export_nir hard-codes dt = 1e-4
    "spikingjelly": Convention(1e-4),  # nir_exchange.export_to_nir(dt=1e-4) default
    "norse": Convention(1e-3, norse=True),  # norse.torch.utils.export_nir.to_nir(dt=0.001) default
    "sinabs": Convention(1.0, exact=True),  # sinabs writes tau in steps; LIF decays by exp(-1/tau)
}


def metadata(graph: Any) -> dict[str, Any]:
    """The graph's metadata, or an empty one (a graph read from a file may hold anything there)."""
    meta = graph.metadata if isinstance(graph, nir.NIRGraph) else None
    return meta if isinstance(meta, dict) else {}


def convention_for(graph: nir.NIRGraph, library: str | None, dt: float | None) -> Convention:
    """The convention from ``library`` and/or ``dt``, else the graph metadata's ``dt``; refuses if none says."""
    if library is not None and library not in CONVENTIONS:
        raise UserError(f"unknown exporter {library!r}: choose one of {', '.join(CONVENTIONS)}")
    base = CONVENTIONS.get(library or "", Convention(float("nan")))
    if dt is None:
        meta = metadata(graph)
        if library is None and "dt" not in meta:
            raise UserError(f"the NIR graph does not say its time step (metadata key 'dt'); {HINT}")
        try:
            dt = base.dt if library is not None else float(np.asarray(meta["dt"]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError) as err:
            raise UserError(f"the NIR graph's metadata 'dt' = {meta.get('dt')!r} is not a number; {HINT}") from err
    return dataclasses.replace(base, dt=float(dt))


# -- files and our metadata ------------------------------------------------------------------
def read_file(path: str | os.PathLike[str], hint: str | None = None) -> nir.NIRGraph:
    """``nir.read`` with one clear line for a missing, truncated or foreign file (``hint``: how to make one)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no NIR file at {path}" + (f": {hint}" if hint else ""))
    try:
        return nir.read(path)
    except Exception as err:  # h5py and nir raise OSError, KeyError, ValueError, AssertionError...
        raise UserError(
            f"{path} is not a readable NIR file ({type(err).__name__}: {err}); {hint or 're-export it'}"
        ) from err


def read_graph(path: str | os.PathLike[str]) -> tuple[nir.NIRGraph, dict[str, Any]]:
    """One of our files (``exporters/nir.py``) and its checked run settings (:func:`settings_of`)."""
    graph = read_file(path, EXPORT_HINT)
    return graph, settings_of(graph, path)


def settings_of(graph: nir.NIRGraph, where: Any) -> dict[str, Any]:
    """Run settings from our graph's metadata, as plain Python values; one clear error if absent."""
    meta = metadata(graph)
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{where} is not a lasnn-deploy NIR graph (metadata format {meta.get('format')!r}, expected {FORMAT!r}), "
            f"so its time steps, encoding and dt are unknown; {EXPORT_HINT}"
        )
    try:
        settings = {
            "arch": str(meta["arch"]),
            "dt": float(meta["dt"]),
            "timesteps": int(meta["timesteps"]),
            "encoding": str(meta["encoding"]),
            "input_shape": tuple(int(s) for s in np.asarray(meta["input_shape"]).reshape(-1)),
            "num_classes": int(meta["num_classes"]),
            "leak": float(meta["leak"]),
            "output_form": str(meta["output_form"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{where} has malformed lasnn-deploy metadata ({type(err).__name__}: {err}); {EXPORT_HINT}"
        ) from err
    if settings["output_form"] != OUTPUT_FORM or settings["encoding"] not in tuple(Encoding):
        raise UserError(
            f"{where}: unsupported output form {settings['output_form']!r} or encoding "
            f"{settings['encoding']!r}; {EXPORT_HINT}"
        )
    return settings
