"""Machine facts that the benchmark scripts record with their results.

The scripts under `benchmarks/` print a dated markdown section and can append
it to a results page. They share the helpers here so every section names the
hardware, load and memory the same way.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import resource

import jax


def _meminfo_kib(field: str) -> int | None:
  try:
    with open('/proc/meminfo', encoding='ascii') as meminfo:
      for line in meminfo:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def total_memory_gib() -> float | None:
  """Return the machine's RAM in GiB, or None where /proc/meminfo is missing."""
  kib = _meminfo_kib('MemTotal')
  return None if kib is None else kib / 2**20


def available_bytes() -> int | None:
  """Return MemAvailable in bytes, or None where /proc/meminfo is missing."""
  kib = _meminfo_kib('MemAvailable')
  return None if kib is None else kib * 1024


def device_available_bytes(device: jax.Device) -> int | None:
  """Return the memory free for new buffers on `device`, or None if unknown.

  An accelerator reports its allocator's limit minus the bytes in use. A CPU
  reports no limit, so this falls back to MemAvailable from /proc/meminfo,
  which exists only on Linux.
  """
  stats = device.memory_stats()
  if stats and 'bytes_limit' in stats:
    return stats['bytes_limit'] - stats.get('bytes_in_use', 0)
  return available_bytes()


def peak_rss_mb() -> float:
  """Return this process's peak resident memory in MB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> float | None:
  """Return the 1-minute load average, or None where the OS has none."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def cpu_model() -> str:
  """Return the CPU's model name from /proc/cpuinfo, or the architecture."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      for line in cpuinfo:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware_line() -> str:
  """Return the device, CPU, RAM and JAX version as one phrase."""
  device = jax.devices()[0]
  memory = total_memory_gib()
  memory_text = '' if memory is None else f', {memory:.0f} GiB RAM'
  return (
      f'{device.platform} ({device.device_kind}, {cpu_model()}, '
      f'{os.cpu_count()} CPU cores{memory_text}, {platform.machine()}), '
      f'JAX {jax.__version__}'
  )


def section_heading(title: str) -> str:
  """Return a results-page heading with today's date."""
  return f'### {title}, {datetime.date.today().isoformat()}'


def load_sentence(before: float | None, after: float | None = None) -> str:
  """Return a sentence on the load average around a run, or '' if unknown."""
  if before is None:
    return ''
  if after is None:
    return f' The 1-minute load average before the run was {before:.2f}.'
  return (
      f' The 1-minute load average was {before:.2f} before the run and '
      f'{after:.2f} after it.'
  )


def append_section(path: str | os.PathLike | None, page: str) -> None:
  """Append `page` to the results file at `path`; do nothing if path is None."""
  if not path:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('a', encoding='utf-8') as results:
    results.write(page)
