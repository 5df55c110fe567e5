"""The evaluation layer: metrics (:mod:`~meds.evaluation.metrics`) and the noise-robustness
experiment protocol (:mod:`~meds.evaluation.experiment`)."""
