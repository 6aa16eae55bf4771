/* Counts IPv4 route events of one routing protocol in the current network namespace, as they
 * happen, and prints a line when the count reaches each target (run inside the namespace by
 * bench/bgp.py: `ip netns exec NS route_events PROTO`; bench/bgp.sh builds it with gcc).
 *
 * The same protocol as route_events.py, which it replaces in bench/bgp.py: a netlink socket
 * returns one notification per receive, so the Python version made two system calls and a
 * trip through the interpreter per route (about a core's worth of work while 10,000 routes
 * arrive); when the receiver under test kept both CPUs busy, its marks came up to ~17 ms
 * after the receiver's own log said the last route was in. Here one recvmmsg() takes up to
 * 512 notifications, so the observer costs little and lags little, for both receivers alike.
 *
 * stdin commands, one per line: `expect NAME TARGET` (the count to reach; below the current
 * count means counting down). stdout: `mark NAME UNIXTIME` once per target, and `ready` when
 * the socket is subscribed. A lost notification (ENOBUFS) is reported as `lost` and counting
 * stops. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define BATCH 512
#define MSG_SIZE 512
#define MAX_TARGETS 16

struct target {
    char name[32];
    long value;
    int up, done;
};

static struct target targets[MAX_TARGETS];
static int ntargets;
static long count;

static double now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec / 1e6;
}

static void check(double t) {
    for (int i = 0; i < ntargets; i++) {
        struct target *g = &targets[i];
        if (!g->done && (g->up ? count >= g->value : count <= g->value)) {
            g->done = 1;
            printf("mark %s %.6f\n", g->name, t);
            fflush(stdout);
        }
    }
}

/* Reads whole lines from stdin as they come and applies the `expect` commands. */
static int commands(void) {
    static char line[256];
    static size_t have;
    ssize_t n = read(0, line + have, sizeof line - 1 - have);
    if (n <= 0)
        return -1;
    have += n;
    char *nl;
    while ((nl = memchr(line, '\n', have))) {
        *nl = 0;
        char name[32];
        long value;
        if (sscanf(line, "expect %31s %ld", name, &value) == 2) {
            struct target *g = NULL;
            for (int i = 0; i < ntargets; i++)
                if (!strcmp(targets[i].name, name))
                    g = &targets[i];
            if (!g && ntargets < MAX_TARGETS)
                g = &targets[ntargets++];
            if (g) {
                snprintf(g->name, sizeof g->name, "%s", name);
                g->value = value;
                g->up = value > count;
                g->done = 0;
                check(now());
            }
        }
        size_t used = nl + 1 - line;
        memmove(line, nl + 1, have - used);
        have -= used;
    }
    if (have == sizeof line - 1)
        have = 0; /* an overlong line: dropped */
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: route_events PROTO\n");
        return 2;
    }
    int proto = atoi(argv[1]);
    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (s < 0) {
        perror("socket");
        return 1;
    }
    int rcvbuf = 64 << 20;
    if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_IPV4_ROUTE};
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("bind");
        return 1;
    }
    static char bufs[BATCH][MSG_SIZE];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = MSG_SIZE;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    struct pollfd fds[2] = {{.fd = s, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return 1;
        }
        if (fds[1].revents && commands() < 0)
            return 0;
        if (!(fds[0].revents & POLLIN))
            continue;
        int n = recvmmsg(s, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            printf("lost\n");
            fflush(stdout);
            return 0;
        }
        double t = now();
        long delta = 0;
        for (int i = 0; i < n; i++) {
            size_t len = msgs[i].msg_len;
            for (struct nlmsghdr *h = (struct nlmsghdr *)bufs[i]; NLMSG_OK(h, len);
                 h = NLMSG_NEXT(h, len)) {
                if (h->nlmsg_type != RTM_NEWROUTE && h->nlmsg_type != RTM_DELROUTE)
                    continue;
                struct rtmsg *r = NLMSG_DATA(h);
                if (r->rtm_family == AF_INET && r->rtm_protocol == proto)
                    delta += h->nlmsg_type == RTM_NEWROUTE ? 1 : -1;
            }
        }
        if (delta) {
            count += delta;
            check(t);
        }
    }
}
