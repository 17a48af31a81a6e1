"""``python -m lasnn_deploy`` (and ``torchrun -m lasnn_deploy``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
