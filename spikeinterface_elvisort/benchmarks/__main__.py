"""``python -m spikeinterface_elvisort.benchmarks``: the ``elvisort-benchmark`` console script."""

import sys

from .cli import main

sys.exit(main())
