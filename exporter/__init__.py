"""onnxcam exporter: PyTorch classifier -> ONNX explain graph (needs torch)."""
