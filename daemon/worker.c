/*
 * worker.c - a session worker: the client connections it was handed.
 *
 * Owns: the client sockets, their read and write buffers, keep-alive and
 * connect deadlines, and the QoS state of its connected clients (the
 * in-flight window and the queue behind it for outbound QoS 1/2 messages,
 * and the inbound QoS 2 ids awaiting PUBREL). It decodes every packet,
 * answers what it can alone (PUBACK/PUBREC/PUBCOMP, PINGRESP), and sends
 * the rest to the router over its ring: CONNECT, SUBSCRIBE, UNSUBSCRIBE,
 * PUBLISH, and the state a persistent session leaves behind when it
 * closes. The router answers CONNACK, SUBACK, UNSUBACK and sends the
 * deliveries, one record per message for all of this worker's targets.
 *
 * One epoll loop; replies and deliveries are appended to per-connection
 * output buffers and flushed once per loop turn, ring records are
 * committed once per turn, and the router is woken only if it sleeps.
 */
#include <assert.h>
#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "addrlimit.h"
#include "ipc.h"
#include "log.h"
#include "mqtt.h"
#include "qos.h"
#include "rec.h"
#include "role.h"
#include "routes.h"
#include "topic.h"

#define READ_CHUNK 65536
#define RING_BATCH 1024          /* router records handled per loop turn */
#define BACKLOG_HIGH (8u << 20)  /* stop reading clients past this much unsent to the router */
#define BACKLOG_LOW (2u << 20)   /* ... and read again below this */
#define REPORTS_SLACK 4096       /* address reports kept beyond two per connection held */

enum conn_state {
	CS_NEW,          /* accepted, waiting for CONNECT */
	CS_CONNECTING,   /* CONNECT sent to the router, waiting for its CONNACK */
	CS_ACTIVE,
	CS_CLOSED,       /* gone; freed at the end of the loop turn */
};

/* Allocated only while it holds bytes: an idle connection has none. */
struct buf {
	size_t len, cap, off;        /* off: bytes of data already written (output) */
	uint8_t data[];
};

/*
 * One per client connection; an idle connection costs little more than
 * this struct, so its fields leave no padding, the buffers and the QoS
 * state are allocated apart and only while in use, and the remote address
 * and client id are allocated at their lengths, at the end.
 */
struct conn {
	conn_id_t id;
	uint64_t last_rx_ms;
	struct buf *in, *out;        /* NULL when empty */
	struct conn_qos *qos;        /* NULL while no QoS 1/2 message is held */
	struct conn *dirty_next;
	int fd;
	uint32_t sid;                /* the router's session id, from CONNACK */
	uint16_t keepalive;          /* effective, seconds; 0 = none */
	uint16_t next_pid;           /* not in qos: ids go on rotating when that is freed */
	uint8_t state;
	uint8_t remote_len;
	bool clean;
	bool paused;                 /* not reading: waiting for the router's CONNACK */
	bool throttled;              /* not reading: the router is behind (see worker.throttled) */
	bool want_out;               /* EPOLLOUT armed */
	bool dirty;                  /* in the flush list */
	bool drop_logged;
	bool in_off;                 /* EPOLLIN left out of its epoll registration */
	bool out_full;               /* not reading: its unsent output is past max_output_bytes */
	/* "127.0.0.1:53412" or "[::1]:53412", NUL, the client id (empty before CONNECT), NUL */
	char remote[];
};

static_assert(sizeof(struct conn) <= 72, "struct conn grew: every idle connection pays for it");

/*
 * What the listener is to hear about this worker's connections, by
 * address (ipc.h), in order; sent at the end of each loop turn, as much as
 * the channel takes.
 */
struct addr_reports {
	struct ipc_addr_entry *e;
	uint32_t n, cap;
	bool lost;                   /* could not keep them: LOST is queued, nothing more until a sync */
	bool send_failed_logged;
};

/* A ring record that did not fit: kept in order until the router makes room. */
struct backlog {
	struct backlog *next;
	uint16_t type;
	uint32_t len;
	uint8_t data[];
};

struct worker {
	struct role_env *env;
	const struct iotd_config *cfg;
	unsigned index, epoch;
	int epfd, timerfd;
	struct shmring_producer prod;    /* to the router */
	struct shmring_consumer cons;    /* from the router */
	bool need_commit;
	struct backlog *bl_head, *bl_tail;
	size_t bl_bytes;
	struct conn **slots;
	uint16_t *serials;
	uint32_t n_slots, cap_slots;
	uint32_t *free_slots;
	uint32_t n_free;
	uint32_t n_conns;
	struct conn *dirty;
	struct conn *graveyard;          /* closed this turn: epoll may still name them */
	bool throttled;                  /* backlog for the router too big: stop reading clients */
	struct recw rw;
	struct route_cache routes;       /* topics this worker may deliver itself (routes.h) */
	struct addr_reports reports;     /* to the listener */
	struct route_target *rt_scratch; /* a REC_ROUTE's targets being read */
	uint32_t cap_rt_scratch;
	uint8_t *rbuf;
	uint64_t now_ms;
	uint64_t msgs_in, msgs_out;      /* not yet added to shared memory */
	bool stopping;
};

enum pkt_result { PKT_OK, PKT_PAUSE, PKT_CLOSED };

static void conn_close(struct worker *w, struct conn *c, bool publish_will, const char *why);
static void conn_process_input(struct worker *w, struct conn *c);

static uint64_t clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Allocated for a connection whose remote[] holds n bytes. */
static size_t conn_size(size_t n)
{
	return MAX(sizeof(struct conn), offsetof(struct conn, remote) + n);
}

static const char *conn_client_id(const struct conn *c)
{
	return c->remote + c->remote_len + 1;
}

/* --- buffers ------------------------------------------------------------ */

/* Bytes held: not yet sent (output) or not yet decoded (input). */
static size_t buf_held(const struct buf *b)
{
	return b != NULL ? b->len - b->off : 0;
}

/* Room for n more bytes at the end of *bp, which may be NULL (empty). */
static int buf_reserve(struct buf **bp, size_t n)
{
	struct buf *b = *bp;
	bool fresh = b == NULL;
	size_t len = fresh ? 0 : b->len, cap = fresh ? 0 : b->cap;

	if (len + n <= cap)
		return 0;
	cap = cap ? cap : 256;
	while (cap < len + n)
		cap *= 2;
	b = realloc(b, sizeof(*b) + cap);
	if (b == NULL)
		return -1;
	if (fresh)
		b->len = b->off = 0;
	b->cap = cap;
	*bp = b;
	return 0;
}

static void buf_free(struct buf **bp)
{
	if (*bp != NULL && (*bp)->cap >= TRIM_MIN_BYTES)
		heap_trim_wanted = true;
	free(*bp);
	*bp = NULL;
}

/* --- records to the router ---------------------------------------------- */

static void backlog_add(struct worker *w, uint16_t type, const void *data, size_t len)
{
	struct backlog *b = malloc(sizeof(*b) + len);

	if (b == NULL) {
		log_error("out of memory queueing a %s record for the router; dropped",
			  rec_type_name(type));
		return;
	}
	b->next = NULL;
	b->type = type;
	b->len = (uint32_t)len;
	memcpy(b->data, data, len);
	if (w->bl_tail)
		w->bl_tail->next = b;
	else
		w->bl_head = b;
	w->bl_tail = b;
	w->bl_bytes += len;
}

static void ring_push(struct worker *w, uint16_t type, const void *data, size_t len)
{
	void *dst;

	if (w->bl_head == NULL) {
		dst = shmring_reserve(&w->prod, type, 0, (uint32_t)len);
		if (dst != NULL) {
			memcpy(dst, data, len);
			w->need_commit = true;
			return;
		}
		if (errno == EMSGSIZE) {
			log_error("%s record of %zu bytes is larger than the ring; dropped",
				  rec_type_name(type), len);
			return;
		}
	}
	backlog_add(w, type, data, len);
}

static void push_recw(struct worker *w, uint16_t type)
{
	if (w->rw.oom) {
		log_error("out of memory building a %s record; dropped", rec_type_name(type));
		return;
	}
	ring_push(w, type, w->rw.buf, w->rw.len);
}

static void backlog_flush(struct worker *w)
{
	while (w->bl_head != NULL) {
		struct backlog *b = w->bl_head;
		void *dst = shmring_reserve(&w->prod, b->type, 0, b->len);

		if (dst == NULL)
			return;
		memcpy(dst, b->data, b->len);
		w->need_commit = true;
		w->bl_head = b->next;
		if (w->bl_head == NULL)
			w->bl_tail = NULL;
		w->bl_bytes -= b->len;
		free(b);
	}
}

