/*
 * mqtt_int.h - what the MQTT codec's files share (daemon/mqtt_codec.c,
 * daemon/mqtt_props.c, daemon/mqtt5_codec.c): the read cursor over a
 * packet body, the writers, and the pieces of packet decoding that
 * MQTT 3.1.1 and MQTT 5 have in common. Everything here is static inline
 * or internal, so the 3.1.1 path compiles to what it was.
 */
#ifndef IOTD_MQTT_INT_H
#define IOTD_MQTT_INT_H

#include <string.h>

#include "mqtt.h"
#include "mqtt5.h"

#define MQTT_PUBREL_FLAGS 0x2 /* also SUBSCRIBE, UNSUBSCRIBE [MQTT-2.2.2-1] */

/* --- reading ------------------------------------------------------------ */

/* A read cursor over one packet body; 'end' is never passed. */
struct mqtt_rd {
	const uint8_t *p, *end;
};

static inline size_t mqtt_rd_left(const struct mqtt_rd *r)
{
	return (size_t)(r->end - r->p);
}

static inline bool mqtt_rd_u8(struct mqtt_rd *r, uint8_t *v)
{
	if (r->p == r->end)
		return false;
	*v = *r->p++;
	return true;
}

static inline bool mqtt_rd_u16(struct mqtt_rd *r, uint16_t *v)
{
	if (mqtt_rd_left(r) < 2)
		return false;
	*v = (uint16_t)(r->p[0] << 8 | r->p[1]);
	r->p += 2;
	return true;
}

/* Length-prefixed binary data: the form of every string and of the binary fields. */
static inline int mqtt_rd_bin(struct mqtt_rd *r, struct mqtt_str *s)
{
	uint16_t n;

	if (!mqtt_rd_u16(r, &n) || mqtt_rd_left(r) < n)
		return MQTT_ERR_MALFORMED;
	s->p = r->p;
	s->len = n;
	r->p += n;
	return MQTT_OK;
}

static inline int mqtt_rd_utf8(struct mqtt_rd *r, struct mqtt_str *s)
{
	int rc = mqtt_rd_bin(r, s);

	if (rc != MQTT_OK)
		return rc;
	return mqtt_utf8_valid(s->p, s->len) ? MQTT_OK : MQTT_ERR_UTF8;
}

static inline void mqtt_rd_init(struct mqtt_rd *r, const uint8_t *body, size_t len)
{
	r->p = body;
	/* body may be NULL for an empty packet, and NULL + 0 is undefined */
	r->end = len ? body + len : body;
}

/*
 * A Variable Byte Integer inside a body (property lengths, subscription
 * identifiers): at most 4 bytes [MQTT-1.5.5]; a non-minimal encoding is
 * accepted, as for the remaining length.
 */
static inline bool mqtt_rd_varint(struct mqtt_rd *r, uint32_t *v)
{
	uint32_t value = 0;

	for (unsigned i = 0; i < 4; i++) {
		uint8_t b;

		if (!mqtt_rd_u8(r, &b))
			return false;
		value |= (uint32_t)(b & 0x7F) << (7 * i);
		if (!(b & 0x80)) {
			*v = value;
			return true;
		}
	}
	return false;
}

/* The fixed-header flags each type must carry [MQTT-2.2.2-1], [MQTT-2.2.2-2]. */
static inline uint8_t mqtt_required_flags(enum mqtt_type type)
{
	return (type == MQTT_PUBREL || type == MQTT_SUBSCRIBE ||
		type == MQTT_UNSUBSCRIBE) ? MQTT_PUBREL_FLAGS : 0;
}

/*
 * A packet's first byte, types up to last_type: its type and flags, and
 * the flags every type but PUBLISH must carry [MQTT-2.2.2-1], [MQTT-2.2.2-2].
 */
static inline int mqtt_decode_first(uint8_t first_byte, unsigned last_type,
				    enum mqtt_type *type, uint8_t *flags)
{
	unsigned t = first_byte >> 4;

	if (t < MQTT_CONNECT || t > last_type)
		return MQTT_ERR_TYPE;
	*type = (enum mqtt_type)t;
	*flags = first_byte & 0x0F;
	if (*type != MQTT_PUBLISH && *flags != mqtt_required_flags(*type))
		return MQTT_ERR_MALFORMED;
	return MQTT_OK;
}

