"""Datasets as splits and device-side batches: the contract (data.py), its sources (sources.py, folder_data.py) and a paper's preprocessing (preprocess.py)."""
