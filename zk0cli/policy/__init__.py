"""SmolVLA for zk0: building it (base checkpoint, local backbones), which parameters travel,
and the one local training loop shared by the federated client and the centralized baseline.

Modules import torch/lerobot lazily inside functions; importing this package stays light.
"""
