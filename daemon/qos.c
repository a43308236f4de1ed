/*
 * qos.c - the MQTT QoS 1/2 state of one client connection (qos.h).
 *
 * Owns the packet ids in use, the in-flight window, the queue behind it,
 * the inbound QoS 2 ids awaiting PUBREL, the bytes they hold and the
 * references to the messages. Decides; the worker acts on what it decided.
 */
#include <stdlib.h>
#include <string.h>

#include "qos.h"
#include "rec.h"
#include "spares.h"

bool heap_trim_wanted;

/*
 * Messages freed lately, for the next ones: under load a worker frees a
 * message per PUBACK and makes one per delivery, each in bursts of
 * thousands (a turn's records, a read's acknowledgements), so the spares
 * must outlast a burst: QMSG_SPARE_BYTES at most (8,192 of 128 bytes).
 */
#define QMSG_SPARE_BYTES (1u << 20)
static struct spares qmsg_spares = { .max_bytes = QMSG_SPARE_BYTES };

/* What m's block was allocated for, as spares_alloc() was told. */
static size_t qmsg_alloc_size(size_t data_len)
{
	return sizeof(struct qmsg) + data_len;
}

struct qmsg *qmsg_new(const uint8_t *topic, uint16_t tlen, const uint8_t *payload,
		      uint32_t plen, const uint8_t *props, uint32_t props_len, bool retain)
{
	struct qmsg *m = spares_alloc(&qmsg_spares, qmsg_alloc_size((size_t)tlen + plen + props_len));

	if (m == NULL)
		return NULL;
	m->refs = 0;
	m->topic_len = tlen;
	m->retain = retain;
	m->payload_len = plen;
	m->props_len = props_len;
	m->expires_at = 0;
	memcpy(m->data, topic, tlen);
	if (plen)
		memcpy(m->data + tlen, payload, plen);
	if (props_len)
		memcpy(m->data + tlen + plen, props, props_len);
	return m;
}

void qmsg_discard(struct qmsg *m)
{
	if (m == NULL || m->refs > 0)
		return;
	if (qmsg_bytes(m) >= TRIM_MIN_BYTES)
		heap_trim_wanted = true;
	spares_free(&qmsg_spares, m, qmsg_alloc_size(qmsg_bytes(m)));
}

void qmsg_unref(struct qmsg *m)
{
	if (m != NULL && --m->refs == 0)
		qmsg_discard(m);
}

void qmsg_spares_free(void)
{
	spares_clear(&qmsg_spares);
}

/* Allocated on first use; NULL when out of memory. */
static struct conn_qos *qos_get(struct conn_qos **qp)
{
	if (*qp == NULL)
		*qp = calloc(1, sizeof(**qp));
	return *qp;
}

/* Give back what is no longer held: an idle connection keeps no QoS state. */
void qos_trim(struct conn_qos **qp)
{
	struct conn_qos *q = *qp;

	if (q == NULL || q->n_inflight > 0 || q->n_pending > 0)
		return;
	free(q->inflight);
	q->inflight = NULL;
	q->cap_inflight = 0;
	free(q->pend);
	q->pend = NULL;
	q->pend_first = q->cap_pending = 0;
	if (q->n_qos2_in > 0)
		return;
	free(q->qos2_in);
	free(q);
	*qp = NULL;
}

void qos_free(struct conn_qos *q)
{
	if (q == NULL)
		return;
	for (uint16_t i = 0; i < q->n_inflight; i++)
		qmsg_unref(q->inflight[i].msg);
	free(q->inflight);
	for (uint32_t i = 0; i < q->n_pending; i++)
		qmsg_unref(qos_pending_at(q, i)->msg);
	free(q->pend);
	free(q->qos2_in);
	free(q);
}

/* --- packet ids and the window ------------------------------------------ */

static bool pid_in_use(const struct conn_qos *q, uint16_t pid)
{
	for (uint16_t i = 0; i < q->n_inflight; i++)
		if (q->inflight[i].packet_id == pid)
			return true;
	return false;
}

static uint16_t pid_alloc(const struct conn_qos *q, uint16_t *next_pid)
{
	do {
		*next_pid = (uint16_t)(*next_pid + 1);
		if (*next_pid == 0)
			*next_pid = 1;
	} while (pid_in_use(q, *next_pid));
	return *next_pid;
}

