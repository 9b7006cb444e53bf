"""Performance benchmarks of the SelfMedHPM bundles (``make bench`` / ``make bench-quick``), not part of ``make test``.

Entry point: ``python -m selfmedhpm.benchmarks.run [--quick]``. One module per figure:

* :mod:`selfmedhpm.benchmarks.step`: HPM vs MONAI MAE pretraining iteration (time, FLOPs, MFU), teacher precision and
  its effect on the hard-patch mask, iteration time vs crop size.
* :mod:`selfmedhpm.benchmarks.loader`: crops per second of the pretraining bundle's data loader vs the training step.
* :mod:`selfmedhpm.benchmarks.inference`: the segmentation inference bundle end to end vs a bare sliding window, peak
  memory, time vs volume size.
* :mod:`selfmedhpm.benchmarks.precision`: fp32 vs bf16 autocast on CPU: speed and loss curves of both bundles.

:mod:`selfmedhpm.benchmarks.report` writes ``docs/benchmarks.md`` and ``docs/benchmarks.json``.
"""
