/*
 * rec.h - the data-plane records between workers and the router: for each
 * record type, what it means, its fields, and the one decoder and encoder
 * every reader and writer uses.
 *
 * Each record travels as one shmring record (type = enum rec_type). A
 * record's struct lists its fields in wire order and at their wire widths,
 * packed, integers in host order (both ends are the same binary, and
 * nothing is aligned). A struct rec_str is a u16 length + the bytes, a
 * struct rec_bytes a u32 length + the bytes, a struct rec_iter a count
 * (its width given at the field) + that many items. A comment at a field
 * says where the wire differs from the struct.
 *
 * Decoding, rec_X_decode(&x, p, len): 0 only if the whole record is
 * well-formed to its last byte, lists included, -1 otherwise (x is then
 * undefined). It copies nothing: strings and lists point into the record,
 * whose bytes must stay as they were (a shmring consumer reads a private
 * copy), and iterating a list that decoded cannot fail. It checks the
 * layout only: whether the values make sense is the reader's business. A
 * malformed record from a peer is a bug in iotd: log and drop it, never
 * crash on it.
 *
 * Encoding: rec_X_encode(w, &x) makes w hold exactly the record (it starts
 * afresh). A record whose list is built as its items come is written with
 * rec_X_begin(w, &x), which starts w with everything but the list (x's
 * list is not read) and returns the offset of the count, rec_X_add() per
 * item, and rec_X_end(w, that offset, the count). A failed allocation
 * leaves w->oom set: the record must not be sent. A REC_PUBLISH can also
 * be written straight into reserved ring memory (rec_publish_size(),
 * rec_publish_put()).
 */
#ifndef IOTD_REC_H
#define IOTD_REC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

const char *rec_type_name(int type);

/* ---- field writer and reader ------------------------------------------- */

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
/* n more bytes at the end, for the caller to fill; NULL (and oom) if they cannot be had. */
uint8_t *recw_reserve(struct recw *w, size_t n);
/* Overwrite a u16/u32 written earlier at offset off (for counts known late). */
void recw_patch_u16(struct recw *w, size_t off, uint16_t v);
void recw_patch_u32(struct recw *w, size_t off, uint32_t v);

/*
 * Bounds-checked reader over one record payload. A read never goes past
 * the end: an overrun sets err and returns zeroes, and after it every
 * read fails, so a decoder can read a whole record and check once.
 */
struct recr {
	const uint8_t *p, *end;
	bool err;
};

static inline void recr_init(struct recr *r, const void *p, size_t len)
{
	r->p = p;
	r->end = len ? r->p + len : r->p;   /* NULL + 0 is undefined */
	r->err = false;
}

/* Bytes not read yet. */
static inline size_t recr_left(const struct recr *r)
{
	return r->err ? 0 : (size_t)(r->end - r->p);
}

/* The next n bytes, or NULL on overrun. */
static inline const uint8_t *recr_take(struct recr *r, size_t n)
{
	const uint8_t *p = r->p;

	if (r->err || n > (size_t)(r->end - r->p)) {
		r->err = true;
		return NULL;
	}
	if (n)
		r->p += n;
	return p;
}

static inline uint8_t recr_u8(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint8_t));

	return p ? *p : 0;
}

static inline uint16_t recr_u16(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint16_t));
	uint16_t v = 0;

	if (p)
		memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint32_t recr_u32(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint32_t));
	uint32_t v = 0;

	if (p)
		memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint64_t recr_u64(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint64_t));
	uint64_t v = 0;

	if (p)
		memcpy(&v, p, sizeof(v));
	return v;
}

/* Points into the record; *len 0 and *p NULL on error. */
static inline void recr_str(struct recr *r, const uint8_t **p, uint16_t *len)
{
	uint16_t n = recr_u16(r);

	*p = recr_take(r, n);
	*len = *p ? n : 0;
}

static inline void recr_bytes(struct recr *r, const uint8_t **p, uint32_t *len)
{
	uint32_t n = recr_u32(r);

	*p = recr_take(r, n);
	*len = *p ? n : 0;
}

/* 0 when no field overran and every byte was read; -1 otherwise. */
static inline int recr_end(const struct recr *r)
{
	return !r->err && r->p == r->end ? 0 : -1;
}

/* Stores of a field at dst, for writers into reserved memory; each returns the byte after it. */
static inline uint8_t *rec_put_u8(uint8_t *dst, uint8_t v)
{
	*dst = v;
	return dst + 1;
}

