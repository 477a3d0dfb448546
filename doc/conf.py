"""Sphinx configuration for the Libervia backend documentation."""

from __future__ import annotations

import sys
from pathlib import Path

# autodoc imports the package from the checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "Libervia backend"
author = "Libervia backend contributors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

# Only reStructuredText: myst-parser is not a dependency.
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build"]

# Docstrings use Google style sections (Args, Returns, Raises).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"

nitpicky = False

html_theme = "alabaster"
