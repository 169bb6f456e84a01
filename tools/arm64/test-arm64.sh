#!/usr/bin/env bash
# Build the ELR-LRT runtime for 64-bit ARM and test it against this x86-64 host, under
# qemu-user emulation of the Raspberry Pi 4 core (Cortex-A72) and the Pi 5 core (Cortex-A76).
#
#   sudo tools/arm64/test-arm64.sh        (make test-arm64 runs it)
#
# Steps:
#  1. install qemu-user-static, binfmt-support and mmdebstrap when missing, mount
#     binfmt_misc and enable the qemu-aarch64 entry (both restored on exit);
#  2. create a Debian bookworm arm64 root filesystem with mmdebstrap, or reuse the cached
#     one, in $ELR_ARM64_CACHE (default /var/cache/elr-arm64, outside the repository);
#  3. on the host: train and export a tiny bundle (fp32 and int8) and record the runtime's
#     patcher output, logits, greedy bytes and elr-run output (tools/arm64/crosscheck.py);
#  4. in the root filesystem: build a wheel of the working tree natively (g++ under
#     emulation), check its tag, install it with its runtime dependencies from PyPI;
#  5. for each core: run tools/arm64/test_crosscheck.py against the host's record, profile
#     the int8 graphs' onnxruntime kernels and count the dot-product instructions they ran;
#  6. on the host: run the same tests against each ARM record (a table written on ARM is
#     read on x86-64, and the ARM logits are checked from this side too).
# A summary follows; the exit status is 1 when any step failed. Mounts are released on
# every exit, also after a failure or Ctrl-C.
#
# Settings (environment):
#   ELR_ARM64_CACHE        root filesystem and run directory (default /var/cache/elr-arm64)
#   ELR_ARM64_CPUS         qemu cores to test (default "cortex-a72 cortex-a76")
#   ELR_ARM64_ONNXRUNTIME  onnxruntime requirement for the root filesystem (default: the
#                          range in pyproject.toml, upgraded to its newest release)
#   ELR_ARM64_PYTHON       host interpreter with the [export] extra (default .venv/bin/python)
#   ELR_ARM64_TEXT         training text (default ../shared/data/text/tinyshakespeare.txt)
#
# Every heavy command runs under nice -n 19, so that other work on the machine keeps its
# CPU share. Under emulation the model runs about 400 times slower than natively, so no
# timing from this script is a performance figure for a Raspberry Pi.

# The exit after main makes shellcheck take the functions that step and the traps call for
# unreachable code.
# shellcheck disable=SC2317
set -Eeuo pipefail
# Job control puts each step in a process group of its own, so that Ctrl-C or SIGTERM can end
# the step with everything it started before the mounts are released.
set -m

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${ELR_ARM64_CACHE:-/var/cache/elr-arm64}
read -r -a CPUS <<< "${ELR_ARM64_CPUS:-cortex-a72 cortex-a76}"
HOST_PYTHON=${ELR_ARM64_PYTHON:-$REPO/.venv/bin/python}
TEXT=${ELR_ARM64_TEXT:-$REPO/../shared/data/text/tinyshakespeare.txt}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
ROOTFS_PACKAGES=python3,python3-venv,python3-dev,g++,cmake,make,ninja-build,ca-certificates
# Bump when the root filesystem's contents change, so that a cached one is rebuilt.
ROOTFS_VERSION="1 $SUITE $ROOTFS_PACKAGES"
HOST_PACKAGES=(qemu-user-static binfmt-support mmdebstrap)

ROOTFS=$CACHE/$SUITE-arm64
RUN=$CACHE/run
VENV=/opt/elr/venv          # inside the root filesystem
SRC=/opt/elr/src            # inside the root filesystem
MNT=/mnt/elr                # $RUN, bind-mounted inside the root filesystem
NICE=(nice -n 19)
# --foreground keeps the command in the step's process group (see step)
STEP_TIMEOUT=(timeout --foreground --kill-after=30 7200)

