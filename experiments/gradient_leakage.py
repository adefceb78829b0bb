"""Gradient leakage on medical data, and which defences stop it.

Usage:
  python experiments/gradient_leakage.py [--quick] [--seed 0] [--out DIR]

Part 1, Fed-Heart-Disease records and a logistic regression (random
initialization, 13 z-scored features). A client's update is `steps` plain
SGD steps at learning rate 0.1 on the mean loss of its `batch` patients.
The honest-but-curious server runs the analytic attack
(`leakage.analytic`): the record is the first layer's weight update divided
by its bias update, and the label is the sign of the bias update. A record
counts as recovered when the estimate is within relative L2 error
`RECOVERED` of one of the client's records. Defences, one at a time:

* local batch size: 1 to 32 patients per update;
* local steps: 1 to 20 SGD steps of a one-patient client;
* clipping to L2 norm 0.1, alone and with Gaussian noise of standard
  deviation `multiplier * 0.1` on each update (local DP);
* secure aggregation: the server sees only the sum of K one-patient
  clients' updates.

A malicious server breaks secure aggregation: it sends a crafted model
whose first layer is an imprint layer of `imprint_bins` bins
(`leakage.imprint`, Fowl et al., 2022), with thresholds at quantiles of a
random projection of public data (FLamby's test rows). Each of K clients
holds 8 patients and sends its one-step update, and the server sees their
sum. Every record alone in its bin comes back exactly. Client-side noise
at a multiplier then hides them.

Part 2, patches of medical images that ship inside scikit-image's wheel
(`data.medical_images`: a retinal fundus photograph, a retinal
microaneurysm image, an immunohistochemistry slide and a cell micrograph,
16 x 16 grayscale, labelled by source) and a sigmoid MLP (one hidden layer
of 64, DLG's uniform initialization). The victim's gradient of its batch's
mean loss is attacked by optimization (`leakage.inversion`): DLG, iDLG
and Geiping et al.'s cosine matching with a total-variation prior, vmapped
over `image_victims` victims. Defences: batch size (reconstructed jointly,
then matched to the originals), and clipping to 1.0 with Gaussian noise at
a multiplier. Reconstructions are clipped to [0, 1], then paired with the
originals and scored by PSNR and SSIM, so pixels outside [0, 1] cost
nothing.

Each finished condition is appended to `results.jsonl` in the output
folder, then `results.md` and the figures are written.
"""

import argparse
import functools
import json
import pathlib
import shlex
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from fedjax_med import interrupts
from fedjax_med.data import heart_disease
from fedjax_med.data import medical_images
from fedjax_med.errors import InputError
from fedjax_med.leakage import analytic
from fedjax_med.leakage import imprint
from fedjax_med.leakage import inversion
from fedjax_med.leakage import metrics
from fedjax_med.models import tabular
from fedjax_med.models import vision
from fedjax_med.privacy.clipping import clip_update
from fedjax_med.privacy.noise import add_gaussian_noise
from fedjax_med.report import machine
from fedjax_med.report import outputs
from fedjax_med.report import script_help

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

LEARNING_RATE = 0.1
CLIP_NORM = 0.1
# An estimate within this relative L2 error of a record recovers it. Exact
# recoveries are within 1e-5 in float32 and failed ones 0.38 or more away.
RECOVERED = 0.1

FULL = {
    'victims': 64,
    'batch_sizes': (1, 2, 4, 8, 16, 32),
    'local_steps': (1, 5, 20),
    'noise_multipliers': (0.001, 0.01, 0.03, 0.1, 0.3, 1.0),
    'secure_cohorts': (1, 2, 4, 16),
    'imprint_bins': 128,
    'imprint_cohorts': (1, 8, 32),
    'imprint_noise_multipliers': (0.01, 0.1),
    'image_victims': 8,
    'image_methods': ('dlg', 'idlg', 'geiping'),
    'image_steps': {'dlg': 300, 'idlg': 300, 'geiping': 2000},
    'image_batch_sizes': (1, 4, 16),
    'image_noise_multipliers': (0.001, 0.01, 0.1),
}
QUICK = {
    'victims': 4,
    'batch_sizes': (1, 16),
    'local_steps': (5,),
    'noise_multipliers': (0.1,),
    'secure_cohorts': (4,),
    'imprint_bins': 64,
    'imprint_cohorts': (4,),
    'imprint_noise_multipliers': (0.1,),
    'image_victims': 2,
    'image_methods': ('idlg', 'geiping'),
    'image_steps': {'dlg': 10, 'idlg': 10, 'geiping': 20},
    'image_batch_sizes': (1, 4),
    'image_noise_multipliers': (0.1,),
}
IMAGE_CLIP_NORM = 1.0


