"""``python -m device_agent``: the same as the ``iotgw-agent`` console script."""

from device_agent.cli import main

main()
