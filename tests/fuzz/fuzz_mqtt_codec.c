/*
 * fuzz_mqtt_codec.c - libFuzzer harness for the MQTT codec (daemon/mqtt_codec.c).
 *
 * Treats the input as a stream of packets the way a connection would:
 * fixed header, then decode. Every header is also fed byte by byte and
 * against a packet-size limit; every body is decoded from its own exact
 * allocation so that ASan sees any read past the end; every packet that
 * decodes is re-encoded and must come back byte for byte, lists walked
 * included. UTF-8 validation is checked against a slow reference.
 * Seeds: tests/fuzz/corpus/mqtt_codec/.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzmqtt.h"
#include "mqtt.h"

/* Reference UTF-8 check: decode each code point, then apply [MQTT-1.5.3]. */
static bool mqtt_fz_utf8_ref(const uint8_t *p, size_t len)
{
	static const uint32_t min_cp[] = { 0, 0, 0x80, 0x800, 0x10000 };
	size_t i = 0;

	while (i < len) {
		uint8_t c = p[i];
		uint32_t cp;
		size_t n;

		if (c < 0x80) {
			cp = c;
			n = 1;
		} else if ((c & 0xE0) == 0xC0) {
			cp = c & 0x1F;
			n = 2;
		} else if ((c & 0xF0) == 0xE0) {
			cp = c & 0x0F;
			n = 3;
		} else if ((c & 0xF8) == 0xF0) {
			cp = c & 0x07;
			n = 4;
		} else {
			return false;
		}
		if (len - i < n)
			return false;
		for (size_t k = 1; k < n; k++) {
			if ((p[i + k] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3F);
		}
		if (cp == 0 || cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += n;
	}
	return true;
}

static void mqtt_fz_check_utf8(const uint8_t *data, size_t size)
{
	uint8_t *c = fuzz_copy(data, size);

	CHECK(mqtt_utf8_valid(c, size) == mqtt_fz_utf8_ref(c, size));
	free(c);
}

/*
 * Feeding the header one byte at a time must give INCOMPLETE until the
 * whole-buffer answer, and then that answer; a size limit may only turn
 * an answer into TOO_LARGE, and exactly when the packet is over it.
 */
static void mqtt_fz_check_header(const uint8_t *data, size_t size, size_t max_packet)
{
	size_t avail = size < MQTT_MAX_FIXED_HEADER ? size : MQTT_MAX_FIXED_HEADER;
	uint8_t f0 = 0, f1 = 0;
	uint32_t r0 = 0, r1 = 0;
	size_t h0 = 0, h1 = 0;
	int rc0, rc1;
	bool done = false;

	rc0 = mqtt_fixed_header(data, size, 0, &f0, &r0, &h0);
	for (size_t k = 0; k <= avail; k++) {
		uint8_t *c = fuzz_copy(data, k);
		int rc = mqtt_fixed_header(c, k, 0, &f1, &r1, &h1);

		free(c);
		if (done) {
			CHECK(rc == rc0);
		} else if (rc != MQTT_INCOMPLETE) {
			CHECK(rc == rc0);
			done = true;
		}
	}
	if (rc0 == MQTT_OK) {
		CHECK(done && f1 == f0 && r1 == r0 && h1 == h0);
		CHECK(h0 >= 2 && h0 <= MQTT_MAX_FIXED_HEADER && r0 <= MQTT_MAX_REMAINING);
	}

	rc1 = mqtt_fixed_header(data, size, max_packet, &f1, &r1, &h1);
	if (rc0 == MQTT_OK && max_packet && h0 + r0 > max_packet)
		CHECK(rc1 == MQTT_ERR_TOO_LARGE);
	else if (rc0 == MQTT_OK)
		CHECK(rc1 == MQTT_OK && r1 == r0 && h1 == h0);
	else
		CHECK(rc1 == rc0 || (max_packet && rc1 == MQTT_ERR_TOO_LARGE));
}

/*
 * The decoder is strict and the encoders canonical, so a packet that
 * decodes must re-encode to the same first byte and the same body; only
 * a non-minimal remaining length may differ.
 */
static void mqtt_fz_same_packet(const uint8_t *enc, size_t n, uint8_t first,
				const uint8_t *body, size_t len)
{
	struct mqtt_packet again;
	uint8_t f;
	uint32_t r;
	size_t h;

	CHECK(mqtt_fixed_header(enc, n, 0, &f, &r, &h) == MQTT_OK);
	CHECK(f == first && r == len && h + r == n && h == 1 + mqtt_varint_size(r));
	CHECK(len == 0 || memcmp(enc + h, body, len) == 0);
	CHECK(mqtt_decode(f, enc + h, r, &again) == MQTT_OK);
}

static void mqtt_fz_connect(uint8_t first, const uint8_t *body, size_t len,
			    const struct mqtt_connect *c)
{
	size_t size = mqtt_connect_size(c);
	uint8_t *out = malloc(size);

	CHECK(out != NULL);
	fuzz_in_body(body, len, c->client_id.p, c->client_id.len);
	fuzz_in_body(body, len, c->will_topic.p, c->will_topic.len);
	fuzz_in_body(body, len, c->will_payload.p, c->will_payload.len);
	fuzz_in_body(body, len, c->username.p, c->username.len);
	fuzz_in_body(body, len, c->password.p, c->password.len);
	CHECK(c->protocol_level == 3 || c->protocol_level == 4);
	CHECK(mqtt_encode_connect(out, c) == size);
	mqtt_fz_same_packet(out, size, first, body, len);
	free(out);
}

static void mqtt_fz_publish(uint8_t first, const uint8_t *body, size_t len,
			    const struct mqtt_publish *p)
{
	size_t size = mqtt_publish_size(p->topic.len, p->payload_len, p->qos);
	uint8_t *out = malloc(size);

	CHECK(out != NULL && size != 0);
	fuzz_in_body(body, len, p->topic.p, p->topic.len);
	fuzz_in_body(body, len, p->payload, p->payload_len);
	CHECK(p->qos <= 2 && (p->qos == 0) == (p->packet_id == 0));
	CHECK(mqtt_encode_publish(out, p->dup, p->qos, p->retain, p->topic.p, p->topic.len,
				  p->packet_id, p->payload, p->payload_len) == size);
	mqtt_fz_same_packet(out, size, first, body, len);
	free(out);
}

/* Walk a list, then rebuild the packet from what the walk produced. */
static void mqtt_fz_list(uint8_t first, const uint8_t *body, size_t len,
			 const struct mqtt_packet *pkt)
{
	const struct mqtt_list *l = &pkt->u.list;
	struct mqtt_str *filters;
	uint8_t *qos;
	struct mqtt_list_iter it;
	size_t n = l->count, size;
	uint8_t *out;

	CHECK(l->packet_id != 0);
	mqtt_list_iter_init(&it, pkt);
	fuzz_walk_list(&it, l->count, body, len, &filters, &qos);
	if (pkt->type == MQTT_SUBACK)
		size = mqtt_suback_size(n);
	else
		size = mqtt_sub_size(pkt->type, filters, n);
	out = malloc(size);
	CHECK(out != NULL && size != 0);
	if (pkt->type == MQTT_SUBACK)
		CHECK(mqtt_encode_suback(out, l->packet_id, qos, n) == size);
	else
		CHECK(mqtt_encode_sub(out, pkt->type, l->packet_id, filters, qos, n) == size);
	mqtt_fz_same_packet(out, size, first, body, len);
	free(out);
	free(qos);
	free(filters);
}

static void mqtt_fz_round_trip(uint8_t first, const uint8_t *body, size_t len,
			       const struct mqtt_packet *pkt)
{
	uint8_t out[4];

	CHECK(pkt->type == (first >> 4) && pkt->flags == (first & 0x0F));
	switch (pkt->type) {
	case MQTT_CONNECT:
		mqtt_fz_connect(first, body, len, &pkt->u.connect);
		break;
	case MQTT_CONNACK:
		CHECK(mqtt_encode_connack(out, pkt->u.connack.session_present, pkt->u.connack.rc) == 4);
		mqtt_fz_same_packet(out, 4, first, body, len);
		break;
	case MQTT_PUBLISH:
		mqtt_fz_publish(first, body, len, &pkt->u.publish);
		break;
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
	case MQTT_UNSUBACK:
		CHECK(mqtt_encode_ack(out, pkt->type, pkt->u.packet_id) == 4);
		mqtt_fz_same_packet(out, 4, first, body, len);
		break;
	case MQTT_SUBSCRIBE:
	case MQTT_SUBACK:
	case MQTT_UNSUBSCRIBE:
		mqtt_fz_list(first, body, len, pkt);
		break;
	case MQTT_PINGREQ:
	case MQTT_PINGRESP:
	case MQTT_DISCONNECT:
		CHECK(mqtt_encode_empty(out, pkt->type) == 2);
		mqtt_fz_same_packet(out, 2, first, body, len);
		break;
	case MQTT_AUTH:
		CHECK(false);   /* MQTT 5 only: the 3.1.1 decoder refuses type 15 */
		break;
	}
}

static void mqtt_fz_decode(uint8_t first, const uint8_t *body, size_t len)
{
	uint8_t *c = fuzz_copy(body, len);
	struct mqtt_packet pkt;
	int rc = mqtt_decode(first, c, len, &pkt);

	CHECK(rc <= MQTT_OK && rc >= MQTT_ERR_TYPE);
	CHECK(mqtt_result_str(rc) != NULL && mqtt_type_name(first >> 4) != NULL);
	if (rc == MQTT_OK)
		mqtt_fz_round_trip(first, c, len, &pkt);
	free(c);
}

/* The remaining-length encoder must agree with the header parser. */
static void mqtt_fz_check_varint(uint32_t n)
{
	uint8_t b[1 + MQTT_MAX_FIXED_HEADER] = { MQTT_PINGREQ << 4 };
	size_t sz = mqtt_varint_size(n), h;
	uint8_t f;
	uint32_t r;

	if (n > MQTT_MAX_REMAINING) {
		CHECK(sz == 0 && mqtt_varint_encode(b + 1, n) == 0);
		return;
	}
	CHECK(sz >= 1 && sz <= 4 && mqtt_varint_encode(b + 1, n) == sz);
	CHECK(mqtt_fixed_header(b, 1 + sz, 0, &f, &r, &h) == MQTT_OK && r == n && h == 1 + sz);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t limits[] = { 0, 2, 3, 4, 128, 130, 16386, 1u << 20 };
	size_t off = 0, npkt = 0;

	mqtt_fz_check_utf8(data, size);
	if (size >= 4) {
		uint32_t v;

		memcpy(&v, data + size - 4, 4);
		mqtt_fz_check_varint(v);
		mqtt_fz_check_varint(v & MQTT_MAX_REMAINING);
	}
	while (off < size) {
		uint8_t first;
		uint32_t rem;
		size_t hdr;

		mqtt_fz_check_header(data + off, size - off, limits[npkt % 8]);
		if (mqtt_fixed_header(data + off, size - off, 0, &first, &rem, &hdr) != MQTT_OK)
			break;
		if (rem > size - off - hdr)
			break;  /* a connection would wait for the rest of the body */
		mqtt_fz_decode(first, data + off + hdr, rem);
		off += hdr + rem;
		npkt++;
	}
	return 0;
}
