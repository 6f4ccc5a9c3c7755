"""Sphinx configuration of the spikeinterface-elvisort documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (from the repository root). The build needs no
network: intersphinx links are only added when ``ELVISORT_DOCS_INTERSPHINX=1`` is set, and the example gallery only
executes ``examples/plot_*.py`` scripts (the quickstart trains a network for a few minutes on a CPU, so it is shown,
not run).
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))  # the parameters-table extension
sys.path.insert(0, str(DOCS.parent))  # the package, also when it is not installed

import spikeinterface_elvisort  # noqa: E402

# register the sorter now: autodoc imports spikeinterface_elvisort.sorters first, and importing that module before
# spikeinterface.sorters makes the registration hook fail on a circular import (see _registration.py)
import spikeinterface.sorters  # noqa: E402, F401

project = "spikeinterface-elvisort"
author = "spikeinterface-elvisort developers"
copyright = "spikeinterface-elvisort developers"
version = release = spikeinterface_elvisort.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "elvisort_params",  # writes generated/parameters_table.rst from spikeinterface_elvisort.params.PARAMS
]

exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    # included by benchmarks.rst, not a page of its own
    "benchmark_results.rst",
    "study_results.rst",
    # included by ssae.rst
    "ssae_results.rst",
    # included by parameters.rst
    "generated/*.rst",
    # sphinx-gallery writes these next to the pages; they are not pages
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
]
templates_path = []

# -- autodoc / autosummary / numpydoc -------------------------------------------------------------------------------
autodoc_typehints = "none"  # numpydoc renders the types written in the docstrings
autodoc_member_order = "bysource"
autosummary_generate = False  # api.rst documents every object on the page itself
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()
numpydoc_xref_param_type = False

# -- intersphinx: offline by default ---------------------------------------------------------------------------------
if os.environ.get("ELVISORT_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "torch": ("https://pytorch.org/docs/stable", None),
        "spikeinterface": ("https://spikeinterface.readthedocs.io/en/stable", None),
    }
else:
    intersphinx_mapping = {}

# -- example gallery -------------------------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # only plot_*.py run at build time; keep those CPU-fast
    "download_all_examples": False,
    "plot_gallery": "True",
}

# -- HTML ------------------------------------------------------------------------------------------------------------
try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
except ImportError:  # the docs extra is not installed: build with Sphinx's default theme
    html_theme = "alabaster"
smartquotes = False  # parameter descriptions quote values as code ("auto", "neg"): keep straight quotes
html_title = f"spikeinterface-elvisort {release}"
html_static_path = []
