"""Vertical federated learning on Fed-Heart-Disease: accuracy and cost.

Usage:
  python experiments/vertical_heart.py [--quick] [--seed 0] [--out DIR]

Three parties hold different columns of the same patients
(`vertical.data.split_heart_disease`): cardiology (exercise test and chest
pain type, and the labels), primary care (age, sex, blood pressure,
cholesterol, fasting blood sugar) and an ECG service (resting ECG), each a
record of a random 95%, 90% and 85% of the 740 patients. The run:

1. aligns the patients by private set intersection (`vertical.psi`) and
   checks that the result is the true intersection;
2. trains logistic regression by full-batch gradient descent on the common
   training patients in these settings:
   * each party alone, on its own columns. Only cardiology has the labels,
     so the rows of the other two show what their columns would give a
     party that had them;
   * centralized, on the joined columns, with the exact and the Taylor
     loss;
   * vertical, by secret sharing (`vertical.secret_sharing`), with the
     exact and the Taylor loss;
   * vertical, by Paillier encryption (`vertical.paillier`, Taylor loss),
     for `paillier_epochs` epochs only because each epoch encrypts every
     row; its weights are compared with centralized Taylor training of the
     same epochs;
3. reports test accuracy and AUROC on FLamby's test patients, the time per
   epoch of the plaintext, secret-sharing and Paillier training measured in
   this run, and each party's messages, bytes and operations per epoch.

Results go to `results.jsonl` as each step finishes, then `results.md` and
`vertical_heart.png` in the output folder.
"""

import argparse
import json
import pathlib
import shlex
import sys
import time
from typing import Any

import matplotlib
import numpy as np

from fedjax_med import interrupts
from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.evaluation import clinical
from fedjax_med.report import machine
from fedjax_med.report import outputs
from fedjax_med.report import script_help
from fedjax_med.vertical import cost
from fedjax_med.vertical import data
from fedjax_med.vertical import paillier
from fedjax_med.vertical import plaintext
from fedjax_med.vertical import psi
from fedjax_med.vertical import secret_sharing

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

FULL = {
    'hospitals': None,
    'epochs': 200,
    'learning_rate': 0.5,
    'paillier_epochs': 5,
    'key_bits': 2048,
}
# Long Beach VA's 130 patients only, an insecure 512-bit key and few epochs:
# a smoke test.
QUICK = {
    'hospitals': ('va',),
    'epochs': 5,
    'learning_rate': 0.5,
    'paillier_epochs': 1,
    'key_bits': 512,
}


def restrict_hospitals(dataset: data.VerticalDataset,
                       hospitals) -> data.VerticalDataset:
  """Keep only the patients of `hospitals` (identifier prefixes)."""
  if hospitals is None:
    return dataset
  prefixes = tuple(f'{name}-' for name in hospitals)
  parties = []
  for party in dataset.parties:
    keep = np.asarray([i.startswith(prefixes) for i in party.ids], bool)
    parties.append(data.PartyData(
        name=party.name,
        ids=tuple(np.asarray(party.ids)[keep]),
        features=party.features[keep],
        feature_names=party.feature_names,
        labels=None if party.labels is None else party.labels[keep],
    ))
  return data.VerticalDataset(dataset.name, tuple(parties), dataset.test_ids)


def _append(path: pathlib.Path, record: dict[str, Any]) -> None:
  with path.open('a') as file:
    file.write(json.dumps(record) + '\n')


# Bootstrap resamples of the test patients for the AUROC intervals.
NUM_RESAMPLES = 1000


def _scores(model: plaintext.LogisticModel, aligned: data.AlignedData,
            parties, baseline: np.ndarray | None,
            resample_counts: np.ndarray) -> dict[str, Any]:
  """Return test accuracy and AUROC of a model over the given parties.

  The AUROC interval is a 95% percentile bootstrap over `resample_counts`.
  With a `baseline` AUROC per resample, the same resamples also give a
  paired interval of the difference to the baseline.
  """
  logits = model.logits(tuple(aligned.test_features[k] for k in parties))
  labels = aligned.test_labels
  probabilities = plaintext.sigmoid(logits)
  resampled = clinical.auroc(labels, probabilities,
                             sample_weight=resample_counts)
  valid = np.isfinite(resampled)
  scores = {
      'accuracy': float(np.mean((logits > 0) == labels)),
      'auroc': float(clinical.auroc(labels, probabilities)),
      'auroc_ci': [float(v) for v in
                   np.quantile(resampled[valid], [0.025, 0.975])],
      'train_loss': model.losses[-1],
  }
  if baseline is not None:
    difference = (resampled - baseline)[valid & np.isfinite(baseline)]
    scores['auroc_gain_ci'] = [
        float(v) for v in np.quantile(difference, [0.025, 0.975])]
  scores['resampled_auroc'] = resampled
  return scores