static inline uint8_t *rec_put_u16(uint8_t *dst, uint16_t v)
{
	memcpy(dst, &v, sizeof(v));
	return dst + sizeof(v);
}

static inline uint8_t *rec_put_u32(uint8_t *dst, uint32_t v)
{
	memcpy(dst, &v, sizeof(v));
	return dst + sizeof(v);
}

static inline uint8_t *rec_put_u64(uint8_t *dst, uint64_t v)
{
	memcpy(dst, &v, sizeof(v));
	return dst + sizeof(v);
}

static inline uint8_t *rec_put_mem(uint8_t *dst, const void *p, size_t n)
{
	if (n)              /* p may be NULL for an empty string */
		memcpy(dst, p, n);
	return dst + n;
}

/* ---- what records are made of ------------------------------------------ */

/* On the wire: u16 length, then the bytes. */
struct rec_str {
	const uint8_t *p;
	uint16_t len;
};

/* On the wire: u32 length, then the bytes. */
struct rec_bytes {
	const uint8_t *p;
	uint32_t len;
};

/*
 * A list in a decoded record: n items from p, all checked by the decoder.
 * Each rec_X_next() takes one (false when none is left); iterate a copy
 * to keep the list.
 */
struct rec_iter {
	const uint8_t *p;
	uint32_t n;
};

/* A list of u16 packet ids (REC_CLOSE, REC_CONNACK); p is unaligned. */
bool rec_packet_id_next(struct rec_iter *it, uint16_t *packet_id);
/* A list of u32 subscription identifiers (REC_SESSION_MSG); p is unaligned. */
bool rec_sub_id_next(struct rec_iter *it, uint32_t *sub_id);

/* ---- worker -> router (ring w2r[i]) ------------------------------------ */

/*
 * REC_CONNECT: a client's CONNECT, validated by the worker. The router
 * owns the session registry and answers REC_CONNACK. clean: a stored
 * session is discarded (3.1.1's clean session, MQTT 5's Clean Start);
 * session_expiry: seconds the session outlives the connection (3.1.1:
 * clean session 1 is 0, 0 is REC_EXPIRY_NEVER), as granted. The will's
 * MQTT 5 part: its delay and message expiry interval in seconds (0: none)
 * and its properties as REC_PUBLISH's props (empty: none).
 */
#define REC_EXPIRY_NEVER UINT32_MAX

struct rec_connect {
	uint64_t conn;
	uint8_t clean;
	uint16_t keepalive;
	struct rec_str client_id;
	struct rec_str remote;
	struct rec_str user;         /* the CONNECT's user name (empty without one) */
	uint8_t will_flag;
	uint8_t will_qos;
	uint8_t will_retain;
	struct rec_str will_topic;
	struct rec_bytes will_payload;
	uint32_t session_expiry;
	uint32_t will_delay;
	uint32_t will_expiry;
	struct rec_bytes will_props;
};

int rec_connect_decode(struct rec_connect *x, const void *p, size_t len);
void rec_connect_encode(struct recw *w, const struct rec_connect *x);

/*
 * REC_SUBSCRIBE: a client's SUBSCRIBE. Subscription qos 0x80: the worker
 * found the filter invalid; the router skips it and answers 0x80 for it.
 * sub_id: its MQTT 5 subscription identifier (1..268435455), 0 for none;
 * the router keeps it with each subscription the packet makes.
 */
struct rec_subscribe {
	uint64_t conn;
	uint16_t packet_id;
	uint32_t sub_id;
	struct rec_iter filters;     /* u16 count, then each: struct rec_subscription */
};

struct rec_subscription {
	struct rec_str filter;
	uint8_t qos;
};

int rec_subscribe_decode(struct rec_subscribe *x, const void *p, size_t len);
bool rec_subscribe_next(struct rec_iter *it, struct rec_subscription *s);
size_t rec_subscribe_begin(struct recw *w, const struct rec_subscribe *x);
void rec_subscribe_add(struct recw *w, const struct rec_subscription *s);
void rec_subscribe_end(struct recw *w, size_t count_off, uint16_t n);

/* REC_UNSUBSCRIBE: a client's UNSUBSCRIBE. */
struct rec_unsubscribe {
	uint64_t conn;
	uint16_t packet_id;
	struct rec_iter filters;     /* u16 count, then each: struct rec_str */
};

