/*
 * nullbroker.c - the least an MQTT broker can do, as a ceiling for the
 * benchmark (contrib/bench.sh): how many deliveries per CPU-second this
 * machine allows once sessions, queues, QoS windows and everything else
 * a real broker does are taken away. Not part of iotd.
 *
 * One process, one epoll loop. CONNECT gets CONNACK, SUBSCRIBE gets
 * SUBACK (exact topics and a trailing '#' are remembered), PUBLISH QoS 1
 * gets PUBACK, and every PUBLISH is forwarded byte for byte to matching
 * subscribers. PUBACKs from subscribers are ignored. Output is batched:
 * one write per connection per loop turn.
 *
 *   nullbroker -p 1883
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mqtt.h"

#define RBUF_MIN 2048             /* an idle connection costs little... */
#define RBUF_MAX (256 * 1024)      /* ...a busy one reads many packets per call */
#define MAX_EVENTS 1024
#define MAX_PACKET (1u << 20)
#define OUT_LIMIT (256u << 20)   /* a subscriber this far behind is dropped */
#define HASH_SLOTS 4096          /* exact-topic filters; plenty for the benchmark */

struct buf {
	uint8_t *p;
	size_t off, len, cap;
};

struct conn {
	int fd;
	bool dirty, want_out, closing;
	struct buf in, out;
};

/* One filter and the connections subscribed to it. */
struct filter {
	char *text;
	size_t len;               /* for a prefix filter: the text before '#' */
	bool prefix;
	struct conn **subs;
	size_t n, cap;
};

static int g_ep;
static struct conn **g_dirty;
static size_t g_n_dirty, g_dirty_cap;
static struct filter *g_exact[HASH_SLOTS];
static struct filter **g_prefix;
static size_t g_n_prefix;

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		fprintf(stderr, "nullbroker: out of memory\n");
		exit(1);
	}
	return p;
}

static uint8_t *buf_room(struct buf *b, size_t more)
{
	if (b->off) {
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
	}
	if (b->cap - b->len < more) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap - b->len < more)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	return b->p + b->len;
}

static void mark_dirty(struct conn *c)
{
	if (c->dirty)
		return;
	if (g_n_dirty == g_dirty_cap) {
		g_dirty_cap = g_dirty_cap ? g_dirty_cap * 2 : 1024;
		g_dirty = xrealloc(g_dirty, g_dirty_cap * sizeof(*g_dirty));
	}
	c->dirty = true;
	g_dirty[g_n_dirty++] = c;
}

static void append(struct conn *c, const uint8_t *p, size_t n)
{
	if (c->closing)
		return;
	if (c->out.len - c->out.off + n > OUT_LIMIT) {
		fprintf(stderr, "nullbroker: dropping a subscriber %u MiB behind\n", OUT_LIMIT >> 20);
		c->closing = true;
		mark_dirty(c);
		return;
	}
	memcpy(buf_room(&c->out, n), p, n);
	c->out.len += n;
	mark_dirty(c);
}

/* ------------------------------------------------------------- filters */

static uint32_t hash(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* The exact filter's slot: open addressing, linear probing. */
static struct filter **exact_slot(const uint8_t *p, size_t n)
{
	uint32_t h = hash(p, n);

	for (uint32_t i = 0; i < HASH_SLOTS; i++) {
		struct filter **s = &g_exact[(h + i) % HASH_SLOTS];

		if (!*s || ((*s)->len == n && !memcmp((*s)->text, p, n)))
			return s;
	}
	return NULL;
}

static struct filter *new_filter(const uint8_t *p, size_t n, bool prefix)
{
	struct filter *f = xrealloc(NULL, sizeof(*f));

	memset(f, 0, sizeof(*f));
	f->text = xrealloc(NULL, n + 1);
	memcpy(f->text, p, n);
	f->text[n] = 0;
	f->len = n;
	f->prefix = prefix;
	return f;
}

static struct filter *find_prefix(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < g_n_prefix; i++)
		if (g_prefix[i]->len == n && !memcmp(g_prefix[i]->text, p, n))
			return g_prefix[i];
	g_prefix = xrealloc(g_prefix, (g_n_prefix + 1) * sizeof(*g_prefix));
	return g_prefix[g_n_prefix++] = new_filter(p, n, true);
}

static void add_sub(struct filter *f, struct conn *c)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->subs[i] == c)
			return;
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 8;
		f->subs = xrealloc(f->subs, f->cap * sizeof(*f->subs));
	}
	f->subs[f->n++] = c;
}