def run_psi(dataset: data.VerticalDataset, seed: int,
            results: pathlib.Path) -> dict[str, Any]:
  """Align the parties by PSI and check the result against the truth."""
  ledger = cost.CostLedger(dataset.party_names)
  start = time.perf_counter()
  result = psi.run_psi([p.ids for p in dataset.parties],
                       dataset.party_names, seed, ledger)
  seconds = time.perf_counter() - start
  truth = sorted(set.intersection(*(set(p.ids) for p in dataset.parties)))
  if list(result.intersection) != truth:
    raise RuntimeError('PSI returned a set other than the true intersection')
  record = {
      'kind': 'psi',
      'set_sizes': [len(p.ids) for p in dataset.parties],
      'intersection_size': len(result.intersection),
      'seconds': seconds,
      'learned': result.learned,
      'cost': ledger.as_dict(),
  }
  _append(results, record)
  return record | {'intersection': result.intersection}


def run_models(aligned: data.AlignedData, sizes: dict[str, Any], seed: int,
               results: pathlib.Path) -> list[dict[str, Any]]:
  """Train every setting, appending each result as it finishes."""
  names = aligned.party_names
  x, y = aligned.train_features, aligned.train_labels
  num_test = aligned.test_labels.shape[0]
  # `vertical.data` draws which patients each party has from
  # default_rng(seed), so the resamples take a stream of their own.
  resample_counts = np.random.default_rng(
      federated.derived_seed('auroc_bootstrap', seed)).multinomial(
      num_test, np.full(num_test, 1 / num_test), size=NUM_RESAMPLES)
  rows = []
  baseline = []  # the label holder alone, AUROC per resample

  def record(setting, loss, model, parties, seconds, epochs, **extra):
    row = {'kind': 'model', 'setting': setting, 'loss': loss,
           'epochs': epochs, 'epoch_seconds': seconds}
    scores = _scores(model, aligned, parties,
                     baseline[0] if baseline else None, resample_counts)
    if not baseline:
      baseline.append(scores['resampled_auroc'])
    del scores['resampled_auroc']
    row |= scores | extra
    _append(results, row)
    rows.append(row)
    interrupts.raise_if_requested()
    return row

  def settings(loss, epochs=sizes['epochs']):
    return plaintext.TrainingSettings(
        loss=loss, epochs=epochs, learning_rate=sizes['learning_rate'],
        seed=seed)

  for k, name in enumerate(names):
    model = plaintext.train_centralized((x[k],), y, settings('exact'))
    record(f'{name} alone', 'exact', model, (k,), None, sizes['epochs'],
           has_labels=k == 0)
  everyone = tuple(range(len(names)))
  central = {}
  for loss in plaintext.LOSSES:
    central[loss], seconds = plaintext.train_centralized_timed(
        x, y, settings(loss))
    record('centralized', loss, central[loss], everyone,
           float(np.median(seconds)), sizes['epochs'])
  for loss in plaintext.LOSSES:
    result = secret_sharing.train(x, y, settings(loss), names)
    gap = max(np.abs(a - b).max()
              for a, b in zip(result.model.weights, central[loss].weights))
    record('vertical, secret sharing', loss, result.model, everyone,
           float(np.median(result.epoch_seconds)), sizes['epochs'],
           max_weight_gap=float(gap),
           cost=result.epochs_ledger.as_dict(per=sizes['epochs']))

  epochs = sizes['paillier_epochs']
  result = paillier.train(x, y, settings('taylor', epochs), names,
                          key_bits=sizes['key_bits'], seed=seed)
  reference = plaintext.train_centralized(x, y, settings('taylor', epochs))
  gap = max(np.abs(a - b).max()
            for a, b in zip(result.model.weights, reference.weights))
  record('vertical, Paillier', 'taylor', result.model, everyone,
         float(np.median(result.epoch_seconds)), epochs,
         max_weight_gap=float(gap), key_bits=sizes['key_bits'],
         loss_seconds=float(np.median(result.loss_seconds)),
         cost=result.epochs_ledger.as_dict(per=epochs))
  return rows


