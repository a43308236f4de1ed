/*
 * worker_conn.c - a worker's client connections: the table, the buffers, I/O.
 *
 * Owns the connection table (slots indexed by the connection id's slot,
 * their serials and free list), each connection's struct conn and its
 * input and output buffers, the list of connections with output to flush
 * (flushed once per loop turn, last marked first) and those closed this
 * turn (freed at its end, as epoll may still name them). Reads hand whole
 * packets to worker_mqtt.c; closing tells the router (worker_records.c) and
 * the listener (worker.c). A connection with layers above its socket
 * (WebSocket, worker_transport.h) has its reads, flushes and last write
 * done by them; they hand MQTT's bytes back through conn_feed().
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "hidx.h"
#include "log.h"
#include "worker_int.h"
#include "worker_transport.h"

/* Allocated for a connection whose remote[] holds n bytes. */
static size_t conn_size(size_t n)
{
	return MAX(sizeof(struct conn), offsetof(struct conn, remote) + n);
}

/* --- buffers ------------------------------------------------------------ */

/*
 * Room for n more bytes at the end of *bp, which may be NULL (empty); a
 * new buffer starts head bytes in (its off and len), kept free in front.
 */
static int buf_reserve(struct buf **bp, size_t n, size_t head)
{
	struct buf *b = *bp;
	bool fresh = b == NULL;
	size_t len = fresh ? head : b->len, cap = fresh ? 0 : b->cap;

	if (len + n <= cap)
		return 0;
	cap = cap ? cap : 256;
	while (cap < len + n)
		cap *= 2;
	b = realloc(b, sizeof(*b) + cap);
	if (b == NULL)
		return -1;
	if (fresh)
		b->len = b->off = head;
	b->cap = cap;
	*bp = b;
	return 0;
}

/* A large one freed asks for a heap trim (heap_trim_wanted, qos.h). */
static void buf_free(struct buf **bp)
{
	if (*bp != NULL && (*bp)->cap >= TRIM_MIN_BYTES)
		heap_trim_wanted = true;
	free(*bp);
	*bp = NULL;
}

/* --- output ------------------------------------------------------------- */

/* Bytes kept free in front of c->out's unsent ones, for its layers (xport.out_head). */
static size_t out_head(const struct conn *c)
{
	return c->xp != NULL ? c->xp->out_head : 0;
}

static void conn_mark_dirty(struct worker *w, struct conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = w->dirty;
		w->dirty = c;
	}
}

uint8_t *out_reserve(struct worker *w, struct conn *c, size_t n)
{
	uint8_t *p;

	/* Nothing to write has no place: c->out may not even exist. */
	if (n == 0 || buf_reserve(&c->out, n, out_head(c)) < 0)
		return NULL;
	p = c->out->data + c->out->len;
	c->out->len += n;
	conn_mark_dirty(w, c);
	return p;
}

void send_ack(struct worker *w, struct conn *c, enum mqtt_type type, uint16_t id)
{
	uint8_t *p = out_reserve(w, c, 4);

	if (p != NULL)
		mqtt_encode_ack(p, type, id);
}

/* The MQTT 5 reason code of a 3.1.1 CONNACK return code. */
static uint8_t connack_reason(uint8_t rc)
{
	switch (rc) {
	case MQTT_CONNACK_ACCEPTED: return MQTT5_RC_SUCCESS;
	case MQTT_CONNACK_BAD_PROTOCOL: return MQTT5_RC_UNSUPPORTED_PROTOCOL_VERSION;
	case MQTT_CONNACK_ID_REJECTED: return MQTT5_RC_CLIENT_IDENTIFIER_NOT_VALID;
	case MQTT_CONNACK_UNAVAILABLE: return MQTT5_RC_SERVER_UNAVAILABLE;
	case MQTT_CONNACK_BAD_AUTH: return MQTT5_RC_BAD_USER_NAME_OR_PASSWORD;
	case MQTT_CONNACK_NOT_AUTHORIZED: return MQTT5_RC_NOT_AUTHORIZED;
	default: return MQTT5_RC_UNSPECIFIED_ERROR;
	}
}

/* rc: a 3.1.1 return code, sent as its reason code to an MQTT 5 client (without properties). */
void send_connack(struct worker *w, struct conn *c, bool sp, uint8_t rc)
{
	uint8_t *p;

	if (conn_is_v5(c)) {
		send_connack5(w, c, sp, connack_reason(rc), NULL);
		return;
	}
	if ((p = out_reserve(w, c, 4)) != NULL)
		mqtt_encode_connack(p, sp, rc);
}

