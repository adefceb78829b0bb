"""Document each class attribute once, from the class's `Attributes:` section.

Napoleon turns a Google-style `Attributes:` section into one
`.. attribute::` entry per name, and autodoc (with `undoc-members`) lists the
same names again as members: a NamedTuple field with the docstring "Alias for
field number N", or a dataclass or flax module field. Two entries for one
name are a duplicate object description, which fails a build run with `-W`.
This extension skips the autodoc member, so the entry that napoleon made,
with its description, is the one that remains.
"""

import re

_ATTRIBUTE_DIRECTIVE = re.compile(r'\.\. attribute:: (\w+)')

# Full class name to the attribute names that its `Attributes:` section
# describes. autodoc reads every class's docstring before it lists the
# class's members.
_DOCUMENTED: dict[str, set[str]] = {}


def _record_attributes(app, what, name, obj, options, lines):
  """Record the attribute entries that napoleon made from a class docstring."""
  del app, obj, options  # The converted lines name the attributes.
  if what not in ('class', 'exception'):
    return
  _DOCUMENTED[name] = {
      match.group(1)
      for match in map(_ATTRIBUTE_DIRECTIVE.fullmatch, lines)
      if match
  }


def _skip_documented(app, what, name, obj, skip, options):
  """Skip a class member that the class's `Attributes:` section describes."""
  del obj, skip, options  # Other members keep autodoc's decision.
  if what not in ('class', 'exception'):
    return None
  # While autodoc lists a class's members, the current document names the
  # module and class being documented (Sphinx 9 keeps them there).
  document = app.env.current_document
  class_name = f'{document.autodoc_module}.{document.autodoc_class}'
  if name in _DOCUMENTED.get(class_name, ()):
    return True
  return None


def setup(app):
  # Napoleon converts docstrings at the default priority 500; this handler
  # runs after it and reads the `.. attribute::` entries that it wrote.
  app.connect('autodoc-process-docstring', _record_attributes, priority=600)
  app.connect('autodoc-skip-member', _skip_documented)
  return {'parallel_read_safe': True, 'parallel_write_safe': True}
