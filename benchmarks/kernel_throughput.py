"""Kernel throughput table: the same benchmark as ``meds bench`` (it lives in meds.kernels.bench).

    python benchmarks/kernel_throughput.py [--quick] [--device cpu|cuda] [--json PATH]
"""

import sys

from meds.kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
