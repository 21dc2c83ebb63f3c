// A reference for the kernel's cost of a cache hit: a keep-alive HTTP
// server that does nothing but answer every request with one fixed head
// and the bytes of one file, sent with sendfile(2) from the page cache
// (the head with MSG_MORE, as ringway and nginx send it). No parsing
// beyond finding the end of each head, no headers looked at, no logging,
// epoll edge-triggered. What it costs per request is close to what the
// kernel's TCP path and sendfile cost on this machine at the rate it
// serves. Used by cache.sh --floor; loopback only.
//
//   gcc -O2 -o floor floor.c && ./floor PORT FILE [memfd]
//
// memfd: serve the bytes from a memfd (shmem) copy of the file instead.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

struct conn {
    int pending;     // requests read and not yet answered
    int matched;     // bytes of "\r\n\r\n" matched so far
    off_t off;       // next byte of the body to send
    long left;       // body bytes left to send (0: between answers)
    int head_sent;   // bytes of the head sent for the current answer
};

static struct conn conns[MAX_FD];

static int memfd_copy(int file) {
    int m = memfd_create("floor", 0);
    char buf[65536];
    ssize_t n;
    lseek(file, 0, SEEK_SET);
    while ((n = read(file, buf, sizeof buf)) > 0)
        if (write(m, buf, n) != n) return -1;
    return m;
}

// Answers what `c` has pending until done or the socket is full; returns
// -1 when the connection failed.
static int answer(int fd, struct conn *c, int file, long size, const char *head, int hlen) {
    for (;;) {
        if (c->left == 0 && c->head_sent == 0) {
            if (c->pending == 0) return 0;
            c->pending--;
            c->off = 0;
            c->left = size;
        }
        while (c->head_sent < hlen) {
            ssize_t s = send(fd, head + c->head_sent, hlen - c->head_sent, MSG_MORE | MSG_DONTWAIT);
            if (s < 0) return errno == EAGAIN ? 0 : -1;
            c->head_sent += s;
        }
        while (c->left > 0) {
            ssize_t s = sendfile(fd, file, &c->off, c->left);
            if (s < 0) return errno == EAGAIN ? 0 : -1;
            c->left -= s;
        }
        c->head_sent = 0;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor PORT FILE [memfd]\n");
        return 2;
    }
    // A client that closes mid-body is an EPIPE, not the end of the server.
    signal(SIGPIPE, SIG_IGN);
    int port = atoi(argv[1]);
    int file = open(argv[2], O_RDONLY);
    if (file < 0) { perror(argv[2]); return 1; }
    long size = lseek(file, 0, SEEK_END);
    if (argc > 3 && strcmp(argv[3], "memfd") == 0) file = memfd_copy(file);
    char head[256];
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: application/octet-stream\r\n"
                        "Content-Length: %ld\r\nCache-Control: max-age=3600\r\nAge: 0\r\n\r\n",
                        size);
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096)) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    char buf[16384];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    memset(&conns[c], 0, sizeof conns[c]);
                    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            struct conn *c = &conns[fd];
            int closed = 0;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(fd, buf, sizeof buf);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { closed = 1; break; }
                    if (r < 0) break;
                    int drained = r < (ssize_t)sizeof buf;
                    for (ssize_t j = 0; j < r; j++) {
                        // "\r\n\r\n" ends a head, across reads too.
                        char want = (c->matched % 2 == 0) ? '\r' : '\n';
                        if (buf[j] == want) {
                            if (++c->matched == 4) { c->pending++; c->matched = 0; }
                        } else {
                            c->matched = buf[j] == '\r' ? 1 : 0;
                        }
                    }
                    // A short read took all there was: no read for EAGAIN
                    // (more arriving later is a new edge).
                    if (drained) break;
                }
            }
            if (!closed && answer(fd, c, file, size, head, hlen) < 0) closed = 1;
            if (closed) close(fd);
        }
    }
}
