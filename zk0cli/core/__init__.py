"""Config, paths, errors and file helpers: the bottom layer, imported by everything else."""
