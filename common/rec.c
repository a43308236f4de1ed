/*
 * rec.c - the data-plane records that workers and the router exchange
 * through the rings: the growable field writer, and the decoder and
 * encoder of every record type not on the per-message path (rec.h has
 * those, REC_PUBLISH and REC_DELIVER, inline, and the field reader).
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
 * Decoders read every field with the bounds-checked reader and check once
 * at the end; a list is walked item by item, so that a huge count on a
 * short record stops at the first overrun. Encoders write field by field:
 * these records are not per message (REC_PUBLISH and REC_DELIVER, which
 * are, live in rec.h).
 */

bool rec_packet_id_next(struct rec_iter *it, uint16_t *packet_id)
{
	if (!it->n)
		return false;
	memcpy(packet_id, it->p, sizeof(*packet_id));
	it->p += sizeof(*packet_id);
	it->n--;
	return true;
}

/* A u16 count of fixed-size items, taken whole. */
static void rec_read_array16(struct recr *r, struct rec_iter *it, size_t item_bytes)
{
	it->n = recr_u16(r);
	it->p = recr_take(r, it->n * item_bytes);
}

int rec_connect_decode(struct rec_connect *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->clean = recr_u8(&r);
	x->keepalive = recr_u16(&r);
	recr_str(&r, &x->client_id.p, &x->client_id.len);
	recr_str(&r, &x->remote.p, &x->remote.len);
	x->will_flag = recr_u8(&r);
	x->will_qos = recr_u8(&r);
	x->will_retain = recr_u8(&r);
	recr_str(&r, &x->will_topic.p, &x->will_topic.len);
	recr_bytes(&r, &x->will_payload.p, &x->will_payload.len);
	return recr_end(&r);
}

void rec_connect_encode(struct recw *w, const struct rec_connect *x)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u8(w, x->clean);
	recw_u16(w, x->keepalive);
	recw_str(w, x->client_id.p, x->client_id.len);
	recw_str(w, x->remote.p, x->remote.len);
	recw_u8(w, x->will_flag);
	recw_u8(w, x->will_qos);
	recw_u8(w, x->will_retain);
	recw_str(w, x->will_topic.p, x->will_topic.len);
	recw_bytes(w, x->will_payload.p, x->will_payload.len);
}

int rec_subscribe_decode(struct rec_subscribe *x, const void *p, size_t len)
{
	struct recr r;
	const uint8_t *f;
	uint16_t flen;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->packet_id = recr_u16(&r);
	x->filters.n = recr_u16(&r);
	x->filters.p = r.p;
	for (uint32_t i = 0; i < x->filters.n && !r.err; i++) {
		recr_str(&r, &f, &flen);
		recr_u8(&r);
	}
	return recr_end(&r);
}

bool rec_subscribe_next(struct rec_iter *it, struct rec_subscription *s)
{
	if (!it->n)
		return false;
	memcpy(&s->filter.len, it->p, sizeof(s->filter.len));
	s->filter.p = it->p + sizeof(s->filter.len);
	s->qos = s->filter.p[s->filter.len];
	it->p = s->filter.p + s->filter.len + 1;
	it->n--;
	return true;
}

size_t rec_subscribe_begin(struct recw *w, const struct rec_subscribe *x)
{
	size_t count_off;

	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u16(w, x->packet_id);
	count_off = w->len;
	recw_u16(w, 0);
	return count_off;
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

int rec_unsubscribe_decode(struct rec_unsubscribe *x, const void *p, size_t len)
{
	struct recr r;
	const uint8_t *f;
	uint16_t flen;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->packet_id = recr_u16(&r);
	x->filters.n = recr_u16(&r);
	x->filters.p = r.p;
	for (uint32_t i = 0; i < x->filters.n && !r.err; i++)
		recr_str(&r, &f, &flen);
	return recr_end(&r);
}

bool rec_unsubscribe_next(struct rec_iter *it, struct rec_str *filter)
{
	if (!it->n)
		return false;
	memcpy(&filter->len, it->p, sizeof(filter->len));
	filter->p = it->p + sizeof(filter->len);
	it->p = filter->p + filter->len;
	it->n--;
	return true;
}

size_t rec_unsubscribe_begin(struct recw *w, const struct rec_unsubscribe *x)
{
	size_t count_off;

	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u16(w, x->packet_id);
	count_off = w->len;
	recw_u16(w, 0);
	return count_off;
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

int rec_session_msg_decode(struct rec_session_msg *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->sid = recr_u32(&r);
	x->copy = recr_u64(&r);
	x->packet_id = recr_u16(&r);
	x->state = recr_u8(&r);
	x->qos = recr_u8(&r);
	x->retain = recr_u8(&r);
	recr_str(&r, &x->topic.p, &x->topic.len);
	recr_bytes(&r, &x->payload.p, &x->payload.len);
	return recr_end(&r);
}

void rec_session_msg_encode(struct recw *w, const struct rec_session_msg *x)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u32(w, x->sid);
	recw_u64(w, x->copy);
	recw_u16(w, x->packet_id);
	recw_u8(w, x->state);
	recw_u8(w, x->qos);
	recw_u8(w, x->retain);
	recw_str(w, x->topic.p, x->topic.len);
	recw_bytes(w, x->payload.p, x->payload.len);
}

int rec_msg_state_decode(struct rec_msg_state *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->sid = recr_u32(&r);
	x->copy = recr_u64(&r);
	x->packet_id = recr_u16(&r);
	x->state = recr_u8(&r);
	return recr_end(&r);
}

void rec_msg_state_encode(struct recw *w, const struct rec_msg_state *x)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u32(w, x->sid);
	recw_u64(w, x->copy);
	recw_u16(w, x->packet_id);
	recw_u8(w, x->state);
}

