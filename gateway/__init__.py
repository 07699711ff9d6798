"""iotgw gateway. Importing the package is cheap: heavy parts load on use."""

from iotgw_common._version import __version__

__all__ = ["__version__"]
