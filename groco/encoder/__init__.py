"""The trained encoder as one ONNX file: export from a run, run with ONNX Runtime."""