@functools.lru_cache(maxsize=1)
def _key(seed: int, tag: int) -> jax.Array:
  """Return the key of stream `tag` of `seed`.

  `key(seed + tag)` made seed 1's image noise equal seed 0's attack keys.
  """
  return jax.random.fold_in(jax.random.key(seed), tag)


def heart_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Return the train features, train labels and test features."""
  data = heart_disease.load_heart_disease()
  train = [data.train.client(i) for i in range(data.num_clients)]
  test = [data.test.client(i) for i in range(data.num_clients)]
  return (np.concatenate([c['x'] for c in train]),
          np.concatenate([c['y'] for c in train]),
          np.concatenate([c['x'] for c in test]))


def _mean_loss(model, params, x, y):
  logits = model.apply(params, x)
  return jnp.mean(tabular.per_example_loss(logits, y, model.num_classes))


def sgd_update(model, params, x, y, steps: int):
  """Return the update of `steps` SGD steps on the mean loss of `x, y`."""
  gradient = jax.grad(functools.partial(_mean_loss, model))

  def step(trained, _):
    grads = gradient(trained, x, y)
    return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, trained,
                        grads), None

  trained, _ = jax.lax.scan(step, params, None, length=steps)
  return jax.tree.map(jnp.subtract, trained, params)


def privatize(update, key, multiplier: float | None):
  """Clip `update` to `CLIP_NORM`, then add noise at `multiplier` if set."""
  clipped = clip_update(update, CLIP_NORM).update
  if multiplier is None:
    return clipped
  return add_gaussian_noise(clipped, multiplier * CLIP_NORM, key=key)


def draw_clients(rng, num_clients: int, batch: int, distinct: bool = False):
  """Return `[clients, batch, 13]` records and labels of training patients.

  No patient appears twice in a client. With `distinct`, no patient appears
  twice at all, as in one round's cohort.
  """
  x, y, _ = heart_rows()
  if distinct:
    rows = rng.choice(x.shape[0], num_clients * batch, replace=False)
    rows = rows.reshape(num_clients, batch)
  else:
    rows = np.stack([rng.choice(x.shape[0], batch, replace=False)
                     for _ in range(num_clients)])
  return jnp.asarray(x[rows]), jnp.asarray(y[rows])


def _distinct_cohorts(rng, victims, cohort, batch):
  """Return records of `victims` cohorts, each of distinct patients."""
  parts = [draw_clients(rng, cohort, batch, distinct=True)
           for _ in range(victims)]
  records = jnp.concatenate([p[0] for p in parts])
  labels = jnp.concatenate([p[1] for p in parts])
  return records, labels


def analytic_condition(name, *, victims, batch=1, steps=1, clip=False,
                       multiplier=None, cohort=1, seed=0) -> dict[str, Any]:
  """Run the honest server's analytic attack on one defence setting.

  With `cohort` K > 1 the server sees the sum of K clients' updates and
  attacks that sum. Each of the `victims` sums is one attack.
  """
  model = tabular.from_flax(tabular.LogisticRegression(num_classes=2), 2)
  x_all, _, _ = heart_rows()
  params = model.init(jax.random.key(seed), jnp.asarray(x_all[:1]))
  rng = np.random.default_rng(seed)
  # The K clients of one secure sum are distinct patients.
  records, labels = draw_clients(rng, victims * cohort, batch)
  if cohort > 1:
    records, labels = _distinct_cohorts(rng, victims, cohort, batch)
  keys = jax.random.split(_key(seed, 1), victims * cohort)

  def client_update(x, y, key):
    update = sgd_update(model, params, x, y, steps)
    if clip or multiplier is not None:
      update = privatize(update, key, multiplier)
    return update

  start = time.perf_counter()
  updates = jax.jit(jax.vmap(client_update))(records, labels, keys)
  summed = jax.tree.map(
      lambda u: u.reshape(victims, cohort, *u.shape[1:]).sum(axis=1), updates)
  x_hat, label_hat = jax.vmap(analytic.recover_from_update)(summed)
  records = records.reshape(victims, cohort * batch, -1)
  labels = labels.reshape(victims, cohort * batch)
  errors = np.asarray(jax.vmap(analytic.record_error)(x_hat, records))
  # The label is judged only where one patient is behind the update.
  label_right = np.asarray(label_hat) == np.asarray(labels[:, 0])
  return {
      'part': 'analytic', 'condition': name, 'batch': batch, 'steps': steps,
      'clip_norm': CLIP_NORM if clip or multiplier is not None else None,
      'noise_multiplier': multiplier, 'cohort': cohort, 'victims': victims,
      'recovered_fraction': float(np.mean(errors < RECOVERED)),
      'median_error': float(np.median(errors)),
      'label_accuracy': (float(np.mean(label_right))
                         if batch * cohort == 1 else None),
      'seconds': time.perf_counter() - start,
  }


def imprint_condition(name, *, cohort, num_bins, multiplier=None,
                      records_per_client=8, seed=0) -> dict[str, Any]:
  """Run the malicious server's imprint attack on a sum of K clients."""
  x_all, _, public = heart_rows()
  measurement = imprint.random_measurement(_key(seed, 5), 13)
  thresholds = imprint.imprint_thresholds(
      public @ np.asarray(measurement), num_bins)
  params = imprint.make_imprint_params(
      _key(seed, 6), measurement, thresholds, 2)
  model = imprint.imprint_model(num_bins, 2)
  rng = np.random.default_rng((seed, 7))
  records, labels = draw_clients(rng, cohort, records_per_client,
                                 distinct=True)
  keys = jax.random.split(_key(seed, 8), cohort)

  def client_update(x, y, key):
    update = sgd_update(model, params, x, y, 1)
    if multiplier is not None:
      update = privatize(update, key, multiplier)
    return update

  start = time.perf_counter()
  updates = jax.jit(jax.vmap(client_update))(records, labels, keys)
  summed = jax.tree.map(lambda u: u.sum(axis=0), updates)
  layer = summed['params']['Dense_0']
  candidates, non_empty = imprint.recover_from_imprint(
      layer['kernel'], layer['bias'])
  flat = records.reshape(-1, records.shape[-1])
  errors = np.asarray(imprint.match_records(candidates, flat))
  return {
      'part': 'imprint', 'condition': name, 'cohort': cohort,
      'records': int(flat.shape[0]), 'bins': num_bins,
      'noise_multiplier': multiplier,
      'clip_norm': CLIP_NORM if multiplier is not None else None,
      'non_empty_bins': int(np.sum(np.asarray(non_empty))),
      'recovered_fraction': float(np.mean(errors < RECOVERED)),
      'exact_fraction': float(np.mean(errors < 1e-4)),
      'seconds': time.perf_counter() - start,
  }


