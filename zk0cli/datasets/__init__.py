"""Datasets: URIs, opening through LeRobot, validation, samples and partitions.

Submodules import numpy / pyarrow / lerobot; import them inside command functions so the CLI
stays light.
"""
