"""The Python example of docs/vertical.md runs as written."""

import pathlib
import re

import numpy as np

DOC = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'vertical.md'


def test_docs_example_runs():
  page = DOC.read_text()
  example = re.findall(r'```python\n(.*?)```', page, re.S)[0]
  namespace = {}
  exec(compile(example, str(DOC), 'exec'), namespace)  # pylint: disable=exec-used
  aligned = namespace['aligned']
  logits = namespace['logits']
  assert len(namespace['common'].intersection) == 534
  assert logits.shape == aligned.test_labels.shape
  # The heart split's joined model: 0.742 test accuracy.
  assert np.mean((logits > 0) == aligned.test_labels) > 0.7
