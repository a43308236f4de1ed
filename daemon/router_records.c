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
#include "mqtt5.h"
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

/*
 * The online session of conn, as a record of worker names it: ROUTER_OK
 * (*s set), ROUTER_BAD (not a connection worker may speak of) or
 * ROUTER_NOCONN (none online on it).
 */
static int router_conn_session(struct router *r, unsigned worker, conn_id_t conn,
			       struct session **s)
{
	if (!router_conn_ok(r, worker, conn))
		return ROUTER_BAD;
	*s = router_find_conn(r, conn);
	return *s ? ROUTER_OK : ROUTER_NOCONN;
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

/*
 * Each handler decodes its record whole first (rec.h): a malformed one is
 * ROUTER_BAD before anything acts. Then what its fields say is checked.
 */

/*
 * A CONNECT record: taken when the auth role vouches for it (its grant,
 * if grants are required), and its grant, with a token's rules, taken
 * into the router's copy of it (session_connect), which keeps them until
 * the session is placed, however long a takeover makes it wait.
 */
/*
 * A message's properties from a worker, forwarded to others: a whole
 * MQTT 5 property block a PUBLISH may carry, without what the broker
 * rewrites (message expiry, topic alias, subscription identifiers).
 */
static bool router_props_valid(const struct rec_bytes *props)
{
	struct mqtt5_props out;
	size_t used;

	return props->len == 0 ||
	       (mqtt5_props_decode(props->p, props->len, MQTT_PUBLISH, &out, &used) == MQTT_OK &&
		used == props->len && out.raw_len > 0 && !(out.present & MQTT5_PUBLISH_REWRITTEN));
}

static int router_on_connect(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_connect x;
	struct session_connect *c;
	struct router_grant *g;

	if (rec_connect_decode(&x, p, len) || !router_conn_ok(r, worker, x.conn) || x.clean > 1 ||
	    x.will_flag > 1 || x.will_qos > 2 || x.will_retain > 1)
		return ROUTER_BAD;
	if (memchr(x.client_id.p, '\0', x.client_id.len) || memchr(x.user.p, '\0', x.user.len))
		return ROUTER_BAD;
	if (router_conn_slot_taken(r, x.conn) || router_find_pending(r, x.conn))
		return ROUTER_BAD;         /* a second CONNECT on one connection */
	/* The will's MQTT 5 part only with a will, its properties as a PUBLISH's. */
	if ((!x.will_flag && (x.will_delay || x.will_expiry || x.will_props.len)) ||
	    !router_props_valid(&x.will_props))
		return ROUTER_BAD;
	if (x.will_flag &&
	    !topic_name_valid((const char *)x.will_topic.p, x.will_topic.len, 0, 0)) {
		log_warn("router: CONNECT from worker %u with an invalid will topic: will ignored",
			 worker);
		x.will_flag = 0;
	}
	x.session_expiry = router_expiry_cap(r, x.session_expiry);
	if (!x.client_id.len) {
		x.clean = 1;              /* a server-named session cannot persist [MQTT-3.1.3-8] */
		x.session_expiry = 0;
	}
	if (!router_grant_vouches(r, x.conn, (const char *)x.user.p, x.user.len, &g)) {
		log_warn("router: CONNECT of '%.*s' as \"%.*s\" from worker %u, which the auth role "
			 "did not accept so: refused (CONNACK 5)", (int)MIN(x.client_id.len, 256u),
			 (const char *)x.client_id.p, (int)MIN(x.user.len, 256u),
			 (const char *)x.user.p, worker);
		router_send_connack(r, x.conn, 0, MQTT_CONNACK_NOT_AUTHORIZED, false, NULL, 0);
		return ROUTER_OK;
	}

	c = session_connect_new(&x, g ? &(struct session_token){ g->token, g->rules,
								 g->rules_len } : NULL);
	router_grant_used(r, g);
	if (!c) {
		log_error("router: out of memory: connection refused");
		router_send_connack(r, x.conn, 0, MQTT_CONNACK_UNAVAILABLE, false, NULL, 0);
		return ROUTER_OK;
	}
	router_connect_apply(r, c);
	return ROUTER_OK;
}

/*
 * SUBACK's code for one filter: 0x80 past the session's limit or when the
 * ACL lets it read nothing there (a shared subscription's: its filter's).
 */
static uint8_t router_subscribe_code(struct router *r, struct session *s, const char *filter,
				     uint16_t len, uint8_t qos, uint32_t sub_id)
{
	struct topic_share_parts parts = { .filter = filter, .filter_len = len };

	/* A code of failure the worker chose (an MQTT 5 reason code): only its own client hears it. */
	if (qos >= ROUTER_SUBACK_FAILURE)
		return qos;
	if (router_subscription_refused(s, r->cfg, filter, len))
		return ROUTER_SUBACK_FAILURE;
	if (topic_share_parse(filter, len, &parts) == TOPIC_SHARE_BAD)
		return ROUTER_SUBACK_FAILURE;
	if (router_acl_on(r, s) &&
	    !(s->acl && acl_client_may_subscribe(s->acl, parts.filter, parts.filter_len))) {
		log_debug("router: session %u: SUBSCRIBE to '%.*s' refused by the ACL", s->sid,
			  (int)len, filter);
		return ROUTER_SUBACK_FAILURE;
	}
	return router_subscribe_one(r, s, filter, len, qos, sub_id);
}

/*
 * Do a subscription's retained messages go out after its SUBACK? Retain
 * handling 0: yes; 1: if the SUBSCRIBE made it; 2: never.
 */
static bool router_retain_handling_sends(const struct session_sub *sub)
{
	switch (MQTT5_SUB_RETAIN_HANDLING(sub->opts)) {
	case 0: return true;
	case 1: return sub->fresh;
	default: return false;
	}
}

static int router_on_subscribe(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_subscribe x;
	struct rec_subscription sub;
	struct rec_iter it;
	struct recw *ack = &r->ack;
	const uint8_t *codes;
	size_t count_off;
	struct session *s;
	int rc;

	if (rec_subscribe_decode(&x, p, len))
		return ROUTER_BAD;
	if ((rc = router_conn_session(r, worker, x.conn, &s)) != ROUTER_OK)
		return rc;

	count_off = rec_suback_begin(ack, &(struct rec_suback){ .conn = x.conn,
							      .packet_id = x.packet_id });
	for (it = x.filters; rec_subscribe_next(&it, &sub);) {
		rec_suback_add(ack, router_subscribe_code(r, s, (const char *)sub.filter.p,
							  sub.filter.len, sub.qos, x.sub_id));
	}
	rec_suback_end(ack, count_off, (uint16_t)x.filters.n);
	router_emit(r, worker, REC_SUBACK, ack);
	if (ack->oom)
		return ROUTER_OK;

	/*
	 * Retained messages after the SUBACK, for every filter granted, sent
	 * by router_send_retained() as the ring takes them. A filter repeated
	 * in the packet is one subscription at its last QoS, and one walk.
	 */
	codes = rec_suback_codes(ack, count_off);
	for (it = x.filters; rec_subscribe_next(&it, &sub); codes++) {
		struct session_sub *held;

		if (*codes == ROUTER_SUBACK_FAILURE)
			continue;
		HASH_FIND(hh, s->subs, sub.filter.p, sub.filter.len, held);
		if (held && router_retain_handling_sends(held))
			router_cursor_start(r, s, held);
		if (held)
			held->fresh = false;
	}
	return ROUTER_OK;
}

static int router_on_unsubscribe(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_unsubscribe x;
	struct rec_str filter;
	struct session *s;
	size_t count_off;
	uint16_t n;
	int rc;

	if (rec_unsubscribe_decode(&x, p, len))
		return ROUTER_BAD;
	if ((rc = router_conn_session(r, worker, x.conn, &s)) != ROUTER_OK)
		return rc;
	count_off = rec_unsuback_begin(&r->ack, &(struct rec_unsuback){ .conn = x.conn,
								      .packet_id = x.packet_id });
	n = (uint16_t)x.filters.n;
	while (rec_unsubscribe_next(&x.filters, &filter))
		rec_suback_add(&r->ack, router_unsubscribe_one(r, s, (const char *)filter.p,
							       filter.len) ?
			       MQTT5_RC_SUCCESS : MQTT5_RC_NO_SUBSCRIPTION_EXISTED);
	rec_suback_end(&r->ack, count_off, n);
	router_emit(r, worker, REC_UNSUBACK, &r->ack);
	return ROUTER_OK;
}

/* Under an ACL: may the session on conn, one of worker's, publish m? */
static bool router_publisher_may(struct router *r, unsigned worker, conn_id_t conn,
				 const struct router_msg *m)
{
	struct session *s = NULL;

	if (router_conn_session(r, worker, conn, &s) == ROUTER_OK &&
	    router_acl_allows(r, s, m->topic, m->topic_len, ACL_WRITE))
		return true;
	log_debug("router: PUBLISH to '%.*s' from %s refused by the ACL", (int)m->topic_len,
		  m->topic, s ? s->client_id : "a connection without a session");
	return false;
}

static int router_on_publish(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_publish x;
	struct router_match match;
	struct router_msg m;
	struct session *from;

	if (rec_publish_decode(&x, p, len) || x.qos > 2 ||
	    (x.flags & ~(REC_PUB_RETAIN | REC_PUB_ASK | REC_PUB_PROPS | REC_PUB_EXPIRY)) ||
	    !router_props_valid(&x.props))
		return ROUTER_BAD;
	m = (struct router_msg){
		.qos = x.qos,
		.retain = x.flags & REC_PUB_RETAIN,
		.topic = (const char *)x.topic.p,
		.topic_len = x.topic.len,
		.payload = x.payload.p,
		.payload_len = x.payload.len,
		.props = x.props.p,
		.props_len = x.props.len,
		.expires_at = x.expires_at,
	};
	if (!topic_name_valid(m.topic, m.topic_len, 0, 0))
		return ROUTER_BAD;
	/* For no local: who published it (none when the connection is not known). */
	if (router_conn_session(r, worker, x.conn, &from) == ROUTER_OK)
		m.from = from;
	/* The publisher matters to the ACL alone: without one, no test beyond this. */
	if ((r->acl || r->grants_required) && !router_publisher_may(r, worker, x.conn, &m)) {
		/* Not routed, retained or queued; the topic stays with the router for this worker. */
		if (x.flags & REC_PUB_ASK)
			router_answer_route(r, worker, x.ask, &m, NULL);
		return ROUTER_OK;
	}
	if (r->shares)
		m.from = router_find_conn(r, x.conn);
	match = router_publish(r, &m);
	if (x.flags & REC_PUB_ASK)
		router_answer_route(r, worker, x.ask, &m, &match);
	return ROUTER_OK;
}

/*
 * A message a worker hands back without a copy here was kept there as it
 * went to an MQTT 5 client: its subscription identifiers in its property
 * block (props_with_sub_ids()). They come out into ids, the rest of the
 * block into *own (malloc'd, NULL when nothing was taken out) and
 * *props. -1: a block that does not decode, or more identifiers than
 * REC_TARGET_SUB_IDS_MAX; -2: out of memory.
 */
static int router_props_take_sub_ids(struct rec_bytes *props, uint8_t **own,
				     struct router_sub_ids *ids)
{
	struct mqtt5_props out;
	struct mqtt5_prop_iter it;
	struct mqtt5_prop prop;
	const uint8_t *at;
	size_t used, body = 0, hdr;
	uint8_t *buf;