/*
 * Room for one more message in flight. max_inflight may change under a
 * reload: the array grows to a raised value, and is left as it is for a
 * lowered one (only fewer entries are used), so n_inflight <= cap_inflight
 * always holds.
 */
static bool inflight_room(const struct iotd_config *cfg, uint16_t window, struct conn_qos *q)
{
	long max = cfg->max_inflight;
	struct inflight *p;

	if (q->n_inflight >= max || (window > 0 && q->n_inflight >= window))
		return false;
	if (q->n_inflight < q->cap_inflight)
		return true;
	p = realloc(q->inflight, (size_t)max * sizeof(*q->inflight));
	if (p == NULL)
		return false;
	q->inflight = p;
	q->cap_inflight = (uint16_t)max;
	return true;
}

/* The window's new last entry, holding the caller's reference to m. */
static struct inflight *inflight_add(struct conn_qos *q, struct qmsg *m, uint8_t qos,
				     uint16_t pid, uint64_t copy)
{
	struct inflight *f = &q->inflight[q->n_inflight++];

	f->packet_id = pid;
	f->state = MSG_INFLIGHT;
	f->qos = qos;
	f->msg = m;
	f->copy = copy;
	q->inflight_bytes += qmsg_bytes(m);
	return f;
}

static int inflight_find(const struct conn_qos *q, uint16_t pid)
{
	if (q == NULL)
		return -1;
	for (uint16_t i = 0; i < q->n_inflight; i++)
		if (q->inflight[i].packet_id == pid)
			return i;
	return -1;
}

/* The PUBREL stage holds no message: its bytes are given back at PUBREC. */
static void inflight_drop_msg(struct conn_qos *q, int i)
{
	struct qmsg *m = q->inflight[i].msg;

	if (m == NULL)
		return;
	q->inflight_bytes -= qmsg_bytes(m);
	qmsg_unref(m);
	q->inflight[i].msg = NULL;
}

static void inflight_remove(struct conn_qos *q, int i)
{
	inflight_drop_msg(q, i);
	/* Keep the order: a resumed session resends in the original order. */
	memmove(&q->inflight[i], &q->inflight[i + 1],
		(size_t)(q->n_inflight - i - 1) * sizeof(*q->inflight));
	q->n_inflight--;
}

/* --- the queue ----------------------------------------------------------- */

/* Double the queue's ring (oldest first in the new one); false when out of memory. */
static bool pending_grow(struct conn_qos *q)
{
	uint32_t cap = q->cap_pending ? q->cap_pending * 2 : 16;
	struct pending *ring;

	if (cap < q->cap_pending)
		return false;
	ring = reallocarray(NULL, cap, sizeof(*ring));
	if (ring == NULL)
		return false;
	for (uint32_t i = 0; i < q->n_pending; i++)
		ring[i] = *qos_pending_at(q, i);
	free(q->pend);
	q->pend = ring;
	q->pend_first = 0;
	q->cap_pending = cap;
	return true;
}

static bool pending_add(const struct iotd_config *cfg, struct conn_qos *q, struct qmsg *m,
			uint8_t qos, uint64_t copy)
{
	struct pending *p;
	size_t bytes = qmsg_bytes(m);

	if (q->n_pending >= (uint32_t)cfg->max_queued_messages ||
	    (cfg->max_queued_bytes > 0 && q->pending_bytes + bytes > (size_t)cfg->max_queued_bytes) ||
	    (q->n_pending == q->cap_pending && !pending_grow(q)))
		return false;
	p = qos_pending_at(q, q->n_pending);
	p->msg = m;
	p->copy = copy;
	p->qos = qos;
	m->refs++;
	q->n_pending++;
	q->pending_bytes += bytes;
	return true;
}

