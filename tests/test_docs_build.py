"""The API reference in docs/api builds cleanly and covers every module."""

import pathlib
import pkgutil
import re
import subprocess
import sys

import fedjax_med

ROOT = pathlib.Path(__file__).resolve().parents[1]
API_DOCS = ROOT / 'docs' / 'api'

# A tiny Sphinx project that uses the reference's conf.py and extensions on
# one probe module, so that the checks on references run in a few seconds.
_PROBE_CONF = """\
import runpy
import sys

globals().update(runpy.run_path({conf!r}))
sys.path.insert(0, {probe_dir!r})
"""

_PROBE_INDEX = """\
Probe
=====

.. automodule:: fedjax_med.errors

.. automodule:: probe
"""

_PROBE_MODULE = '''\
"""Probe of the default role.

Resolves: `fedjax_med.errors.InputError` and `fedjax_med.errors.InputError()`.
Code, never looked up: `client.learning_rate`, `jax.numpy.no_such_thing`,
`fold_in(round key, client id)`.
Broken: `fedjax_med.no_such_thing`.
"""
'''


def _build_html(source: pathlib.Path, out_dir: pathlib.Path):
  """Run the documented build command on `source`, warnings as errors."""
  return subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-n', '-b',
       'html', str(source), str(out_dir)],
      cwd=ROOT, capture_output=True, text=True, check=False)


def _public_modules() -> set[str]:
  """Return every fedjax_med module whose dotted name has no `_` part."""
  names = {'fedjax_med'}
  for module in pkgutil.walk_packages(fedjax_med.__path__, 'fedjax_med.'):
    names.add(module.name)
  # walk_packages skips a folder without __init__.py (a namespace package
  # such as fedjax_med/secure), so the source files are listed as well.
  package_dir = pathlib.Path(fedjax_med.__file__).parent
  for path in package_dir.rglob('*.py'):
    parts = path.relative_to(package_dir.parent).with_suffix('').parts
    names.add('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
  return {
      name for name in names
      if not any(part.startswith('_') for part in name.split('.'))
  }


def test_api_reference_builds(tmp_path):
  result = _build_html(API_DOCS.relative_to(ROOT), tmp_path / 'html')

  assert result.returncode == 0, result.stderr + result.stdout


def test_api_reference_lists_every_module():
  pages = '\n'.join(path.read_text() for path in API_DOCS.glob('*.rst'))
  documented = set(re.findall(r'^\.\. automodule:: (\S+)$', pages, re.M))

  missing = sorted(_public_modules() - documented)

  assert not missing, f'modules without an automodule in docs/api: {missing}'


def test_broken_reference_fails_build(tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  (source / 'conf.py').write_text(_PROBE_CONF.format(
      conf=str(API_DOCS / 'conf.py'), probe_dir=str(tmp_path)))
  (source / 'index.rst').write_text(_PROBE_INDEX)
  (tmp_path / 'probe.py').write_text(_PROBE_MODULE)

  result = _build_html(source, tmp_path / 'html')
  warnings = [line for line in result.stderr.splitlines() if 'WARNING' in line]
  page = (tmp_path / 'html' / 'index.html').read_text()

  assert result.returncode != 0, result.stderr
  assert len(warnings) == 1, result.stderr
  assert 'fedjax_med.no_such_thing' in warnings[0]
  assert 'href="#fedjax_med.errors.InputError"' in page
  assert re.search(r'<code class="[^"]*xref[^>]*>\s*<span class="pre">'
                   r'client\.learning_rate', page) is None
  assert '<span class="pre">client.learning_rate</span>' in page
