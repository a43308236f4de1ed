/*
 * fuzz_rec.c - libFuzzer harness for the record decoders and encoders
 * (rec.h).
 *
 * Input: one byte of record type, then the payload. Whatever the bytes,
 * decoding must not crash or read out of bounds, and rec_validate() must
 * give the decoder's verdict. A record that decodes is walked to the end
 * of its list, which must hold exactly its count and end at the record's
 * last byte, and is written again with the real encoder: the bytes must
 * be the same.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) abort(); } while (0)

/* The whole list walked: exactly its count, up to the record's end. */
static void check_walked(const struct rec_iter *it, uint32_t walked, uint32_t n,
			 const uint8_t *end)
{
	CHECK(it->n == 0 && walked == n);
	CHECK(n == 0 || it->p == end);
}

/* The ids of a decoded list, in an array as their writers hold them. */
static uint16_t *ids_array(struct rec_iter it, const uint8_t *end)
{
	uint16_t *ids = malloc(((size_t)it.n + 1) * sizeof(*ids));
	uint32_t n = it.n, i = 0;

	if (!ids)
		abort();
	while (rec_packet_id_next(&it, &ids[i]))
		i++;
	check_walked(&it, i, n, end);
	return ids;
}

static int copy_publish(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_publish x;
	uint8_t *put;

	if (rec_publish_decode(&x, p, len))
		return -1;
	rec_publish_encode(w, &x);
	/* Straight into memory of exactly its size, as into a ring. */
	CHECK(rec_publish_size(&x) == len);
	put = malloc(len);
	if (!put)
		abort();
	rec_publish_put(put, &x);
	CHECK(memcmp(put, p, len) == 0);
	free(put);
	return 0;
}

static int copy_deliver(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_deliver x;
	struct rec_target t;
	struct rec_iter it;
	size_t off, size;
	uint32_t i = 0;

	if (rec_deliver_decode(&x, p, len))
		return -1;
	off = rec_deliver_begin(w, &x);
	size = rec_deliver_head_size(&x);
	it = x.targets;
	while (rec_deliver_next(&it, &t)) {
		CHECK(!(t.qos & REC_TARGET_COPY));
		size += rec_target_size(&t);
		rec_deliver_add(w, &t);
		i++;
	}
	check_walked(&it, i, x.targets.n, p + len);
	rec_deliver_end(w, off, i);
	CHECK(size == len);
	return 0;
}

/* A record of a fixed layout: decoded, and encoded again. */
#define COPY_FIXED(name) \
	static int copy_##name(struct recw *w, const uint8_t *p, size_t len) \
	{ \
		struct rec_##name x; \
\
		if (rec_##name##_decode(&x, p, len)) \
			return -1; \
		rec_##name##_encode(w, &x); \
		return 0; \
	}

COPY_FIXED(connect)
COPY_FIXED(session_msg)
COPY_FIXED(msg_state)
COPY_FIXED(qos2_in)
COPY_FIXED(kick)

/*
 * A record with a list: decoded, its head written again, then its list
 * walked item by item (item_type, handed to rec_<name>_add as arg) into
 * the copy, which must take exactly the count; then the statement after.
 */
#define COPY_LIST(name, list, item_type, arg, after) \
	static int copy_##name(struct recw *w, const uint8_t *p, size_t len) \
	{ \
		struct rec_##name x; \
		item_type item; \
		struct rec_iter it; \
		size_t off; \
		uint32_t i = 0; \
\
		if (rec_##name##_decode(&x, p, len)) \
			return -1; \
		off = rec_##name##_begin(w, &x); \
		it = x.list; \
		for (; rec_##name##_next(&it, &item); i++) \
			rec_##name##_add(w, arg); \
		check_walked(&it, i, x.list.n, p + len); \
		rec_##name##_end(w, off, i); \
		after; \
		return 0; \
	}

COPY_LIST(subscribe, filters, struct rec_subscription, &item, (void)0)
COPY_LIST(unsubscribe, filters, struct rec_str, item, (void)0)
COPY_LIST(route, targets, struct rec_route_target, &item, (void)0)
/* And the codes as written, in one piece. */
COPY_LIST(suback, codes, uint8_t, item,
	  CHECK(w->oom || i == 0 || memcmp(rec_suback_codes(w, off), x.codes.p, i) == 0))

/* UNSUBACK: its codes written as SUBACK's are (rec.h). */
static int copy_unsuback(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_unsuback x;
	struct rec_iter it;
	uint8_t code;
	size_t off;
	uint32_t i = 0;

	if (rec_unsuback_decode(&x, p, len))
		return -1;
	off = rec_unsuback_begin(w, &x);
	for (it = x.codes; rec_suback_next(&it, &code); i++)
		rec_suback_add(w, code);
	check_walked(&it, i, x.codes.n, p + len);
	rec_suback_end(w, off, (uint16_t)i);
	return 0;
}

/* A record with a list of packet ids: decoded, and encoded again from them. */
#define COPY_IDS(name) \
	static int copy_##name(struct recw *w, const uint8_t *p, size_t len) \
	{ \
		struct rec_##name x; \
		uint16_t *ids; \
\
		if (rec_##name##_decode(&x, p, len)) \
			return -1; \
		ids = ids_array(x.ids, p + len); \
		rec_##name##_encode(w, &x, ids, (uint16_t)x.ids.n); \
		free(ids); \
		return 0; \
	}

COPY_IDS(close)
COPY_IDS(connack)

/* Decode p as a record of this type and encode it again into w; -1 if it does not decode. */
static int copy_record(int type, struct recw *w, const uint8_t *p, size_t len)
{
	switch (type) {
	case REC_CONNECT: return copy_connect(w, p, len);
	case REC_SUBSCRIBE: return copy_subscribe(w, p, len);
	case REC_UNSUBSCRIBE: return copy_unsubscribe(w, p, len);
	case REC_PUBLISH: return copy_publish(w, p, len);
	case REC_SESSION_MSG: return copy_session_msg(w, p, len);
	case REC_MSG_STATE: return copy_msg_state(w, p, len);
	case REC_QOS2_IN: return copy_qos2_in(w, p, len);
	case REC_CLOSE: return copy_close(w, p, len);
	case REC_CONNACK: return copy_connack(w, p, len);
	case REC_SUBACK: return copy_suback(w, p, len);
	case REC_UNSUBACK: return copy_unsuback(w, p, len);
	case REC_DELIVER: return copy_deliver(w, p, len);
	case REC_KICK: return copy_kick(w, p, len);
	case REC_ROUTE: return copy_route(w, p, len);
	default: return -1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct recw w;
	uint8_t *payload;
	size_t len;
	int type, rc;

	if (size < 1)
		return 0;
	type = data[0];
	CHECK(rec_type_name(type) && rec_type_name(-type));
	/* A copy of exactly the payload's size, so ASan sees any read past it. */
	len = size - 1;
	payload = malloc(len ? len : 1);
	if (!payload)
		return 0;
	memcpy(payload, data + 1, len);
	recw_init(&w);
	rc = copy_record(type, &w, payload, len);
	CHECK(rec_validate((uint16_t)type, payload, len) == rc);
	if (rc == 0 && !w.oom)
		CHECK(w.len == len && memcmp(w.buf, payload, len) == 0);
	recw_free(&w);
	free(payload);
	return 0;
}
