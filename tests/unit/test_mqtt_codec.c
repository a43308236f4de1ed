/*
 * test_mqtt_codec.c - unit tests for the MQTT packet codec (daemon/mqtt_codec.c).
 *
 * Owns the codec's behaviour as the spec states it: every packet type in
 * both directions, round trips, each malformed case the decoder refuses,
 * UTF-8 validation, remaining-length boundaries and partial input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "iotd.h"
#include "mqtt.h"
#include "mqttbytes.h"

/* Decode a whole packet that must hold exactly one complete fixed header + body. */
static int decode_packet(const uint8_t *b, size_t len, struct mqtt_packet *pkt)
{
	uint8_t first;
	uint32_t rem;
	size_t hl = whole_packet(b, len, false, &first, &rem);

	return mqtt_decode(first, b + hl, rem, pkt);
}

/* pkt, decoded, is a SUBSCRIBE, SUBACK or UNSUBSCRIBE: that type, packet id and count. */
static void assert_list_head(const struct mqtt_packet *pkt, enum mqtt_type type, uint16_t packet_id,
			     uint32_t count)
{
	assert_int_equal(pkt->type, type);
	assert_int_equal(pkt->u.list.packet_id, packet_id);
	assert_int_equal(pkt->u.list.count, count);
}

/*
 * The cases below that are one packet and one answer are tables: each case
 * runs as a test of its own, named as the case (see main()).
 */

/*
 * The first bytes of a packet (none: NULL, 0) under max_packet, and
 * mqtt_fixed_header's answer; when MQTT_OK, the remaining length and the
 * header's length it gives, the first byte being the first of bytes.
 */
struct header_case {
	const char *name;
	const uint8_t *bytes;
	size_t len;
	size_t max_packet;
	int rc;
	uint32_t remaining;
	size_t hdr_len;
};

#define HEADER(name, max_packet, rc, ...) { name, BYTES(__VA_ARGS__), max_packet, rc, 0, 0 }
#define HEADER_EMPTY(name, max_packet, rc) { name, NULL, 0, max_packet, rc, 0, 0 }
#define HEADER_OK(name, max_packet, remaining, hdr_len, ...) \
	{ name, BYTES(__VA_ARGS__), max_packet, MQTT_OK, remaining, hdr_len }

static void run_header_case(void **state)
{
	const struct header_case *c = *state;
	uint8_t f = 0;
	uint32_t r = 99;
	size_t h = 99;

	assert_int_equal(mqtt_fixed_header(c->bytes, c->len, c->max_packet, &f, &r, &h), c->rc);
	if (c->rc != MQTT_OK)
		return;
	assert_int_equal(f, c->bytes[0]);
	assert_int_equal(r, c->remaining);
	assert_int_equal(h, c->hdr_len);
}

static void run_decode_case(void **state)
{
	const struct decode_case *c = *state;
	struct mqtt_packet pkt;

	assert_int_equal(mqtt_decode(c->first, c->body, c->len, &pkt), c->rc);
}

/* ---- fixed header ---------------------------------------------------- */

static const struct header_case fixed_header_cases[] = {
	HEADER_EMPTY("test_fixed_header_empty_buffer_is_incomplete", 0, MQTT_INCOMPLETE),
	HEADER("test_fixed_header_without_length_is_incomplete", 0, MQTT_INCOMPLETE, 0x30),
	HEADER("test_fixed_header_type_0_is_rejected", 0, MQTT_ERR_TYPE, 0x00, 0x00),
	HEADER("test_fixed_header_type_15_is_rejected", 0, MQTT_ERR_TYPE, 0xF0, 0x00),
	HEADER("test_fixed_header_type_is_checked_before_length_arrives", 0, MQTT_ERR_TYPE, 0xF0),
	HEADER("test_fixed_header_fifth_length_byte_is_malformed: a fifth byte", 0, MQTT_ERR_MALFORMED,
	       0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01),
	/* decided as soon as the 4th byte says "more", without the 5th */
	HEADER("test_fixed_header_fifth_length_byte_is_malformed: the fourth asking for more", 0, MQTT_ERR_MALFORMED,
	       0x30, 0x80, 0x80, 0x80, 0x80),
	/* 2 + 99 > 100, known from the header alone */
	HEADER("test_fixed_header_over_max_packet_is_too_large_before_body", 100, MQTT_ERR_TOO_LARGE,
	       0x30, 99),
	/* at least 16383 bytes whatever follows: no need to wait for more */
	HEADER_OK("test_fixed_header_non_minimal_length_is_accepted", 0, 0, 3, 0xC0, 0x80, 0x00),
	/* a PUBLISH announcing 200 bytes, none of which are here yet */
	HEADER_OK("test_fixed_header_returns_remaining_before_body_arrives", 0, 200, 3,
		  0x32, 0xC8, 0x01),
	HEADER_OK("test_fixed_header_at_max_packet_is_accepted", 100, 98, 2, 0x30, 98),
	HEADER_OK("test_fixed_header_max_packet_zero_means_protocol_limit", 0, MQTT_MAX_REMAINING, 5,
		  0x30, 0xFF, 0xFF, 0xFF, 0x7F),
	HEADER("test_fixed_header_too_large_detected_from_partial_length", 1000, MQTT_ERR_TOO_LARGE,
	       0x30, 0xFF, 0xFF),
};

static void test_fixed_header_ending_inside_length_is_incomplete(void **state)
{
	const uint8_t b[] = { 0x30, 0xFF, 0xFF, 0xFF, 0x7F };
	uint8_t f;
	uint32_t r;
	size_t h;

	for (size_t n = 0; n < sizeof(b); n++)
		assert_int_equal(mqtt_fixed_header(b, n, 0, &f, &r, &h), MQTT_INCOMPLETE);
	assert_int_equal(mqtt_fixed_header(b, sizeof(b), 0, &f, &r, &h), MQTT_OK);
}

/* ---- remaining length ------------------------------------------------ */

static const struct {
	uint32_t n;
	uint8_t bytes[4];
	size_t size;
} varints[] = {
	{ 0, { 0x00 }, 1 },
	{ 127, { 0x7F }, 1 },
	{ 128, { 0x80, 0x01 }, 2 },
	{ 16383, { 0xFF, 0x7F }, 2 },
	{ 16384, { 0x80, 0x80, 0x01 }, 3 },
	{ 2097151, { 0xFF, 0xFF, 0x7F }, 3 },
	{ 2097152, { 0x80, 0x80, 0x80, 0x01 }, 4 },
	{ 268435455, { 0xFF, 0xFF, 0xFF, 0x7F }, 4 },
};

static void test_varint_size_at_boundaries(void **state)
{
	for (size_t i = 0; i < sizeof(varints) / sizeof(varints[0]); i++)
		assert_int_equal(mqtt_varint_size(varints[i].n), varints[i].size);
}

static void test_varint_encode_at_boundaries(void **state)
{
	for (size_t i = 0; i < sizeof(varints) / sizeof(varints[0]); i++) {
		uint8_t out[8] = { 0 };

		assert_int_equal(mqtt_varint_encode(out, varints[i].n), varints[i].size);
		assert_memory_equal(out, varints[i].bytes, varints[i].size);
	}
}

static void test_fixed_header_decodes_boundary_lengths(void **state)
{
	for (size_t i = 0; i < sizeof(varints) / sizeof(varints[0]); i++) {
		uint8_t b[5] = { 0x30 };
		uint8_t f;
		uint32_t r;
		size_t h;

		memcpy(b + 1, varints[i].bytes, varints[i].size);
		assert_int_equal(mqtt_fixed_header(b, 1 + varints[i].size, 0, &f, &r, &h), MQTT_OK);
		assert_int_equal(r, varints[i].n);
		assert_int_equal(h, 1 + varints[i].size);
	}
}

