"""Files: checkpoints (model and optimizer state) as safetensors, never pickle.

Example:
    >>> from symnet.io import load, save
    >>> callable(save) and callable(load)
    True
"""

from symnet.io.serialization import load, save

__all__ = ["load", "save"]
