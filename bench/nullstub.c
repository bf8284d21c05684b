/* The null gdb stub: gdb's stepi ceiling (issue 12 item 21).
 *
 * A remote stub that answers every packet at once from constants: the registers are zero but for
 * eip (and esp/ebp), eip advances by one on each step, memory reads return a fixed image (the
 * guest's code where the bench gives it, so gdb's prologue analysis with symbols reads what it
 * reads on a real target; zero elsewhere), writes and breakpoints are accepted and forgotten. It
 * speaks what gdb 13 asks of our stub, with the same target description and the same stop
 * replies (T05 with ebp, esp, eip expedited, and the thread list as qXfer:threads), so gdb does
 * the same work per stepi against it as against ours: what is left is gdb's own cost plus the
 * loopback round trips, the rate no stub can beat.
 *
 * Built by the bench at run time (gcc -O2 -o build/bench/nullstub bench/nullstub.c).
 * Usage: nullstub PORT ENTRY TARGET_XML G_SIZE [IMAGE BASE]. It listens on 127.0.0.1:PORT (0: any
 * free port), says "listening on 127.0.0.1:N" on stderr, serves one gdb and exits when it
 * disconnects. IMAGE is a file of bytes that memory holds from address BASE on.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PACKET_SIZE 0x4000
#define EIP_OFFSET 32 /* eax ecx edx ebx esp ebp esi edi, then eip: 4 bytes each */

static const char THREADS[] = "<?xml version=\"1.0\"?>\n<threads><thread id=\"1\"/></threads>";
static char *target_xml;
static size_t target_xml_len;
static size_t g_size;
static uint8_t *image;
static size_t image_len;
static uint32_t image_base;
static uint32_t pc;
static int fd, no_ack;
static char out[2 * PACKET_SIZE + 16];

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void send_all(const char *buf, size_t n)
{
    while (n) {
        ssize_t k = send(fd, buf, n, 0);
        if (k <= 0)
            exit(0);
        buf += k;
        n -= (size_t)k;
    }
}

/* Frame and send one reply, with the ack for the request in the same write. */
static void reply(const char *payload, size_t n)
{
    static char frame[2 * PACKET_SIZE + 32];
    size_t k = 0;
    uint8_t sum = 0;
    if (!no_ack)
        frame[k++] = '+';
    frame[k++] = '$';
    for (size_t i = 0; i < n; i++) {
        frame[k++] = payload[i];
        sum += (uint8_t)payload[i];
    }
    k += (size_t)sprintf(frame + k, "#%02x", sum);
    send_all(frame, k);
}

static void reply_str(const char *s)
{
    reply(s, strlen(s));
}

static void hex32(char *dst, uint32_t v)
{
    /* little-endian byte order, as the g packet and expedited registers carry it */
    sprintf(dst, "%02x%02x%02x%02x", v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF, v >> 24);
}

static void stop_reply(void)
{
    char e[9], s[9];
    hex32(e, pc);
    hex32(s, 0x8000);
    sprintf(out, "T0505:%s;04:%s;08:%s;thread:1;", s, s, e);
    reply_str(out);
}

static void xfer(const char *doc, size_t len, const char *args)
{
    unsigned long off = 0, n = 0;
    if (sscanf(args, "%lx,%lx", &off, &n) != 2) {
        reply_str("E01");
        return;
    }
    if (off >= len) {
        reply_str("l");
        return;
    }
    if (n > PACKET_SIZE - 16)
        n = PACKET_SIZE - 16;
    size_t take = len - off < n ? len - off : n;
    out[0] = off + take < len ? 'm' : 'l';
    memcpy(out + 1, doc + off, take);
    reply(out, take + 1);
}