static void test_varint_over_protocol_limit_is_refused(void **state)
{
	uint8_t out[8] = { 0 };

	assert_int_equal(mqtt_varint_size(MQTT_MAX_REMAINING + 1), 0);
	assert_int_equal(mqtt_varint_encode(out, MQTT_MAX_REMAINING + 1), 0);
}

/* Whole PUBLISH packets whose remaining length sits on each boundary that fits in memory. */
static void test_publish_round_trips_at_length_boundaries(void **state)
{
	static const uint32_t rems[] = { 3, 127, 128, 16383, 16384, 2097151, 2097152 };

	for (size_t i = 0; i < sizeof(rems) / sizeof(rems[0]); i++) {
		size_t payload_len = rems[i] - 3;        /* topic "t" */
		size_t size = mqtt_publish_size(1, payload_len, 0);
		uint8_t *payload = calloc(1, payload_len + 1);
		uint8_t *out = malloc(size);
		struct mqtt_packet pkt;

		assert_non_null(payload);
		assert_non_null(out);
		assert_int_equal(size, 1 + mqtt_varint_size(rems[i]) + rems[i]);
		assert_int_equal(mqtt_encode_publish(out, false, 0, false, (const uint8_t *)"t", 1, 0,
						     payload, payload_len), size);
		assert_int_equal(decode_packet(out, size, &pkt), MQTT_OK);
		assert_int_equal(pkt.u.publish.payload_len, payload_len);
		free(out);
		free(payload);
	}
}

static void test_publish_size_at_protocol_limit(void **state)
{
	/* topic "t": remaining = 2 + 1 + payload */
	assert_int_equal(mqtt_publish_size(1, MQTT_MAX_REMAINING - 3, 0), 5 + (size_t)MQTT_MAX_REMAINING);
	assert_int_equal(mqtt_publish_size(1, MQTT_MAX_REMAINING - 2, 0), 0);
	assert_int_equal(mqtt_publish_size(1, MQTT_MAX_REMAINING - 3, 1), 0);
	assert_int_equal(mqtt_publish_size(1, SIZE_MAX, 0), 0);
}

/* ---- fixed-header flags ---------------------------------------------- */

static const struct {
	enum mqtt_type type;
	uint8_t body[12];
	size_t len;
	uint8_t flags;
} flag_cases[] = {
	{ MQTT_CONNECT, { 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0 }, 12, 0 },
	{ MQTT_CONNACK, { 0, 0 }, 2, 0 },
	{ MQTT_PUBACK, { 0, 1 }, 2, 0 },
	{ MQTT_PUBREC, { 0, 1 }, 2, 0 },
	{ MQTT_PUBREL, { 0, 1 }, 2, 2 },
	{ MQTT_PUBCOMP, { 0, 1 }, 2, 0 },
	{ MQTT_SUBSCRIBE, { 0, 1, 0, 1, 'a', 0 }, 6, 2 },
	{ MQTT_SUBACK, { 0, 1, 0 }, 3, 0 },
	{ MQTT_UNSUBSCRIBE, { 0, 1, 0, 1, 'a' }, 5, 2 },
	{ MQTT_UNSUBACK, { 0, 1 }, 2, 0 },
	{ MQTT_PINGREQ, { 0 }, 0, 0 },
	{ MQTT_PINGRESP, { 0 }, 0, 0 },
	{ MQTT_DISCONNECT, { 0 }, 0, 0 },
};

static void test_non_publish_types_accept_only_their_fixed_flags(void **state)
{
	for (size_t i = 0; i < sizeof(flag_cases) / sizeof(flag_cases[0]); i++) {
		for (uint8_t fl = 0; fl < 16; fl++) {
			struct mqtt_packet pkt;
			int rc = mqtt_decode((uint8_t)(flag_cases[i].type << 4 | fl), flag_cases[i].body,
					     flag_cases[i].len, &pkt);

			assert_int_equal(rc, fl == flag_cases[i].flags ? MQTT_OK : MQTT_ERR_MALFORMED);
		}
	}
}

