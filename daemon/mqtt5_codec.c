/*
 * mqtt5_codec.c - the MQTT 5 packets declared in mqtt5.h: the decoding of
 * every type on a version 5 connection, the encoders, and the reason
 * codes with the packets that may carry each. What MQTT 5 shares with
 * 3.1.1 (CONNECT, the PUBLISH head, list entries, the writers) is
 * daemon/mqtt_codec.c's, and so are the encoders of PUBLISH, SUBSCRIBE,
 * UNSUBSCRIBE, SUBACK, UNSUBACK and CONNECT, one for both versions;
 * properties are daemon/mqtt_props.c's.
 */
#include "mqtt5.h"
#include "mqtt_int.h"

#include <string.h>

/* --- reason codes [MQTT-2.4] --------------------------------------------- */

#define PK(t) (1u << (t))
#define PK_PUBACKS (PK(MQTT_PUBACK) | PK(MQTT_PUBREC))
#define PK_ERR (PK(MQTT_CONNACK) | PK_PUBACKS | PK(MQTT_SUBACK) | PK(MQTT_UNSUBACK) | \
		PK(MQTT_DISCONNECT))
#define PK_CD (PK(MQTT_CONNACK) | PK(MQTT_DISCONNECT))

/* A code's name in the packet types of 'types'; a code may have several names. */
static const struct mqtt5_reason_def {
	uint8_t code;
	uint16_t types;
	const char *name;
} mqtt5_reasons[] = {
	{ 0x00, PK(MQTT_CONNACK) | PK_PUBACKS | PK(MQTT_PUBREL) | PK(MQTT_PUBCOMP) |
		PK(MQTT_UNSUBACK) | PK(MQTT_AUTH), "Success" },
	{ 0x00, PK(MQTT_DISCONNECT), "Normal disconnection" },
	{ 0x00, PK(MQTT_SUBACK), "Granted QoS 0" },
	{ 0x01, PK(MQTT_SUBACK), "Granted QoS 1" },
	{ 0x02, PK(MQTT_SUBACK), "Granted QoS 2" },
	{ 0x04, PK(MQTT_DISCONNECT), "Disconnect with Will Message" },
	{ 0x10, PK_PUBACKS, "No matching subscribers" },
	{ 0x11, PK(MQTT_UNSUBACK), "No subscription existed" },
	{ 0x18, PK(MQTT_AUTH), "Continue authentication" },
	{ 0x19, PK(MQTT_AUTH), "Re-authenticate" },
	{ 0x80, PK_ERR, "Unspecified error" },
	{ 0x81, PK_CD, "Malformed Packet" },
	{ 0x82, PK_CD, "Protocol Error" },
	{ 0x83, PK_ERR, "Implementation specific error" },
	{ 0x84, PK(MQTT_CONNACK), "Unsupported Protocol Version" },
	{ 0x85, PK(MQTT_CONNACK), "Client Identifier not valid" },
	{ 0x86, PK(MQTT_CONNACK), "Bad User Name or Password" },
	{ 0x87, PK_ERR, "Not authorized" },
	{ 0x88, PK(MQTT_CONNACK), "Server unavailable" },
	{ 0x89, PK_CD, "Server busy" },
	{ 0x8A, PK(MQTT_CONNACK), "Banned" },
	{ 0x8B, PK(MQTT_DISCONNECT), "Server shutting down" },
	{ 0x8C, PK_CD, "Bad authentication method" },
	{ 0x8D, PK(MQTT_DISCONNECT), "Keep Alive timeout" },
	{ 0x8E, PK(MQTT_DISCONNECT), "Session taken over" },
	{ 0x8F, PK(MQTT_SUBACK) | PK(MQTT_UNSUBACK) | PK(MQTT_DISCONNECT), "Topic Filter invalid" },
	{ 0x90, PK(MQTT_CONNACK) | PK_PUBACKS | PK(MQTT_DISCONNECT), "Topic Name invalid" },
	{ 0x91, PK_PUBACKS | PK(MQTT_SUBACK) | PK(MQTT_UNSUBACK), "Packet Identifier in use" },
	{ 0x92, PK(MQTT_PUBREL) | PK(MQTT_PUBCOMP), "Packet Identifier not found" },
	{ 0x93, PK(MQTT_DISCONNECT), "Receive Maximum exceeded" },
	{ 0x94, PK(MQTT_DISCONNECT), "Topic Alias invalid" },
	{ 0x95, PK_CD, "Packet too large" },
	{ 0x96, PK(MQTT_DISCONNECT), "Message rate too high" },
	{ 0x97, PK(MQTT_CONNACK) | PK_PUBACKS | PK(MQTT_SUBACK) | PK(MQTT_DISCONNECT),
		"Quota exceeded" },
	{ 0x98, PK(MQTT_DISCONNECT), "Administrative action" },
	{ 0x99, PK(MQTT_CONNACK) | PK_PUBACKS | PK(MQTT_DISCONNECT), "Payload format invalid" },
	{ 0x9A, PK_CD, "Retain not supported" },
	{ 0x9B, PK_CD, "QoS not supported" },
	{ 0x9C, PK_CD, "Use another server" },
	{ 0x9D, PK_CD, "Server moved" },
	{ 0x9E, PK(MQTT_SUBACK) | PK(MQTT_DISCONNECT), "Shared Subscriptions not supported" },
	{ 0x9F, PK_CD, "Connection rate exceeded" },
	{ 0xA0, PK(MQTT_DISCONNECT), "Maximum connect time" },
	{ 0xA1, PK(MQTT_SUBACK) | PK(MQTT_DISCONNECT), "Subscription Identifiers not supported" },
	{ 0xA2, PK(MQTT_SUBACK) | PK(MQTT_DISCONNECT), "Wildcard Subscriptions not supported" },
};