int rec_unsubscribe_decode(struct rec_unsubscribe *x, const void *p, size_t len);
bool rec_unsubscribe_next(struct rec_iter *it, struct rec_str *filter);
size_t rec_unsubscribe_begin(struct recw *w, const struct rec_unsubscribe *x);
void rec_unsubscribe_add(struct recw *w, struct rec_str filter);
void rec_unsubscribe_end(struct recw *w, size_t count_off, uint16_t n);

/*
 * A message's MQTT 5 properties and expiry, on the wire only when its
 * flags say so (REC_PUB_PROPS / REC_PUB_EXPIRY, REC_DELIVER_PROPS /
 * REC_DELIVER_EXPIRY); there, never empty or 0, so that a record has one
 * encoding.
 */
static inline void recr_msg_v5(struct recr *r, bool has_props, bool has_expiry,
			       struct rec_bytes *props, uint64_t *expires_at)
{
	*props = (struct rec_bytes){ 0 };
	if (has_props) {
		recr_bytes(r, &props->p, &props->len);
		r->err |= props->len == 0;
	}
	*expires_at = has_expiry ? recr_u64(r) : 0;
	r->err |= has_expiry && *expires_at == 0;
}

/*
 * REC_PUBLISH: a client's PUBLISH, to be routed; qos is the publisher's,
 * whose PUBACK/PUBREC the worker sent or will send; conn the publisher's
 * connection, whose session the router checks the ACL's write rule
 * against (with no ACL in force the router does not look at it). With REC_PUB_ASK the worker also wants the topic's route, and
 * the router answers REC_ROUTE.
 */
#define REC_PUB_RETAIN 0x01
#define REC_PUB_ASK 0x02
#define REC_PUB_PROPS 0x04
#define REC_PUB_EXPIRY 0x08

/*
 * props (REC_PUB_PROPS): an MQTT 5 message's properties that go to its
 * MQTT 5 receivers (payload format, content type, response topic,
 * correlation data, user properties, in order), as a property block with
 * its length field; the router checks it holds nothing else. expires_at
 * (REC_PUB_EXPIRY): its message expiry as a deadline, ms since the epoch.
 */
struct rec_publish {
	uint8_t qos;
	uint8_t flags;               /* REC_PUB_* */
	uint64_t conn;
	struct rec_str topic;
	struct rec_bytes payload;
	struct rec_bytes props;      /* on the wire only with REC_PUB_PROPS (else empty when decoded) */
	uint64_t expires_at;         /* on the wire only with REC_PUB_EXPIRY (else 0 when decoded) */
	uint64_t ask;                /* on the wire only with REC_PUB_ASK (else 0 when decoded) */
};

#define REC_PUBLISH_FIXED_BYTES 16   /* qos, flags, conn, the two lengths */
#define REC_PUBLISH_ASK_BYTES 8

static inline int rec_publish_decode(struct rec_publish *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->qos = recr_u8(&r);
	x->flags = recr_u8(&r);
	x->conn = recr_u64(&r);
	recr_str(&r, &x->topic.p, &x->topic.len);
	recr_bytes(&r, &x->payload.p, &x->payload.len);
	recr_msg_v5(&r, x->flags & REC_PUB_PROPS, x->flags & REC_PUB_EXPIRY, &x->props,
		    &x->expires_at);
	x->ask = x->flags & REC_PUB_ASK ? recr_u64(&r) : 0;
	return recr_end(&r);
}

static inline size_t rec_publish_size(const struct rec_publish *x)
{
	return REC_PUBLISH_FIXED_BYTES + x->topic.len + (size_t)x->payload.len +
	       (x->flags & REC_PUB_PROPS ? sizeof(uint32_t) + (size_t)x->props.len : 0) +
	       (x->flags & REC_PUB_EXPIRY ? sizeof(uint64_t) : 0) +
	       (x->flags & REC_PUB_ASK ? REC_PUBLISH_ASK_BYTES : 0);
}