static void ring_commit(struct worker *w)
{
	backlog_flush(w);
	if (w->need_commit) {
		w->need_commit = false;
		if (shmring_commit(&w->prod))
			eventfd_wake(w->env->router_efd);
	}
}

/* --- address reports to the listener ----------------------------------- */

static bool report_push(struct worker *w, uint32_t op, uint64_t token, const struct addr_key *k)
{
	struct addr_reports *r = &w->reports;
	struct ipc_addr_entry *e;

	if (r->n == r->cap) {
		uint32_t cap = r->cap ? r->cap * 2 : 64;

		e = reallocarray(r->e, cap, sizeof(*e));
		if (e == NULL)
			return false;
		r->e = e;
		r->cap = cap;
	}
	e = &r->e[r->n++];
	*e = (struct ipc_addr_entry){ .op = op, .token = token };
	if (k != NULL)
		memcpy(e->key, k->b, sizeof(e->key));
	return true;
}

/*
 * The reports cannot be kept: drop them and have the listener ask for
 * every connection held again. Nothing more is queued until it does.
 */
static void reports_lost(struct worker *w)
{
	struct addr_reports *r = &w->reports;

	if (r->lost)
		return;
	r->n = 0;
	r->lost = true;
	if (!report_push(w, IPC_ADDR_LOST, 0, NULL))
		log_error("out of memory for an address report to the listener; its "
			  "per-address counts stay as they are");
}

/* A connection the listener handed this worker is gone. */
static void report_gone(struct worker *w, const char *remote)
{
	struct addr_reports *r = &w->reports;
	struct addr_key k;

	if (r->lost || !addr_key_from_remote(remote, &k))
		return;
	/* A listener that reads nothing costs about what a sync answer would. */
	if (r->n >= 2 * w->n_conns + REPORTS_SLACK) {
		log_warn("the listener reads no address reports (%u waiting); dropping them", r->n);
		reports_lost(w);
	} else if (!report_push(w, IPC_ADDR_GONE, 0, &k)) {
		log_error("out of memory for an address report to the listener; dropping them");
		reports_lost(w);
	}
}

/* IPC_ADDR_SYNC: what waits is old news; the answer is every connection held now. */
static void answer_sync(struct worker *w, uint64_t token)
{
	struct addr_reports *r = &w->reports;
	struct addr_key k;

	r->n = 0;
	r->lost = false;
	if (!report_push(w, IPC_ADDR_RESET, token, NULL))
		goto oom;
	for (uint32_t i = 0; i < w->n_slots; i++) {
		const struct conn *c = w->slots[i];

		if (c != NULL && addr_key_from_remote(c->remote, &k) &&
		    !report_push(w, IPC_ADDR_HELD, 0, &k))
			goto oom;
	}
	return;
oom:
	log_error("out of memory answering the listener's address sync");
	reports_lost(w);
}

static void reports_flush(struct worker *w)
{
	struct addr_reports *r = &w->reports;
	uint32_t sent = 0;

	while (sent < r->n) {
		uint32_t k = MIN(r->n - sent, (uint32_t)IPC_ADDR_ENTRIES_MAX);

		if (ipc_send(w->env->chan_worker[w->index], IPC_ADDR_REPORT, w->index, &r->e[sent],
			     k * sizeof(*r->e), -1) < 0) {
			/* Full: the rest goes at a later turn. */
			if (errno != EAGAIN && !r->send_failed_logged) {
				log_error("cannot send address reports to the listener: %s",
					  strerror(errno));
				r->send_failed_logged = true;
			}
			break;
		}
		sent += k;
	}
	if (sent == 0)
		return;
	memmove(r->e, r->e + sent, (size_t)(r->n - sent) * sizeof(*r->e));
	r->n -= sent;
	/* A large sync answer leaves a large array behind. */
	if (r->n == 0 && r->cap > REPORTS_SLACK) {
		free(r->e);
		r->e = NULL;
		r->cap = 0;
	}
}

/* --- output ------------------------------------------------------------- */

static void conn_mark_dirty(struct worker *w, struct conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = w->dirty;
		w->dirty = c;
	}
}

static uint8_t *out_reserve(struct worker *w, struct conn *c, size_t n)
{
	uint8_t *p;

	/* Nothing to write has no place: c->out may not even exist. */
	if (n == 0 || buf_reserve(&c->out, n) < 0)
		return NULL;
	p = c->out->data + c->out->len;
	c->out->len += n;
	conn_mark_dirty(w, c);
	return p;
}

static void send_ack(struct worker *w, struct conn *c, enum mqtt_type type, uint16_t id)
{
	uint8_t *p = out_reserve(w, c, 4);

	if (p != NULL)
		mqtt_encode_ack(p, type, id);
}

static void send_connack(struct worker *w, struct conn *c, bool sp, uint8_t rc)
{
	uint8_t *p = out_reserve(w, c, 4);

	if (p != NULL)
		mqtt_encode_connack(p, sp, rc);
}

static void send_publish(struct worker *w, struct conn *c, bool dup, uint8_t qos, bool retain,
			 const uint8_t *topic, size_t tlen, uint16_t pid,
			 const uint8_t *payload, size_t plen)
{
	size_t n = mqtt_publish_size(tlen, plen, qos);
	uint8_t *p;

	/* No such PUBLISH (a QoS or size the router would never send): nothing to write. */
	if (n == 0) {
		log_warn("a delivery that cannot be a PUBLISH (QoS %u, %zu bytes); dropped", qos,
			 tlen + plen);
		return;
	}
	p = out_reserve(w, c, n);
	if (p == NULL) {
		log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
			   "out of memory for a delivery; message dropped");
		return;
	}
	mqtt_encode_publish(p, dup, qos, retain, topic, tlen, pid, payload, plen);
	w->msgs_out++;
}

static int conn_epoll_mod(struct worker *w, struct conn *c)
{
	struct epoll_event ev = { .data.ptr = c };

	/* EPOLLRDHUP even when not reading: a client that leaves is always noticed. */
	c->in_off = c->paused || c->throttled || c->out_full;
	ev.events = EPOLLRDHUP | (c->in_off ? 0 : EPOLLIN) | (c->want_out ? EPOLLOUT : 0);
	return epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_set_events(struct worker *w, struct conn *c)
{
	if (conn_epoll_mod(w, c) < 0)
		log_warn("epoll_ctl: %s", strerror(errno));
}

/*
 * A client whose unsent output went past max_output_bytes is not read (see
 * worker_main): every packet it sends may need a reply, and MQTT has no
 * way to refuse an acknowledgement, so TCP pushes back on it instead. It
 * is read again once its output is down to half the cap. Returns true
 * when that changed (its epoll registration is the caller's to update).
 */
static bool out_drained(struct worker *w, struct conn *c)
{
	if (!c->out_full || buf_held(c->out) > (size_t)w->cfg->max_output_bytes / 2)
		return false;
	c->out_full = false;
	return true;
}

/* Returns false when the connection was closed. */
static bool conn_flush(struct worker *w, struct conn *c)
{
	struct buf *b;
	bool changed;

	while ((b = c->out) != NULL && b->off < b->len) {
		ssize_t n = write(c->fd, b->data + b->off, b->len - b->off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				/*
				 * Keep only what is unsent: a slow but steady reader
				 * must not make the buffer grow by what it already took.
				 */
				if (b->off >= b->len / 2) {
					memmove(b->data, b->data + b->off, b->len - b->off);
					b->len -= b->off;
					b->off = 0;
				}
				changed = out_drained(w, c) || !c->want_out;
				c->want_out = true;
				if (changed)
					conn_set_events(w, c);
				return true;
			}
			conn_close(w, c, true, strerror(errno));
			return false;
		}
		b->off += (size_t)n;
	}
	/* Idle connections hold no buffer: memory per connection stays small. */
	buf_free(&c->out);
	changed = out_drained(w, c) || c->want_out;
	c->want_out = false;
	if (changed)
		conn_set_events(w, c);
	return true;
}

static void flush_dirty(struct worker *w)
{
	while (w->dirty != NULL) {
		struct conn *c = w->dirty;

		w->dirty = c->dirty_next;
		c->dirty = false;
		c->dirty_next = NULL;
		if (!c->want_out)
			conn_flush(w, c);
	}
}

/* --- connection table --------------------------------------------------- */

static struct conn *conn_lookup(struct worker *w, conn_id_t id)
{
	unsigned slot = conn_id_slot(id);
	struct conn *c;

	if (conn_id_worker(id) != w->index || conn_id_epoch(id) != (w->epoch & 0xffff) ||
	    slot >= w->n_slots)
		return NULL;
	c = w->slots[slot];
	return c != NULL && c->id == id ? c : NULL;
}

