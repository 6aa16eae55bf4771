# Shared code of bench/cluster.sh, bench/converge.sh and bench/newlease.sh; sourced by them
# (after `set -euo pipefail`), never run. Sets HERE (this folder), ROOT (the repository),
# TWILL (the binary under test: $TWILL, default target/release/twill) and defines the helpers
# below. Messages name the sourcing script, e.g. "bench/cluster.sh: ...".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
TWILL=${TWILL:-$ROOT/target/release/twill}

# the script's header comment (from line 2 to the first line that is not a comment)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "bench/$(basename "$0"): $*" >&2; exit 1; }

common_arg() {   # ARG: what every script does with -h/--help, no argument, anything else
  case "$1" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
}

need_root() { [ "$(id -u)" = 0 ] || die "${1:-run as root (it creates network namespaces)}"; }

int_settings() {   # VAR=DEFAULT...: VAR defaults to DEFAULT (when unset or empty) and must be
  local a v         # a positive integer
  for a in "$@"; do
    v=${a%%=*}
    [ -n "${!v:-}" ] || printf -v "$v" '%s' "${a#*=}"
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
}

need_cmds() {   # HINT CMD...: each CMD must be on PATH, else die with "(HINT)"
  local hint=$1 c
  shift
  for c in "$@"; do
    command -v "$c" >/dev/null || die "$c not found ($hint)"
  done
}

need_twill() { [ -x "$TWILL" ] || die "$TWILL not found: run 'cargo build --release' or set TWILL=..."; }

need_twill_lab() {   # $TWILL must exist and have `lab up`
  need_twill
  "$TWILL" lab --help 2>/dev/null | grep -qE '^[[:space:]]+up([[:space:]]|$)' \
    || die "$TWILL has no 'lab up' subcommand (build a newer twill)"
}

run_id() { head -c2 /dev/urandom | od -An -tx1 | tr -d ' \n'; }   # 4 hex digits

netns_list() { ip netns list 2>/dev/null | awk '{print $1}'; }
kill_netns() {   # kill every process in netns $1, then delete it
  ip netns pids "$1" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$1" 2>/dev/null || true
}
kill_lab_netns() {   # NAME: kill_netns every twl-NAME-* netns
  local ns
  for ns in $(netns_list | grep "^twl-$1-" || true); do kill_netns "$ns"; done
}

clean_labs() {   # PREFIX SECS: `twill lab down` every /run/twill/lab/PREFIX* (for --clean)
  local d n
  for d in /run/twill/lab/"$1"*; do
    [ -d "$d" ] || continue
    n=$(basename "$d")
    if timeout "$2" "$TWILL" lab down --name "$n"; then echo "lab $n down"; fi
  done
}

lab_down_quiet() {   # NAME: on exit, `$TW lab down` if the lab is still there
  if [ -d "/run/twill/lab/$1" ]; then
    timeout 90 "$TW" lab down --name "$1" >/dev/null 2>&1 || echo "warning: twill lab down --name $1 failed"
  fi
}

# Long steps run in the background and are waited for, so INT/TERM reach the trap at once
# (bash defers traps while a foreground child runs); the cleanup stops the step first.
CHILD=
bg_wait() { "$@" & CHILD=$!; local rc=0; wait "$CHILD" || rc=$?; CHILD=; return "$rc"; }
stop_child() { [ -z "${CHILD:-}" ] || { kill -TERM "$CHILD" 2>/dev/null; wait "$CHILD" 2>/dev/null; CHILD=; } || true; }

# on_exit FUNC: on any exit (INT/TERM: status 130) stop the running step, call FUNC (the
# script's own cleanup), remove $WORK and exit with the script's status.
on_exit() {
  EXIT_HOOK=$1
  trap run_exit_hook EXIT
  trap 'exit 130' INT TERM
}
run_exit_hook() {
  local rc=$?
  trap - EXIT INT TERM
  stop_child
  "$EXIT_HOOK" || true
  rm -rf "$WORK"
  exit "$rc"
}

start_output() {   # NAME: from here on, all output also goes to $OUT, bench/results/NAME-<UTC>.txt
  mkdir -p "$HERE/results"
  OUT=$HERE/results/$1-$(date -u +%Y%m%dT%H%M%SZ).txt
  # tee ignores INT/TERM so the cleanup's messages still reach the file and the terminal
  exec > >(trap '' INT TERM; exec tee "$OUT") 2>&1
}

say_header() {   # WHAT: the first line of the output
  echo "# twill $1 benchmark $(date -u +%FT%TZ) on $(uname -n), kernel $(uname -r), $(nproc) CPUs"
}

use_twill() {   # DEST: copy $TWILL to DEST (so a build cannot swap it) and say which one it is
  cp "$TWILL" "$1"
  echo "# twill: $TWILL ($(stat -c %y "$TWILL" | cut -d. -f1), sha256 $(sha256sum "$TWILL" | cut -c1-12))"
}
