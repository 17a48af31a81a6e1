"""Make lava-nc 0.10 import on Python 3.11 inside our process, without touching site-packages.

Two modules of lava-nc 0.10 fail to import here:

- ``lava/magma/compiler/var_model.py`` (Python 3.11): dataclass fields default to an instance of
  the unhashable class ``ByteEncoder``, which 3.11's ``dataclasses`` rejects as a mutable default
  (``ValueError: mutable default ... use default_factory``).
- ``lava/magma/runtime/message_infrastructure/multiprocessing.py`` calls
  ``multiprocessing.set_start_method('fork')`` at import time, which raises ``RuntimeError:
  context has already been set`` once anything (tqdm's lock, a DataLoader) has touched
  multiprocessing. ``fork`` is already Linux's default on 3.11, so forcing it changes nothing else.

An import hook compiles exactly those modules from a patched copy of their source, in memory and
never cached to disk. When an upstream release fixes a file, its replacement matches nothing and
the module loads as is.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import logging
import sys
from types import CodeType, ModuleType

PATCHES: dict[str, tuple[str, str]] = {
    "lava.magma.compiler.var_model": (
        " = ByteEncoder()",
        ' = __import__("dataclasses").field(default_factory=ByteEncoder)',
    ),
    "lava.magma.runtime.message_infrastructure.multiprocessing": (
        "mp.set_start_method('fork')",
        "mp.set_start_method('fork', force=True)",
    ),
}


class _PatchedSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module from patched source; never reads or writes bytecode caches."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        source = importlib.util.decode_source(self.get_data(path))
        return compile(source.replace(*PATCHES[fullname]), path, "exec", dont_inherit=True)


class _LavaFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: D102 - importlib protocol
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _PatchedSourceLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the import hook in front of the standard finders (idempotent)."""
    if not any(isinstance(f, _LavaFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LavaFinder())


def import_netx() -> ModuleType:
    """Import and return ``lava.lib.dl.netx`` with the Python 3.11 fix in place.

    slayer prints a note about an optional Prophesee toolbox and torch logs "No CUDA runtime"
    while netx imports; neither concerns netx on CPU, so both are kept off the user's terminal.
    """
    install()
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import lava.lib.dl.netx as netx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"lava-dl is not importable ({err}); install the project with `make install`") from err
    finally:
        extension_log.setLevel(level)
    return netx
