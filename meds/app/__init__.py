"""The application layer: the ``meds`` command line (:mod:`~meds.app.cli`), the demo
(:mod:`~meds.app.demo`), the audit report and prediction outputs (:mod:`~meds.app.report`)
and the image drawing they use (:mod:`~meds.app.viz`)."""