void send_connack5(struct worker *w, struct conn *c, bool sp, uint8_t reason,
		   const struct mqtt5_out *props)
{
	uint8_t *p = out_reserve(w, c, mqtt5_connack_size(props));

	if (p != NULL)
		mqtt5_encode_connack(p, sp, reason, props);
}

/* An acknowledgement with a reason code: MQTT 5 only (with 0, the 3.1.1 bytes). */
void send_ack5(struct worker *w, struct conn *c, enum mqtt_type type, uint16_t id,
	       uint8_t reason)
{
	uint8_t *p = out_reserve(w, c, mqtt5_ack_size(reason, NULL));

	if (p != NULL)
		mqtt5_encode_ack(p, type, id, reason, NULL);
}


/* Room for the longest length field of a property block, before its body. */
#define PROPS_LEN_ROOM 4

uint8_t *props_begin(struct props_buf *b, size_t n)
{
	if (b->cap < PROPS_LEN_ROOM + n) {
		uint8_t *p = realloc(b->p, PROPS_LEN_ROOM + n);

		if (p == NULL)
			return NULL;
		b->p = p;
		b->cap = PROPS_LEN_ROOM + n;
	}
	return b->p + PROPS_LEN_ROOM;
}

size_t props_body_off(struct rec_bytes props)
{
	size_t hdr = 0;

	while (hdr < props.len && (props.p[hdr++] & 0x80))
		;
	return hdr;
}

struct rec_bytes props_end(struct props_buf *b, size_t len)
{
	size_t hdr = mqtt_varint_size((uint32_t)len);

	mqtt_varint_encode(b->p + PROPS_LEN_ROOM - hdr, (uint32_t)len);
	return (struct rec_bytes){ b->p + PROPS_LEN_ROOM - hdr, (uint32_t)(hdr + len) };
}

/*
 * What an MQTT 5 PUBLISH carries of x5 and its topic alias (0: none),
 * built in o (own: room for the expiry and the alias); NULL: nothing.
 */
struct v5_out {
	struct mqtt5_out o;
	struct mqtt5_props fwd;
	uint8_t own[8];
};

static const struct mqtt5_out *msg_out(struct v5_out *out, struct msg_v5 x5, uint16_t alias)
{
	struct mqtt5_pbuf b;
	size_t hdr;

	if (x5.props.len == 0 && x5.expires_at == 0 && alias == 0)
		return NULL;
	mqtt5_pbuf_init(&b, out->own, sizeof(out->own));
	if (x5.expires_at) {
		uint64_t now = wall_clock_ms();
		/* What is left, rounded up: one that expired on its way still says 1 s. */
		uint64_t left = x5.expires_at > now ? (x5.expires_at - now + 999) / 1000 : 1;

		mqtt5_pbuf_num(&b, MQTT5_PROP_MESSAGE_EXPIRY, (uint32_t)MIN(left, UINT32_MAX));
	}
	if (alias)
		mqtt5_pbuf_num(&b, MQTT5_PROP_TOPIC_ALIAS, alias);
	/* The block after its length field: forwarded as it is. */
	hdr = props_body_off(x5.props);
	out->fwd = (struct mqtt5_props){ .raw = x5.props.p + hdr, .raw_len = x5.props.len - hdr };
	mqtt5_out_init(&out->o, b.p, b.len, &out->fwd, 0);
	return &out->o;
}

/*
 * Would a PUBLISH of this topic and payload pass the client's maximum
 * packet size? An MQTT 5 client is not sent one that does not [MQTT-3.1.2-25].
 */
bool publish_fits(const struct worker *w, const struct conn *c, size_t tlen, size_t plen,
		  struct msg_v5 x5, uint8_t qos)
{
	const struct conn_v5 *v = CONN_V5(w, c);
	struct v5_out o;

	return v == NULL || v->max_packet == 0 ||
	       mqtt5_publish_size(tlen, plen, qos, msg_out(&o, x5, 0)) <= v->max_packet;
}

/*
 * The topic alias a PUBLISH of topic to an MQTT 5 client goes out with,
 * as iotd sets them: the first n_alias_out distinct topics sent on the
 * connection get 1, 2, ... for its life, and are never given another
 * (simple, bounded, and no alias ever changes meaning); later topics go
 * out in full, as do new ones past server.topic_alias_max_bytes of the
 * topics aliased. *known: the client has the alias already, and the
 * PUBLISH leaves the topic out; else a new one is set by the PUBLISH,
 * which alias_out_sent() records once it is written. 0: none.
 */
