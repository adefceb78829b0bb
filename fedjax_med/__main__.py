"""Allow `python -m fedjax_med run ...`."""

import sys

from fedjax_med import cli

sys.exit(cli.main())