MOUNTS=()                   # mount points to release on exit, in mount order
MOUNTED_BINFMT=0
ENABLED_BINFMT=0
STEP_PID=                   # process group of the running step
STEP_NAMES=()
STEP_RESULTS=()
STEP_SECONDS=()
START_SECONDS=$SECONDS

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'test-arm64: error: %s\n' "$*" >&2; exit 1; }

# -- teardown -------------------------------------------------------------------------------

release_mounts() {
  local index
  for ((index = ${#MOUNTS[@]} - 1; index >= 0; index--)); do
    local target=${MOUNTS[index]}
    if mountpoint -q "$target"; then
      umount "$target" 2>/dev/null || umount --lazy "$target" \
        || printf 'test-arm64: failed to unmount %s\n' "$target" >&2
    fi
  done
  MOUNTS=()
}

teardown() {
  local status=$?
  trap - EXIT INT TERM
  release_mounts
  if ((ENABLED_BINFMT)); then
    update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 \
      || printf 'test-arm64: failed to disable the qemu-aarch64 binfmt entry\n' >&2
  fi
  if ((MOUNTED_BINFMT)); then
    umount /proc/sys/fs/binfmt_misc 2>/dev/null \
      || printf 'test-arm64: failed to unmount /proc/sys/fs/binfmt_misc\n' >&2
  fi
  exit "$status"
}
# End the running step's process group, then exit with the signal's status (EXIT tears down).
stop_step_and_exit() {
  local status=$1
  if [[ -n $STEP_PID ]]; then
    kill -TERM -- "-$STEP_PID" 2>/dev/null || true
    wait "$STEP_PID" 2>/dev/null || true
  fi
  exit "$status"
}

trap teardown EXIT
trap 'stop_step_and_exit 130' INT
trap 'stop_step_and_exit 143' TERM

# -- steps ----------------------------------------------------------------------------------

# Run a step in a background subshell with errexit on, log its output to $RUN/logs/NAME.log
# and the terminal, and record its result. A failed step does not stop the script, and later
# steps that need its output fail in turn. The subshell cannot change this shell's variables.
# Waiting in the background lets a signal reach this shell's traps at once.
step() {
  local name=$1
  shift
  local log_file=$RUN/logs/$name.log
  local started=$SECONDS status=0
  log "$name"
  # errexit is ignored in a function called as part of `||`, so the status is read instead
  (set -e; "$@") > >(tee "$log_file") 2>&1 &
  STEP_PID=$!
  wait "$STEP_PID" || status=$?
  STEP_PID=
  STEP_NAMES+=("$name")
  STEP_SECONDS+=($((SECONDS - started)))
  if ((status == 0)); then
    STEP_RESULTS+=(PASS)
  else
    STEP_RESULTS+=("FAIL ($status)")
    log "$name failed with status $status; log: $log_file"
  fi
}

# Record a step that did not run because a step it needs failed; it counts as a failure.
skip_step() {
  log "$1 skipped: $2 failed"
  STEP_NAMES+=("$1")
  STEP_SECONDS+=(0)
  STEP_RESULTS+=(SKIPPED)
}

step_passed() {
  local index
  for index in "${!STEP_NAMES[@]}"; do
    if [[ ${STEP_NAMES[index]} == "$1" ]]; then
      [[ ${STEP_RESULTS[index]} == PASS ]]
      return
    fi
  done
  return 1
}

# -- host set-up ----------------------------------------------------------------------------

check_host() {
  ((EUID == 0)) || die "run as root: mmdebstrap, chroot, mount and binfmt_misc need it (sudo make test-arm64)"
  [[ $(uname -m) == x86_64 ]] || die "this script emulates aarch64 on an x86_64 host, not on $(uname -m)"
  [[ -x $HOST_PYTHON ]] || die "host interpreter $HOST_PYTHON not found: run make .venv/.installed first, or set ELR_ARM64_PYTHON"
  [[ -f $TEXT ]] || die "training text $TEXT not found: check out ../shared beside the repository, or set ELR_ARM64_TEXT"
  local missing=() package
  for package in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$package")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    DEBIAN_FRONTEND=noninteractive "${NICE[@]}" apt-get install -y --no-install-recommends \
      "${missing[@]}"
  fi
}

enable_binfmt() {
  if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "failed to mount binfmt_misc: the kernel needs CONFIG_BINFMT_MISC"
    MOUNTED_BINFMT=1
  fi
  if [[ $(head -n 1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null) != enabled ]]; then
    update-binfmts --enable qemu-aarch64 || die "update-binfmts failed to enable qemu-aarch64"
    ENABLED_BINFMT=1
  fi
  # F (fix binary): the kernel opens qemu when the entry is registered, so qemu need not be
  # copied into the root filesystem.
  grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "the qemu-aarch64 binfmt entry lacks the F flag, so chroot cannot find qemu"
}

release_stale_mounts() {
  # A run killed with SIGKILL leaves its mounts behind; release them before reusing the tree.
  local target
  while read -r target; do
    [[ -n $target ]] || continue
    log "releasing the stale mount $target"
    umount --lazy "$target"
  done < <(findmnt --list --noheadings --output TARGET \
    | grep -F -e "$ROOTFS/" -e "$ROOTFS.partial/" | sort -r)
}

ensure_rootfs() {
  if [[ -f $ROOTFS/.elr-rootfs && $(cat "$ROOTFS/.elr-rootfs") == "$ROOTFS_VERSION" ]]; then
    log "reusing the root filesystem $ROOTFS"
    return
  fi
  log "creating the $SUITE arm64 root filesystem in $ROOTFS (5 to 10 minutes under emulation)"
  if findmnt --list --noheadings --output TARGET | grep -q -F -e "$ROOTFS/" -e "$ROOTFS.partial/"; then
    die "something is still mounted under $ROOTFS, so it cannot be deleted"
  fi
  rm -rf --one-file-system "$ROOTFS" "$ROOTFS.partial"
  "${NICE[@]}" mmdebstrap --mode=root --arch=arm64 --variant=apt \
    --include="$ROOTFS_PACKAGES" "$SUITE" "$ROOTFS.partial" "$MIRROR"
  printf '%s\n' "$ROOTFS_VERSION" > "$ROOTFS.partial/.elr-rootfs"
  mv "$ROOTFS.partial" "$ROOTFS"
}

# Bind-mount (or, with a type, mount) onto a path inside the root filesystem.
mount_in_rootfs() {
  local source=$1 target=$ROOTFS$2 type=${3:-}
  if [[ -d $source || -n $type ]]; then
    mkdir -p "$target"
  else
    mkdir -p "$(dirname "$target")"
    # A symbolic link would be resolved on the host, so the mount would land outside
    [[ -L $target ]] && rm -f "$target"
    [[ -e $target ]] || touch "$target"
  fi
  if [[ -n $type ]]; then
    mount -t "$type" "$source" "$target"
  else
    mount --bind "$source" "$target"
  fi
  MOUNTS+=("$target")
}

mount_rootfs() {
  mount_in_rootfs proc /proc proc
  mount_in_rootfs sysfs /sys sysfs
  mount_in_rootfs /dev /dev
  # pip needs the host's resolver configuration and CA bundle to reach PyPI
  mount_in_rootfs /etc/resolv.conf /etc/resolv.conf
  mount_in_rootfs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
  mount_in_rootfs "$RUN" "$MNT"
  # qemu-user passes the host's x86 /proc/cpuinfo through, and importing onnxruntime then
  # crashes; arm_cpuinfo writes the emulated core's cpuinfo into this file (same inode).
  : > "$RUN/cpuinfo"
  mount_in_rootfs "$RUN/cpuinfo" /proc/cpuinfo
}

# Run a command in the root filesystem under the emulated core $1, with a clean environment.
in_rootfs() {
  local cpu=$1
  shift
  QEMU_CPU=$cpu "${NICE[@]}" "${STEP_TIMEOUT[@]}" chroot "$ROOTFS" /usr/bin/env -i \
    QEMU_CPU="$cpu" HOME=/root LANG=C.UTF-8 TMPDIR=/tmp \
    PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    "$@"
}

# -- host side ------------------------------------------------------------------------------

host_python() {
  # An editable install prints its rebuild to stdout unless this is 0.
  SKBUILD_EDITABLE_VERBOSE=0 "${NICE[@]}" "${STEP_TIMEOUT[@]}" "$HOST_PYTHON" "$@"
}

host_inputs() {
  host_python "$REPO/tools/arm64/make_inputs.py" --text "$TEXT" --out "$RUN/inputs"
}

host_record() {
  host_python "$REPO/tools/arm64/crosscheck.py" record --inputs "$RUN/inputs" --out "$RUN/record-x86_64"
}

# Run the comparison tests on the host against the record in $RUN/$1.
host_tests() {
  (cd "$REPO" && ELR_CROSS_INPUTS=$RUN/inputs ELR_CROSS_REFERENCE=$RUN/$1 \
    ELR_CROSS_OUT=$RUN/record-x86_64-vs-$1 \
    host_python -m pytest -v -p no:cacheprovider tools/arm64/test_crosscheck.py)
}

host_kernels() {
  host_python "$REPO/tools/arm64/ort_kernels.py" "$RUN/inputs/bundle" --precision int8 \
    --out "$RUN/kernels-x86_64.json"
}

# The onnxruntime requirement of the runtime, as pyproject.toml states it.
pyproject_requirement() {
  "$HOST_PYTHON" - "$REPO/pyproject.toml" "$1" <<'EOF'
import re, sys, tomllib
with open(sys.argv[1], "rb") as file:
    project = tomllib.load(file)
name = sys.argv[2]
requirements = (project["build-system"]["requires"] if name == "build-system"
                else project["project"]["dependencies"])
if name == "build-system":
    print("\n".join(requirements))
else:
    print(next(r for r in requirements if re.match(rf"{name}\b", r)))
EOF
}

# -- arm64 side -----------------------------------------------------------------------------

# Copy the working tree (tracked and untracked files that git does not ignore) into the root
# filesystem, keeping the previous build directory so that CMake rebuilds only what changed.
stage_source() {
  local target=$ROOTFS$SRC
  mkdir -p "$target"
  rm -rf "$target.build"
  [[ -d $target/build ]] && mv "$target/build" "$target.build"
  rm -rf "$target"
  mkdir -p "$target"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf -) | tar -xf - -C "$target"
  [[ -d $target.build ]] && mv "$target.build" "$target/build"
  git -C "$REPO" describe --always --dirty > "$RUN/source-version"
}

arm_build() {
  local cpu=$1 build_requirements=() onnxruntime
  mapfile -t build_requirements < <(pyproject_requirement build-system)
  onnxruntime=${ELR_ARM64_ONNXRUNTIME:-$(pyproject_requirement onnxruntime)}
  [[ -x $ROOTFS$VENV/bin/python ]] || in_rootfs "$cpu" /usr/bin/python3 -m venv "$VENV"
  in_rootfs "$cpu" pip install --upgrade "${build_requirements[@]}" pytest
  # A failed build must not leave the previous run's package for the tests to find
  in_rootfs "$cpu" pip uninstall --yes elr-lrt
  rm -rf "$RUN/wheels"
  # ELR_WERROR: a compiler warning that only aarch64 raises (char signedness, type sizes)
  # fails the build, as warnings do in the host's CI build
  in_rootfs "$cpu" sh -c "cd $SRC && pip wheel --no-build-isolation --no-deps \
    --config-settings=cmake.define.ELR_WERROR=ON --wheel-dir $MNT/wheels ."
  local wheels=("$RUN"/wheels/*.whl)
  ((${#wheels[@]} == 1)) || { echo "expected one wheel in $RUN/wheels, found ${#wheels[@]}"; return 1; }
  local wheel=${wheels[0]##*/}
  echo "wheel: $wheel"
  [[ $wheel == *-linux_aarch64.whl ]] || { echo "wheel $wheel is not tagged linux_aarch64"; return 1; }
  "$HOST_PYTHON" -m zipfile -l "${wheels[0]}" | grep '_patcher' | tee "$RUN/wheel-extension"
  grep -q '_patcher\.cpython-[0-9]*-aarch64-linux-gnu\.so' "$RUN/wheel-extension" \
    || { echo "the wheel's compiled patcher lacks the aarch64-linux-gnu suffix"; return 1; }
  in_rootfs "$cpu" pip install --force-reinstall --no-deps "$MNT/wheels/$wheel"
  in_rootfs "$cpu" pip install --upgrade "$MNT/wheels/$wheel" "$onnxruntime"
  in_rootfs "$cpu" pip list > "$RUN/arm64-packages.txt"
  grep -i -E '^(onnxruntime|numpy|psutil|elr-lrt) ' "$RUN/arm64-packages.txt"
  ! grep -i -q '^torch ' "$RUN/arm64-packages.txt" || { echo "torch is installed in the arm64 venv"; return 1; }
}

# Write the cpuinfo of core $1 from the emulated process's own feature bits, and show it
# at /proc/cpuinfo in the root filesystem.
arm_cpuinfo() {
  local cpu=$1 features
  in_rootfs "$cpu" /usr/bin/python3 "$SRC/tools/arm64/cpuinfo.py" "$cpu" > "$RUN/cpuinfo-$cpu"
  features=$(sed -n 's/^Features\t: //p' "$RUN/cpuinfo-$cpu" | head -n 1)
  echo "$cpu features: $features"
  # The Pi 4's Cortex-A72 is ARMv8.0 without the dot-product instructions; the A76 has them.
  case $cpu in
    cortex-a72) [[ " $features " != *" asimddp "* ]] || { echo "QEMU_CPU did not take effect"; return 1; } ;;
    cortex-a76) [[ " $features " == *" asimddp "* ]] || { echo "QEMU_CPU did not take effect"; return 1; } ;;
  esac
  cat "$RUN/cpuinfo-$cpu" > "$RUN/cpuinfo"
}