static uint16_t alias_out_pick(const struct worker *w, struct conn_v5 *v,
			       const uint8_t *topic, size_t tlen, bool *known)
{
	struct alias_table_out *t = v->held != NULL ? v->held->alias_out : NULL;
	uint16_t used = t != NULL ? t->used : 0;
	struct topic_alias_out *a;
	uint32_t h;

	*known = false;
	if (v->n_alias_out == 0)
		return 0;
	h = hidx_hash_bytes(topic, tlen);
	for (uint16_t i = 0; i < used; i++) {
		a = &t->a[i];
		if (a->hash == h && a->len == tlen && memcmp(a->topic, topic, tlen) == 0) {
			*known = true;
			return (uint16_t)(i + 1);
		}
	}
	if (used == v->n_alias_out ||
	    (t != NULL ? t->bytes : 0) + tlen > (size_t)w->cfg->topic_alias_max_bytes)
		return 0;
	if (t == NULL) {
		if (conn_v5_hold(v) == NULL)
			return 0;
		t = calloc(1, sizeof(*t) + (size_t)v->n_alias_out * sizeof(t->a[0]));
		if (t == NULL)
			return 0;
		v->held->alias_out = t;
	}
	a = &t->a[used];
	free(a->topic);              /* one picked before whose PUBLISH was not written */
	if ((a->topic = malloc(tlen)) == NULL)
		return 0;
	memcpy(a->topic, topic, tlen);
	a->len = (uint16_t)tlen;
	a->hash = h;
	return (uint16_t)(used + 1);
}

static void alias_out_sent(struct conn_v5 *v, uint16_t alias, bool known)
{
	if (alias && !known) {
		struct alias_table_out *t = v->held->alias_out;

		t->bytes += t->a[alias - 1].len;
		t->used++;
	}
}

/*
 * The bytes of a PUBLISH to c, and in o what MQTT 5 adds (*po). A resent
 * one (dup) carries its topic in full [MQTT-3.3.2-7]; so does one that a
 * new alias would take past the client's maximum packet size.
 */
static size_t publish_out(struct worker *w, struct conn *c, bool dup, uint8_t qos,
			  const uint8_t *topic, size_t tlen, size_t plen, struct msg_v5 x5,
			  struct v5_out *o, const struct mqtt5_out **po, uint16_t *alias,
			  bool *known)
{
	struct conn_v5 *v = CONN_V5(w, c);
	size_t n;

	*alias = 0;
	*known = false;
	if (v == NULL) {
		*po = NULL;
		return mqtt_publish_size(tlen, plen, qos);
	}
	if (!dup)
		*alias = alias_out_pick(w, v, topic, tlen, known);
	*po = msg_out(o, x5, *alias);
	n = mqtt5_publish_size(*known ? 0 : tlen, plen, qos, *po);
	if (*alias && !*known && v->max_packet && n > v->max_packet) {
		*alias = 0;
		*po = msg_out(o, x5, 0);
		n = mqtt5_publish_size(tlen, plen, qos, *po);
	}
	return n;
}

void send_publish(struct worker *w, struct conn *c, bool dup, uint8_t qos, bool retain,
		  const uint8_t *topic, size_t tlen, uint16_t pid,
		  const uint8_t *payload, size_t plen, struct msg_v5 x5)
{
	struct v5_out o;
	const struct mqtt5_out *po;
	uint16_t alias;
	bool known;
	size_t n = publish_out(w, c, dup, qos, topic, tlen, plen, x5, &o, &po, &alias, &known);
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
	if (conn_is_v5(c)) {
		mqtt5_encode_publish(p, dup, qos, retain, topic, known ? 0 : tlen, pid, po, payload,
				     plen);
		alias_out_sent(CONN_V5(w, c), alias, known);
	} else
		mqtt_encode_publish(p, dup, qos, retain, topic, tlen, pid, payload, plen);
	w->msgs_out++;
}

