// twill's kernel fast path for the ipip and udp tunnels: two tc programs that do what the
// userspace engine does, without a trip to userspace, and keep GSO super-packets whole, and a
// third that keeps them whole up to bridged pods.
//
// - twill_encap (tc egress of the TUN device): an IPv4 packet for a peer's subnet, or on a
//   dual-stack tunnel an IPv6 packet for a peer's IPv6 subnet, gets the outer headers the
//   engine would write and is redirected to the underlay device through the kernel's FIB and
//   neighbour table. ipip: one IPv4 header (wire::encode_ipv4_outer: DF, TTL inherited from
//   the TTL or hop limit, DSCP 0 with the inner ECN, protocol 4 for IPv4 as Linux's `ipip`,
//   41 for IPv6 as Linux's `sit`). udp: IPv4 and UDP headers as the engine's socket sends
//   them (Flannel's framing: the UDP payload is the inner packet of either family, both
//   ports the tunnel port, DF, TTL 64, no UDP checksum).
// - twill_decap (tc ingress of the underlay device): a tunnel packet from a known peer whose
//   inner source lies in that peer's subnet of the inner family and whose inner destination
//   lies in ours loses its outer headers and enters the TUN device, exactly as if the engine
//   had written it.
// - twill_bridge (tc egress of the bridge in front of the node's pods, when pods are bridged):
//   a frame the host routes from the TUN device to one of the bridge's ports goes straight to
//   that port, as the bridge would send it (same port, from the bridge's own forwarding
//   table). On this kernel a decapsulated super-packet keeps its tunnel GSO type, and the
//   bridge, which offers no offloads for encapsulated packets, would cut it into segments in
//   software before forwarding; a veth port takes it whole (as it does for routed pods). The
//   frame has passed the host's routing and netfilter hooks (policy, forward) by then.
//
// Anything the programs are not sure about (unknown peer, spoofed source, IP options,
// fragments, a kernel that refuses a helper) is passed on untouched, so it reaches the
// userspace engine, which applies the same checks and counts the drop by reason. The fast
// path only ever forwards what the engine would forward.
//
// The agent fills the maps (config, routes by inner destination, peers by underlay address,
// each per inner family) before it attaches the programs, and reads the per-CPU counters
// (one per peer, both families together, as the engine counts) for `twill status`.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_IPXIP4
#define BPF_F_ADJ_ROOM_DECAP_IPXIP4 (1ULL << 11)
#endif

#define IP_DF 0x4000
#define IP_MF_OFFSET 0x3fff
#define ECN_MASK 0x3
#define ECN_CE 0x3
#define ECN_ECT0 0x2
#define UDP_TTL 64
#ifndef IPPROTO_IPV6
#define IPPROTO_IPV6 41
#endif

#ifndef BPF_F_ADJ_ROOM_DECAP_L4_UDP
#define BPF_F_ADJ_ROOM_DECAP_L4_UDP (1ULL << 10)
#endif

enum encap_kind {
	ENCAP_IPIP = 0,
	ENCAP_UDP = 1,
};

struct config {
	__be32 local_ip;       // our underlay address: outer source, and outer destination on receive
	__be32 local_net;      // our pod subnet: inner destination on receive must lie in it
	__be32 local_mask;
	__u32 underlay_ifindex; // where encapsulated packets leave
	__u32 tun_ifindex;      // where decapsulated packets enter
	__u32 encap;            // enum encap_kind
	__u32 port;             // udp: the tunnel port, host order
	__u32 ipv6;             // 1 on a dual-stack tunnel: the engine carries IPv6 too
	__be32 local_net6[4];   // our IPv6 pod subnet (ipv6 only)
	__be32 local_mask6[4];
};

// What encapsulation adds in front of the inner packet.
static __always_inline __u32 encap_len(const struct config *cfg)
{
	return cfg->encap == ENCAP_UDP ? sizeof(struct iphdr) + sizeof(struct udphdr)
				       : sizeof(struct iphdr);
}

struct lpm_v4 {
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_v6 {
	__u32 prefixlen;
	__be32 addr[4];
};

struct peer {
	__be32 net;  // the peer's pod subnet: inner sources it may send from
	__be32 mask;
};

struct peer6 {
	__be32 net[4]; // the peer's IPv6 pod subnet: inner IPv6 sources it may send from
	__be32 mask[4];
};

struct counters {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} twill_config SEC(".maps");

// Inner destination (longest prefix) -> peer's underlay address.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __be32);
} twill_routes SEC(".maps");

