"""experiments/gradient_leakage.py at --quick size."""

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def quick_run(load_script, tmp_path_factory):
  out = tmp_path_factory.mktemp('gradient_leakage')
  script = load_script('experiments/gradient_leakage.py')
  status = script.main(['--quick', '--out', str(out)])
  lines = (out / 'results.jsonl').read_text().splitlines()
  records = {}
  for line in lines:
    record = json.loads(line)
    records[record['condition']] = record
  return status, out, records


def test_quick_run_writes_outputs(quick_run, markdown_tables):
  status, out, records = quick_run
  assert status == 0
  for name in ('leakage_heart.png', 'leakage_images.png',
               'leakage_quality.png'):
    assert (out / name).stat().st_size > 0
  page = (out / 'results.md').read_text()
  analytic, malicious, images = markdown_tables(page)
  assert len(analytic) == 6
  assert len(malicious) == 2
  assert len(images) == 5
  assert len(records) == 13
  # Both pages state that the scores are of clipped reconstructions. The
  # check sits here, not in a test of its own, so that pytest-xdist does
  # not run the 28 s fixture a second time on the other worker.
  statement = (
      'Reconstructions are clipped to [0, 1] before pairing and scoring.'
  )
  assert statement in page
  assert statement in (
      ROOT / 'experiments' / 'gradient_leakage.md').read_text()


def test_quick_run_analytic_defences(quick_run):
  _, _, records = quick_run
  assert records['batch 1']['recovered_fraction'] == 1.0
  assert records['batch 1']['label_accuracy'] == 1.0
  assert records['5 local steps']['recovered_fraction'] == 1.0
  assert records['batch 16']['recovered_fraction'] == 0.0
  assert records['clip 0.1, noise 0.1']['recovered_fraction'] == 0.0
  assert records['secure sum of 4']['recovered_fraction'] == 0.0


def test_quick_run_imprint_breaks_secure_sum(quick_run):
  _, _, records = quick_run
  assert records['imprint, 4 clients']['exact_fraction'] >= 0.25
  assert records['imprint, 4 clients, noise 0.1']['recovered_fraction'] == 0.0


def test_quick_run_image_batch_hides_images(quick_run):
  _, _, records = quick_run
  single = records['idlg, batch 1']
  batch = records['idlg, batch 4']
  assert single['label_accuracy'] == 1.0
  assert single['median_psnr'] > batch['median_psnr'] + 5
