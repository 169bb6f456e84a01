"""Print an aarch64 /proc/cpuinfo for the core that qemu-user emulates.

    QEMU_CPU=cortex-a72 python3 tools/arm64/cpuinfo.py cortex-a72 > cpuinfo

qemu-user 7.2 passes the host's /proc/cpuinfo through, and onnxruntime's CPU detection
crashes on x86 text in an aarch64 process, so test-arm64.sh bind-mounts this file over
/proc/cpuinfo in the root filesystem. Run it under the emulated core: the Features line comes
from the process's own AT_HWCAP and AT_HWCAP2, so it lists exactly what qemu emulates, and
the identification lines are those of the named core.
"""

from __future__ import annotations

import ctypes
import os
import sys

AT_HWCAP = 16
AT_HWCAP2 = 26

# Feature names of the AT_HWCAP bits, from bit 0 up: the HWCAP_* macros of Linux's
# arch/arm64/include/uapi/asm/hwcap.h in lower case, as /proc/cpuinfo prints them.
HWCAP_NAMES = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
    "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
    "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
    "paca", "pacg",
)
# Feature names of the AT_HWCAP2 bits 0 to 18, the HWCAP2_* macros of the same header.
# qemu 7.2 sets no AT_HWCAP2 bit at all for the cores below.
HWCAP2_NAMES = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2",
    "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti",
    "mte",
)

# MIDR_EL1 fields of the cores qemu emulates as these models: the Raspberry Pi 4's BCM2711
# has Cortex-A72 r0p3 cores and the Raspberry Pi 5's BCM2712 has Cortex-A76 r4p1 cores.
CORES = {
    "cortex-a53": {"part": 0xD03, "variant": 0x0, "revision": 4},
    "cortex-a72": {"part": 0xD08, "variant": 0x0, "revision": 3},
    "cortex-a76": {"part": 0xD0B, "variant": 0x4, "revision": 1},
}
ARM_IMPLEMENTER = 0x41


def feature_names(hwcap: int, hwcap2: int) -> list[str]:
    """Return the /proc/cpuinfo feature names of the set bits of AT_HWCAP and AT_HWCAP2."""
    names = [name for bit, name in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
    names += [name for bit, name in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1]
    return names


def cpuinfo_text(core: str, features: list[str], n_cpus: int) -> str:
    """Return /proc/cpuinfo text with one entry per CPU, in the aarch64 kernel's layout."""
    ids = CORES[core]
    entry = (
        "processor\t: {index}\n"
        "BogoMIPS\t: 108.00\n"
        f"Features\t: {' '.join(features)}\n"
        f"CPU implementer\t: 0x{ARM_IMPLEMENTER:02x}\n"
        "CPU architecture: 8\n"
        f"CPU variant\t: 0x{ids['variant']:x}\n"
        f"CPU part\t: 0x{ids['part']:03x}\n"
        f"CPU revision\t: {ids['revision']}\n\n"
    )
    return "".join(entry.format(index=index) for index in range(n_cpus))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CORES:
        print(f"usage: cpuinfo.py {{{','.join(CORES)}}}", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    features = feature_names(libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2))
    if "asimd" not in features:
        print("cpuinfo.py: error: AT_HWCAP has no asimd bit, so this is not an aarch64 "
              "process: run it inside the arm64 root filesystem", file=sys.stderr)
        return 1
    sys.stdout.write(cpuinfo_text(argv[0], features, os.cpu_count() or 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
