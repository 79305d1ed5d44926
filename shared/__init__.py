"""The project's own shared library: config, image IO, datasets, metrics, the lesion benchmark.

Imports point one way: ``shared`` <- ``generator`` <- ``api`` and ``shared`` <- ``finetune``.
Nothing in ``shared`` imports the other packages.
"""