static void handle(char *p, size_t n)
{
    p[n] = 0;
    if (!strncmp(p, "qSupported", 10)) {
        sprintf(out, "PacketSize=%x;QStartNoAckMode+;swbreak+;hwbreak+;qXfer:features:read+;"
                     "qXfer:threads:read+;vContSupported+", PACKET_SIZE);
        reply_str(out);
    } else if (!strcmp(p, "QStartNoAckMode")) {
        reply_str("OK");
        no_ack = 1;
    } else if (!strncmp(p, "qXfer:features:read:target.xml:", 31)) {
        xfer(target_xml, target_xml_len, p + 31);
    } else if (!strncmp(p, "qXfer:threads:read::", 20)) {
        xfer(THREADS, sizeof THREADS - 1, p + 20);
    } else if (!strcmp(p, "?")) {
        stop_reply();
    } else if (!strcmp(p, "g")) {
        memset(out, '0', 2 * g_size);
        hex32(out + 2 * EIP_OFFSET, pc);
        out[2 * EIP_OFFSET + 8] = '0';
        reply(out, 2 * g_size);
    } else if (p[0] == 'm') {
        unsigned long addr = 0, len = 0;
        if (sscanf(p + 1, "%lx,%lx", &addr, &len) != 2) {
            reply_str("E01");
            return;
        }
        if (len > PACKET_SIZE / 2 - 16)
            len = PACKET_SIZE / 2 - 16;
        for (unsigned long i = 0; i < len; i++) {
            uint32_t at = (uint32_t)(addr + i);
            uint8_t b = at >= image_base && at - image_base < image_len ? image[at - image_base] : 0;
            sprintf(out + 2 * i, "%02x", b);
        }
        reply(out, 2 * len);
    } else if (!strncmp(p, "vCont;s", 7) || p[0] == 's') {
        pc++;
        stop_reply();
    } else if (!strncmp(p, "vCont;c", 7) || p[0] == 'c') {
        stop_reply();
    } else if (!strcmp(p, "vCont?")) {
        reply_str("vCont;c;C;s;S");
    } else if (p[0] == 'H' || p[0] == 'T' || p[0] == 'Z' || p[0] == 'z' || p[0] == 'M'
               || p[0] == 'X' || p[0] == 'G' || p[0] == 'P') {
        reply_str("OK");
    } else if (!strcmp(p, "qC")) {
        reply_str("QC1");
    } else if (!strcmp(p, "qAttached")) {
        reply_str("1");
    } else if (!strcmp(p, "qfThreadInfo")) {
        reply_str("m1");
    } else if (!strcmp(p, "qsThreadInfo")) {
        reply_str("l");
    } else if (p[0] == 'D') {
        reply_str("OK");
        exit(0);
    } else if (p[0] == 'k') {
        exit(0);
    } else {
        reply_str("");
    }
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: nullstub PORT ENTRY TARGET_XML G_SIZE [IMAGE BASE]\n");
        return 2;
    }
    pc = (uint32_t)strtoul(argv[2], NULL, 0);
    g_size = strtoul(argv[4], NULL, 0);
    if (g_size == 0 || g_size > PACKET_SIZE / 2 - 16) {
        fprintf(stderr, "nullstub: bad G_SIZE %s\n", argv[4]);
        return 2;
    }
    FILE *x = fopen(argv[3], "rb");
    if (!x)
        die(argv[3]);
    target_xml = malloc(1 << 20);
    target_xml_len = fread(target_xml, 1, 1 << 20, x);
    fclose(x);
    if (argc == 7) {
        FILE *m = fopen(argv[5], "rb");
        if (!m)
            die(argv[5]);
        image = malloc(16 << 20);
        image_len = fread(image, 1, 16 << 20, m);
        fclose(m);
        image_base = (uint32_t)strtoul(argv[6], NULL, 0);
    }

    int srv = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(srv, (struct sockaddr *)&a, sizeof a) || listen(srv, 1)
        || getsockname(srv, (struct sockaddr *)&a, &alen))
        die("nullstub: listen");
    fprintf(stderr, "listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stderr);
    fd = accept(srv, NULL, NULL);
    if (fd < 0)
        die("nullstub: accept");
    close(srv);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    static char in[4 * PACKET_SIZE];
    static char packet[2 * PACKET_SIZE];
    size_t have = 0;
    for (;;) {
        ssize_t k = recv(fd, in + have, sizeof in - have, 0);
        if (k <= 0)
            return 0;
        have += (size_t)k;
        size_t i = 0;
        while (i < have) {
            char c = in[i];
            if (c == '+' || c == '-') {
                i++;
                continue;
            }
            if (c == 0x03) { /* Ctrl-C: nothing runs, so the stop is at once */
                i++;
                stop_reply();
                continue;
            }
            if (c != '$') {
                i++;
                continue;
            }
            char *hash = memchr(in + i, '#', have - i);
            if (!hash || (size_t)(hash - in) + 3 > have)
                break; /* incomplete: wait for the rest */
            size_t n = (size_t)(hash - (in + i) - 1);
            if (n >= sizeof packet)
                n = sizeof packet - 1;
            memcpy(packet, in + i + 1, n); /* no escapes in what gdb sends during stepi */
            i = (size_t)(hash - in) + 3;
            handle(packet, n);
        }
        memmove(in, in + i, have - i);
        have -= i;
    }
}
