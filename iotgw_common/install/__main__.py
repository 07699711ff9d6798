"""``python -m iotgw_common.install DIR``: write the default unit files into DIR (e.g. ``systemd``)."""

import sys

from iotgw_common.install.cli import main

sys.exit(main())