static int conn_epoll_mod(struct worker *w, struct conn *c)
{
	struct epoll_event ev = { .data.ptr = c };

	/* EPOLLRDHUP even when not reading: a client that leaves is always noticed. */
	c->in_off = c->paused || c->throttled || c->out_full;
	ev.events = EPOLLRDHUP | (c->in_off ? 0 : EPOLLIN) | (c->want_out ? EPOLLOUT : 0);
	if (c->xp != NULL)
		ev.events |= xport_events(c);
	return epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

void conn_set_events(struct worker *w, struct conn *c)
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
bool out_drained(struct worker *w, struct conn *c)
{
	if (!c->out_full || buf_held(c->out) > (size_t)w->cfg->max_output_bytes / 2)
		return false;
	c->out_full = false;
	return true;
}

void conn_flushed(struct worker *w, struct conn *c, bool blocked)
{
	struct buf *b = c->out;
	size_t head = out_head(c);
	bool changed;

	if (!blocked || buf_held(b) == 0) {
		/* Idle connections hold no buffer: memory per connection stays small. */
		buf_free(&c->out);
	} else if (b->off > head && b->off >= b->len / 2) {
		/*
		 * Keep only what is unsent: a slow but steady reader must not
		 * make the buffer grow by what it already took.
		 */
		memmove(b->data + head, b->data + b->off, b->len - b->off);
		b->len = head + b->len - b->off;
		b->off = head;
	}
	changed = out_drained(w, c) || c->want_out != blocked;
	c->want_out = blocked;
	if (changed)
		conn_set_events(w, c);
}

/* Returns false when the connection was closed. */
bool conn_flush(struct worker *w, struct conn *c)
{
	struct buf *b;

	if (c->xp != NULL)
		return xport_flush(w, c);
	while ((b = c->out) != NULL && b->off < b->len) {
		ssize_t n = write(c->fd, b->data + b->off, b->len - b->off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				conn_flushed(w, c, true);
				return true;
			}
			conn_close(w, c, true, strerror(errno));
			return false;
		}
		b->off += (size_t)n;
	}
	conn_flushed(w, c, false);
	return true;
}

void flush_dirty(struct worker *w)
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

