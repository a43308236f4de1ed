/*
 * test_mqtt_props.c - unit tests for the MQTT 5 codec (daemon/mqtt_props.c,
 * daemon/mqtt5_codec.c): every property round trip on every packet that
 * allows it and its refusal on every other, each malformed and
 * out-of-range case with the error the spec gives it, the decoding and
 * encoding of each packet type, the builder and the forwarding of a
 * PUBLISH's properties, and that the 3.1.1 decoder is unchanged by it.
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
#include "mqtt5.h"
#include "mqttbytes.h"

/* A string literal as (ptr, len) arguments. */
#define U(s) (const uint8_t *)(s), sizeof(s) - 1

/* Decode one whole MQTT 5 packet: fixed header + body, nothing else. */
static int decode5(const uint8_t *b, size_t len, struct mqtt5_packet *pkt)
{
	uint8_t first;
	uint32_t rem;
	size_t hl = whole_packet(b, len, true, &first, &rem);

	return mqtt5_decode(first, b + hl, rem, pkt);
}

/* --- every property on every packet -------------------------------------- */

enum kind { NUM, STRING, PAIR };

/* A property, a value to send, and where the spec allows it (bit: context). */
struct prop_case {
	uint8_t id;
	enum kind kind;
	uint32_t num;
	const char *str;
	unsigned where;
};

#define W (1u << MQTT5_CTX_WILL)
#define P(t) (1u << (t))
#define ACKS (P(MQTT_PUBACK) | P(MQTT_PUBREC) | P(MQTT_PUBREL) | P(MQTT_PUBCOMP))
#define EVERY (W | P(MQTT_CONNECT) | P(MQTT_CONNACK) | P(MQTT_PUBLISH) | ACKS | \
	       P(MQTT_SUBSCRIBE) | P(MQTT_SUBACK) | P(MQTT_UNSUBSCRIBE) | P(MQTT_UNSUBACK) | \
	       P(MQTT_DISCONNECT) | P(MQTT_AUTH))

/* Written from the spec's table [MQTT-2.2.2.2], independently of mqtt_props.c's. */
static const struct prop_case props_cases[] = {
	{ 0x01, NUM, 1, NULL, W | P(MQTT_PUBLISH) },
	{ 0x02, NUM, 3600, NULL, W | P(MQTT_PUBLISH) },
	{ 0x03, STRING, 0, "text/plain", W | P(MQTT_PUBLISH) },
	{ 0x08, STRING, 0, "reply/here", W | P(MQTT_PUBLISH) },
	{ 0x09, STRING, 0, "\x01\x00\x02", W | P(MQTT_PUBLISH) },
	{ 0x0B, NUM, 268435455, NULL, P(MQTT_PUBLISH) | P(MQTT_SUBSCRIBE) },
	{ 0x11, NUM, 0xFFFFFFFF, NULL, P(MQTT_CONNECT) | P(MQTT_CONNACK) | P(MQTT_DISCONNECT) },
	{ 0x12, STRING, 0, "auto-1", P(MQTT_CONNACK) },
	{ 0x13, NUM, 300, NULL, P(MQTT_CONNACK) },
	{ 0x15, STRING, 0, "SCRAM-SHA-1", P(MQTT_CONNECT) | P(MQTT_CONNACK) | P(MQTT_AUTH) },
	/* with a method in front: data alone is a Protocol Error */
	{ 0x16, STRING, 0, "\x00\xff", P(MQTT_CONNECT) | P(MQTT_CONNACK) | P(MQTT_AUTH) },
	{ 0x17, NUM, 0, NULL, P(MQTT_CONNECT) },
	{ 0x18, NUM, 60, NULL, W },
	{ 0x19, NUM, 1, NULL, P(MQTT_CONNECT) },
	{ 0x1A, STRING, 0, "resp/", P(MQTT_CONNACK) },
	{ 0x1C, STRING, 0, "other:1883", P(MQTT_CONNACK) | P(MQTT_DISCONNECT) },
	{ 0x1F, STRING, 0, "because", P(MQTT_CONNACK) | ACKS | P(MQTT_SUBACK) |
		P(MQTT_UNSUBACK) | P(MQTT_DISCONNECT) | P(MQTT_AUTH) },
	{ 0x21, NUM, 20, NULL, P(MQTT_CONNECT) | P(MQTT_CONNACK) },
	{ 0x22, NUM, 10, NULL, P(MQTT_CONNECT) | P(MQTT_CONNACK) },
	{ 0x23, NUM, 7, NULL, P(MQTT_PUBLISH) },
	{ 0x24, NUM, 1, NULL, P(MQTT_CONNACK) },
	{ 0x25, NUM, 0, NULL, P(MQTT_CONNACK) },
	{ 0x26, PAIR, 0, "k\0v", EVERY },
	{ 0x27, NUM, 1048576, NULL, P(MQTT_CONNECT) | P(MQTT_CONNACK) },
	{ 0x28, NUM, 0, NULL, P(MQTT_CONNACK) },
	{ 0x29, NUM, 0, NULL, P(MQTT_CONNACK) },
	{ 0x2A, NUM, 0, NULL, P(MQTT_CONNACK) },
};

/* Binary values hold zero bytes. */
static size_t str_len(const struct prop_case *c)
{
	return c->id == 0x09 ? 3 : c->id == 0x16 ? 2 : strlen(c->str);
}

/* The struct field the decoder must have put a property in. */
static void assert_field(const struct mqtt5_props *p, const struct prop_case *c)
{
	const struct mqtt_str *s = NULL;
	uint32_t n = 0;

	switch (c->id) {
	case 0x01: n = p->payload_format; break;
	case 0x02: n = p->message_expiry; break;
	case 0x03: s = &p->content_type; break;
	case 0x08: s = &p->response_topic; break;
	case 0x09: s = &p->correlation_data; break;
	case 0x0B: n = p->sub_id; assert_int_equal(p->sub_id_count, 1); break;
	case 0x11: n = p->session_expiry; break;
	case 0x12: s = &p->assigned_client_id; break;
	case 0x13: n = p->server_keep_alive; break;
	case 0x15: s = &p->auth_method; break;
	case 0x16: s = &p->auth_data; break;
	case 0x17: n = p->request_problem_info; break;
	case 0x18: n = p->will_delay; break;
	case 0x19: n = p->request_response_info; break;
	case 0x1A: s = &p->response_info; break;
	case 0x1C: s = &p->server_reference; break;
	case 0x1F: s = &p->reason_string; break;
	case 0x21: n = p->receive_max; break;
	case 0x22: n = p->topic_alias_max; break;
	case 0x23: n = p->topic_alias; break;
	case 0x24: n = p->max_qos; break;
	case 0x25: n = p->retain_available; break;
	case 0x26: n = c->num; assert_int_equal(p->user_prop_count, 1); break;
	case 0x27: n = p->max_packet_size; break;
	case 0x28: n = p->wildcard_sub_available; break;
	case 0x29: n = p->sub_id_available; break;
	case 0x2A: n = p->shared_sub_available; break;
	default: fail();
	}
	if (s && (c->id == 0x09 || c->id == 0x16))
		assert_bytes(s->p, s->len, (const uint8_t *)c->str, str_len(c));
	else if (s)
		assert_str(*s, c->str);
	else
		assert_int_equal(n, c->num);
	assert_true(mqtt5_props_has(p, (enum mqtt5_prop_id)c->id));
	if (c->id == 0x16)
		assert_int_equal(p->present, MQTT5_BIT(0x15) | MQTT5_BIT(0x16));
	else
		assert_int_equal(p->present, MQTT5_BIT(c->id));
}

