"""Sphinx configuration of the fedjax_med API reference.

Build it from the repository root with
`python -m sphinx -W --keep-going -n -b html docs/api docs/api/_build`.
The build reads the installed fedjax_med package and needs no network.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / '_ext'))

project = 'fedjax_med'
author = 'fedjax_med authors'
copyright = 'fedjax_med authors'  # pylint: disable=redefined-builtin

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'code_or_reference',
    'documented_attributes',
]

# Single backticks: a `fedjax_med.` dotted name is a cross-reference that must
# resolve, anything else is inline code (see _ext/code_or_reference.py).
default_role = 'code-or-reference'

# Nitpicky mode (-n) reports every cross-reference that does not resolve.
# Type hints also name jax, numpy, optax, flax, typing and the standard
# library. Those have no entries here, because intersphinx would need the
# network, so they are ignored. Only names outside fedjax_med are, so a wrong
# fedjax_med name still fails the build.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(?!fedjax_med\.).*'),
    # A type hint may name a private fedjax_med class, which has no entry
    # (`fedjax_med.sweep.plan` returns a list of `fedjax_med.sweep._Group`).
    # Only type hints make py:class references; the docstrings' own
    # references are py:obj and stay checked.
    (r'py:class', r'fedjax_med(?:\.\w+)*\._\w+(?:\.\w+)*'),
]

autodoc_default_options = {
    'members': True,
    'member-order': 'bysource',
    'undoc-members': True,
}
autodoc_typehints = 'signature'

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# A Returns section here is prose, such as "An array shaped
# `values.shape[1:]`: the value ...", and the types come from the signature.
# Napoleon's own Returns parser would take the text before the first colon
# for a return type, so the section is rendered as a plain rubric instead.
napoleon_custom_sections = ['Returns']

exclude_patterns = ['_build', '_ext']
html_theme = 'alabaster'
