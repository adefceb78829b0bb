"""Default role that checks `fedjax_med.` names and renders other text as code.

fedjax_med's docstrings put both names and code in single backticks. A
backticked dotted name under `fedjax_med.` (optionally ending in `()`) becomes
a Python cross-reference, so nitpicky mode reports it when it does not
resolve. Any other backticked text, such as `client.learning_rate` or
`fold_in(round key, client id)`, renders as inline code and is never looked up.
"""

import re

from docutils import nodes
from docutils import utils
from sphinx.domains import python as python_domain

ROLE_NAME = 'code-or-reference'

# A dotted name under the package, such as fedjax_med.study.run_study or
# fedjax_med.study.run_study(); the empty call marks a function.
_REFERENCE = re.compile(r'fedjax_med(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?:\(\))?')

_PYTHON_OBJECT_ROLE = python_domain.PyXRefRole()


def code_or_reference_role(
    name, rawtext, text, lineno, inliner, options=None, content=()):
  """Return a py:obj cross-reference for a package name, else a literal."""
  del name  # The role runs as the default role under any name.
  options = options or {}
  if not _REFERENCE.fullmatch(utils.unescape(text)):
    return [nodes.literal(rawtext, utils.unescape(text))], []

  # The target drops the call parentheses; the shown title keeps them.
  if text.endswith('()'):
    text = f'{text} <{text.removesuffix("()")}>'
  return _PYTHON_OBJECT_ROLE(
      'py:obj', rawtext, text, lineno, inliner, options, content)


def setup(app):
  app.add_role(ROLE_NAME, code_or_reference_role)
  return {'parallel_read_safe': True, 'parallel_write_safe': True}
