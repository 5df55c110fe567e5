"""The method layer: MeDS and its baselines on top of the kernels.

Frozen encoder features (:mod:`~meds.method.backbones`), the memory-bank ensemble
(:mod:`~meds.method.memory`), the reconstruction network and its distillation with
progressive selection (:mod:`~meds.method.network`, :mod:`~meds.method.train`), anomaly
maps (:mod:`~meds.method.scoring`), the shared detector plumbing
(:mod:`~meds.method.detector`), the baselines (:mod:`~meds.method.baselines`) and the
estimator :class:`~meds.method.model.MeDS`.
"""
