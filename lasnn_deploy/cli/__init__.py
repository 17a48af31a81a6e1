"""``lasnn-deploy``: argument parsing only; every command calls a function of the Python API.

The grammar is in ``parser``, what each command does with its arguments in ``commands``. Bad input
(a ``UserError`` or a bad option) prints one line on stderr and exits 2; any other failure prints
one line and exits 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import UserError
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` when None); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"lasnn-deploy {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lasnn-deploy {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback under --debug
        if args.debug:
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        print(
            f"lasnn-deploy {args.command}: error: {type(err).__name__}: {first} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