static int slot_alloc(struct worker *w, uint32_t *slot_r)
{
	if (w->n_free > 0) {
		*slot_r = w->free_slots[--w->n_free];
		return 0;
	}
	if (w->n_slots == w->cap_slots) {
		uint32_t cap = w->cap_slots ? w->cap_slots * 2 : 1024;
		struct conn **slots;
		uint16_t *serials;
		uint32_t *free_slots;

		if (cap > 0xffffff)
			return -1;
		slots = realloc(w->slots, cap * sizeof(*slots));
		if (slots == NULL)
			return -1;
		w->slots = slots;
		serials = realloc(w->serials, cap * sizeof(*serials));
		if (serials == NULL)
			return -1;
		w->serials = serials;
		free_slots = realloc(w->free_slots, cap * sizeof(*free_slots));
		if (free_slots == NULL)
			return -1;
		w->free_slots = free_slots;
		w->cap_slots = cap;
	}
	w->slots[w->n_slots] = NULL;
	w->serials[w->n_slots] = 0;
	*slot_r = w->n_slots++;
	return 0;
}

/* false: it could not be taken (logged, fd closed). */
static bool conn_new(struct worker *w, int fd, const struct ipc_client *info)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
	size_t rlen = strnlen(info->remote, sizeof(info->remote) - 1);
	struct conn *c;
	uint32_t slot;

	static_assert(sizeof(info->remote) <= 256, "remote_len is one byte");
	/* Zeroed: the remote address is followed by an empty client id. */
	c = calloc(1, conn_size(rlen + 2));
	if (c == NULL || slot_alloc(w, &slot) < 0) {
		log_error("out of memory for a new connection from %s; closing it", info->remote);
		free(c);
		close(fd);
		return false;
	}
	c->fd = fd;
	c->id = conn_id_make(w->index, w->epoch, slot, ++w->serials[slot]);
	c->state = CS_NEW;
	c->last_rx_ms = w->now_ms;
	c->remote_len = (uint8_t)rlen;
	memcpy(c->remote, info->remote, rlen);
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		log_error("epoll_ctl: %s; closing the connection from %s", strerror(errno), c->remote);
		w->free_slots[w->n_free++] = slot;
		free(c);
		close(fd);
		return false;
	}
	w->slots[slot] = c;
	w->n_conns++;
	log_debug("new connection from %s", c->remote);
	return true;
}

/* The link of the flush list that names c, which is in it. */
static struct conn **dirty_link(struct worker *w, const struct conn *c)
{
	struct conn **pp = &w->dirty;

	while (*pp != c)
		pp = &(*pp)->dirty_next;
	return pp;
}

/*
 * The client id joins the remote address in the connection's allocation,
 * which therefore moves: its slot, epoll and the flush list are pointed at
 * the new one. Returns it, or NULL (errno set) with c left as it was.
 */
static struct conn *conn_add_client_id(struct worker *w, struct conn *c, const char *id,
				       size_t len)
{
	struct conn *n = malloc(conn_size((size_t)c->remote_len + 1 + len + 1));
	char *dst;
	int err;

	if (n == NULL)
		return NULL;
	memcpy(n, c, offsetof(struct conn, remote) + c->remote_len + 1);
	dst = n->remote + n->remote_len + 1;
	memcpy(dst, id, len);
	dst[len] = '\0';
	if (conn_epoll_mod(w, n) < 0) {
		err = errno;
		free(n);
		errno = err;
		return NULL;
	}
	w->slots[conn_id_slot(c->id)] = n;
	if (c->dirty)
		*dirty_link(w, c) = n;
	free(c);
	return n;
}

static void rec_session_msg(struct worker *w, conn_id_t conn, uint32_t sid, uint16_t pid,
			    uint8_t state, uint8_t qos, bool retain, const uint8_t *topic,
			    uint16_t tlen, const uint8_t *payload, uint32_t plen)
{
	recw_reset(&w->rw);
	recw_u64(&w->rw, conn);
	recw_u32(&w->rw, sid);
	recw_u64(&w->rw, 0);
	recw_u16(&w->rw, pid);
	recw_u8(&w->rw, state);
	recw_u8(&w->rw, qos);
	recw_u8(&w->rw, retain);
	recw_str(&w->rw, topic, tlen);
	recw_bytes(&w->rw, payload, plen);
	push_recw(w, REC_SESSION_MSG);
}

/*
 * Tell the router how the exchange of a message it holds a copy of moved
 * on, so that a crash of this worker loses none of it (rec.h).
 */
static void report_state(struct worker *w, const struct conn *c, uint64_t copy, uint16_t pid,
			 uint8_t state)
{
	if (copy == 0)
		return;
	recw_reset(&w->rw);
	recw_u64(&w->rw, c->id);
	recw_u32(&w->rw, c->sid);
	recw_u64(&w->rw, copy);
	recw_u16(&w->rw, pid);
	recw_u8(&w->rw, state);
	push_recw(w, REC_MSG_STATE);
}

/*
 * A persistent session leaves what it still owes its client with the
 * router: the messages it has no copy of (it has the others, up to date).
 */
static void conn_hand_back_state(struct worker *w, struct conn *c)
{
	const struct conn_qos *q = c->qos;

	if (q == NULL)
		return;
	for (uint16_t i = 0; i < q->n_inflight; i++) {
		struct inflight *f = &q->inflight[i];
		struct qmsg *m = f->msg;

		if (f->copy != 0)
			continue;
		if (m != NULL)
			rec_session_msg(w, c->id, c->sid, f->packet_id, f->state, f->qos, m->retain,
					m->data, m->topic_len, m->data + m->topic_len,
					m->payload_len);
		else
			rec_session_msg(w, c->id, c->sid, f->packet_id, f->state, f->qos, false,
					NULL, 0, NULL, 0);
	}
	for (uint32_t i = 0; i < q->n_pending; i++) {
		const struct pending *p = qos_pending_at(q, i);

		if (p->copy == 0)
			rec_session_msg(w, c->id, c->sid, 0, MSG_QUEUED, p->qos, p->msg->retain,
					p->msg->data, p->msg->topic_len, p->msg->data + p->msg->topic_len,
					p->msg->payload_len);
	}
}

static void conn_free_state(struct conn *c)
{
	qos_free(c->qos);
	c->qos = NULL;
	buf_free(&c->in);
	buf_free(&c->out);
}

static void conn_close(struct worker *w, struct conn *c, bool publish_will, const char *why)
{
	unsigned slot = conn_id_slot(c->id);

	if (c->state == CS_CONNECTING || c->state == CS_ACTIVE) {
		if (c->state == CS_ACTIVE && !c->clean)
			conn_hand_back_state(w, c);
		recw_reset(&w->rw);
		recw_u64(&w->rw, c->id);
		recw_u8(&w->rw, publish_will);
		if (c->clean) {
			recw_u16(&w->rw, 0);
		} else {
			uint16_t n = c->qos ? (uint16_t)MIN(c->qos->n_qos2_in, 65535u) : 0;

			recw_u16(&w->rw, n);
			for (uint16_t i = 0; i < n; i++)
				recw_u16(&w->rw, c->qos->qos2_in[i]);
		}
		push_recw(w, REC_CLOSE);
		log_client(LOG_LVL_INFO, conn_client_id(c), c->remote, "disconnected: %s", why);
	} else {
		log_debug("connection from %s closed before CONNECT: %s", c->remote, why);
	}
	/*
	 * Uncount it before the client can see the close: a client that
	 * reconnects at once must find the listener's view already updated.
	 */
	atomic_fetch_add(&w->env->shm.worker[w->index]->released, 1);
	report_gone(w, c->remote);
	/* Try to get the last bytes (a CONNACK with an error code) out. */
	if (buf_held(c->out) > 0)
		(void)!write(c->fd, c->out->data + c->out->off, buf_held(c->out));
	/*
	 * Out of epoll before the close: the listener closes its copy of the
	 * socket only after handing it over, so a connection refused on its
	 * first read may still have another reference, and while one exists
	 * the close alone would leave it registered, naming the freed conn.
	 */
	if (epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL) < 0)
		log_warn("epoll_ctl(DEL) of the connection from %s: %s", c->remote,
			 strerror(errno));
	close(c->fd);
	c->fd = -1;
	if (c->dirty) {
		*dirty_link(w, c) = c->dirty_next;
		c->dirty = false;
	}
	conn_free_state(c);
	c->state = CS_CLOSED;
	w->slots[slot] = NULL;
	w->free_slots[w->n_free++] = slot;
	w->n_conns--;
	c->dirty_next = w->graveyard;
	w->graveyard = c;
}

static void bury_closed(struct worker *w)
{
	while (w->graveyard != NULL) {
		struct conn *c = w->graveyard;

		w->graveyard = c->dirty_next;
		free(c);
	}
}

