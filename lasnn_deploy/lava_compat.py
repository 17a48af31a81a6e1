"""Make lava-nc 0.10 import on Python 3.11, without touching site-packages.

lava-nc 0.10 declares Python < 3.11. Its only incompatibility with 3.11 is in
``lava/magma/compiler/var_model.py``: dataclass fields default to an instance of the unhashable
class ``ByteEncoder``, which Python 3.11's ``dataclasses`` rejects as a mutable default
(``ValueError: mutable default ... use default_factory``). We install an import hook that compiles
that one module from a patched copy of its source (``= ByteEncoder()`` becomes
``= dataclasses.field(default_factory=ByteEncoder)``), in memory and never cached to disk. When
an upstream release fixes the file, the replacement matches nothing and the module loads as is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

PATCHED_MODULE = "lava.magma.compiler.var_model"
_BROKEN_DEFAULT = " = ByteEncoder()"
_FIXED_DEFAULT = ' = __import__("dataclasses").field(default_factory=ByteEncoder)'


class _PatchedSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module from patched source; never reads or writes bytecode caches."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        source = importlib.util.decode_source(self.get_data(path))
        return compile(source.replace(_BROKEN_DEFAULT, _FIXED_DEFAULT), path, "exec", dont_inherit=True)


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: D102 - importlib protocol
        if fullname != PATCHED_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _PatchedSourceLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the import hook in front of the standard finders (idempotent)."""
    if not any(isinstance(f, _VarModelFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _VarModelFinder())


def import_netx() -> ModuleType:
    """Import and return ``lava.lib.dl.netx`` with the Python 3.11 fix in place."""
    install()
    try:
        import lava.lib.dl.netx as netx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"lava-dl is not importable ({err}); install the project with `make install`"
        ) from err
    return netx
