"""iotgw Raspberry Pi agent: sample sensors through gpiozero, buffer on disk, stream to the gateway.

In-process use (the gateway's demo does this)::

    from device_agent import Agent, load_config

    agent = Agent(load_config("agent.toml"))
    task = asyncio.create_task(agent.run())
    ...
    agent.stop()          # or task.cancel()
    await task

As a process: ``iotgw-agent run --config agent.toml`` (or ``python -m device_agent run ...``).
Modules: config (TOML + env) and hardware_config (its sensor and actuator tables),
sensors (a package of gpiozero and sysfs drivers), actuators (gpiozero outputs),
simulation (mock pins), hardware (opens sensors and simulation together), buffer
(SQLite), link (WebSocket session), commands (command registry), agent, cli, install.

It imports :mod:`iotgw_common` and never :mod:`gateway`: the agent's extra installs
without the gateway's dependencies (tests/install/test_extras.py runs it that way).
"""

from device_agent.agent import Agent
from device_agent.config import AgentConfig, ConfigError, load_config, parse_config
from iotgw_common._version import __version__

__all__ = ["Agent", "AgentConfig", "ConfigError", "__version__", "load_config", "parse_config"]
