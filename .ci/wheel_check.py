"""Run by .ci/run in a fresh venv that holds only the repaired meds wheel and numpy (no torch).

Checks that the installed extension (not the source tree) loads with what auditwheel bundled
(OpenMP runtime) and that a kernel call gives the brute-force answer. It calls the raw-pointer
binding directly because the public array API (meds.kernels.ops) needs torch.
"""

import os
import sys

import numpy as np

import meds
from meds import _C

here = os.path.dirname(os.path.abspath(meds.__file__))
assert here.startswith(sys.prefix), f"meds imported from {here}, not from the fresh venv {sys.prefix}"
info = _C.build_info()
assert info["openmp"], info

rng = np.random.default_rng(0)
queries = rng.standard_normal((300, 64), dtype=np.float32)
memory = rng.standard_normal((1000, 64), dtype=np.float32)
groups = np.repeat(np.arange(10), 100).astype(np.int64)
out = np.empty((300, 10), dtype=np.float32)
_C.group_min_distance(queries=queries.ctypes.data, nq=300, query_row_stride=64, memory=memory.ctypes.data,
                      nm=1000, memory_row_stride=64, d=64, dtype=0, groups=groups.ctypes.data, n_groups=10,
                      query_groups=0, exclude_self=False, metric=0, precision=0, out=out.ctypes.data,
                      device=-1, stream=0, num_threads=0)
q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
m = memory / np.linalg.norm(memory, axis=1, keepdims=True)
expected = (1.0 - q.astype(np.float64) @ m.T.astype(np.float64)).reshape(300, 10, 100).min(axis=2)
np.testing.assert_allclose(out, expected, atol=1e-5)
print(f"wheel ok: meds {meds.__version__} from {here}; cuda={info['cuda']}, openmp={info['openmp_version']}, "
      f"simd={info['simd_selected']}")