/* --- outbound QoS ------------------------------------------------------- */

/* A QoS 1/2 delivery refused by a limit: logged once until the queue empties. */
static void drop_delivery(struct worker *w, struct conn *c, uint64_t copy, const char *why)
{
	const struct conn_qos *q = c->qos;   /* NULL when the refusal left nothing held */

	if (!c->drop_logged)
		log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
			   "%s (%u in flight, %u queued, %zu bytes); dropping new messages", why,
			   q ? q->n_inflight : 0, q ? q->n_pending : 0,
			   q ? q->inflight_bytes + q->pending_bytes : 0);
	c->drop_logged = true;
	report_state(w, c, copy, 0, MSG_DONE);
}

/* A message the QoS state put in flight goes out (dup: a resend under the id the router knows). */
static void send_inflight(struct worker *w, struct conn *c, const struct inflight *f, bool dup)
{
	const struct qmsg *m = f->msg;

	send_publish(w, c, dup, f->qos, m->retain, m->data, m->topic_len, f->packet_id,
		     m->data + m->topic_len, m->payload_len);
	if (!dup)
		report_state(w, c, f->copy, f->packet_id, MSG_INFLIGHT);
}

/* What follows from the QoS state's verdict on a delivery at QoS qos (copy: the router's). */
static void act_on_verdict(struct worker *w, struct conn *c, enum qos_verdict v,
			   const struct inflight *sent, uint8_t qos, uint64_t copy)
{
	switch (v) {
	case QOS_SEND:
	case QOS_RESEND:
		send_inflight(w, c, sent, v == QOS_RESEND);
		break;
	case QOS_QUEUED:
		break;
	case QOS_DROP_BYTES:
		drop_delivery(w, c, copy, "max_inflight_bytes reached");
		break;
	case QOS_DROP_QUEUE:
		drop_delivery(w, c, copy, "queue full");
		break;
	case QOS_NOMEM:
		log_client(LOG_LVL_ERROR, conn_client_id(c), c->remote,
			   "out of memory for a QoS %u delivery; dropped", qos);
		report_state(w, c, copy, 0, MSG_DONE);
		break;
	}
}

static void deliver_qos(struct worker *w, struct conn *c, struct qmsg *m, uint8_t qos,
			uint64_t copy)
{
	struct inflight *sent = NULL;
	enum qos_verdict v = qos_offer(&c->qos, &c->next_pid, w->cfg, m, qos, copy, &sent);

	act_on_verdict(w, c, v, sent, qos, copy);
}

/* Move queued messages into the window as acknowledgements free it. */
static void pending_pump(struct worker *w, struct conn *c)
{
	struct inflight *f;

	while ((f = qos_pump(c->qos, &c->next_pid, w->cfg)) != NULL)
		send_inflight(w, c, f, false);
	if (c->qos->n_pending == 0)
		c->drop_logged = false;
	qos_trim(&c->qos);
}


/* --- inbound packets ---------------------------------------------------- */

/*
 * A persistent session's inbound QoS 2 ids are also kept by the router, so
 * that a PUBLISH resent after this worker's death is not routed twice.
 */
static void report_qos2_in(struct worker *w, const struct conn *c, uint16_t pid, bool held)
{
	if (c->clean)
		return;
	recw_reset(&w->rw);
	recw_u64(&w->rw, c->id);
	recw_u32(&w->rw, c->sid);
	recw_u16(&w->rw, pid);
	recw_u8(&w->rw, held);
	push_recw(w, REC_QOS2_IN);
}

/* ask: 0, or the route request this message carries (routes.h). */
static void push_publish(struct worker *w, const struct mqtt_publish *pub, uint64_t ask)
{
	uint8_t flags = (pub->retain ? REC_PUB_RETAIN : 0) | (ask ? REC_PUB_ASK : 0);
	size_t len = 1 + 1 + 2 + pub->topic.len + 4 + pub->payload_len + (ask ? 8 : 0);
	uint8_t *dst;

	recw_reset(&w->rw);
	if (w->bl_head == NULL &&
	    (dst = shmring_reserve(&w->prod, REC_PUBLISH, 0, (uint32_t)len)) != NULL) {
		/* The hot path: straight into the ring, no staging copy. */
		dst[0] = pub->qos;
		dst[1] = flags;
		memcpy(dst + 2, &pub->topic.len, 2);
		memcpy(dst + 4, pub->topic.p, pub->topic.len);
		memcpy(dst + 4 + pub->topic.len, &pub->payload_len, 4);
		if (pub->payload_len)
			memcpy(dst + 8 + pub->topic.len, pub->payload, pub->payload_len);
		if (ask)
			memcpy(dst + 8 + pub->topic.len + pub->payload_len, &ask, 8);
		w->need_commit = true;
		return;
	}
	recw_u8(&w->rw, pub->qos);
	recw_u8(&w->rw, flags);
	recw_str(&w->rw, pub->topic.p, pub->topic.len);
	recw_bytes(&w->rw, pub->payload, pub->payload_len);
	if (ask)
		recw_u64(&w->rw, ask);
	push_recw(w, REC_PUBLISH);
}

static void deliver_local(struct worker *w, const struct route *rt,
			  const struct mqtt_publish *pub);

/* Deliver the message here or send it to the router, as its topic's route says (routes.h). */
static void route_publish(struct worker *w, const struct mqtt_publish *pub)
{
	uint64_t gen = atomic_load_explicit(&w->env->shm.router->route_gen, memory_order_acquire);
	const struct route *rt;
	uint64_t ask;

	switch (routes_decide(&w->routes, pub->topic.p, pub->topic.len, pub->qos, pub->retain,
			      gen, &rt, &ask)) {
	case ROUTE_DELIVER_LOCAL:
		deliver_local(w, rt, pub);
		break;
	case ROUTE_SEND:
		push_publish(w, pub, 0);
		break;
	case ROUTE_SEND_ASK:
		push_publish(w, pub, ask);
		break;
	}
}

static enum pkt_result handle_publish(struct worker *w, struct conn *c, const struct mqtt_publish *pub)
{
	if (!topic_name_valid((const char *)pub->topic.p, pub->topic.len,
			      (size_t)w->cfg->max_topic_levels, (size_t)w->cfg->max_topic_length)) {
		conn_close(w, c, true, "invalid topic name in PUBLISH");
		return PKT_CLOSED;
	}
	w->msgs_in++;
	switch (pub->qos) {
	case 0:
		route_publish(w, pub);
		break;
	case 1:
		/*
		 * PUBACK queued first: connections are flushed last marked first,
		 * so a delivery made here goes out before it, and its subscriber
		 * is not kept waiting behind a write to the publisher.
		 */
		send_ack(w, c, MQTT_PUBACK, pub->packet_id);
		route_publish(w, pub);
		break;
	case 2:
		switch (qos_in_receive(&c->qos, w->cfg, pub->packet_id)) {
		case QOS_IN_NEW:
			report_qos2_in(w, c, pub->packet_id, true);
			route_publish(w, pub);
			break;
		case QOS_IN_HELD:        /* exactly once: not routed again */
			break;
		case QOS_IN_FULL:
			conn_close(w, c, true, "too many QoS 2 messages awaiting PUBREL "
				   "(max_inflight)");
			return PKT_CLOSED;
		case QOS_IN_NOMEM:
			conn_close(w, c, true, "out of memory");
			return PKT_CLOSED;
		}
		send_ack(w, c, MQTT_PUBREC, pub->packet_id);
		break;
	}
	return PKT_OK;
}

static void handle_sub(struct worker *w, struct conn *c, const struct mqtt_packet *pkt)
{
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t qos;
	size_t count_off;
	uint16_t n = 0;

	recw_reset(&w->rw);
	recw_u64(&w->rw, c->id);
	recw_u16(&w->rw, pkt->u.list.packet_id);
	count_off = w->rw.len;
	recw_u16(&w->rw, 0);
	mqtt_list_iter_init(&it, pkt);
	while (mqtt_list_next(&it, &f, &qos)) {
		bool ok = topic_filter_valid((const char *)f.p, f.len,
					     (size_t)w->cfg->max_topic_levels,
					     (size_t)w->cfg->max_topic_length);

		recw_str(&w->rw, f.p, f.len);
		if (pkt->type == MQTT_SUBSCRIBE)
			recw_u8(&w->rw, ok ? qos : MQTT_SUBACK_FAILURE);
		n++;
	}
	recw_patch_u16(&w->rw, count_off, n);
	push_recw(w, pkt->type == MQTT_SUBSCRIBE ? REC_SUBSCRIBE : REC_UNSUBSCRIBE);
}

