"""zk0: federated learning for robotics (SmolVLA + LeRobot + Flower)."""

__version__ = "0.1.0"
