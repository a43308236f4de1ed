/*
 * router_queue.c - what the router holds for sessions: their offline
 * queues, the copies of the QoS 1/2 messages their connections hold, and
 * the budget all of these share.
 *
 * A message queued for many sessions is one msg_body, shared by an entry
 * (session_msg) in each queue. A persistent session's queue holds, in
 * order: the messages its closing connection still owed, those queued
 * since, and, while it is online, copies of what the worker has in flight
 * for it, kept until the worker reports each done (REC_MSG_STATE) so that
 * a worker's death loses none. max_queued_messages and max_queued_bytes
 * bound each session, max_queued_bytes_total all of them (held_bytes),
 * counting an MQTT 5 message's properties with its payload, and its
 * subscription identifiers (4 bytes each) with its entry. A message
 * whose expiry passed while it waited is dropped when it would be sent.
 * Every change is written to the store's queue. Entries and bodies freed
 * are kept, up to a fixed number, for the next ones (the spares).
 */
#include <stdlib.h>
#include <string.h>

#include "router_int.h"
#include "mqtt5.h"
#include "store.h"

#define ROUTER_MAX_WINDOW 65535u      /* a session cannot owe more in-flight messages than packet ids */
/*
 * Freed entries and bodies kept for the next ones (at most 40 KiB and
 * 560 KiB): under load the router frees an entry and a body per delivery
 * done and makes them per delivery, and malloc's work on long-cold
 * chunks cost more than the copying.
 */
#define ROUTER_SPARE_MSGS 1024u
#define ROUTER_SPARE_BODIES 1024u

/* ---- the store and the worker ------------------------------------------ */

/*
 * Write session sid's queue entry order: m as the entry holds it, with
 * its packet id, state and mark. A new entry is written from what it was
 * made of, not read back: its small fields, just stored to a line the
 * cache may not hold yet, would make the read wait for that line.
 */
static void session_msg_store(struct router *r, uint32_t sid, uint64_t order,
			      uint16_t packet_id, uint8_t state, bool at_worker,
			      const struct router_msg *m)
{
	struct store_msg sm = {
		.packet_id = packet_id,
		.state = state,
		.qos = m->qos,
		.retain = m->retain,
		.at_worker = at_worker,
		.topic = m->topic,
		.topic_len = m->topic_len,
		.payload = m->payload,
		.payload_len = m->payload_len,
		.v5 = { m->props, m->props_len, m->expires_at },
		.n_sub_ids = m->n_sub_ids,
		.sub_ids = m->sub_ids,
	};

	if (r->st)
		store_queue_put(r->st, sid, order, &sm);
}

void session_msg_persist(struct router *r, const struct session *s,
			 const struct session_msg *q)
{
	struct router_msg m;

	session_msg_view(q, &m);
	session_msg_store(r, s->sid, q->order, q->packet_id, q->state, q->at_worker, &m);
}

void router_send_session_msg(struct router *r, conn_id_t conn, uint32_t sid, uint64_t copy,
			     uint16_t packet_id, uint8_t state, const struct router_msg *m)
{
	const struct rec_session_msg x = {
		.conn = conn,
		.sid = sid,
		.copy = copy,
		.packet_id = packet_id,
		.state = state,
		.qos = m->qos,
		.retain = m->retain,
		.topic = { (const uint8_t *)m->topic, m->topic_len },
		.payload = { m->payload, m->payload_len },
		.props = { m->props, m->props_len },
		.expires_at = m->expires_at,
		.sub_ids = { m->sub_ids, m->n_sub_ids },
	};

	rec_session_msg_encode(&r->out, &x);
	router_emit(r, conn_id_worker(conn), REC_SESSION_MSG, &r->out);
}

/* ---- bodies and the budget of all queues ------------------------------- */

static size_t msg_body_bytes(const struct msg_body *b)
{
	return (size_t)b->topic_len + b->payload_len + b->props_len;
}

/* What a message counts against the queues' byte limits: topic, payload and properties. */
static size_t router_msg_bytes(const struct router_msg *m)
{
	return (size_t)m->topic_len + m->payload_len + m->props_len;
}

