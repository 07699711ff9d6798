"""``python -m gateway.cli``: the ``iotgw`` command."""

import sys

from gateway.cli.root import main

sys.exit(main())