// Peer's underlay address -> its subnet.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct peer);
} twill_peers SEC(".maps");

// Inner IPv6 destination (longest prefix) -> peer's underlay address (dual-stack only).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6);
	__type(value, __be32);
} twill_routes6 SEC(".maps");

// Peer's underlay address -> its IPv6 subnet (peers that have one, on a dual-stack tunnel).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct peer6);
} twill_peers6 SEC(".maps");

// Peer's underlay address -> traffic (inner packets and bytes, like the engine counts).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct counters);
} twill_counters SEC(".maps");

// A pod's MAC address (6 bytes, zero padded) -> the bridge port it sits behind: the
// bridge's forwarding table, learned entries of its ports only, copied by the agent.
struct mac_key {
	__u8 addr[ETH_ALEN];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mac_key);
	__type(value, __u32);
} twill_ports SEC(".maps");

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// The one's-complement sum of a 20-byte IPv4 header's words.
static __always_inline __u32 header_sum(const struct iphdr *ip)
{
	const __u16 *words = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += words[i];
	return sum;
}

// Whether a 20-byte IPv4 header carries a valid checksum.
static __always_inline int header_checksum_ok(const struct iphdr *ip)
{
	return csum_fold(header_sum(ip)) == 0;
}

static __always_inline __u32 segments(struct __sk_buff *skb)
{
	return skb->gso_segs > 1 ? skb->gso_segs : 1;
}

// Whether an IPv6 address (in the packet) lies in the subnet `net`/`mask`.
static __always_inline int in_subnet6(const struct in6_addr *addr, const __be32 *net,
				      const __be32 *mask)
{
	return (addr->s6_addr32[0] & mask[0]) == net[0] && (addr->s6_addr32[1] & mask[1]) == net[1] &&
	       (addr->s6_addr32[2] & mask[2]) == net[2] && (addr->s6_addr32[3] & mask[3]) == net[3];
}

// An IPv6 packet's ECN bits (the low two bits of the traffic class, which straddles the
// first two bytes).
static __always_inline __u8 ecn6(const struct ipv6hdr *ip)
{
	return (((const __u8 *)ip)[1] >> 4) & ECN_MASK;
}

// The configuration, for IPv4 and (on a dual-stack tunnel) IPv6 packets; NULL for anything
// else, which is the engine's.
static __always_inline struct config *family_config(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg;
	if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6))
		return NULL;
	cfg = bpf_map_lookup_elem(&twill_config, &zero);
	if (cfg && skb->protocol == bpf_htons(ETH_P_IPV6) && !cfg->ipv6)
		return NULL;
	return cfg;
}

// Makes sure the first `len` bytes are in the linear area (the caller checks again against
// the reloaded packet pointers, for the verifier). Returns 0 when they cannot be.
static __always_inline int pull(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 1;
	return skb->len >= len && !bpf_skb_pull_data(skb, len);
}

// Puts the outer headers in front of the inner packet (the TUN device has no link-layer
// header: the inner packet is at offset 0) and sends the result to the peer `dst` through
// the underlay device. `inner_tos` and `inner_ttl` are the inner TOS / traffic class and TTL
// / hop limit; `protocol` is the ipip protocol for the inner family (4 or 41).
static __always_inline int encap(struct __sk_buff *skb, const struct config *cfg, __be32 dst,
				 __u8 inner_tos, __u8 inner_ttl, __u8 protocol)
{
	int udp = cfg->encap == ENCAP_UDP;
	__u8 tos = 0, ttl = UDP_TTL;
	if (!udp) {
		tos = inner_tos & ECN_MASK;
		if (tos == ECN_CE)
			tos = ECN_ECT0; // RFC 6040 normal mode, as Linux's ipip and sit do
		ttl = inner_ttl;
	}
	__u32 inner_len = skb->len;
	__u32 segs = segments(skb);
	__u32 room = encap_len(cfg);
	// A GSO super-packet's lengths are rewritten per segment by the kernel.
	__u32 total = inner_len + room > 0xffff ? 0xffff : inner_len + room;

	struct {
		struct iphdr ip;
		struct udphdr udp;
	} outer = {
		.ip = {
			.version = 4,
			.ihl = 5,
			.tos = tos,
			.tot_len = bpf_htons(total),
			.id = 0,
			.frag_off = bpf_htons(IP_DF),
			.ttl = ttl,
			.protocol = udp ? IPPROTO_UDP : protocol,
			.check = 0,
			.saddr = cfg->local_ip,
			.daddr = dst,
		},
		.udp = {
			.source = bpf_htons(cfg->port),
			.dest = bpf_htons(cfg->port),
			.len = bpf_htons(total - sizeof(struct iphdr)),
			.check = 0,
		},
	};
	outer.ip.check = csum_fold(header_sum(&outer.ip));
	// The outer header is IPv4 for both inner families: the kernel marks a super-packet
	// SKB_GSO_IPXIP4 (sit's GSO type; the GSO code segments it by the inner family's rules)
	// or SKB_GSO_UDP_TUNNEL, keeps it whole, and switches skb->protocol to IPv4.
	__u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO;
	if (udp)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;

	// bpf_redirect_neigh wants a link-layer header to replace: push a placeholder one (the
	// kernel fills in the addresses from its neighbour table), then room for the outer header.
	if (bpf_skb_change_head(skb, sizeof(struct ethhdr), 0))
		return TC_ACT_OK; // left as it was: the engine sends it
	struct ethhdr eth = { .h_proto = bpf_htons(ETH_P_IP) };
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_MAC, flags))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &outer, udp ? sizeof(outer) : sizeof(outer.ip), 0))
		return TC_ACT_SHOT;

	struct counters *c = bpf_map_lookup_elem(&twill_counters, &dst);
	if (c) {
		c->tx_packets += segs;
		c->tx_bytes += inner_len;
	}
	return bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
}

