"""The model package: time splits, preprocessing, metrics, the network, its loop and predictor.

    splits.py         which split a row falls into, or why none (pure numpy/pyarrow)
    preprocessing.py  standardisation and vocabularies fit on the training split (JSON)
    metrics.py        regression and binary metrics (pure numpy)
    network.py        the MLP with categorical embeddings (torch)
    loop.py           the per-worker Ray Train loop (torch)
    predictor.py      the saved model's format: save_model / load_predictor (torch)

Deliberately nothing is imported here: Ray Data workers that only split or encode rows import
splits/preprocessing without paying for torch.
"""
