/*
 * fuzz_mqtt5.c - libFuzzer harness for the MQTT 5 codec (daemon/mqtt5_codec.c,
 * daemon/mqtt_props.c).
 *
 * The input is a stream of packets on an MQTT 5 connection: fixed header,
 * then each body decoded from its own exact allocation (ASan sees any read
 * past it). The input's head is also decoded as a bare property block in
 * the context its first byte picks. Every block that decodes is walked
 * and must agree with its parsed counts; every packet that decodes is
 * re-encoded with the MQTT 5 encoders and must decode to the same packet,
 * its property blocks byte for byte. A decoded PUBLISH is also forwarded
 * with the broker's rewritten properties in front of the sender's.
 * Seeds: tests/fuzz/corpus/mqtt5/.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzmqtt.h"
#include "mqtt.h"
#include "mqtt5.h"

/* An encoder's buffer, of the nonzero size its size function gave. */
static uint8_t *fz_alloc(size_t n)
{
	uint8_t *c = malloc(n ? n : 1);

	CHECK(c != NULL && n != 0);
	return c;
}

static bool fz_same_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static bool fz_same_str(struct mqtt_str a, struct mqtt_str b)
{
	return fz_same_bytes(a.p, a.len, b.p, b.len);
}

/*
 * A decoded block: the walk visits raw exactly, finds as many user
 * properties and subscription identifiers as were counted, and the first
 * identifier is sub_id. The builder, fed what the walk gave, writes a
 * block that decodes to the same properties.
 */
static void fz_check_props(const struct mqtt5_props *p, unsigned ctx)
{
	struct mqtt5_prop_iter it;
	struct mqtt5_prop prop;
	struct mqtt5_pbuf b;
	struct mqtt5_props again;
	uint32_t users = 0, subs = 0, first_sub = 0;
	uint8_t *buf = fz_alloc((size_t)p->raw_len + 16), *blk;
	size_t used, n;

	mqtt5_pbuf_init(&b, buf, (size_t)p->raw_len + 16);
	mqtt5_prop_iter_init(&it, p);
	while (mqtt5_prop_next(&it, &prop)) {
		CHECK(mqtt5_props_has(p, (enum mqtt5_prop_id)prop.id));
		if (prop.id == MQTT5_PROP_USER_PROPERTY) {
			users++;
			mqtt5_pbuf_user(&b, prop.str.p, prop.str.len, prop.value.p, prop.value.len);
		} else if (mqtt5_prop_num_size((enum mqtt5_prop_id)prop.id, prop.num)) {
			if (prop.id == MQTT5_PROP_SUB_ID && subs++ == 0)
				first_sub = prop.num;
			mqtt5_pbuf_num(&b, (enum mqtt5_prop_id)prop.id, prop.num);
		} else {
			mqtt5_pbuf_str(&b, (enum mqtt5_prop_id)prop.id, prop.str.p, prop.str.len);
		}
	}
	CHECK(p->raw_len == 0 || it.p == p->raw + p->raw_len);
	CHECK(users == p->user_prop_count && subs == p->sub_id_count);
	CHECK(subs == 0 || first_sub == p->sub_id);
	/* the rebuilt block is never longer: only a non-minimal integer shrinks */
	CHECK(!b.failed && b.len <= p->raw_len);
	/* the length field, then the block, as a packet carries it */
	blk = fz_alloc(b.len + 4);
	n = mqtt_varint_encode(blk, (uint32_t)b.len);
	if (b.len)
		memcpy(blk + n, buf, b.len);
	CHECK(mqtt5_props_decode(blk, n + b.len, ctx, &again, &used) == MQTT_OK);
	CHECK(used == n + b.len);
	CHECK(again.present == p->present && again.user_prop_count == p->user_prop_count);
	CHECK(again.sub_id_count == p->sub_id_count && again.sub_id == p->sub_id);
	CHECK(again.message_expiry == p->message_expiry && again.topic_alias == p->topic_alias &&
	      again.receive_max == p->receive_max && again.max_packet_size == p->max_packet_size);
	CHECK(fz_same_str(again.content_type, p->content_type) &&
	      fz_same_str(again.auth_data, p->auth_data) &&
	      fz_same_str(again.reason_string, p->reason_string));
	free(blk);
	free(buf);
}

