/*
 * rec.h - data-plane records between workers and the router.
 *
 * Each record travels as one shmring record (type = enum rec_type). The
 * payload is a sequence of typed fields, written with recw_*() and read
 * back with recr_*(): integers little-endian as the host is (both ends
 * are the same binary), "str" = u16 length + bytes, "bytes" = u32 length
 * + bytes. A reader never reads past the end: an overrun sets err and
 * returns zeroes, and recr_end() fails unless the record was read to the
 * last byte. A malformed record from a peer is a bug in iotd: log and
 * drop it, never crash on it.
 *
 * Worker -> router (ring w2r[i]):
 *   REC_CONNECT      u64 conn, u8 clean, u16 keepalive, str client_id, str remote,
 *                    u8 will_flag, u8 will_qos, u8 will_retain, str will_topic,
 *                    bytes will_payload
 *                    (the worker has validated the CONNECT; the router owns
 *                    the session registry and answers REC_CONNACK)
 *   REC_SUBSCRIBE    u64 conn, u16 packet_id, u16 n, n x (str filter, u8 qos)
 *                    (qos 0x80: the worker found the filter invalid; the
 *                    router skips it and answers 0x80 for it)
 *   REC_UNSUBSCRIBE  u64 conn, u16 packet_id, u16 n, n x (str filter)
 *   REC_PUBLISH      u8 qos, u8 flags, str topic, bytes payload [, u64 ask]
 *                    (qos = the publisher's QoS; the PUBACK/PUBREC was or
 *                    will be sent by the worker. flags: REC_PUB_RETAIN;
 *                    REC_PUB_ASK: the u64 ask follows, the worker wants the
 *                    topic's route and the router answers with REC_ROUTE)
 *   REC_SESSION_MSG  u64 conn, u32 sid, u64 copy, u16 packet_id, u8 state, u8 qos,
 *                    u8 retain, str topic, bytes payload
 *                    (a QoS 1/2 message a closing persistent session still
 *                    owes its client, sent just before REC_CLOSE; or, with
 *                    state MSG_QUEUED, a delivery that reached a connection
 *                    which had already closed: the router re-routes it to
 *                    session sid. Only for messages with copy 0: the router
 *                    already holds the others)
 *   REC_MSG_STATE    u64 conn, u32 sid, u64 copy, u16 packet_id, u8 state
 *                    (the exchange of a message the router holds a copy of
 *                    moved on: MSG_INFLIGHT = sent as packet_id; MSG_PUBREL =
 *                    PUBREC received; MSG_DONE = acknowledged, or dropped by
 *                    the worker: the router forgets its copy)
 *   REC_QOS2_IN      u64 conn, u32 sid, u16 packet_id, u8 held
 *                    (persistent sessions only: an inbound QoS 2 id now
 *                    awaits PUBREL (held 1, sent just before the message's
 *                    REC_PUBLISH) or was released by PUBREL (held 0), so
 *                    that after a crash of the worker a resent PUBLISH is
 *                    not routed twice)
 *   REC_CLOSE        u64 conn, u8 publish_will, u16 n, n x u16 packet_id
 *                    (connection gone; the ids are inbound QoS 2 messages
 *                    awaiting PUBREL, kept for a persistent session)
 *   (A worker's death reaches the router on its control socket,
 *   IPC_WORKER_DOWN: no worker can write it.)
 *
 * Router -> worker (ring r2w[i]):
 *   REC_CONNACK      u64 conn, u32 sid, u8 rc, u8 session_present, u16 n, n x u16 packet_id
 *                    (ids: inbound QoS 2 awaiting PUBREL, from the stored session)
 *   REC_SUBACK       u64 conn, u16 packet_id, u16 n, n x u8 code
 *   REC_UNSUBACK     u64 conn, u16 packet_id
 *   REC_DELIVER      u8 qos, str topic, bytes payload, u8 retain, u32 n,
 *                    n x (u64 conn, u32 sid, u8 qos [, u64 copy])
 *                    (one record per worker per message: every target on
 *                    that worker; target qos = min(publish, granted);
 *                    retain=1 only for retained messages sent on subscribe.
 *                    qos | REC_TARGET_COPY: the router keeps a copy for this
 *                    persistent session until the worker reports MSG_DONE,
 *                    named by the u64 that follows)
 *   REC_SESSION_MSG  as above: a stored message for a resumed session; the
 *                    worker resends it (state MSG_INFLIGHT: same packet id,
 *                    DUP=1; MSG_PUBREL: PUBREL only; MSG_QUEUED: new delivery)
 *                    and reports its progress with REC_MSG_STATE (copy != 0)
 *
 * Why the copies: a worker's death (kill -9) takes its connections' QoS
 * state with it. The router keeps every QoS 1/2 message it hands a
 * persistent session's connection, with the exchange's state as last
 * reported, so a dead worker's sessions go offline with everything they
 * were still owed, packet ids included [MQTT-4.4.0-1].
 *   REC_KICK         u64 conn
 *                    (session taken over: close the connection, publish its will)
 *   REC_ROUTE        u64 ask, u64 gen, str topic, u8 local, u32 n, n x (u64 conn, u8 qos)
 *                    (the answer to a REC_PUBLISH with REC_PUB_ASK, written
 *                    after that message's deliveries: local 1 when every
 *                    session the topic matches, n of them (possibly none),
 *                    has a clean session online on this worker, with the
 *                    QoS granted to each; local 0 and n 0 otherwise. Valid
 *                    while shm_router.route_gen equals gen, see shm.h)
 */
