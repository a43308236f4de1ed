/*
 * qos.h - the MQTT QoS 1/2 state of one client connection, both directions.
 *
 * Outbound: packet ids, the in-flight window (messages sent and not yet
 * acknowledged, in the order sent) and the queue behind it, and the bytes
 * they hold. Inbound: the ids of QoS 2 messages received and awaiting
 * PUBREL. The limits are the configuration's, read at each call, so a
 * reload applies at once: max_inflight (the window, and the inbound ids),
 * max_inflight_bytes, max_queued_messages and max_queued_bytes.
 *
 * State only: no socket, ring or worker. Each call changes the state and
 * says what happened; the worker does what follows (sends the PUBLISH or
 * PUBREL, reports to the router, logs a drop). An entry's state is one of
 * rec.h's MSG_* values, which go to the router as they are.
 *
 * What only QoS 1/2 traffic needs is allocated on first use and freed once
 * nothing is held: a NULL struct conn_qos * is the empty state, so that an
 * idle connection carries one pointer for it. Calls that may allocate or
 * free it take a struct conn_qos **.
 */
#ifndef IOTD_QOS_H
#define IOTD_QOS_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* A QoS 1/2 message held until every client it went to has acknowledged it. */
struct qmsg {
	uint32_t refs;
	uint16_t topic_len;
	uint8_t retain;
	uint32_t payload_len;
	uint32_t props_len;          /* an MQTT 5 message's properties (rec.h, REC_PUB_PROPS); 0: none */
	uint64_t expires_at;         /* its message expiry, ms since the epoch (rec.h); 0: none */
	uint8_t data[];              /* topic, then payload, then properties */
};

/* copy: the router's id for its copy of the message (persistent sessions), or 0. */
struct inflight {
	uint16_t packet_id;
	uint8_t state;               /* MSG_INFLIGHT or MSG_PUBREL */
	uint8_t qos;
	struct qmsg *msg;            /* NULL once PUBREL was sent */
	uint64_t copy;
};

/* A delivery waiting for room in the in-flight window. */
struct pending {
	struct qmsg *msg;
	uint64_t copy;
	uint8_t qos;
};

struct conn_qos {
	struct inflight *inflight;   /* allocated while something is in flight or queued */
	/*
	 * The queue behind the window: a ring of cap_pending entries (a power
	 * of 2), oldest at pend_first. An array rather than a list: a long
	 * queue is pumped in order, and a list costs a cache miss per entry.
	 */
	struct pending *pend;
	uint16_t *qos2_in;           /* inbound QoS 2 ids awaiting PUBREL */
	size_t pending_bytes;        /* topic + payload of the queue's messages */
	size_t inflight_bytes;       /* ... and of those in flight (PUBREL stage: none) */
	uint32_t pend_first, n_pending, cap_pending;
	uint32_t n_qos2_in, cap_qos2_in;
	uint16_t n_inflight;
	uint16_t cap_inflight;       /* entries allocated: max_inflight when allocated (it may change since) */
};

static_assert(sizeof(struct conn_qos) <= 64, "struct conn_qos grew");

/*
 * Set when a block of TRIM_MIN_BYTES or more went back to the heap (a
 * message here, a buffer in the worker): glibc keeps freed memory for
 * reuse, so the worker's 1 s tick hands it back to the system and clears
 * this (process-wide, as the heap is).
 */
#define TRIM_MIN_BYTES 65536
extern bool heap_trim_wanted;

/*
 * A message with no reference yet; NULL when out of memory. Freed
 * messages of up to 512 bytes are kept (1 MiB at most, process-wide) for
 * the next ones: under load a worker frees one per acknowledgement and
 * makes one per delivery.
 */
struct qmsg *qmsg_new(const uint8_t *topic, uint16_t tlen, const uint8_t *payload,
		      uint32_t plen, const uint8_t *props, uint32_t props_len, bool retain);
void qmsg_unref(struct qmsg *m);
/* Free m if nothing took a reference to it (a delivery none of whose targets kept it). */
void qmsg_discard(struct qmsg *m);
/* Free the kept messages (at exit, so that a leak check sees none). */
void qmsg_spares_free(void);

/* What a message costs each connection holding it, against its byte limits. */
static inline size_t qmsg_bytes(const struct qmsg *m)
{
	return (size_t)m->topic_len + m->payload_len + m->props_len;
}

/* Entry i of the queue, 0 the oldest. */
static inline struct pending *qos_pending_at(const struct conn_qos *q, uint32_t i)
{
	return &q->pend[(q->pend_first + i) & (q->cap_pending - 1)];
}

enum qos_verdict {
	QOS_SEND,           /* *sent is in flight under a new packet id: send it */
	QOS_RESEND,         /* *sent is in flight again under the id it had: send it, DUP set */
	QOS_QUEUED,         /* behind the window: a later qos_pump() sends it */
	QOS_DROP_BYTES,     /* refused: max_inflight_bytes */
	QOS_DROP_QUEUE,     /* refused: the queue is full (or cannot grow) */
	QOS_NOMEM,          /* refused: no memory for the QoS state */
};

