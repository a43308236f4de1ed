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

static int copy_subscribe(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_subscribe x;
	struct rec_subscription s;
	struct rec_iter it;
	size_t off;
	uint32_t i = 0;

	if (rec_subscribe_decode(&x, p, len))
		return -1;
	off = rec_subscribe_begin(w, &x);
	it = x.filters;
	for (; rec_subscribe_next(&it, &s); i++)
		rec_subscribe_add(w, &s);
	check_walked(&it, i, x.filters.n, p + len);
	rec_subscribe_end(w, off, (uint16_t)i);
	return 0;
}

static int copy_unsubscribe(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_unsubscribe x;
	struct rec_str f;
	struct rec_iter it;
	size_t off;
	uint32_t i = 0;

	if (rec_unsubscribe_decode(&x, p, len))
		return -1;
	off = rec_unsubscribe_begin(w, &x);
	it = x.filters;
	for (; rec_unsubscribe_next(&it, &f); i++)
		rec_unsubscribe_add(w, f);
	check_walked(&it, i, x.filters.n, p + len);
	rec_unsubscribe_end(w, off, (uint16_t)i);
	return 0;
}

static int copy_suback(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_suback x;
	struct rec_iter it;
	size_t off;
	uint32_t i = 0;
	uint8_t code;

	if (rec_suback_decode(&x, p, len))
		return -1;
	off = rec_suback_begin(w, &x);
	it = x.codes;
	for (; rec_suback_next(&it, &code); i++)
		rec_suback_add(w, code);
	check_walked(&it, i, x.codes.n, p + len);
	rec_suback_end(w, off, (uint16_t)i);
	CHECK(w->oom || i == 0 || memcmp(rec_suback_codes(w, off), x.codes.p, i) == 0);
	return 0;
}

static int copy_route(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_route x;
	struct rec_route_target t;
	struct rec_iter it;
	size_t off;
	uint32_t i = 0;

	if (rec_route_decode(&x, p, len))
		return -1;
	off = rec_route_begin(w, &x);
	it = x.targets;
	for (; rec_route_next(&it, &t); i++)
		rec_route_add(w, &t);
	check_walked(&it, i, x.targets.n, p + len);
	rec_route_end(w, off, i);
	return 0;
}

static int copy_close(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_close x;
	uint16_t *ids;

	if (rec_close_decode(&x, p, len))
		return -1;
	ids = ids_array(x.ids, p + len);
	rec_close_encode(w, &x, ids, (uint16_t)x.ids.n);
	free(ids);
	return 0;
}

static int copy_connack(struct recw *w, const uint8_t *p, size_t len)
{
	struct rec_connack x;
	uint16_t *ids;

	if (rec_connack_decode(&x, p, len))
		return -1;
	ids = ids_array(x.ids, p + len);
	rec_connack_encode(w, &x, ids, (uint16_t)x.ids.n);
	free(ids);
	return 0;
}

/* Decode p as a record of this type and encode it again into w; -1 if it does not decode. */
static int copy_record(int type, struct recw *w, const uint8_t *p, size_t len)
{
	union {
		struct rec_connect connect;
		struct rec_session_msg session_msg;
		struct rec_msg_state msg_state;
		struct rec_qos2_in qos2_in;
		struct rec_unsuback unsuback;
		struct rec_kick kick;
	} x;

	switch (type) {
	case REC_CONNECT:
		if (rec_connect_decode(&x.connect, p, len))
			return -1;
		rec_connect_encode(w, &x.connect);
		return 0;
	case REC_SUBSCRIBE:
		return copy_subscribe(w, p, len);
	case REC_UNSUBSCRIBE:
		return copy_unsubscribe(w, p, len);
	case REC_PUBLISH:
		return copy_publish(w, p, len);
	case REC_SESSION_MSG:
		if (rec_session_msg_decode(&x.session_msg, p, len))
			return -1;
		rec_session_msg_encode(w, &x.session_msg);
		return 0;
	case REC_MSG_STATE:
		if (rec_msg_state_decode(&x.msg_state, p, len))
			return -1;
		rec_msg_state_encode(w, &x.msg_state);
		return 0;
	case REC_QOS2_IN:
		if (rec_qos2_in_decode(&x.qos2_in, p, len))
			return -1;
		rec_qos2_in_encode(w, &x.qos2_in);
		return 0;
	case REC_CLOSE:
		return copy_close(w, p, len);
	case REC_CONNACK:
		return copy_connack(w, p, len);
	case REC_SUBACK:
		return copy_suback(w, p, len);
	case REC_UNSUBACK:
		if (rec_unsuback_decode(&x.unsuback, p, len))
			return -1;
		rec_unsuback_encode(w, &x.unsuback);
		return 0;
	case REC_DELIVER:
		return copy_deliver(w, p, len);
	case REC_KICK:
		if (rec_kick_decode(&x.kick, p, len))
			return -1;
		rec_kick_encode(w, &x.kick);
		return 0;
	case REC_ROUTE:
		return copy_route(w, p, len);
	default:
		return -1;
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
