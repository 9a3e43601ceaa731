"""Higgs Audio V2 text-to-speech."""

__version__ = "0.1.0"  # the one definition: pyproject.toml and the HTTP API read it
