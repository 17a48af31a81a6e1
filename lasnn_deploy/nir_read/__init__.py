r"""NIR in: one reader for our own NIR files (the inverse of ``exporters/nir.py``) and for graphs
written by other libraries' exporters (``lasnn-deploy import``, ``nir_import.py``).

- ``format``: our format's constants and metadata (the run settings, :func:`read_graph`), the leak
  <-> (tau, r) mapping our exporter writes, and ``CONVENTIONS``: per exporter, ours among them, the
  ``dt`` and the discretisation it meant.
- ``graph``: the one chain walker, the shortcut branches our metadata names, and the name of the
  student layer each LIF node follows (:func:`lif_layers`).
- ``nodes``: the node table ``NODES``, NIR node type -> one small function reading it into the student.
- ``build``: the walk and the student it builds (:func:`student_from_nir`, :func:`student_from_any_nir`).

A student is a chain of Conv/Linear layers (bias allowed), average pools and one flatten, with one
LIF layer after every Conv/Linear but the last (and our residual blocks' shortcuts); all LIF layers
share one leak ``lam``, each has one threshold and resets to 0. The chain ``Input -> ... -> Output``
is read node by node:

- ``Conv2d`` (square kernel, stride and padding; no dilation or groups) -> ``Conv``; ``Linear`` and
  ``Affine`` -> ``Linear``. A nonzero ``bias`` sets ``bias=True``; an all-zero one reads as none
  (it computes the same), except an ``Affine`` in our files, which our exporter writes for a biased
  ``Linear`` only.
- ``AvgPool2d`` (stride = kernel, no padding) -> ``AvgPool``. ``SumPool2d`` is the same pool times
  ``k^2``; the factor is folded into the next Conv/Linear's weights.
- ``Flatten`` of the whole batch-free ``[C, H, W]`` map -> ``Flatten``. Exporters write
  ``start_dim`` batch-free (torch's ``start_dim - 1``: 0), also where the Input type kept a batch
  axis of 1 (``[1, C, H, W]``, which is dropped).
- A ``Conv2d`` branch our metadata names (``shortcuts``) -> the ``Shortcut`` before the LIF it feeds.
- ``LIF``, ``IF`` and ``CubaLIF`` -> the LIF layer after the preceding Conv/Linear. NIR gives an
  ODE; each exporter meant one discretisation at one ``dt`` (``CONVENTIONS``). Forward Euler
  (ours, snnTorch, SpikingJelly, Norse)::

      LIF      tau dv/dt = (v_leak - v) + r I     v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]
                                                         + (dt/tau) v_leak
      IF       dv/dt = r I                         v[t] = v[t-1] + (r dt) I[t]
      CubaLIF  tau_syn dI/dt = -I + w_in x         I[t] = (1 - dt/tau_syn) I[t-1] + (w_in dt/tau_syn) x[t]

  Sinabs counts ``tau`` in steps (``dt = 1``) and decays exactly: ``lam = exp(-dt/tau)``, input
  gain ``r (1 - lam)`` (its ``norm_input``). Norse 1.1.0 writes ``tau = dt / tau_mem_inv`` (so the
  time constant is ``tau / dt``) and an ``IF``'s ``r = 1`` for a gain of 1 per step. So ``lam`` is
  ``1 - dt/tau`` (or ``exp(-dt/tau)``), the input gain ``g`` multiplies the preceding layer's
  weights and bias (skipped when it is 1 to float32 rounding, as every exporter that writes
  ``r = tau/dt`` means), and a constant drive ``(dt/tau) v_leak`` joins the bias. A CubaLIF reduces
  to a LIF only when its synapse keeps no current from one step to the next (``tau_syn = dt``,
  snnTorch's ``alpha = 0``); then ``g = w_in r dt / tau_mem``. Our files are one convention of the
  same reader: ``1 - dt/tau`` in float32 (as snnTorch's importer computes it), a gain of 1 and no
  ``v_leak`` (anything else is not a file we wrote), and the metadata's exact leak where ``tau`` is
  the one :func:`leak_to_tau` gives for it (about a third of the leaks below 0.9 have no float32
  ``tau`` that expresses them exactly).

Refused, with one line naming the node and the reason: recurrence (a cycle, a subgraph, a node with
two inputs other than our shortcuts), per-neuron or per-layer differences in ``tau`` (a student
shares one leak), a leak outside (0, 1] (a wrong ``dt``), ``v_reset != 0``, a synapse that does not
reduce, and any other node. A graph that ends at a neuron is read out through an identity ``Linear``
added after it, so the logits are the output neurons' spike counts divided by ``T``; one that ends
at a Conv over its whole map (Norse's exporter maps no Flatten) ends with Flatten + Linear instead.
A vector input is read as an image of ``input_shape`` (default ``[F, 1, 1]``) with a Flatten first.

It sits below the student file (``load_student`` reads a ``.nir`` through it) and below the export
targets and NIR runtimes, which read the files they run through it: it imports only the student's
layer, config and module modules.
"""

from .build import Reading, load_nir_student, student_from_any_nir, student_from_graph, student_from_nir
from .format import (
    CONVENTIONS,
    DT,
    EXPORT_HINT,
    FORMAT,
    NO_LEAK_STEPS,
    OUTPUT_FORM,
    Convention,
    importer_leak,
    leak_to_tau,
    read_file,
    read_graph,
    settings_of,
)
from .graph import chain, layout, lif_layers
from .nodes import NODES

__all__ = [
    "CONVENTIONS",
    "DT",
    "EXPORT_HINT",
    "FORMAT",
    "NODES",
    "NO_LEAK_STEPS",
    "OUTPUT_FORM",
    "Convention",
    "Reading",
    "chain",
    "importer_leak",
    "layout",
    "leak_to_tau",
    "lif_layers",
    "load_nir_student",
    "read_file",
    "read_graph",
    "settings_of",
    "student_from_any_nir",
    "student_from_graph",
    "student_from_nir",
]
