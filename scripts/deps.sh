#!/usr/bin/env bash
# Installs the system packages twill's build, tests, demo and benchmarks need (Debian, as root).
set -euo pipefail
PKGS=(
  iproute2 ethtool clang-14 libbpf-dev nftables iptables iputils-ping procps kmod python3
  containernetworking-plugins   # reference portmap/bandwidth/tuning/bridge/host-local
  build-essential pkg-config
  protobuf-compiler             # etcd-client's build script needs protoc
  etcd-server etcd-client       # the multi-host store: tests and the lab start their own etcd
  iperf3                        # throughput benchmarks
  tcpdump python3-scapy         # tunnel wire-format tests capture and decode real packets
  bird2                         # BGP lab tests: BIRD 2 as peer and route reflector in a netns
  gobgpd                        # BGP lab tests: GoBGP injects routes with extended and large communities
  wireguard-go wireguard-tools  # WireGuard interop and the wireguard-go baseline benchmark
)
if [ "$(id -u)" != 0 ]; then
  echo "scripts/deps.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/deps.sh: cargo (Rust toolchain) is required; install it with rustup" >&2
  exit 1
fi