static bool fz_same_props(const struct mqtt5_props *a, const struct mqtt5_props *b)
{
	return fz_same_bytes(a->raw, a->raw_len, b->raw, b->raw_len) && a->present == b->present;
}

/* The packets are the same to a reader: fields, lists and blocks. */
static void fz_check_same(const struct mqtt5_packet *a, const struct mqtt5_packet *b)
{
	CHECK(a->type == b->type && a->flags == b->flags && a->reason == b->reason);
	CHECK(fz_same_props(&a->props, &b->props));
	/* Only a CONNECT's will block is set. */
	CHECK(a->type != MQTT_CONNECT || fz_same_props(&a->will_props, &b->will_props));
	switch (a->type) {
	case MQTT_CONNECT: {
		const struct mqtt_connect *x = &a->u.connect, *y = &b->u.connect;

		CHECK(x->protocol_level == y->protocol_level && x->keepalive == y->keepalive);
		CHECK(x->clean_session == y->clean_session && x->will_flag == y->will_flag);
		CHECK(x->will_qos == y->will_qos && x->will_retain == y->will_retain);
		CHECK(fz_same_str(x->client_id, y->client_id) &&
		      fz_same_str(x->will_topic, y->will_topic) &&
		      fz_same_str(x->will_payload, y->will_payload) &&
		      fz_same_str(x->username, y->username) &&
		      fz_same_str(x->password, y->password));
		break;
	}
	case MQTT_CONNACK:
		CHECK(a->u.connack.session_present == b->u.connack.session_present &&
		      a->u.connack.rc == b->u.connack.rc);
		break;
	case MQTT_PUBLISH: {
		const struct mqtt_publish *x = &a->u.publish, *y = &b->u.publish;

		CHECK(fz_same_str(x->topic, y->topic) && x->packet_id == y->packet_id);
		CHECK(fz_same_bytes(x->payload, x->payload_len, y->payload, y->payload_len));
		break;
	}
	case MQTT_SUBSCRIBE:
	case MQTT_SUBACK:
	case MQTT_UNSUBSCRIBE:
	case MQTT_UNSUBACK:
		CHECK(a->u.list.packet_id == b->u.list.packet_id &&
		      a->u.list.count == b->u.list.count &&
		      fz_same_bytes(a->u.list.p, a->u.list.len, b->u.list.p, b->u.list.len));
		break;
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		CHECK(a->u.packet_id == b->u.packet_id);
		break;
	default:
		break;
	}
}

/* Decode what an encoder wrote (size bytes, as its size function said) and compare. */
static void fz_redecode(const uint8_t *enc, size_t n, const struct mqtt5_packet *want)
{
	struct mqtt5_packet again;
	uint8_t f;
	uint32_t r;
	size_t h;

	CHECK(n != 0);
	CHECK(mqtt5_fixed_header(enc, n, 0, &f, &r, &h) == MQTT_OK && h + r == n);
	CHECK(mqtt5_decode(f, enc + h, r, &again) == MQTT_OK);
	fz_check_same(want, &again);
}

static void fz_connect(const struct mqtt5_packet *pkt, const struct mqtt5_out *po)
{
	const struct mqtt_connect *c = &pkt->u.connect;
	struct mqtt5_out wo;
	size_t n;
	uint8_t *out;

	mqtt5_out_init(&wo, NULL, 0, &pkt->will_props, 0);
	n = mqtt5_connect_size(c, po, &wo);
	out = fz_alloc(n);
	CHECK(mqtt5_encode_connect(out, c, po, &wo) == n);
	fz_redecode(out, n, pkt);
	free(out);
}