static const struct decode_case fixed_header_flags_decode_cases[] = {
	DECODE("test_pubrel_with_flags_0_is_malformed", 0x60, MQTT_ERR_MALFORMED, 0, 1),
	DECODE("test_subscribe_with_flags_0_is_malformed", 0x80, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a', 0),
	DECODE("test_unsubscribe_with_flags_0_is_malformed", 0xA0, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a'),
	DECODE_EMPTY("test_decode_type_0_and_15_are_rejected: type 0", 0x00, MQTT_ERR_TYPE),
	DECODE_EMPTY("test_decode_type_0_and_15_are_rejected: type 15", 0xF0, MQTT_ERR_TYPE),
};

/* ---- CONNECT --------------------------------------------------------- */

static const uint8_t connect_full[] = {
	0x10, 35,
	0, 4, 'M', 'Q', 'T', 'T', 4,
	0xEE,                   /* user, pass, will retain, will qos 1, will, clean */
	0, 60,
	0, 3, 'c', 'i', 'd',
	0, 3, 'w', '/', 't',
	0, 2, 0x00, 0xFF,       /* will payload: binary */
	0, 4, 'u', 's', 'e', 'r',
	0, 3, 0x00, 0x01, 0xFF, /* password: binary */
};

static const uint8_t connect_mqisdp[] = {
	0x10, 16,
	0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 3,
	0x02, 0, 30,
	0, 2, 'a', 'b',
};

static void test_connect_minimal_decodes(void **state)
{
	struct mqtt_packet pkt;
	const struct mqtt_connect *c = &pkt.u.connect;

	assert_int_equal(decode_packet(BYTES(0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0),
				       &pkt), MQTT_OK);
	assert_int_equal(pkt.type, MQTT_CONNECT);
	assert_int_equal(c->protocol_level, 4);
	assert_true(c->clean_session);
	assert_int_equal(c->keepalive, 60);
	assert_int_equal(c->client_id.len, 0);
	assert_false(c->will_flag);
	assert_false(c->username_flag);
	assert_false(c->password_flag);
}

static void test_connect_full_decodes(void **state)
{
	struct mqtt_packet pkt;
	const struct mqtt_connect *c = &pkt.u.connect;

	assert_int_equal(decode_packet(connect_full, sizeof(connect_full), &pkt), MQTT_OK);
	assert_int_equal(c->protocol_level, 4);
	assert_true(c->clean_session);
	assert_int_equal(c->keepalive, 60);
	assert_str(c->client_id, "cid");
	assert_true(c->will_flag);
	assert_int_equal(c->will_qos, 1);
	assert_true(c->will_retain);
	assert_str(c->will_topic, "w/t");
	assert_bytes(c->will_payload.p, c->will_payload.len, BYTES(0x00, 0xFF));
	assert_true(c->username_flag);
	assert_str(c->username, "user");
	assert_true(c->password_flag);
	assert_bytes(c->password.p, c->password.len, BYTES(0x00, 0x01, 0xFF));
}

static void test_connect_strings_point_into_the_buffer(void **state)
{
	struct mqtt_packet pkt;

	assert_int_equal(decode_packet(connect_full, sizeof(connect_full), &pkt), MQTT_OK);
	assert_ptr_equal(pkt.u.connect.client_id.p, connect_full + 14);
}

static void test_connect_mqisdp_level_3_decodes(void **state)
{
	struct mqtt_packet pkt;

	assert_int_equal(decode_packet(connect_mqisdp, sizeof(connect_mqisdp), &pkt), MQTT_OK);
	assert_int_equal(pkt.u.connect.protocol_level, 3);
	assert_int_equal(pkt.u.connect.keepalive, 30);
	assert_str(pkt.u.connect.client_id, "ab");
}

static struct mqtt_connect full_connect(void)
{
	return (struct mqtt_connect){
		.protocol_level = 4, .clean_session = true, .keepalive = 60,
		.client_id = STR("cid"),
		.will_flag = true, .will_qos = 1, .will_retain = true,
		.will_topic = STR("w/t"), .will_payload = { (const uint8_t *)"\0\xff", 2 },
		.username_flag = true, .username = STR("user"),
		.password_flag = true, .password = { (const uint8_t *)"\0\x01\xff", 3 },
	};
}

static void test_connect_encodes_to_spec_bytes(void **state)
{
	struct mqtt_connect c = full_connect();
	uint8_t out[64];

	assert_int_equal(mqtt_connect_size(&c), sizeof(connect_full));
	assert_int_equal(mqtt_encode_connect(out, &c), sizeof(connect_full));
	assert_memory_equal(out, connect_full, sizeof(connect_full));
}

static void test_connect_level_3_encodes_as_mqisdp(void **state)
{
	struct mqtt_connect c = { .protocol_level = 3, .clean_session = true,
				  .keepalive = 30, .client_id = STR("ab") };
	uint8_t out[64];

	assert_int_equal(mqtt_connect_size(&c), sizeof(connect_mqisdp));
	assert_int_equal(mqtt_encode_connect(out, &c), sizeof(connect_mqisdp));
	assert_memory_equal(out, connect_mqisdp, sizeof(connect_mqisdp));
}

static void test_connect_round_trips(void **state)
{
	struct mqtt_connect c = full_connect();
	struct mqtt_packet pkt;
	uint8_t out[64], again[64];
	size_t n = mqtt_encode_connect(out, &c);

	assert_int_equal(decode_packet(out, n, &pkt), MQTT_OK);
	assert_int_equal(mqtt_encode_connect(again, &pkt.u.connect), n);
	assert_memory_equal(out, again, n);
}

static void test_connect_without_optional_fields_round_trips(void **state)
{
	struct mqtt_connect c = { .protocol_level = 4, .keepalive = 0, .client_id = STR("x"),
				  .username_flag = true, .username = STR("") };
	struct mqtt_packet pkt;
	uint8_t out[64];
	size_t n = mqtt_encode_connect(out, &c);

	assert_int_equal(decode_packet(out, n, &pkt), MQTT_OK);
	assert_false(pkt.u.connect.clean_session);
	assert_false(pkt.u.connect.will_flag);
	assert_true(pkt.u.connect.username_flag);
	assert_int_equal(pkt.u.connect.username.len, 0);
	assert_false(pkt.u.connect.password_flag);
}

static const struct decode_case connect_decode_cases[] = {
	DECODE("test_connect_unknown_protocol_name_is_refused", 0x10, MQTT_ERR_PROTOCOL_NAME,
	       0, 4, 'M', 'Q', 'T', 'X', 4, 2, 0, 60, 0, 0),
	DECODE("test_connect_protocol_name_is_case_sensitive", 0x10, MQTT_ERR_PROTOCOL_NAME,
	       0, 4, 'm', 'q', 't', 't', 4, 2, 0, 60, 0, 0),
	DECODE("test_connect_empty_protocol_name_is_refused", 0x10, MQTT_ERR_PROTOCOL_NAME,
	       0, 0, 4, 2, 0, 60, 0, 0),
	/* an MQTT 5 CONNECT: properties follow, but the level decides first */
	DECODE("test_connect_mqtt_with_level_5_is_bad_level", 0x10, MQTT_ERR_PROTOCOL_LEVEL,
	       0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 60, 0, 0, 0),
	DECODE("test_connect_mqtt_with_level_3_is_bad_level", 0x10, MQTT_ERR_PROTOCOL_LEVEL,
	       0, 4, 'M', 'Q', 'T', 'T', 3, 2, 0, 60, 0, 0),
	DECODE("test_connect_mqisdp_with_level_4_is_bad_level", 0x10, MQTT_ERR_PROTOCOL_LEVEL,
	       0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 4, 2, 0, 60, 0, 0),
	DECODE("test_connect_reserved_flag_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 60, 0, 0),
	DECODE("test_connect_will_qos_3_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x1E, 0, 60, 0, 0, 0, 1, 't', 0, 0),
	DECODE("test_connect_will_qos_without_will_flag_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x0A, 0, 60, 0, 0),
	DECODE("test_connect_will_retain_without_will_flag_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x22, 0, 60, 0, 0),
	DECODE("test_connect_password_without_username_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x42, 0, 60, 0, 0, 0, 1, 'p'),
	DECODE("test_connect_trailing_bytes_are_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0, 0),
	DECODE("test_connect_missing_username_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 60, 0, 0),
	DECODE("test_connect_invalid_utf8_client_id_is_refused", 0x10, MQTT_ERR_UTF8,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 2, 0xC0, 0x80),
	DECODE("test_connect_invalid_utf8_will_topic_is_refused", 0x10, MQTT_ERR_UTF8,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, 0, 0, 0, 1, 0xFF, 0, 0),
	DECODE("test_connect_invalid_utf8_username_is_refused", 0x10, MQTT_ERR_UTF8,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 60, 0, 0, 0, 1, 0x00),
	DECODE("test_connect_password_and_will_payload_are_not_utf8_checked", 0x10, MQTT_OK,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0xC6, 0, 60, 0, 0, 0, 1, 't', 0, 2, 0x00, 0xC0, 0, 1,
	       'u', 0, 2, 0xFF, 0x00),
	DECODE("test_connect_with_nonzero_fixed_flags_is_malformed", 0x11, MQTT_ERR_MALFORMED,
	       0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0),
};

static void test_connect_every_truncation_is_refused(void **state)
{
	const uint8_t *body = connect_full + 2;
	size_t len = sizeof(connect_full) - 2;

	for (size_t n = 0; n < len; n++) {
		struct mqtt_packet pkt;
		int rc = mqtt_decode(0x10, body, n, &pkt);

		/* a cut inside the name reads as an unknown name; anywhere later, malformed */
		if (n < 6)
			assert_true(rc == MQTT_ERR_MALFORMED || rc == MQTT_ERR_PROTOCOL_NAME);
		else
			assert_int_equal(rc, MQTT_ERR_MALFORMED);
	}
}

/* ---- CONNACK --------------------------------------------------------- */

static void test_connack_decodes(void **state)
{
	struct mqtt_packet pkt;

	assert_int_equal(decode_packet(BYTES(0x20, 2, 0, 0), &pkt), MQTT_OK);
	assert_int_equal(pkt.type, MQTT_CONNACK);
	assert_false(pkt.u.connack.session_present);
	assert_int_equal(pkt.u.connack.rc, MQTT_CONNACK_ACCEPTED);
}

static void test_connack_session_present_decodes(void **state)
{
	struct mqtt_packet pkt;

	assert_int_equal(decode_packet(BYTES(0x20, 2, 1, 0), &pkt), MQTT_OK);
	assert_true(pkt.u.connack.session_present);
}

static void test_connack_return_codes_1_to_5_decode(void **state)
{
	for (uint8_t rc = 1; rc <= 5; rc++) {
		struct mqtt_packet pkt;
		uint8_t b[] = { 0, rc };

		assert_int_equal(mqtt_decode(0x20, b, 2, &pkt), MQTT_OK);
		assert_int_equal(pkt.u.connack.rc, rc);
	}
}

static const struct decode_case connack_decode_cases[] = {
	DECODE("test_connack_return_code_6_is_malformed", 0x20, MQTT_ERR_MALFORMED, 0, 6),
	DECODE("test_connack_reserved_bits_are_malformed: bit 1", 0x20, MQTT_ERR_MALFORMED,
	       0x02, 0),
	DECODE("test_connack_reserved_bits_are_malformed: bit 7", 0x20, MQTT_ERR_MALFORMED,
	       0x80, 0),
	DECODE("test_connack_session_present_with_refusal_is_malformed", 0x20, MQTT_ERR_MALFORMED,
	       1, MQTT_CONNACK_BAD_AUTH),
	DECODE("test_connack_wrong_length_is_malformed: 1 byte", 0x20, MQTT_ERR_MALFORMED, 0),
	DECODE("test_connack_wrong_length_is_malformed: 3 bytes", 0x20, MQTT_ERR_MALFORMED,
	       0, 0, 0),
};

static void test_connack_encodes(void **state)
{
	uint8_t out[4];

	assert_int_equal(mqtt_encode_connack(out, true, 0), 4);
	assert_memory_equal(out, ((const uint8_t[]){ 0x20, 2, 1, 0 }), 4);
	assert_int_equal(mqtt_encode_connack(out, false, MQTT_CONNACK_BAD_PROTOCOL), 4);
	assert_memory_equal(out, ((const uint8_t[]){ 0x20, 2, 0, 1 }), 4);
}

static void test_connack_encoder_clears_session_present_on_refusal(void **state)
{
	uint8_t out[4];

	mqtt_encode_connack(out, true, MQTT_CONNACK_NOT_AUTHORIZED);
	assert_memory_equal(out, ((const uint8_t[]){ 0x20, 2, 0, 5 }), 4);
}

/* ---- PUBLISH --------------------------------------------------------- */

/* A whole PUBLISH (fixed header included) and every field mqtt_decode finds in it. */
struct publish_case {
	const char *name;
	const uint8_t *packet;
	size_t len;
	bool dup;
	uint8_t qos;
	bool retain;
	const char *topic;
	uint16_t packet_id;
	struct mqtt_str payload;
};

static void run_publish_case(void **state)
{
	const struct publish_case *c = *state;
	struct mqtt_packet pkt;
	const struct mqtt_publish *p = &pkt.u.publish;

	assert_int_equal(decode_packet(c->packet, c->len, &pkt), MQTT_OK);
	assert_int_equal(pkt.type, MQTT_PUBLISH);
	assert_int_equal(p->dup, c->dup);
	assert_int_equal(p->qos, c->qos);
	assert_int_equal(p->retain, c->retain);
	assert_str(p->topic, c->topic);
	assert_int_equal(p->packet_id, c->packet_id);
	assert_bytes(p->payload, p->payload_len, c->payload.p, c->payload.len);
}

static const struct publish_case publish_cases[] = {
	{ "test_publish_qos0_decodes", BYTES(0x31, 7, 0, 3, 'a', '/', 'b', 'h', 'i'),
	  false, 0, true, "a/b", 0, STR("hi") },
	{ "test_publish_qos1_decodes", BYTES(0x3A, 7, 0, 1, 't', 0x12, 0x34, 'x', 'y'),
	  true, 1, false, "t", 0x1234, STR("xy") },
	{ "test_publish_qos2_decodes", BYTES(0x34, 6, 0, 1, 't', 0xFF, 0xFF, 0x00),
	  false, 2, false, "t", 0xFFFF, STR("\x00") },
	{ "test_publish_empty_payload_decodes", BYTES(0x30, 3, 0, 1, 't'),
	  false, 0, false, "t", 0, STR("") },
	{ "test_publish_payload_is_binary", BYTES(0x30, 5, 0, 1, 't', 0xC0, 0x00),
	  false, 0, false, "t", 0, STR("\xC0\x00") },
	/* an empty topic is the topic module's to refuse, not the codec's */
	{ "test_publish_empty_topic_decodes", BYTES(0x30, 2, 0, 0),
	  false, 0, false, "", 0, STR("") },
	{ "test_publish_wildcard_topic_is_left_to_the_caller", BYTES(0x30, 5, 0, 3, 'a', '/', '#'),
	  false, 0, false, "a/#", 0, STR("") },
};

static const struct decode_case publish_decode_cases[] = {
	DECODE("test_publish_qos3_is_malformed", 0x36, MQTT_ERR_MALFORMED, 0, 1, 't', 0, 1),
	DECODE("test_publish_qos0_with_dup_is_malformed", 0x38, MQTT_ERR_MALFORMED, 0, 1, 't'),
	DECODE("test_publish_qos1_with_zero_packet_id_is_malformed", 0x32, MQTT_ERR_MALFORMED,
	       0, 1, 't', 0, 0),
	DECODE("test_publish_qos2_without_packet_id_is_malformed", 0x34, MQTT_ERR_MALFORMED,
	       0, 1, 't', 0),
	DECODE("test_publish_topic_longer_than_packet_is_malformed", 0x30, MQTT_ERR_MALFORMED,
	       0, 5, 'a', 'b', 'c'),
	DECODE_EMPTY("test_publish_without_topic_length_is_malformed: no body", 0x30, MQTT_ERR_MALFORMED),
	DECODE("test_publish_without_topic_length_is_malformed: 1 byte", 0x30, MQTT_ERR_MALFORMED,
	       0),
	DECODE("test_publish_invalid_utf8_topic_is_refused", 0x30, MQTT_ERR_UTF8,
	       0, 3, 0xED, 0xA0, 0x80, 'p'),
	DECODE("test_publish_topic_with_nul_is_refused", 0x30, MQTT_ERR_UTF8, 0, 3, 'a', 0, 'b'),
};

static void test_publish_encodes_qos0(void **state)
{
	uint8_t out[16];
	size_t n = mqtt_encode_publish(out, false, 0, true, (const uint8_t *)"a/b", 3, 0,
				       (const uint8_t *)"hi", 2);

	assert_int_equal(n, mqtt_publish_size(3, 2, 0));
	assert_bytes(out, n, BYTES(0x31, 7, 0, 3, 'a', '/', 'b', 'h', 'i'));
}

static void test_publish_encodes_qos1_with_dup(void **state)
{
	uint8_t out[16];
	size_t n = mqtt_encode_publish(out, true, 1, false, (const uint8_t *)"t", 1, 0x1234,
				       (const uint8_t *)"xy", 2);

	assert_int_equal(n, mqtt_publish_size(1, 2, 1));
	assert_bytes(out, n, BYTES(0x3A, 7, 0, 1, 't', 0x12, 0x34, 'x', 'y'));
}

static void test_publish_encodes_qos2_with_empty_payload(void **state)
{
	uint8_t out[16];
	size_t n = mqtt_encode_publish(out, false, 2, false, (const uint8_t *)"t", 1, 7, NULL, 0);

	assert_int_equal(n, mqtt_publish_size(1, 0, 2));
	assert_bytes(out, n, BYTES(0x34, 5, 0, 1, 't', 0, 7));
}

static void test_publish_encoder_clears_dup_at_qos0(void **state)
{
	uint8_t out[16];
	size_t n = mqtt_encode_publish(out, true, 0, false, (const uint8_t *)"t", 1, 0, NULL, 0);

	assert_bytes(out, n, BYTES(0x30, 3, 0, 1, 't'));
}

static void test_publish_encoder_refuses_qos3_and_long_topic(void **state)
{
	uint8_t out[16];

	assert_int_equal(mqtt_publish_size(1, 0, 3), 0);
	assert_int_equal(mqtt_encode_publish(out, false, 3, false, (const uint8_t *)"t", 1, 1, NULL, 0), 0);
	assert_int_equal(mqtt_publish_size(65536, 0, 0), 0);
}

static void test_publish_round_trips_every_qos(void **state)
{
	for (uint8_t qos = 0; qos <= 2; qos++) {
		uint8_t out[64], again[64];
		struct mqtt_packet pkt;
		const struct mqtt_publish *p = &pkt.u.publish;
		size_t n = mqtt_encode_publish(out, qos > 0, qos, true, (const uint8_t *)"s/\xc3\xa9", 4,
					       qos ? 42 : 0, (const uint8_t *)"payload", 7);

		assert_int_equal(decode_packet(out, n, &pkt), MQTT_OK);
		assert_int_equal(mqtt_encode_publish(again, p->dup, p->qos, p->retain, p->topic.p,
						     p->topic.len, p->packet_id, p->payload,
						     p->payload_len), n);
		assert_memory_equal(out, again, n);
	}
}

/* ---- PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK ------------------------ */

static const enum mqtt_type ack_types[] = {
	MQTT_PUBACK, MQTT_PUBREC, MQTT_PUBREL, MQTT_PUBCOMP, MQTT_UNSUBACK,
};

static uint8_t ack_first_byte(enum mqtt_type t)
{
	return (uint8_t)(t << 4 | (t == MQTT_PUBREL ? 2 : 0));
}

static void test_acks_decode(void **state)
{
	for (size_t i = 0; i < sizeof(ack_types) / sizeof(ack_types[0]); i++) {
		uint8_t b[] = { ack_first_byte(ack_types[i]), 2, 0xAB, 0xCD };
		struct mqtt_packet pkt;

		assert_int_equal(decode_packet(b, sizeof(b), &pkt), MQTT_OK);
		assert_int_equal(pkt.type, ack_types[i]);
		assert_int_equal(pkt.u.packet_id, 0xABCD);
	}
}

static void test_acks_encode(void **state)
{
	for (size_t i = 0; i < sizeof(ack_types) / sizeof(ack_types[0]); i++) {
		uint8_t want[] = { ack_first_byte(ack_types[i]), 2, 0x01, 0x02 };
		uint8_t out[4];

		assert_int_equal(mqtt_encode_ack(out, ack_types[i], 0x0102), 4);
		assert_memory_equal(out, want, 4);
	}
}

static void test_pubrel_encodes_with_flags_2(void **state)
{
	uint8_t out[4];

	mqtt_encode_ack(out, MQTT_PUBREL, 1);
	assert_int_equal(out[0], 0x62);
}

static void test_acks_round_trip(void **state)
{
	for (size_t i = 0; i < sizeof(ack_types) / sizeof(ack_types[0]); i++) {
		uint8_t out[4];
		struct mqtt_packet pkt;

		mqtt_encode_ack(out, ack_types[i], 65535);
		assert_int_equal(decode_packet(out, 4, &pkt), MQTT_OK);
		assert_int_equal(pkt.type, ack_types[i]);
		assert_int_equal(pkt.u.packet_id, 65535);
	}
}

static void test_ack_with_zero_packet_id_is_malformed(void **state)
{
	for (size_t i = 0; i < sizeof(ack_types) / sizeof(ack_types[0]); i++) {
		struct mqtt_packet pkt;

		assert_int_equal(mqtt_decode(ack_first_byte(ack_types[i]), BYTES(0, 0), &pkt),
				 MQTT_ERR_MALFORMED);
	}
}

static void test_ack_with_wrong_length_is_malformed(void **state)
{
	for (size_t i = 0; i < sizeof(ack_types) / sizeof(ack_types[0]); i++) {
		struct mqtt_packet pkt;
		uint8_t f = ack_first_byte(ack_types[i]);

		assert_int_equal(mqtt_decode(f, NULL, 0, &pkt), MQTT_ERR_MALFORMED);
		assert_int_equal(mqtt_decode(f, BYTES(1), &pkt), MQTT_ERR_MALFORMED);
		assert_int_equal(mqtt_decode(f, BYTES(0, 1, 0), &pkt), MQTT_ERR_MALFORMED);
	}
}

static void test_encode_ack_refuses_other_types(void **state)
{
	uint8_t out[4];

	assert_int_equal(mqtt_encode_ack(out, MQTT_PUBLISH, 1), 0);
	assert_int_equal(mqtt_encode_ack(out, MQTT_SUBACK, 1), 0);
}

/* ---- SUBSCRIBE ------------------------------------------------------- */

static const uint8_t subscribe_pkt[] = {
	0x82, 17,
	0x00, 0x0A,
	0, 3, 'a', '/', 'b', 0,
	0, 0, 1,                /* empty filter: the topic module's problem */
	0, 3, 'c', '/', '#', 2,
};

static void test_subscribe_decodes_and_walks(void **state)
{
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t q;

	assert_int_equal(decode_packet(subscribe_pkt, sizeof(subscribe_pkt), &pkt), MQTT_OK);
	assert_list_head(&pkt, MQTT_SUBSCRIBE, 10, 3);
	mqtt_list_iter_init(&it, &pkt);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_str(f, "a/b");
	assert_int_equal(q, 0);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_str(f, "");
	assert_int_equal(q, 1);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_str(f, "c/#");
	assert_int_equal(q, 2);
	assert_false(mqtt_list_next(&it, &f, &q));
}

static void test_subscribe_encodes(void **state)
{
	const struct mqtt_str filters[] = { STR("a/b"), STR(""), STR("c/#") };
	const uint8_t qos[] = { 0, 1, 2 };
	uint8_t out[32];

	assert_int_equal(mqtt_sub_size(MQTT_SUBSCRIBE, filters, 3), sizeof(subscribe_pkt));
	assert_int_equal(mqtt_encode_sub(out, MQTT_SUBSCRIBE, 10, filters, qos, 3), sizeof(subscribe_pkt));
	assert_memory_equal(out, subscribe_pkt, sizeof(subscribe_pkt));
}

static void test_subscribe_round_trips(void **state)
{
	struct mqtt_str filters[4];
	uint8_t qos[4], again[32];
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	size_t n = 0;

	assert_int_equal(decode_packet(subscribe_pkt, sizeof(subscribe_pkt), &pkt), MQTT_OK);
	mqtt_list_iter_init(&it, &pkt);
	while (n < 4 && mqtt_list_next(&it, &filters[n], &qos[n]))
		n++;
	assert_int_equal(n, pkt.u.list.count);
	assert_int_equal(mqtt_encode_sub(again, MQTT_SUBSCRIBE, pkt.u.list.packet_id, filters, qos, n),
			 sizeof(subscribe_pkt));
	assert_memory_equal(again, subscribe_pkt, sizeof(subscribe_pkt));
}

static const struct decode_case subscribe_decode_cases[] = {
	DECODE("test_subscribe_zero_packet_id_is_malformed", 0x82, MQTT_ERR_MALFORMED,
	       0, 0, 0, 1, 'a', 0),
	DECODE("test_subscribe_without_entries_is_malformed", 0x82, MQTT_ERR_MALFORMED, 0, 1),
	DECODE_EMPTY("test_subscribe_without_packet_id_is_malformed: no body", 0x82, MQTT_ERR_MALFORMED),
	DECODE("test_subscribe_without_packet_id_is_malformed: 1 byte", 0x82, MQTT_ERR_MALFORMED,
	       0),
	DECODE("test_subscribe_qos_3_is_malformed", 0x82, MQTT_ERR_MALFORMED, 0, 1, 0, 1, 'a', 3),
	DECODE("test_subscribe_reserved_qos_bits_are_malformed: 0x04", 0x82, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a', 0x04),
	DECODE("test_subscribe_reserved_qos_bits_are_malformed: 0x81", 0x82, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a', 0x81),
	DECODE("test_subscribe_missing_qos_is_malformed", 0x82, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a'),
	DECODE("test_subscribe_truncated_filter_is_malformed: shorter than its length", 0x82, MQTT_ERR_MALFORMED,
	       0, 1, 0, 4, 'a', 'b', 0),
	DECODE("test_subscribe_truncated_filter_is_malformed: a second length cut", 0x82, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a', 0, 0),
	DECODE("test_subscribe_invalid_utf8_filter_is_refused", 0x82, MQTT_ERR_UTF8,
	       0, 1, 0, 2, 0xE0, 0x80, 0),
};

/* ---- SUBACK ---------------------------------------------------------- */

static void test_suback_decodes_and_walks(void **state)
{
	const uint8_t want[] = { 0, 1, 2, MQTT_SUBACK_FAILURE };
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t q;
	size_t n = 0;

	assert_int_equal(decode_packet(BYTES(0x90, 6, 0x00, 0x0A, 0, 1, 2, 0x80), &pkt), MQTT_OK);
	assert_list_head(&pkt, MQTT_SUBACK, 10, 4);
	mqtt_list_iter_init(&it, &pkt);
	while (mqtt_list_next(&it, &f, &q)) {
		assert_true(n < 4);
		assert_int_equal(q, want[n]);
		assert_int_equal(f.len, 0);
		n++;
	}
	assert_int_equal(n, 4);
}

static void test_suback_encodes(void **state)
{
	const uint8_t codes[] = { 0, 1, 2, MQTT_SUBACK_FAILURE };
	uint8_t out[16];

	assert_int_equal(mqtt_suback_size(4), 8);
	assert_int_equal(mqtt_encode_suback(out, 10, codes, 4), 8);
	assert_memory_equal(out, ((const uint8_t[]){ 0x90, 6, 0, 10, 0, 1, 2, 0x80 }), 8);
}

static void test_suback_round_trips(void **state)
{
	const uint8_t codes[] = { 2, MQTT_SUBACK_FAILURE, 0 };
	uint8_t out[16], got[3];
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	size_t n = mqtt_encode_suback(out, 77, codes, 3), i = 0;

	assert_int_equal(decode_packet(out, n, &pkt), MQTT_OK);
	assert_int_equal(pkt.u.list.packet_id, 77);
	mqtt_list_iter_init(&it, &pkt);
	while (i < 3 && mqtt_list_next(&it, NULL, &got[i]))
		i++;
	assert_int_equal(i, 3);
	assert_memory_equal(got, codes, 3);
}

static const struct decode_case suback_decode_cases[] = {
	DECODE("test_suback_invalid_return_code_is_malformed: 3", 0x90, MQTT_ERR_MALFORMED,
	       0, 1, 3),
	DECODE("test_suback_invalid_return_code_is_malformed: 0x81", 0x90, MQTT_ERR_MALFORMED,
	       0, 1, 0x81),
	DECODE("test_suback_without_return_codes_is_malformed", 0x90, MQTT_ERR_MALFORMED, 0, 1),
	DECODE("test_suback_zero_packet_id_is_malformed", 0x90, MQTT_ERR_MALFORMED, 0, 0, 0),
};

static void test_suback_size_of_nothing_is_zero(void **state)
{
	assert_int_equal(mqtt_suback_size(0), 0);
}

static void test_encode_suback_refuses_empty_list(void **state)
{
	uint8_t out[8];

	assert_int_equal(mqtt_encode_suback(out, 1, NULL, 0), 0);
}

/* A SUBACK body of a packet id and n return codes, all granted QoS 1. */
static int decode_suback_of(size_t n, struct mqtt_packet *pkt)
{
	uint8_t *body = malloc(2 + n);
	int rc;

	assert_non_null(body);
	body[0] = 0;
	body[1] = 1;
	memset(body + 2, 1, n);
	rc = mqtt_decode(0x90, body, 2 + n, pkt);
	free(body);
	return rc;
}

static void test_list_of_65535_entries_decodes(void **state)
{
	struct mqtt_packet pkt;

	assert_int_equal(decode_suback_of(65535, &pkt), MQTT_OK);
	assert_int_equal(pkt.u.list.count, 65535);
}

static void test_list_of_more_than_65535_entries_is_too_large(void **state)
{
	struct mqtt_packet pkt;

	/* the entry count is 16 bits wide */
	assert_int_equal(decode_suback_of(65536, &pkt), MQTT_ERR_TOO_LARGE);
}

/* ---- UNSUBSCRIBE ----------------------------------------------------- */

static const uint8_t unsubscribe_pkt[] = {
	0xA2, 10,
	0x01, 0x00,
	0, 1, 'a',
	0, 3, 'b', '/', '+',
};

static void test_unsubscribe_decodes_and_walks(void **state)
{
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t q = 9;

	assert_int_equal(decode_packet(unsubscribe_pkt, sizeof(unsubscribe_pkt), &pkt), MQTT_OK);
	assert_list_head(&pkt, MQTT_UNSUBSCRIBE, 256, 2);
	mqtt_list_iter_init(&it, &pkt);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_str(f, "a");
	assert_true(mqtt_list_next(&it, &f, NULL));
	assert_str(f, "b/+");
	assert_false(mqtt_list_next(&it, &f, &q));
}

static void test_unsubscribe_encodes(void **state)
{
	const struct mqtt_str filters[] = { STR("a"), STR("b/+") };
	uint8_t out[32];

	assert_int_equal(mqtt_sub_size(MQTT_UNSUBSCRIBE, filters, 2), sizeof(unsubscribe_pkt));
	assert_int_equal(mqtt_encode_sub(out, MQTT_UNSUBSCRIBE, 256, filters, NULL, 2),
			 sizeof(unsubscribe_pkt));
	assert_memory_equal(out, unsubscribe_pkt, sizeof(unsubscribe_pkt));
}

static void test_unsubscribe_round_trips(void **state)
{
	struct mqtt_str filters[2];
	uint8_t again[32];
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	size_t n = 0;

	assert_int_equal(decode_packet(unsubscribe_pkt, sizeof(unsubscribe_pkt), &pkt), MQTT_OK);
	mqtt_list_iter_init(&it, &pkt);
	while (n < 2 && mqtt_list_next(&it, &filters[n], NULL))
		n++;
	assert_int_equal(mqtt_encode_sub(again, MQTT_UNSUBSCRIBE, pkt.u.list.packet_id, filters, NULL, n),
			 sizeof(unsubscribe_pkt));
	assert_memory_equal(again, unsubscribe_pkt, sizeof(unsubscribe_pkt));
}

static const struct decode_case unsubscribe_decode_cases[] = {
	DECODE("test_unsubscribe_without_filters_is_malformed", 0xA2, MQTT_ERR_MALFORMED, 0, 1),
	DECODE("test_unsubscribe_zero_packet_id_is_malformed", 0xA2, MQTT_ERR_MALFORMED,
	       0, 0, 0, 1, 'a'),
	DECODE("test_unsubscribe_truncated_filter_is_malformed: shorter than its length", 0xA2, MQTT_ERR_MALFORMED,
	       0, 1, 0, 3, 'a'),
	DECODE("test_unsubscribe_truncated_filter_is_malformed: a second length cut", 0xA2, MQTT_ERR_MALFORMED,
	       0, 1, 0, 1, 'a', 0),
	DECODE("test_unsubscribe_invalid_utf8_filter_is_refused", 0xA2, MQTT_ERR_UTF8,
	       0, 1, 0, 1, 0x80),
};

static void test_unsubscribe_empty_filter_decodes(void **state)
{
	struct mqtt_packet pkt;

	assert_int_equal(mqtt_decode(0xA2, BYTES(0, 1, 0, 0), &pkt), MQTT_OK);
	assert_int_equal(pkt.u.list.count, 1);
}

static void test_sub_size_refuses_empty_lists_and_other_types(void **state)
{
	const struct mqtt_str filters[] = { STR("a") };

	assert_int_equal(mqtt_sub_size(MQTT_SUBSCRIBE, filters, 0), 0);
	assert_int_equal(mqtt_sub_size(MQTT_PUBLISH, filters, 1), 0);
}

static void test_encode_sub_refuses_empty_lists_and_other_types(void **state)
{
	const struct mqtt_str filters[] = { STR("a") };
	const uint8_t qos[] = { 0 };
	uint8_t out[16];

	assert_int_equal(mqtt_encode_sub(out, MQTT_UNSUBSCRIBE, 1, filters, NULL, 0), 0);
	assert_int_equal(mqtt_encode_sub(out, MQTT_SUBACK, 1, filters, qos, 1), 0);
}

static void test_sub_size_over_protocol_limit_is_zero(void **state)
{
	/* 4097 maximal filters need 4097 * 65538 > 268435455 bytes; only lengths are read */
	static struct mqtt_str big[4097];

	for (size_t i = 0; i < 4097; i++)
		big[i].len = UINT16_MAX;
	assert_int_not_equal(mqtt_sub_size(MQTT_UNSUBSCRIBE, big, 4095), 0);
	assert_int_equal(mqtt_sub_size(MQTT_UNSUBSCRIBE, big, 4097), 0);
	assert_int_equal(mqtt_sub_size(MQTT_SUBSCRIBE, big, MQTT_MAX_REMAINING), 0);
}

/* ---- PINGREQ, PINGRESP, DISCONNECT ------------------------------------ */

static const enum mqtt_type empty_types[] = { MQTT_PINGREQ, MQTT_PINGRESP, MQTT_DISCONNECT };

static void test_empty_packets_decode(void **state)
{
	for (size_t i = 0; i < 3; i++) {
		uint8_t b[] = { (uint8_t)(empty_types[i] << 4), 0 };
		struct mqtt_packet pkt;

		assert_int_equal(decode_packet(b, 2, &pkt), MQTT_OK);
		assert_int_equal(pkt.type, empty_types[i]);
	}
}

static void test_empty_packets_encode(void **state)
{
	for (size_t i = 0; i < 3; i++) {
		uint8_t want[] = { (uint8_t)(empty_types[i] << 4), 0 };
		uint8_t out[2];

		assert_int_equal(mqtt_encode_empty(out, empty_types[i]), 2);
		assert_memory_equal(out, want, 2);
	}
}

static void test_empty_packets_with_a_body_are_malformed(void **state)
{
	for (size_t i = 0; i < 3; i++) {
		struct mqtt_packet pkt;

		assert_int_equal(mqtt_decode((uint8_t)(empty_types[i] << 4), BYTES(0), &pkt),
				 MQTT_ERR_MALFORMED);
	}
}

static void test_encode_empty_refuses_other_types(void **state)
{
	uint8_t out[2];

	assert_int_equal(mqtt_encode_empty(out, MQTT_CONNECT), 0);
}

/* ---- streams of packets ---------------------------------------------- */

static void test_back_to_back_packets_split_cleanly(void **state)
{
	const uint8_t stream[] = { 0xC0, 0, 0x40, 2, 0, 5, 0x30, 3, 0, 1, 't', 0xE0, 0 };
	const enum mqtt_type want[] = { MQTT_PINGREQ, MQTT_PUBACK, MQTT_PUBLISH, MQTT_DISCONNECT };
	size_t off = 0, i = 0;

	while (off < sizeof(stream)) {
		uint8_t f;
		uint32_t r;
		size_t h;
		struct mqtt_packet pkt;

		assert_int_equal(mqtt_fixed_header(stream + off, sizeof(stream) - off, 0, &f, &r, &h), MQTT_OK);
		assert_true(off + h + r <= sizeof(stream));
		assert_int_equal(mqtt_decode(f, stream + off + h, r, &pkt), MQTT_OK);
		assert_int_equal(pkt.type, want[i++]);
		off += h + r;
	}
	assert_int_equal(i, 4);
}

/* ---- UTF-8 ----------------------------------------------------------- */

static void test_utf8_empty_is_valid(void **state)
{
	assert_true(mqtt_utf8_valid(NULL, 0));
}

static void test_utf8_ascii_is_valid(void **state)
{
	assert_true(mqtt_utf8_valid(BYTES('s', 'e', 'n', 's', 'o', 'r', '/', '1', '/', 't', 'e', 'm', 'p')));
}

static void test_utf8_valid_multibyte_sequences(void **state)
{
	assert_true(mqtt_utf8_valid(BYTES(0xC3, 0xA9)));                /* U+00E9 */
	assert_true(mqtt_utf8_valid(BYTES(0xE2, 0x82, 0xAC)));          /* U+20AC */
	assert_true(mqtt_utf8_valid(BYTES(0xF0, 0x9F, 0x98, 0x80)));    /* U+1F600 */
	assert_true(mqtt_utf8_valid(BYTES('a', 0xC2, 0x80, 'b', 0xDF, 0xBF, 'c', 'd', 'e', 'f',
					  'g', 'h', 'i', 0xEF, 0xBF, 0xBF)));
}

static void test_utf8_boundary_code_points_are_valid(void **state)
{
	assert_true(mqtt_utf8_valid(BYTES(0x01)));                      /* U+0001 */
	assert_true(mqtt_utf8_valid(BYTES(0x7F)));                      /* U+007F */
	assert_true(mqtt_utf8_valid(BYTES(0xED, 0x9F, 0xBF)));          /* U+D7FF */
	assert_true(mqtt_utf8_valid(BYTES(0xEE, 0x80, 0x80)));          /* U+E000 */
	assert_true(mqtt_utf8_valid(BYTES(0xEF, 0xBF, 0xBF)));          /* U+FFFF */
	assert_true(mqtt_utf8_valid(BYTES(0xF4, 0x8F, 0xBF, 0xBF)));    /* U+10FFFF */
}

static void test_utf8_overlong_two_byte_nul_is_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0xC0, 0x80)));
	assert_false(mqtt_utf8_valid(BYTES(0xC1, 0xBF)));
}

static void test_utf8_overlong_three_and_four_byte_forms_are_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0xE0, 0x80, 0x80)));
	assert_false(mqtt_utf8_valid(BYTES(0xE0, 0x9F, 0xBF)));
	assert_false(mqtt_utf8_valid(BYTES(0xF0, 0x80, 0x80, 0x80)));
	assert_false(mqtt_utf8_valid(BYTES(0xF0, 0x8F, 0xBF, 0xBF)));
}

static void test_utf8_surrogates_are_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0xED, 0xA0, 0x80)));         /* U+D800 */
	assert_false(mqtt_utf8_valid(BYTES(0xED, 0xBF, 0xBF)));         /* U+DFFF */
}

static void test_utf8_nul_is_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0x00)));
	assert_false(mqtt_utf8_valid(BYTES('a', 'b', 0x00)));
}

