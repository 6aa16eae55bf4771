#!/usr/bin/env bash
# twill CNI plugin vs the reference bridge + host-local plugins (ipMasq on both), side by
# side and interleaved in one run: ADD/DEL latency, NPAR ADDs PAR at a time, peak RSS of
# one ADD, first ADD. Prints a summary with the ratios twill/reference and writes the whole
# output to bench/results/cni-<timestamp>.txt.
#
# Everything happens inside network namespaces this script creates (prefix twb-<run id>-):
# one "host" netns where the driver (cni.py) and the plugins run, and one netns per pod.
# The root namespace's links, routes and firewall are never touched. All of it (and the
# temp dir with the plugins' state) is removed on exit, whatever happens.
#
# Usage (as root, from anywhere):   bash bench/cni.sh
#   NMED=60    pods per plugin for the ADD/DEL latency phase
#   PAR=4      parallel calls in the bulk phase
#   NPAR=200   ADDs per plugin per repetition in the bulk phase
#   REPS=3     repetitions of the bulk phase (order twill/reference alternates)
#   NRSS=3     ADDs per plugin run under /usr/bin/time -f %M for peak RSS
#   TWILL_BIN  twill binary to test (default target/release/twill; built with
#              `cargo build --release` only if that default is missing); copied to a
#              temp dir first, so a concurrent build cannot swap it mid-run
#   bash bench/cni.sh --clean   removes twb-* netns left by a run killed with SIGKILL
#                               (not while a benchmark is running)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --clean)
    for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^twb-' || true); do
      ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true
      ip netns del "$n" 2>/dev/null && echo "deleted netns $n"
    done
    rm -rf /tmp/twb-run.*
    exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then echo "bench/cni.sh: run as root (it creates network namespaces)" >&2; exit 1; fi

NMED=${NMED:-60} PAR=${PAR:-4} NPAR=${NPAR:-200} REPS=${REPS:-3}
for v in NMED PAR NPAR REPS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench/cni.sh: $v must be a positive integer" >&2; exit 2; }
done
export NMED PAR NPAR REPS

# --- packages: reference plugins, firewall tools (the reference's ipMasq runs iptables),
#     GNU time (peak RSS of one ADD)
need=()
for p in containernetworking-plugins iptables nftables iproute2 python3 time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
REF_DIR=/usr/lib/cni
for b in bridge host-local; do
  [ -x "$REF_DIR/$b" ] || { echo "bench/cni.sh: $REF_DIR/$b missing" >&2; exit 1; }
done

# --- the twill binary: use it as is; build only if the default one is missing
if [ -z "${TWILL_BIN:-}" ]; then
  TWILL_BIN=$ROOT/target/release/twill
  if [ ! -x "$TWILL_BIN" ]; then
    for try in 1 2 3; do
      (cd "$ROOT" && cargo build --release) && break
      [ "$try" = 3 ] && { echo "bench/cni.sh: cargo build --release failed" >&2; exit 1; }
      echo "build failed (try $try), retrying in 60 s"; sleep 60
    done
  fi
fi
[ -x "$TWILL_BIN" ] || { echo "bench/cni.sh: $TWILL_BIN is not executable" >&2; exit 1; }

# --- per-run names and temp dir; cleanup on any exit
RUN=twb-$(head -c2 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d /tmp/twb-run.XXXXXX)
HOST=$RUN-host
NPODS=$(( NMED > NPAR ? NMED : NPAR ))
cleanup() {
  trap - EXIT INT TERM
  if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$HOST"; then
    ip netns pids "$HOST" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  fi
  ip netns list 2>/dev/null | awk '{print $1}' | grep "^$RUN-" | sed 's/^/netns del /' \
    | ip -force -batch - 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# private copy, so a concurrent `cargo build` cannot swap the binary mid-run
mkdir -p "$WORK/bin"
cp "$TWILL_BIN" "$WORK/bin/twill"
# Peak RSS depends on how a binary's pages entered the page cache: a freshly written copy
# sits in large folios that a page fault maps whole (kernels >= 6.x), while the reference
# plugins were read from disk. Drop every compared binary from the cache (written back
# first), so all of them are read in the same way by the warm-up and the figures compare code.
sync "$WORK/bin/twill"
for b in "$WORK/bin/twill" "$REF_DIR/bridge" "$REF_DIR/host-local"; do
  dd if="$b" iflag=nocache count=0 status=none || true
done
ip netns add "$HOST"
ip -n "$HOST" link set lo up
# all pod netns up front (pod 0 of each plugin holds the first ADD): the driver never
# creates or deletes a netns while it measures
for i in $(seq 0 "$NPODS"); do echo "netns add $RUN-t$i"; echo "netns add $RUN-r$i"; done | ip -batch -

mkdir -p "$HERE/results"
OUT=$HERE/results/cni-$(date -u +%Y%m%dT%H%M%SZ).txt
# run in the background and `wait`, so INT/TERM reach the trap at once; cleanup then kills
# every process in the host netns (the driver and any plugin call in flight)
(
set -o pipefail
{
  echo "# twill CNI benchmark $(date -u +%FT%TZ) on $(uname -n), kernel $(uname -r), $(nproc) CPUs"
  echo "# twill: $TWILL_BIN ($(stat -c %y "$TWILL_BIN" | cut -d. -f1), sha256 $(sha256sum "$TWILL_BIN" | cut -c1-12))"
  echo "# reference: containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null), $(readlink -f "$(command -v iptables)" | xargs basename)"
  echo "# host netns $HOST, pod netns $RUN-{t,r}0..$NPODS, state in $WORK"
  ip netns exec "$HOST" env TWB_RUN="$RUN" TWB_WORK="$WORK" TWB_TWILL="$WORK/bin/twill" \
    TWB_REF_DIR="$REF_DIR" timeout 600 python3 "$HERE/cni.py"
} 2>&1 | tee "$OUT"
) &
rc=0
wait $! || rc=$?
echo "written to $OUT"
exit "$rc"
