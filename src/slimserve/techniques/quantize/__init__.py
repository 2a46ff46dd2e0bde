"""Quantization techniques (ONNX Runtime engine)."""