arm_tests() {
  local cpu=$1
  in_rootfs "$cpu" sh -c "cd $SRC && \
    ELR_CROSS_INPUTS=$MNT/inputs ELR_CROSS_REFERENCE=$MNT/record-x86_64 \
    ELR_CROSS_OUT=$MNT/record-$cpu \
    python -m pytest -v -p no:cacheprovider tools/arm64/test_crosscheck.py"
}

# Profile the int8 graphs' onnxruntime kernels, and count the dot-product and widening
# instructions that qemu translated while they ran.
arm_kernels() {
  local cpu=$1
  in_rootfs "$cpu" env QEMU_LOG=in_asm QEMU_LOG_FILENAME="$MNT/in_asm-$cpu.log" \
    python "$SRC/tools/arm64/ort_kernels.py" "$MNT/inputs/bundle" --precision int8 \
    --out "$MNT/kernels-$cpu.json"
  "$HOST_PYTHON" "$REPO/tools/arm64/instruction_counts.py" "$RUN/in_asm-$cpu.log" \
    | tee "$RUN/instructions-$cpu.json"
  rm -f "$RUN/in_asm-$cpu.log"
}

# -- summary --------------------------------------------------------------------------------

summary() {
  local index failed=0
  echo
  echo "test-arm64 summary (source $(cat "$RUN/source-version" 2>/dev/null || echo unknown))"
  for index in "${!STEP_NAMES[@]}"; do
    printf '  %-28s %-10s %5d s\n' "${STEP_NAMES[index]}" "${STEP_RESULTS[index]}" \
      "${STEP_SECONDS[index]}"
    [[ ${STEP_RESULTS[index]} == PASS ]] || failed=1
  done
  printf '  %-28s %-10s %5d s\n' total "$( ((failed)) && echo FAIL || echo PASS)" \
    $((SECONDS - START_SECONDS))
  [[ -f $RUN/wheel-extension ]] && echo "  wheel: $(ls "$RUN"/wheels/ 2>/dev/null)"
  grep -i -E '^(onnxruntime|numpy) ' "$RUN/arm64-packages.txt" 2>/dev/null | sed 's/^/  arm64 /'
  local cpu
  for cpu in "${CPUS[@]}"; do
    [[ -f $RUN/cpuinfo-$cpu ]] \
      && echo "  $cpu features: $(sed -n 's/^Features\t: //p' "$RUN/cpuinfo-$cpu" | head -n 1)"
  done
  "$HOST_PYTHON" - "$RUN" "${CPUS[@]}" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for name in ["x86_64", *sys.argv[2:]]:
    path = run / f"kernels-{name}.json"
    if not path.is_file():
        continue
    report = json.loads(path.read_text())
    kernels = sorted({kernel for graph in report["kernels"].values()
                      for kernel in graph["nodes"]
                      if any(word in kernel for word in ("Quantize", "Integer", "MatMul"))})
    print(f"  matrix kernels of the int8 graphs on {name} (onnxruntime {report['onnxruntime']}): "
          + ", ".join(kernels))
    counts_path = run / f"instructions-{name}.json"
    if counts_path.is_file():
        counts = {key: value for key, value in json.loads(counts_path.read_text()).items()
                  if value and key != "undecoded"}
        print(f"  instructions run with the int8 graphs on {name}: "
              + (", ".join(f"{key} {value}" for key, value in counts.items()) or "none"))
EOF
  for cpu in "${CPUS[@]}"; do
    [[ -f $RUN/record-$cpu/record.json ]] || continue
    echo "  $cpu against x86_64:"
    "$HOST_PYTHON" "$REPO/tools/arm64/crosscheck.py" compare "$RUN/record-x86_64" \
      "$RUN/record-$cpu" | sed 's/^/    /'
  done
  echo "  logs and records: $RUN"
  return "$failed"
}