/* A body that decoded (rc) must have been read to its end. */
static inline int mqtt_decode_end(const struct mqtt_rd *r, int rc)
{
	if (rc == MQTT_OK && r->p != r->end)
		return MQTT_ERR_MALFORMED;      /* trailing bytes */
	return rc;
}

/*
 * A PUBLISH up to its payload in 3.1.1, up to its properties in MQTT 5:
 * flags, topic, packet id.
 */
static inline int mqtt_decode_publish_head(struct mqtt_rd *r, uint8_t flags,
					   struct mqtt_publish *pub)
{
	int rc;

	pub->dup = flags & 0x08;
	pub->qos = (flags >> 1) & 3;
	pub->retain = flags & 0x01;
	pub->packet_id = 0;
	if (pub->qos == 3)
		return MQTT_ERR_MALFORMED;      /* [MQTT-3.3.1-4] */
	if (pub->qos == 0 && pub->dup)
		return MQTT_ERR_MALFORMED;      /* [MQTT-3.3.1-2] */
	rc = mqtt_rd_utf8(r, &pub->topic);
	if (rc != MQTT_OK)
		return rc;
	if (pub->qos && (!mqtt_rd_u16(r, &pub->packet_id) || pub->packet_id == 0))
		return MQTT_ERR_MALFORMED;      /* [MQTT-2.3.1-1] */
	return MQTT_OK;
}

/* The rest of the body is the payload. */
static inline void mqtt_decode_payload(struct mqtt_rd *r, struct mqtt_publish *pub)
{
	pub->payload = r->p;
	pub->payload_len = (uint32_t)mqtt_rd_left(r);
	r->p = r->end;
}

static inline void mqtt_list_iter_set(struct mqtt_list_iter *it, enum mqtt_type type,
				      const struct mqtt_list *l)
{
	it->type = type;
	it->p = l->p;
	it->end = l->len ? l->p + l->len : l->p;
}

/* --- shared decoders (daemon/mqtt_codec.c, daemon/mqtt_props.c) ---------- */

/*
 * CONNECT of any level. props and will NULL: 3.1.1 and 3.1 only (level 5
 * is MQTT_ERR_PROTOCOL_LEVEL); else level 5 too, its properties and will
 * properties read into them.
 */
int mqtt_decode_connect_v(struct mqtt_rd *r, struct mqtt_connect *c,
			  struct mqtt5_props *props, struct mqtt5_props *will);
/* The entries of SUBSCRIBE, SUBACK, UNSUBSCRIBE (and MQTT 5 UNSUBACK) after the packet id. */
int mqtt_decode_list_entries(struct mqtt_rd *r, enum mqtt_type type, struct mqtt_list *l,
			     bool v5);
/* A property block (its length, then the properties) in context ctx (mqtt5.h). */
int mqtt5_props_read(struct mqtt_rd *r, unsigned ctx, struct mqtt5_props *out);
/* An MQTT 5 reason code is one the packet type may carry. */
bool mqtt5_reason_allowed(enum mqtt_type type, uint8_t code);

/* --- writing ------------------------------------------------------------ */

static inline uint8_t *mqtt_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
	return p + 2;
}

static inline uint8_t *mqtt_put_bin(uint8_t *p, const uint8_t *s, size_t len)
{
	p = mqtt_put_u16(p, (uint16_t)len);
	if (len)
		memcpy(p, s, len);
	return p + len;
}

static inline uint8_t *mqtt_put_header(uint8_t *p, uint8_t first_byte, uint32_t remaining)
{
	*p++ = first_byte;
	return p + mqtt_varint_encode(p, remaining);
}

/* Whole packet size for a body of 'remaining' bytes; 0 if over the protocol limit. */
static inline size_t mqtt_packet_size(size_t remaining)
{
	if (remaining > MQTT_MAX_REMAINING)
		return 0;
	return 1 + mqtt_varint_size((uint32_t)remaining) + remaining;
}

/*
 * An outgoing property block as sent: its length field, then its bytes
 * (daemon/mqtt_props.c). NULL is the empty block (one byte). The size is
 * SIZE_MAX for a block over the protocol's limit.
 */
size_t mqtt5_out_size(const struct mqtt5_out *o);
uint8_t *mqtt5_put_out(uint8_t *p, const struct mqtt5_out *o);

#endif