SEC("classifier")
int twill_encap(struct __sk_buff *skb)
{
	struct config *cfg = family_config(skb);
	if (!cfg || !cfg->underlay_ifindex)
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *inner = data;
		if ((void *)(inner + 1) > end)
			return TC_ACT_OK;
		if (inner->version != 4 || inner->ihl < 5)
			return TC_ACT_OK;
		struct lpm_v4 key = { .prefixlen = 32, .addr = inner->daddr };
		__be32 *underlay = bpf_map_lookup_elem(&twill_routes, &key);
		if (!underlay)
			return TC_ACT_OK;
		return encap(skb, cfg, *underlay, inner->tos, inner->ttl, IPPROTO_IPIP);
	}

	struct ipv6hdr *inner = data;
	if ((void *)(inner + 1) > end)
		return TC_ACT_OK;
	if (inner->version != 6)
		return TC_ACT_OK;
	// The kernel's own link-local and multicast chatter is the engine's to discard, as it
	// does (engine::routable6), even if a peer's subnet were to hold such an address.
	__u8 first = inner->daddr.s6_addr[0];
	if (first == 0xff || (first == 0xfe && (inner->daddr.s6_addr[1] & 0xc0) == 0x80))
		return TC_ACT_OK;
	struct lpm_v6 key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, inner->daddr.s6_addr32, sizeof(key.addr));
	__be32 *underlay = bpf_map_lookup_elem(&twill_routes6, &key);
	if (!underlay)
		return TC_ACT_OK;
	__u8 traffic_class = (((const __u8 *)inner)[0] << 4) | (((const __u8 *)inner)[1] >> 4);
	return encap(skb, cfg, *underlay, traffic_class, inner->hop_limit, IPPROTO_IPV6);
}

// The outer headers' checks, the same for both inner families: what ip_rcv (and udp_rcv)
// would check before the engine's socket saw the packet. `protocol` is the ipip protocol
// of the inner family, `inner_min` its fixed header's length. Returns the outer total
// length, or 0 for a packet that is not the fast path's to take.
static __always_inline __u32 outer_checks(struct __sk_buff *skb, const struct config *cfg,
					  struct iphdr *outer, struct udphdr *uh, const int udp,
					  __u8 protocol, __u32 room, __u32 inner_min)
{
	if (outer->protocol != (udp ? IPPROTO_UDP : protocol) || outer->version != 4 ||
	    outer->ihl != 5)
		return 0;
	if (outer->daddr != cfg->local_ip || (outer->frag_off & bpf_htons(IP_MF_OFFSET)))
		return 0;
	__u32 frame = skb->len - sizeof(struct ethhdr);
	__u32 outer_len = bpf_ntohs(outer->tot_len);
	if (outer_len > frame || outer_len < room + inner_min || !header_checksum_ok(outer))
		return 0;
	// One datagram (not a GRO train of several, which the engine unpacks), for our port,
	// without a checksum to verify (twill's fast path sends none; a checksummed datagram,
	// e.g. from Flannel or the engine, goes to the socket, which checks it).
	if (udp && (uh->dest != bpf_htons(cfg->port) || uh->check != 0 ||
		    bpf_ntohs(uh->len) != outer_len - sizeof(struct iphdr)))
		return 0;
	return outer_len;
}

