"""dermagan: GANs for dermatologic images -- train (training/), export to ONNX, serve (service/)."""

__version__ = "0.1.0"
