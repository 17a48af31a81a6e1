"""Stage checkpoints and stage results of a run folder, all written atomically.

- ``checkpoints/<stage>.pt``: model, optimiser, scheduler, finished epochs, history, seconds and
  the RNG state of every process after the last finished epoch (``torch.save``; read back only with
  ``torch.load(weights_only=True)``, which builds tensors and plain containers and runs no code).
- ``teacher.safetensors`` / ``ann.safetensors``: finished teacher and intermediate ANN, with what
  they were trained for (architecture, data set) and their results in the file's metadata, so a
  later run in the same folder (or a folder they were copied into) can reuse them safely.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import UserError
from . import distributed

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run: Path, stage: str) -> Path:
    return run / CHECKPOINT_DIR / f"{stage}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and how to recover
        raise UserError(
            f"checkpoint {path} cannot be read ({str(err).splitlines()[0]}); delete it to restart that stage"
        ) from err
    if not isinstance(state, dict):
        raise UserError(
            f"checkpoint {path} holds a {type(state).__name__}, not a stage checkpoint; delete it to restart that stage"
        )
    return state


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def process_rng_states() -> dict[str, Any]:
    """Checkpoint entries for the RNG of every process: ``rng`` (rank 0), ``world_size``, ``rng_ranks``.

    A collective under several processes: every process must call it.
    """
    states = distributed.gather_objects(rng_state())
    entries: dict[str, Any] = {"rng": states[0], "world_size": len(states)}
    if len(states) > 1:
        entries["rng_ranks"] = states
    return entries


def _restore_process_rng_state(checkpoint: dict[str, Any], path: Path) -> None:
    """Give this process the RNG state it had when ``checkpoint`` was written.

    A checkpoint of N processes continues only under N processes: another count would change the
    dropout draws and the Poisson spikes of each sample, and the run would no longer be the one
    that was interrupted.
    """
    written = int(checkpoint.get("world_size", 1))
    if written != distributed.world_size():
        raise UserError(
            f"checkpoint {path} was written by {written} process(es) but this run has "
            f"{distributed.world_size()}; resume with {written} process(es) "
            f"({'without torchrun' if written == 1 else 'the same torchrun --nnodes/--nproc_per_node'}), "
            "or delete the checkpoint to restart that stage"
        )
    set_rng_state(checkpoint["rng_ranks"][distributed.rank()] if written > 1 else checkpoint["rng"])


def _error_detail(err: Exception) -> str:
    """The line of an error message that says what is wrong.

    ``load_state_dict``'s first line only names the module ("Error(s) in loading state_dict for
    X:"); the next one names the keys or shapes that do not fit.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return lines[0] if lines else type(err).__name__


def restore_training_state(
    state: dict[str, Any],
    path: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[Any], float]:
    """Continue from an epoch checkpoint: RNG, model, optimiser and scheduler state restored.

    Returns (finished epochs, history, seconds). A checkpoint that is readable but does not fit
    this stage (written by another version of it, say a training objective with other auxiliary
    parameters) is one line naming the file, not a traceback from ``load_state_dict``.
    """
    try:
        _restore_process_rng_state(state, path)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["epoch"]), list(state["history"]), float(state["seconds"])
    except (AttributeError, KeyError, TypeError, RuntimeError, ValueError) as err:
        reason = f"no {err} entry" if isinstance(err, KeyError) else _error_detail(err)
        raise UserError(
            f"checkpoint {path} does not fit this stage ({reason}); delete it to restart that stage"
        ) from err


def save_weights(path: Path, module: torch.nn.Module, meta: dict[str, Any]) -> None:
    """A module's state as safetensors, ``meta`` (JSON-encodable values) in the header."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable weights file ({err}); delete it to retrain that stage") from err
    return tensors, meta


def load_matching_weights(path: Path, module: torch.nn.Module, expected: dict[str, Any], what: str) -> dict[str, Any]:
    """Load ``path`` into ``module`` if its metadata matches ``expected``; return the metadata.

    A mismatch is an error, not a silent retrain: the file may hold weights someone placed there
    on purpose (a long-trained teacher), and reusing it for another architecture or data set
    would be wrong.
    """
    tensors, meta = read_weights(path)
    differ = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if differ:
        detail = "; ".join(f"{k}: file has {a!r}, this run needs {b!r}" for k, (a, b) in sorted(differ.items()))
        raise UserError(
            f"{path} holds weights trained for another {what} ({detail}); delete it or choose another --out"
        )
    try:
        module.load_state_dict(tensors)
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the {what} ({_error_detail(err)}); delete it to retrain") from err
    return meta
