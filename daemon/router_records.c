/*
 * router_records.c - the records the workers send the router (rings w2r,
 * rec.h), read and checked, each handed to the code that owns what it
 * changes; and the deaths of workers.
 *
 * A worker is hostile input (docs/arch.md, "Shared memory: one writer per
 * region"): every record is parsed in full before anything acts on it, and
 * one that speaks of a connection is taken only from the ring of the
 * worker that holds the connection, in its current epoch, in a slot below
 * its capacity (router_conn_ok, router_set_worker). router_handle() drops
 * what fails, logging once per record type.
 */
#include <string.h>

#include "router_int.h"
#include "mqtt.h"
#include "topic.h"

enum { ROUTER_OK = 0, ROUTER_BAD = -1, ROUTER_NOCONN = -2 };

/* ---- provenance -------------------------------------------------------- */

/*
 * Provenance: the conn must be one the worker whose ring carried the
 * record can hold now: its own, of its current epoch, in a slot it can
 * have. A worker cannot act for another's connections or sessions, nor
 * for its dead predecessor's, nor make the slot arrays grow past its
 * capacity.
 */
static bool router_conn_ok(const struct router *r, unsigned worker, conn_id_t conn)
{
	return conn_id_worker(conn) == worker &&
	       conn_id_epoch(conn) == (r->worker_epoch[worker] & 0xffff) &&
	       conn_id_slot(conn) < r->worker_slots[worker];
}

void router_set_worker(struct router *r, unsigned worker, uint32_t epoch, uint32_t slots)
{
	if (worker >= r->nworkers)
		return;
	r->worker_epoch[worker] = epoch;
	/* Slots are 24 bits in a conn id: past that the check is moot. */
	r->worker_slots[worker] = MIN(slots, 1u << 24);
}

/* ---- the records ------------------------------------------------------- */

static int router_on_connect(struct router *r, unsigned worker, struct recr *rd)
{
	struct connect_fields f = { 0 };
	struct session_connect *c;

	f.conn = recr_u64(rd);
	f.clean = recr_u8(rd);
	f.keepalive = recr_u16(rd);
	recr_str(rd, &f.client_id, &f.client_id_len);
	recr_str(rd, &f.remote, &f.remote_len);
	f.will_flag = recr_u8(rd);
	f.will_qos = recr_u8(rd);
	f.will_retain = recr_u8(rd);
	recr_str(rd, &f.will_topic, &f.will_topic_len);
	recr_bytes(rd, &f.will_payload, &f.will_payload_len);
	if (recr_end(rd) || !router_conn_ok(r, worker, f.conn) || f.clean > 1 ||
	    f.will_flag > 1 || f.will_qos > 2 || f.will_retain > 1)
		return ROUTER_BAD;
	if (memchr(f.client_id, '\0', f.client_id_len))
		return ROUTER_BAD;
	if (router_conn_slot_taken(r, f.conn) || router_find_pending(r, f.conn))
		return ROUTER_BAD;         /* a second CONNECT on one connection */
	if (f.will_flag && !topic_name_valid((const char *)f.will_topic, f.will_topic_len, 0, 0)) {
		log_warn("router: CONNECT from worker %u with an invalid will topic: will ignored",
			 worker);
		f.will_flag = 0;
	}
	if (!f.client_id_len)
		f.clean = 1;              /* a server-named session cannot persist [MQTT-3.1.3-8] */

	c = session_connect_new(&f);
	if (!c) {
		log_error("router: out of memory: connection refused");
		router_send_connack(r, f.conn, 0, MQTT_CONNACK_UNAVAILABLE, false, NULL, 0);
		return ROUTER_OK;
	}
	router_connect_apply(r, c);
	return ROUTER_OK;
}

