#!/usr/bin/env bash
# Regenerates build/plugin-code-order.txt: the functions one CNI ADD and DEL of the twill plugin
# run, which build.rs hands to the linker (--symbol-ordering-file) so that they sit together in
# the text instead of spread over 16 MiB of it. Each touched spot of a file mapping costs up to
# a fault-around window / large folio (64-128 KiB) of peak RSS; with the plugin's ~310 pages of
# code gathered, one ADD's peak RSS drops by ~1.9 MiB (issue 13).
#
# Usage (as root, it creates two network namespaces, removed on exit):
#   bash build/plugin-code-order.sh [TWILL_BIN]     (default target/release/twill)
# then rebuild (`cargo build --release`). A stale list only loses some of the gain: names the
# linker does not find are skipped. Regenerate after upgrading Rust or the plugin's crates.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(realpath "${1:-$HERE/../target/release/twill}")
OUT=$HERE/plugin-code-order.txt
[ "$(id -u)" = 0 ] || { echo "plugin-code-order.sh: run as root (network namespaces)" >&2; exit 1; }
W=$(mktemp -d /tmp/twill-order.XXXX)
H=two-h-$$ P=two-p-$$
cleanup() { ip netns del "$P" 2>/dev/null || true; ip netns del "$H" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cc -O2 -shared -fPIC -o "$W/text-trace.so" "$HERE/text-trace.c"
ip netns add "$H"; ip netns add "$P"
ip netns exec "$H" ip link set lo up
CONF='{"cniVersion":"1.0.0","name":"twonet","type":"twill","mode":"bridge","bridge":"two0","ranges":["10.86.0.0/16"],"ipMasq":true,"dataDir":"'$W'/data"}'
for verb in ADD DEL; do
  echo "$CONF" | ip netns exec "$H" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CNI_COMMAND=$verb \
    CNI_CONTAINERID=order CNI_NETNS=/var/run/netns/$P CNI_IFNAME=eth0 CNI_PATH="$(dirname "$BIN")" \
    LD_PRELOAD="$W/text-trace.so" TEXT_TRACE_OUT="$W/pages.$verb" "$BIN" >"$W/out.$verb"
  grep -q '"code"' "$W/out.$verb" && { echo "plugin $verb failed: $(cat "$W/out.$verb")" >&2; exit 1; }
done
# The text mapping starts at the executable LOAD segment's page; functions overlapping a page
# that ran are listed in address order (functions sharing a page with a hot one come along).
text=$(readelf -lW "$BIN" | awk '$1=="LOAD" && $8=="E" {print $3}')
nm --defined-only -S "$BIN" | awk '$3 ~ /^[tT]$/ {print $1, $2, $4}' >"$W/syms"
cat "$W"/pages.* | python3 -c '
import bisect, sys
text = int(sys.argv[1], 16) & ~0xfff
syms = sorted((int(a, 16), int(s, 16), n) for a, s, n in (l.split() for l in open(sys.argv[2])))
starts = [s[0] for s in syms]
pages = sorted({text + int(l, 16) for l in sys.stdin if l.strip()})
seen, order = set(), []
for page in pages:
    i = max(bisect.bisect_right(starts, page) - 1, 0)
    while i > 0 and syms[i - 1][0] + syms[i - 1][1] > page:
        i -= 1
    while i < len(syms) and syms[i][0] < page + 4096:
        addr, size, name = syms[i]
        if addr + size > page and name not in seen:
            seen.add(name); order.append(name)
        i += 1
print("\n".join(order))
print(f"{len(pages)} pages ran, {len(order)} functions", file=sys.stderr)
' "$text" "$W/syms" >"$OUT"
echo "wrote $OUT"