struct conn *conn_lookup(struct worker *w, conn_id_t id)
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
bool conn_new(struct worker *w, int fd, const struct ipc_client *info)
{
	static bool refused_logged;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
	size_t rlen = strnlen(info->remote, sizeof(info->remote) - 1);
	struct xport *xp;
	const char *why;
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
	c->id = conn_id_make(w->index, w->epoch, slot, ++w->serials[slot]);
	if (xport_new(w, fd, c->id, info, &xp, &why) < 0) {
		/* Maybe the listener's word: logged once, as it may say it of every connection. */
		if (!refused_logged)
			log_error("the connection from %s cannot be served (%s); closing it, and "
				  "others like it without a word", info->remote, why);
		refused_logged = true;
		w->free_slots[w->n_free++] = slot;
		free(c);
		close(fd);
		return false;
	}
	c->xp = xp;
	c->fd = fd;
	c->state = CS_NEW;
	c->last_rx_ms = w->now_ms;
	c->remote_len = (uint8_t)rlen;
	memcpy(c->remote, info->remote, rlen);
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		log_error("epoll_ctl: %s; closing the connection from %s", strerror(errno), c->remote);
		w->free_slots[w->n_free++] = slot;
		xport_free(c->xp);
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
struct conn *conn_add_client_id(struct worker *w, struct conn *c, const char *id,
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

/*
 * The client's view of the ACL (worker_auth.c makes it from its auth
 * verdict), which the connection now owns; NULL: none (with an ACL in
 * force its messages then all go to the router, which checks them).
 */
void conn_set_rules(struct worker *w, struct conn *c, struct acl_client *view)
{
	acl_client_free(c->acl);
	c->acl = view;
}

/* --- closing ------------------------------------------------------------ */

/* v's held part, made at the first of its parts; NULL: out of memory. */
struct conn_v5_held *conn_v5_hold(struct conn_v5 *v)
{
	if (v->held == NULL)
		v->held = calloc(1, sizeof(*v->held));
	return v->held;
}

static void conn_v5_held_free(struct conn_v5 *v)
{
	struct conn_v5_held *h = v->held;

	if (h == NULL)
		return;
	for (uint16_t i = 0; h->alias != NULL && i < v->n_alias; i++)
		free(h->alias->a[i].topic);
	free(h->alias);
	for (uint16_t i = 0; h->alias_out != NULL && i < v->n_alias_out; i++)
		free(h->alias_out->a[i].topic);
	free(h->alias_out);
	if (h->scram != NULL)
		free(h->scram->final);
	free(h->scram);
	free(h);
}

void conn_v5_free(struct worker *w, struct conn *c)
{
	struct conn_v5 *v = CONN_V5(w, c);

	if (v == NULL)
		return;
	conn_v5_held_free(v);
	free(v);
	c->v5_state = NULL;
}

static void conn_free_state(struct worker *w, struct conn *c)
{
	conn_v5_free(w, c);
	xport_free(c->xp);
	c->xp = NULL;
	acl_client_free(c->acl);
	c->acl = NULL;
	qos_free(c->qos);
	c->qos = NULL;
	buf_free(&c->in);
	buf_free(&c->out);
}

void conn_close(struct worker *w, struct conn *c, bool publish_will, const char *why)
{
	unsigned slot = conn_id_slot(c->id);

	if (c->state == CS_CONNECTING || c->state == CS_ACTIVE) {
		push_close(w, c, publish_will);
		log_client(LOG_LVL_INFO, conn_client_id(c), c->remote, "disconnected: %s", why);
		if (conn_is_v5(c) && CONN_V5(w, c)->reauth)
			worker_auth_forget(w, c);
	} else {
		if (c->state == CS_AUTHENTICATING)
			worker_auth_forget(w, c);
		log_debug("connection from %s closed before CONNECT: %s", c->remote, why);
	}
	/*
	 * Uncount it before the client can see the close: a client that
	 * reconnects at once must find the listener's view already updated.
	 */
	atomic_fetch_add(&w->env->shm.worker[w->index]->released, 1);
	report_gone(w, c->remote);
	/* Try to get the last bytes (a CONNACK with an error code) out. */
	if (c->xp != NULL)
		xport_last_write(w, c);
	else if (buf_held(c->out) > 0)
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
	conn_free_state(w, c);
	c->state = CS_CLOSED;
	w->slots[slot] = NULL;
	w->free_slots[w->n_free++] = slot;
	w->n_conns--;
	c->dirty_next = w->graveyard;
	w->graveyard = c;
}

/*
 * Close c as conn_close() does; an MQTT 5 client past its CONNACK is told
 * why first, with a DISCONNECT carrying reason.
 */
void conn_disconnect(struct worker *w, struct conn *c, uint8_t reason, bool publish_will,
		     const char *why)
{
	uint8_t *p;

	if (conn_is_v5(c) && c->state == CS_ACTIVE &&
	    (p = out_reserve(w, c, mqtt5_reason_size(reason, NULL))) != NULL)
		mqtt5_encode_reason(p, MQTT_DISCONNECT, reason, NULL);
	conn_close(w, c, publish_will, why);
}

/* A CONNECT refused: CONNACK with its code, then close (no will: it was never registered). */
void conn_refuse(struct worker *w, struct conn *c, uint8_t code, const char *why)
{
	send_connack(w, c, false, code);
	conn_close(w, c, false, why);
}

void bury_closed(struct worker *w)
{
	while (w->graveyard != NULL) {
		struct conn *c = w->graveyard;

		w->graveyard = c->dirty_next;
		free(c);
	}
}

void close_all(struct worker *w, const char *why)
{
	for (uint32_t i = 0; i < w->n_slots; i++)
		if (w->slots[i] != NULL)
			conn_disconnect(w, w->slots[i], MQTT5_RC_SERVER_SHUTTING_DOWN, false, why);
}

/* --- input -------------------------------------------------------------- */

/* What sits in *cp's input (partial packets, or input held while paused); false: closed. */
static bool process_held(struct worker *w, struct conn **cp)
{
	struct conn *c;
	ssize_t used = process_bytes(w, cp, (*cp)->in->data, (*cp)->in->len);

	if (used < 0)
		return false;
	c = *cp;
	memmove(c->in->data, c->in->data + used, c->in->len - (size_t)used);
	c->in->len -= (size_t)used;
	if (c->in->len == 0)
		buf_free(&c->in);
	return true;
}

void conn_process_input(struct worker *w, struct conn *c)
{
	process_held(w, &c);
}

bool conn_feed(struct worker *w, struct conn **cp, const uint8_t *p, size_t n)
{
	struct conn *c = *cp;
	ssize_t used;

	if (buf_held(c->in) > 0) {
		/* A packet is already partly here: append, then decode in place. */
		if (buf_reserve(&c->in, n, 0) < 0) {
			conn_close(w, c, true, "out of memory");
			return false;
		}
		memcpy(c->in->data + c->in->len, p, n);
		c->in->len += n;
		return process_held(w, cp);
	}
	used = process_bytes(w, cp, p, n);
	if (used < 0)
		return false;
	c = *cp;
	if ((size_t)used == n)
		return true;
	if (buf_reserve(&c->in, n - (size_t)used, 0) < 0) {
		conn_close(w, c, true, "out of memory");
		return false;
	}
	memcpy(c->in->data, p + used, n - (size_t)used);
	c->in->len = n - (size_t)used;
	return true;
}

void conn_read(struct worker *w, struct conn *c)
{
	ssize_t n;

	if (c->xp != NULL) {
		xport_read(w, c);
		return;
	}
	n = read(c->fd, w->rbuf, READ_CHUNK);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		conn_close(w, c, true, n == 0 ? "connection closed by client" : strerror(errno));
		return;
	}
	conn_feed(w, &c, w->rbuf, (size_t)n);
}
