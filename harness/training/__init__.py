"""The one training loop (engine.py: the Trainer, in parts), its checkpoints, guards and torchrun collectives."""