static int router_on_subscribe(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint16_t n = recr_u16(rd);
	struct recr start = *rd, fr;
	struct recw *ack = &r->ack;
	const uint8_t *f;
	uint16_t flen;
	size_t codes;
	struct session *s;

	for (uint16_t i = 0; i < n; i++) {
		recr_str(rd, &f, &flen);
		recr_u8(rd);
	}
	if (recr_end(rd) || !router_conn_ok(r, worker, conn))
		return ROUTER_BAD;
	s = router_find_conn(r, conn);
	if (!s)
		return ROUTER_NOCONN;

	recw_reset(ack);
	recw_u64(ack, conn);
	recw_u16(ack, packet_id);
	recw_u16(ack, n);
	codes = ack->len;
	fr = start;
	for (uint16_t i = 0; i < n; i++) {
		uint8_t qos;

		recr_str(&fr, &f, &flen);
		qos = recr_u8(&fr);
		recw_u8(ack, router_subscription_refused(s, r->cfg, (const char *)f, flen) ?
			     ROUTER_SUBACK_FAILURE :
			     router_subscribe_one(r, s, (const char *)f, flen, qos));
	}
	router_emit(r, worker, REC_SUBACK, ack);
	if (ack->oom)
		return ROUTER_OK;

	/*
	 * Retained messages after the SUBACK, for every filter granted, sent
	 * by router_send_retained() as the ring takes them. A filter repeated
	 * in the packet is one subscription at its last QoS, and one walk.
	 */
	fr = start;
	for (uint16_t i = 0; i < n; i++) {
		struct session_sub *sub;

		recr_str(&fr, &f, &flen);
		recr_u8(&fr);
		if (ack->buf[codes + i] == ROUTER_SUBACK_FAILURE)
			continue;
		HASH_FIND(hh, s->subs, f, flen, sub);
		if (sub)
			router_cursor_start(r, s, sub);
	}
	return ROUTER_OK;
}

static int router_on_unsubscribe(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint16_t n = recr_u16(rd);
	struct recr fr = *rd;
	const uint8_t *f;
	uint16_t flen;
	struct session *s;
	struct recw *w = &r->out;

	for (uint16_t i = 0; i < n; i++)
		recr_str(rd, &f, &flen);
	if (recr_end(rd) || !router_conn_ok(r, worker, conn))
		return ROUTER_BAD;
	s = router_find_conn(r, conn);
	if (!s)
		return ROUTER_NOCONN;
	for (uint16_t i = 0; i < n; i++) {
		recr_str(&fr, &f, &flen);
		router_unsubscribe_one(r, s, (const char *)f, flen);
	}
	recw_reset(w);
	recw_u64(w, conn);
	recw_u16(w, packet_id);
	router_emit(r, worker, REC_UNSUBACK, w);
	return ROUTER_OK;
}

static int router_on_publish(struct router *r, unsigned worker, struct recr *rd)
{
	struct router_match match;
	struct router_msg m;
	const uint8_t *topic;
	uint8_t flags;
	uint64_t ask = 0;

	m.qos = recr_u8(rd);
	flags = recr_u8(rd);
	recr_str(rd, &topic, &m.topic_len);
	recr_bytes(rd, &m.payload, &m.payload_len);
	if (flags & REC_PUB_ASK)
		ask = recr_u64(rd);
	m.topic = (const char *)topic;
	m.retain = flags & REC_PUB_RETAIN;
	if (recr_end(rd) || m.qos > 2 || (flags & ~(REC_PUB_RETAIN | REC_PUB_ASK)) ||
	    !topic_name_valid(m.topic, m.topic_len, 0, 0))
		return ROUTER_BAD;
	match = router_publish(r, &m);
	if (flags & REC_PUB_ASK)
		router_answer_route(r, worker, ask, &m, &match);
	return ROUTER_OK;
}

