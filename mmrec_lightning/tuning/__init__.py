"""Hyper-parameter search (``python -m mmrec_lightning sweep``)."""