struct inflight *qos_pump(struct conn_qos *q, uint16_t *next_pid, const struct iotd_config *cfg,
			  uint16_t window)
{
	struct pending p;

	if (q->n_pending == 0 || !inflight_room(cfg, window, q))
		return NULL;
	p = *qos_pending_at(q, 0);
	q->pend_first = (q->pend_first + 1) & (q->cap_pending - 1);
	q->n_pending--;
	/* The messages are apart from the ring: ask for the next ones early. */
	if (q->n_pending > 2)
		__builtin_prefetch(qos_pending_at(q, 2)->msg);
	q->pending_bytes -= qmsg_bytes(p.msg);
	/* The queue's reference to the message becomes the window's. */
	return inflight_add(q, p.msg, p.qos, pid_alloc(q, next_pid), p.copy);
}

bool qos_drop_expired(struct conn_qos *q, uint64_t now, uint64_t *copy)
{
	struct pending p;

	if (q->n_pending == 0)
		return false;
	p = *qos_pending_at(q, 0);
	if (p.msg->expires_at == 0 || p.msg->expires_at > now)
		return false;
	q->pend_first = (q->pend_first + 1) & (q->cap_pending - 1);
	q->n_pending--;
	q->pending_bytes -= qmsg_bytes(p.msg);
	*copy = p.copy;
	qmsg_unref(p.msg);
	return true;
}

/* --- deliveries ---------------------------------------------------------- */

/*
 * max_inflight_bytes: what one connection holds of QoS 1/2 messages, in
 * flight and queued. A connection that holds none takes a message of any
 * size, so that one larger than the limit still goes out.
 */
static bool over_inflight_bytes(const struct iotd_config *cfg, const struct conn_qos *q,
				const struct qmsg *m)
{
	size_t held = q->inflight_bytes + q->pending_bytes;

	return held > 0 && held + qmsg_bytes(m) > (size_t)cfg->max_inflight_bytes;
}

enum qos_verdict qos_offer(struct conn_qos **qp, uint16_t *next_pid,
			   const struct iotd_config *cfg, uint16_t window, struct qmsg *m, uint8_t qos,
			   uint64_t copy, struct inflight **sent)
{
	struct conn_qos *q = qos_get(qp);
	enum qos_verdict v;

	if (q == NULL)
		return QOS_NOMEM;
	if (over_inflight_bytes(cfg, q, m)) {
		v = QOS_DROP_BYTES;
	} else if (q->n_pending == 0 && inflight_room(cfg, window, q)) {
		m->refs++;
		*sent = inflight_add(q, m, qos, pid_alloc(q, next_pid), copy);
		return QOS_SEND;
	} else {
		v = pending_add(cfg, q, m, qos, copy) ? QOS_QUEUED : QOS_DROP_QUEUE;
	}
	/* A refused delivery may leave the state it allocated empty. */
	qos_trim(qp);
	return v;
}

enum qos_verdict qos_resume(struct conn_qos **qp, uint16_t *next_pid,
			    const struct iotd_config *cfg, uint16_t window, struct qmsg *m, uint8_t qos,
			    uint8_t state, uint16_t pid, uint64_t copy, struct inflight **sent)
{
	struct conn_qos *q = qos_get(qp);

	if (q != NULL && state == MSG_INFLIGHT && pid != 0 && !pid_in_use(q, pid) &&
	    q->n_pending == 0 && inflight_room(cfg, window, q)) {
		m->refs++;
		*sent = inflight_add(q, m, qos, pid, copy);
		return QOS_RESEND;
	}
	return qos_offer(qp, next_pid, cfg, window, m, qos, copy, sent);
}

bool qos_resume_pubrel(struct conn_qos **qp, const struct iotd_config *cfg, uint16_t window,
		       uint16_t pid, uint64_t copy)
{
	struct conn_qos *q = qos_get(qp);

	if (q != NULL && pid != 0 && !pid_in_use(q, pid) && inflight_room(cfg, window, q)) {
		q->inflight[q->n_inflight++] = (struct inflight){ pid, MSG_PUBREL, 2, NULL, copy };
		return true;
	}
	qos_trim(qp);
	return false;
}

/* --- acknowledgements ---------------------------------------------------- */

/*
 * Once the exchange at window entry i ended, ask early for the messages
 * touched next, long cold by then: clients acknowledge in order, so the
 * next acknowledgement likely names the one now at i; and the pump
 * (qos_pump(), once the acknowledgements read are all handled) fills the
 * slot just freed with a queued one: the j-th slot free with the j-th
 * oldest (the window taken as max_inflight, its size when allocated).
 */