static void del_sub(struct filter *f, struct conn *c)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->subs[i] == c) {
			f->subs[i] = f->subs[--f->n];
			return;
		}
}

/* Returns the granted QoS, or 0x80 for a filter this broker cannot hold. */
static uint8_t subscribe(struct conn *c, struct mqtt_str t, uint8_t qos)
{
	struct filter **slot;

	if (t.len && t.p[t.len - 1] == '#') {
		add_sub(find_prefix(t.p, t.len - 1u), c);
		return qos;
	}
	slot = exact_slot(t.p, t.len);
	if (!slot)
		return MQTT_SUBACK_FAILURE;
	if (!*slot)
		*slot = new_filter(t.p, t.len, false);
	add_sub(*slot, c);
	return qos;
}

static void unsubscribe_all(struct conn *c)
{
	for (size_t i = 0; i < HASH_SLOTS; i++)
		if (g_exact[i])
			del_sub(g_exact[i], c);
	for (size_t i = 0; i < g_n_prefix; i++)
		del_sub(g_prefix[i], c);
}

static void forward_to(const struct filter *f, const uint8_t *pkt, size_t n)
{
	for (size_t i = 0; i < f->n; i++)
		append(f->subs[i], pkt, n);
}

/* "a/#" matches "a/b" and "a" itself; "#" matches everything. */
static bool prefix_match(const struct filter *f, const uint8_t *t, size_t n)
{
	if (n >= f->len && !memcmp(t, f->text, f->len))
		return true;
	return f->len && n == f->len - 1 && !memcmp(t, f->text, n);
}

static void route(const struct mqtt_publish *p, const uint8_t *pkt, size_t n)
{
	struct filter **slot = exact_slot(p->topic.p, p->topic.len);

	if (slot && *slot)
		forward_to(*slot, pkt, n);
	for (size_t i = 0; i < g_n_prefix; i++)
		if (prefix_match(g_prefix[i], p->topic.p, p->topic.len))
			forward_to(g_prefix[i], pkt, n);
}

/* ------------------------------------------------------------- packets */

static void on_subscribe(struct conn *c, const struct mqtt_packet *pkt)
{
	uint8_t codes[256], out[4 + 256 + 8];
	struct mqtt_list_iter it;
	struct mqtt_str t;
	uint8_t qos;
	size_t n = 0;

	mqtt_list_iter_init(&it, pkt);
	while (n < sizeof(codes) && mqtt_list_next(&it, &t, &qos))
		codes[n++] = subscribe(c, t, qos);
	append(c, out, mqtt_encode_suback(out, pkt->u.list.packet_id, codes, n));
}

/* Returns false when the connection is to be closed. */
static bool on_packet(struct conn *c, const struct mqtt_packet *pkt, const uint8_t *raw, size_t n)
{
	uint8_t out[4];

	switch (pkt->type) {
	case MQTT_CONNECT:
		append(c, out, mqtt_encode_connack(out, false, MQTT_CONNACK_ACCEPTED));
		return true;
	case MQTT_PUBLISH:
		if (pkt->u.publish.qos == 1)
			append(c, out, mqtt_encode_ack(out, MQTT_PUBACK, pkt->u.publish.packet_id));
		else if (pkt->u.publish.qos == 2)
			append(c, out, mqtt_encode_ack(out, MQTT_PUBREC, pkt->u.publish.packet_id));
		route(&pkt->u.publish, raw, n);
		return true;
	case MQTT_PUBREL:
		append(c, out, mqtt_encode_ack(out, MQTT_PUBCOMP, pkt->u.packet_id));
		return true;
	case MQTT_SUBSCRIBE:
		on_subscribe(c, pkt);
		return true;
	case MQTT_UNSUBSCRIBE:
		append(c, out, mqtt_encode_ack(out, MQTT_UNSUBACK, pkt->u.list.packet_id));
		return true;
	case MQTT_PINGREQ:
		append(c, out, mqtt_encode_empty(out, MQTT_PINGRESP));
		return true;
	case MQTT_DISCONNECT:
		return false;
	default:
		return true;   /* PUBACK, PUBREC, PUBCOMP from subscribers: nothing owed */
	}
}

/* Decodes every whole packet in the buffer, in place. */
static bool parse_input(struct conn *c)
{
	struct buf *b = &c->in;

	for (;;) {
		uint8_t first;
		uint32_t rem;
		size_t hl;
		struct mqtt_packet pkt;
		int rc = mqtt_fixed_header(b->p + b->off, b->len - b->off, MAX_PACKET,
					   &first, &rem, &hl);

		if (rc == MQTT_INCOMPLETE)
			break;
		if (rc != MQTT_OK)
			return false;
		if (b->len - b->off < hl + rem) {
			buf_room(b, hl + rem - (b->len - b->off));
			break;
		}
		if (mqtt_decode(first, b->p + b->off + hl, rem, &pkt) != MQTT_OK ||
		    !on_packet(c, &pkt, b->p + b->off, hl + rem))
			return false;
		b->off += hl + rem;
	}
	if (b->off == b->len)
		b->off = b->len = 0;
	return true;
}

