/*
 * worker_records.c - a worker's ring records, to the router and from it.
 *
 * To the router: the producer end of w2r[i] and the backlog of records
 * that did not fit (kept in order until the router makes room; its size
 * throttles the clients, see worker.c), committed once per loop turn.
 * From the router: the consumer end of r2w[i], each record handled
 * (CONNACK, SUBACK, UNSUBACK, DELIVER, SESSION_MSG, KICK, ROUTE), and the
 * deliveries they and local routes make to this worker's connections:
 * QoS 0 straight to the output, QoS 1/2 through the connection's QoS
 * state (qos.h), whose verdicts this carries out (the PUBLISH sent, the
 * progress of a message the router holds a copy of reported to it).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "worker_int.h"

#define RING_BATCH 1024          /* router records handled per loop turn */

/* --- records to the router ---------------------------------------------- */

void push_recw(struct worker *w, uint16_t type)
{
	if (w->rw.oom) {
		log_error("out of memory building a %s record; dropped", rec_type_name(type));
		return;
	}
	if (ringout_put(&w->out, type, w->rw.buf, (uint32_t)w->rw.len) < 0)
		log_error("a %s record of %zu bytes for the router: %s; dropped",
			  rec_type_name(type), w->rw.len,
			  errno == EMSGSIZE ? "larger than the ring" : strerror(errno));
}

/*
 * Held records first, then what was reserved: published with one wake-up
 * at most, which also answers a router waiting for room that drain_ring()
 * gave back.
 */
void ring_commit(struct worker *w)
{
	bool wake = w->router_room_due;

	w->router_room_due = false;
	ringout_flush(&w->out, NULL, NULL);
	if (ringout_commit(&w->out))
		wake = true;
	if (wake)
		eventfd_wake(w->env->router_efd);
}

/* conn: the publisher's; ask: 0, or the route request this message carries (routes.h). */
void push_publish(struct worker *w, conn_id_t conn, const struct mqtt_publish *pub, uint64_t ask,
		  struct msg_v5 x5)
{
	struct rec_publish x = {
		.qos = pub->qos,
		.flags = (pub->retain ? REC_PUB_RETAIN : 0) | (ask ? REC_PUB_ASK : 0) |
			 (x5.props.len ? REC_PUB_PROPS : 0) | (x5.expires_at ? REC_PUB_EXPIRY : 0),
		.conn = conn,
		.topic = { pub->topic.p, pub->topic.len },
		.payload = { pub->payload, pub->payload_len },
		.props = x5.props,
		.expires_at = x5.expires_at,
		.ask = ask,
	};
	uint32_t len = (uint32_t)rec_publish_size(&x);
	uint8_t *dst;

	if ((dst = ringout_reserve(&w->out, REC_PUBLISH, len)) != NULL) {
		/* The hot path: straight into the ring, no staging copy. */
		rec_publish_put(dst, &x);
		return;
	}
	rec_publish_encode(&w->rw, &x);
	push_recw(w, REC_PUBLISH);
}

/* A message with no copy at the router (copy 0), handed to it for session sid. */
static void push_session_msg(struct worker *w, conn_id_t conn, uint32_t sid, uint16_t pid,
			     uint8_t state, uint8_t qos, bool retain, struct rec_str topic,
			     struct rec_bytes payload, struct msg_v5 x5, struct rec_iter sub_ids)
{
	struct rec_session_msg x = {
		.conn = conn, .sid = sid, .copy = 0, .packet_id = pid, .state = state,
		.qos = qos, .retain = retain, .topic = topic, .payload = payload,
		.props = x5.props, .expires_at = x5.expires_at, .sub_ids = sub_ids,
	};

	rec_session_msg_encode(&w->rw, &x);
	push_recw(w, REC_SESSION_MSG);
}

/*
 * Tell the router how the exchange of a message it holds a copy of moved
 * on, so that a crash of this worker loses none of it (rec.h).
 */
void report_state(struct worker *w, const struct conn *c, uint64_t copy, uint16_t pid,
		  uint8_t state)
{
	struct rec_msg_state x = {
		.conn = c->id, .sid = c->sid, .copy = copy, .packet_id = pid, .state = state,
	};

	if (copy == 0)
		return;
	rec_msg_state_encode(&w->rw, &x);
	push_recw(w, REC_MSG_STATE);
}

