"""Networks: HF-GAN slice generator, PatchGAN discriminator, slice segmenter, 3D refiner, checkpoint format."""