	ids->n = 0;
	*own = NULL;
	if (props->len == 0)
		return 0;
	if (mqtt5_props_decode(props->p, props->len, MQTT_PUBLISH, &out, &used) != MQTT_OK ||
	    used != props->len)
		return -1;
	if (!mqtt5_props_has(&out, MQTT5_PROP_SUB_ID))
		return 0;
	/* The body shrinks, so its length field is no longer: room for the longest. */
	if (!(buf = malloc(4 + (size_t)out.raw_len)))
		return -2;
	mqtt5_prop_iter_init(&it, &out);
	for (at = it.p; mqtt5_prop_next(&it, &prop); at = it.p) {
		if (prop.id != MQTT5_PROP_SUB_ID) {
			memcpy(buf + 4 + body, at, (size_t)(it.p - at));
			body += (size_t)(it.p - at);
		} else if (ids->n == REC_TARGET_SUB_IDS_MAX) {
			free(buf);
			return -1;
		} else {
			ids->id[ids->n++] = prop.num;
		}
	}
	*own = buf;
	*props = (struct rec_bytes){ 0 };
	if (body) {
		hdr = mqtt_varint_size((uint32_t)body);
		mqtt_varint_encode(buf + 4 - hdr, (uint32_t)body);
		*props = (struct rec_bytes){ buf + 4 - hdr, (uint32_t)(hdr + body) };
	}
	return 0;
}

/* A well-formed REC_SESSION_MSG, its property block checked: to its session. */
static int router_session_msg_take(struct router *r, const struct rec_session_msg *x)
{
	const struct router_msg m = {
		.qos = x->qos,
		.retain = x->retain,
		.topic = (const char *)x->topic.p,
		.topic_len = x->topic.len,
		.payload = x->payload.p,
		.payload_len = x->payload.len,
		.props = x->props.p,
		.props_len = x->props.len,
		.expires_at = x->expires_at,
		.n_sub_ids = (uint8_t)x->sub_ids.n,
		.sub_ids = x->sub_ids.p,
	};
	struct session *s;

	/* An unfinished exchange needs QoS >= 1 (PUBREL: 2); anything to publish needs a topic. */
	if ((x->state != MSG_QUEUED && m.qos == 0) || (x->state == MSG_PUBREL && m.qos != 2))
		return ROUTER_BAD;
	if (x->state != MSG_PUBREL && !topic_name_valid(m.topic, m.topic_len, 0, 0))
		return ROUTER_BAD;

	s = router_find_sid(r, x->sid);
	if (!s) {
		log_debug("router: stored message for gone session %u dropped", x->sid);
		return ROUTER_OK;
	}
	/*
	 * Provenance: only what one of the session's own connections (the
	 * current or last one, or the one a takeover replaced) owes it. A
	 * worker cannot queue messages for sessions it never held.
	 */
	if (x->conn != s->conn && x->conn != s->prev_conn)
		return ROUTER_NOCONN;
	if (x->copy) {
		/* The router holds this one already, with its state as last reported. */
		return ROUTER_OK;
	}
	if (x->state != MSG_PUBREL && !router_acl_allows(r, s, m.topic, m.topic_len, ACL_READ)) {
		log_debug("router: session %u: message on '%.*s' dropped: the ACL does not let it read there",
			  s->sid, (int)m.topic_len, m.topic);
		return ROUTER_OK;
	}
	if (s->online && s->conn == x->conn) {
		/* Owed by the session's own closing connection (REC_CLOSE follows). */
		session_enqueue_one(r, s, true, x->packet_id, x->state, &m);
	} else if (!s->online || s->pending) {
		if (m.qos > 0)
			session_enqueue_one(r, s, false, x->packet_id, x->state, &m);
	} else {
		/*
		 * A delivery or stored message that reached a connection the session
		 * has since left: on to the current one as it is, as a resume would.
		 * A PUBREL carries no message, so it cannot become a new delivery;
		 * the worker turns an in-flight one whose id is taken into one.
		 */
		struct msg_body *body = NULL;

		router_send_session_msg(r, s->conn, s->sid,
					session_copy_new(r, s, x->packet_id, x->state, &m, &body, false),
					x->packet_id, x->state, &m);
		msg_body_discard(body);
	}
	return ROUTER_OK;
}

/* Identifiers come as the record's list or in the block, not both (the block then has none left). */
static int router_on_session_msg(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_session_msg x;
	struct router_sub_ids held = { 0 };
	uint8_t *own = NULL;
	int rc;

	if (rec_session_msg_decode(&x, p, len) || !router_conn_ok(r, worker, x.conn) ||
	    x.state > MSG_PUBREL || x.qos > 2 || x.retain > 1 ||
	    !router_sub_ids_valid(x.sub_ids.n, x.sub_ids.p))
		return ROUTER_BAD;
	rc = x.sub_ids.n ? 0 : router_props_take_sub_ids(&x.props, &own, &held);
	if (rc == -2) {
		log_error("router: out of memory: a message handed back for session %u dropped", x.sid);
		return ROUTER_OK;
	}
	if (rc == 0 && held.n && !router_sub_ids_valid(held.n, held.id))
		rc = -1;
	if (rc == 0 && held.n)
		x.sub_ids = (struct rec_iter){ (const uint8_t *)held.id, held.n };
	rc = rc == 0 && router_props_valid(&x.props) ? router_session_msg_take(r, &x) : ROUTER_BAD;
	free(own);
	return rc;
}

/* A persistent session's inbound QoS 2 id was taken (PUBLISH) or released (PUBREL). */
static int router_on_qos2_in(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_qos2_in x;
	struct session *s;
	uint16_t i;

	if (rec_qos2_in_decode(&x, p, len) || !router_conn_ok(r, worker, x.conn) ||
	    !x.packet_id || x.held > 1)
		return ROUTER_BAD;
	s = router_find_sid(r, x.sid);
	if (!s || !s->online || s->conn != x.conn || s->clean)
		return ROUTER_OK;            /* gone meanwhile: its CLOSE carried the ids */
	for (i = 0; i < s->n_qos2_ids && s->qos2_ids[i] != x.packet_id; i++)
		;
	if (x.held && i == s->n_qos2_ids) {
		uint16_t *grown;

		if (s->n_qos2_ids == UINT16_MAX)
			return ROUTER_BAD;
		grown = realloc(s->qos2_ids, ((size_t)s->n_qos2_ids + 1) * sizeof(*grown));
		if (!grown) {
			log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
				   "out of memory: inbound QoS 2 id %u not kept against a worker crash",
				   x.packet_id);
			return ROUTER_OK;
		}
		s->qos2_ids = grown;
		s->qos2_ids[s->n_qos2_ids++] = x.packet_id;
	} else if (!x.held && i < s->n_qos2_ids) {
		s->qos2_ids[i] = s->qos2_ids[--s->n_qos2_ids];
	} else {
		return ROUTER_OK;
	}
	session_persist(r, s);
	return ROUTER_OK;
}

