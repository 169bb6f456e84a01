"""Train and export the tiny model that the cross-platform checks run (host side, needs torch).

    python tools/arm64/make_inputs.py --text ../shared/data/text/tinyshakespeare.txt --out DIR

Writes DIR/corpus.txt (the first CORPUS_BYTES of the text), DIR/checkpoint (elr-train) and
DIR/bundle (elr-export, fp32 and int8). The model is tiny because emulated ARM runs it about
400 times slower than this machine does natively.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elr_export.export_cli import main as export_main
from elr_export.train_cli import main as train_main

CORPUS_BYTES = 150_000
HELD_OUT_BYTES = 20_000
TRAIN_STEPS = 300
LATENT_STEPS = 2
TINY_MODEL = ["--d-local", "32", "--n-local-heads", "2", "--d-global", "64",
              "--n-global-heads", "2", "--n-global-layers", "1", "--ngram-buckets", "256",
              "--seq-len", "64", "--batch-size", "8", "--warmup-steps", "5", "--lr", "3e-3",
              "--no-bf16", "--threads", "1", "--seed", "0"]


def make_inputs(text: Path, out: Path) -> None:
    """Write corpus.txt, checkpoint/ and bundle/ into `out`; raise RuntimeError on failure."""
    out.mkdir(parents=True, exist_ok=True)
    data = text.read_bytes()[:CORPUS_BYTES]
    if len(data) < CORPUS_BYTES:
        raise RuntimeError(f"{text} has {len(data)} bytes; the checks need {CORPUS_BYTES}")
    corpus = out / "corpus.txt"
    corpus.write_bytes(data)
    held_out = out / "held_out.txt"
    held_out.write_bytes(data[-HELD_OUT_BYTES:])

    checkpoint = out / "checkpoint"
    status = train_main([str(corpus), "--out", str(checkpoint), "--max-steps", str(TRAIN_STEPS),
                         "--eval-interval", str(TRAIN_STEPS), "--checkpoint-interval",
                         str(TRAIN_STEPS), *TINY_MODEL])
    if status != 0:
        raise RuntimeError(f"elr-train exited with status {status}")
    status = export_main([str(checkpoint), "--out", str(out / "bundle"), "--precision", "both",
                          "--latent-steps", str(LATENT_STEPS), "--eval-text", str(held_out)])
    if status != 0:
        raise RuntimeError(f"elr-export exited with status {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="training text file")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    args = parser.parse_args(argv)
    try:
        make_inputs(args.text, args.out)
    except (OSError, RuntimeError) as error:
        print(f"make_inputs.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