/* How many MSG_BODY_STEPs a body of bytes is allocated in; 0: too big, as long as it is. */
static uint8_t msg_body_steps(size_t bytes)
{
	size_t steps = (bytes + MSG_BODY_STEP - 1) / MSG_BODY_STEP;

	return steps && steps <= MSG_BODY_STEPS ? (uint8_t)steps : 0;
}

/* Fill b with m's topic, payload and properties, held by no entry yet. */
static struct msg_body *msg_body_fill(struct msg_body *b, const struct router_msg *m)
{
	b->refs = 0;
	b->topic_len = m->topic_len;
	b->payload_len = m->payload_len;
	b->props_len = m->props_len;
	b->expires_at = m->expires_at;
	if (m->topic_len)
		memcpy(b->data, m->topic, m->topic_len);
	if (m->payload_len)
		memcpy(b->data + m->topic_len, m->payload, m->payload_len);
	if (m->props_len)
		memcpy(b->data + m->topic_len + m->payload_len, m->props, m->props_len);
	return b;
}

/* A body for m's topic, payload and properties, held by no entry yet (refs 0, not counted). */
struct msg_body *msg_body_new(const struct router_msg *m)
{
	size_t bytes = router_msg_bytes(m);
	uint8_t steps = msg_body_steps(bytes);
	struct msg_body *b = malloc(sizeof(*b) + (steps ? steps * (size_t)MSG_BODY_STEP : bytes));

	if (!b)
		return NULL;
	b->size_step = steps;
	return msg_body_fill(b, m);
}

/* The body a message about to be queued shares: *body, made from m on first need. */
static struct msg_body *msg_body_get(struct router *r, struct msg_body **body,
				     const struct router_msg *m)
{
	uint8_t steps;
	struct msg_body *b;

	if (*body)
		return *body;
	steps = msg_body_steps(router_msg_bytes(m));
	b = steps ? r->spare_bodies[steps] : NULL;
	if (b) {
		memcpy(&r->spare_bodies[steps], b->data, sizeof(b));
		r->n_spare_bodies--;
		*body = msg_body_fill(b, m);
	} else {
		*body = msg_body_new(m);
	}
	return *body;
}

/* A body no entry holds any more: kept for the next of its size, or freed. */
static void msg_body_dealloc(struct router *r, struct msg_body *b)
{
	if (b->size_step && r->n_spare_bodies < ROUTER_SPARE_BODIES) {
		memcpy(b->data, &r->spare_bodies[b->size_step], sizeof(b));
		r->spare_bodies[b->size_step] = b;
		r->n_spare_bodies++;
		return;
	}
	free(b);
}

/* What an entry adds to ROUTER_ENTRY_COST: its subscription identifiers. */
static size_t sub_ids_bytes(uint8_t n_sub_ids)
{
	return (size_t)n_sub_ids * sizeof(uint32_t);
}

/* What one more entry for m holding body (NULL: not made yet) adds to held_bytes. */
static size_t router_held_cost(const struct msg_body *body, const struct router_msg *m)
{
	size_t entry = ROUTER_ENTRY_COST + sub_ids_bytes(m->n_sub_ids);

	if (body && body->refs)
		return entry;
	return entry + router_msg_bytes(m);
}

/*
 * Identifiers a worker's record or the store gives for a queued message:
 * at most REC_TARGET_SUB_IDS_MAX, each one a subscription may have.
 */
bool router_sub_ids_valid(uint32_t n, const void *sub_ids)
{
	if (n > REC_TARGET_SUB_IDS_MAX)
		return false;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t id;

		memcpy(&id, (const uint8_t *)sub_ids + (size_t)i * sizeof(id), sizeof(id));
		if (id == 0 || id > MQTT5_SUB_ID_MAX)
			return false;
	}
	return true;
}

/* Would holding more bytes take the session queues past max_queued_bytes_total? */
static bool router_held_full(const struct router *r, size_t more)
{
	long max = r->cfg->max_queued_bytes_total;

	return max > 0 && r->held_bytes + more > (size_t)max;
}

static void router_held_warn(struct router *r, const char *what)
{
	if (!r->warned_held_full)
		log_warn("router: session queues hold %zu bytes, max_queued_bytes_total (%ld) reached: %s (logged once until they hold 10%% less)",
			 r->held_bytes, r->cfg->max_queued_bytes_total, what);
	r->warned_held_full = true;
}

