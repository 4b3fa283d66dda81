"""The package version (a module of its own: the layers read it without importing the package's `__init__`)."""

__version__ = "0.1.0"