/* *cp: the connection, which moves (conn_add_client_id). */
static enum pkt_result handle_connect(struct worker *w, struct conn **cp,
				      const struct mqtt_connect *ck)
{
	const struct iotd_config *cfg = w->cfg;
	struct conn *c = *cp;
	char gen[40];
	const char *id;
	size_t len;

	if (ck->client_id.len == 0 && !ck->clean_session) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "empty client id with clean session 0");
		return PKT_CLOSED;
	}
	if (ck->client_id.len > cfg->max_client_id_length) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "client id longer than max_client_id_length");
		return PKT_CLOSED;
	}
	if (cfg->max_keepalive > 0 && (ck->keepalive == 0 || ck->keepalive > cfg->max_keepalive)) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "keep-alive above max_keepalive");
		return PKT_CLOSED;
	}
	if (ck->will_flag && !topic_name_valid((const char *)ck->will_topic.p, ck->will_topic.len,
					       (size_t)cfg->max_topic_levels,
					       (size_t)cfg->max_topic_length)) {
		conn_close(w, c, false, "invalid will topic");
		return PKT_CLOSED;
	}
	if (ck->client_id.len == 0) {
		snprintf(gen, sizeof(gen), "iotd-%016llx", (unsigned long long)c->id);
		id = gen;
		len = strlen(gen);
	} else {
		id = (const char *)ck->client_id.p;
		len = strnlen(id, ck->client_id.len);
	}
	c = conn_add_client_id(w, c, id, len);
	if (c == NULL) {
		conn_close(w, *cp, false, strerror(errno));
		return PKT_CLOSED;
	}
	*cp = c;
	/*
	 * Nothing else from this client until the router has placed its
	 * session. EPOLLIN stays in the registration the move just updated,
	 * and goes only if more input comes meanwhile (see worker_main): most
	 * clients wait for their CONNACK, and taking it out and back would
	 * cost an epoll_ctl call more per connection.
	 */
	c->paused = true;
	c->clean = ck->clean_session;
	c->keepalive = ck->keepalive ? ck->keepalive : (uint16_t)cfg->keep_alive_timeout_secs;
	recw_reset(&w->rw);
	recw_u64(&w->rw, c->id);
	recw_u8(&w->rw, ck->clean_session);
	recw_u16(&w->rw, ck->keepalive);
	recw_str(&w->rw, id, (uint16_t)len);
	recw_str(&w->rw, c->remote, (uint16_t)strlen(c->remote));
	recw_u8(&w->rw, ck->will_flag);
	recw_u8(&w->rw, ck->will_qos);
	recw_u8(&w->rw, ck->will_retain);
	recw_str(&w->rw, ck->will_topic.p, ck->will_flag ? ck->will_topic.len : 0);
	recw_bytes(&w->rw, ck->will_payload.p, ck->will_flag ? ck->will_payload.len : 0);
	push_recw(w, REC_CONNECT);
	c->state = CS_CONNECTING;
	return PKT_PAUSE;
}

static enum pkt_result handle_ack(struct worker *w, struct conn *c, const struct mqtt_packet *pkt)
{
	uint16_t pid = pkt->u.packet_id;
	uint64_t copy;

	switch (pkt->type) {
	case MQTT_PUBACK:
	case MQTT_PUBCOMP:
		if (pkt->type == MQTT_PUBACK ? qos_puback(c->qos, pid, &copy) :
					       qos_pubcomp(c->qos, pid, &copy)) {
			report_state(w, c, copy, pid, MSG_DONE);
			pending_pump(w, c);
		}
		break;
	case MQTT_PUBREC:
		switch (qos_pubrec(c->qos, pid, &copy)) {
		case QOS_PUBREC_RELEASED:
			report_state(w, c, copy, pid, MSG_PUBREL);
			send_ack(w, c, MQTT_PUBREL, pid);
			break;
		case QOS_PUBREC_AGAIN:
			send_ack(w, c, MQTT_PUBREL, pid);
			break;
		case QOS_PUBREC_UNKNOWN:
			break;
		}
		break;
	case MQTT_PUBREL:
		if (qos_in_release(&c->qos, pid))
			report_qos2_in(w, c, pid, false);
		send_ack(w, c, MQTT_PUBCOMP, pid);
		break;
	default:
		break;
	}
	return PKT_OK;
}

/* *cp: the connection, which a CONNECT moves. */
static enum pkt_result handle_packet(struct worker *w, struct conn **cp,
				     const struct mqtt_packet *pkt)
{
	struct conn *c = *cp;

	if (c->state == CS_NEW) {
		/*
		 * Refused from its first byte already (process_bytes); kept so
		 * that handle_connect never reads another packet's fields.
		 */
		if (pkt->type != MQTT_CONNECT) {
			conn_close(w, c, false, "first packet is not CONNECT");
			return PKT_CLOSED;
		}
		return handle_connect(w, cp, &pkt->u.connect);
	}
	switch (pkt->type) {
	case MQTT_PUBLISH:
		return handle_publish(w, c, &pkt->u.publish);
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		return handle_ack(w, c, pkt);
	case MQTT_SUBSCRIBE:
	case MQTT_UNSUBSCRIBE:
		handle_sub(w, c, pkt);
		return PKT_OK;
	case MQTT_PINGREQ: {
		uint8_t *p = out_reserve(w, c, 2);

		if (p != NULL)
			mqtt_encode_empty(p, MQTT_PINGRESP);
		return PKT_OK;
	}
	case MQTT_DISCONNECT:
		conn_close(w, c, false, "client sent DISCONNECT");
		return PKT_CLOSED;
	case MQTT_CONNECT:
		conn_close(w, c, true, "second CONNECT");
		return PKT_CLOSED;
	default:
		conn_close(w, c, true, "server-only packet from client");
		return PKT_CLOSED;
	}
}

/*
 * The largest packet c may send next, fixed header included. Before its
 * CONNECT, a client that has not yet said who it is may make the worker
 * hold at most max_connect_size bytes of input (max_packet_size when
 * that is lower): connect_timeout bounds how long, max_connections how
 * many such clients there are.
 */
static size_t packet_limit(const struct worker *w, const struct conn *c)
{
	if (c->state == CS_NEW)
		return (size_t)MIN(w->cfg->max_connect_size, w->cfg->max_packet_size);
	return (size_t)w->cfg->max_packet_size;
}

static void decode_failure(struct worker *w, struct conn *c, int rc)
{
	char why[96];

	if (rc == MQTT_ERR_PROTOCOL_LEVEL && c->state == CS_NEW) {
		send_connack(w, c, false, MQTT_CONNACK_BAD_PROTOCOL);
		conn_close(w, c, false, "unsupported protocol level");
		return;
	}
	if (rc == MQTT_ERR_TOO_LARGE && c->state == CS_NEW) {
		snprintf(why, sizeof(why), "CONNECT declared larger than %zu bytes (%s)",
			 packet_limit(w, c), w->cfg->max_connect_size <= w->cfg->max_packet_size ?
			 "max_connect_size" : "max_packet_size");
		conn_close(w, c, false, why);
		return;
	}
	snprintf(why, sizeof(why), "protocol error: %s", mqtt_result_str(rc));
	conn_close(w, c, c->state == CS_ACTIVE, why);
}

/*
 * Decode and handle every whole packet in [p, p+len). Returns the bytes
 * consumed, or -1 when the connection was closed. *cp is the connection,
 * updated when a CONNECT moves it.
 */
static ssize_t process_bytes(struct worker *w, struct conn **cp, const uint8_t *p, size_t len)
{
	struct conn *c = *cp;
	size_t off = 0;

	while (off < len && !c->paused) {
		struct mqtt_packet pkt;
		uint8_t first;
		uint32_t remaining;
		size_t hdr;
		int rc;

		/*
		 * A first packet that is not CONNECT is refused from its first
		 * byte: none of its body is waited for or held.
		 */
		if (c->state == CS_NEW && p[off] >> 4 != MQTT_CONNECT) {
			conn_close(w, c, false, "first packet is not CONNECT");
			return -1;
		}
		rc = mqtt_fixed_header(p + off, len - off, packet_limit(w, c), &first, &remaining,
				       &hdr);
		if (rc == MQTT_INCOMPLETE)
			break;
		if (rc == MQTT_OK && hdr + remaining > len - off)
			break;
		if (rc == MQTT_OK)
			rc = mqtt_decode(first, p + off + hdr, remaining, &pkt);
		if (rc != MQTT_OK) {
			decode_failure(w, c, rc);
			return -1;
		}
		off += hdr + remaining;
		/*
		 * Deadlines count whole packets, not bytes [MQTT-3.1.2-24]: a
		 * client trickling a packet byte by byte does not keep itself alive.
		 */
		c->last_rx_ms = w->now_ms;
		switch (handle_packet(w, cp, &pkt)) {
		case PKT_CLOSED:
			return -1;
		case PKT_PAUSE:
		case PKT_OK:
			break;
		}
		c = *cp;
	}
	return (ssize_t)off;
}

