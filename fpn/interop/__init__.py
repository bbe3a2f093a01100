"""Other libraries' detection weights as fpn checkpoints (``fpn convert``)."""
