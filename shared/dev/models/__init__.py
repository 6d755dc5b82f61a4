"""Stand-in ONNX models for development and tests: the real T-one weights cannot be downloaded here."""
