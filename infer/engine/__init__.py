"""The engine and its I/O: case discovery and reading, intensity transforms, slicing geometry, the slice,
patch and segmentation predictors, the 3D refiner, output writing, QC pictures and the batch runner."""
