"""Cadenza's engine: models, generation, rendering and placement. Importing it loads nothing;
the Python API is in engine.api, the command line in engine.cli (`python -m engine`)."""

__version__ = "0.1.0"
