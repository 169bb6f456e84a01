"""Count the integer dot-product and widening instructions in a qemu-user in_asm log.

    QEMU_LOG=in_asm QEMU_LOG_FILENAME=run.log python ...   (under qemu-aarch64)
    python tools/arm64/instruction_counts.py run.log

qemu logs every block of guest code once, when it first translates it, so the counts are of
distinct instructions that ran at least once in the whole process (Python, numpy and
onnxruntime together), not of executions. The disassembler of qemu 7.2 prints the ARMv8.2
dot-product instructions as ".byte", so UDOT and SDOT are recognised from their encodings.
MLAS, onnxruntime's kernel library, multiplies int8 matrices with UDOT or SDOT on cores that
report the asimddp feature and with widening NEON multiplies (UMULL, SMULL, UADALP, SADALP)
elsewhere.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

# (mask, value) of the Advanced SIMD dot-product encodings with size 0b10, from the Arm
# architecture reference manual: bit 29 is U (1 for UDOT).
DOT_PRODUCT_ENCODINGS = {
    "udot (vector)": (0xBFE0FC00, 0x2E809400),
    "sdot (vector)": (0xBFE0FC00, 0x0E809400),
    "udot (by element)": (0xBFC0F400, 0x2F80E000),
    "sdot (by element)": (0xBFC0F400, 0x0F80E000),
}
WIDENING_MNEMONICS = ("umull", "umull2", "smull", "smull2", "uadalp", "sadalp")

_LINE = re.compile(r"0x[0-9a-f]+:\s+([0-9a-f]{8})\s+(\S+)")


def count_instructions(log_path: Path) -> dict[str, int]:
    """Return how many logged instructions fall in each dot-product and widening class.

    "undecoded" counts the other instructions that qemu printed as ".byte".
    """
    counts: collections.Counter[str] = collections.Counter()
    with log_path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _LINE.match(line)
            if match is None:
                continue
            mnemonic = match.group(2)
            if mnemonic in WIDENING_MNEMONICS:
                counts[mnemonic] += 1
            elif mnemonic == ".byte":
                counts[_classify(int(match.group(1), 16))] += 1
    names = [*DOT_PRODUCT_ENCODINGS, *WIDENING_MNEMONICS, "undecoded"]
    return {name: counts[name] for name in names}


def _classify(word: int) -> str:
    for name, (mask, value) in DOT_PRODUCT_ENCODINGS.items():
        if word & mask == value:
            return name
    return "undecoded"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: instruction_counts.py QEMU_IN_ASM_LOG", file=sys.stderr)
        return 2
    print(json.dumps(count_instructions(Path(argv[0])), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
