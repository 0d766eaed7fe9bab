"""Synthetic video-QA data (:mod:`.synthetic`, :mod:`.scenes`) and the demo model (:mod:`.demo`)."""
