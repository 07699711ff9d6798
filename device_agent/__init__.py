"""iotgw Raspberry Pi agent: sample sensors through gpiozero, buffer on disk, stream to the gateway.

In-process use (the gateway's demo does this)::

    from device_agent import Agent, load_config

    agent = Agent(load_config("agent.toml"))
    task = asyncio.create_task(agent.run())
    ...
    agent.stop()          # or task.cancel()
    await task

As a process: ``iotgw-agent run --config agent.toml`` (or ``python -m device_agent run ...``).
Modules: config (TOML + env), sensors (gpiozero), simulation (mock pins), buffer
(SQLite), link (WebSocket session), commands (command registry), agent, cli.
"""

from iotgw_common._version import __version__

from .agent import Agent
from .config import AgentConfig, ConfigError, load_config, parse_config

__all__ = ["Agent", "AgentConfig", "ConfigError", "__version__", "load_config", "parse_config"]