/* The property alone in a block. */
static size_t build_prop(uint8_t *buf, size_t cap, const struct prop_case *c)
{
	struct mqtt5_pbuf b;

	mqtt5_pbuf_init(&b, buf, cap);
	if (c->id == MQTT5_PROP_AUTH_DATA)
		mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_METHOD, U("M"));
	if (c->kind == NUM)
		mqtt5_pbuf_num(&b, (enum mqtt5_prop_id)c->id, c->num);
	else if (c->kind == STRING)
		mqtt5_pbuf_str(&b, (enum mqtt5_prop_id)c->id, (const uint8_t *)c->str, str_len(c));
	else
		mqtt5_pbuf_user(&b, U("k"), U("v"));
	assert_false(b.failed);
	return b.len;
}

/* A packet of context ctx (a type, or the will of a CONNECT) carrying the block o. */
static size_t build_packet(uint8_t *out, unsigned ctx, const struct mqtt5_out *o)
{
	static const uint8_t codes[] = { 0 };
	struct mqtt_str filter = STR("a/b");
	uint8_t opts = 1;
	struct mqtt_connect c = { .protocol_level = 5, .clean_session = true, .keepalive = 30,
				  .client_id = STR("cid") };

	switch (ctx) {
	case MQTT5_CTX_WILL:
		c.will_flag = true;
		c.will_topic = STR("will/t");
		c.will_payload = STR("bye");
		return mqtt5_encode_connect(out, &c, NULL, o);
	case MQTT_CONNECT:
		return mqtt5_encode_connect(out, &c, o, NULL);
	case MQTT_CONNACK:
		return mqtt5_encode_connack(out, false, 0, o);
	case MQTT_PUBLISH:
		return mqtt5_encode_publish(out, false, 1, false, U("a/b"), 9, o, U("hi"));
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		return mqtt5_encode_ack(out, (enum mqtt_type)ctx, 9, 0, o);
	case MQTT_SUBSCRIBE:
	case MQTT_UNSUBSCRIBE:
		return mqtt5_encode_sub(out, (enum mqtt_type)ctx, 9, &filter, &opts, 1, o);
	case MQTT_SUBACK:
	case MQTT_UNSUBACK:
		return mqtt5_encode_suback(out, (enum mqtt_type)ctx, 9, codes, 1, o);
	case MQTT_DISCONNECT:
	case MQTT_AUTH:
		return mqtt5_encode_reason(out, (enum mqtt_type)ctx, 0, o);
	}
	fail();
	return 0;
}

static const unsigned contexts[] = {
	MQTT5_CTX_WILL, MQTT_CONNECT, MQTT_CONNACK, MQTT_PUBLISH, MQTT_PUBACK, MQTT_PUBREC,
	MQTT_PUBREL, MQTT_PUBCOMP, MQTT_SUBSCRIBE, MQTT_SUBACK, MQTT_UNSUBSCRIBE,
	MQTT_UNSUBACK, MQTT_DISCONNECT, MQTT_AUTH,
};

static void test_every_property_round_trips_where_allowed_and_is_refused_elsewhere(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(props_cases); i++) {
		const struct prop_case *c = &props_cases[i];
		uint8_t block[64], pkt[256];
		size_t n = build_prop(block, sizeof(block), c);

		for (size_t k = 0; k < ARRAY_SIZE(contexts); k++) {
			unsigned ctx = contexts[k];
			struct mqtt5_out o;
			struct mqtt5_packet d;
			size_t len;
			int rc;

			mqtt5_out_init(&o, block, n, NULL, 0);
			len = build_packet(pkt, ctx, &o);
			assert_int_not_equal(len, 0);
			rc = decode5(pkt, len, &d);
			if (!(c->where & (1u << ctx))) {
				if (rc != MQTT_ERR_MALFORMED)
					fail_msg("property 0x%02x in context %u: %d", c->id, ctx, rc);
				continue;
			}
			if (rc != MQTT_OK)
				fail_msg("property 0x%02x in context %u: %d", c->id, ctx, rc);
			assert_field(ctx == MQTT5_CTX_WILL ? &d.will_props : &d.props, c);
			assert_bytes((ctx == MQTT5_CTX_WILL ? d.will_props : d.props).raw,
				     (ctx == MQTT5_CTX_WILL ? d.will_props : d.props).raw_len, block, n);
		}
	}
}

/* Authentication data needs a method in the same block; walked in order. */
static void test_auth_data_round_trips_with_its_method(void **state)
{
	static const unsigned ctxs[] = { MQTT_CONNECT, MQTT_CONNACK, MQTT_AUTH };
	uint8_t block[64], pkt[128];
	struct mqtt5_pbuf b;

	mqtt5_pbuf_init(&b, block, sizeof(block));
	mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_METHOD, U("M"));
	mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_DATA, U("\x00\xff"));
	assert_false(b.failed);
	for (size_t i = 0; i < ARRAY_SIZE(ctxs); i++) {
		struct mqtt5_out o;
		struct mqtt5_packet d;
		struct mqtt5_prop_iter it;
		struct mqtt5_prop p;

		mqtt5_out_init(&o, block, b.len, NULL, 0);
		assert_int_equal(decode5(pkt, build_packet(pkt, ctxs[i], &o), &d), MQTT_OK);
		assert_str(d.props.auth_method, "M");
		assert_bytes(d.props.auth_data.p, d.props.auth_data.len, BYTES(0x00, 0xff));
		mqtt5_prop_iter_init(&it, &d.props);
		assert_true(mqtt5_prop_next(&it, &p));
		assert_int_equal(p.id, MQTT5_PROP_AUTH_METHOD);
		assert_true(mqtt5_prop_next(&it, &p));
		assert_int_equal(p.id, MQTT5_PROP_AUTH_DATA);
		assert_false(mqtt5_prop_next(&it, &p));
	}
}

static void test_absent_properties_hold_the_defaults(void **state)
{
	struct mqtt5_packet d;

	assert_int_equal(decode5(BYTES(0x20, 0x03, 0x00, 0x00, 0x00), &d), MQTT_OK);
	assert_int_equal(d.props.present, 0);
	assert_int_equal(d.props.receive_max, 65535);
	assert_int_equal(d.props.max_qos, 2);
	assert_int_equal(d.props.retain_available, 1);
	assert_int_equal(d.props.wildcard_sub_available, 1);
	assert_int_equal(d.props.sub_id_available, 1);
	assert_int_equal(d.props.shared_sub_available, 1);
	assert_int_equal(d.props.request_problem_info, 1);
	assert_int_equal(d.props.request_response_info, 0);
	assert_int_equal(d.props.max_packet_size, 0);
}

/*
 * Every packet without a block of its own decodes with the empty one, the
 * defaults, as one read from an empty block does; so does a CONNECT's
 * will block without a will, and both of a 3.1.1 CONNECT's.
 */
static void test_packets_without_a_block_have_the_empty_one(void **state)
{
	static const struct {
		uint8_t first;
		uint8_t body[16];
		size_t len;
	} cases[] = {
		{ 0x40, { 0x00, 0x01 }, 2 },                    /* PUBACK, short form */
		{ 0x40, { 0x00, 0x01, 0x10 }, 3 },              /* PUBACK with a reason */
		{ 0x62, { 0x00, 0x01, 0x00, 0x00 }, 4 },        /* PUBREL, an empty block */
		{ 0xE0, { 0 }, 0 },                             /* DISCONNECT */
		{ 0xE0, { 0x04 }, 1 },                          /* DISCONNECT with will */
		{ 0xF0, { 0x18, 0x00 }, 2 },                    /* AUTH, an empty block */
		{ 0xC0, { 0 }, 0 },                             /* PINGREQ */
		{ 0x30, { 0x00, 0x01, 't', 0x00 }, 4 },         /* PUBLISH, an empty block */
	};
	static const uint8_t v5[] = { 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x00,
				      0x00, 0x00, 0x01, 'c' };
	static const uint8_t v4[] = { 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x00,
				      0x00, 0x01, 'c' };
	struct mqtt5_props empty;
	struct mqtt5_packet d;

	mqtt5_props_init(&empty);
	assert_int_equal(empty.receive_max, 65535);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&d, 0xA5, sizeof(d));
		assert_int_equal(mqtt5_decode(cases[i].first, cases[i].body, cases[i].len, &d),
				 MQTT_OK);
		d.props.raw = NULL;     /* an empty block read points into the body */
		assert_memory_equal(&d.props, &empty, sizeof(empty));
	}
	memset(&d, 0xA5, sizeof(d));
	assert_int_equal(mqtt5_decode(0x10, v5, sizeof(v5), &d), MQTT_OK);
	d.props.raw = NULL;
	assert_memory_equal(&d.props, &empty, sizeof(empty));
	assert_memory_equal(&d.will_props, &empty, sizeof(empty));
	memset(&d, 0xA5, sizeof(d));
	assert_int_equal(mqtt5_decode(0x10, v4, sizeof(v4), &d), MQTT_OK);
	assert_memory_equal(&d.props, &empty, sizeof(empty));
	assert_memory_equal(&d.will_props, &empty, sizeof(empty));
}

