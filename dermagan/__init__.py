"""dermagan: GANs for dermatologic images -- train (training/), export to ONNX, serve (service/)."""

import os

__version__ = "0.1.0"

# ONNX Runtime's Linux wheels (>= 1.31) write a device id under ~/.cache and send usage telemetry.
# A medical-imaging tool must not phone home: switch it off unless the user chose otherwise.
# Every entry point imports this package before onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