/* The record at dst, which has rec_publish_size(x) bytes. */
static inline void rec_publish_put(uint8_t *dst, const struct rec_publish *x)
{
	dst = rec_put_u8(dst, x->qos);
	dst = rec_put_u8(dst, x->flags);
	dst = rec_put_u64(dst, x->conn);
	dst = rec_put_u16(dst, x->topic.len);
	dst = rec_put_mem(dst, x->topic.p, x->topic.len);
	dst = rec_put_u32(dst, x->payload.len);
	dst = rec_put_mem(dst, x->payload.p, x->payload.len);
	if (x->flags & REC_PUB_PROPS) {
		dst = rec_put_u32(dst, x->props.len);
		dst = rec_put_mem(dst, x->props.p, x->props.len);
	}
	if (x->flags & REC_PUB_EXPIRY)
		dst = rec_put_u64(dst, x->expires_at);
	if (x->flags & REC_PUB_ASK)
		rec_put_u64(dst, x->ask);
}

void rec_publish_encode(struct recw *w, const struct rec_publish *x);

/*
 * REC_SESSION_MSG, both ways. Worker -> router: a QoS 1/2 message a
 * closing persistent session still owes its client, sent just before
 * REC_CLOSE; or, with state MSG_QUEUED, a delivery that reached a
 * connection which had already closed, which the router re-routes to
 * session sid. Only for messages with copy 0: the router holds the others.
 * Router -> worker: a stored message for a resumed session; the worker
 * resends it (MSG_INFLIGHT: same packet id, DUP=1; MSG_PUBREL: PUBREL
 * only; MSG_QUEUED: a new delivery) and reports its progress with
 * REC_MSG_STATE (copy != 0). props and expires_at: the message's MQTT 5
 * properties and deadline, as REC_PUBLISH's (empty and 0: none), always
 * on the wire: this record is not per message. sub_ids: the identifiers
 * of the session's subscriptions the message matched, as a REC_DELIVER
 * target's (none: count 0); a worker sends them to an MQTT 5 client only.
 */
struct rec_session_msg {
	uint64_t conn;
	uint32_t sid;
	uint64_t copy;
	uint16_t packet_id;
	uint8_t state;               /* enum msg_state */
	uint8_t qos;
	uint8_t retain;
	struct rec_str topic;
	struct rec_bytes payload;
	struct rec_bytes props;
	uint64_t expires_at;
	struct rec_iter sub_ids;     /* u8 count (at most REC_TARGET_SUB_IDS_MAX), then each: u32 (rec_sub_id_next) */
};

int rec_session_msg_decode(struct rec_session_msg *x, const void *p, size_t len);
void rec_session_msg_encode(struct recw *w, const struct rec_session_msg *x);

/*
 * REC_MSG_STATE: the exchange of a message the router holds a copy of
 * moved on: MSG_INFLIGHT = sent as packet_id; MSG_PUBREL = PUBREC
 * received; MSG_DONE = acknowledged, or dropped by the worker: the router
 * forgets its copy.
 *
 * Why the copies: a worker's death (kill -9) takes its connections' QoS
 * state with it. The router keeps every QoS 1/2 message it hands a
 * persistent session's connection, with the exchange's state as last
 * reported, so a dead worker's sessions go offline with everything they
 * were still owed, packet ids included [MQTT-4.4.0-1].
 */
struct rec_msg_state {
	uint64_t conn;
	uint32_t sid;
	uint64_t copy;
	uint16_t packet_id;
	uint8_t state;               /* enum msg_state */
};

int rec_msg_state_decode(struct rec_msg_state *x, const void *p, size_t len);
void rec_msg_state_encode(struct recw *w, const struct rec_msg_state *x);

/*
 * REC_QOS2_IN, persistent sessions only: an inbound QoS 2 id now awaits
 * PUBREL (held 1, sent just before the message's REC_PUBLISH) or was
 * released by PUBREL (held 0), so that after a crash of the worker a
 * resent PUBLISH is not routed twice.
 */
struct rec_qos2_in {
	uint64_t conn;
	uint32_t sid;
	uint16_t packet_id;
	uint8_t held;
};

int rec_qos2_in_decode(struct rec_qos2_in *x, const void *p, size_t len);
void rec_qos2_in_encode(struct recw *w, const struct rec_qos2_in *x);

/*
 * REC_CLOSE: the connection is gone. The ids are its inbound QoS 2
 * messages awaiting PUBREL, kept for a persistent session. (A worker's
 * death reaches the router on its control socket, IPC_WORKER_DOWN: no
 * worker can write it.) REC_CLOSE_END_SESSION: the session ends with the
 * connection, persistent as it was (an MQTT 5 DISCONNECT set its session
 * expiry interval to 0). session_expiry: the session's interval as the
 * connection leaves it (an MQTT 5 DISCONNECT may have changed it).
 */
