"""Sphinx configuration of the privfl documentation.

Build with warnings as errors and nitpicky cross-references::

    sphinx-build -n -W --keep-going -b html docs docs/_build/html

Nothing is fetched from the network: intersphinx is off. References to the standard
library are linked by ``docs/_ext/privfl_docs.py`` (only when the object exists); the
few third-party types that cannot resolve offline are listed in ``nitpick_ignore``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import privfl  # noqa: E402

project = "privfl"
author = "The privfl developers"
copyright = "the privfl developers"
release = privfl.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "privfl_docs",
]

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "**/__pycache__", "Thumbs.db", ".DS_Store"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc -----------------------------------------------------------------------
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
# Members are listed on each directive: Sphinx 9 lets a default "members" override
# an explicit ":members: a, b" list.
autodoc_default_options = {"show-inheritance": True}
autodoc_class_signature = "separated"

# -- nitpicky ----------------------------------------------------------------------
nitpicky = True
# Third-party types with no offline inventory (intersphinx is off on purpose).
nitpick_ignore_regex = [
    ("py:class", r"torch\.(Tensor|(_C\.)?Generator|nn\.(modules\.\w+\.)?(Module|Sequential))"),
    ("py:class", r"numpy\.(ndarray|dtype|random\.SeedSequence)"),
    ("py:class", r"pluggy\.(_manager\.)?PluginManager"),
    ("py:class", r"rich\.console\.Console"),
    ("py:class", r"cryptography\.hazmat\.[\w.]+"),
    # Type variables and private base classes in signatures have no page of their own.
    ("py:class", r"privfl\.smpc\.\w+\.(T|W)"),
    ("py:class", r"privfl\.[\w.]+\._\w+"),
]


# -- HTML --------------------------------------------------------------------------
html_theme = "furo"
html_title = f"privfl {release}"
