"""Training of jat potentials: ``train(config)`` or ``python -m jat.train``."""

from jat.training.loop import TrainResult, resume, train

__all__ = ["TrainResult", "resume", "train"]
