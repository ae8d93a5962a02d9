"""The package version, in a module of its own so that leaf modules can record it without
importing the package (whose ``__init__`` would pull in the readers)."""

__version__ = "0.1.0"