/* ----------------------------------------------------------- connections */

static void conn_close(struct conn *c)
{
	unsubscribe_all(c);
	epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->closing = true;
	/* freed at the end of the turn: the dirty list may still point here */
}

static void set_out_interest(struct conn *c, bool want)
{
	struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };

	if (c->want_out == want)
		return;
	c->want_out = want;
	epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_flush(struct conn *c)
{
	size_t want = c->out.len - c->out.off;
	ssize_t n = want ? send(c->fd, c->out.p + c->out.off, want, MSG_NOSIGNAL) : 0;

	if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
		conn_close(c);
		return;
	}
	if (n > 0)
		c->out.off += (size_t)n;
	if (c->out.off == c->out.len)
		c->out.off = c->out.len = 0;
	set_out_interest(c, c->out.len > c->out.off);
}

/* A read that fills the buffer doubles it, up to RBUF_MAX. */
static void conn_read(struct conn *c)
{
	size_t room;
	ssize_t n;

	buf_room(&c->in, RBUF_MIN / 2);
	room = c->in.cap - c->in.len;
	n = read(c->fd, c->in.p + c->in.len, room);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		conn_close(c);
		return;
	}
	c->in.len += (size_t)n;
	if (!parse_input(c)) {
		conn_close(c);
		return;
	}
	if ((size_t)n == room && c->in.cap < RBUF_MAX)
		buf_room(&c->in, c->in.cap);
}

static void accept_all(int lfd)
{
	for (int i = 0; i < 256; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct conn *c;
		struct epoll_event ev = { .events = EPOLLIN };

		if (fd < 0)
			return;
		c = xrealloc(NULL, sizeof(*c));
		memset(c, 0, sizeof(*c));
		c->fd = fd;
		c->in.p = xrealloc(NULL, RBUF_MIN);
		c->in.cap = RBUF_MIN;
		ev.data.ptr = c;
		/* output is already batched per turn: Nagle would only add delay */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
		if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c->in.p);
			free(c);
		}
	}
}

static void conn_free(struct conn *c)
{
	free(c->in.p);
	free(c->out.p);
	free(c);
}

/* One write per dirty connection; connections closed this turn are freed here. */
static void flush_dirty(void)
{
	for (size_t i = 0; i < g_n_dirty; i++) {
		struct conn *c = g_dirty[i];

		c->dirty = false;
		if (c->fd >= 0)
			conn_flush(c);
		if (c->fd >= 0 && c->closing && c->out.len == c->out.off)
			conn_close(c);
		if (c->fd < 0)
			conn_free(c);
	}
	g_n_dirty = 0;
}

static int listen_on(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, SOMAXCONN) < 0) {
		fprintf(stderr, "nullbroker: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
		exit(1);
	}
	return fd;
}

static void on_event(int lfd, struct epoll_event *ev)
{
	struct conn *c = ev->data.ptr;

	if (!c) {
		accept_all(lfd);
		return;
	}
	if (c->fd < 0)
		return;
	if (ev->events & EPOLLOUT)
		mark_dirty(c);
	if (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		conn_read(c);
		if (c->fd < 0)
			mark_dirty(c);   /* so that flush_dirty frees it */
	}
}

int main(int argc, char **argv)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	struct epoll_event evs[MAX_EVENTS];
	int port = 1883, opt, lfd;

	while ((opt = getopt(argc, argv, "p:h")) != -1) {
		if (opt == 'p' && atoi(optarg) > 0 && atoi(optarg) < 65536) {
			port = atoi(optarg);
		} else {
			fprintf(stderr, "usage: nullbroker [-p PORT]   (listens on 127.0.0.1)\n");
			return opt == 'h' ? 0 : 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	lfd = listen_on(port);
	g_ep = epoll_create1(EPOLL_CLOEXEC);
	if (g_ep < 0 || epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
		perror("nullbroker: epoll");
		return 1;
	}
	for (;;) {
		int n = epoll_wait(g_ep, evs, MAX_EVENTS, -1);

		for (int i = 0; i < n; i++)
			on_event(lfd, &evs[i]);
		flush_dirty();
	}
}