/*
 * A PUBLISH as the broker forwards it: its own expiry, alias and
 * subscription identifiers in front, the sender's others copied.
 */
static void fz_forward(const struct mqtt5_packet *pkt)
{
	const struct mqtt_publish *p = &pkt->u.publish;
	uint8_t own[32];
	struct mqtt5_pbuf b;
	struct mqtt5_out o;
	struct mqtt5_packet f;
	uint8_t *out, fb;
	uint32_t r;
	size_t n, h;

	mqtt5_pbuf_init(&b, own, sizeof(own));
	mqtt5_pbuf_num(&b, MQTT5_PROP_MESSAGE_EXPIRY, pkt->props.message_expiry / 2);
	mqtt5_pbuf_num(&b, MQTT5_PROP_TOPIC_ALIAS, 1);
	mqtt5_pbuf_num(&b, MQTT5_PROP_SUB_ID, MQTT5_SUB_ID_MAX);
	CHECK(!b.failed);
	mqtt5_out_init(&o, own, b.len, &pkt->props, MQTT5_PUBLISH_REWRITTEN);
	n = mqtt5_publish_size(p->topic.len, p->payload_len, p->qos, &o);
	out = fz_alloc(n);
	CHECK(mqtt5_encode_publish(out, p->dup, p->qos, p->retain, p->topic.p, p->topic.len,
				   p->packet_id, &o, p->payload, p->payload_len) == n);
	CHECK(mqtt5_fixed_header(out, n, 0, &fb, &r, &h) == MQTT_OK && h + r == n);
	CHECK(mqtt5_decode(fb, out + h, r, &f) == MQTT_OK);
	CHECK(f.props.topic_alias == 1 && f.props.sub_id_count == 1);
	CHECK(f.props.message_expiry == pkt->props.message_expiry / 2);
	CHECK(f.props.user_prop_count == pkt->props.user_prop_count);
	CHECK((f.props.present & ~MQTT5_PUBLISH_REWRITTEN) ==
	      (pkt->props.present & ~MQTT5_PUBLISH_REWRITTEN));
	CHECK(fz_same_bytes(f.u.publish.payload, f.u.publish.payload_len, p->payload,
			    p->payload_len));
	free(out);
}

/* Walk a list into arrays and encode it again. */
static void fz_list(const struct mqtt5_packet *pkt, const struct mqtt5_out *po)
{
	const struct mqtt_list *l = &pkt->u.list;
	struct mqtt_str *filters;
	uint8_t *q;
	struct mqtt_list_iter it;
	size_t k = l->count, n;
	uint8_t *out;
	bool codes = pkt->type == MQTT_SUBACK || pkt->type == MQTT_UNSUBACK;

	mqtt5_list_iter_init(&it, pkt);
	fuzz_walk_list(&it, l->count, l->p, l->len, &filters, &q);
	for (size_t i = 0; codes && i < k; i++)
		CHECK(mqtt5_reason_name(pkt->type, q[i]) != NULL);
	n = codes ? mqtt5_suback_size(k, po) : mqtt5_sub_size(pkt->type, filters, k, po);
	out = fz_alloc(n);
	if (codes)
		CHECK(mqtt5_encode_suback(out, pkt->type, l->packet_id, q, k, po) == n);
	else
		CHECK(mqtt5_encode_sub(out, pkt->type, l->packet_id, filters, q, k, po) == n);
	fz_redecode(out, n, pkt);
	free(out);
	free(q);
	free(filters);
}

