"""Models: the architecture registry (registry.py), pretrained weights (weights.py), the model folder (folder.py)."""
