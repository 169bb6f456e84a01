"""On-device runtime of ELR-LRT: bundle loading, onnxruntime sessions and streaming generation.

This package never imports torch.
"""