def _cost_table(rows, psi_record, names) -> list[str]:
  """Return markdown lines of the per-party cost of every protocol."""
  lines = ['| protocol | party | messages sent | bytes sent | bytes '
           'received | exponentiations | encryptions | decryptions | '
           'ciphertext operations |', '|---' * 9 + '|']

  def add(label, costs):
    for party, count in costs.items():
      operations = count['ciphertext_additions'] + count['ciphertext_scalings']
      lines.append(
          f"| {label} | {party} | {count['messages_sent']:,.0f} | "
          f"{count['bytes_sent']:,.0f} | {count['bytes_received']:,.0f} | "
          f"{count['exponentiations']:,.0f} | {count['encryptions']:,.0f} | "
          f"{count['decryptions']:,.0f} | {operations:,.0f} |")

  add('PSI (once)', psi_record['cost'])
  for row in rows:
    if 'cost' in row:
      add(f"{row['setting']}, {row['loss']} loss, per epoch", row['cost'])
  return lines


def _ratio(value: float) -> str:
  return f'{value:,.0f}x' if value >= 10 else f'{value:.2f}x'


def write_markdown(path, psi_record, rows, *, sizes, seed, command,
                   elapsed_s, load_before, load_after) -> None:
  """Write the results page."""
  sizes_text = ', '.join(str(n) for n in psi_record['set_sizes'])
  lines = [
      '# Vertical logistic regression on Fed-Heart-Disease',
      '',
      f'Command: `{command}` (seed {seed}), {elapsed_s:.0f} s on '
      f'{machine.hardware_line()}. {machine.load_sentence(load_before, load_after)}',
      '',
      '## Private set intersection',
      '',
      f'Set sizes {sizes_text}; {psi_record["intersection_size"]} patients '
      f'in common, equal to the true intersection; '
      f'{psi_record["seconds"]:.1f} s for the whole protocol (2048-bit MODP '
      'group, 256-bit exponents).',
      '',
      '## Accuracy on the common test patients',
      '',
      '| setting | loss | epochs | test accuracy | test AUROC (95% CI) | '
      'AUROC gain over the label holder alone (95% CI) | final training '
      'loss | max weight gap to centralized |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    gap = row.get('max_weight_gap')
    gap_text = '' if gap is None else f'{gap:.1e}'
    label = row['setting']
    if row.get('has_labels') is False:
      label += ' (if it had the labels)'
    low, high = row['auroc_ci']
    gain_text = ''
    if 'auroc_gain_ci' in row:
      gain_low, gain_high = row['auroc_gain_ci']
      gain_text = f'{gain_low:+.3f} to {gain_high:+.3f}'
    lines.append(
        f"| {label} | {row['loss']} | {row['epochs']} | "
        f"{row['accuracy']:.4f} | {row['auroc']:.4f} ({low:.3f}-{high:.3f}) "
        f"| {gain_text} | {row['train_loss']:.4f} | {gap_text} |")
  lines += [
      '',
      f'Intervals: {NUM_RESAMPLES} bootstrap resamples of the test patients, '
      'the same resamples for every row, so the gain is a paired '
      'difference.',
      '',
      'The Paillier row trains for only its few epochs; its weight gap is '
      'to centralized Taylor training of the same epochs.',
      '',
      '## Time per epoch, measured in this run',
      '',
      '| training | seconds per epoch | relative to plaintext | relative to '
      'secret sharing |',
      '|---|---|---|---|',
  ]
  plain = next(r['epoch_seconds'] for r in rows
               if r['setting'] == 'centralized' and r['loss'] == 'taylor')
  shared = next(r['epoch_seconds'] for r in rows
                if r['setting'] == 'vertical, secret sharing'
                and r['loss'] == 'taylor')
  for row in rows:
    if row['epoch_seconds'] is None:
      continue
    label = f"{row['setting']}, {row['loss']} loss"
    if 'key_bits' in row:
      label += f", {row['key_bits']}-bit key"
    lines.append(f"| {label} | {row['epoch_seconds']:.4g} | "
                 f"{_ratio(row['epoch_seconds'] / plain)} | "
                 f"{_ratio(row['epoch_seconds'] / shared)} |")
  lines += [
      '',
      'Plaintext training is numpy on the joined columns. Secret sharing '
      'runs each step as one compiled JAX function, so its epoch time is '
      'mostly dispatch at this size. Both protocols run every party in this '
      'one process, one after another, and neither epoch time includes the '
      'loss evaluation. The Paillier loss evaluation took '
      f"{next(r['loss_seconds'] for r in rows if 'loss_seconds' in r):.3g} "
      's per evaluation.',
      '',
      '## Cost per party',
      '',
  ]
  lines += _cost_table(rows, psi_record, [])
  path.write_text('\n'.join(lines) + '\n')


def plot_results(path: pathlib.Path, rows) -> None:
  """Plot test AUROC with its interval, and seconds per epoch."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  labels = [
      f"{r['setting']}\n{r['loss']}, {r['epochs']} "
      f"epoch{'s' if r['epochs'] > 1 else ''}" for r in rows]
  auroc = np.asarray([r['auroc'] for r in rows])
  bounds = np.asarray([r['auroc_ci'] for r in rows])
  errors = np.stack([auroc - bounds[:, 0], bounds[:, 1] - auroc])
  left.barh(labels, auroc, xerr=errors, color='tab:blue', capsize=3)
  left.axvline(0.5, color='grey', linewidth=0.8)
  left.set_xlabel('test AUROC, 95% bootstrap interval')
  left.set_xlim(0.0, 1.0)
  left.invert_yaxis()
  left.tick_params(axis='y', labelsize='x-small')
  timed = [r for r in rows if r['epoch_seconds'] is not None]
  right.barh([f"{r['setting']}\n{r['loss']}" for r in timed],
             [r['epoch_seconds'] for r in timed], color='tab:orange')
  right.set_xscale('log')
  right.set_xlabel('seconds per epoch (log scale)')
  right.invert_yaxis()
  right.tick_params(axis='y', labelsize='x-small')
  for axes in (left, right):
    axes.grid(alpha=0.3, axis='x', which='both')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run(sizes: dict[str, Any], *, seed: int, out_dir: pathlib.Path,
        command: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Run PSI and every training setting, then write the page and figure."""
  start = time.perf_counter()
  load_before = machine.load_average()
  results = out_dir / 'results.jsonl'
  dataset = restrict_hospitals(data.split_heart_disease(seed=seed),
                               sizes['hospitals'])
  psi_record = run_psi(dataset, seed, results)
  print(f"PSI: {psi_record['intersection_size']} common patients in "
        f"{psi_record['seconds']:.1f} s", flush=True)
  interrupts.raise_if_requested()
  aligned = data.align(dataset, psi_record['intersection'])
  rows = run_models(aligned, sizes, seed, results)
  write_markdown(
      out_dir / 'results.md', psi_record, rows, sizes=sizes, seed=seed,
      command=command, elapsed_s=time.perf_counter() - start,
      load_before=load_before, load_after=machine.load_average())
  plot_results(out_dir / 'vertical_heart.png', rows)
  return psi_record, rows


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='the reduced sizes '
                      f'{script_help.format_sizes(QUICK)}, for a smoke test.')
  parser.add_argument('--seed', type=script_help.seed_type(2**32), default=0,
                      help='seed of the split, PSI keys, shares and masks '
                      '(default: 0).')
  parser.add_argument('--out', type=pathlib.Path, default=None,
                      help='new or empty output folder (default: a fresh '
                      'runs/vertical_heart-<time>).')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  sizes = QUICK if args.quick else FULL
  command = shlex.join(['python', 'experiments/vertical_heart.py', *argv])
  try:
    out_dir = outputs.make_run_dir(args.out, 'vertical_heart')
    with script_help.stop_on_ctrl_c('vertical_heart.py',
                                    out_dir / 'results.jsonl', 'setting'):
      run(sizes, seed=args.seed, out_dir=out_dir, command=command)
  except InputError as error:
    print(f'vertical_heart.py: error: {error}', file=sys.stderr)
    return 2
  print((out_dir / 'results.md').read_text())
  print(f'Results in {out_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