const char *mqtt5_reason_name(enum mqtt_type type, uint8_t code)
{
	if ((unsigned)type > MQTT_AUTH)
		return NULL;
	for (size_t i = 0; i < sizeof(mqtt5_reasons) / sizeof(mqtt5_reasons[0]); i++)
		if (mqtt5_reasons[i].code == code && (mqtt5_reasons[i].types & PK(type)))
			return mqtt5_reasons[i].name;
	return NULL;
}

bool mqtt5_reason_allowed(enum mqtt_type type, uint8_t code)
{
	return mqtt5_reason_name(type, code) != NULL;
}

uint8_t mqtt5_result_reason(int result)
{
	switch (result) {
	case MQTT_OK:
	case MQTT_INCOMPLETE:
		return MQTT5_RC_SUCCESS;
	case MQTT_ERR_PROTOCOL:
		return MQTT5_RC_PROTOCOL_ERROR;
	case MQTT_ERR_PROTOCOL_NAME:    /* [MQTT-3.1.2-1] */
	case MQTT_ERR_PROTOCOL_LEVEL:   /* [MQTT-3.1.2-2] */
		return MQTT5_RC_UNSUPPORTED_PROTOCOL_VERSION;
	case MQTT_ERR_TOO_LARGE:
		return MQTT5_RC_PACKET_TOO_LARGE;
	}
	return MQTT5_RC_MALFORMED_PACKET;
}

/* --- decoding ----------------------------------------------------------- */