/* An episode ends once the queues are 10% below the budget (or it was lifted). */
void router_held_check(struct router *r)
{
	long max = r->cfg->max_queued_bytes_total;

	if (r->warned_held_full && (max <= 0 || r->held_bytes <= (size_t)max / 10 * 9))
		r->warned_held_full = false;
}

/* ---- a session's queue ------------------------------------------------- */

/* Room for an entry with n_sub_ids identifiers: a spare one (the last freed) when it has none. */
static struct session_msg *session_msg_alloc(struct router *r, uint8_t n_sub_ids)
{
	struct session_msg *q = r->spare_msgs;

	if (n_sub_ids == 0 && q) {
		r->spare_msgs = q->next;
		r->n_spare_msgs--;
		return q;
	}
	return malloc(sizeof(*q) + sub_ids_bytes(n_sub_ids));
}

static void session_msg_dealloc(struct router *r, struct session_msg *q)
{
	if (q->n_sub_ids == 0 && r->n_spare_msgs < ROUTER_SPARE_MSGS) {
		q->next = r->spare_msgs;
		r->spare_msgs = q;
		r->n_spare_msgs++;
		return;
	}
	free(q);
}

void router_spares_free(struct router *r)
{
	struct session_msg *q, *next;

	for (q = r->spare_msgs; q; q = next) {
		next = q->next;
		free(q);
	}
	r->spare_msgs = NULL;
	r->n_spare_msgs = 0;
	for (unsigned i = 0; i <= MSG_BODY_STEPS; i++) {
		struct msg_body *b = r->spare_bodies[i], *bnext;

		for (; b; b = bnext) {
			memcpy(&bnext, b->data, sizeof(bnext));
			free(b);
		}
		r->spare_bodies[i] = NULL;
	}
	r->n_spare_bodies = 0;
}

/*
 * A queue entry for body, which it holds (and which is counted once, with
 * its first holder), with m's QoS, retain flag and subscription
 * identifiers (at most REC_TARGET_SUB_IDS_MAX: the caller's to check).
 */
struct session_msg *session_msg_new(struct router *r, uint16_t packet_id, uint8_t state,
				    const struct router_msg *m, struct msg_body *body)
{
	struct session_msg *q;

	if (!body || body->refs == UINT32_MAX || !(q = session_msg_alloc(r, m->n_sub_ids)))
		return NULL;
	q->body = body;
	q->packet_id = packet_id;
	q->state = state;
	q->at_worker = false;
	q->qos = m->qos;
	q->retain = m->retain;
	q->n_sub_ids = m->n_sub_ids;
	if (m->n_sub_ids)
		memcpy(q->sub_ids, m->sub_ids, sub_ids_bytes(m->n_sub_ids));
	if (body->refs++ == 0) {
		r->held_bytes += msg_body_bytes(body);
		r->held_bodies++;
	}
	r->held_bytes += ROUTER_ENTRY_COST + sub_ids_bytes(q->n_sub_ids);
	return q;
}

/* Free an entry (already out of its queue) and, with its last holder, its body. */
static void session_msg_free(struct router *r, struct session_msg *q)
{
	struct msg_body *b = q->body;

	r->held_bytes -= ROUTER_ENTRY_COST + sub_ids_bytes(q->n_sub_ids);
	if (--b->refs == 0) {
		r->held_bytes -= msg_body_bytes(b);
		r->held_bodies--;
		msg_body_dealloc(r, b);
	}
	session_msg_dealloc(r, q);
}

/* The session is going: its queue leaves memory and the store (not one key range there). */
void session_queue_clear(struct router *r, struct session *s)
{
	struct session_msg *m, *next;

	for (m = s->q_head; m; m = next) {
		next = m->next;
		if (r->st)
			store_queue_del(r->st, s->sid, m->order);
		session_msg_free(r, m);
	}
	s->q_head = s->q_tail = s->q_owed_tail = NULL;
	s->q_queued = s->q_queued_bytes = s->q_window = s->q_at_worker = 0;
	s->q_warned = s->q_warned_qos0 = false;
}

/*
 * Add (dir 1) or take away (dir -1) q from the counts its kind is in. A
 * session counts the whole size of every message it queues, shared or
 * not, with the identifiers its entry holds.
 */