/*
 * A persistent session's inbound QoS 2 ids are also kept by the router, so
 * that a PUBLISH resent after this worker's death is not routed twice.
 */
void report_qos2_in(struct worker *w, const struct conn *c, uint16_t pid, bool held)
{
	struct rec_qos2_in x = { .conn = c->id, .sid = c->sid, .packet_id = pid, .held = held };

	if (c->clean)
		return;
	rec_qos2_in_encode(&w->rw, &x);
	push_recw(w, REC_QOS2_IN);
}

/* A held message's topic and payload as records carry them; empty for none (PUBREL sent). */
static struct rec_str held_topic(const struct qmsg *m)
{
	return m ? (struct rec_str){ m->data, m->topic_len } : (struct rec_str){ 0 };
}

static struct rec_bytes held_payload(const struct qmsg *m)
{
	return m ? (struct rec_bytes){ m->data + m->topic_len, m->payload_len }
		 : (struct rec_bytes){ 0 };
}

static struct msg_v5 held_v5(const struct qmsg *m)
{
	return m ? (struct msg_v5){ { m->data + m->topic_len + m->payload_len, m->props_len },
				    m->expires_at }
		 : (struct msg_v5){ 0 };
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
		const struct inflight *f = &q->inflight[i];
		const struct qmsg *m = f->msg;   /* NULL once PUBREL was sent: nothing but the id */

		if (f->copy == 0)
			push_session_msg(w, c->id, c->sid, f->packet_id, f->state, f->qos,
					 m ? m->retain : false, held_topic(m), held_payload(m), held_v5(m),
					 (struct rec_iter){ 0 });
	}
	for (uint32_t i = 0; i < q->n_pending; i++) {
		const struct pending *p = qos_pending_at(q, i);

		if (p->copy == 0)
			push_session_msg(w, c->id, c->sid, 0, MSG_QUEUED, p->qos, p->msg->retain,
					 held_topic(p->msg), held_payload(p->msg), held_v5(p->msg),
					 (struct rec_iter){ 0 });
	}
}

/*
 * REC_CLOSE for a connection the router knows of: a persistent session
 * first hands back what it still owes its client, and says which inbound
 * QoS 2 ids still await PUBREL.
 */
void push_close(struct worker *w, struct conn *c, bool publish_will)
{
	const struct conn_v5 *v = CONN_V5(w, c);
	struct rec_close x = {
		.conn = c->id,
		.publish_will = (uint8_t)(publish_will |
					  (v && v->end_session ? REC_CLOSE_END_SESSION : 0)),
		.session_expiry = v ? v->session_expiry : c->clean ? 0 : REC_EXPIRY_NEVER,
	};
	uint16_t n = 0;

	if (c->state == CS_ACTIVE && !c->clean)
		conn_hand_back_state(w, c);
	if (!c->clean && c->qos != NULL)
		n = (uint16_t)MIN(c->qos->n_qos2_in, 65535u);
	rec_close_encode(&w->rw, &x, n ? c->qos->qos2_in : NULL, n);
	push_recw(w, REC_CLOSE);
}

/* --- deliveries to this worker's connections ----------------------------- */

/* The client's receive maximum, which narrows max_inflight (qos.h); 0: none. */
static uint16_t conn_window(const struct worker *w, const struct conn *c)
{
	const struct conn_v5 *v = CONN_V5(w, c);

	return v != NULL ? v->receive_max : 0;
}

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

/*
 * A message larger than the client's maximum packet size: not sent, its
 * exchange finished as if it had been [MQTT-3.1.2-25].
 */
static void too_big(struct worker *w, struct conn *c, uint64_t copy)
{
	log_client(LOG_LVL_DEBUG, conn_client_id(c), c->remote,
		   "a message above the client's maximum packet size; not sent");
	report_state(w, c, copy, 0, MSG_DONE);
}

/*
 * A message the QoS state put in flight goes out (dup: a resend under the
 * id the router knows). The packet id matters to the router only for a
 * session that outlives the connection, which resends under it: a clean
 * session's copy (a shared subscription's) is handed to another member
 * whatever its id, so the sent step costs it no record and no store write.
 */