/* --- one packet, one answer ---------------------------------------------- */

static void run_decode_case(void **state)
{
	const struct decode_case *c = *state;
	struct mqtt5_packet pkt;

	assert_int_equal(mqtt5_decode(c->first, c->body, c->len, &pkt), c->rc);
}

/* PUBLISH QoS 0 to "t" with the given property block (length first) and no payload. */
#define PUB(name, rc, ...) DECODE(name, 0x30, rc, 0x00, 0x01, 't', __VA_ARGS__)
/* CONNECT level 5, clean start, keep alive 0, client id "c", the block given. */
#define CONN(name, rc, ...) DECODE(name, 0x10, rc, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, \
				   0x02, 0x00, 0x00, __VA_ARGS__, 0x00, 0x01, 'c')
/* CONNACK accepted with the block given. */
#define CACK(name, rc, ...) DECODE(name, 0x20, rc, 0x00, 0x00, __VA_ARGS__)

static const struct decode_case props_decode_cases[] = {
	PUB("publish_without_properties", MQTT_OK, 0x00),
	PUB("publish_two_user_properties", MQTT_OK, 0x0C, 0x26, 0, 1, 'a', 0, 0,
	    0x26, 0, 1, 'a', 0, 0),
	PUB("publish_two_subscription_ids", MQTT_OK, 0x04, 0x0B, 0x01, 0x0B, 0x02),
	PUB("publish_duplicate_message_expiry_is_protocol_error", MQTT_ERR_PROTOCOL,
	    0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2),
	PUB("publish_duplicate_topic_alias_is_protocol_error", MQTT_ERR_PROTOCOL,
	    0x06, 0x23, 0, 1, 0x23, 0, 1),
	PUB("publish_duplicate_content_type_is_protocol_error", MQTT_ERR_PROTOCOL,
	    0x08, 0x03, 0, 1, 'a', 0x03, 0, 1, 'b'),
	PUB("publish_session_expiry_is_malformed", MQTT_ERR_MALFORMED, 0x05, 0x11, 0, 0, 0, 1),
	PUB("publish_unknown_property_is_malformed", MQTT_ERR_MALFORMED, 0x02, 0x04, 0x00),
	PUB("publish_property_id_0_is_malformed", MQTT_ERR_MALFORMED, 0x02, 0x00, 0x00),
	PUB("publish_two_byte_property_id_is_malformed", MQTT_ERR_MALFORMED, 0x03, 0x81, 0x00, 0),
	PUB("publish_block_longer_than_packet_is_malformed", MQTT_ERR_MALFORMED, 0x05, 0x01, 0x01),
	PUB("publish_block_length_missing_is_malformed", MQTT_ERR_MALFORMED),
	PUB("publish_block_length_truncated_is_malformed", MQTT_ERR_MALFORMED, 0x80),
	PUB("publish_block_length_of_5_bytes_is_malformed", MQTT_ERR_MALFORMED,
	    0x80, 0x80, 0x80, 0x80, 0x00),
	PUB("publish_block_length_non_minimal_is_accepted", MQTT_OK, 0x80, 0x00),
	PUB("publish_sub_id_of_5_bytes_is_malformed", MQTT_ERR_MALFORMED, 0x06, 0x0B,
	    0x81, 0x80, 0x80, 0x80, 0x01),
	PUB("publish_sub_id_truncated_is_malformed", MQTT_ERR_MALFORMED, 0x02, 0x0B, 0x81),
	PUB("publish_sub_id_0_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x0B, 0x00),
	PUB("publish_sub_id_max_is_accepted", MQTT_OK, 0x05, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F),
	PUB("publish_message_expiry_truncated_is_malformed", MQTT_ERR_MALFORMED,
	    0x03, 0x02, 0x00, 0x00),
	PUB("publish_string_past_block_is_malformed", MQTT_ERR_MALFORMED,
	    0x03, 0x03, 0x00, 0x05, 'a', 'b', 'c', 'd', 'e'),
	PUB("publish_content_type_bad_utf8", MQTT_ERR_UTF8, 0x04, 0x03, 0x00, 0x01, 0xC0),
	PUB("publish_content_type_with_nul", MQTT_ERR_UTF8, 0x04, 0x03, 0x00, 0x01, 0x00),
	PUB("publish_user_property_key_bad_utf8", MQTT_ERR_UTF8,
	    0x06, 0x26, 0x00, 0x01, 0xFF, 0x00, 0x00),
	PUB("publish_user_property_value_bad_utf8", MQTT_ERR_UTF8,
	    0x07, 0x26, 0x00, 0x00, 0x00, 0x02, 0xED, 0xA0),
	PUB("publish_user_property_value_truncated_is_malformed", MQTT_ERR_MALFORMED,
	    0x05, 0x26, 0x00, 0x00, 0x00, 0x02),
	PUB("publish_correlation_data_binary_is_accepted", MQTT_OK, 0x05, 0x09, 0x00, 0x02, 0x00,
	    0xFF),
	PUB("publish_payload_format_2_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x01, 0x02),
	PUB("publish_topic_alias_0_is_protocol_error", MQTT_ERR_PROTOCOL, 0x03, 0x23, 0x00, 0x00),
	DECODE("publish_empty_topic_without_alias_is_protocol_error", 0x30, MQTT_ERR_PROTOCOL,
	       0x00, 0x00, 0x00),
	DECODE("publish_empty_topic_with_alias", 0x30, MQTT_OK, 0x00, 0x00, 0x03, 0x23, 0x00,
	       0x01, 'x'),
	DECODE("publish_qos1_block_after_packet_id", 0x32, MQTT_OK, 0x00, 0x01, 't', 0x00, 0x07,
	       0x03, 0x23, 0x00, 0x02),
	DECODE("publish_qos1_packet_id_0_is_malformed", 0x32, MQTT_ERR_MALFORMED, 0x00, 0x01, 't',
	       0x00, 0x00, 0x00),
	DECODE("publish_qos3_is_malformed", 0x36, MQTT_ERR_MALFORMED, 0x00, 0x01, 't', 0x00, 0x01,
	       0x00),
	CONN("connect_receive_max_0_is_protocol_error", MQTT_ERR_PROTOCOL, 0x03, 0x21, 0x00, 0x00),
	CONN("connect_max_packet_size_0_is_protocol_error", MQTT_ERR_PROTOCOL,
	     0x05, 0x27, 0, 0, 0, 0),
	CONN("connect_request_problem_info_2_is_protocol_error", MQTT_ERR_PROTOCOL,
	     0x02, 0x17, 0x02),
	CONN("connect_request_response_info_2_is_protocol_error", MQTT_ERR_PROTOCOL,
	     0x02, 0x19, 0x02),
	CONN("connect_auth_data_without_method_is_protocol_error", MQTT_ERR_PROTOCOL,
	     0x04, 0x16, 0x00, 0x01, 0x00),
	CONN("connect_duplicate_session_expiry_is_protocol_error", MQTT_ERR_PROTOCOL,
	     0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1),
	CONN("connect_topic_alias_is_malformed", MQTT_ERR_MALFORMED, 0x03, 0x23, 0x00, 0x01),
	CONN("connect_will_delay_outside_the_will_is_malformed", MQTT_ERR_MALFORMED,
	     0x05, 0x18, 0, 0, 0, 1),
	CONN("connect_topic_alias_max_0_is_accepted", MQTT_OK, 0x03, 0x22, 0x00, 0x00),
	CACK("connack_max_qos_2_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x24, 0x02),
	CACK("connack_retain_available_2_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x25, 0x02),
	CACK("connack_wildcard_available_2_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x28, 0x02),
	CACK("connack_sub_id_available_2_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x29, 0x02),
	CACK("connack_shared_available_2_is_protocol_error", MQTT_ERR_PROTOCOL, 0x02, 0x2A, 0x02),
	CACK("connack_server_keep_alive_0_is_accepted", MQTT_OK, 0x03, 0x13, 0x00, 0x00),
	DECODE("connack_refused_with_session_is_malformed", 0x20, MQTT_ERR_MALFORMED,
	       0x01, 0x87, 0x00),
	DECODE("connack_reserved_flag_is_malformed", 0x20, MQTT_ERR_MALFORMED, 0x02, 0x00, 0x00),
	DECODE("connack_unknown_reason_is_malformed", 0x20, MQTT_ERR_MALFORMED, 0x00, 0x10, 0x00),
	DECODE("connack_without_block_is_malformed", 0x20, MQTT_ERR_MALFORMED, 0x00, 0x00),
	DECODE("connack_refused_0x84", 0x20, MQTT_OK, 0x00, 0x84, 0x00),
	DECODE("subscribe_two_sub_ids_is_protocol_error", 0x82, MQTT_ERR_PROTOCOL,
	       0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, 'a', 0x00),
	DECODE("subscribe_options_all_set", 0x82, MQTT_OK,
	       0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x01, 'a', 0x2E),
	DECODE("subscribe_retain_handling_3_is_protocol_error", 0x82, MQTT_ERR_PROTOCOL,
	       0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x30),
	DECODE("subscribe_reserved_option_bits_are_malformed", 0x82, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x40),
	DECODE("subscribe_qos3_is_protocol_error", 0x82, MQTT_ERR_PROTOCOL,
	       0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x03),
	DECODE("subscribe_without_entries_is_malformed", 0x82, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x00),
	DECODE("subscribe_without_block_is_malformed", 0x82, MQTT_ERR_MALFORMED, 0x00, 0x01),
	DECODE("subscribe_flags_0_are_malformed", 0x80, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x00),
	DECODE("unsubscribe_with_user_property", 0xA2, MQTT_OK,
	       0x00, 0x01, 0x05, 0x26, 0, 0, 0, 0, 0x00, 0x01, 'a'),
	DECODE("unsubscribe_sub_id_is_malformed", 0xA2, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, 'a'),
	DECODE("suback_reason_codes", 0x90, MQTT_OK, 0x00, 0x01, 0x00, 0x00, 0x01, 0x02, 0x80,
	       0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2),
	DECODE("suback_reason_0x11_is_malformed", 0x90, MQTT_ERR_MALFORMED, 0x00, 0x01, 0x00, 0x11),
	DECODE("suback_reason_0x03_is_malformed", 0x90, MQTT_ERR_MALFORMED, 0x00, 0x01, 0x00, 0x03),
	DECODE("unsuback_reason_codes", 0xB0, MQTT_OK, 0x00, 0x01, 0x00, 0x00, 0x11, 0x80, 0x83,
	       0x87, 0x8F, 0x91),
	DECODE("unsuback_reason_0x01_is_malformed", 0xB0, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x00, 0x01),
	DECODE("unsuback_without_codes_is_malformed", 0xB0, MQTT_ERR_MALFORMED, 0x00, 0x01, 0x00),
	DECODE("puback_packet_id_only", 0x40, MQTT_OK, 0x00, 0x01),
	DECODE("puback_reason_only", 0x40, MQTT_OK, 0x00, 0x01, 0x10),
	DECODE("puback_reason_and_empty_block", 0x40, MQTT_OK, 0x00, 0x01, 0x00, 0x00),
	DECODE("puback_reason_string", 0x40, MQTT_OK, 0x00, 0x01, 0x97, 0x04, 0x1F, 0, 1, 'q'),
	DECODE("puback_reason_0x92_is_malformed", 0x40, MQTT_ERR_MALFORMED, 0x00, 0x01, 0x92),
	DECODE("puback_packet_id_0_is_malformed", 0x40, MQTT_ERR_MALFORMED, 0x00, 0x00),
	DECODE("puback_truncated_is_malformed", 0x40, MQTT_ERR_MALFORMED, 0x00),
	DECODE("puback_block_past_end_is_malformed", 0x40, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x00, 0x03, 0x1F),
	DECODE("puback_trailing_byte_is_malformed", 0x40, MQTT_ERR_MALFORMED,
	       0x00, 0x01, 0x00, 0x00, 0x00),
	DECODE("pubrec_reason_0x10", 0x50, MQTT_OK, 0x00, 0x01, 0x10),
	DECODE("pubrel_reason_0x92", 0x62, MQTT_OK, 0x00, 0x01, 0x92),
	DECODE("pubrel_reason_0x80_is_malformed", 0x62, MQTT_ERR_MALFORMED, 0x00, 0x01, 0x80),
	DECODE("pubrel_flags_0_are_malformed", 0x60, MQTT_ERR_MALFORMED, 0x00, 0x01),
	DECODE("pubcomp_reason_0x92", 0x70, MQTT_OK, 0x00, 0x01, 0x92),
	DECODE("pubcomp_user_property_on_success", 0x70, MQTT_OK, 0x00, 0x01, 0x00, 0x05,
	       0x26, 0, 0, 0, 0),
	DECODE_EMPTY("disconnect_empty", 0xE0, MQTT_OK),
	DECODE("disconnect_with_will", 0xE0, MQTT_OK, 0x04),
	DECODE("disconnect_session_expiry", 0xE0, MQTT_OK, 0x00, 0x05, 0x11, 0, 0, 0, 9),
	DECODE("disconnect_server_reference", 0xE0, MQTT_OK, 0x9C, 0x04, 0x1C, 0, 1, 'h'),
	DECODE("disconnect_reason_0x18_is_malformed", 0xE0, MQTT_ERR_MALFORMED, 0x18),
	DECODE("disconnect_topic_alias_is_malformed", 0xE0, MQTT_ERR_MALFORMED,
	       0x00, 0x03, 0x23, 0x00, 0x01),
	DECODE("disconnect_flags_are_malformed", 0xE1, MQTT_ERR_MALFORMED, 0x00),
	DECODE_EMPTY("auth_empty", 0xF0, MQTT_OK),
	DECODE("auth_continue", 0xF0, MQTT_OK, 0x18, 0x07, 0x15, 0, 1, 'M', 0x16, 0, 0),
	DECODE("auth_reauthenticate", 0xF0, MQTT_OK, 0x19, 0x00),
	DECODE("auth_reason_0x80_is_malformed", 0xF0, MQTT_ERR_MALFORMED, 0x80),
	DECODE("auth_data_without_method_is_protocol_error", 0xF0, MQTT_ERR_PROTOCOL,
	       0x18, 0x03, 0x16, 0, 0),
	DECODE("auth_session_expiry_is_malformed", 0xF0, MQTT_ERR_MALFORMED,
	       0x18, 0x05, 0x11, 0, 0, 0, 0),
	DECODE("auth_flags_are_malformed", 0xF2, MQTT_ERR_MALFORMED, 0x00),
	DECODE_EMPTY("pingreq", 0xC0, MQTT_OK),
	DECODE("pingreq_with_body_is_malformed", 0xC0, MQTT_ERR_MALFORMED, 0x00),
	DECODE_EMPTY("type_0_is_refused", 0x00, MQTT_ERR_TYPE),
	/* CONNECT: 3.1.1 rules below level 5, and the level-5-only rules */
	DECODE("connect_level_4_decodes", 0x10, MQTT_OK, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04,
	       0x02, 0x00, 0x00, 0x00, 0x01, 'c'),
	DECODE("connect_level_4_password_without_user_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x42, 0x00, 0x00, 0x00, 0x01, 'c',
	       0x00, 0x01, 'p'),
	DECODE("connect_level_5_password_without_user", 0x10, MQTT_OK,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x42, 0x00, 0x00, 0x00, 0x00, 0x01, 'c',
	       0x00, 0x01, 'p'),
	DECODE("connect_level_5_mqisdp_is_protocol_level", 0x10, MQTT_ERR_PROTOCOL_LEVEL,
	       0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x05),
	DECODE("connect_level_6_is_protocol_level", 0x10, MQTT_ERR_PROTOCOL_LEVEL,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x06),
	DECODE("connect_level_5_without_block_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x00),
	DECODE("connect_will_without_will_block_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01, 'c'),
	DECODE("connect_will_topic_alias_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01, 'c',
	       0x03, 0x23, 0x00, 0x01, 0x00, 0x01, 'w', 0x00, 0x00),
	DECODE("connect_will_payload_format_2_is_protocol_error", 0x10, MQTT_ERR_PROTOCOL,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01, 'c',
	       0x02, 0x01, 0x02, 0x00, 0x01, 'w', 0x00, 0x00),
	DECODE("connect_will_reserved_flag_is_malformed", 0x10, MQTT_ERR_MALFORMED,
	       0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 'c'),
};

/* --- packets ------------------------------------------------------------- */

static void test_connect_round_trips_with_will_properties(void **state)
{
	struct mqtt_connect c = {
		.protocol_level = 5, .clean_session = true, .keepalive = 60,
		.client_id = STR("dev-1"), .will_flag = true, .will_qos = 1, .will_retain = true,
		.will_topic = STR("dev/1/status"), .will_payload = STR("gone"),
		.username_flag = true, .username = STR("u"), .password_flag = true,
		.password = STR("p\0w"),
	};
	uint8_t pb[64], wb[64], out[256];
	struct mqtt5_pbuf p, w;
	struct mqtt5_out po, wo;
	struct mqtt5_packet d;
	size_t n;

	mqtt5_pbuf_init(&p, pb, sizeof(pb));
	mqtt5_pbuf_num(&p, MQTT5_PROP_SESSION_EXPIRY, 120);
	mqtt5_pbuf_num(&p, MQTT5_PROP_RECEIVE_MAX, 10);
	mqtt5_pbuf_user(&p, U("a"), U("1"));
	mqtt5_pbuf_init(&w, wb, sizeof(wb));
	mqtt5_pbuf_num(&w, MQTT5_PROP_WILL_DELAY, 5);
	mqtt5_pbuf_str(&w, MQTT5_PROP_CONTENT_TYPE, U("text/plain"));
	assert_false(p.failed || w.failed);
	mqtt5_out_init(&po, pb, p.len, NULL, 0);
	mqtt5_out_init(&wo, wb, w.len, NULL, 0);
	n = mqtt5_connect_size(&c, &po, &wo);
	assert_int_equal(mqtt5_encode_connect(out, &c, &po, &wo), n);
	assert_int_equal(decode5(out, n, &d), MQTT_OK);
	assert_int_equal(d.u.connect.protocol_level, 5);
	assert_true(d.u.connect.will_retain);
	assert_int_equal(d.u.connect.will_qos, 1);
	assert_str(d.u.connect.client_id, "dev-1");
	assert_str(d.u.connect.will_topic, "dev/1/status");
	assert_str(d.u.connect.will_payload, "gone");
	assert_str(d.u.connect.username, "u");
	assert_int_equal(d.u.connect.password.len, 3);
	assert_int_equal(d.props.session_expiry, 120);
	assert_int_equal(d.props.receive_max, 10);
	assert_int_equal(d.props.user_prop_count, 1);
	assert_int_equal(d.will_props.will_delay, 5);
	assert_str(d.will_props.content_type, "text/plain");
	assert_int_equal(d.will_props.user_prop_count, 0);
}

/* A v5 CONNECT is still "unsupported level" to the 3.1.1 decoder (CONNACK 1). */
static void test_v3_decoder_refuses_level_5_as_before(void **state)
{
	static const uint8_t body[] = { 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x00,
					0x00, 0x00, 0x01, 'c' };
	struct mqtt_packet pkt;
	struct mqtt5_packet d;

	assert_int_equal(mqtt_decode(0x10, body, sizeof(body), &pkt), MQTT_ERR_PROTOCOL_LEVEL);
	assert_int_equal(pkt.u.connect.protocol_level, 5);
	assert_int_equal(mqtt5_decode(0x10, body, sizeof(body), &d), MQTT_OK);
	assert_str(d.u.connect.client_id, "c");
}

/* Type 15 is AUTH on an MQTT 5 connection and stays refused on a 3.1.1 one. */
static void test_fixed_header_type_15(void **state)
{
	uint8_t f;
	uint32_t r;
	size_t h;
	struct mqtt_packet pkt;

	assert_int_equal(mqtt_fixed_header(BYTES(0xF0, 0x00), 0, &f, &r, &h), MQTT_ERR_TYPE);
	assert_int_equal(mqtt5_fixed_header(BYTES(0xF0, 0x00), 0, &f, &r, &h), MQTT_OK);
	assert_int_equal(f, 0xF0);
	assert_int_equal(mqtt5_fixed_header(BYTES(0x00, 0x00), 0, &f, &r, &h), MQTT_ERR_TYPE);
	assert_int_equal(mqtt5_fixed_header(BYTES(0x30, 0xFF, 0x7F), 100, &f, &r, &h),
			 MQTT_ERR_TOO_LARGE);
	assert_int_equal(mqtt_decode(0xF0, NULL, 0, &pkt), MQTT_ERR_TYPE);
}

/* 3.1.1 packets that an MQTT 5 decoder reads otherwise decode as before. */
static void test_v3_decode_unchanged(void **state)
{
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t q;

	assert_int_equal(mqtt_decode(0x40, BYTES(0x00, 0x05), &pkt), MQTT_OK);
	assert_int_equal(pkt.u.packet_id, 5);
	assert_int_equal(mqtt_decode(0x40, BYTES(0x00, 0x05, 0x00), &pkt), MQTT_ERR_MALFORMED);
	assert_int_equal(mqtt_decode(0xB0, BYTES(0x00, 0x05), &pkt), MQTT_OK);
	assert_int_equal(mqtt_decode(0xE0, BYTES(0x00), &pkt), MQTT_ERR_MALFORMED);
	assert_int_equal(mqtt_decode(0x82, BYTES(0x00, 0x01, 0x00, 0x01, 'a', 0x04), &pkt),
			 MQTT_ERR_MALFORMED);
	assert_int_equal(mqtt_decode(0x90, BYTES(0x00, 0x01, 0x00, 0x01, 0x02, 0x80), &pkt),
			 MQTT_OK);
	assert_int_equal(mqtt_decode(0x90, BYTES(0x00, 0x01, 0x87), &pkt), MQTT_ERR_MALFORMED);
	assert_int_equal(mqtt_decode(0x30, BYTES(0x00, 0x01, 't', 0x00, 'x'), &pkt), MQTT_OK);
	assert_int_equal(pkt.u.publish.payload_len, 2);
	assert_int_equal(mqtt_decode(0x82, BYTES(0x00, 0x01, 0x00, 0x01, 'a', 0x02), &pkt),
			 MQTT_OK);
	mqtt_list_iter_init(&it, &pkt);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_int_equal(q, 2);
	assert_false(mqtt_list_next(&it, &f, &q));
}

static void test_subscribe_options_and_sub_id(void **state)
{
	struct mqtt_str filters[2] = { STR("a/+"), STR("$share/g/b") };
	uint8_t opts[2] = { 2 | MQTT5_SUB_NO_LOCAL | MQTT5_SUB_RETAIN_AS_PUBLISHED | 2 << 4, 1 };
	uint8_t pb[16], out[64];
	struct mqtt5_pbuf b;
	struct mqtt5_out o;
	struct mqtt5_packet d;
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t q;
	size_t n;

	mqtt5_pbuf_init(&b, pb, sizeof(pb));
	mqtt5_pbuf_num(&b, MQTT5_PROP_SUB_ID, 200000);
	mqtt5_out_init(&o, pb, b.len, NULL, 0);
	n = mqtt5_sub_size(MQTT_SUBSCRIBE, filters, 2, &o);
	assert_int_equal(mqtt5_encode_sub(out, MQTT_SUBSCRIBE, 3, filters, opts, 2, &o), n);
	assert_int_equal(decode5(out, n, &d), MQTT_OK);
	assert_int_equal(d.u.list.packet_id, 3);
	assert_int_equal(d.u.list.count, 2);
	assert_int_equal(d.props.sub_id, 200000);
	mqtt5_list_iter_init(&it, &d);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_str(f, "a/+");
	assert_int_equal(MQTT5_SUB_QOS(q), 2);
	assert_true(q & MQTT5_SUB_NO_LOCAL);
	assert_true(q & MQTT5_SUB_RETAIN_AS_PUBLISHED);
	assert_int_equal(MQTT5_SUB_RETAIN_HANDLING(q), 2);
	assert_true(mqtt_list_next(&it, &f, &q));
	assert_str(f, "$share/g/b");
	assert_int_equal(q, 1);
	assert_false(mqtt_list_next(&it, &f, &q));
}

static void test_suback_and_unsuback_encode_and_walk(void **state)
{
	static const uint8_t codes[] = { 0x00, 0x02, 0x87 };
	static const uint8_t ucodes[] = { 0x11, 0x00 };
	uint8_t pb[16], out[64];
	struct mqtt5_pbuf b;
	struct mqtt5_out o;
	struct mqtt5_packet d;
	struct mqtt_list_iter it;
	uint8_t q;
	size_t n;

	mqtt5_pbuf_init(&b, pb, sizeof(pb));
	mqtt5_pbuf_str(&b, MQTT5_PROP_REASON_STRING, U("no"));
	mqtt5_out_init(&o, pb, b.len, NULL, 0);
	n = mqtt5_suback_size(3, &o);
	assert_int_equal(mqtt5_encode_suback(out, MQTT_SUBACK, 7, codes, 3, &o), n);
	assert_bytes(out, n, BYTES(0x90, 0x0B, 0x00, 0x07, 0x05, 0x1F, 0x00, 0x02, 'n', 'o',
				   0x00, 0x02, 0x87));
	assert_int_equal(decode5(out, n, &d), MQTT_OK);
	assert_str(d.props.reason_string, "no");
	n = mqtt5_suback_size(2, NULL);
	assert_int_equal(mqtt5_encode_suback(out, MQTT_UNSUBACK, 7, ucodes, 2, NULL), n);
	assert_bytes(out, n, BYTES(0xB0, 0x05, 0x00, 0x07, 0x00, 0x11, 0x00));
	assert_int_equal(decode5(out, n, &d), MQTT_OK);
	assert_int_equal(d.u.list.count, 2);
	mqtt5_list_iter_init(&it, &d);
	assert_true(mqtt_list_next(&it, NULL, &q));
	assert_int_equal(q, 0x11);
	assert_true(mqtt_list_next(&it, NULL, &q));
	assert_int_equal(q, 0x00);
	assert_false(mqtt_list_next(&it, NULL, &q));
	assert_int_equal(mqtt5_encode_suback(out, MQTT_PUBACK, 7, ucodes, 2, NULL), 0);
	assert_int_equal(mqtt5_suback_size(0, NULL), 0);
}

/* The shortest form each time: no reason for success, no block when empty. */
static void test_acks_encode_in_their_shortest_form(void **state)
{
	uint8_t pb[16], out[32];
	struct mqtt5_pbuf b;
	struct mqtt5_out o, none;
	struct mqtt5_packet d;

	assert_int_equal(mqtt5_ack_size(0, NULL), 4);
	assert_int_equal(mqtt5_encode_ack(out, MQTT_PUBACK, 0x102, 0, NULL), 4);
	assert_bytes(out, 4, BYTES(0x40, 0x02, 0x01, 0x02));
	assert_int_equal(mqtt5_ack_size(0x10, NULL), 5);
	assert_int_equal(mqtt5_encode_ack(out, MQTT_PUBREC, 1, 0x10, NULL), 5);
	assert_bytes(out, 5, BYTES(0x50, 0x03, 0x00, 0x01, 0x10));
	mqtt5_out_init(&none, NULL, 0, NULL, 0);
	assert_int_equal(mqtt5_encode_ack(out, MQTT_PUBREL, 1, 0x92, &none), 5);
	assert_bytes(out, 5, BYTES(0x62, 0x03, 0x00, 0x01, 0x92));
	mqtt5_pbuf_init(&b, pb, sizeof(pb));
	mqtt5_pbuf_str(&b, MQTT5_PROP_REASON_STRING, U("x"));
	mqtt5_out_init(&o, pb, b.len, NULL, 0);
	assert_int_equal(mqtt5_ack_size(0, &o), 10);
	assert_int_equal(mqtt5_encode_ack(out, MQTT_PUBCOMP, 1, 0, &o), 10);
	assert_bytes(out, 10, BYTES(0x70, 0x08, 0x00, 0x01, 0x00, 0x04, 0x1F, 0x00, 0x01, 'x'));
	assert_int_equal(decode5(out, 10, &d), MQTT_OK);
	assert_int_equal(d.u.packet_id, 1);
	assert_str(d.props.reason_string, "x");
	assert_int_equal(mqtt5_encode_ack(out, MQTT_SUBACK, 1, 0, NULL), 0);
}

static void test_disconnect_and_auth_encode(void **state)
{
	uint8_t pb[32], out[64];
	struct mqtt5_pbuf b;
	struct mqtt5_out o;
	struct mqtt5_packet d;
	size_t n;

	assert_int_equal(mqtt5_reason_size(0, NULL), 2);
	assert_int_equal(mqtt5_encode_reason(out, MQTT_DISCONNECT, 0, NULL), 2);
	assert_bytes(out, 2, BYTES(0xE0, 0x00));
	assert_int_equal(mqtt5_encode_reason(out, MQTT_DISCONNECT, 0x82, NULL), 3);
	assert_bytes(out, 3, BYTES(0xE0, 0x01, 0x82));
	assert_int_equal(decode5(out, 3, &d), MQTT_OK);
	assert_int_equal(d.reason, MQTT5_RC_PROTOCOL_ERROR);
	mqtt5_pbuf_init(&b, pb, sizeof(pb));
	mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_METHOD, U("SCRAM"));
	mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_DATA, U("\x01\x02"));
	mqtt5_out_init(&o, pb, b.len, NULL, 0);
	n = mqtt5_reason_size(MQTT5_RC_CONTINUE_AUTHENTICATION, &o);
	assert_int_equal(mqtt5_encode_reason(out, MQTT_AUTH, MQTT5_RC_CONTINUE_AUTHENTICATION, &o),
			 n);
	assert_int_equal(out[0], 0xF0);
	assert_int_equal(decode5(out, n, &d), MQTT_OK);
	assert_int_equal(d.type, MQTT_AUTH);
	assert_int_equal(d.reason, 0x18);
	assert_str(d.props.auth_method, "SCRAM");
	assert_int_equal(mqtt5_encode_reason(out, MQTT_PINGREQ, 0, NULL), 0);
}

static void test_connack_encodes_with_properties(void **state)
{
	uint8_t pb[64], out[64];
	struct mqtt5_pbuf b;
	struct mqtt5_out o;
	struct mqtt5_packet d;
	size_t n;

	mqtt5_pbuf_init(&b, pb, sizeof(pb));
	mqtt5_pbuf_num(&b, MQTT5_PROP_TOPIC_ALIAS_MAX, 16);
	mqtt5_pbuf_num(&b, MQTT5_PROP_MAX_QOS, 1);
	mqtt5_pbuf_str(&b, MQTT5_PROP_ASSIGNED_CLIENT_ID, U("gen-7"));
	mqtt5_out_init(&o, pb, b.len, NULL, 0);
	n = mqtt5_connack_size(&o);
	assert_int_equal(mqtt5_encode_connack(out, true, 0, &o), n);
	assert_bytes(out, 7, BYTES(0x20, (uint8_t)(n - 2), 0x01, 0x00, (uint8_t)b.len, 0x22, 0x00));
	assert_int_equal(decode5(out, n, &d), MQTT_OK);
	assert_true(d.u.connack.session_present);
	assert_int_equal(d.props.topic_alias_max, 16);
	assert_int_equal(d.props.max_qos, 1);
	assert_str(d.props.assigned_client_id, "gen-7");
	/* a refusal never says a session is present [MQTT-3.2.2-6] */
	assert_int_equal(mqtt5_encode_connack(out, true, MQTT5_RC_NOT_AUTHORIZED, NULL), 5);
	assert_bytes(out, 5, BYTES(0x20, 0x03, 0x00, 0x87, 0x00));
}

/*
 * A PUBLISH forwarded: the broker's own block (expiry left, subscription
 * ids) in front, the sender's block after it without its expiry and alias.
 */
static void test_publish_forwards_properties_rewriting_expiry_alias_and_sub_ids(void **state)
{
	static const uint8_t in[] = {
		0x32, 0x29, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x09, 0x1A,
		0x02, 0x00, 0x00, 0x00, 0x3C,           /* expiry 60 */
		0x26, 0x00, 0x01, 'k', 0x00, 0x01, '1', /* k=1 */
		0x23, 0x00, 0x04,                       /* alias 4 */
		0x03, 0x00, 0x01, 'j',                  /* content type j */
		0x26, 0x00, 0x01, 'k', 0x00, 0x01, '2', /* k=2 */
		'p', 'a', 'y', 'l', 'o', 'a', 'd',
	};
	uint8_t own[16], out[64];
	struct mqtt5_pbuf b;
	struct mqtt5_out o;
	struct mqtt5_packet d, f;
	struct mqtt5_prop_iter it;
	struct mqtt_str k, v;
	uint32_t id;
	size_t n;

	assert_int_equal(decode5(in, sizeof(in), &d), MQTT_OK);
	assert_int_equal(d.props.user_prop_count, 2);
	assert_int_equal(d.u.publish.payload_len, 7);
	mqtt5_pbuf_init(&b, own, sizeof(own));
	mqtt5_pbuf_num(&b, MQTT5_PROP_MESSAGE_EXPIRY, 42);
	mqtt5_pbuf_num(&b, MQTT5_PROP_SUB_ID, 1);
	mqtt5_pbuf_num(&b, MQTT5_PROP_SUB_ID, 300);
	assert_false(b.failed);
	mqtt5_out_init(&o, own, b.len, &d.props, MQTT5_PUBLISH_REWRITTEN);
	assert_int_equal(o.len, b.len + 18);
	n = mqtt5_publish_size(3, 7, 1, &o);
	assert_int_equal(mqtt5_encode_publish(out, false, 1, false, U("a/b"), 77, &o,
					      d.u.publish.payload, d.u.publish.payload_len), n);
	assert_int_equal(decode5(out, n, &f), MQTT_OK);
	assert_int_equal(f.u.publish.packet_id, 77);
	assert_int_equal(f.props.message_expiry, 42);
	assert_false(mqtt5_props_has(&f.props, MQTT5_PROP_TOPIC_ALIAS));
	assert_str(f.props.content_type, "j");
	assert_int_equal(f.props.sub_id_count, 2);
	mqtt5_prop_iter_init(&it, &f.props);
	assert_true(mqtt5_sub_id_next(&it, &id));
	assert_int_equal(id, 1);
	assert_true(mqtt5_sub_id_next(&it, &id));
	assert_int_equal(id, 300);
	assert_false(mqtt5_sub_id_next(&it, &id));
	/* user properties keep their order [MQTT-3.3.2-18] */
	mqtt5_prop_iter_init(&it, &f.props);
	assert_true(mqtt5_user_prop_next(&it, &k, &v));
	assert_str(k, "k");
	assert_str(v, "1");
	assert_true(mqtt5_user_prop_next(&it, &k, &v));
	assert_str(v, "2");
	assert_false(mqtt5_user_prop_next(&it, &k, &v));
	assert_bytes(f.u.publish.payload, f.u.publish.payload_len, U("payload"));
}

/* Nothing to leave out: the received block is copied whole. */
static void test_publish_forwards_a_block_unchanged(void **state)
{
	static const uint8_t in[] = { 0x30, 0x0C, 0x00, 0x01, 't', 0x07, 0x26, 0x00, 0x01, 'a',
				      0x00, 0x01, 'b', 'x' };
	uint8_t out[32];
	struct mqtt5_out o;
	struct mqtt5_packet d;
	size_t n;

	assert_int_equal(decode5(in, sizeof(in), &d), MQTT_OK);
	mqtt5_out_init(&o, NULL, 0, &d.props, MQTT5_PUBLISH_REWRITTEN);
	assert_int_equal(o.skip, 0);
	n = mqtt5_publish_size(1, 1, 0, &o);
	assert_int_equal(n, sizeof(in));
	assert_int_equal(mqtt5_encode_publish(out, false, 0, false, U("t"), 0, &o, U("x")), n);
	assert_bytes(out, n, in, sizeof(in));
}

static void test_publish_encoder_refusals(void **state)
{
	uint8_t out[16];
	struct mqtt5_out big = { .len = MQTT_MAX_REMAINING };

	assert_int_equal(mqtt5_publish_size(1, 0, 3, NULL), 0);
	assert_int_equal(mqtt5_publish_size(65536, 0, 0, NULL), 0);
	assert_int_equal(mqtt5_publish_size(1, 0, 0, &big), 0);
	assert_int_equal(mqtt5_publish_size(1, MQTT_MAX_REMAINING, 0, NULL), 0);
	assert_int_equal(mqtt5_encode_publish(out, false, 3, false, U("t"), 1, NULL, NULL, 0), 0);
	assert_int_equal(mqtt5_publish_size(1, 0, 0, NULL), 6);
	assert_int_equal(mqtt5_encode_publish(out, true, 0, true, U("t"), 0, NULL, NULL, 0), 6);
	assert_bytes(out, 6, BYTES(0x31, 0x04, 0x00, 0x01, 't', 0x00));
	assert_int_equal(mqtt5_connack_size(&big), 0);
	assert_int_equal(mqtt5_ack_size(0, &big), 0);
	assert_int_equal(mqtt5_reason_size(0, &big), 0);
}

/* --- the builder ----------------------------------------------------------- */

static void test_builder_sizes_and_refusals(void **state)
{
	uint8_t buf[8];
	struct mqtt5_pbuf b;

	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_PAYLOAD_FORMAT, 1), 2);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_PAYLOAD_FORMAT, 256), 0);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_PAYLOAD_FORMAT, 2), 0);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_SUB_ID, 0), 0);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_RECEIVE_MAX, 0), 0);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_TOPIC_ALIAS_MAX, 0), 3);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_TOPIC_ALIAS, 65535), 3);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_TOPIC_ALIAS, 65536), 0);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_MESSAGE_EXPIRY, 0xFFFFFFFF), 5);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_SUB_ID, 127), 2);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_SUB_ID, 128), 3);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_SUB_ID, MQTT5_SUB_ID_MAX), 5);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_SUB_ID, MQTT5_SUB_ID_MAX + 1), 0);
	assert_int_equal(mqtt5_prop_num_size(MQTT5_PROP_CONTENT_TYPE, 1), 0);
	assert_int_equal(mqtt5_prop_num_size((enum mqtt5_prop_id)0x04, 1), 0);
	assert_int_equal(mqtt5_prop_str_size(MQTT5_PROP_CONTENT_TYPE, 65535), 65538);
	assert_int_equal(mqtt5_prop_str_size(MQTT5_PROP_CONTENT_TYPE, 65536), 0);
	assert_int_equal(mqtt5_prop_str_size(MQTT5_PROP_TOPIC_ALIAS, 1), 0);
	assert_int_equal(mqtt5_prop_user_size(1, 2), 8);
	assert_int_equal(mqtt5_prop_user_size(65536, 0), 0);

	mqtt5_pbuf_init(&b, buf, sizeof(buf));
	mqtt5_pbuf_num(&b, MQTT5_PROP_MESSAGE_EXPIRY, 0x01020304);
	assert_false(b.failed);
	assert_bytes(buf, b.len, BYTES(0x02, 0x01, 0x02, 0x03, 0x04));
	mqtt5_pbuf_num(&b, MQTT5_PROP_MESSAGE_EXPIRY, 1);     /* 5 more do not fit in 8 */
	assert_true(b.failed);
	assert_int_equal(b.len, 5);
	mqtt5_pbuf_num(&b, MQTT5_PROP_PAYLOAD_FORMAT, 1);     /* stays failed */
	assert_true(b.failed);
	mqtt5_pbuf_init(&b, buf, sizeof(buf));
	mqtt5_pbuf_str(&b, MQTT5_PROP_RECEIVE_MAX, U("x"));   /* not a string */
	assert_true(b.failed);
	mqtt5_pbuf_init(&b, buf, sizeof(buf));
	mqtt5_pbuf_raw(&b, U("\x01\x01"));
	mqtt5_pbuf_num(&b, MQTT5_PROP_SUB_ID, 200);
	assert_false(b.failed);
	assert_bytes(buf, b.len, BYTES(0x01, 0x01, 0x0B, 0xC8, 0x01));
}

