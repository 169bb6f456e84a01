"""Console entry points of the training side, with a clear error when torch is missing.

The device install (`pip install .`) leaves out torch and onnx, yet installs every console
script. These entry points import the command's module only when it runs, so that a missing
export dependency becomes a one-line error instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

# the `export` extra of pyproject.toml
EXPORT_MODULES = frozenset({"torch", "onnx", "onnxscript", "safetensors", "tqdm"})


def _run(module: str, program: str) -> int:
    try:
        command = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name not in EXPORT_MODULES:
            raise
        print(f"{program}: error: {program} needs {error.name}, which the runtime-only install "
              "leaves out: install the training side with pip install '.[export]'",
              file=sys.stderr)
        return 1
    return command.main()


def train() -> int:
    return _run("elr_export.train_cli", "elr-train")


def evaluate() -> int:
    return _run("elr_export.evaluate", "elr-eval")


def export() -> int:
    return _run("elr_export.export_cli", "elr-export")
