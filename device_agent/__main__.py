"""``python -m device_agent``: the same as the ``iotgw-agent`` console script."""

from .cli import main

main()