def tabular_conditions(sizes, seed):
  """Yield every record of part 1, one condition at a time."""
  victims = sizes['victims']
  for batch in sizes['batch_sizes']:
    yield analytic_condition(f'batch {batch}', victims=victims, batch=batch,
                             seed=seed)
  for steps in sizes['local_steps']:
    yield analytic_condition(f'{steps} local steps', victims=victims,
                             steps=steps, seed=seed)
  yield analytic_condition('clip 0.1', victims=victims, steps=5, clip=True,
                           seed=seed)
  for multiplier in sizes['noise_multipliers']:
    yield analytic_condition(f'clip 0.1, noise {multiplier}', victims=victims,
                             steps=5, multiplier=multiplier, seed=seed)
  for cohort in sizes['secure_cohorts']:
    yield analytic_condition(f'secure sum of {cohort}', victims=victims,
                             cohort=cohort, seed=seed)
  for cohort in sizes['imprint_cohorts']:
    yield imprint_condition(f'imprint, {cohort} clients', cohort=cohort,
                            num_bins=sizes['imprint_bins'], seed=seed)
  largest = max(sizes['imprint_cohorts'])
  for multiplier in sizes['imprint_noise_multipliers']:
    yield imprint_condition(
        f'imprint, {largest} clients, noise {multiplier}', cohort=largest,
        num_bins=sizes['imprint_bins'], multiplier=multiplier, seed=seed)