static void test_props_decode_reports_the_bytes_used(void **state)
{
	struct mqtt5_props p;
	size_t used = 0;

	assert_int_equal(mqtt5_props_decode(BYTES(0x02, 0x01, 0x01, 0xAA), MQTT_PUBLISH, &p, &used),
			 MQTT_OK);
	assert_int_equal(used, 3);
	assert_int_equal(p.payload_format, 1);
	assert_int_equal(mqtt5_props_decode(BYTES(0x02, 0x01, 0x01), MQTT5_CTX_WILL, &p, &used),
			 MQTT_OK);
	assert_int_equal(mqtt5_props_decode(BYTES(0x02, 0x01, 0x01), MQTT_CONNECT, &p, &used),
			 MQTT_ERR_MALFORMED);
	assert_int_equal(mqtt5_props_decode(BYTES(0x00), 16, &p, &used), MQTT_ERR_TYPE);
	assert_int_equal(mqtt5_props_decode(NULL, 0, MQTT_PUBLISH, &p, &used), MQTT_ERR_MALFORMED);
}

/* --- names ------------------------------------------------------------------ */

static void test_reason_names_depend_on_the_packet(void **state)
{
	assert_string_equal(mqtt5_reason_name(MQTT_SUBACK, 0x00), "Granted QoS 0");
	assert_string_equal(mqtt5_reason_name(MQTT_DISCONNECT, 0x00), "Normal disconnection");
	assert_string_equal(mqtt5_reason_name(MQTT_PUBACK, 0x00), "Success");
	assert_string_equal(mqtt5_reason_name(MQTT_CONNACK, 0x84), "Unsupported Protocol Version");
	assert_string_equal(mqtt5_reason_name(MQTT_DISCONNECT, 0x8E), "Session taken over");
	assert_string_equal(mqtt5_reason_name(MQTT_AUTH, 0x19), "Re-authenticate");
	assert_null(mqtt5_reason_name(MQTT_PUBACK, 0x92));
	assert_null(mqtt5_reason_name(MQTT_PINGREQ, 0x00));
	assert_null(mqtt5_reason_name(MQTT_CONNACK, 0x03));
	assert_null(mqtt5_reason_name((enum mqtt_type)16, 0x00));
	assert_string_equal(mqtt5_prop_name(MQTT5_PROP_TOPIC_ALIAS), "topic alias");
	assert_string_equal(mqtt5_prop_name(0x04), "unknown property");
	assert_string_equal(mqtt5_prop_name(0xFF), "unknown property");
}

