"""Synthetic phantoms for demos and tests (`python -m infer.sample`): brain MR with a glioma, head MR + CT,
intra-operative ultrasound with its MR."""