static void send_inflight(struct worker *w, struct conn *c, const struct inflight *f, bool dup)
{
	const struct qmsg *m = f->msg;

	send_publish(w, c, dup, f->qos, m->retain, m->data, m->topic_len, f->packet_id,
		     m->data + m->topic_len, m->payload_len, held_v5(m));
	if (!dup && !c->clean)
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
	enum qos_verdict v = qos_offer(&c->qos, &c->next_pid, w->cfg, conn_window(w, c), m, qos, copy, &sent);

	act_on_verdict(w, c, v, sent, qos, copy);
}

/*
 * Move queued messages into the window as acknowledgements free it; one
 * whose message expiry passed while it waited goes instead, as done.
 */
void pending_pump(struct worker *w, struct conn *c)
{
	uint64_t now = c->qos->n_pending ? wall_clock_ms() : 0, copy;
	struct inflight *f;

	for (;;) {
		if (qos_drop_expired(c->qos, now, &copy)) {
			report_state(w, c, copy, 0, MSG_DONE);
			continue;
		}
		if ((f = qos_pump(c->qos, &c->next_pid, w->cfg, conn_window(w, c))) == NULL)
			break;
		send_inflight(w, c, f, false);
	}
	if (c->qos->n_pending == 0)
		c->drop_logged = false;
	qos_trim(&c->qos);
}

/* One message and what its targets share: the QoS 1/2 copy, made on first need. */
struct delivery {
	struct rec_str topic;
	struct rec_bytes payload;
	struct msg_v5 x5;
	uint8_t retain;
	struct qmsg *m;
};

/* Deliver d to connection c at QoS qos (copy: the router's, or 0). */
static void deliver_to(struct worker *w, struct conn *c, struct delivery *d, uint8_t qos,
		       uint64_t copy)
{
	if (msg_v5_expired(d->x5)) {
		report_state(w, c, copy, 0, MSG_DONE);   /* its message expiry passed: not sent */
		return;
	}
	if (!publish_fits(w, c, d->topic.len, d->payload.len, d->x5, qos)) {
		too_big(w, c, copy);
		return;
	}
	if (qos == 0) {
		if (buf_held(c->out) > (size_t)w->cfg->max_output_bytes) {
			if (!c->drop_logged)
				log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
					   "slow reader: dropping QoS 0 messages");
			c->drop_logged = true;
			return;
		}
		send_publish(w, c, false, 0, d->retain, d->topic.p, d->topic.len, 0, d->payload.p,
			     d->payload.len, d->x5);
		return;
	}
	if (d->m == NULL &&
	    (d->m = qmsg_new(d->topic.p, d->topic.len, d->payload.p, d->payload.len,
			     d->x5.props.p, d->x5.props.len, d->retain)) == NULL) {
		log_error("out of memory for a QoS %u delivery; dropped", qos);
		report_state(w, c, copy, 0, MSG_DONE);
		return;
	}
	d->m->expires_at = d->x5.expires_at;
	deliver_qos(w, c, d->m, qos > 2 ? 2 : qos, copy);
}

static void delivery_done(struct delivery *d)
{
	qmsg_discard(d->m);
}

/*
 * props, then a subscription identifier property for each of t's, as one
 * block in w->sub_id_props. False: an identifier no subscription can have
 * (the router's record is hostile input), or out of memory.
 */
static bool props_with_sub_ids(struct worker *w, struct rec_bytes props,
			       const struct rec_target *t, struct rec_bytes *out)
{
	size_t hdr = props_body_off(props), len = props.len - hdr;
	uint8_t *dst;

	dst = props_begin(&w->sub_id_props, len + (size_t)t->n_sub_ids * 5);
	if (dst == NULL)
		return false;
	if (len)
		memcpy(dst, props.p + hdr, len);
	for (unsigned i = 0; i < t->n_sub_ids; i++) {
		uint32_t id = rec_target_sub_id(t, i);

		if (id == 0 || id > MQTT5_SUB_ID_MAX)
			return false;
		dst[len++] = MQTT5_PROP_SUB_ID;
		len += mqtt_varint_encode(dst + len, id);
	}
	*out = props_end(&w->sub_id_props, len);
	return true;
}

/*
 * d to an MQTT 5 connection with the identifiers of the subscriptions it
 * matched [MQTT-3.3.4-3]: a PUBLISH (and a QoS 1/2 copy) of its own.
 */
