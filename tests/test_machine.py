"""fedjax_med.report.machine: the machine facts a benchmark section records."""

import builtins
import datetime
import os
import re

import jax
import pytest

from fedjax_med.report import machine


class _FakeDevice:

  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_load_sentence_unknown():
  assert machine.load_sentence(None) == ''
  assert machine.load_sentence(None, 1.5) == ''


def test_load_sentence_before_only():
  assert machine.load_sentence(0.5) == (
      ' The 1-minute load average before the run was 0.50.'
  )


def test_load_sentence_before_and_after():
  assert machine.load_sentence(0.5, 2.25) == (
      ' The 1-minute load average was 0.50 before the run and 2.25 after it.'
  )


def test_section_heading_has_date():
  heading = machine.section_heading('Round scaling')

  assert heading == (
      f'### Round scaling, {datetime.date.today().isoformat()}'
  )


def test_append_section_creates_folders(tmp_path):
  path = tmp_path / 'new' / 'folder' / 'RESULTS.md'

  machine.append_section(path, 'first\n')
  machine.append_section(str(path), 'second\n')

  assert path.read_text() == 'first\nsecond\n'


def test_append_section_keeps_existing_text(tmp_path):
  path = tmp_path / 'RESULTS.md'
  path.write_text('# Results\n\n')

  machine.append_section(path, '### Section\n')

  assert path.read_text() == '# Results\n\n### Section\n'


def test_append_section_without_path(tmp_path):
  machine.append_section(None, 'ignored')
  machine.append_section('', 'ignored')

  assert list(tmp_path.iterdir()) == []


def test_hardware_line_names_versions():
  line = machine.hardware_line()
  device = jax.devices()[0]

  assert line.startswith(f'{device.platform} ({device.device_kind}, ')
  assert line.endswith(f'), JAX {jax.__version__}')
  assert f'{os.cpu_count()} CPU cores' in line
  assert machine.cpu_model() in line


@pytest.mark.skipif(
    not os.path.exists('/proc/cpuinfo'), reason='needs /proc/cpuinfo'
)
def test_cpu_model_from_cpuinfo():
  with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
    names = [line.split(':', 1)[1].strip() for line in cpuinfo
             if line.startswith('model name')]
  if not names:
    pytest.skip('/proc/cpuinfo has no model name on this architecture')
  assert machine.cpu_model() == names[0]


@pytest.mark.skipif(
    not os.path.exists('/proc/meminfo'), reason='needs /proc/meminfo'
)
def test_hardware_line_names_ram():
  assert re.search(r', \d+ GiB RAM, ', machine.hardware_line())


@pytest.mark.skipif(
    not os.path.exists('/proc/meminfo'), reason='needs /proc/meminfo'
)
def test_meminfo_values_positive():
  total = machine.total_memory_gib()
  available = machine.available_bytes()

  assert total > 0
  assert available > 0
  assert available <= total * 2**30


def test_meminfo_unreadable(monkeypatch):
  real_open = builtins.open

  def failing_open(path, *args, **kwargs):
    if path == '/proc/meminfo':
      raise OSError('no /proc here')
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', failing_open)

  assert machine.total_memory_gib() is None
  assert machine.available_bytes() is None
  assert ' GiB RAM' not in machine.hardware_line()


def test_device_available_bytes_from_allocator():
  device = _FakeDevice({'bytes_limit': 1000, 'bytes_in_use': 300})

  assert machine.device_available_bytes(device) == 700


def test_device_available_bytes_falls_back(monkeypatch):
  monkeypatch.setattr(machine, 'available_bytes', lambda: 12345)

  assert machine.device_available_bytes(_FakeDevice(None)) == 12345
  assert machine.device_available_bytes(_FakeDevice({})) == 12345


def test_peak_rss_positive():
  assert machine.peak_rss_mb() > 0


def test_load_average_unsupported(monkeypatch):
  def unsupported():
    raise OSError('no load average')

  monkeypatch.setattr(os, 'getloadavg', unsupported)

  assert machine.load_average() is None