static void session_queue_count(struct session *s, const struct session_msg *q, int dir)
{
	if (q->at_worker) {
		/* Not counted in bytes: a copy's body is not touched here, it is long cold. */
		s->q_at_worker += (uint32_t)dir;
	} else if (q->state == MSG_QUEUED) {
		size_t bytes = msg_body_bytes(q->body) + sub_ids_bytes(q->n_sub_ids);

		s->q_queued += (uint32_t)dir;
		s->q_queued_bytes += dir > 0 ? bytes : -bytes;
	} else {
		s->q_window += (uint32_t)dir;
	}
}

size_t session_queue_len(const struct session *s)
{
	return s->q_queued + s->q_window;
}

/*
 * No room for a message of bytes (topic, payload, properties and
 * identifiers) in state, whose entry would add held to what all queues
 * hold: the session's own limits, then the budget of all sessions
 * together.
 */
static bool session_queue_full(const struct router *r, const struct session *s,
			       uint8_t state, size_t bytes, size_t held)
{
	long max_msgs = r->cfg->max_queued_messages;
	long max_bytes = r->cfg->max_queued_bytes;

	/* The in-flight window is not "queued": it is only bounded by the packet ids. */
	if (state != MSG_QUEUED)
		return s->q_window >= ROUTER_MAX_WINDOW;
	if (max_msgs > 0 && s->q_queued >= (size_t)max_msgs)
		return true;
	if (max_bytes > 0 && s->q_queued_bytes + bytes > (size_t)max_bytes)
		return true;
	return router_held_full(r, held);
}

/*
 * q goes at the tail: give the entry SESSION_MSG_AHEAD before it q as
 * its prefetch hint. A copy is reported done some 90,000 deliveries after
 * it was made (a busy shared group), when its entry is long out of the
 * caches; the report on one has the entry some SESSION_MSG_AHEAD reports
 * later on its way (router_on_msg_state), where the entry just after it
 * would be needed before its load completes. The tail's own ahead is the
 * lagging entry, which only ever points at one in the queue.
 */
static void session_queue_lag(struct session *s, struct session_msg *q)
{
	struct session_msg *t = s->q_tail, *lag = t ? t->ahead : NULL;

	if (!lag) {
		q->ahead = t;
		s->q_lag_gap = 1;
	} else if (s->q_lag_gap < SESSION_MSG_AHEAD) {
		q->ahead = lag;
		s->q_lag_gap++;
	} else {
		lag->ahead = q;
		q->ahead = lag->next;   /* lag is before q: never NULL */
	}
}

/*
 * Link q into the session's queue and count it. owed: it comes from the
 * session's closing connection, so it is older than anything the router
 * queued meanwhile and goes before it. The order key says the same to
 * the store: owed ones without ROUTER_ORDER_QUEUED sort first.
 */
void session_queue_link(struct session *s, struct session_msg *q, bool owed)
{
	q->ahead = NULL;
	if (owed) {
		q->next = s->q_owed_tail ? s->q_owed_tail->next : s->q_head;
		if (s->q_owed_tail)
			s->q_owed_tail->next = q;
		else
			s->q_head = q;
		s->q_owed_tail = q;
	} else {
		q->next = NULL;
		session_queue_lag(s, q);
		if (s->q_tail)
			s->q_tail->next = q;
		else
			s->q_head = q;
	}
	if (!q->next)
		s->q_tail = q;
	session_queue_count(s, q, 1);
}

/* Take q (after prev, NULL at the head) out of the queue and the store, and free it. */
void session_msg_drop(struct router *r, struct session *s, struct session_msg *q,
		      struct session_msg *prev)
{
	bool was_tail = s->q_tail == q;

	if (prev)
		prev->next = q->next;
	else
		s->q_head = q->next;
	if (was_tail)
		s->q_tail = prev;
	if (s->q_owed_tail == q)
		s->q_owed_tail = prev;
	/* The tail's lagging entry must stay one in the queue (session_queue_lag). */
	if (s->q_tail && (was_tail || s->q_tail->ahead == q))
		s->q_tail->ahead = NULL;
	session_queue_count(s, q, -1);
	/* Its body is needed by the free: let its load overlap the store's work. */
	__builtin_prefetch(q->body);
	if (r->st)
		store_queue_del(r->st, s->sid, q->order);
	session_msg_free(r, q);
}

