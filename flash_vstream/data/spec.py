"""Names of the synthetic data's splits and question kinds (no heavy imports: the command line reads them)."""

SPLITS = {"train": 0, "heldout": 2**31}
"""Scene-seed offset of each split (see :mod:`flash_vstream.data.synthetic`)."""
SHORT_KINDS = ("colour", "shape", "motion", "count", "order", "event")
"""Question kinds of short clips."""
KINDS = (*SHORT_KINDS, "needle")
"""Every question kind."""