#define REC_CLOSE_END_SESSION 0x02

struct rec_close {
	uint64_t conn;
	uint8_t publish_will;        /* 0 or 1, with REC_CLOSE_END_SESSION */
	uint32_t session_expiry;
	struct rec_iter ids;         /* u16 count, then each: u16 packet id (rec_packet_id_next) */
};

int rec_close_decode(struct rec_close *x, const void *p, size_t len);
/* x->ids is not read: the ids are ids[0..n). */
void rec_close_encode(struct recw *w, const struct rec_close *x, const uint16_t *ids, uint16_t n);

/* ---- router -> worker (ring r2w[i]) ------------------------------------ */

/* REC_CONNACK: the answer to REC_CONNECT; ids: inbound QoS 2 awaiting PUBREL, from the stored session. */
struct rec_connack {
	uint64_t conn;
	uint32_t sid;
	uint8_t rc;
	uint8_t session_present;
	struct rec_iter ids;         /* u16 count, then each: u16 packet id (rec_packet_id_next) */
};

int rec_connack_decode(struct rec_connack *x, const void *p, size_t len);
/* x->ids is not read: the ids are ids[0..n). */
void rec_connack_encode(struct recw *w, const struct rec_connack *x, const uint16_t *ids,
			uint16_t n);

/* REC_SUBACK: the answer to REC_SUBSCRIBE, one return code per filter. */
struct rec_suback {
	uint64_t conn;
	uint16_t packet_id;
	struct rec_iter codes;       /* u16 count, then each: u8 code (codes.p is the array) */
};

int rec_suback_decode(struct rec_suback *x, const void *p, size_t len);
bool rec_suback_next(struct rec_iter *it, uint8_t *code);
size_t rec_suback_begin(struct recw *w, const struct rec_suback *x);
void rec_suback_add(struct recw *w, uint8_t code);
void rec_suback_end(struct recw *w, size_t count_off, uint16_t n);

/* The codes written since rec_suback_begin() returned count_off (w not oom); valid until w changes. */
static inline const uint8_t *rec_suback_codes(const struct recw *w, size_t count_off)
{
	return w->buf + count_off + sizeof(uint16_t);
}

/*
 * REC_UNSUBACK: the answer to REC_UNSUBSCRIBE, one MQTT 5 reason code per
 * filter (0x00, or 0x11: no such subscription existed), written with
 * rec_suback_add() and rec_suback_end().
 */
struct rec_unsuback {
	uint64_t conn;
	uint16_t packet_id;
	struct rec_iter codes;       /* as rec_suback's */
};

int rec_unsuback_decode(struct rec_unsuback *x, const void *p, size_t len);
size_t rec_unsuback_begin(struct recw *w, const struct rec_unsuback *x);

/*
 * REC_DELIVER: a message for every target it has on one worker (a large
 * fan-out may take several records). qos is the publisher's; a target's
 * is min(publish, granted). retain 1 only for retained messages sent on
 * subscribe. A target with a copy: the router keeps a copy of the message
 * for this persistent session (or for any session, through a shared
 * subscription) until the worker reports MSG_DONE, named by that copy id.
 * props and expires_at: as REC_PUBLISH's, on the wire (after retain,
 * which then has REC_DELIVER_PROPS, REC_DELIVER_EXPIRY set) only when
 * not empty or 0.
 */
struct rec_deliver {
	uint8_t qos;
	struct rec_str topic;
	struct rec_bytes payload;
	uint8_t retain;              /* 0 or 1 */
	struct rec_bytes props;
	uint64_t expires_at;
	struct rec_iter targets;     /* u32 count, then each: struct rec_target */
};

#define REC_DELIVER_PROPS 0x02
#define REC_DELIVER_EXPIRY 0x04

/*
 * On the wire: u64 conn, u32 sid, u8 qos | REC_TARGET_COPY if copy != 0 |
 * REC_TARGET_RETAIN if retain | REC_TARGET_SUB_IDS if n_sub_ids != 0,
 * then u64 copy if so, then u8 n_sub_ids and that many u32 if so. retain:
 * the target gets the message with the retain flag (an MQTT 5
 * subscription with retain as published, and a message published with
 * it). sub_ids: the subscription identifiers of the target's
 * subscriptions the message matched (MQTT 5), at most
 * REC_TARGET_SUB_IDS_MAX; the worker checks each is one a client may be
 * sent.
 */
