"""The version of simtorch, in one place (read by the package, the results' provenance,
``setup.cfg`` and ``simtorch --version``)."""

__version__ = "0.3.0"