/* Handle what sits in c->in (partial packets, or input held while paused). */
static void conn_process_input(struct worker *w, struct conn *c)
{
	ssize_t used = process_bytes(w, &c, c->in->data, c->in->len);

	if (used < 0)
		return;
	memmove(c->in->data, c->in->data + used, c->in->len - (size_t)used);
	c->in->len -= (size_t)used;
	if (c->in->len == 0)
		buf_free(&c->in);
}

static void conn_read(struct worker *w, struct conn *c)
{
	ssize_t n = read(c->fd, w->rbuf, READ_CHUNK), used;

	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		conn_close(w, c, true, n == 0 ? "connection closed by client" : strerror(errno));
		return;
	}
	if (buf_held(c->in) > 0) {
		/* A packet is already partly here: append, then decode in place. */
		if (buf_reserve(&c->in, (size_t)n) < 0) {
			conn_close(w, c, true, "out of memory");
			return;
		}
		memcpy(c->in->data + c->in->len, w->rbuf, (size_t)n);
		c->in->len += (size_t)n;
		conn_process_input(w, c);
		return;
	}
	used = process_bytes(w, &c, w->rbuf, (size_t)n);
	if (used < 0 || used == n)
		return;
	if (buf_reserve(&c->in, (size_t)(n - used)) < 0) {
		conn_close(w, c, true, "out of memory");
		return;
	}
	memcpy(c->in->data, w->rbuf + used, (size_t)(n - used));
	c->in->len = (size_t)(n - used);
}

/* --- records from the router -------------------------------------------- */

static void bounce(struct worker *w, conn_id_t conn, uint32_t sid, uint64_t copy, uint16_t pid,
		   uint8_t state, uint8_t qos, bool retain, const uint8_t *topic, uint16_t tlen,
		   const uint8_t *payload, uint32_t plen)
{
	/*
	 * The connection went away first: the router re-routes to the session
	 * (it holds a copy already, if copy != 0).
	 */
	if (qos > 0 && sid != 0 && copy == 0)
		rec_session_msg(w, conn, sid, pid, state, qos, retain, topic, tlen, payload, plen);
}

static void rec_connack(struct worker *w, struct recr *r)
{
	conn_id_t id = recr_u64(r);
	uint32_t sid = recr_u32(r);
	uint8_t rc = recr_u8(r), sp = recr_u8(r);
	uint16_t n = recr_u16(r);
	struct conn *c = conn_lookup(w, id);

	if (c == NULL || c->state != CS_CONNECTING) {
		for (uint16_t i = 0; i < n; i++)
			recr_u16(r);
		return;
	}
	for (uint16_t i = 0; i < n; i++)
		if (qos_in_hold(&c->qos, recr_u16(r)) < 0)
			break;
	qos_trim(&c->qos);
	if (rc != MQTT_CONNACK_ACCEPTED) {
		send_connack(w, c, false, rc);
		c->state = CS_NEW;
		conn_close(w, c, false, "refused by the router");
		return;
	}
	c->sid = sid;
	c->state = CS_ACTIVE;
	send_connack(w, c, sp, MQTT_CONNACK_ACCEPTED);
	log_client(LOG_LVL_INFO, conn_client_id(c), c->remote, "connected (clean session %d%s)",
		   c->clean, sp ? ", session resumed" : "");
	c->paused = false;
	if (c->in_off)
		conn_set_events(w, c);
	if (buf_held(c->in) > 0)
		conn_process_input(w, c);
}

static void rec_suback(struct worker *w, struct recr *r, bool sub)
{
	conn_id_t id = recr_u64(r);
	uint16_t pid = recr_u16(r);
	struct conn *c = conn_lookup(w, id);
	uint16_t n;
	uint8_t *p;

	if (!sub) {
		if (c != NULL && c->state == CS_ACTIVE)
			send_ack(w, c, MQTT_UNSUBACK, pid);
		return;
	}
	n = recr_u16(r);
	if (r->err || n == 0 || (size_t)(r->end - r->p) < n || c == NULL || c->state != CS_ACTIVE) {
		r->p = r->end;
		return;
	}
	p = out_reserve(w, c, mqtt_suback_size(n));
	if (p != NULL)
		mqtt_encode_suback(p, pid, r->p, n);
	r->p += n;
}

/* One message and what its targets share: the QoS 1/2 copy, made on first need. */
struct delivery {
	const uint8_t *topic, *payload;
	uint16_t tlen;
	uint32_t plen;
	uint8_t retain;
	struct qmsg *m;
};

/* Deliver d to connection c at QoS qos (copy: the router's, or 0). */
static void deliver_to(struct worker *w, struct conn *c, struct delivery *d, uint8_t qos,
		       uint64_t copy)
{
	if (qos == 0) {
		if (buf_held(c->out) > (size_t)w->cfg->max_output_bytes) {
			if (!c->drop_logged)
				log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
					   "slow reader: dropping QoS 0 messages");
			c->drop_logged = true;
			return;
		}
		send_publish(w, c, false, 0, d->retain, d->topic, d->tlen, 0, d->payload, d->plen);
		return;
	}
	if (d->m == NULL &&
	    (d->m = qmsg_new(d->topic, d->tlen, d->payload, d->plen, d->retain)) == NULL) {
		log_error("out of memory for a QoS %u delivery; dropped", qos);
		report_state(w, c, copy, 0, MSG_DONE);
		return;
	}
	deliver_qos(w, c, d->m, qos > 2 ? 2 : qos, copy);
}

static void delivery_done(struct delivery *d)
{
	if (d->m != NULL && d->m->refs == 0)
		free(d->m);
}

static void rec_deliver(struct worker *w, struct recr *r)
{
	struct delivery d = { 0 };
	uint32_t n;

	(void)recr_u8(r);            /* the publisher's QoS: each target's says what to send */
	recr_str(r, &d.topic, &d.tlen);
	recr_bytes(r, &d.payload, &d.plen);
	d.retain = recr_u8(r);
	n = recr_u32(r);
	for (uint32_t i = 0; i < n && !r->err; i++) {
		conn_id_t id = recr_u64(r);
		uint32_t sid = recr_u32(r);
		uint8_t tq = recr_u8(r);
		uint64_t copy = tq & REC_TARGET_COPY ? recr_u64(r) : 0;
		struct conn *c;

		tq &= (uint8_t)~REC_TARGET_COPY;
		if (r->err)
			break;
		c = conn_lookup(w, id);
		if (c == NULL || c->state != CS_ACTIVE) {
			bounce(w, id, sid, copy, 0, MSG_QUEUED, tq, d.retain, d.topic, d.tlen,
			       d.payload, d.plen);
			continue;
		}
		deliver_to(w, c, &d, tq, copy);
	}
	delivery_done(&d);
}

/*
 * A message whose every target is a clean session on this worker: no
 * copy, no report, and a target gone since the route was answered is
 * simply skipped (its session ended with it).
 */
static void deliver_local(struct worker *w, const struct route *rt,
			  const struct mqtt_publish *pub)
{
	struct delivery d = {
		.topic = pub->topic.p, .tlen = pub->topic.len,
		.payload = pub->payload, .plen = pub->payload_len,
	};

	for (uint32_t i = 0; i < rt->n_targets; i++) {
		const struct route_target *t = &rt->targets[i];
		struct conn *c = conn_lookup(w, t->conn);

		if (c != NULL && c->state == CS_ACTIVE)
			deliver_to(w, c, &d, MIN(pub->qos, t->qos), 0);
	}
	delivery_done(&d);
}

static void rec_route(struct worker *w, struct recr *r)
{
	const uint8_t *topic;
	uint16_t tlen;
	uint64_t ask, gen;
	uint32_t n;
	bool local;

	ask = recr_u64(r);
	gen = recr_u64(r);
	recr_str(r, &topic, &tlen);
	local = recr_u8(r) != 0;
	n = recr_u32(r);
	if (r->err || n > recr_left(r) / REC_ROUTE_TARGET_BYTES)
		return;
	if (n > w->cap_rt_scratch) {
		struct route_target *t = reallocarray(w->rt_scratch, n, sizeof(*t));

		if (t == NULL) {
			/* The topic stays with the router; the record is read all the same. */
			r->p = r->end;
			return;
		}
		w->rt_scratch = t;
		w->cap_rt_scratch = n;
	}
	for (uint32_t i = 0; i < n; i++) {
		w->rt_scratch[i].conn = recr_u64(r);
		w->rt_scratch[i].qos = recr_u8(r);
	}
	if (r->err)
		return;
	routes_answer(&w->routes, topic, tlen, ask, gen,
		      atomic_load_explicit(&w->env->shm.router->route_gen, memory_order_acquire),
		      local, w->rt_scratch, n);
}