/* An optional reason code, then an optional block: the end of the body says which are there. */
static int mqtt5_decode_reason(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	if (mqtt_rd_left(r) > 0) {
		mqtt_rd_u8(r, &out->reason);
		if (!mqtt5_reason_allowed(out->type, out->reason))
			return MQTT_ERR_MALFORMED;
	}
	if (mqtt_rd_left(r) > 0)
		return mqtt5_props_read(r, out->type, &out->props);
	mqtt5_props_init(&out->props);
	return MQTT_OK;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP [MQTT-3.4.2]: packet id, then as above. */
static int mqtt5_decode_ack(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	if (!mqtt_rd_u16(r, &out->u.packet_id) || out->u.packet_id == 0)
		return MQTT_ERR_MALFORMED;
	return mqtt5_decode_reason(r, out);
}

static int mqtt5_decode_connack(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	struct mqtt_connack *ca = &out->u.connack;
	uint8_t flags;

	if (!mqtt_rd_u8(r, &flags) || !mqtt_rd_u8(r, &out->reason))
		return MQTT_ERR_MALFORMED;
	/* reserved bits [MQTT-3.2.2-1]; no session with a refusal [MQTT-3.2.2-6] */
	if ((flags & 0xFE) || (flags && out->reason) ||
	    !mqtt5_reason_allowed(MQTT_CONNACK, out->reason))
		return MQTT_ERR_MALFORMED;
	ca->session_present = flags;
	ca->rc = out->reason;
	return mqtt5_props_read(r, MQTT_CONNACK, &out->props);
}

static int mqtt5_decode_publish(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	struct mqtt_publish *pub = &out->u.publish;
	int rc = mqtt_decode_publish_head(r, out->flags, pub);

	if (rc == MQTT_OK)
		rc = mqtt5_props_read(r, MQTT_PUBLISH, &out->props);
	if (rc != MQTT_OK)
		return rc;
	if (pub->topic.len == 0 && !mqtt5_props_has(&out->props, MQTT5_PROP_TOPIC_ALIAS))
		return MQTT_ERR_PROTOCOL;
	mqtt_decode_payload(r, pub);
	return MQTT_OK;
}

/* SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK: packet id, block, entries. */
static int mqtt5_decode_list(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	struct mqtt_list *l = &out->u.list;
	int rc;

	if (!mqtt_rd_u16(r, &l->packet_id) || l->packet_id == 0)
		return MQTT_ERR_MALFORMED;
	rc = mqtt5_props_read(r, out->type, &out->props);
	if (rc != MQTT_OK)
		return rc;
	return mqtt_decode_list_entries(r, out->type, l, true);
}

/* A CONNECT's blocks, each empty when the packet has none (a level below 5, no will). */
static int mqtt5_decode_connect(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	const struct mqtt_connect *c = &out->u.connect;
	int rc = mqtt_decode_connect_v(r, &out->u.connect, &out->props, &out->will_props);

	if (rc != MQTT_OK)
		return rc;
	if (c->protocol_level != MQTT5_PROTOCOL_LEVEL)
		mqtt5_props_init(&out->props);
	if (c->protocol_level != MQTT5_PROTOCOL_LEVEL || !c->will_flag)
		mqtt5_props_init(&out->will_props);
	return MQTT_OK;
}

/*
 * Each type's decoder leaves out->props a block, read or empty, once it
 * returns MQTT_OK: a block read is not set to its defaults twice.
 */
static int mqtt5_decode_body(struct mqtt_rd *r, struct mqtt5_packet *out)
{
	switch (out->type) {
	case MQTT_CONNECT:
		return mqtt5_decode_connect(r, out);
	case MQTT_CONNACK:
		return mqtt5_decode_connack(r, out);
	case MQTT_PUBLISH:
		return mqtt5_decode_publish(r, out);
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		return mqtt5_decode_ack(r, out);
	case MQTT_SUBSCRIBE:
	case MQTT_SUBACK:
	case MQTT_UNSUBSCRIBE:
	case MQTT_UNSUBACK:
		return mqtt5_decode_list(r, out);
	case MQTT_DISCONNECT:
	case MQTT_AUTH:
		return mqtt5_decode_reason(r, out);
	case MQTT_PINGREQ:
	case MQTT_PINGRESP:
		mqtt5_props_init(&out->props);
		return MQTT_OK;
	}
	return MQTT_ERR_TYPE;
}

int mqtt5_decode(uint8_t first_byte, const uint8_t *body, size_t len, struct mqtt5_packet *out)
{
	struct mqtt_rd r;
	int rc = mqtt_decode_first(first_byte, MQTT_AUTH, &out->type, &out->flags);

	out->reason = 0;
	if (rc != MQTT_OK)
		return rc;
	mqtt_rd_init(&r, body, len);
	return mqtt_decode_end(&r, mqtt5_decode_body(&r, out));
}

void mqtt5_list_iter_init(struct mqtt_list_iter *it, const struct mqtt5_packet *pkt)
{
	mqtt_list_iter_set(it, pkt->type, &pkt->u.list);
}

/* --- encoding ----------------------------------------------------------- */

/* A body of 'fixed' bytes then the block: its remaining length, or SIZE_MAX. */
static size_t mqtt5_remaining(size_t fixed, const struct mqtt5_out *props)
{
	size_t pn = mqtt5_out_size(props);

	if (pn == SIZE_MAX || fixed > MQTT_MAX_REMAINING - pn)
		return SIZE_MAX;
	return fixed + pn;
}

size_t mqtt5_connack_size(const struct mqtt5_out *props)
{
	size_t rem = mqtt5_remaining(2, props);

	return rem == SIZE_MAX ? 0 : mqtt_packet_size(rem);
}

size_t mqtt5_encode_connack(uint8_t *out, bool session_present, uint8_t reason,
			    const struct mqtt5_out *props)
{
	size_t rem = mqtt5_remaining(2, props);
	uint8_t *p;

	if (rem == SIZE_MAX)
		return 0;
	p = mqtt_put_header(out, MQTT_CONNACK << 4, (uint32_t)rem);
	*p++ = session_present && reason == MQTT5_RC_SUCCESS;  /* [MQTT-3.2.2-6] */
	*p++ = reason;
	return (size_t)(mqtt5_put_out(p, props) - out);
}

/*
 * The tail of PUBACK..PUBCOMP, DISCONNECT and AUTH: the reason code and
 * the block, each left out when it and what follows carry nothing
 * [MQTT-3.4.2.1], [MQTT-3.14.2.1], [MQTT-3.15.2.1].
 */
static size_t mqtt5_reason_tail(uint8_t reason, const struct mqtt5_out *props)
{
	if (props && props->len)
		return mqtt5_remaining(1, props);
	return reason != 0;
}

static size_t mqtt5_reason_packet_size(size_t fixed, uint8_t reason,
				       const struct mqtt5_out *props)
{
	size_t tail = mqtt5_reason_tail(reason, props);

	return tail == SIZE_MAX || tail > MQTT_MAX_REMAINING - fixed ? 0
								    : mqtt_packet_size(fixed + tail);
}

static uint8_t *mqtt5_put_reason_tail(uint8_t *p, uint8_t reason, const struct mqtt5_out *props)
{
	size_t tail = mqtt5_reason_tail(reason, props);

	if (tail)
		*p++ = reason;
	if (tail > 1)
		p = mqtt5_put_out(p, props);
	return p;
}

static bool mqtt5_is_ack(enum mqtt_type type)
{
	return type == MQTT_PUBACK || type == MQTT_PUBREC || type == MQTT_PUBREL ||
	       type == MQTT_PUBCOMP;
}

size_t mqtt5_ack_size(uint8_t reason, const struct mqtt5_out *props)
{
	return mqtt5_reason_packet_size(2, reason, props);
}

size_t mqtt5_encode_ack(uint8_t *out, enum mqtt_type type, uint16_t packet_id, uint8_t reason,
			const struct mqtt5_out *props)
{
	size_t tail = mqtt5_reason_tail(reason, props);
	uint8_t *p;

	if (!mqtt5_is_ack(type) || mqtt5_ack_size(reason, props) == 0)
		return 0;
	p = mqtt_put_header(out, (uint8_t)(type << 4 | mqtt_required_flags(type)),
			    (uint32_t)(2 + tail));
	p = mqtt_put_u16(p, packet_id);
	return (size_t)(mqtt5_put_reason_tail(p, reason, props) - out);
}

size_t mqtt5_reason_size(uint8_t reason, const struct mqtt5_out *props)
{
	return mqtt5_reason_packet_size(0, reason, props);
}

size_t mqtt5_encode_reason(uint8_t *out, enum mqtt_type type, uint8_t reason,
			   const struct mqtt5_out *props)
{
	uint8_t *p;

	if ((type != MQTT_DISCONNECT && type != MQTT_AUTH) || mqtt5_reason_size(reason, props) == 0)
		return 0;
	p = mqtt_put_header(out, (uint8_t)(type << 4), (uint32_t)mqtt5_reason_tail(reason, props));
	return (size_t)(mqtt5_put_reason_tail(p, reason, props) - out);
}