/*
 * A full queue makes room by dropping its oldest queued QoS 0 messages
 * first (queue_qos0_messages): they were never promised. true when the
 * message now fits.
 */
static bool session_queue_evict_qos0(struct router *r, struct session *s, size_t bytes,
				     size_t held)
{
	struct session_msg *q = s->q_head, *prev = NULL;

	while (session_queue_full(r, s, MSG_QUEUED, bytes, held)) {
		while (q && (q->qos != 0 || q->at_worker)) {
			prev = q;
			q = q->next;
		}
		if (!q)
			return false;
		if (!s->q_warned_qos0)
			log_client(LOG_LVL_WARN, s->client_id, session_remote(s),
				   "offline queue full (%zu messages, %zu bytes; all queues %zu bytes): dropping QoS 0 messages first",
				   session_queue_len(s), s->q_queued_bytes, r->held_bytes);
		s->q_warned_qos0 = true;
		r->queue_drops++;
		session_msg_drop(r, s, q, prev);
		q = prev ? prev->next : s->q_head;
	}
	return true;
}

/*
 * Store a message for a session that is not (or no longer) connected.
 * *body: the message's shared body, made on first need; the caller
 * discards it when no queue took it (msg_body_discard).
 */
void session_enqueue(struct router *r, struct session *s, bool owed, uint16_t packet_id,
		     uint8_t state, const struct router_msg *m, struct msg_body **body)
{
	size_t bytes = router_msg_bytes(m) + sub_ids_bytes(m->n_sub_ids);
	size_t held = router_held_cost(*body, m);
	struct session_msg *q;
	uint64_t order;

	if (session_queue_full(r, s, state, bytes, held) &&
	    (state != MSG_QUEUED || !session_queue_evict_qos0(r, s, bytes, held))) {
		r->queue_drops++;
		if (state == MSG_QUEUED && router_held_full(r, held)) {
			router_held_warn(r, "new messages for offline sessions are dropped");
		} else {
			if (!s->q_warned)
				log_client(LOG_LVL_WARN, s->client_id, session_remote(s),
					   "offline queue full (%zu messages, %zu bytes): dropping new messages",
					   session_queue_len(s), s->q_queued_bytes);
			s->q_warned = true;
		}
		return;
	}
	q = session_msg_new(r, packet_id, state, m, msg_body_get(r, body, m));
	if (!q) {
		r->queue_drops++;
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory: queued message dropped");
		return;
	}
	order = (r->next_order++ & ~ROUTER_ORDER_QUEUED) | (owed ? 0 : ROUTER_ORDER_QUEUED);
	q->order = order;
	session_queue_link(s, q, owed);
	session_msg_store(r, s->sid, order, packet_id, state, false, m);
	log_debug("router: session %u queued %s message (%zu stored)", s->sid,
		  owed ? "owed" : "new", session_queue_len(s));
}

/* Queue a message of its own (not a publish shared with other sessions). */
void session_enqueue_one(struct router *r, struct session *s, bool owed,
			 uint16_t packet_id, uint8_t state, const struct router_msg *m)
{
	struct msg_body *body = NULL;

	session_enqueue(r, s, owed, packet_id, state, m, &body);
	msg_body_discard(body);
}

void session_msg_view(const struct session_msg *q, struct router_msg *m)
{
	m->qos = q->qos;
	m->retain = q->retain;
	m->topic = (const char *)q->body->data;
	m->topic_len = q->body->topic_len;
	m->payload = q->body->data + q->body->topic_len;
	m->payload_len = q->body->payload_len;
	m->props = msg_body_props(q->body);
	m->props_len = q->body->props_len;
	m->expires_at = q->body->expires_at;
	m->n_sub_ids = q->n_sub_ids;
	m->sub_ids = q->sub_ids;
	m->from = NULL;
}

/* Mark q as a copy of what the session's connection holds, or no longer; counted and stored. */
static void session_msg_mark(struct router *r, struct session *s, struct session_msg *q,
			     bool at_worker)
{
	session_queue_count(s, q, -1);
	q->at_worker = at_worker;
	session_queue_count(s, q, 1);
	session_msg_persist(r, s, q);
}

