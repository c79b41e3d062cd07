"""Experiment harness: the ``torchkron`` command line and the studies behind it.

Not imported by ``import torchkron``; ``python -m torchkron`` and the console script reach
it through :mod:`torchkron.experiments.cli`. It uses public library names only.
"""