static void inflight_prefetch(const struct conn_qos *q, int i)
{
	uint32_t free_slots = (uint32_t)(q->cap_inflight - q->n_inflight);

	if (i < q->n_inflight && q->inflight[i].msg != NULL)
		__builtin_prefetch(q->inflight[i].msg);
	if (free_slots > 0 && free_slots <= q->n_pending)
		__builtin_prefetch(qos_pending_at(q, free_slots - 1)->msg);
}

/* The end of an exchange at QoS qos, expected at state. */
static bool inflight_complete(struct conn_qos *q, uint16_t pid, uint8_t qos, uint8_t state,
			      uint64_t *copy)
{
	int i = inflight_find(q, pid);

	if (i < 0 || q->inflight[i].qos != qos || q->inflight[i].state != state)
		return false;
	*copy = q->inflight[i].copy;
	inflight_remove(q, i);
	inflight_prefetch(q, i);
	return true;
}

bool qos_puback(struct conn_qos *q, uint16_t pid, uint64_t *copy)
{
	return inflight_complete(q, pid, 1, MSG_INFLIGHT, copy);
}

bool qos_pubcomp(struct conn_qos *q, uint16_t pid, uint64_t *copy)
{
	return inflight_complete(q, pid, 2, MSG_PUBREL, copy);
}

bool qos_pubrec_refused(struct conn_qos *q, uint16_t pid, uint64_t *copy)
{
	return inflight_complete(q, pid, 2, MSG_INFLIGHT, copy);
}

enum qos_pubrec qos_pubrec(struct conn_qos *q, uint16_t pid, uint64_t *copy)
{
	int i = inflight_find(q, pid);

	if (i < 0 || q->inflight[i].qos != 2)
		return QOS_PUBREC_UNKNOWN;
	*copy = q->inflight[i].copy;
	if (q->inflight[i].state != MSG_INFLIGHT)
		return QOS_PUBREC_AGAIN;
	inflight_drop_msg(q, i);
	q->inflight[i].state = MSG_PUBREL;
	return QOS_PUBREC_RELEASED;
}

/* --- inbound QoS 2 ------------------------------------------------------- */

static bool qos_in_has(const struct conn_qos *q, uint16_t pid)
{
	if (q == NULL)
		return false;
	for (uint32_t i = 0; i < q->n_qos2_in; i++)
		if (q->qos2_in[i] == pid)
			return true;
	return false;
}

int qos_in_hold(struct conn_qos **qp, uint16_t pid)
{
	struct conn_qos *q = qos_get(qp);

	if (q == NULL)
		return -1;
	if (q->n_qos2_in == q->cap_qos2_in) {
		uint32_t cap = q->cap_qos2_in ? q->cap_qos2_in * 2 : 8;
		uint16_t *p = realloc(q->qos2_in, cap * sizeof(*p));

		if (p == NULL)
			return -1;
		q->qos2_in = p;
		q->cap_qos2_in = cap;
	}
	q->qos2_in[q->n_qos2_in++] = pid;
	return 0;
}

enum qos_in qos_in_receive(struct conn_qos **qp, const struct iotd_config *cfg, uint16_t pid)
{
	if (qos_in_has(*qp, pid))
		return QOS_IN_HELD;
	/*
	 * As Mosquitto's max_inflight_messages: a client past it is closed (it
	 * resends what was not acknowledged when it comes back). Holding it
	 * back instead would deadlock: the PUBRELs that free the ids come on
	 * the same socket.
	 */
	if (*qp != NULL && (*qp)->n_qos2_in >= (uint32_t)cfg->max_inflight)
		return QOS_IN_FULL;
	if (qos_in_hold(qp, pid) < 0) {
		qos_trim(qp);
		return QOS_IN_NOMEM;
	}
	return QOS_IN_NEW;
}

bool qos_in_release(struct conn_qos **qp, uint16_t pid)
{
	struct conn_qos *q = *qp;

	if (q == NULL)
		return false;
	for (uint32_t i = 0; i < q->n_qos2_in; i++)
		if (q->qos2_in[i] == pid) {
			q->qos2_in[i] = q->qos2_in[--q->n_qos2_in];
			qos_trim(qp);
			return true;
		}
	return false;
}