#define REC_TARGET_COPY 0x80
#define REC_TARGET_RETAIN 0x40
#define REC_TARGET_SUB_IDS 0x20
#define REC_TARGET_FLAGS (REC_TARGET_COPY | REC_TARGET_RETAIN | REC_TARGET_SUB_IDS)
#define REC_TARGET_SUB_IDS_MAX 32

struct rec_target {
	uint64_t conn;
	uint32_t sid;
	uint8_t qos;                 /* without REC_TARGET_FLAGS */
	bool retain;
	uint8_t n_sub_ids;           /* 0: none (then not on the wire) */
	const void *sub_ids;         /* n_sub_ids u32, unaligned: rec_target_sub_id() */
	uint64_t copy;               /* 0: none (then not on the wire) */
};

#define REC_DELIVER_FIXED_BYTES 12   /* qos, the two lengths, retain, the count */
#define REC_TARGET_BYTES 13
#define REC_TARGET_COPY_BYTES 8

static inline uint32_t rec_target_sub_id(const struct rec_target *t, unsigned i)
{
	uint32_t id;

	memcpy(&id, (const uint8_t *)t->sub_ids + (size_t)i * sizeof(id), sizeof(id));
	return id;
}

/*
 * A REC_TARGET_COPY with copy id 0 is malformed: copy 0 means none; so is
 * a REC_TARGET_SUB_IDS with no identifier or more than REC_TARGET_SUB_IDS_MAX.
 */
static inline int rec_deliver_decode(struct rec_deliver *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->qos = recr_u8(&r);
	recr_str(&r, &x->topic.p, &x->topic.len);
	recr_bytes(&r, &x->payload.p, &x->payload.len);
	x->retain = recr_u8(&r);
	recr_msg_v5(&r, x->retain & REC_DELIVER_PROPS, x->retain & REC_DELIVER_EXPIRY, &x->props,
		    &x->expires_at);
	if (x->retain & ~(1 | REC_DELIVER_PROPS | REC_DELIVER_EXPIRY))
		r.err = true;
	x->retain &= 1;
	x->targets.n = recr_u32(&r);
	x->targets.p = r.p;
	for (uint32_t i = 0; i < x->targets.n && !r.err; i++) {
		const uint8_t *t = recr_take(&r, REC_TARGET_BYTES);
		uint8_t flags = t ? t[REC_TARGET_BYTES - 1] : 0;

		if ((flags & REC_TARGET_COPY) && recr_u64(&r) == 0)
			r.err = true;
		if (flags & REC_TARGET_SUB_IDS) {
			uint8_t n = recr_u8(&r);

			r.err |= n == 0 || n > REC_TARGET_SUB_IDS_MAX;
			recr_take(&r, (size_t)n * sizeof(uint32_t));
		}
	}
	return recr_end(&r);
}

static inline bool rec_deliver_next(struct rec_iter *it, struct rec_target *t)
{
	uint8_t qos;

	if (!it->n)
		return false;
	memcpy(&t->conn, it->p, sizeof(t->conn));
	memcpy(&t->sid, it->p + 8, sizeof(t->sid));
	qos = it->p[REC_TARGET_BYTES - 1];
	t->qos = qos & (uint8_t)~REC_TARGET_FLAGS;
	t->retain = qos & REC_TARGET_RETAIN;
	t->copy = 0;
	t->n_sub_ids = 0;
	t->sub_ids = NULL;
	it->p += REC_TARGET_BYTES;
	if (qos & REC_TARGET_COPY) {
		memcpy(&t->copy, it->p, sizeof(t->copy));
		it->p += REC_TARGET_COPY_BYTES;
	}
	if (qos & REC_TARGET_SUB_IDS) {
		t->n_sub_ids = *it->p++;
		t->sub_ids = it->p;
		it->p += (size_t)t->n_sub_ids * sizeof(uint32_t);
	}
	it->n--;
	return true;
}

/* The head's bytes: all but the targets. */
static inline size_t rec_deliver_head_size(const struct rec_deliver *x)
{
	return REC_DELIVER_FIXED_BYTES + x->topic.len + (size_t)x->payload.len +
	       (x->props.len ? sizeof(uint32_t) + (size_t)x->props.len : 0) +
	       (x->expires_at ? sizeof(uint64_t) : 0);
}