#ifndef IOTD_REC_H
#define IOTD_REC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum rec_type {
	REC_CONNECT = 1,
	REC_SUBSCRIBE,
	REC_UNSUBSCRIBE,
	REC_PUBLISH,
	REC_SESSION_MSG,
	REC_CLOSE,
	REC_CONNACK,
	REC_SUBACK,
	REC_UNSUBACK,
	REC_DELIVER,
	REC_KICK,
	REC_MSG_STATE,
	REC_QOS2_IN,
	REC_ROUTE,
	REC_TYPE_MAX
};

enum msg_state {
	MSG_QUEUED = 0,     /* not yet sent: gets a packet id when sent */
	MSG_INFLIGHT = 1,   /* PUBLISH sent, awaiting PUBACK (QoS 1) or PUBREC (QoS 2) */
	MSG_PUBREL = 2,     /* PUBREL sent, awaiting PUBCOMP (QoS 2) */
	MSG_DONE = 3,       /* REC_MSG_STATE only: acknowledged or dropped */
};

/* REC_PUBLISH flags */
#define REC_PUB_RETAIN 0x01
#define REC_PUB_ASK 0x02

/* A REC_ROUTE target: u64 conn, u8 qos. */
#define REC_ROUTE_TARGET_BYTES 9

/* In a REC_DELIVER target's qos: a u64 copy id follows. */
#define REC_TARGET_COPY 0x80

/* Growable writer, process-local. */
struct recw {
	uint8_t *buf;
	size_t len, cap;
	bool oom;            /* an allocation failed: the record is incomplete */
};

void recw_init(struct recw *w);
void recw_free(struct recw *w);
void recw_reset(struct recw *w);
void recw_u8(struct recw *w, uint8_t v);
void recw_u16(struct recw *w, uint16_t v);
void recw_u32(struct recw *w, uint32_t v);
void recw_u64(struct recw *w, uint64_t v);
void recw_str(struct recw *w, const void *p, uint16_t len);
void recw_bytes(struct recw *w, const void *p, uint32_t len);
/* Overwrite a u16/u32 written earlier at offset off (for counts known late). */
void recw_patch_u16(struct recw *w, size_t off, uint16_t v);
void recw_patch_u32(struct recw *w, size_t off, uint32_t v);

/* Bounds-checked reader over one record payload. */
struct recr {
	const uint8_t *p, *end;
	bool err;
};

void recr_init(struct recr *r, const void *p, size_t len);
uint8_t recr_u8(struct recr *r);
uint16_t recr_u16(struct recr *r);
uint32_t recr_u32(struct recr *r);
uint64_t recr_u64(struct recr *r);
/* Points into the record; *len 0 and *p NULL on error. */
void recr_str(struct recr *r, const uint8_t **p, uint16_t *len);
void recr_bytes(struct recr *r, const uint8_t **p, uint32_t *len);
/* Bytes not read yet. */
static inline size_t recr_left(const struct recr *r)
{
	return r->err ? 0 : (size_t)(r->end - r->p);
}
/* 0 when no field overran and every byte was read; -1 otherwise. */
int recr_end(const struct recr *r);

const char *rec_type_name(int type);

#endif
