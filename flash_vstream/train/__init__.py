"""Training: data records, mixtures, token-length estimates and the ``flash-vstream data`` commands.

Modules: ``data`` (rows -> typed samples, media resolution), ``mixture`` (YAML mixtures of data files),
``lengths`` (token-length estimates for length grouping), ``commands`` (``flash-vstream data check``).

Importing this package imports nothing: ``flash_vstream.train.commands`` must stay importable with the standard
library only, so ``flash-vstream --help`` answers at once. Import the modules themselves::

    from flash_vstream.train.data import load_samples, Sample
    from flash_vstream.train.mixture import Mixture, load_mixture
    from flash_vstream.train.lengths import default_budget, estimate_length
"""