def image_condition(name, method, *, patches, steps, victims, batch=1,
                    multiplier=None, seed=0):
  """Attack `victims` image victims of `batch` images with one method.

  Returns:
    `(record, originals, reconstructions)`, the images `[victims, batch,
    16, 16, 1]` for the figure.
  """
  module = vision.ImageMLP(num_classes=len(medical_images.CLASS_NAMES))
  loss_fn = vision.make_loss_fn(module)
  images = jnp.asarray(patches.images)
  labels = jnp.asarray(patches.labels)
  params = module.init(jax.random.key(seed), images[:1])
  rng = np.random.default_rng((seed, 11))
  rows = np.stack([rng.choice(images.shape[0], batch, replace=False)
                   for _ in range(victims)])
  originals, originals_labels = images[rows], labels[rows]
  noise_keys = jax.random.split(_key(seed, 12), victims)
  attack_keys = jax.random.split(_key(seed, 13), victims)

  def observe(x, y, key):
    grads = inversion.victim_gradient(loss_fn, params, x, y)
    if multiplier is None:
      return grads
    clipped = clip_update(grads, IMAGE_CLIP_NORM).update
    return add_gaussian_noise(clipped, multiplier * IMAGE_CLIP_NORM, key=key)

  start = time.perf_counter()
  observed = jax.vmap(observe)(originals, originals_labels, noise_keys)
  shape = (batch, *images.shape[1:])
  attack = jax.vmap(lambda g, k: inversion.reconstruct(
      method, loss_fn, params, g, shape, module.num_classes, k,
      steps=steps))
  result = attack(observed, attack_keys)
  # The published PSNR and SSIM were computed after this clip. The metrics
  # themselves compare reconstructions as given, and DLG's and iDLG's
  # unboxed reconstructions can leave [0, 1].
  reconstructed = np.clip(np.asarray(result.images), 0.0, 1.0)
  originals = np.asarray(originals)
  psnr, ssim = [], []
  for victim in range(victims):
    matched = metrics.best_match(reconstructed[victim], originals[victim])
    reconstructed[victim] = matched.reconstructions
    psnr.append(np.asarray(metrics.psnr(matched.reconstructions,
                                        originals[victim])))
    ssim.append(metrics.ssim(matched.reconstructions, originals[victim]))
  psnr, ssim = np.concatenate(psnr), np.concatenate(ssim)
  predicted = np.argmax(np.asarray(result.labels), axis=-1)
  record = {
      'part': 'images', 'condition': name, 'method': method, 'batch': batch,
      'noise_multiplier': multiplier,
      'clip_norm': IMAGE_CLIP_NORM if multiplier is not None else None,
      'steps': steps, 'victims': victims,
      'median_psnr': float(np.median(np.minimum(psnr, 100.0))),
      'median_ssim': float(np.median(ssim)),
      'label_accuracy': (float(np.mean(predicted == np.asarray(
          originals_labels))) if batch == 1 else None),
      'seconds': time.perf_counter() - start,
  }
  return record, originals, reconstructed


def image_conditions(sizes, seed):
  """Yield `(record, originals, reconstructions)` of every part 2 setting."""
  patches = medical_images.load_patches(size=16, per_image=32, key=seed)
  common = dict(patches=patches, victims=sizes['image_victims'], seed=seed)
  for method in sizes['image_methods']:
    steps = sizes['image_steps'][method]
    for batch in sizes['image_batch_sizes']:
      yield image_condition(f'{method}, batch {batch}', method, steps=steps,
                            batch=batch, **common)
  method = sizes['image_methods'][-1]
  steps = sizes['image_steps'][method]
  for multiplier in sizes['image_noise_multipliers']:
    yield image_condition(f'{method}, clip 1, noise {multiplier}', method,
                          steps=steps, multiplier=multiplier, **common)


def _append(path: pathlib.Path, record: dict[str, Any]) -> None:
  with path.open('a') as file:
    file.write(json.dumps(record) + '\n')


def _fraction(value) -> str:
  return f'{value:.2f}'


def _optional(value, pattern='{:.2f}') -> str:
  return '' if value is None else pattern.format(value)


