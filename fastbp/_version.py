"""The one place the version is defined (read by ``pyproject.toml`` / ``setup.py`` and ``fastbp``)."""

__version__ = "0.1.0"