static void deliver_with_sub_ids(struct worker *w, struct conn *c, const struct delivery *d,
				 const struct rec_target *t)
{
	struct delivery own = *d;

	own.m = NULL;
	if (!props_with_sub_ids(w, d->x5.props, t, &own.x5.props)) {
		log_client(LOG_LVL_ERROR, conn_client_id(c), c->remote,
			   "a delivery with a bad subscription identifier, or out of memory; dropped");
		report_state(w, c, t->copy, 0, MSG_DONE);
		return;
	}
	deliver_to(w, c, &own, t->qos, t->copy);
	delivery_done(&own);
}

/*
 * A message whose every target is a clean session on this worker: no
 * copy, no report, and a target gone since the route was answered is
 * simply skipped (its session ended with it).
 */
void deliver_local(struct worker *w, const struct route *rt,
		   const struct mqtt_publish *pub)
{
	struct delivery d = {
		.topic = { pub->topic.p, pub->topic.len },
		.payload = { pub->payload, pub->payload_len },
	};

	for (uint32_t i = 0; i < rt->n_targets; i++) {
		const struct route_target *t = &rt->targets[i];
		struct conn *c = conn_lookup(w, t->conn);

		if (c != NULL && c->state == CS_ACTIVE)
			deliver_to(w, c, &d, MIN(pub->qos, t->qos), 0);
	}
	delivery_done(&d);
}

/* --- records from the router -------------------------------------------- */

/*
 * One handler per record type. Each decodes its record whole before it
 * acts (rec.h) and returns -1 for a malformed one, which it dropped.
 */

static void bounce(struct worker *w, conn_id_t conn, uint32_t sid, uint64_t copy, uint16_t pid,
		   uint8_t state, uint8_t qos, bool retain, struct rec_str topic,
		   struct rec_bytes payload, struct msg_v5 x5, struct rec_iter sub_ids)
{
	/*
	 * The connection went away first: the router re-routes to the session
	 * (it holds a copy already, if copy != 0).
	 */
	if (qos > 0 && sid != 0 && copy == 0)
		push_session_msg(w, conn, sid, pid, state, qos, retain, topic, payload, x5, sub_ids);
}

static int on_connack(struct worker *w, const void *p, size_t len)
{
	struct rec_connack x;
	struct conn *c;
	uint16_t pid;

	if (rec_connack_decode(&x, p, len) < 0)
		return -1;
	c = conn_lookup(w, x.conn);
	if (c == NULL || c->state != CS_CONNECTING)
		return 0;
	while (rec_packet_id_next(&x.ids, &pid))
		if (qos_in_hold(&c->qos, pid) < 0)
			break;
	qos_trim(&c->qos);
	if (x.rc != MQTT_CONNACK_ACCEPTED) {
		send_connack(w, c, false, x.rc);
		c->state = CS_NEW;
		conn_close(w, c, false, "refused by the router");
		return 0;
	}
	c->sid = x.sid;
	c->state = CS_ACTIVE;
	connack_accepted(w, c, x.session_present);
	log_client(LOG_LVL_INFO, conn_client_id(c), c->remote, "connected (clean session %d%s)",
		   c->clean, x.session_present ? ", session resumed" : "");
	c->paused = false;
	if (c->in_off)
		conn_set_events(w, c);
	if (buf_held(c->in) > 0)
		conn_process_input(w, c);
	return 0;
}

/*
 * SUBACK, or an MQTT 5 UNSUBACK: the router's codes, each a 3.1.1 return
 * code or an MQTT 5 reason code. A 3.1.1 client is sent the failure code
 * for every reason code of failure (the MQTT 5 ones a worker chose for an
 * MQTT 5 connection, which a 3.1.1 one never has).
 */
static void send_suback(struct worker *w, struct conn *c, enum mqtt_type type, uint16_t pid,
			const uint8_t *codes, size_t n)
{
	uint8_t *out;

	if (conn_is_v5(c)) {
		if ((out = out_reserve(w, c, mqtt5_suback_size(n, NULL))) != NULL)
			mqtt5_encode_suback(out, type, pid, codes, n, NULL);
		return;
	}
	if ((out = out_reserve(w, c, mqtt_suback_size(n))) != NULL)
		mqtt_encode_suback(out, pid, codes, n);
}

