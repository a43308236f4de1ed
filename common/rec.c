/*
 * rec.c - the data-plane records that workers and the router exchange
 * through the rings: the growable field writer, and the decoder and
 * encoder of every record type not on the per-message path, both made
 * from one list of the record's fields (rec.h has those, REC_PUBLISH and
 * REC_DELIVER, inline, and the field reader).
 */
#include <stdlib.h>
#include <string.h>

#include "iotd.h"
#include "rec.h"

#define RECW_MIN_CAP 256

/* ---- writer ------------------------------------------------------------ */

void recw_init(struct recw *w)
{
	*w = (struct recw){ 0 };
}

void recw_free(struct recw *w)
{
	free(w->buf);
	recw_init(w);
}

void recw_reset(struct recw *w)
{
	/* Keep the buffer: a writer is reused for every record of a batch. */
	w->len = 0;
	w->oom = false;
}

/* Room for n more bytes? Once an allocation failed, never: the record is lost anyway. */
static bool recw_grow(struct recw *w, size_t n)
{
	size_t cap = w->cap ? w->cap : RECW_MIN_CAP;
	uint8_t *buf;

	if (w->oom)
		return false;
	if (n <= w->cap - w->len)
		return true;
	if (n > SIZE_MAX / 2 - w->len)
		goto fail;
	while (cap - w->len < n)
		cap *= 2;
	buf = realloc(w->buf, cap);
	if (!buf)
		goto fail;
	w->buf = buf;
	w->cap = cap;
	return true;
fail:
	w->oom = true;
	return false;
}

uint8_t *recw_reserve(struct recw *w, size_t n)
{
	uint8_t *p;

	/* At least one byte, so that even an empty reservation points into a buffer. */
	if (!recw_grow(w, n ? n : 1))
		return NULL;
	p = w->buf + w->len;
	w->len += n;
	return p;
}

static void recw_put(struct recw *w, const void *p, size_t n)
{
	uint8_t *dst = recw_reserve(w, n);

	if (dst)
		rec_put_mem(dst, p, n);
}