static void fz_round_trip(const struct mqtt5_packet *pkt)
{
	struct mqtt5_out po;
	uint8_t *out = NULL;
	size_t n = 0;

	mqtt5_out_init(&po, NULL, 0, &pkt->props, 0);
	switch (pkt->type) {
	case MQTT_CONNECT:
		fz_connect(pkt, &po);
		return;
	case MQTT_CONNACK:
		n = mqtt5_connack_size(&po);
		out = fz_alloc(n);
		CHECK(mqtt5_encode_connack(out, pkt->u.connack.session_present, pkt->reason, &po) == n);
		break;
	case MQTT_PUBLISH: {
		const struct mqtt_publish *p = &pkt->u.publish;

		n = mqtt5_publish_size(p->topic.len, p->payload_len, p->qos, &po);
		out = fz_alloc(n);
		CHECK(mqtt5_encode_publish(out, p->dup, p->qos, p->retain, p->topic.p, p->topic.len,
					   p->packet_id, &po, p->payload, p->payload_len) == n);
		fz_forward(pkt);
		break;
	}
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		n = mqtt5_ack_size(pkt->reason, &po);
		out = fz_alloc(n);
		CHECK(mqtt5_encode_ack(out, pkt->type, pkt->u.packet_id, pkt->reason, &po) == n);
		break;
	case MQTT_SUBSCRIBE:
	case MQTT_SUBACK:
	case MQTT_UNSUBSCRIBE:
	case MQTT_UNSUBACK:
		fz_list(pkt, &po);
		return;
	case MQTT_DISCONNECT:
	case MQTT_AUTH:
		n = mqtt5_reason_size(pkt->reason, &po);
		out = fz_alloc(n);
		CHECK(mqtt5_encode_reason(out, pkt->type, pkt->reason, &po) == n);
		break;
	case MQTT_PINGREQ:
	case MQTT_PINGRESP:
		out = fz_alloc(2);
		n = mqtt_encode_empty(out, pkt->type);
		break;
	}
	fz_redecode(out, n, pkt);
	free(out);
}

static void fz_decode(uint8_t first, const uint8_t *data, size_t len)
{
	uint8_t *body = fuzz_copy(data, len);
	struct mqtt5_packet pkt;
	int rc = mqtt5_decode(first, body, len, &pkt);

	CHECK(rc <= MQTT_OK && rc >= MQTT_ERR_PROTOCOL);
	CHECK(mqtt5_result_reason(rc) == 0 || mqtt5_result_reason(rc) >= 0x81);
	if (rc == MQTT_OK) {
		CHECK(pkt.type == (first >> 4) && pkt.flags == (first & 0x0F));
		fuzz_in_body(body, len, pkt.props.raw, pkt.props.raw_len);
		fz_check_props(&pkt.props, pkt.type);
		if (pkt.type == MQTT_CONNECT) {
			fuzz_in_body(body, len, pkt.will_props.raw, pkt.will_props.raw_len);
			fz_check_props(&pkt.will_props, MQTT5_CTX_WILL);
		}
		if (pkt.type != MQTT_CONNECT || pkt.u.connect.protocol_level == 5)
			fz_round_trip(&pkt);
	}
	free(body);
}

/* The input's head as a bare block, in the context its first byte picks. */
static void fz_block(const uint8_t *data, size_t size)
{
	struct mqtt5_props p;
	unsigned ctx;
	uint8_t *c;
	size_t used;

	if (size == 0)
		return;
	ctx = data[0] & 0x0F;
	c = fuzz_copy(data + 1, size - 1);
	if (mqtt5_props_decode(c, size - 1, ctx, &p, &used) == MQTT_OK) {
		CHECK(used <= size - 1);
		fuzz_in_body(c, size - 1, p.raw, p.raw_len);
		fz_check_props(&p, ctx);
	}
	free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;

	fz_block(data, size);
	while (off < size) {
		uint8_t first;
		uint32_t rem;
		size_t hdr;

		if (mqtt5_fixed_header(data + off, size - off, 0, &first, &rem, &hdr) != MQTT_OK)
			break;
		if (rem > size - off - hdr)
			break;
		fz_decode(first, data + off + hdr, rem);
		off += hdr + rem;
	}
	return 0;
}
