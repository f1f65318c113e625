"""What each model family trains with of its own: its update step or its whole trainer (`models.families` names
the trainer of each family; the GAN families share the loop of `train.loop`, the patch families `train.volumetric`)."""
