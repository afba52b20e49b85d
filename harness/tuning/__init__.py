"""Hyperparameter tuning with Optuna: a sweep (sweep.py), its study's pieces (study.py) and options (options.py)."""
