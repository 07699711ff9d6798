"""``python -m gateway.install DIR``: write the default unit files into DIR (e.g. ``systemd``)."""

import sys

from .cli import main

sys.exit(main())
