#!/usr/bin/env bash
# The runtime on arm64 (issue 25): a Debian 12 arm64 root file system run through qemu-user-static, the wheel
# built from this working tree installed in it with the runtime extras from PyPI's aarch64 wheels, and the same
# commands run there and on x86 (the project venv), transcripts compared: exact, or CER <= 1 % where the
# kernels differ (each step says which). `make arm64-check` runs it; root is required (chroot, mounts, binfmt).
#
# Steps (default): transcribe greedy with fp32, int8-dynamic and int8 (Q/DQ) bundles on onnxruntime, the
# int8-dynamic bundle on OpenVINO (f32 hint on both sides, then arm64's default hint, f16 where the CPU has fp16
# arithmetic, against x86's f32: x86's default may be bf16, another computation), the int8 (Q/DQ) bundle on
# OpenVINO as an informational step (its int8 kernels differ between x86 and ARM: on all 30 demo clips 14 of 30
# transcripts identical, 2.1 % CER between the two, 4.0 % and 4.2 % against the references,
# benchmarks/results/arm64/results-30clips.json; it never fails the check),
# `xlsr-edge stream` (fp32), and a short `xlsr-edge bench` (onnxruntime + OpenVINO) whose results must record
# an aarch64 machine. FULL=1 adds beam search + KenLM (the kenlm module
# compiles from source in the emulated root: ~18 min once, then cached).
# Bundles are exported on x86 from the shipped demo model (models/demo-tr) into a temp folder and copied in.
# Results: benchmarks/results/arm64/results.json (FULL=1: results-full.json), with commit, command, machine.
#
# Environment: VENV (x86 venv with the export extras, default .venv), FULL=1, CLIPS (test clips per step,
# default 6), STREAM_CLIPS (default 2), THREADS (default 2), ARM_CPU (qemu -cpu model,
# default cortex-a76: the ISA of Jetson Orin's Cortex-A78AE, ARMv8.2 with dot product and fp16; `max` adds
# SVE/i8mm/bf16 and runs ~10x slower), MIRROR (default: the Debian mirror apt uses here), OUT (results file),
# ARM64_CACHE (default ~/.cache/xlsr-edge/arm64), KEEP=1 (keep the work folder).
# Exit: 0 all steps pass, 1 a step failed or differs, 2 cannot run here (not root, no qemu, ...).
#
# Cache (never inside the repo): base-<flavor>-<hash>.tar (mmdebstrap output, keyed by suite + packages) and
# rootfs-<flavor>-<hash>/ (that tar + a venv at /opt/venv with the runtime dependencies, keyed by the base,
# the requirements read from pyproject.toml and constraints.txt), wheels/ (aarch64 wheels pip downloaded on
# the host). Each run reinstalls only the project's wheel; a new key replaces its flavor's older entries.
# Measured on a 2-core VM (benchmarks/results/arm64/): warm ~3 min; cold +3 min mmdebstrap, +1 min venv
# (FULL=1 cold: +10 min mmdebstrap, +18 min venv with kenlm).
#
# Emulation artefacts (a real board has a true /sys and /proc, none of this applies there):
# - qemu-user shows the x86 host's /proc/cpuinfo. onnxruntime's cpuinfo library segfaults parsing it when it
#   also finds /sys; the project's CPU detection would read x86 flags. So /proc/cpuinfo is replaced (bind
#   mount in a private mount namespace) by an ARM one written from the emulated CPU: Features from its
#   AT_HWCAP/AT_HWCAP2 (what qemu really emulates), implementer/part from the -cpu model's MIDR_EL1.
# - OpenVINO's CPU plugin segfaults without /sys/devices/system/cpu/cpuN/topology with its cpumask files
#   (TBB's hwloc: "failed to find sysfs cpu topology directory"), and warns without
#   .../regs/identification/midr_el1 (oneDNN's xbyak_aarch64). The host's /sys is x86's, so the root's /sys is
#   a small fake of the same ARM machine (files in the root's own /sys folder, nothing mounted there):
#   possible/present/online, per-CPU topology (ids, lists, masks), caches and midr_el1. With both, onnxruntime
#   and OpenVINO run in one environment (also `bench`, which runs both).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-.venv}"
[[ "$VENV" = /* ]] || VENV="$ROOT/$VENV"
PY="$VENV/bin/python"
FULL="${FULL:-0}"
CLIPS="${CLIPS:-6}"
STREAM_CLIPS="${STREAM_CLIPS:-2}"
THREADS="${THREADS:-2}"
ARM_CPU="${ARM_CPU:-cortex-a76}"
CACHE="${ARM64_CACHE:-$HOME/.cache/xlsr-edge/arm64}"
SUITE=bookworm
PYTAG=311 # Debian 12's python3
RECIPE=1  # bump when the venv recipe below changes (part of the cache key)
if [[ "$FULL" = 1 ]]; then FLAVOR=full; else FLAVOR=core; fi
SUFFIX=""
[[ $FLAVOR = full ]] && SUFFIX=-full
OUT="${OUT:-$ROOT/benchmarks/results/arm64/results$SUFFIX.json}"
T0=$SECONDS

die() {
    echo "error: $*" >&2
    exit 2
}
log() { echo "arm64-check: $*" >&2; }
sha() { sha256sum | cut -c1-16; }

# MIDR_EL1 of qemu's -cpu models (qemu target/arm/cpu64.c): the fake cpuinfo and /sys name the same core
declare -A MIDR=([cortex-a53]=0x410fd034 [cortex-a57]=0x411fd070 [cortex-a72]=0x410fd083
    [cortex-a76]=0x414fd0b1 [neoverse-n1]=0x414fd0c1)

[[ "$(id -u)" = 0 ]] || die "root is required (mmdebstrap, chroot, mounts, binfmt_misc): sudo make arm64-check"
[[ -x "$PY" ]] || die "no project venv at $VENV (make setup, or VENV=...)"
[[ "$(uname -m)" = x86_64 || "$(uname -m)" = aarch64 ]] || die "host $(uname -m): x86_64 or aarch64 only"
EMULATED=1
[[ "$(uname -m)" = aarch64 ]] && EMULATED=0
[[ $EMULATED = 0 || -n "${MIDR[$ARM_CPU]:-}" ]] || die "ARM_CPU=$ARM_CPU: one of ${!MIDR[*]}"

ensure_tools() {
    local missing=()
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if [[ $EMULATED = 1 ]]; then
        command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
        [[ -e /usr/lib/binfmt.d/qemu-aarch64.conf ]] || missing+=(qemu-user-static)
        command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    fi
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# qemu-aarch64 for every aarch64 ELF: registered from the package's binfmt.d file with flag F (the kernel opens
# the interpreter now, so it works inside the chroot). Without systemd nothing registers it: do it here.
ensure_binfmt() {
    [[ $EMULATED = 1 ]] || return 0
    local dir=/proc/sys/fs/binfmt_misc
    if [[ ! -e $dir/register ]]; then
        mount -t binfmt_misc binfmt_misc $dir || die "cannot mount binfmt_misc on $dir"
    fi
    if [[ ! -e $dir/qemu-aarch64 ]]; then
        log "registering qemu-aarch64 with binfmt_misc (/usr/lib/binfmt.d/qemu-aarch64.conf)"
        cat /usr/lib/binfmt.d/qemu-aarch64.conf >$dir/register
    fi
    grep -qx enabled $dir/qemu-aarch64 || die "binfmt_misc: qemu-aarch64 is registered but disabled"
    grep -q '^flags: .*F' $dir/qemu-aarch64 ||
        die "binfmt_misc: qemu-aarch64 is registered without flag F (fix-binary); remove it (echo -1 > $dir/qemu-aarch64) and rerun"
}

# The Debian mirror apt uses here (deb822 .sources, then sources.list), so mmdebstrap works where apt does
debian_mirror() {
    local f u=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        u=$(awk -v s="$SUITE" 'BEGIN { RS = "" } {
                uri = ""; ok = 0; deb = 0; n = split($0, L, "\n")
                for (i = 1; i <= n; i++) {
                    if (L[i] ~ /^Types:/ && L[i] ~ /[ \t]deb([ \t]|$)/) deb = 1
                    if (L[i] ~ /^URIs:/) { split(L[i], a, /[ \t]+/); uri = a[2] }
                    if (L[i] ~ /^Suites:/) { m = split(L[i], b, /[ \t]+/); for (j = 2; j <= m; j++) if (b[j] == s) ok = 1 }
                    if (L[i] ~ /^Enabled:[ \t]*no/) ok = 0
                }
                if (deb && ok && uri != "") { print uri; exit }
            }' "$f")
        [[ -n $u ]] && break
    done
    if [[ -z $u && -r /etc/apt/sources.list ]]; then
        u=$(awk -v s="$SUITE" '$1 == "deb" { for (i = 3; i <= NF; i++) if ($i == s && $(i-1) ~ /:\/\//) { print $(i-1); exit } }' /etc/apt/sources.list)
    fi
    echo "${u:-http://deb.debian.org/debian}"
}

# --- cache keys --------------------------------------------------------------------------------------------
PKGS=python3,python3-venv
[[ $FLAVOR = full ]] && PKGS+=,python3-dev,build-essential,cmake,zlib1g-dev,libbz2-dev,liblzma-dev,libboost-program-options-dev,libboost-system-dev,libboost-thread-dev,libboost-test-dev
EXTRAS=(openvino)
[[ $FLAVOR = full ]] && EXTRAS+=(lm)
REQS="$("$PY" - "$ROOT/pyproject.toml" "${EXTRAS[@]}" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[2:]:
    reqs += [r for r in project["optional-dependencies"][extra] if not r.startswith("xlsr-edge")]
print("\n".join(reqs))
EOF
)"
BASE_KEY=$(echo "$SUITE arm64 minbase $PKGS" | sha)
ENV_KEY=$( (echo "$BASE_KEY $RECIPE $FLAVOR"; echo "$REQS"; cat "$ROOT/constraints.txt") | sha)
BASE_TAR="$CACHE/base-$FLAVOR-$BASE_KEY.tar"
ROOTFS="$CACHE/rootfs-$FLAVOR-$ENV_KEY"
WHEELS="$CACHE/wheels"

# Run a command in the arm64 root, in a private mount namespace (mounts vanish with it): /proc with the ARM
# cpuinfo over the host's, a tmpfs /dev/shm, a clean environment; cwd /x (the run's folder).
in_root() {
    unshare --mount --propagation private -- bash -c '
        r=$1; emulated=$2; shift 2
        mount -t proc proc "$r/proc"
        if [[ $emulated = 1 ]]; then mount --bind "$r/etc/xlsr-arm64/cpuinfo" "$r/proc/cpuinfo"
        else mount --rbind /sys "$r/sys"; fi
        mount -t tmpfs tmpfs "$r/dev/shm"
        exec env -i HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            QEMU_CPU="$QEMU_CPU" /usr/sbin/chroot "$r" /bin/sh -c "cd /x 2>/dev/null || cd /; exec \"\$@\"" sh "$@"
    ' bash "$ROOTFS" "$EMULATED" "$@"
}
export QEMU_CPU="$ARM_CPU"

# The emulated machine as an ARM board would describe itself (see the header): /proc/cpuinfo from the CPU's
# hwcaps and the -cpu model's MIDR, and the /sys entries OpenVINO needs, for as many CPUs as the host has.
fake_machine() {
    [[ $EMULATED = 1 ]] || return 0
    local r=$1 n midr c d i
    n=$(nproc)
    midr=${MIDR[$ARM_CPU]}
    mkdir -p "$r/etc/xlsr-arm64"
    env -i QEMU_CPU="$ARM_CPU" /usr/sbin/chroot "$r" /usr/bin/python3 - "$n" "$midr" >"$r/etc/xlsr-arm64/cpuinfo" <<'EOF'
import ctypes, sys
# Linux's arm64 hwcap names in bit order (arch/arm64/kernel/cpuinfo.c, asm/hwcap.h)
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
          "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 sme_f16f32 sme_b16f32 "
          "sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1").split()
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
hw, hw2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
feats = [n for i, n in enumerate(HWCAP) if hw >> i & 1] + [n for i, n in enumerate(HWCAP2) if hw2 >> i & 1]
n, midr = int(sys.argv[1]), int(sys.argv[2], 16)
for cpu in range(n):
    print(f"processor\t: {cpu}\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(feats)}\n"
          f"CPU implementer\t: {midr >> 24:#x}\nCPU architecture: 8\nCPU variant\t: {midr >> 20 & 0xf:#x}\n"
          f"CPU part\t: {midr >> 4 & 0xfff:#05x}\nCPU revision\t: {midr & 0xf}\n")
EOF
    rm -rf "$r/sys" && mkdir -p "$r/sys/devices/system/cpu"
    d="$r/sys/devices/system/cpu"
    for f in possible present online; do echo "0-$((n - 1))" >"$d/$f"; done
    for ((c = 0; c < n; c++)); do
        mkdir -p "$d/cpu$c/topology" "$d/cpu$c/regs/identification"
        printf '0x%016x\n' "$midr" >"$d/cpu$c/regs/identification/midr_el1"
        echo "$c" >"$d/cpu$c/topology/core_id"
        echo 0 >"$d/cpu$c/topology/physical_package_id"
        echo 0 >"$d/cpu$c/topology/cluster_id"
        for f in core_siblings_list package_cpus_list cluster_cpus_list; do echo "0-$((n - 1))" >"$d/cpu$c/topology/$f"; done
        for f in thread_siblings_list core_cpus_list; do echo "$c" >"$d/cpu$c/topology/$f"; done
        for f in core_siblings package_cpus cluster_cpus; do printf '%x\n' $(((1 << n) - 1)) >"$d/cpu$c/topology/$f"; done
        for f in thread_siblings core_cpus; do printf '%x\n' $((1 << c)) >"$d/cpu$c/topology/$f"; done
        i=0
        for spec in "1 64K Data $c" "1 64K Instruction $c" "2 512K Unified $c"; do
            read -r lvl size type share <<<"$spec"
            mkdir -p "$d/cpu$c/cache/index$i"
            echo "$lvl" >"$d/cpu$c/cache/index$i/level"
            echo "$size" >"$d/cpu$c/cache/index$i/size"
            echo "$type" >"$d/cpu$c/cache/index$i/type"
            echo "$share" >"$d/cpu$c/cache/index$i/shared_cpu_list"
            i=$((i + 1))
        done
    done
}

build_base() {
    [[ -f $BASE_TAR ]] && return 0
    local mirror t=$SECONDS
    mirror="${MIRROR:-$(debian_mirror)}"
    log "building the Debian $SUITE arm64 root ($PKGS) from $mirror: a few minutes"
    rm -f "$CACHE"/base-"$FLAVOR"-*.tar "$CACHE"/base-"$FLAVOR"-*.tar.tmp # older keys, a killed build's leftovers
    mmdebstrap --quiet --arch=arm64 --variant=minbase --format=tar --include="$PKGS" "$SUITE" "$BASE_TAR.tmp" "$mirror"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    TIMES+=("base_build_s=$((SECONDS - t))")
}

# aarch64 wheels resolved and downloaded on the host (native speed; pip's cache in ~/.cache/pip), installed in
# the root without network. kenlm has no wheel: its source release is built in the root (FULL=1).
build_env() {
    [[ -d $ROOTFS ]] && return 0
    local t=$SECONDS tmp="$ROOTFS.tmp" plat=() p bin=() req
    log "building $ROOTFS (venv with: $(echo "$REQS" | tr '\n' ' '))"
    for p in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_26 manylinux_2_27 manylinux_2_28 \
        manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36; do plat+=(--platform "${p}_aarch64"); done
    mkdir -p "$WHEELS"
    while read -r req; do
        [[ -z $req ]] && continue
        [[ $req = kenlm* ]] || bin+=("$req")
    done <<<"$REQS"
    "$PY" -m pip download -q -d "$WHEELS" --only-binary=:all: "${plat[@]}" --python-version "$PYTAG" \
        --implementation cp --abi "cp$PYTAG" --abi abi3 --abi none -c "$ROOT/constraints.txt" "${bin[@]}" \
        $([[ $FLAVOR = full ]] && echo setuptools wheel) 2>"$CACHE/pip-download.log" ||
        { tail -20 "$CACHE/pip-download.log" >&2; die "pip download (aarch64 wheels) failed"; }
    if [[ $FLAVOR = full ]]; then
        "$PY" -m pip download -q -d "$WHEELS" --no-deps --no-binary kenlm -c "$ROOT/constraints.txt" kenlm \
            2>"$CACHE/pip-download.log" || { tail -20 "$CACHE/pip-download.log" >&2; die "pip download kenlm failed"; }
    fi
    rm -rf "$CACHE"/rootfs-"$FLAVOR"-* # older keys of this flavor, and a killed build's leftovers
    mkdir -p "$tmp"
    tar -C "$tmp" -xf "$BASE_TAR"
    mkdir -p "$tmp/tmp/wheels" && cp "$WHEELS"/* "$tmp/tmp/wheels/"
    cp "$ROOT/constraints.txt" "$tmp/tmp/constraints.txt"
    echo "$REQS" >"$tmp/tmp/requirements.txt"
    local saved=$ROOTFS
    ROOTFS=$tmp
    fake_machine "$tmp"
    in_root python3 -m venv /opt/venv
    if [[ $FLAVOR = full ]]; then
        in_root pip install -q --no-index --find-links /tmp/wheels -c /tmp/constraints.txt setuptools wheel
        log "compiling kenlm in the emulated root (~18 min)"
        in_root pip install -q --no-index --find-links /tmp/wheels -c /tmp/constraints.txt --no-build-isolation kenlm
    fi
    in_root pip install -q --no-index --find-links /tmp/wheels -c /tmp/constraints.txt -r /tmp/requirements.txt
    rm -rf "$tmp/tmp/wheels" "$tmp/root/.cache"
    ROOTFS=$saved
    mv "$tmp" "$ROOTFS"
    TIMES+=("env_build_s=$((SECONDS - t))")
}

# --- run ---------------------------------------------------------------------------------------------------
TIMES=()
ensure_tools
ensure_binfmt
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one run at a time per cache
build_base
build_env
TIMES+=("setup_s=$((SECONDS - T0))")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/xlsr-arm64.XXXXXX")"
trap '[[ "${KEEP:-0}" = 1 ]] && log "kept $WORK" || rm -rf "$WORK"; rm -rf "$ROOTFS/x"' EXIT
X="$WORK/x"
mkdir -p "$X/bundles" "$X/clips" "$X/out" "$WORK/dist" "$WORK/src"

# the wheel of the working tree (tracked + untracked, not ignored, deleted files left out), built from a copy:
# no build/ in the repo
(cd "$ROOT" && git ls-files -co --exclude-standard -z |
    while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done | tar --null -T - -cf - | tar -x -C "$WORK/src")
(cd "$WORK/src" && "$PY" -m pip wheel -q --no-deps -w "$WORK/dist" . >/dev/null)
WHEEL="$(ls "$WORK"/dist/xlsr_edge-*.whl)"

log "exporting the demo bundles on x86"
for p in fp32 int8-dynamic int8; do
    "$PY" -m xlsr_edge export "$ROOT/models/demo-tr" -o "$X/bundles/$p" --precision "$p" >"$WORK/export-$p.log" 2>&1 ||
        { tail -5 "$WORK/export-$p.log" >&2; die "export --precision $p failed"; }
done
mapfile -t ALL < <("$PY" -c 'import json, sys
for line in open(sys.argv[1]): print(json.loads(line)["audio_filepath"])' "$ROOT/models/demo-tr/test/test.jsonl")
for f in "${ALL[@]:0:$CLIPS}"; do cp "$ROOT/models/demo-tr/test/$f" "$X/clips/"; done
SEL=("${ALL[@]:0:$CLIPS}")
SEL=("${SEL[@]/#/clips/}")
if [[ $FLAVOR = full ]]; then
    mkdir -p "$X/lm"
    "$PY" -m xlsr_edge lm build "$ROOT/benchmarks/data/tr_lm_text.txt" -o "$X/lm/tr.bin" --order 3 --language tr \
        --bundle "$X/bundles/fp32" >"$WORK/lm.log" 2>&1 || { tail -5 "$WORK/lm.log" >&2; die "lm build failed"; }
fi
rm -rf "$ROOTFS/x" && cp -a "$X" "$ROOTFS/x" && cp "$WHEEL" "$ROOTFS/x/"
fake_machine "$ROOTFS"
in_root pip install -q --no-index --no-deps --force-reinstall "/x/$(basename "$WHEEL")"

# `step NAME ARGS...`: the same xlsr-edge command (paths relative to the run folder) on x86, then on arm64.
# `REF=OTHER step NAME ARGS...`: arm64 only, compared with step OTHER's x86 transcripts.
# `INFO=1 step ...`: recorded and compared, never a failure of the check.
STEPS="$WORK/steps.tsv"
: >"$STEPS"
step() {
    local name=$1 t rc_x=0 tx=0 rc_a
    shift
    log "$name: xlsr-edge $*"
    t=$SECONDS
    if [[ -n ${REF:-} ]]; then
        cp "$X/out/$REF.x86.jsonl" "$X/out/$name.x86.jsonl"
    else
        (cd "$X" && "$PY" -m xlsr_edge "$@" >"out/$name.x86.jsonl" 2>"out/$name.x86.err") || rc_x=$?
        tx=$((SECONDS - t))
    fi
    t=$SECONDS
    in_root python -m xlsr_edge "$@" >"$X/out/$name.arm64.jsonl" 2>"$X/out/$name.arm64.err" && rc_a=0 || rc_a=$?
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc_x" "$rc_a" "$tx" "$((SECONDS - t))" "${REF:-}" \
        "${INFO:-}" "xlsr-edge $*" >>"$STEPS"
}
OV=(--backend openvino --cache-dir ovcache)
step ort-fp32 transcribe bundles/fp32 "${SEL[@]}" --json --threads "$THREADS"
step ort-int8-dynamic transcribe bundles/int8-dynamic "${SEL[@]}" --json --threads "$THREADS"
step ort-int8-qdq transcribe bundles/int8 "${SEL[@]}" --json --threads "$THREADS"
step openvino-int8-dynamic-f32 transcribe bundles/int8-dynamic "${SEL[@]}" --json --threads "$THREADS" "${OV[@]}" \
    --precision-hint f32
REF=openvino-int8-dynamic-f32 step openvino-int8-dynamic-auto transcribe bundles/int8-dynamic "${SEL[@]}" --json \
    --threads "$THREADS" "${OV[@]}"
INFO=1 step openvino-int8-qdq-f32 transcribe bundles/int8 "${SEL[@]}" --json --threads "$THREADS" "${OV[@]}" \
    --precision-hint f32
step stream-fp32 stream bundles/fp32 "${SEL[@]:0:$STREAM_CLIPS}" --threads "$THREADS"
[[ $FLAVOR = full ]] && step beam-kenlm-fp32 transcribe bundles/fp32 "${SEL[@]}" --json --threads "$THREADS" --lm lm/tr.bin
# bench: arm64 only (its timings under emulation say nothing about a board; what counts is that it finishes
# and records the machine)
log "bench: xlsr-edge bench (arm64 only)"
t=$SECONDS
BENCH=(bench bundles/int8 --seconds 1 --batch 1 --threads 1 --repeat 2 --warmup 1
    --backend onnxruntime,openvino --cache-dir ovcache -o out/bench)
in_root python -m xlsr_edge "${BENCH[@]}" >"$X/out/bench.arm64.md" 2>"$X/out/bench.arm64.err" && rc_b=0 || rc_b=$?
printf '%s\t%s\t%s\t%s\t%s\t\t\t%s\n' bench 0 "$rc_b" 0 "$((SECONDS - t))" "xlsr-edge ${BENCH[*]}" >>"$STEPS"
cp -a "$ROOTFS/x/out/." "$X/out/"
ARM_INFO="$(in_root python -c 'import importlib.metadata as m, json, platform
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
    **{d: m.version(d) for d in ("xlsr-edge", "numpy", "onnxruntime", "openvino", "soundfile", "soxr")}}))')"
TIMES+=("total_s=$((SECONDS - T0))")

# --- compare and record ------------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
CMD="FULL=${FULL} CLIPS=$CLIPS STREAM_CLIPS=$STREAM_CLIPS THREADS=$THREADS ARM_CPU=$ARM_CPU scripts/arm64_check.sh"
"$PY" - "$STEPS" "$X/out" "$OUT" "$ROOT" "$ARM_INFO" "$ARM_CPU" "$EMULATED" "$CMD" "${TIMES[@]}" <<'EOF'
import json, platform, subprocess, sys, time
from pathlib import Path

from xlsr_edge.measure.sysinfo import git_state, machine
from xlsr_edge.scoring import error_rates

steps_tsv, out, result_path, root, arm_info, arm_cpu, emulated, command, *times = sys.argv[1:]
out = Path(out)
MAX_CER = 0.01
REFERENCE = {  # the clips' transcripts: each side's accuracy, next to how far apart the two are
    json.loads(line)["audio_filepath"]: json.loads(line)["text"]
    for line in (Path(root) / "models" / "demo-tr" / "test" / "test.jsonl").read_text().splitlines()
}


def transcripts(path: Path) -> dict[str, str]:
    """audio name -> text: transcribe's lines, or stream's finals joined per audio"""
    texts: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("type", "final") != "final":
            continue
        texts.setdefault(Path(row["audio"]).name, []).append(row.get("text", row.get("error", "?")))
    return {k: " ".join(v) for k, v in texts.items()}


def compare(name: str) -> dict:
    x86, arm = transcripts(out / f"{name}.x86.jsonl"), transcripts(out / f"{name}.arm64.jsonl")
    if not x86 or set(x86) != set(arm):
        return {"verdict": "fail", "why": f"clips differ: x86 {sorted(x86)}, arm64 {sorted(arm)}"}
    keys = sorted(x86)
    same = sum(x86[k] == arm[k] for k in keys)
    cer = error_rates([x86[k] for k in keys], [arm[k] for k in keys], normalize=False).cer
    verdict = "exact" if same == len(keys) else ("cer<=1%" if cer <= MAX_CER else "fail")
    refs = [REFERENCE[k] for k in keys]
    row = {
        "clips": len(keys),
        "identical": same,
        "cer_vs_x86": round(cer, 5),
        "verdict": verdict,
        "cer_vs_reference": {side: round(error_rates(refs, [t[k] for k in keys]).cer, 5)
                             for side, t in (("x86", x86), ("arm64", arm))},
    }
    if same < len(keys):
        row["differences"] = [{"audio": k, "x86": x86[k], "arm64": arm[k]} for k in keys if x86[k] != arm[k]]
    return row


def tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-5:]) if path.exists() else ""


rows = []
for line in Path(steps_tsv).read_text().splitlines():
    name, rc_x, rc_a, tx, ta, ref, info, step_command = line.split("\t")
    row = {"step": name, "command": step_command, "x86_seconds": int(tx), "arm64_seconds": int(ta)}
    if ref:
        row["x86_reference"] = f"step {ref}'s x86 transcripts"
    if name == "bench":
        res = out / "bench" / "results.json"
        ok = rc_a == "0" and res.exists()
        rec = json.loads(res.read_text()) if res.exists() else {}
        mach = rec.get("machine") or rec.get("environment") or rec.get("provenance", {}).get("machine")
        arch = (mach or {}).get("arch", (mach or {}).get("machine"))
        row |= {"verdict": "ok" if ok and arch == "aarch64" else "fail", "recorded_machine": mach,
                "plot": (out / "bench" / "results.png").exists()}
        if not ok:
            row["error"] = tail(out / "bench.arm64.err")
    elif rc_x != "0" or rc_a != "0":
        row |= {"verdict": "fail", "rc_x86": int(rc_x), "rc_arm64": int(rc_a),
                "error": tail(out / f"{name}.{'x86' if rc_x != '0' else 'arm64'}.err")}
    else:
        row |= compare(name)
    if info:
        row["informational"] = "recorded, never a failure of the check"
    rows.append(row)

failed = [r["step"] for r in rows if r["verdict"] == "fail" and not r.get("informational")]
result = {
    "what": "scripts/arm64_check.sh: the runtime on Debian 12 arm64 (qemu-user) vs x86, same bundles and clips",
    **git_state(root),
    "command": command,
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "host": machine() | {"kernel": platform.release()},
    "target": json.loads(arm_info) | {
        "os": "Debian 12 (bookworm) arm64 root file system (mmdebstrap)",
        "emulation": (f"qemu-user-static {subprocess.run(['qemu-aarch64-static', '--version'], capture_output=True, text=True).stdout.split()[2]}"
                      f", -cpu {arm_cpu}; /proc/cpuinfo and /sys/devices/system/cpu synthesized from the "
                      "emulated CPU (AT_HWCAP, MIDR_EL1)") if emulated == "1" else "native arm64",
    },
    "criterion": f"transcripts equal to x86's (exact), else corpus CER vs x86 <= {MAX_CER:.0%} (cer<=1%)",
    "steps": rows,
    "timings_s": {k: int(v) for k, v in (t.split("=") for t in times)},
    "verdict": "fail" if failed else "pass",
}
Path(result_path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
print("\n| step | verdict | clips | identical | CER vs x86 | CER vs ref x86 / arm64 | x86 s | arm64 s |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    ref = r.get("cer_vs_reference")
    refs = f"{ref['x86']} / {ref['arm64']}" if ref else ""
    info = " (info)" if r.get("informational") else ""
    print(f"| {r['step']} | {r['verdict']}{info} | {r.get('clips', '')} | {r.get('identical', '')} | "
          f"{r.get('cer_vs_x86', '')} | {refs} | {r['x86_seconds']} | {r['arm64_seconds']} |")
print(f"\n{result['verdict']}: {result_path} ({', '.join(times)})")
for r in rows:
    if r.get("error"):
        print(f"{r['step']}: {r['error']}", file=sys.stderr)
sys.exit(1 if failed else 0)
EOF