// Takes the outer headers (`room` bytes behind the link-layer header) off a packet that
// passed every check and hands the inner packet to the TUN device's ingress. `l3` is the
// adjust_room flag of the inner family (0 for IPv4: the protocol does not change).
static __always_inline int strip(struct __sk_buff *skb, const struct config *cfg, __be32 src,
				 const int udp, __u32 room, __u32 inner_len, __u64 l3)
{
	__u32 segs = segments(skb);

	// Kernels that know the DECAP_IPXIP4 / DECAP_L4_UDP flags clear the tunnel GSO type.
	// Older ones (6.18 among them) refuse them, and the second call keeps the tunnel GSO
	// type and skb->encapsulation on a decapsulated super-packet. That is harmless here: it
	// only ever goes to a local pod or the host itself (inner destination in our subnet), and
	// if it needs segmenting, the kernel segments by the headers it finds, now the inner ones
	// (a bridge would, in software, having no offloads for encapsulated packets: twill_bridge
	// hands such frames to the pod's port, which takes them whole). DECAP_L3_IPV6 (kernel
	// 6.3) switches skb->protocol to IPv6; a kernel without it passes IPv6 to the engine.
	__u64 first = BPF_F_ADJ_ROOM_FIXED_GSO | (l3 ? l3 : BPF_F_ADJ_ROOM_DECAP_L3_IPV4) |
		      (udp ? BPF_F_ADJ_ROOM_DECAP_L4_UDP : BPF_F_ADJ_ROOM_DECAP_IPXIP4);
	if (bpf_skb_adjust_room(skb, -(__s32)room, BPF_ADJ_ROOM_MAC, first) &&
	    bpf_skb_adjust_room(skb, -(__s32)room, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO | l3))
		return TC_ACT_OK;

	struct counters *c = bpf_map_lookup_elem(&twill_counters, &src);
	if (c) {
		c->rx_packets += segs;
		c->rx_bytes += inner_len;
	}
	return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

// Decapsulation of inner IPv4, with the outer headers' length known at compile time (`udp`
// is a constant at each call site), so every packet access has a fixed offset.
static __always_inline int decap4(struct __sk_buff *skb, struct config *cfg, const int udp)
{
	const __u32 room = udp ? sizeof(struct iphdr) + sizeof(struct udphdr) : sizeof(struct iphdr);
	const __u32 need = sizeof(struct ethhdr) + room + sizeof(struct iphdr);
	if (!pull(skb, need))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + need > end)
		return TC_ACT_OK;
	struct iphdr *outer = data + sizeof(struct ethhdr);
	struct udphdr *uh = (void *)(outer + 1);
	struct iphdr *inner = data + sizeof(struct ethhdr) + room;
	__u32 outer_len = outer_checks(skb, cfg, outer, uh, udp, IPPROTO_IPIP, room,
				       sizeof(struct iphdr));
	if (!outer_len)
		return TC_ACT_OK;
	// What the engine checks of the inner header (wire::decode_ipip,
	// wire::decode_udp_payload). Inner options are left to the engine.
	__u32 inner_len_field = bpf_ntohs(inner->tot_len);
	if (inner->version != 4 || inner->ihl != 5 || !header_checksum_ok(inner))
		return TC_ACT_OK;
	if (inner_len_field < sizeof(struct iphdr) || inner_len_field > outer_len - room)
		return TC_ACT_OK;

	__be32 src = outer->saddr;
	struct peer *peer = bpf_map_lookup_elem(&twill_peers, &src);
	if (!peer)
		return TC_ACT_OK;
	if ((inner->saddr & peer->mask) != peer->net)
		return TC_ACT_OK;
	if ((inner->daddr & cfg->local_mask) != cfg->local_net)
		return TC_ACT_OK;
	if (!udp) {
		// RFC 6040: congestion marked on the outer header is carried to an ECN-capable
		// inner packet; a not-ECT inner packet with CE outside goes to the engine.
		__u8 outer_ecn = outer->tos & ECN_MASK;
		__u8 inner_ecn = inner->tos & ECN_MASK;
		if (outer_ecn == ECN_CE && inner_ecn != ECN_CE)
			return TC_ACT_OK;
	}
	return strip(skb, cfg, src, udp, room, outer_len - room, 0);
}