/*
 * Hand the stored messages to the session's new connection, the
 * unfinished exchanges first. Each stays here as a copy until the worker
 * reports it done (REC_MSG_STATE). One not yet sent whose expiry passed
 * while it waited is dropped: it must not reach the client.
 */
void session_queue_send(struct router *r, struct session *s)
{
	uint64_t now = wall_clock_ms();
	struct router_msg m;

	for (int pass = 0; pass < 2; pass++) {
		struct session_msg *q, *prev = NULL, *next;

		for (q = s->q_head; q; prev = q, q = next) {
			next = q->next;
			if (q->at_worker || (q->state == MSG_QUEUED) != (pass == 1))
				continue;
			session_msg_view(q, &m);
			if (q->state == MSG_QUEUED && msg_expired(m.expires_at, now)) {
				session_msg_drop(r, s, q, prev);
				q = prev;
				continue;
			}
			if (q->state != MSG_PUBREL &&
			    !router_acl_allows(r, s, m.topic, m.topic_len, ACL_READ)) {
				/* Queued before the ACL or the session's user changed: not its to read now. */
				session_msg_drop(r, s, q, prev);
				q = prev;
				continue;
			}
			if (q->qos == 0) {
				/* Nothing to acknowledge: it leaves the queue as it goes out. */
				router_send_session_msg(r, s->conn, s->sid, 0, 0, MSG_QUEUED, &m);
				session_msg_drop(r, s, q, prev);
				q = prev;
				continue;
			}
			session_msg_mark(r, s, q, true);
			router_send_session_msg(r, s->conn, s->sid, q->order, q->packet_id, q->state,
						&m);
		}
	}
	s->q_owed_tail = NULL;
	s->q_warned = s->q_warned_qos0 = false;
}

/* ---- copies of what a connection holds --------------------------------- */

/*
 * Keep a copy of a QoS 1/2 message handed to a persistent session's
 * connection, or to any session's through a shared subscription (shared:
 * a clean session's connection that closes leaves it to another member,
 * router_share_reroute), sharing *body (see session_enqueue). Returns its id for the
 * worker, or 0 when none is kept (out of memory, or past
 * max_queued_bytes_total: the worker then hands the message back on a
 * clean close, as before copies existed, and a crash of the worker loses
 * it).
 */
uint64_t session_copy_new(struct router *r, struct session *s, uint16_t packet_id,
			  uint8_t state, const struct router_msg *m, struct msg_body **body,
			  bool shared)
{
	struct session_msg *q;
	uint64_t order;

	if ((s->clean && !shared) || m->qos == 0 ||
	    s->q_at_worker >= ROUTER_MAX_WINDOW + (size_t)r->cfg->max_queued_messages)
		return 0;
	if (router_held_full(r, router_held_cost(*body, m))) {
		router_held_warn(r, "messages to persistent sessions' connections are not kept against a worker crash");
		return 0;
	}
	q = session_msg_new(r, packet_id, state, m, msg_body_get(r, body, m));
	if (!q) {
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory: a QoS %u message is not kept against a worker crash",
			   m->qos);
		return 0;
	}
	q->at_worker = true;
	order = (r->next_order++ & ~ROUTER_ORDER_QUEUED) | ROUTER_ORDER_QUEUED;
	q->order = order;
	session_queue_link(s, q, false);
	session_msg_store(r, s->sid, order, packet_id, state, true, m);
	return order;
}

/* The connection is gone: what it held becomes the head of the offline queue, as last reported. */
void session_copies_release(struct router *r, struct session *s)
{
	for (struct session_msg *q = s->q_head; q && s->q_at_worker; q = q->next)
		if (q->at_worker)
			session_msg_mark(r, s, q, false);
}

/* The copy named copy, or NULL; *prev_r: the message before it in the queue. */
struct session_msg *session_copy_find(struct session *s, uint64_t copy,
				      struct session_msg **prev_r)
{
	struct session_msg *prev = NULL;

	for (struct session_msg *q = s->q_head; q; prev = q, q = q->next) {
		if (q->order == copy && q->at_worker) {
			*prev_r = prev;
			return q;
		}
	}
	return NULL;
}
