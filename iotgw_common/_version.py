"""The one version string of the distribution; gateway, agent and hello report it."""

__version__ = "0.1.0"
