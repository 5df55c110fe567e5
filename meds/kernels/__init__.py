"""The kernel layer: the array API over the compiled extension ``meds._C``.

:mod:`meds.kernels.ops` validates and chunks the inputs of ``group_min_distance``,
``ensemble_distance`` and ``expected_min_distance`` and draws the memory banks
(``sample_banks``); :mod:`meds.kernels.bench` times them (``meds bench``).
"""
