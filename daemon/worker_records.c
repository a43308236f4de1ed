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

void push_recw(struct worker *w, uint16_t type)
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

void ring_commit(struct worker *w)
{
	backlog_flush(w);
	if (w->need_commit) {
		w->need_commit = false;
		if (shmring_commit(&w->prod))
			eventfd_wake(w->env->router_efd);
	}
}

/* ask: 0, or the route request this message carries (routes.h). */
void push_publish(struct worker *w, const struct mqtt_publish *pub, uint64_t ask)
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
void report_state(struct worker *w, const struct conn *c, uint64_t copy, uint16_t pid,
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
 * A persistent session's inbound QoS 2 ids are also kept by the router, so
 * that a PUBLISH resent after this worker's death is not routed twice.
 */
void report_qos2_in(struct worker *w, const struct conn *c, uint16_t pid, bool held)
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

/*
 * REC_CLOSE for a connection the router knows of: a persistent session
 * first hands back what it still owes its client, and says which inbound
 * QoS 2 ids still await PUBREL.
 */
void push_close(struct worker *w, struct conn *c, bool publish_will)
{
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
}

/* --- deliveries to this worker's connections ----------------------------- */

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
void pending_pump(struct worker *w, struct conn *c)
{
	struct inflight *f;

	while ((f = qos_pump(c->qos, &c->next_pid, w->cfg)) != NULL)
		send_inflight(w, c, f, false);
	if (c->qos->n_pending == 0)
		c->drop_logged = false;
	qos_trim(&c->qos);
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

/*
 * A message whose every target is a clean session on this worker: no
 * copy, no report, and a target gone since the route was answered is
 * simply skipped (its session ended with it).
 */
void deliver_local(struct worker *w, const struct route *rt,
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

void handle_record(struct worker *w, const struct shmring_rec *rec)
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
	if (shmring_release(&w->cons))
		eventfd_wake(w->env->router_efd);
}
