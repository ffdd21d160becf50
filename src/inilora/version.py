"""The package version, in a module of its own: code that records it imports this, never the package
face (``inilora/__init__``), whose lazy names reach down into everything."""

__version__ = "0.1.0"