static void test_utf8_nul_inside_long_ascii_is_invalid(void **state)
{
	char s[40];

	for (size_t pos = 0; pos < sizeof(s); pos++) {
		memset(s, 'x', sizeof(s));
		s[pos] = 0;
		assert_false(mqtt_utf8_valid((const uint8_t *)s, sizeof(s)));
	}
}

static void test_utf8_bad_byte_inside_long_ascii_is_invalid(void **state)
{
	char s[40];

	for (size_t pos = 0; pos < sizeof(s); pos++) {
		memset(s, 'x', sizeof(s));
		s[pos] = (char)0xFF;
		assert_false(mqtt_utf8_valid((const uint8_t *)s, sizeof(s)));
	}
}

static void test_utf8_truncated_sequence_is_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0xC3)));
	assert_false(mqtt_utf8_valid(BYTES(0xE2, 0x82)));
	assert_false(mqtt_utf8_valid(BYTES(0xF0, 0x9F, 0x98)));
	assert_false(mqtt_utf8_valid(BYTES('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 0xE2, 0x82)));
}

static void test_utf8_above_u10ffff_is_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0xF4, 0x90, 0x80, 0x80)));
	assert_false(mqtt_utf8_valid(BYTES(0xF5, 0x80, 0x80, 0x80)));
	assert_false(mqtt_utf8_valid(BYTES(0xFF)));
}

