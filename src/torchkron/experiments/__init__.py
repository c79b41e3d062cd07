"""Experiment harness: MNIST data, training, reproduction, sweeps, reports.

Not imported by ``import torchkron``; the CLI imports it on demand.
"""
