"""Conclave: persona-seeded expert agents and the orchestrator that consults them."""

__version__ = "1.0.0"  # the one place; pyproject.toml reads it (tool.setuptools.dynamic)
