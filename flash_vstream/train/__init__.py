"""Training: data, batches, runs and feature extraction.

Modules:

- data: ``data`` (rows -> typed samples, media resolution), ``mixture`` (YAML mixtures of data files), ``lengths``
  (token-length estimates for length grouping), ``commands`` (``flash-vstream data check``);
- batches: ``templates`` (conversation templates with exact label spans), ``dataset`` (sample encoders,
  ``TrainDataset``), ``collate`` (per-family collators);
- runs: ``config`` (the typed config tree), ``start`` (start points), ``trainer`` (the HF Trainer run),
  ``callbacks`` (metrics JSONL), ``train_cli`` (``flash-vstream train``);
- features: ``features``, ``feature_store``, ``extraction``, ``extract_cli`` (``flash-vstream extract-features``).

Importing this package imports nothing: ``flash_vstream.train.commands`` must stay importable with the standard
library only, so ``flash-vstream --help`` answers at once. Import the modules themselves::

    from flash_vstream.train.data import load_samples, Sample
    from flash_vstream.train.mixture import Mixture, load_mixture
    from flash_vstream.train.lengths import default_budget, estimate_length
"""
