"""meds: noise-robust industrial anomaly detection (MeDS, Memory-Distilled Selection).

The kernel functions (``group_min_distance``, ``ensemble_distance``, ``sample_banks``,
``expected_min_distance``, ``build_info``) live in :mod:`meds.kernels.ops`; the estimator
:class:`MeDS` in :mod:`meds.method.model`. Both are imported on first use so that
``import meds`` stays cheap (torch and timm load only when needed).
"""

# The one place of the version: pyproject.toml (scikit-build-core regex provider) and
# CMakeLists.txt (SKBUILD_PROJECT_VERSION) read it from here.
__version__ = "0.1.0"

_LAZY = {
    "group_min_distance": "meds.kernels.ops",
    "ensemble_distance": "meds.kernels.ops",
    "sample_banks": "meds.kernels.ops",
    "expected_min_distance": "meds.kernels.ops",
    "build_info": "meds.kernels.ops",
    "MeDS": "meds.method.model",
    "memory_scores": "meds.method.memory",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meds' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
