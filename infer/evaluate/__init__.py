"""Evaluation: image metrics, segmentation metrics, baselines, the downstream segmentation protocol, scoring
of a folder of predictions (`scoring`) and its report; `python -m infer.evaluate` is `cli`."""