static void test_results_map_to_reason_codes(void **state)
{
	assert_int_equal(mqtt5_result_reason(MQTT_OK), 0x00);
	assert_int_equal(mqtt5_result_reason(MQTT_ERR_MALFORMED), 0x81);
	assert_int_equal(mqtt5_result_reason(MQTT_ERR_UTF8), 0x81);
	assert_int_equal(mqtt5_result_reason(MQTT_ERR_TYPE), 0x81);
	assert_int_equal(mqtt5_result_reason(MQTT_ERR_PROTOCOL), 0x82);
	assert_int_equal(mqtt5_result_reason(MQTT_ERR_PROTOCOL_LEVEL), 0x84);
	assert_int_equal(mqtt5_result_reason(MQTT_ERR_TOO_LARGE), 0x95);
	assert_string_equal(mqtt_result_str(MQTT_ERR_PROTOCOL), "protocol error");
}

int main(void)
{
	const struct CMUnitTest functions[] = {
		cmocka_unit_test(test_every_property_round_trips_where_allowed_and_is_refused_elsewhere),
		cmocka_unit_test(test_auth_data_round_trips_with_its_method),
		cmocka_unit_test(test_absent_properties_hold_the_defaults),
		cmocka_unit_test(test_packets_without_a_block_have_the_empty_one),
		cmocka_unit_test(test_connect_round_trips_with_will_properties),
		cmocka_unit_test(test_v3_decoder_refuses_level_5_as_before),
		cmocka_unit_test(test_fixed_header_type_15),
		cmocka_unit_test(test_v3_decode_unchanged),
		cmocka_unit_test(test_subscribe_options_and_sub_id),
		cmocka_unit_test(test_suback_and_unsuback_encode_and_walk),
		cmocka_unit_test(test_acks_encode_in_their_shortest_form),
		cmocka_unit_test(test_disconnect_and_auth_encode),
		cmocka_unit_test(test_connack_encodes_with_properties),
		cmocka_unit_test(test_publish_forwards_properties_rewriting_expiry_alias_and_sub_ids),
		cmocka_unit_test(test_publish_forwards_a_block_unchanged),
		cmocka_unit_test(test_publish_encoder_refusals),
		cmocka_unit_test(test_builder_sizes_and_refusals),
		cmocka_unit_test(test_props_decode_reports_the_bytes_used),
		cmocka_unit_test(test_reason_names_depend_on_the_packet),
		cmocka_unit_test(test_results_map_to_reason_codes),
	};
	struct CMUnitTest tests[ARRAY_SIZE(functions) + ARRAY_SIZE(props_decode_cases)];
	size_t n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(functions); i++)
		tests[n++] = functions[i];
	ADD_CASES(tests, n, run_decode_case, props_decode_cases);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