def write_markdown(path, records, *, command, seed, elapsed_s, load_before,
                   load_after, quick=False) -> None:
  """Write the results page: one table per part."""
  analytic_rows = [r for r in records if r['part'] == 'analytic']
  imprint_rows = [r for r in records if r['part'] == 'imprint']
  image_rows = [r for r in records if r['part'] == 'images']
  lines = [
      '# Gradient leakage and defences',
      '',
      f'Command: `{command}` (seed {seed}), {elapsed_s:.0f} s on '
      f'{machine.hardware_line()}. '
      f'{machine.load_sentence(load_before, load_after)}',
      '',
  ]
  if quick:
    lines += ['A --quick smoke test: few victims and attack steps, so these '
              'numbers are not results.', '']
  lines += [
      '## Honest server, analytic attack, Fed-Heart-Disease',
      '',
      f'Recovered: the estimate is within relative L2 error {RECOVERED} of '
      "one of the client's records. Learning rate "
      f'{LEARNING_RATE}; clipping at L2 norm {CLIP_NORM}.',
      '',
      '| defence | patients per update | local steps | noise multiplier | '
      'clients summed | victims | recovered | median error | label '
      'accuracy |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in analytic_rows:
    lines.append(
        f"| {r['condition']} | {r['batch']} | {r['steps']} | "
        f"{_optional(r['noise_multiplier'], '{:g}')} | {r['cohort']} | "
        f"{r['victims']} | {_fraction(r['recovered_fraction'])} | "
        f"{r['median_error']:.2g} | {_optional(r['label_accuracy'])} |")
  lines += [
      '',
      '## Malicious server, imprint attack through secure aggregation',
      '',
      'Each client holds 8 patients and sends one SGD step on the crafted '
      'model; the server sees only the sum. Exact: relative error below '
      '1e-4.',
      '',
      '| setting | clients summed | records | bins | non-empty bins | noise '
      'multiplier | recovered | exact |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for r in imprint_rows:
    lines.append(
        f"| {r['condition']} | {r['cohort']} | {r['records']} | {r['bins']} "
        f"| {r['non_empty_bins']} | "
        f"{_optional(r['noise_multiplier'], '{:g}')} | "
        f"{_fraction(r['recovered_fraction'])} | "
        f"{_fraction(r['exact_fraction'])} |")
  lines += [
      '',
      '## Gradient inversion of medical image patches',
      '',
      'Median over victims of PSNR (dB, capped at 100) and SSIM of each '
      'original against its matched reconstruction. Reconstructions are '
      'clipped to [0, 1] before pairing and scoring.',
      '',
      '| attack and defence | images per gradient | noise multiplier | '
      'steps | victims | median PSNR | median SSIM | label accuracy | '
      'seconds |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in image_rows:
    lines.append(
        f"| {r['condition']} | {r['batch']} | "
        f"{_optional(r['noise_multiplier'], '{:g}')} | {r['steps']} | "
        f"{r['victims']} | {r['median_psnr']:.1f} | "
        f"{r['median_ssim']:.3f} | {_optional(r['label_accuracy'])} | "
        f"{r['seconds']:.0f} |")
  path.write_text('\n'.join(lines) + '\n')


def plot_tabular(path, records) -> None:
  """Plot the recovered fraction against each defence's strength."""
  analytic_rows = [r for r in records if r['part'] == 'analytic']
  imprint_rows = [r for r in records
                  if r['part'] == 'imprint' and r['noise_multiplier'] is None]
  panels = [
      ('patients per update', [r for r in analytic_rows
                               if r['condition'].startswith('batch')],
       'batch', 'log'),
      ('noise multiplier (clip 0.1)', [
          r for r in analytic_rows
          if r['noise_multiplier'] is not None], 'noise_multiplier', 'log'),
      ('clients in the secure sum', [
          r for r in analytic_rows if r['condition'].startswith('secure')],
       'cohort', 'log'),
  ]
  figure, axes = plt.subplots(1, len(panels), figsize=(12, 3.5), sharey=True)
  for axis, (label, rows, key, scale) in zip(axes, panels):
    if rows:
      axis.plot([r[key] for r in rows],
                [r['recovered_fraction'] for r in rows], 'o-',
                label='honest server, analytic')
    axis.set_xscale(scale)
    axis.set_xlabel(label)
    axis.grid(alpha=0.3, which='both')
  if imprint_rows:
    axes[2].plot([r['cohort'] for r in imprint_rows],
                 [r['recovered_fraction'] for r in imprint_rows], 's--',
                 color='tab:red', label='malicious server, imprint (8 '
                 'patients per client)')
  axes[0].set_ylabel('fraction of records recovered')
  axes[2].legend(fontsize='x-small')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def plot_images(path, examples, max_victims: int = 6) -> None:
  """Show originals and reconstructions side by side, one row per setting."""
  rows = [('original', examples[0][1])] + [
      (record['condition'], reconstructed) for record, _, reconstructed in
      examples]
  columns = min(max_victims, examples[0][1].shape[0])
  figure, axes = plt.subplots(len(rows), columns,
                              figsize=(1.3 * columns + 1.6, 1.3 * len(rows)),
                              squeeze=False)
  for row, (label, images) in enumerate(rows):
    for column in range(columns):
      axis = axes[row][column]
      axis.imshow(images[column, 0, :, :, 0], cmap='gray', vmin=0, vmax=1)
      axis.set_xticks([])
      axis.set_yticks([])
    axes[row][0].set_ylabel(label, rotation=0, ha='right', va='center',
                            fontsize='x-small')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def plot_quality(path, records) -> None:
  """Plot PSNR against batch size per method and against noise."""
  image_rows = [r for r in records if r['part'] == 'images']
  figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
  for method in sorted({r['method'] for r in image_rows}):
    rows = [r for r in image_rows
            if r['method'] == method and r['noise_multiplier'] is None]
    left.plot([r['batch'] for r in rows], [r['median_psnr'] for r in rows],
              'o-', label=method)
    noisy = [r for r in image_rows
             if r['method'] == method and r['noise_multiplier'] is not None]
    if noisy:
      right.plot([r['noise_multiplier'] for r in noisy],
                 [r['median_psnr'] for r in noisy], 'o-', label=method)
  left.set_xscale('log', base=2)
  left.set_xlabel('images per gradient')
  right.set_xscale('log')
  right.set_xlabel(f'noise multiplier (clip {IMAGE_CLIP_NORM:g}, batch 1)')
  for axis in (left, right):
    axis.set_ylabel('median PSNR (dB)')
    axis.grid(alpha=0.3, which='both')
    if axis.get_legend_handles_labels()[0]:
      axis.legend(fontsize='x-small')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run(sizes, *, seed, out_dir, command) -> list[dict[str, Any]]:
  """Run both parts, writing each record as it finishes, then the pages."""
  start = time.perf_counter()
  load_before = machine.load_average()
  results = out_dir / 'results.jsonl'
  records = []
  for record in tabular_conditions(sizes, seed):
    _append(results, record)
    records.append(record)
    print(f"{record['condition']}: recovered "
          f"{record['recovered_fraction']:.2f}", flush=True)
    interrupts.raise_if_requested()
  examples = []
  for record, originals, reconstructed in image_conditions(sizes, seed):
    _append(results, record)
    records.append(record)
    examples.append((record, originals, reconstructed))
    print(f"{record['condition']}: PSNR {record['median_psnr']:.1f} dB "
          f"({record['seconds']:.0f} s)", flush=True)
    interrupts.raise_if_requested()
  write_markdown(out_dir / 'results.md', records, command=command, seed=seed,
                 elapsed_s=time.perf_counter() - start,
                 load_before=load_before, load_after=machine.load_average(),
                 quick=sizes is QUICK)
  plot_tabular(out_dir / 'leakage_heart.png', records)
  single = [e for e in examples if e[0]['batch'] == 1]
  plot_images(out_dir / 'leakage_images.png', single)
  plot_quality(out_dir / 'leakage_quality.png', records)
  return records


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='reduced sizes for a smoke test.')
  parser.add_argument('--seed', type=script_help.seed_type(2**31), default=0,
                      help='seed of the model, clients, noise and attacks '
                      '(default: 0).')
  parser.add_argument('--out', type=pathlib.Path, default=None,
                      help='new or empty output folder (default: a fresh '
                      'runs/gradient_leakage-<time>).')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  sizes = QUICK if args.quick else FULL
  command = shlex.join(['python', 'experiments/gradient_leakage.py', *argv])
  try:
    out_dir = outputs.make_run_dir(args.out, 'gradient_leakage')
    with script_help.stop_on_ctrl_c('gradient_leakage.py',
                                    out_dir / 'results.jsonl', 'condition'):
      run(sizes, seed=args.seed, out_dir=out_dir, command=command)
  except InputError as error:
    print(f'gradient_leakage.py: error: {error}', file=sys.stderr)
    return 2
  print((out_dir / 'results.md').read_text())
  print(f'Results in {out_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