void recw_u8(struct recw *w, uint8_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_u16(struct recw *w, uint16_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_u32(struct recw *w, uint32_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_u64(struct recw *w, uint64_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_str(struct recw *w, const void *p, uint16_t len)
{
	recw_u16(w, len);
	recw_put(w, p, len);
}

void recw_bytes(struct recw *w, const void *p, uint32_t len)
{
	recw_u32(w, len);
	recw_put(w, p, len);
}

/*
 * A patch outside what was written is a bug in the caller; marking the
 * record incomplete keeps it from being sent instead of corrupting memory.
 */
static void recw_patch(struct recw *w, size_t off, const void *v, size_t n)
{
	if (w->oom)
		return;
	if (off > w->len || n > w->len - off) {
		w->oom = true;
		return;
	}
	memcpy(w->buf + off, v, n);
}

void recw_patch_u16(struct recw *w, size_t off, uint16_t v)
{
	recw_patch(w, off, &v, sizeof(v));
}

void recw_patch_u32(struct recw *w, size_t off, uint32_t v)
{
	recw_patch(w, off, &v, sizeof(v));
}

/* ---- records ----------------------------------------------------------- */

/*
 * Each record's layout is written once, below: its fields in wire order as
 * F(kind, name), in the order of its struct in rec.h. The kinds: u8, u16,
 * u32 and u64, an integer of that width; str, a struct rec_str; bytes, a
 * struct rec_bytes; and, last, a list (a struct rec_iter) of one of these:
 *
 *   ids16       u16 count, then u16 packet ids, written from ids[0..n)
 *   codes16     u16 count, then u8 codes
 *   strs16      u16 count, then strings
 *   subs16      u16 count, then each a string and a u8 qos
 *   targets32   u32 count, then REC_ROUTE_TARGET_BYTES each
 *   subids8     u8 count (at most REC_TARGET_SUB_IDS_MAX), then u32s,
 *               written from x's list
 *
 * From the list come the decoder and the encoder (or rec_X_begin(), whose
 * list comes later), so the two cannot disagree. A decoder reads every
 * field with the bounds-checked reader and checks once at the end; a list
 * of strings is walked item by item, so that a huge count on a short
 * record stops at the first overrun. These records are not per message
 * (REC_PUBLISH and REC_DELIVER, which are, live in rec.h).
 */

/* A u16 count of fixed-size items, taken whole. */
static void rec_read_array16(struct recr *r, struct rec_iter *it, size_t item_bytes)
{
	it->n = recr_u16(r);
	it->p = recr_take(r, it->n * item_bytes);
}

/* A u32 count of fixed-size items, taken whole. */
static void rec_read_array32(struct recr *r, struct rec_iter *it, size_t item_bytes)
{
	it->n = recr_u32(r);
	/* n x item_bytes may not fit a size_t of 32 bits: compare by division. */
	if (it->n > recr_left(r) / item_bytes)
		r->err = true;
	it->p = recr_take(r, (size_t)it->n * item_bytes);
}

/* A u16 count of strings, each followed by extra bytes. */
static void rec_read_strs16(struct recr *r, struct rec_iter *it, size_t extra)
{
	const uint8_t *s;
	uint16_t len;

	it->n = recr_u16(r);
	it->p = r->p;
	for (uint32_t i = 0; i < it->n && !r->err; i++) {
		recr_str(r, &s, &len);
		recr_take(r, extra);
	}
}

/* A u8 count of u32 subscription identifiers, at most REC_TARGET_SUB_IDS_MAX. */
static void rec_read_sub_ids8(struct recr *r, struct rec_iter *it)
{
	it->n = recr_u8(r);
	r->err |= it->n > REC_TARGET_SUB_IDS_MAX;
	it->p = recr_take(r, (size_t)it->n * sizeof(uint32_t));
}

/* A list a reader would refuse is not written: the record is marked incomplete. */
static void rec_write_sub_ids8(struct recw *w, const struct rec_iter *it)
{
	if (it->n > REC_TARGET_SUB_IDS_MAX) {
		w->oom = true;
		return;
	}
	recw_u8(w, (uint8_t)it->n);
	recw_put(w, it->p, (size_t)it->n * sizeof(uint32_t));
}

static void rec_write_ids(struct recw *w, const uint16_t *ids, uint16_t n)
{
	recw_u16(w, n);
	for (uint16_t i = 0; i < n; i++)
		recw_u16(w, ids[i]);
}

/* A field of x read from r. */
#define DECODE(kind, f) DECODE_##kind(f)
#define DECODE_u8(f) x->f = recr_u8(r);
#define DECODE_u16(f) x->f = recr_u16(r);
#define DECODE_u32(f) x->f = recr_u32(r);
#define DECODE_u64(f) x->f = recr_u64(r);
#define DECODE_str(f) recr_str(r, &x->f.p, &x->f.len);
#define DECODE_bytes(f) recr_bytes(r, &x->f.p, &x->f.len);
#define DECODE_ids16(f) rec_read_array16(r, &x->f, sizeof(uint16_t));
#define DECODE_codes16(f) rec_read_array16(r, &x->f, sizeof(uint8_t));
#define DECODE_strs16(f) rec_read_strs16(r, &x->f, 0);
#define DECODE_subs16(f) rec_read_strs16(r, &x->f, sizeof(uint8_t));
#define DECODE_targets32(f) rec_read_array32(r, &x->f, REC_ROUTE_TARGET_BYTES);
#define DECODE_subids8(f) rec_read_sub_ids8(r, &x->f);

/* A field of x written to w; a list's count is 0 until rec_X_end() patches it at count_off. */
#define ENCODE(kind, f) ENCODE_##kind(f)
#define ENCODE_u8(f) recw_u8(w, x->f);
#define ENCODE_u16(f) recw_u16(w, x->f);
#define ENCODE_u32(f) recw_u32(w, x->f);
#define ENCODE_u64(f) recw_u64(w, x->f);
#define ENCODE_str(f) recw_str(w, x->f.p, x->f.len);
#define ENCODE_bytes(f) recw_bytes(w, x->f.p, x->f.len);
#define ENCODE_ids16(f) rec_write_ids(w, ids, n);
#define ENCODE_codes16(f) count_off = w->len; recw_u16(w, 0);
#define ENCODE_strs16(f) ENCODE_codes16(f)
#define ENCODE_subs16(f) ENCODE_codes16(f)
#define ENCODE_targets32(f) count_off = w->len; recw_u32(w, 0);
#define ENCODE_subids8(f) rec_write_sub_ids8(w, &x->f);

/* int rec_X_decode(struct rec_X *x, const void *p, size_t len) */
#define REC_DECODER(X, FIELDS)                                                  \
	int rec_##X##_decode(struct rec_##X *x, const void *p, size_t len)     \
	{                                                                       \
		struct recr rd, *r = &rd;                                       \
                                                                                \
		recr_init(r, p, len);                                           \
		FIELDS(DECODE)                                                  \
		return recr_end(r);                                             \
	}

/* void rec_X_encode(struct recw *w, const struct rec_X *x) */
#define REC_ENCODER(X, FIELDS)                                                  \
	void rec_##X##_encode(struct recw *w, const struct rec_##X *x)         \
	{                                                                       \
		recw_reset(w);                                                  \
		FIELDS(ENCODE)                                                  \
	}

/* void rec_X_encode(struct recw *w, const struct rec_X *x, const uint16_t *ids, uint16_t n) */
#define REC_ENCODER_IDS(X, FIELDS)                                              \
	void rec_##X##_encode(struct recw *w, const struct rec_##X *x,         \
			      const uint16_t *ids, uint16_t n)                  \
	{                                                                       \
		recw_reset(w);                                                  \
		FIELDS(ENCODE)                                                  \
	}

/* size_t rec_X_begin(struct recw *w, const struct rec_X *x) */
#define REC_BEGIN(X, FIELDS)                                                    \
	size_t rec_##X##_begin(struct recw *w, const struct rec_##X *x)        \
	{                                                                       \
		size_t count_off = 0;                                           \
                                                                                \
		recw_reset(w);                                                  \
		FIELDS(ENCODE)                                                  \
		return count_off;                                               \
	}

/*
 * The list walkers behind rec_X_next(): each steps over one item (false
 * when none is left). The decoder checked every item, so none can overrun.
 */
static bool rec_iter_item(struct rec_iter *it, size_t size, const uint8_t **item)
{
	if (!it->n)
		return false;
	*item = it->p;
	it->p += size;
	it->n--;
	return true;
}

static bool rec_iter_copy(struct rec_iter *it, void *item, size_t size)
{
	const uint8_t *p;

	if (!rec_iter_item(it, size, &p))
		return false;
	memcpy(item, p, size);
	return true;
}

/* A string and the extra bytes after it. */
static bool rec_iter_str(struct rec_iter *it, struct rec_str *s, size_t extra)
{
	if (!it->n)
		return false;
	memcpy(&s->len, it->p, sizeof(s->len));
	s->p = it->p + sizeof(s->len);
	it->p = s->p + s->len + extra;
	it->n--;
	return true;
}

bool rec_packet_id_next(struct rec_iter *it, uint16_t *packet_id)
{
	return rec_iter_copy(it, packet_id, sizeof(*packet_id));
}

bool rec_sub_id_next(struct rec_iter *it, uint32_t *sub_id)
{
	return rec_iter_copy(it, sub_id, sizeof(*sub_id));
}

#define CONNECT_FIELDS(F)                                                       \
	F(u64, conn) F(u8, clean) F(u16, keepalive) F(str, client_id) F(str, remote) \
	F(str, user) F(u8, will_flag) F(u8, will_qos) F(u8, will_retain)        \
	F(str, will_topic) F(bytes, will_payload) F(u32, session_expiry) F(u32, will_delay) \
	F(u32, will_expiry) F(bytes, will_props)
REC_DECODER(connect, CONNECT_FIELDS)
REC_ENCODER(connect, CONNECT_FIELDS)

#define SUBSCRIBE_FIELDS(F) F(u64, conn) F(u16, packet_id) F(u32, sub_id) F(subs16, filters)
REC_DECODER(subscribe, SUBSCRIBE_FIELDS)
REC_BEGIN(subscribe, SUBSCRIBE_FIELDS)

bool rec_subscribe_next(struct rec_iter *it, struct rec_subscription *s)
{
	if (!rec_iter_str(it, &s->filter, sizeof(s->qos)))
		return false;
	s->qos = s->filter.p[s->filter.len];
	return true;
}

void rec_subscribe_add(struct recw *w, const struct rec_subscription *s)
{
	recw_str(w, s->filter.p, s->filter.len);
	recw_u8(w, s->qos);
}

void rec_subscribe_end(struct recw *w, size_t count_off, uint16_t n)
{
	recw_patch_u16(w, count_off, n);
}

#define UNSUBSCRIBE_FIELDS(F) F(u64, conn) F(u16, packet_id) F(strs16, filters)
REC_DECODER(unsubscribe, UNSUBSCRIBE_FIELDS)
REC_BEGIN(unsubscribe, UNSUBSCRIBE_FIELDS)

bool rec_unsubscribe_next(struct rec_iter *it, struct rec_str *filter)
{
	return rec_iter_str(it, filter, 0);
}

void rec_unsubscribe_add(struct recw *w, struct rec_str filter)
{
	recw_str(w, filter.p, filter.len);
}

void rec_unsubscribe_end(struct recw *w, size_t count_off, uint16_t n)
{
	recw_patch_u16(w, count_off, n);
}

void rec_publish_encode(struct recw *w, const struct rec_publish *x)
{
	uint8_t *dst;

	recw_reset(w);
	dst = recw_reserve(w, rec_publish_size(x));
	if (dst)
		rec_publish_put(dst, x);
}

#define SESSION_MSG_FIELDS(F)                                                   \
	F(u64, conn) F(u32, sid) F(u64, copy) F(u16, packet_id) F(u8, state)   \
	F(u8, qos) F(u8, retain) F(str, topic) F(bytes, payload) F(bytes, props) \
	F(u64, expires_at) F(subids8, sub_ids)
REC_DECODER(session_msg, SESSION_MSG_FIELDS)
REC_ENCODER(session_msg, SESSION_MSG_FIELDS)

#define MSG_STATE_FIELDS(F) F(u64, conn) F(u32, sid) F(u64, copy) F(u16, packet_id) F(u8, state)
REC_DECODER(msg_state, MSG_STATE_FIELDS)
REC_ENCODER(msg_state, MSG_STATE_FIELDS)

#define QOS2_IN_FIELDS(F) F(u64, conn) F(u32, sid) F(u16, packet_id) F(u8, held)
REC_DECODER(qos2_in, QOS2_IN_FIELDS)
REC_ENCODER(qos2_in, QOS2_IN_FIELDS)

#define CLOSE_FIELDS(F) F(u64, conn) F(u8, publish_will) F(u32, session_expiry) F(ids16, ids)
REC_DECODER(close, CLOSE_FIELDS)
REC_ENCODER_IDS(close, CLOSE_FIELDS)

#define CONNACK_FIELDS(F) F(u64, conn) F(u32, sid) F(u8, rc) F(u8, session_present) F(ids16, ids)
REC_DECODER(connack, CONNACK_FIELDS)
REC_ENCODER_IDS(connack, CONNACK_FIELDS)

#define SUBACK_FIELDS(F) F(u64, conn) F(u16, packet_id) F(codes16, codes)
REC_DECODER(suback, SUBACK_FIELDS)
REC_BEGIN(suback, SUBACK_FIELDS)

bool rec_suback_next(struct rec_iter *it, uint8_t *code)
{
	return rec_iter_copy(it, code, sizeof(*code));
}

void rec_suback_add(struct recw *w, uint8_t code)
{
	recw_u8(w, code);
}

void rec_suback_end(struct recw *w, size_t count_off, uint16_t n)
{
	recw_patch_u16(w, count_off, n);
}

#define UNSUBACK_FIELDS(F) F(u64, conn) F(u16, packet_id) F(codes16, codes)
REC_DECODER(unsuback, UNSUBACK_FIELDS)
REC_BEGIN(unsuback, UNSUBACK_FIELDS)

#define KICK_FIELDS(F) F(u64, conn)
REC_DECODER(kick, KICK_FIELDS)
REC_ENCODER(kick, KICK_FIELDS)

#define ROUTE_FIELDS(F) F(u64, ask) F(u64, gen) F(str, topic) F(u8, local) F(targets32, targets)
REC_DECODER(route, ROUTE_FIELDS)
REC_BEGIN(route, ROUTE_FIELDS)

bool rec_route_next(struct rec_iter *it, struct rec_route_target *t)
{
	const uint8_t *p;

	if (!rec_iter_item(it, REC_ROUTE_TARGET_BYTES, &p))
		return false;
	memcpy(&t->conn, p, sizeof(t->conn));
	t->qos = p[sizeof(t->conn)];
	return true;
}

void rec_route_add(struct recw *w, const struct rec_route_target *t)
{
	recw_u64(w, t->conn);
	recw_u8(w, t->qos);
}

void rec_route_end(struct recw *w, size_t count_off, uint32_t n)
{
	recw_patch_u32(w, count_off, n);
}

int rec_validate(uint16_t type, const void *p, size_t len)
{
	union {
		struct rec_connect connect;
		struct rec_subscribe subscribe;
		struct rec_unsubscribe unsubscribe;
		struct rec_publish publish;
		struct rec_session_msg session_msg;
		struct rec_msg_state msg_state;
		struct rec_qos2_in qos2_in;
		struct rec_close close;
		struct rec_connack connack;
		struct rec_suback suback;
		struct rec_unsuback unsuback;
		struct rec_deliver deliver;
		struct rec_kick kick;
		struct rec_route route;
	} x;

	switch (type) {
	case REC_CONNECT: return rec_connect_decode(&x.connect, p, len);
	case REC_SUBSCRIBE: return rec_subscribe_decode(&x.subscribe, p, len);
	case REC_UNSUBSCRIBE: return rec_unsubscribe_decode(&x.unsubscribe, p, len);
	case REC_PUBLISH: return rec_publish_decode(&x.publish, p, len);
	case REC_SESSION_MSG: return rec_session_msg_decode(&x.session_msg, p, len);
	case REC_MSG_STATE: return rec_msg_state_decode(&x.msg_state, p, len);
	case REC_QOS2_IN: return rec_qos2_in_decode(&x.qos2_in, p, len);
	case REC_CLOSE: return rec_close_decode(&x.close, p, len);
	case REC_CONNACK: return rec_connack_decode(&x.connack, p, len);
	case REC_SUBACK: return rec_suback_decode(&x.suback, p, len);
	case REC_UNSUBACK: return rec_unsuback_decode(&x.unsuback, p, len);
	case REC_DELIVER: return rec_deliver_decode(&x.deliver, p, len);
	case REC_KICK: return rec_kick_decode(&x.kick, p, len);
	case REC_ROUTE: return rec_route_decode(&x.route, p, len);
	default: return -1;
	}
}

const char *rec_type_name(int type)
{
	static const char *const names[REC_TYPE_MAX] = {
		[0] = "PAD",
		[REC_CONNECT] = "CONNECT",
		[REC_SUBSCRIBE] = "SUBSCRIBE",
		[REC_UNSUBSCRIBE] = "UNSUBSCRIBE",
		[REC_PUBLISH] = "PUBLISH",
		[REC_SESSION_MSG] = "SESSION_MSG",
		[REC_CLOSE] = "CLOSE",
		[REC_CONNACK] = "CONNACK",
		[REC_SUBACK] = "SUBACK",
		[REC_UNSUBACK] = "UNSUBACK",
		[REC_DELIVER] = "DELIVER",
		[REC_KICK] = "KICK",
		[REC_MSG_STATE] = "MSG_STATE",
		[REC_QOS2_IN] = "QOS2_IN",
		[REC_ROUTE] = "ROUTE",
	};

	if (type < 0 || type >= (int)ARRAY_SIZE(names) || !names[type])
		return "UNKNOWN";
	return names[type];
}