static int on_suback(struct worker *w, const void *p, size_t len)
{
	struct rec_suback x;
	struct conn *c;

	if (rec_suback_decode(&x, p, len) < 0)
		return -1;
	c = conn_lookup(w, x.conn);
	if (x.codes.n == 0 || c == NULL || c->state != CS_ACTIVE)
		return 0;
	send_suback(w, c, MQTT_SUBACK, x.packet_id, x.codes.p, x.codes.n);
	return 0;
}

static int on_unsuback(struct worker *w, const void *p, size_t len)
{
	struct rec_unsuback x;
	struct conn *c;

	if (rec_unsuback_decode(&x, p, len) < 0)
		return -1;
	c = conn_lookup(w, x.conn);
	if (c == NULL || c->state != CS_ACTIVE)
		return 0;
	if (conn_is_v5(c) && x.codes.n > 0)
		send_suback(w, c, MQTT_UNSUBACK, x.packet_id, x.codes.p, x.codes.n);
	else
		send_ack(w, c, MQTT_UNSUBACK, x.packet_id);
	return 0;
}

static int on_deliver(struct worker *w, const void *p, size_t len)
{
	struct rec_deliver x;
	struct rec_target t;
	struct delivery d[2];        /* as the head says; with the retain flag (retain as published) */

	if (rec_deliver_decode(&x, p, len) < 0)
		return -1;
	/*
	 * x.qos, the publisher's, is not needed: each target's says what to
	 * send. Each made whole, not one copied from the other just written
	 * (a load of stores not yet done stalls).
	 */
	for (uint8_t i = 0; i < 2; i++)
		d[i] = (struct delivery){ .topic = x.topic, .payload = x.payload,
					  .x5 = { x.props, x.expires_at }, .retain = i | x.retain };
	while (rec_deliver_next(&x.targets, &t)) {
		struct conn *c = conn_lookup(w, t.conn);
		struct delivery *dt = &d[t.retain];

		if (c != NULL && c->state == CS_ACTIVE && t.n_sub_ids > 0 && conn_is_v5(c))
			deliver_with_sub_ids(w, c, dt, &t);
		else if (c != NULL && c->state == CS_ACTIVE)
			deliver_to(w, c, dt, t.qos, t.copy);
		else
			bounce(w, t.conn, t.sid, t.copy, 0, MSG_QUEUED, t.qos, dt->retain, dt->topic,
			       dt->payload, dt->x5, (struct rec_iter){ t.sub_ids, t.n_sub_ids });
	}
	delivery_done(&d[0]);
	delivery_done(&d[1]);
	return 0;
}

static int on_route(struct worker *w, const void *p, size_t len)
{
	struct rec_route x;
	struct rec_route_target t;
	uint32_t n = 0;

	if (rec_route_decode(&x, p, len) < 0)
		return -1;
	if (x.targets.n > w->cap_rt_scratch) {
		struct route_target *rt = reallocarray(w->rt_scratch, x.targets.n, sizeof(*rt));

		if (rt == NULL)
			return 0;    /* the topic stays with the router */
		w->rt_scratch = rt;
		w->cap_rt_scratch = x.targets.n;
	}
	while (rec_route_next(&x.targets, &t))
		w->rt_scratch[n++] = (struct route_target){ .conn = t.conn, .qos = t.qos };
	routes_answer(&w->routes, x.topic.p, x.topic.len, x.ask, x.gen,
		      atomic_load_explicit(&w->env->shm.router->route_gen, memory_order_acquire),
		      x.local != 0, w->rt_scratch, n);
	return 0;
}

static void resend_pubrel(struct worker *w, struct conn *c, uint16_t pid, uint64_t copy)
{
	if (qos_resume_pubrel(&c->qos, w->cfg, conn_window(w, c), pid, copy)) {
		send_ack(w, c, MQTT_PUBREL, pid);
		return;
	}
	log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
		   "no room to resend PUBREL %u; dropped", pid);
	report_state(w, c, copy, 0, MSG_DONE);
}