static void resend_pubrel(struct worker *w, struct conn *c, uint16_t pid, uint64_t copy)
{
	if (qos_resume_pubrel(&c->qos, w->cfg, pid, copy)) {
		send_ack(w, c, MQTT_PUBREL, pid);
		return;
	}
	log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
		   "no room to resend PUBREL %u; dropped", pid);
	report_state(w, c, copy, 0, MSG_DONE);
}

static void rec_session_resend(struct worker *w, struct recr *r)
{
	conn_id_t id = recr_u64(r);
	uint32_t sid = recr_u32(r);
	uint64_t copy = recr_u64(r);
	uint16_t pid = recr_u16(r);
	uint8_t state = recr_u8(r), qos = recr_u8(r), retain = recr_u8(r);
	const uint8_t *topic, *payload;
	uint16_t tlen;
	uint32_t plen;
	struct conn *c;
	struct inflight *sent = NULL;
	enum qos_verdict v;
	struct qmsg *m;

	recr_str(r, &topic, &tlen);
	recr_bytes(r, &payload, &plen);
	if (r->err || qos > 2 || (qos == 0 && state != MSG_QUEUED))
		return;
	c = conn_lookup(w, id);
	if (c == NULL || c->state != CS_ACTIVE) {
		bounce(w, id, sid, copy, pid, state, qos, retain, topic, tlen, payload, plen);
		return;
	}
	if (qos == 0) {
		/* Queued offline (queue_qos0_messages): sent once, nothing to keep. */
		send_publish(w, c, false, 0, retain, topic, tlen, 0, payload, plen);
		return;
	}
	if (state == MSG_PUBREL) {
		resend_pubrel(w, c, pid, copy);
		return;
	}
	m = qmsg_new(topic, tlen, payload, plen, retain);
	if (m == NULL) {
		log_error("out of memory resending a stored message; dropped");
		report_state(w, c, copy, 0, MSG_DONE);
		return;
	}
	v = qos_resume(&c->qos, &c->next_pid, w->cfg, m, qos, state, pid, copy, &sent);
	act_on_verdict(w, c, v, sent, qos, copy);
	if (m->refs == 0)
		free(m);
}

static void rec_kick(struct worker *w, struct recr *r)
{
	struct conn *c = conn_lookup(w, recr_u64(r));

	if (c != NULL)
		conn_close(w, c, true, "session taken over by a new connection");
}

static void handle_record(struct worker *w, const struct shmring_rec *rec)
{
	struct recr r;

	recr_init(&r, shmring_payload(rec), rec->len);
	switch (rec->type) {
	case REC_CONNACK: rec_connack(w, &r); break;
	case REC_SUBACK: rec_suback(w, &r, true); break;
	case REC_UNSUBACK: rec_suback(w, &r, false); break;
	case REC_DELIVER: rec_deliver(w, &r); break;
	case REC_SESSION_MSG: rec_session_resend(w, &r); break;
	case REC_KICK: rec_kick(w, &r); break;
	case REC_ROUTE: rec_route(w, &r); break;
	default:
		log_warn("unexpected %s record from the router; ignored", rec_type_name(rec->type));
		return;
	}
	if (recr_end(&r) < 0)
		log_warn("malformed %s record from the router; ignored the rest",
			 rec_type_name(rec->type));
}

static void drain_ring(struct worker *w)
{
	const struct shmring_rec *rec = NULL;
	int n = 0;

	while (n++ < RING_BATCH && (rec = shmring_peek(&w->cons)) != NULL) {
		handle_record(w, rec);
		shmring_next(&w->cons);
	}
	if (rec == NULL && errno == EBADMSG) {
		/* Nothing to parse there: skip to what the router wrote last. */
		log_error("the ring from the router is corrupted; skipping what it holds");
		shmring_discard(&w->cons);
	}
	if (shmring_release(&w->cons))
		eventfd_wake(w->env->router_efd);
}

/*
 * When the router is behind (or restarting) its ring fills and records pile
 * up here. Rather than grow without bound, stop reading from clients: TCP
 * then pushes back on the publishers. Reading resumes once the backlog
 * has drained below the low-water mark.
 */
static void throttle_update(struct worker *w)
{
	bool pressure = atomic_load_explicit(&w->env->shm.sup->memory_pressure,
					     memory_order_relaxed);

	if (!w->throttled && (w->bl_bytes > BACKLOG_HIGH || pressure)) {
		w->throttled = true;
		if (pressure)
			log_warn("memory_limit reached; pausing reads from clients");
		else
			log_warn("router is behind (%zu bytes waiting); pausing reads from clients",
				 w->bl_bytes);
	} else if (w->throttled && w->bl_bytes < BACKLOG_LOW && !pressure) {
		w->throttled = false;
		log_info("reading from clients again");
		for (uint32_t i = 0; i < w->n_slots; i++) {
			struct conn *c = w->slots[i];

			if (c != NULL && c->throttled) {
				c->throttled = false;
				conn_set_events(w, c);
			}
		}
	}
}

static void throttle_conn(struct worker *w, struct conn *c)
{
	c->throttled = true;
	conn_set_events(w, c);
}

static bool out_over_cap(const struct worker *w, const struct conn *c)
{
	return buf_held(c->out) > (size_t)w->cfg->max_output_bytes;
}

/* See out_drained(): logged once per episode, as the slow reader's QoS 0 drops are. */
static void hold_back_reader(struct worker *w, struct conn *c)
{
	log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
		   "%zu bytes of output unsent (max_output_bytes); not reading it until they "
		   "drain", buf_held(c->out));
	c->out_full = true;
	conn_set_events(w, c);
}

/* --- timers, control, loop ---------------------------------------------- */

static void check_deadlines(struct worker *w)
{
	uint64_t connect_ms = (uint64_t)w->cfg->connect_timeout * 1000;

	for (uint32_t i = 0; i < w->n_slots; i++) {
		struct conn *c = w->slots[i];
		uint64_t idle;

		if (c == NULL)
			continue;
		idle = w->now_ms - c->last_rx_ms;
		if (c->state == CS_NEW && connect_ms > 0 && idle >= connect_ms)
			conn_close(w, c, false, "no CONNECT within connect_timeout");
		else if (c->state == CS_ACTIVE && c->keepalive > 0 &&
			 idle >= (uint64_t)c->keepalive * 1500)
			conn_close(w, c, true, "keep-alive timeout");
	}
}

/*
 * Connections taken per loop turn, so that a burst of them does not hold
 * up the clients already served. Messages are taken whole: a turn may
 * take up to IPC_MAX_FDS - 1 more.
 */
#define ACCEPT_PER_TURN 64

/*
 * How many connections the listener counted as handed in this message:
 * one per struct ipc_client in its payload, whether or not their fds
 * made it. Nothing else comes over the channel.
 */
static unsigned handed_in(const struct ipc_hdr *hdr)
{
	if (hdr->type != IPC_CLIENT_FD)
		return 0;
	return MIN(hdr->len / sizeof(struct ipc_client), (unsigned)IPC_MAX_FDS);
}

/* Returns how many of the message's connections were taken; every other fd is closed. */
static unsigned take_clients(struct worker *w, const struct ipc_hdr *hdr, size_t len,
			     struct ipc_client *info, const int *fds, unsigned nfds)
{
	unsigned taken = 0;

	/* One fd per struct ipc_client, in the same order; anything else is not ours to guess. */
	if (hdr->type != IPC_CLIENT_FD || nfds == 0 || len != nfds * sizeof(*info)) {
		if (hdr->type == IPC_CLIENT_FD) {
			log_error("a malformed hand-over from the listener (%u fds, %zu bytes); "
				  "closing its connections", nfds, len);
			reports_lost(w);    /* their addresses are not to be trusted */
		}
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
		return 0;
	}
	for (unsigned i = 0; i < nfds; i++) {
		info[i].remote[sizeof(info[i].remote) - 1] = '\0';
		if (conn_new(w, fds[i], &info[i]))       /* it closes the fd when it cannot take it */
			taken++;
		else
			report_gone(w, info[i].remote);
	}
	return taken;
}