static void test_utf8_lone_continuation_is_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0x80)));
	assert_false(mqtt_utf8_valid(BYTES('a', 0xBF, 'b')));
}

static void test_utf8_bad_continuation_is_invalid(void **state)
{
	assert_false(mqtt_utf8_valid(BYTES(0xC3, 0x41)));
	assert_false(mqtt_utf8_valid(BYTES(0xE2, 0x82, 0xC0)));
	assert_false(mqtt_utf8_valid(BYTES(0xF0, 0x9F, 0x98, 0x7F)));
}

static void test_utf8_length_bounds_the_check(void **state)
{
	/* only the first two bytes are the string; the 0xFF after them is not */
	assert_true(mqtt_utf8_valid((const uint8_t *)"ab\xff", 2));
}

/* ---- names ----------------------------------------------------------- */

static void test_type_names(void **state)
{
	assert_string_equal(mqtt_type_name(MQTT_CONNECT), "CONNECT");
	assert_string_equal(mqtt_type_name(MQTT_UNSUBSCRIBE), "UNSUBSCRIBE");
	assert_string_equal(mqtt_type_name(MQTT_DISCONNECT), "DISCONNECT");
	assert_string_equal(mqtt_type_name(0), "UNKNOWN");
	assert_string_equal(mqtt_type_name(MQTT_AUTH), "AUTH");
	assert_string_equal(mqtt_type_name(16), "UNKNOWN");
	assert_string_equal(mqtt_type_name(-1), "UNKNOWN");
}