/* A worker's report on a message the router holds a copy of. */
static int router_on_msg_state(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_msg_state x;
	struct session_msg *q, *prev;
	struct session *s;

	if (rec_msg_state_decode(&x, p, len) || !router_conn_ok(r, worker, x.conn) || !x.copy ||
	    x.state < MSG_INFLIGHT || x.state > MSG_DONE || (x.state != MSG_DONE && !x.packet_id))
		return ROUTER_BAD;
	s = router_find_sid(r, x.sid);
	/* Reports come before the connection's REC_CLOSE: a copy released since is not theirs. */
	if (!s || !s->online || s->conn != x.conn || !(q = session_copy_find(s, x.copy, &prev))) {
		log_debug("router: state of message %llu of gone session %u ignored",
			  (unsigned long long)x.copy, x.sid);
		return ROUTER_OK;
	}
	if (x.state == MSG_DONE) {
		struct session_msg *next = q->next, *ahead = q->ahead;

		session_msg_drop(r, s, q, prev);
		/*
		 * A connection finishes its messages mostly in order, often a
		 * run of them in one read: the next reports are most likely for
		 * the copies after this one, made long ago and cold. Have the
		 * one SESSION_MSG_AHEAD on on its way (its hint may name a copy
		 * since freed: a prefetch never faults), and the next one's
		 * body (that entry was, SESSION_MSG_AHEAD reports ago).
		 */
		__builtin_prefetch(ahead);
		if (next)
			__builtin_prefetch(next->body);
		return ROUTER_OK;
	}
	if (x.state == MSG_PUBREL && q->qos != 2)
		return ROUTER_BAD;
	q->packet_id = x.packet_id;
	q->state = x.state;
	session_msg_persist(r, s, q);
	return ROUTER_OK;
}