static int router_on_session_msg(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint32_t sid = recr_u32(rd);
	uint64_t copy = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint8_t state = recr_u8(rd);
	struct router_msg m;
	const uint8_t *topic;
	struct session *s;

	m.qos = recr_u8(rd);
	m.retain = recr_u8(rd);
	recr_str(rd, &topic, &m.topic_len);
	recr_bytes(rd, &m.payload, &m.payload_len);
	m.topic = (const char *)topic;
	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || state > MSG_PUBREL ||
	    m.qos > 2 || m.retain > 1)
		return ROUTER_BAD;
	/* An unfinished exchange needs QoS >= 1 (PUBREL: 2); anything to publish needs a topic. */
	if ((state != MSG_QUEUED && m.qos == 0) || (state == MSG_PUBREL && m.qos != 2))
		return ROUTER_BAD;
	if (state != MSG_PUBREL && !topic_name_valid(m.topic, m.topic_len, 0, 0))
		return ROUTER_BAD;

	s = router_find_sid(r, sid);
	if (!s) {
		log_debug("router: stored message for gone session %u dropped", sid);
		return ROUTER_OK;
	}
	/*
	 * Provenance: only what one of the session's own connections (the
	 * current or last one, or the one a takeover replaced) owes it. A
	 * worker cannot queue messages for sessions it never held.
	 */
	if (conn != s->conn && conn != s->prev_conn)
		return ROUTER_NOCONN;
	if (copy) {
		/* The router holds this one already, with its state as last reported. */
		return ROUTER_OK;
	}
	if (s->online && s->conn == conn) {
		/* Owed by the session's own closing connection (REC_CLOSE follows). */
		session_enqueue_one(r, s, true, packet_id, state, &m);
	} else if (!s->online || s->pending) {
		if (m.qos > 0)
			session_enqueue_one(r, s, false, packet_id, state, &m);
	} else {
		/*
		 * A delivery or stored message that reached a connection the session
		 * has since left: on to the current one as it is, as a resume would.
		 * A PUBREL carries no message, so it cannot become a new delivery;
		 * the worker turns an in-flight one whose id is taken into one.
		 */
		struct msg_body *body = NULL;

		router_send_session_msg(r, s->conn, s->sid,
					session_copy_new(r, s, packet_id, state, &m, &body), packet_id,
					state, &m);
		msg_body_discard(body);
	}
	return ROUTER_OK;
}

/* A persistent session's inbound QoS 2 id was taken (PUBLISH) or released (PUBREL). */
static int router_on_qos2_in(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint32_t sid = recr_u32(rd);
	uint16_t packet_id = recr_u16(rd);
	uint8_t held = recr_u8(rd);
	struct session *s;
	uint16_t i;

	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || !packet_id || held > 1)
		return ROUTER_BAD;
	s = router_find_sid(r, sid);
	if (!s || !s->online || s->conn != conn || s->clean)
		return ROUTER_OK;            /* gone meanwhile: its CLOSE carried the ids */
	for (i = 0; i < s->n_qos2_ids && s->qos2_ids[i] != packet_id; i++)
		;
	if (held && i == s->n_qos2_ids) {
		uint16_t *grown;

		if (s->n_qos2_ids == UINT16_MAX)
			return ROUTER_BAD;
		grown = realloc(s->qos2_ids, ((size_t)s->n_qos2_ids + 1) * sizeof(*grown));
		if (!grown) {
			log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
				   "out of memory: inbound QoS 2 id %u not kept against a worker crash",
				   packet_id);
			return ROUTER_OK;
		}
		s->qos2_ids = grown;
		s->qos2_ids[s->n_qos2_ids++] = packet_id;
	} else if (!held && i < s->n_qos2_ids) {
		s->qos2_ids[i] = s->qos2_ids[--s->n_qos2_ids];
	} else {
		return ROUTER_OK;
	}
	session_persist(r, s);
	return ROUTER_OK;
}