static void test_result_strings_are_distinct(void **state)
{
	static const int results[] = {
		MQTT_OK, MQTT_INCOMPLETE, MQTT_ERR_MALFORMED, MQTT_ERR_UTF8, MQTT_ERR_PROTOCOL_NAME,
		MQTT_ERR_PROTOCOL_LEVEL, MQTT_ERR_TOO_LARGE, MQTT_ERR_TYPE, MQTT_ERR_PROTOCOL,
	};
	const size_t n = sizeof(results) / sizeof(results[0]);

	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			assert_string_not_equal(mqtt_result_str(results[i]), mqtt_result_str(results[j]));
	assert_string_equal(mqtt_result_str(42), "unknown result");
}

int main(void)
{
	static const struct CMUnitTest functions[] = {
		cmocka_unit_test(test_fixed_header_ending_inside_length_is_incomplete),
		cmocka_unit_test(test_varint_size_at_boundaries),
		cmocka_unit_test(test_varint_encode_at_boundaries),
		cmocka_unit_test(test_fixed_header_decodes_boundary_lengths),
		cmocka_unit_test(test_varint_over_protocol_limit_is_refused),
		cmocka_unit_test(test_publish_round_trips_at_length_boundaries),
		cmocka_unit_test(test_publish_size_at_protocol_limit),
		cmocka_unit_test(test_non_publish_types_accept_only_their_fixed_flags),
		cmocka_unit_test(test_connect_minimal_decodes),
		cmocka_unit_test(test_connect_full_decodes),
		cmocka_unit_test(test_connect_strings_point_into_the_buffer),
		cmocka_unit_test(test_connect_mqisdp_level_3_decodes),
		cmocka_unit_test(test_connect_encodes_to_spec_bytes),
		cmocka_unit_test(test_connect_level_3_encodes_as_mqisdp),
		cmocka_unit_test(test_connect_round_trips),
		cmocka_unit_test(test_connect_without_optional_fields_round_trips),
		cmocka_unit_test(test_connect_every_truncation_is_refused),
		cmocka_unit_test(test_connack_decodes),
		cmocka_unit_test(test_connack_session_present_decodes),
		cmocka_unit_test(test_connack_return_codes_1_to_5_decode),
		cmocka_unit_test(test_connack_encodes),
		cmocka_unit_test(test_connack_encoder_clears_session_present_on_refusal),
		cmocka_unit_test(test_publish_encodes_qos0),
		cmocka_unit_test(test_publish_encodes_qos1_with_dup),
		cmocka_unit_test(test_publish_encodes_qos2_with_empty_payload),
		cmocka_unit_test(test_publish_encoder_clears_dup_at_qos0),
		cmocka_unit_test(test_publish_encoder_refuses_qos3_and_long_topic),
		cmocka_unit_test(test_publish_round_trips_every_qos),
		cmocka_unit_test(test_acks_decode),
		cmocka_unit_test(test_acks_encode),
		cmocka_unit_test(test_pubrel_encodes_with_flags_2),
		cmocka_unit_test(test_acks_round_trip),
		cmocka_unit_test(test_ack_with_zero_packet_id_is_malformed),
		cmocka_unit_test(test_ack_with_wrong_length_is_malformed),
		cmocka_unit_test(test_encode_ack_refuses_other_types),
		cmocka_unit_test(test_subscribe_decodes_and_walks),
		cmocka_unit_test(test_subscribe_encodes),
		cmocka_unit_test(test_subscribe_round_trips),
		cmocka_unit_test(test_suback_decodes_and_walks),
		cmocka_unit_test(test_suback_encodes),
		cmocka_unit_test(test_suback_round_trips),
		cmocka_unit_test(test_suback_size_of_nothing_is_zero),
		cmocka_unit_test(test_encode_suback_refuses_empty_list),
		cmocka_unit_test(test_list_of_65535_entries_decodes),
		cmocka_unit_test(test_list_of_more_than_65535_entries_is_too_large),
		cmocka_unit_test(test_unsubscribe_decodes_and_walks),
		cmocka_unit_test(test_unsubscribe_encodes),
		cmocka_unit_test(test_unsubscribe_round_trips),
		cmocka_unit_test(test_unsubscribe_empty_filter_decodes),
		cmocka_unit_test(test_sub_size_refuses_empty_lists_and_other_types),
		cmocka_unit_test(test_encode_sub_refuses_empty_lists_and_other_types),
		cmocka_unit_test(test_sub_size_over_protocol_limit_is_zero),
		cmocka_unit_test(test_empty_packets_decode),
		cmocka_unit_test(test_empty_packets_encode),
		cmocka_unit_test(test_empty_packets_with_a_body_are_malformed),
		cmocka_unit_test(test_encode_empty_refuses_other_types),
		cmocka_unit_test(test_back_to_back_packets_split_cleanly),
		cmocka_unit_test(test_utf8_empty_is_valid),
		cmocka_unit_test(test_utf8_ascii_is_valid),
		cmocka_unit_test(test_utf8_valid_multibyte_sequences),
		cmocka_unit_test(test_utf8_boundary_code_points_are_valid),
		cmocka_unit_test(test_utf8_overlong_two_byte_nul_is_invalid),
		cmocka_unit_test(test_utf8_overlong_three_and_four_byte_forms_are_invalid),
		cmocka_unit_test(test_utf8_surrogates_are_invalid),
		cmocka_unit_test(test_utf8_nul_is_invalid),
		cmocka_unit_test(test_utf8_nul_inside_long_ascii_is_invalid),
		cmocka_unit_test(test_utf8_bad_byte_inside_long_ascii_is_invalid),
		cmocka_unit_test(test_utf8_truncated_sequence_is_invalid),
		cmocka_unit_test(test_utf8_above_u10ffff_is_invalid),
		cmocka_unit_test(test_utf8_lone_continuation_is_invalid),
		cmocka_unit_test(test_utf8_bad_continuation_is_invalid),
		cmocka_unit_test(test_utf8_length_bounds_the_check),
		cmocka_unit_test(test_type_names),
		cmocka_unit_test(test_result_strings_are_distinct),
	};
	struct CMUnitTest tests[ARRAY_SIZE(functions) + ARRAY_SIZE(fixed_header_cases) +
				ARRAY_SIZE(fixed_header_flags_decode_cases) +
				ARRAY_SIZE(connect_decode_cases) +
				ARRAY_SIZE(connack_decode_cases) + ARRAY_SIZE(publish_cases) +
				ARRAY_SIZE(publish_decode_cases) +
				ARRAY_SIZE(subscribe_decode_cases) +
				ARRAY_SIZE(suback_decode_cases) +
				ARRAY_SIZE(unsubscribe_decode_cases)];
	size_t n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(functions); i++)
		tests[n++] = functions[i];
	ADD_CASES(tests, n, run_header_case, fixed_header_cases);
	ADD_CASES(tests, n, run_decode_case, fixed_header_flags_decode_cases);
	ADD_CASES(tests, n, run_decode_case, connect_decode_cases);
	ADD_CASES(tests, n, run_decode_case, connack_decode_cases);
	ADD_CASES(tests, n, run_publish_case, publish_cases);
	ADD_CASES(tests, n, run_decode_case, publish_decode_cases);
	ADD_CASES(tests, n, run_decode_case, subscribe_decode_cases);
	ADD_CASES(tests, n, run_decode_case, suback_decode_cases);
	ADD_CASES(tests, n, run_decode_case, unsubscribe_decode_cases);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
