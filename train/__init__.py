"""Training package (see the training issue)."""
