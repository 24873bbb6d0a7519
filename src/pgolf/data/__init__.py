"""Data: the embedded corpus, challenge-format shards, the FineWeb download and the training loader."""
