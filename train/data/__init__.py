"""Training data: case discovery and splits, intensity statistics, the slice cache and slice samples, the volume
cache and patch sampling, and the sharded batch order."""
