"""Logic the commands call: PKI, doctor checks, datasets, supervisor, Flower adapter."""