/*
 * The window of messages in flight is max_inflight, or 'window' when that
 * is lower and not 0 (an MQTT 5 client's receive maximum).
 *
 * A message for this connection at QoS qos (1 or 2); copy: the router's,
 * or 0. It goes in flight when nothing waits and the window has room,
 * else to the end of the queue. Past max_inflight_bytes it is refused,
 * unless the connection holds nothing (so that one larger than the limit
 * still goes out). Held, it takes a reference to m. New packet ids come
 * from *next_pid, which goes on rotating past the ids in use and is the
 * caller's to keep when the state is freed.
 */
enum qos_verdict qos_offer(struct conn_qos **qp, uint16_t *next_pid,
			   const struct iotd_config *cfg, uint16_t window, struct qmsg *m, uint8_t qos,
			   uint64_t copy, struct inflight **sent);

/*
 * A message a resumed session still owes its client, in the state the
 * router kept (rec.h). [MQTT-4.4.0-1]: one that was in flight goes again
 * under its packet id (QOS_RESEND) when that id is free, nothing is queued
 * and the window has room; anything else is a qos_offer().
 */
enum qos_verdict qos_resume(struct conn_qos **qp, uint16_t *next_pid,
			    const struct iotd_config *cfg, uint16_t window, struct qmsg *m, uint8_t qos,
			    uint8_t state, uint16_t pid, uint64_t copy, struct inflight **sent);

/*
 * A resumed session's QoS 2 exchange at its PUBREL stage, under its packet
 * id: true when it is in the window again (the caller sends PUBREL), false
 * when the id is 0 or in use or the window is full.
 */
bool qos_resume_pubrel(struct conn_qos **qp, const struct iotd_config *cfg, uint16_t window,
		       uint16_t pid, uint64_t copy);

/*
 * The oldest queued message moved into the window under a new packet id,
 * or NULL when nothing is queued or the window is full: called until NULL
 * as acknowledgements (or a raised max_inflight) make room. q: not NULL.
 */
struct inflight *qos_pump(struct conn_qos *q, uint16_t *next_pid, const struct iotd_config *cfg,
			  uint16_t window);

/*
 * The oldest queued message dropped when its message expiry is at or
 * before now (ms since the epoch): true, *copy its router copy id (the
 * caller reports it done). Called before each qos_pump(), so that a
 * message that expired while it waited behind the window is never sent.
 */
bool qos_drop_expired(struct conn_qos *q, uint64_t now, uint64_t *copy);

/*
 * PUBACK (a QoS 1 message in flight) and PUBCOMP (a QoS 2 exchange at
 * PUBREL): true when pid named one, now removed, *copy its router copy
 * id. The window then has room: the caller pumps and trims. Any other id
 * is ignored.
 */
bool qos_puback(struct conn_qos *q, uint16_t pid, uint64_t *copy);
bool qos_pubcomp(struct conn_qos *q, uint16_t pid, uint64_t *copy);

enum qos_pubrec {
	QOS_PUBREC_UNKNOWN,  /* no QoS 2 message under this id: ignored */
	QOS_PUBREC_RELEASED, /* now at PUBREL (its message and bytes let go): send PUBREL */
	QOS_PUBREC_AGAIN,    /* already at PUBREL: send PUBREL again */
};

/* PUBREC for pid; *copy: the exchange's router copy id. */
enum qos_pubrec qos_pubrec(struct conn_qos *q, uint16_t pid, uint64_t *copy);
/*
 * An MQTT 5 PUBREC with a reason code of failure (0x80 or more) for a QoS 2
 * message in flight: its exchange ends there, with no PUBREL [MQTT-4.3.3];
 * as qos_puback otherwise.
 */
bool qos_pubrec_refused(struct conn_qos *q, uint16_t pid, uint64_t *copy);

enum qos_in {
	QOS_IN_NEW,          /* held until its PUBREL: route the message */
	QOS_IN_HELD,         /* a resend of one held: not routed again */
	QOS_IN_FULL,         /* max_inflight ids held already */
	QOS_IN_NOMEM,
};

/*
 * An inbound QoS 2 PUBLISH under pid: exactly once, so a resent id still
 * awaiting PUBREL is not new. max_inflight bounds this direction too.
 */
enum qos_in qos_in_receive(struct conn_qos **qp, const struct iotd_config *cfg, uint16_t pid);

/* Hold pid as awaiting PUBREL (a resumed session's); -1 when out of memory. */
int qos_in_hold(struct conn_qos **qp, uint16_t pid);

/* PUBREL for pid: true when it was held (and is no longer). */
bool qos_in_release(struct conn_qos **qp, uint16_t pid);

/* Free the state when it holds nothing. */
void qos_trim(struct conn_qos **qp);

/* Everything, references to messages included; q may be NULL. */
void qos_free(struct conn_qos *q);

#endif