# -- main -----------------------------------------------------------------------------------

main() {
  check_host
  mkdir -p "$CACHE"
  exec 9> "$CACHE/lock"
  flock --nonblock 9 || die "another test-arm64 run is using $CACHE: wait for it to finish (lock file $CACHE/lock)"
  release_stale_mounts
  rm -rf "$RUN"
  mkdir -p "$RUN/logs"

  enable_binfmt
  step rootfs ensure_rootfs
  step_passed rootfs || { summary | tee "$RUN/summary.txt"; exit 1; }
  mount_rootfs

  step host-inputs host_inputs
  step host-record host_record
  step host-self-check host_tests record-x86_64
  step host-kernels host_kernels

  step stage-source stage_source
  local first_cpu=${CPUS[0]} cpu
  step "cpuinfo-$first_cpu" arm_cpuinfo "$first_cpu"
  step arm64-build arm_build "$first_cpu"
  for cpu in "${CPUS[@]}"; do
    if ! step_passed arm64-build; then
      skip_step "arm64-tests-$cpu" arm64-build
      continue
    fi
    [[ $cpu == "$first_cpu" ]] || step "cpuinfo-$cpu" arm_cpuinfo "$cpu"
    if ! step_passed "cpuinfo-$cpu"; then
      skip_step "arm64-tests-$cpu" "cpuinfo-$cpu"
      continue
    fi
    step "arm64-tests-$cpu" arm_tests "$cpu"
    step "arm64-kernels-$cpu" arm_kernels "$cpu"
    step "host-vs-$cpu" host_tests "record-$cpu"
  done
  summary | tee "$RUN/summary.txt"
}

# exit on the same line: bash reads a script while it runs it, so a file edited during a run
# is not read past this point
main "$@"; exit