static int router_on_close(struct router *r, unsigned worker, const void *p, size_t len)
{
	struct rec_close x;
	struct session *s;

	if (rec_close_decode(&x, p, len) || !router_conn_ok(r, worker, x.conn) ||
	    (x.publish_will & ~(1 | REC_CLOSE_END_SESSION)))
		return ROUTER_BAD;
	s = router_find_conn(r, x.conn);
	if (s) {
		/* A DISCONNECT may change the interval, never make a session that ends outlive it. */
		if (!s->clean)
			s->expiry = router_expiry_cap(r, x.session_expiry);
		if ((x.publish_will & REC_CLOSE_END_SESSION) || s->expiry == 0)
			s->clean = true;
		router_close(r, s, x.publish_will & 1, &x.ids);
		return ROUTER_OK;
	}
	s = router_find_pending(r, x.conn);
	if (s) {
		/* Gone before the connection it takes over closed: never accepted, no will. */
		log_client(LOG_LVL_INFO, s->client_id, cx_remote(s->pending),
			   "connection closed while waiting for its session");
		session_pending_drop(r, s);
		session_persist(r, s);
		return ROUTER_OK;
	}
	if (router_kicked_take(r, x.conn))
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

typedef int (*router_handler_fn)(struct router *r, unsigned worker, const void *p, size_t len);

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
	int rc;

	if (worker >= r->nworkers || type >= REC_TYPE_MAX || !router_handlers[type])
		rc = ROUTER_BAD;
	else
		rc = router_handlers[type](r, worker, payload, len);
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
