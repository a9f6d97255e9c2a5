"""coinvision converters: PyTorch -> ONNX / TFLite / Core ML, with quantization and parity checks."""
