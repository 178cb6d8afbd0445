"""Generators of tiny datasets in the real on-disk layouts (for tests, demos
and the mini benchmark suite).  Import the submodule you need, e.g.
``from ssn_norm.datasets.tiny_coco import make_tiny_coco``."""