/* A stored message of a resumed session, resent as its state says (rec.h). */
static int on_session_msg(struct worker *w, const void *p, size_t len)
{
	struct rec_session_msg x;
	struct rec_target t = { 0 };
	struct conn *c;
	struct inflight *sent = NULL;
	enum qos_verdict v;
	struct qmsg *m;
	struct msg_v5 x5;

	if (rec_session_msg_decode(&x, p, len) < 0)
		return -1;
	if (x.qos > 2 || (x.qos == 0 && x.state != MSG_QUEUED))
		return 0;
	x5 = (struct msg_v5){ x.props, x.expires_at };
	c = conn_lookup(w, x.conn);
	if (c == NULL || c->state != CS_ACTIVE) {
		bounce(w, x.conn, x.sid, x.copy, x.packet_id, x.state, x.qos, x.retain, x.topic,
		       x.payload, x5, x.sub_ids);
		return 0;
	}
	/* Its subscription identifiers go to an MQTT 5 client, as a live delivery's [MQTT-3.3.4-3]. */
	t.n_sub_ids = (uint8_t)x.sub_ids.n;
	t.sub_ids = x.sub_ids.p;
	if (conn_is_v5(c) && t.n_sub_ids > 0 && x.state != MSG_PUBREL &&
	    !props_with_sub_ids(w, x.props, &t, &x5.props)) {
		log_client(LOG_LVL_ERROR, conn_client_id(c), c->remote,
			   "a stored message with a bad subscription identifier, or out of memory; dropped");
		report_state(w, c, x.copy, 0, MSG_DONE);
		return 0;
	}
	if (x.state == MSG_QUEUED && msg_v5_expired(x5)) {
		report_state(w, c, x.copy, 0, MSG_DONE);   /* expired while it waited: not sent */
		return 0;
	}
	if (x.state != MSG_PUBREL && !publish_fits(w, c, x.topic.len, x.payload.len, x5, x.qos)) {
		too_big(w, c, x.copy);
		return 0;
	}
	if (x.qos == 0) {
		/* Queued offline (queue_qos0_messages): sent once, nothing to keep. */
		send_publish(w, c, false, 0, x.retain, x.topic.p, x.topic.len, 0, x.payload.p,
			     x.payload.len, x5);
		return 0;
	}
	if (x.state == MSG_PUBREL) {
		resend_pubrel(w, c, x.packet_id, x.copy);
		return 0;
	}
	m = qmsg_new(x.topic.p, x.topic.len, x.payload.p, x.payload.len, x5.props.p, x5.props.len,
		     x.retain);
	if (m == NULL) {
		log_error("out of memory resending a stored message; dropped");
		report_state(w, c, x.copy, 0, MSG_DONE);
		return 0;
	}
	m->expires_at = x.expires_at;
	v = qos_resume(&c->qos, &c->next_pid, w->cfg, conn_window(w, c), m, x.qos, x.state, x.packet_id, x.copy,
		       &sent);
	act_on_verdict(w, c, v, sent, x.qos, x.copy);
	qmsg_discard(m);
	return 0;
}

static int on_kick(struct worker *w, const void *p, size_t len)
{
	struct rec_kick x;
	struct conn *c;

	if (rec_kick_decode(&x, p, len) < 0)
		return -1;
	c = conn_lookup(w, x.conn);
	if (c != NULL)
		conn_disconnect(w, c, MQTT5_RC_SESSION_TAKEN_OVER, true,
				"session taken over by a new connection");
	return 0;
}

void handle_record(struct worker *w, const struct shmring_rec *rec)
{
	const void *p = shmring_payload(rec);
	int rc;

	switch (rec->type) {
	case REC_CONNACK: rc = on_connack(w, p, rec->len); break;
	case REC_SUBACK: rc = on_suback(w, p, rec->len); break;
	case REC_UNSUBACK: rc = on_unsuback(w, p, rec->len); break;
	case REC_DELIVER: rc = on_deliver(w, p, rec->len); break;
	case REC_SESSION_MSG: rc = on_session_msg(w, p, rec->len); break;
	case REC_KICK: rc = on_kick(w, p, rec->len); break;
	case REC_ROUTE: rc = on_route(w, p, rec->len); break;
	default:
		log_warn("unexpected %s record from the router; ignored", rec_type_name(rec->type));
		return;
	}
	if (rc < 0)
		log_warn("malformed %s record from the router; dropped", rec_type_name(rec->type));
}

void drain_ring(struct worker *w)
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
	/* The wake-up, if due, goes with the turn's records (ring_commit, called next). */
	if (shmring_release(&w->cons))
		w->router_room_due = true;
}
