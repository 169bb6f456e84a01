"""Training side of ELR-LRT: the PyTorch model, training, evaluation and ONNX export."""