int rec_qos2_in_decode(struct rec_qos2_in *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->sid = recr_u32(&r);
	x->packet_id = recr_u16(&r);
	x->held = recr_u8(&r);
	return recr_end(&r);
}

void rec_qos2_in_encode(struct recw *w, const struct rec_qos2_in *x)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u32(w, x->sid);
	recw_u16(w, x->packet_id);
	recw_u8(w, x->held);
}

int rec_close_decode(struct rec_close *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->publish_will = recr_u8(&r);
	rec_read_array16(&r, &x->ids, sizeof(uint16_t));
	return recr_end(&r);
}

void rec_close_encode(struct recw *w, const struct rec_close *x, const uint16_t *ids, uint16_t n)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u8(w, x->publish_will);
	recw_u16(w, n);
	for (uint16_t i = 0; i < n; i++)
		recw_u16(w, ids[i]);
}

int rec_connack_decode(struct rec_connack *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->sid = recr_u32(&r);
	x->rc = recr_u8(&r);
	x->session_present = recr_u8(&r);
	rec_read_array16(&r, &x->ids, sizeof(uint16_t));
	return recr_end(&r);
}

void rec_connack_encode(struct recw *w, const struct rec_connack *x, const uint16_t *ids,
			uint16_t n)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u32(w, x->sid);
	recw_u8(w, x->rc);
	recw_u8(w, x->session_present);
	recw_u16(w, n);
	for (uint16_t i = 0; i < n; i++)
		recw_u16(w, ids[i]);
}

int rec_suback_decode(struct rec_suback *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->packet_id = recr_u16(&r);
	rec_read_array16(&r, &x->codes, sizeof(uint8_t));
	return recr_end(&r);
}

bool rec_suback_next(struct rec_iter *it, uint8_t *code)
{
	if (!it->n)
		return false;
	*code = *it->p++;
	it->n--;
	return true;
}

size_t rec_suback_begin(struct recw *w, const struct rec_suback *x)
{
	size_t count_off;

	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u16(w, x->packet_id);
	count_off = w->len;
	recw_u16(w, 0);
	return count_off;
}

void rec_suback_add(struct recw *w, uint8_t code)
{
	recw_u8(w, code);
}

void rec_suback_end(struct recw *w, size_t count_off, uint16_t n)
{
	recw_patch_u16(w, count_off, n);
}

int rec_unsuback_decode(struct rec_unsuback *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	x->packet_id = recr_u16(&r);
	return recr_end(&r);
}

void rec_unsuback_encode(struct recw *w, const struct rec_unsuback *x)
{
	recw_reset(w);
	recw_u64(w, x->conn);
	recw_u16(w, x->packet_id);
}

int rec_kick_decode(struct rec_kick *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->conn = recr_u64(&r);
	return recr_end(&r);
}

void rec_kick_encode(struct recw *w, const struct rec_kick *x)
{
	recw_reset(w);
	recw_u64(w, x->conn);
}

int rec_route_decode(struct rec_route *x, const void *p, size_t len)
{
	struct recr r;

	recr_init(&r, p, len);
	x->ask = recr_u64(&r);
	x->gen = recr_u64(&r);
	recr_str(&r, &x->topic.p, &x->topic.len);
	x->local = recr_u8(&r);
	x->targets.n = recr_u32(&r);
	/* n x 9 bytes may not fit a size_t of 32 bits: compare by division. */
	if (x->targets.n > recr_left(&r) / REC_ROUTE_TARGET_BYTES)
		return -1;
	x->targets.p = recr_take(&r, (size_t)x->targets.n * REC_ROUTE_TARGET_BYTES);
	return recr_end(&r);
}

bool rec_route_next(struct rec_iter *it, struct rec_route_target *t)
{
	if (!it->n)
		return false;
	memcpy(&t->conn, it->p, sizeof(t->conn));
	t->qos = it->p[sizeof(t->conn)];
	it->p += REC_ROUTE_TARGET_BYTES;
	it->n--;
	return true;
}

size_t rec_route_begin(struct recw *w, const struct rec_route *x)
{
	size_t count_off;

	recw_reset(w);
	recw_u64(w, x->ask);
	recw_u64(w, x->gen);
	recw_str(w, x->topic.p, x->topic.len);
	recw_u8(w, x->local);
	count_off = w->len;
	recw_u32(w, 0);
	return count_off;
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
