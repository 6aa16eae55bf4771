// twill's kernel fast path for the ipip and udp tunnels: two tc programs that do what the
// userspace engine does, without a trip to userspace, and keep GSO super-packets whole, and a
// third that keeps them whole up to bridged pods.
//
// - twill_encap (tc egress of the TUN device): an IPv4 packet for a peer's subnet gets the
//   outer headers the engine would write and is redirected to the underlay device through
//   the kernel's FIB and neighbour table. ipip: one IPv4 header (wire::encode_ipip_header:
//   DF, TTL inherited, DSCP 0 with the inner ECN, protocol 4). udp: IPv4 and UDP headers as
//   the engine's socket sends them (Flannel's framing: the UDP payload is the inner packet,
//   both ports the tunnel port, DF, TTL 64, no UDP checksum).
// - twill_decap (tc ingress of the underlay device): a tunnel packet from a known peer whose
//   inner source lies in that peer's subnet and whose inner destination lies in ours loses
//   its outer headers and enters the TUN device, exactly as if the engine had written it.
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
// The agent fills the maps (config, routes by inner destination, peers by underlay address)
// before it attaches the programs, and reads the per-CPU counters for `twill status`.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
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

struct peer {
	__be32 net;  // the peer's pod subnet: inner sources it may send from
	__be32 mask;
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

// The configuration, for IPv4 packets only (everything else is the engine's).
static __always_inline struct config *ipv4_config(struct __sk_buff *skb)
{
	__u32 zero = 0;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return NULL;
	return bpf_map_lookup_elem(&twill_config, &zero);
}

SEC("classifier")
int twill_encap(struct __sk_buff *skb)
{
	struct config *cfg = ipv4_config(skb);
	if (!cfg || !cfg->underlay_ifindex)
		return TC_ACT_OK;

	// The TUN device has no link-layer header: the IPv4 header is at offset 0.
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *inner = data;
	if ((void *)(inner + 1) > end)
		return TC_ACT_OK;
	if (inner->version != 4 || inner->ihl < 5)
		return TC_ACT_OK;

	struct lpm_v4 key = { .prefixlen = 32, .addr = inner->daddr };
	__be32 *underlay = bpf_map_lookup_elem(&twill_routes, &key);
	if (!underlay)
		return TC_ACT_OK;
	__be32 dst = *underlay;

	int udp = cfg->encap == ENCAP_UDP;
	__u8 tos = 0, ttl = UDP_TTL;
	if (!udp) {
		tos = inner->tos & ECN_MASK;
		if (tos == ECN_CE)
			tos = ECN_ECT0; // RFC 6040 normal mode, as Linux's ipip does
		ttl = inner->ttl;
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
			.protocol = udp ? IPPROTO_UDP : IPPROTO_IPIP,
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

// Decapsulation with the outer headers' length known at compile time (`udp` is a constant
// at each call site), so every packet access has a fixed offset.
static __always_inline int decap(struct __sk_buff *skb, struct config *cfg, const int udp)
{
	const __u32 room = udp ? sizeof(struct iphdr) + sizeof(struct udphdr) : sizeof(struct iphdr);
	const __u32 need = sizeof(struct ethhdr) + room + sizeof(struct iphdr);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + need > end) {
		if (skb->len < need || bpf_skb_pull_data(skb, need))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + need > end)
			return TC_ACT_OK;
	}
	struct iphdr *outer = data + sizeof(struct ethhdr);
	struct udphdr *uh = (void *)(outer + 1);
	struct iphdr *inner = data + sizeof(struct ethhdr) + room;
	if (outer->protocol != (udp ? IPPROTO_UDP : IPPROTO_IPIP) || outer->version != 4 ||
	    outer->ihl != 5)
		return TC_ACT_OK;
	if (outer->daddr != cfg->local_ip || (outer->frag_off & bpf_htons(IP_MF_OFFSET)))
		return TC_ACT_OK;
	// The kernel has not looked at this packet yet: check what ip_rcv (and udp_rcv) would
	// before the engine's socket saw it, and what the engine checks of the inner header
	// (wire::decode_ipip, wire::decode_udp_payload). Inner options are left to the engine.
	__u32 frame = skb->len - sizeof(struct ethhdr);
	__u32 outer_len = bpf_ntohs(outer->tot_len);
	__u32 inner_len_field = bpf_ntohs(inner->tot_len);
	if (outer_len > frame || outer_len < room + sizeof(struct iphdr) ||
	    !header_checksum_ok(outer))
		return TC_ACT_OK;
	if (udp) {
		// One datagram (not a GRO train of several, which the engine unpacks), for our
		// port, without a checksum to verify (twill's fast path sends none; a checksummed
		// datagram, e.g. from Flannel or the engine, goes to the socket, which checks it).
		if (uh->dest != bpf_htons(cfg->port) || uh->check != 0 ||
		    bpf_ntohs(uh->len) != outer_len - sizeof(struct iphdr))
			return TC_ACT_OK;
	}
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

	__u32 segs = segments(skb);
	__u32 inner_len = outer_len - room;

	// Kernels that know the DECAP_IPXIP4 / DECAP_L4_UDP flags clear the tunnel GSO type.
	// Older ones (6.18 among them) refuse them, and the second call keeps the tunnel GSO
	// type and skb->encapsulation on a decapsulated super-packet. That is harmless here: it
	// only ever goes to a local pod or the host itself (inner destination in our subnet), and
	// if it needs segmenting, the kernel segments by the headers it finds, now the inner ones
	// (a bridge would, in software, having no offloads for encapsulated packets: twill_bridge
	// hands such frames to the pod's port, which takes them whole).
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 |
		      (udp ? BPF_F_ADJ_ROOM_DECAP_L4_UDP : BPF_F_ADJ_ROOM_DECAP_IPXIP4);
	if (bpf_skb_adjust_room(skb, -(__s32)room, BPF_ADJ_ROOM_MAC, flags) &&
	    bpf_skb_adjust_room(skb, -(__s32)room, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return TC_ACT_OK;

	struct counters *c = bpf_map_lookup_elem(&twill_counters, &src);
	if (c) {
		c->rx_packets += segs;
		c->rx_bytes += inner_len;
	}
	return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

SEC("classifier")
int twill_decap(struct __sk_buff *skb)
{
	struct config *cfg = ipv4_config(skb);
	if (!cfg || !cfg->tun_ifindex)
		return TC_ACT_OK;
	if (cfg->encap == ENCAP_UDP)
		return decap(skb, cfg, 1);
	return decap(skb, cfg, 0);
}

SEC("classifier")
int twill_bridge(struct __sk_buff *skb)
{
	struct config *cfg = ipv4_config(skb);
	// Only what the host forwards from the tunnel; everything else is the bridge's.
	if (!cfg || !cfg->tun_ifindex || skb->ingress_ifindex != cfg->tun_ifindex)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return TC_ACT_OK;
	// A pod of this node (the routing decision already says so; the map must too).
	if ((ip->daddr & cfg->local_mask) != cfg->local_net)
		return TC_ACT_OK;
	struct mac_key key = {};
	__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
	__u32 *port = bpf_map_lookup_elem(&twill_ports, &key);
	if (!port)
		return TC_ACT_OK; // unknown (or multicast) destination: the bridge floods or drops
	return bpf_redirect(*port, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