// Decapsulation of inner IPv6 (udp payload, or protocol 41 as from Linux's `sit`), like
// decap4.
static __always_inline int decap6(struct __sk_buff *skb, struct config *cfg, const int udp)
{
	const __u32 room = udp ? sizeof(struct iphdr) + sizeof(struct udphdr) : sizeof(struct iphdr);
	const __u32 need = sizeof(struct ethhdr) + room + sizeof(struct ipv6hdr);
	if (!pull(skb, need))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + need > end)
		return TC_ACT_OK;
	struct iphdr *outer = data + sizeof(struct ethhdr);
	struct udphdr *uh = (void *)(outer + 1);
	struct ipv6hdr *inner = data + sizeof(struct ethhdr) + room;
	__u32 outer_len = outer_checks(skb, cfg, outer, uh, udp, IPPROTO_IPV6, room,
				       sizeof(struct ipv6hdr));
	if (!outer_len)
		return TC_ACT_OK;
	// What the engine checks of the inner header (wire::parse_ipv6): the packet lies within
	// the outer one. A payload length of 0 (a jumbogram, or nothing) is left to the engine.
	__u32 payload = bpf_ntohs(inner->payload_len);
	if (inner->version != 6 || payload == 0 ||
	    payload + sizeof(struct ipv6hdr) > outer_len - room)
		return TC_ACT_OK;

	__be32 src = outer->saddr;
	struct peer6 *peer = bpf_map_lookup_elem(&twill_peers6, &src);
	if (!peer)
		return TC_ACT_OK; // no peer, or one without an IPv6 subnet: the engine drops it
	if (!in_subnet6(&inner->saddr, peer->net, peer->mask))
		return TC_ACT_OK;
	if (!in_subnet6(&inner->daddr, cfg->local_net6, cfg->local_mask6))
		return TC_ACT_OK;
	if (!udp && (outer->tos & ECN_MASK) == ECN_CE && ecn6(inner) != ECN_CE)
		return TC_ACT_OK; // RFC 6040, as for IPv4
	return strip(skb, cfg, src, udp, room, outer_len - room, BPF_F_ADJ_ROOM_DECAP_L3_IPV6);
}

// The inner packet's version decides which checks apply; for ipip the outer protocol must
// agree (4 or 41), which outer_checks makes sure of.
static __always_inline int decap(struct __sk_buff *skb, struct config *cfg, const int udp)
{
	const __u32 room = udp ? sizeof(struct iphdr) + sizeof(struct udphdr) : sizeof(struct iphdr);
	const __u32 need = sizeof(struct ethhdr) + room + 1;
	if (!pull(skb, need))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + need > end)
		return TC_ACT_OK;
	__u8 version = *(__u8 *)(data + sizeof(struct ethhdr) + room) >> 4;
	if (version == 4)
		return decap4(skb, cfg, udp);
	if (version == 6 && cfg->ipv6)
		return decap6(skb, cfg, udp);
	return TC_ACT_OK;
}

SEC("classifier")
int twill_decap(struct __sk_buff *skb)
{
	__u32 zero = 0;
	// The underlay is IPv4: skb->protocol is the outer family.
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct config *cfg = bpf_map_lookup_elem(&twill_config, &zero);
	if (!cfg || !cfg->tun_ifindex)
		return TC_ACT_OK;
	if (cfg->encap == ENCAP_UDP)
		return decap(skb, cfg, 1);
	return decap(skb, cfg, 0);
}

SEC("classifier")
int twill_bridge(struct __sk_buff *skb)
{
	struct config *cfg = family_config(skb);
	// Only what the host forwards from the tunnel; everything else is the bridge's.
	if (!cfg || !cfg->tun_ifindex || skb->ingress_ifindex != cfg->tun_ifindex)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	// A pod of this node (the routing decision already says so; the map must too).
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return TC_ACT_OK;
		if ((ip->daddr & cfg->local_mask) != cfg->local_net)
			return TC_ACT_OK;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		if (!in_subnet6(&ip6->daddr, cfg->local_net6, cfg->local_mask6))
			return TC_ACT_OK;
	}
	struct mac_key key = {};
	__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
	__u32 *port = bpf_map_lookup_elem(&twill_ports, &key);
	if (!port)
		return TC_ACT_OK; // unknown (or multicast) destination: the bridge floods or drops
	return bpf_redirect(*port, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