static void accept_clients(struct worker *w)
{
	struct shm_worker *ws = w->env->shm.worker[w->index];

	for (unsigned turn = 0; turn < ACCEPT_PER_TURN;) {
		struct ipc_hdr hdr;
		struct ipc_client info[IPC_MAX_FDS];
		int fds[IPC_MAX_FDS];
		unsigned nfds, handed, taken = 0;
		ssize_t n = ipc_recv_fds(w->env->chan_worker[w->index], &hdr, info, sizeof(info),
					 fds, IPC_MAX_FDS, &nfds);

		/* Dropped messages did come: what they carried is accounted for below. */
		if (n < 0 && errno != EMSGSIZE && errno != EBADMSG && errno != EMFILE)
			return;
		if (n == 0 && hdr.type == 0)
			return;
		handed = handed_in(&hdr);
		/* At once: should this worker die now, the supervisor counts them as gone. */
		atomic_fetch_add(&ws->accepted, handed);
		if (n < 0) {  /* its fds are closed already; their addresses unknown */
			log_error("a hand-over of %u connection(s) from the listener failed: %s; "
				  "they are closed", handed, strerror(errno));
			reports_lost(w);
		} else {
			if (hdr.type == IPC_ADDR_SYNC && n == (ssize_t)sizeof(uint64_t)) {
				uint64_t token;

				memcpy(&token, info, sizeof(token));
				answer_sync(w, token);
			}
			taken = take_clients(w, &hdr, (size_t)n, info, fds, nfds);
		}
		if (handed > taken)
			atomic_fetch_add(&ws->released, handed - taken);
		turn += MAX(handed, 1u);
	}
}

static void close_all(struct worker *w, const char *why)
{
	for (uint32_t i = 0; i < w->n_slots; i++)
		if (w->slots[i] != NULL)
			conn_close(w, w->slots[i], false, why);
}

/*
 * A reloaded configuration (IPC_CONFIG). Limits are read at each use, so
 * new packets and new connections follow them; what was derived from them
 * is derived again, and a raised max_inflight sends what waited behind the
 * old window at once instead of at the next acknowledgement.
 */
static void worker_config_changed(struct worker *w)
{
	for (uint32_t i = 0; i < w->n_slots; i++) {
		struct conn *c = w->slots[i];

		if (c != NULL && out_drained(w, c))
			conn_set_events(w, c);
		if (c != NULL && c->state == CS_ACTIVE && c->qos != NULL && c->qos->n_pending > 0)
			pending_pump(w, c);
	}
}

static bool control_message(struct worker *w)
{
	struct ipc_hdr hdr;
	char buf[IPC_MAX_PAYLOAD];
	int fd = -1;
	ssize_t n = ipc_recv(w->env->ctl_fd, &hdr, buf, sizeof(buf), &fd);

	if (fd >= 0)
		close(fd);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR;
	if (hdr.type == 0 || hdr.type == IPC_SHUTDOWN)
		return false;
	if (hdr.type == IPC_PING)
		ipc_send(w->env->ctl_fd, IPC_PONG, w->index, NULL, 0, -1);
	else if (hdr.type == IPC_LOG_SETTINGS)
		log_apply_settings(buf, (size_t)n);
	else if (hdr.type == IPC_CONFIG && role_take_config(w->env, buf, (size_t)n) == 0)
		worker_config_changed(w);
	return true;
}

static void publish_counters(struct worker *w)
{
	struct shm_worker *ws = w->env->shm.worker[w->index];

	if (w->msgs_in) {
		atomic_fetch_add_explicit(&ws->msgs_in, w->msgs_in, memory_order_relaxed);
		w->msgs_in = 0;
	}
	if (w->msgs_out) {
		atomic_fetch_add_explicit(&ws->msgs_out, w->msgs_out, memory_order_relaxed);
		w->msgs_out = 0;
	}
}

static int worker_setup(struct worker *w, struct role_env *env)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct itimerspec its = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };

	w->env = env;
	w->cfg = env->cfg;
	w->index = env->index;
	w->epoch = env->epoch;
	recw_init(&w->rw);
	w->rbuf = malloc(READ_CHUNK);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (w->rbuf == NULL || w->epfd < 0 || w->timerfd < 0 ||
	    timerfd_settime(w->timerfd, 0, &its, NULL) < 0)
		return -1;
	/*
	 * The router read our predecessor's records to the end before we were
	 * forked (IPC_WORKER_DOWN_DONE): start where it stands, whatever a
	 * faulty predecessor left in our own memory.
	 */
	shmring_producer_attach_at_tail(&w->prod, &env->shm.w2r[w->index]);
	/*
	 * What the router sent our predecessor is read like anything else:
	 * those connections are of an older epoch, so no lookup finds them,
	 * and QoS 1/2 deliveries among them go back to the router for their
	 * (now offline) sessions instead of being lost. A position the
	 * predecessor left that the router's ring cannot have is skipped.
	 */
	if (!shmring_consumer_attach(&w->cons, &env->shm.r2w[w->index])) {
		log_error("the ring from the router: our predecessor left an impossible position; "
			  "skipping what it holds");
		shmring_discard(&w->cons);
		/* Before READY: the router must see the repaired tail, never the old one. */
		shmring_release(&w->cons);
	}
	ev.data.ptr = &w->timerfd;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->timerfd, &ev) < 0)
		return -1;
	ev.data.ptr = &env->ctl_fd;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, env->ctl_fd, &ev) < 0)
		return -1;
	/* Edge-triggered: a wake-up needs no read to re-arm it, one syscall less. */
	ev.events = EPOLLIN | EPOLLET;
	ev.data.ptr = &env->worker_efd[w->index];
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, env->worker_efd[w->index], &ev) < 0)
		return -1;
	ev.events = EPOLLIN;
	ev.data.ptr = &env->chan_worker[w->index];
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, env->chan_worker[w->index], &ev) < 0)
		return -1;
	return 0;
}

static void worker_teardown(struct worker *w)
{
	struct backlog *b, *next;

	ring_commit(w);
	for (b = w->bl_head; b != NULL; b = next) {
		next = b->next;
		free(b);
	}
	free(w->slots);
	free(w->serials);
	free(w->free_slots);
	free(w->rbuf);
	recw_free(&w->rw);
	routes_free(&w->routes);
	free(w->rt_scratch);
	shmring_consumer_detach(&w->cons);
	free(w->reports.e);
	close(w->epfd);
	close(w->timerfd);
}

int worker_main(struct role_env *env)
{
	struct worker w = { 0 };
	struct epoll_event evs[256];
	struct shm_worker *ws;

	if (worker_setup(&w, env) < 0)
		fatal("worker setup failed: %s", strerror(errno));
	/*
	 * Our own counts start from nothing: whatever our predecessor left in
	 * them is its claim, not ours (the listener counts from when it saw
	 * our epoch). READY then tells the supervisor we serve.
	 */
	ws = env->shm.worker[w.index];
	atomic_store(&ws->accepted, 0);
	atomic_store(&ws->released, 0);
	ipc_send(env->ctl_fd, IPC_READY, w.index, NULL, 0, -1);
	while (!w.stopping) {
		int timeout = shmring_prepare_sleep(&w.cons) ? -1 : 0;
		int n = epoll_wait(w.epfd, evs, (int)ARRAY_SIZE(evs), timeout);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		shmring_awake(&w.cons);
		w.now_ms = clock_ms();
		throttle_update(&w);     /* memory_limit may have been reached while we slept */
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &w.timerfd) {
				uint64_t ticks;

				(void)!read(w.timerfd, &ticks, sizeof(ticks));
				check_deadlines(&w);
				publish_counters(&w);
				/* Give large freed blocks back to the system (at once over the ceiling). */
				if (heap_trim_wanted || atomic_load(&env->shm.sup->memory_pressure)) {
					heap_trim_wanted = false;
					malloc_trim(0);
				}
			} else if (p == &env->ctl_fd) {
				if (!control_message(&w))
					w.stopping = true;
			} else if (p == &env->worker_efd[w.index]) {
				continue;   /* the ring is drained below, every turn */
			} else if (p == &env->chan_worker[w.index]) {
				accept_clients(&w);
			} else {
				struct conn *c = p;

				/* An earlier event of this turn may have closed it. */
				if (c->state == CS_CLOSED)
					continue;
				if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP) && c->want_out) {
					if (!conn_flush(&w, c))
						continue;
				}
				if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) ||
				    c->state == CS_CLOSED)
					continue;
				if (w.throttled && c->state == CS_ACTIVE &&
				    !(evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
					throttle_conn(&w, c);
				else if (c->state == CS_ACTIVE && out_over_cap(&w, c) &&
					 !(evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
					hold_back_reader(&w, c);
				else if (c->paused && !c->in_off &&
					 !(evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
					conn_set_events(&w, c);   /* input before its CONNACK: left in the kernel */
				else
					conn_read(&w, c);
			}
		}
		drain_ring(&w);
		ring_commit(&w);
		throttle_update(&w);
		flush_dirty(&w);
		bury_closed(&w);
		reports_flush(&w);
	}
	close_all(&w, "broker shutting down");
	bury_closed(&w);
	publish_counters(&w);
	worker_teardown(&w);
	return 0;
}