/* A worker's report on a message the router holds a copy of. */
static int router_on_msg_state(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint32_t sid = recr_u32(rd);
	uint64_t copy = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint8_t state = recr_u8(rd);
	struct session_msg *q, *prev;
	struct session *s;

	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || !copy ||
	    state < MSG_INFLIGHT || state > MSG_DONE || (state != MSG_DONE && !packet_id))
		return ROUTER_BAD;
	s = router_find_sid(r, sid);
	/* Reports come before the connection's REC_CLOSE: a copy released since is not theirs. */
	if (!s || !s->online || s->conn != conn || !(q = session_copy_find(s, copy, &prev))) {
		log_debug("router: state of message %llu of gone session %u ignored",
			  (unsigned long long)copy, sid);
		return ROUTER_OK;
	}
	if (state == MSG_DONE) {
		session_msg_drop(r, s, q, prev);
		return ROUTER_OK;
	}
	if (state == MSG_PUBREL && q->qos != 2)
		return ROUTER_BAD;
	q->packet_id = packet_id;
	q->state = state;
	session_msg_persist(r, s, q);
	return ROUTER_OK;
}

static int router_on_close(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint8_t publish_will = recr_u8(rd);
	uint16_t n = recr_u16(rd);
	const uint8_t *ids = rd->p;
	struct session *s;

	for (uint16_t i = 0; i < n; i++)
		recr_u16(rd);
	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || publish_will > 1)
		return ROUTER_BAD;
	s = router_find_conn(r, conn);
	if (s) {
		router_close(r, s, publish_will, ids, n);
		return ROUTER_OK;
	}
	s = router_find_pending(r, conn);
	if (s) {
		/* Gone before the connection it takes over closed: never accepted, no will. */
		log_client(LOG_LVL_INFO, s->client_id, cx_remote(s->pending),
			   "connection closed while waiting for its session");
		session_pending_drop(r, s);
		session_persist(r, s);
		return ROUTER_OK;
	}
	if (router_kicked_take(r, conn))
		return ROUTER_OK;
	return ROUTER_NOCONN;
}

/* ---- worker deaths ----------------------------------------------------- */

size_t router_worker_down(struct router *r, unsigned worker, uint32_t new_epoch)
{
	size_t closed;

	if (worker >= r->nworkers)
		return 0;
	r->worker_epoch[worker] = new_epoch;
	closed = router_close_worker(r, worker, new_epoch);
	log_warn("router: worker %u down (epoch now %u): %zu sessions disconnected", worker,
		 new_epoch, closed);
	return closed;
}

/* ---- dispatch ---------------------------------------------------------- */

typedef int (*router_handler_fn)(struct router *r, unsigned worker, struct recr *rd);

static const router_handler_fn router_handlers[REC_TYPE_MAX] = {
	[REC_CONNECT] = router_on_connect,
	[REC_SUBSCRIBE] = router_on_subscribe,
	[REC_UNSUBSCRIBE] = router_on_unsubscribe,
	[REC_PUBLISH] = router_on_publish,
	[REC_SESSION_MSG] = router_on_session_msg,
	[REC_CLOSE] = router_on_close,
	[REC_MSG_STATE] = router_on_msg_state,
	[REC_QOS2_IN] = router_on_qos2_in,
};

int router_handle(struct router *r, unsigned worker, uint16_t type, const void *payload,
		  size_t len)
{
	unsigned slot = type < REC_TYPE_MAX ? type : REC_TYPE_MAX;
	struct recr rd;
	int rc;

	if (worker >= r->nworkers || type >= REC_TYPE_MAX || !router_handlers[type]) {
		rc = ROUTER_BAD;
	} else {
		recr_init(&rd, payload, len);
		rc = router_handlers[type](r, worker, &rd);
	}
	if (rc == ROUTER_OK)
		return 0;
	r->bad_records++;
	/* Once per record type: a buggy worker must not flood the log. */
	if (rc == ROUTER_BAD && !r->warned_bad[slot]) {
		log_warn("router: malformed or unexpected record %s (type %u, %zu bytes) from ring %u dropped (logged once)",
			 rec_type_name(type), type, len, worker);
		r->warned_bad[slot] = true;
	} else if (rc == ROUTER_NOCONN && !r->warned_noconn[slot]) {
		log_warn("router: record %s for an unknown connection from worker %u dropped (logged once)",
			 rec_type_name(type), worker);
		r->warned_noconn[slot] = true;
	}
	return -1;
}
