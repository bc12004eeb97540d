"""Calibration rows: a part-supervised ProtoPNet and a random-explanation model (references, never ranked)."""