static inline size_t rec_target_size(const struct rec_target *t)
{
	return REC_TARGET_BYTES + (t->copy ? REC_TARGET_COPY_BYTES : 0) +
	       (t->n_sub_ids ? 1 + (size_t)t->n_sub_ids * sizeof(uint32_t) : 0);
}

static inline size_t rec_deliver_begin(struct recw *w, const struct rec_deliver *x)
{
	size_t size = rec_deliver_head_size(x);
	uint8_t *dst;

	recw_reset(w);
	dst = recw_reserve(w, size);
	if (dst) {
		dst = rec_put_u8(dst, x->qos);
		dst = rec_put_u16(dst, x->topic.len);
		dst = rec_put_mem(dst, x->topic.p, x->topic.len);
		dst = rec_put_u32(dst, x->payload.len);
		dst = rec_put_mem(dst, x->payload.p, x->payload.len);
		dst = rec_put_u8(dst, (uint8_t)((x->retain & 1) |
						(x->props.len ? REC_DELIVER_PROPS : 0) |
						(x->expires_at ? REC_DELIVER_EXPIRY : 0)));
		if (x->props.len) {
			dst = rec_put_u32(dst, x->props.len);
			dst = rec_put_mem(dst, x->props.p, x->props.len);
		}
		if (x->expires_at)
			dst = rec_put_u64(dst, x->expires_at);
		rec_put_u32(dst, 0);
	}
	return size - sizeof(uint32_t);
}

static inline void rec_deliver_add(struct recw *w, const struct rec_target *t)
{
	uint8_t *dst = recw_reserve(w, rec_target_size(t));
	uint8_t qos;

	if (!dst)
		return;
	dst = rec_put_u64(dst, t->conn);
	dst = rec_put_u32(dst, t->sid);
	qos = (uint8_t)((t->qos & ~REC_TARGET_FLAGS) | (t->retain ? REC_TARGET_RETAIN : 0) |
			(t->copy ? REC_TARGET_COPY : 0) | (t->n_sub_ids ? REC_TARGET_SUB_IDS : 0));
	dst = rec_put_u8(dst, qos);
	if (t->copy)
		dst = rec_put_u64(dst, t->copy);
	if (t->n_sub_ids) {
		dst = rec_put_u8(dst, t->n_sub_ids);
		rec_put_mem(dst, t->sub_ids, (size_t)t->n_sub_ids * sizeof(uint32_t));
	}
}

static inline void rec_deliver_end(struct recw *w, size_t count_off, uint32_t n)
{
	recw_patch_u32(w, count_off, n);
}

/* The qos of a REC_DELIVER this process wrote (it comes first), without decoding the rest. */
static inline uint8_t rec_deliver_qos(const void *p, size_t len)
{
	return len ? *(const uint8_t *)p : 0;
}

/* REC_KICK: the session was taken over: close the connection, publish its will. */
struct rec_kick {
	uint64_t conn;
};

int rec_kick_decode(struct rec_kick *x, const void *p, size_t len);
void rec_kick_encode(struct recw *w, const struct rec_kick *x);

/*
 * REC_ROUTE: the answer to a REC_PUBLISH with REC_PUB_ASK, written after
 * that message's deliveries. local 1 when every session the topic matches
 * (possibly none) is a clean session online on this worker: the targets
 * are those, with the QoS granted to each; local 0 and no targets
 * otherwise. Valid while shm_router.route_gen equals gen, see shm.h.
 */
struct rec_route {
	uint64_t ask;
	uint64_t gen;
	struct rec_str topic;
	uint8_t local;
	struct rec_iter targets;     /* u32 count, then each: struct rec_route_target */
};

struct rec_route_target {
	uint64_t conn;
	uint8_t qos;
};

#define REC_ROUTE_TARGET_BYTES 9

int rec_route_decode(struct rec_route *x, const void *p, size_t len);
bool rec_route_next(struct rec_iter *it, struct rec_route_target *t);
size_t rec_route_begin(struct recw *w, const struct rec_route *x);
void rec_route_add(struct recw *w, const struct rec_route_target *t);
void rec_route_end(struct recw *w, size_t count_off, uint32_t n);

/* ---- any record -------------------------------------------------------- */

/* 0 if p is a well-formed record of this type (its decoder's verdict), -1 otherwise. */
int rec_validate(uint16_t type, const void *p, size_t len);

#endif
