"""On-device runtime of ELR-LRT: bundle loading, onnxruntime sessions and streaming generation.

This package never imports torch.

    from elr_runtime import Generator, SamplingSettings
    generator = Generator("runs/tiny/bundle")
    for text in generator.stream_text("Once upon a time", SamplingSettings(temperature=0.8)):
        print(text, end="", flush=True)

The names below are imported on first use, so that `import elr_runtime.graph_io` (which the
training side does) loads neither onnxruntime nor the compiled patcher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from elr_runtime.bundle import Bundle, BundleError, load_bundle
    from elr_runtime.generate import GenerationStats, Generator
    from elr_runtime.sampling import SamplingSettings
    from elr_runtime.session import SessionConfig
    from elr_runtime.utf8 import Utf8Stream

_EXPORTS = {
    "Bundle": "elr_runtime.bundle",
    "BundleError": "elr_runtime.bundle",
    "load_bundle": "elr_runtime.bundle",
    "GenerationStats": "elr_runtime.generate",
    "Generator": "elr_runtime.generate",
    "SamplingSettings": "elr_runtime.sampling",
    "SessionConfig": "elr_runtime.session",
    "Utf8Stream": "elr_runtime.utf8",
}

__all__ = [
    "Bundle",
    "BundleError",
    "GenerationStats",
    "Generator",
    "SamplingSettings",
    "SessionConfig",
    "Utf8Stream",
    "load_bundle",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'elr_runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
