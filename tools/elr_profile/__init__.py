"""Latency, memory and energy profiler for ELR-LRT bundles (no torch)."""
