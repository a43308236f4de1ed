/*
 * mqtt_codec.c - the MQTT 3.1.1 / 3.1 packet codec declared in mqtt.h.
 *
 * Owns the wire format and nothing else: fixed header, remaining length,
 * every packet body in both directions, and UTF-8 validation. No state,
 * no allocation, no I/O. Decoded strings point into the caller's buffer.
 * Policy that needs context (topic syntax, client id rules, sessions) is
 * left to the callers. What MQTT 5 shares with 3.1.1 is written once,
 * here: the fixed header, CONNECT of every level, list entries, and the
 * encoders of PUBLISH, SUBSCRIBE/UNSUBSCRIBE, SUBACK/UNSUBACK and CONNECT
 * (MQTT 5's in mqtt5.h, the rest of it in daemon/mqtt5_codec.c).
 */
#include "mqtt.h"
#include "mqtt5.h"
#include "mqtt_int.h"

#include <string.h>

/* --- UTF-8 [MQTT-1.5.3] ------------------------------------------------- */

#define MQTT_ONES 0x0101010101010101ull
#define MQTT_HIGHS 0x8080808080808080ull

/*
 * Topics are nearly always ASCII, so take 8 bytes at a time while they
 * hold neither a high bit nor a zero byte (U+0000 is forbidden).
 */
static inline size_t mqtt_ascii_prefix(const uint8_t *p, size_t len)
{
	size_t i = 0;
	uint64_t w;

	while (len - i >= 8) {
		memcpy(&w, p + i, 8);
		if (((w | ((w - MQTT_ONES) & ~w)) & MQTT_HIGHS) != 0)
			break;
		i += 8;
	}
	return i;
}

/*
 * Length of the well-formed sequence starting at p[0] (Unicode table 3-7),
 * or 0 if ill-formed. The lead byte gives the length; after E0, ED, F0
 * and F4 the second byte's range is narrower: that is what rules out
 * overlong forms, surrogates and code points above U+10FFFF.
 */
static inline size_t mqtt_utf8_seq(const uint8_t *p, size_t left)
{
	uint8_t c = p[0], lo = 0x80, hi = 0xBF;
	size_t n;

	if (c < 0x80)
		return c != 0;
	if (c < 0xC2 || c > 0xF4)
		return 0;       /* continuation byte, overlong C0/C1, or past U+10FFFF */
	n = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
	switch (c) {
	case 0xE0: lo = 0xA0; break;    /* overlong */
	case 0xED: hi = 0x9F; break;    /* surrogates */
	case 0xF0: lo = 0x90; break;    /* overlong */
	case 0xF4: hi = 0x8F; break;    /* past U+10FFFF */
	}
	if (left < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((p[i] & 0xC0) != 0x80)
			return 0;
	return n;
}

bool mqtt_utf8_valid(const uint8_t *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		size_t stop;

		i += mqtt_ascii_prefix(p + i, len - i);
		/* the word that stopped the fast path (or the tail) goes byte by byte */
		stop = len - i < 8 ? len : i + 8;
		while (i < stop) {
			size_t n = mqtt_utf8_seq(p + i, len - i);

			if (n == 0)
				return false;
			i += n;
		}
	}
	return true;
}

/* --- fixed header ------------------------------------------------------- */

/* last_type: MQTT_DISCONNECT in 3.1.1, MQTT_AUTH in MQTT 5. */
static inline int mqtt_header(const uint8_t *buf, size_t len, size_t max_packet,
			      unsigned last_type, uint8_t *first_byte, uint32_t *remaining,
			      size_t *hdr_len)
{
	uint32_t value = 0;

	if (len == 0)
		return MQTT_INCOMPLETE;
	if ((buf[0] >> 4) == 0 || (buf[0] >> 4) > last_type)
		return MQTT_ERR_TYPE;
	for (size_t i = 1; i < MQTT_MAX_FIXED_HEADER; i++) {
		if (i >= len)
			return MQTT_INCOMPLETE;
		value |= (uint32_t)(buf[i] & 0x7F) << (7 * (i - 1));
		/*
		 * Even before the last length byte arrives, 'value' is a lower
		 * bound (later bytes may be zero), so an oversized packet is
		 * refused without waiting for the rest of its header.
		 */
		if (max_packet && (size_t)value + i + 1 > max_packet)
			return MQTT_ERR_TOO_LARGE;
		if (!(buf[i] & 0x80)) {
			*first_byte = buf[0];
			*remaining = value;
			*hdr_len = i + 1;
			return MQTT_OK;
		}
	}
	return MQTT_ERR_MALFORMED;
}

int mqtt_fixed_header(const uint8_t *buf, size_t len, size_t max_packet,
		      uint8_t *first_byte, uint32_t *remaining, size_t *hdr_len)
{
	return mqtt_header(buf, len, max_packet, MQTT_DISCONNECT, first_byte, remaining,
			   hdr_len);
}

int mqtt5_fixed_header(const uint8_t *buf, size_t len, size_t max_packet,
		       uint8_t *first_byte, uint32_t *remaining, size_t *hdr_len)
{
	return mqtt_header(buf, len, max_packet, MQTT_AUTH, first_byte, remaining, hdr_len);
}

/* --- decoding ----------------------------------------------------------- */

static int mqtt_decode_connect_flags(struct mqtt_connect *c, uint8_t f)
{
	if (f & 0x01)
		return MQTT_ERR_MALFORMED;      /* reserved [MQTT-3.1.2-3] */
	c->clean_session = f & 0x02;
	c->will_flag = f & 0x04;
	c->will_qos = (f >> 3) & 3;
	c->will_retain = f & 0x20;
	c->password_flag = f & 0x40;
	c->username_flag = f & 0x80;
	if (c->will_qos == 3)
		return MQTT_ERR_MALFORMED;      /* [MQTT-3.1.2-14] */
	if (!c->will_flag && (c->will_qos || c->will_retain))
		return MQTT_ERR_MALFORMED;      /* [MQTT-3.1.2-13], [MQTT-3.1.2-15] */
	if (c->password_flag && !c->username_flag && c->protocol_level < 5)
		return MQTT_ERR_MALFORMED;      /* [MQTT-3.1.2-22], gone in MQTT 5 */
	return MQTT_OK;
}

/*
 * The level is checked right after the name and before anything else, so
 * that a newer client (MQTT 5 adds properties) gets CONNACK 1, not a
 * parse error [MQTT-3.1.2-2]. Level 5 is taken only when v5 is set.
 */
static int mqtt_decode_protocol(struct mqtt_rd *r, struct mqtt_connect *c, bool v5)
{
	struct mqtt_str name;
	uint8_t want;

	if (mqtt_rd_bin(r, &name) != MQTT_OK)
		return MQTT_ERR_MALFORMED;
	if (name.len == 4 && memcmp(name.p, "MQTT", 4) == 0)
		want = 4;
	else if (name.len == 6 && memcmp(name.p, "MQIsdp", 6) == 0)
		want = 3;
	else
		return MQTT_ERR_PROTOCOL_NAME;  /* [MQTT-3.1.2-1] */
	if (!mqtt_rd_u8(r, &c->protocol_level))
		return MQTT_ERR_MALFORMED;
	if (c->protocol_level == want || (v5 && want == 4 && c->protocol_level == 5))
		return MQTT_OK;
	return MQTT_ERR_PROTOCOL_LEVEL;
}

static int mqtt_decode_connect_payload(struct mqtt_rd *r, struct mqtt_connect *c,
				       struct mqtt5_props *will)
{
	int rc = mqtt_rd_utf8(r, &c->client_id);

	if (rc == MQTT_OK && c->will_flag && c->protocol_level == 5)
		rc = mqtt5_props_read(r, MQTT5_CTX_WILL, will);
	if (rc == MQTT_OK && c->will_flag) {
		rc = mqtt_rd_utf8(r, &c->will_topic);
		if (rc == MQTT_OK)
			rc = mqtt_rd_bin(r, &c->will_payload);
	}
	if (rc == MQTT_OK && c->username_flag)
		rc = mqtt_rd_utf8(r, &c->username);
	if (rc == MQTT_OK && c->password_flag)
		rc = mqtt_rd_bin(r, &c->password);
	return rc;
}

int mqtt_decode_connect_v(struct mqtt_rd *r, struct mqtt_connect *c,
			  struct mqtt5_props *props, struct mqtt5_props *will)
{
	uint8_t flags;
	int rc;

	*c = (struct mqtt_connect){ 0 };
	rc = mqtt_decode_protocol(r, c, props != NULL);
	if (rc != MQTT_OK)
		return rc;
	if (!mqtt_rd_u8(r, &flags) || !mqtt_rd_u16(r, &c->keepalive))
		return MQTT_ERR_MALFORMED;
	rc = mqtt_decode_connect_flags(c, flags);
	if (rc == MQTT_OK && c->protocol_level == 5)
		rc = mqtt5_props_read(r, MQTT_CONNECT, props);
	if (rc == MQTT_OK)
		rc = mqtt_decode_connect_payload(r, c, will);
	return rc;
}

static int mqtt_decode_connack(struct mqtt_rd *r, struct mqtt_connack *ca)
{
	if (mqtt_rd_left(r) != 2)
		return MQTT_ERR_MALFORMED;
	/* reserved bits [MQTT-3.2.2.1]; no session with a refusal [MQTT-3.2.2-4] */
	if ((r->p[0] & 0xFE) || r->p[1] > MQTT_CONNACK_NOT_AUTHORIZED ||
	    (r->p[0] && r->p[1]))
		return MQTT_ERR_MALFORMED;
	ca->session_present = r->p[0];
	ca->rc = r->p[1];
	r->p += 2;
	return MQTT_OK;
}

static int mqtt_decode_publish(struct mqtt_rd *r, uint8_t flags, struct mqtt_publish *pub)
{
	int rc = mqtt_decode_publish_head(r, flags, pub);

	if (rc == MQTT_OK)
		mqtt_decode_payload(r, pub);
	return rc;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: a packet id and nothing else. */
static int mqtt_decode_ack(struct mqtt_rd *r, uint16_t *packet_id)
{
	if (mqtt_rd_left(r) != 2 || !mqtt_rd_u16(r, packet_id) || *packet_id == 0)
		return MQTT_ERR_MALFORMED;
	return MQTT_OK;
}

/*
 * One list entry. A SUBSCRIBE's requested QoS has its upper six bits
 * reserved [MQTT-3.8.3-4]; a SUBACK code is 0, 1, 2 or 0x80 [MQTT-3.9.3-2].
 * MQTT 5: the subscription options keep bits 6 and 7 reserved
 * [MQTT-3.8.3-5], and QoS 3 or retain handling 3 is a Protocol Error
 * [MQTT-3.8.3.1]; SUBACK and UNSUBACK carry the reason codes their tables
 * list.
 */
static int mqtt_decode_entry(struct mqtt_rd *r, enum mqtt_type type, bool v5)
{
	struct mqtt_str filter;
	uint8_t q;
	int rc;

	if (type == MQTT_SUBACK || type == MQTT_UNSUBACK) {
		if (!mqtt_rd_u8(r, &q))
			return MQTT_ERR_MALFORMED;
		if (v5)
			return mqtt5_reason_allowed(type, q) ? MQTT_OK : MQTT_ERR_MALFORMED;
		return q > 2 && q != MQTT_SUBACK_FAILURE ? MQTT_ERR_MALFORMED : MQTT_OK;
	}
	rc = mqtt_rd_utf8(r, &filter);
	if (rc != MQTT_OK || type == MQTT_UNSUBSCRIBE)
		return rc;
	if (!mqtt_rd_u8(r, &q))
		return MQTT_ERR_MALFORMED;
	if (!v5)
		return q > 2 ? MQTT_ERR_MALFORMED : MQTT_OK;
	if (q & 0xC0)
		return MQTT_ERR_MALFORMED;
	return (q & 3) == 3 || (q >> 4 & 3) == 3 ? MQTT_ERR_PROTOCOL : MQTT_OK;
}

/*
 * The whole list is checked here so that mqtt_list_next() cannot fail.
 * 'count' is 16 bits wide: a longer list is refused as too large, which
 * a sane max_packet makes unreachable anyway.
 */
int mqtt_decode_list_entries(struct mqtt_rd *r, enum mqtt_type type, struct mqtt_list *l,
			     bool v5)
{
	size_t count = 0;

	l->p = r->p;
	l->len = mqtt_rd_left(r);
	if (l->len == 0)
		return MQTT_ERR_MALFORMED;      /* [MQTT-3.8.3-3], [MQTT-3.10.3-2] */
	while (r->p != r->end) {
		int rc = mqtt_decode_entry(r, type, v5);

		if (rc != MQTT_OK)
			return rc;
		if (++count > UINT16_MAX)
			return MQTT_ERR_TOO_LARGE;
	}
	l->count = (uint16_t)count;
	return MQTT_OK;
}

static int mqtt_decode_list(struct mqtt_rd *r, enum mqtt_type type, struct mqtt_list *l)
{
	if (!mqtt_rd_u16(r, &l->packet_id) || l->packet_id == 0)
		return MQTT_ERR_MALFORMED;
	return mqtt_decode_list_entries(r, type, l, false);
}

static int mqtt_decode_body(struct mqtt_rd *r, struct mqtt_packet *out)
{
	switch (out->type) {
	case MQTT_CONNECT:
		return mqtt_decode_connect_v(r, &out->u.connect, NULL, NULL);
	case MQTT_CONNACK:
		return mqtt_decode_connack(r, &out->u.connack);
	case MQTT_PUBLISH:
		return mqtt_decode_publish(r, out->flags, &out->u.publish);
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
	case MQTT_UNSUBACK:
		return mqtt_decode_ack(r, &out->u.packet_id);
	case MQTT_SUBSCRIBE:
	case MQTT_SUBACK:
	case MQTT_UNSUBSCRIBE:
		return mqtt_decode_list(r, out->type, &out->u.list);
	case MQTT_PINGREQ:
	case MQTT_PINGRESP:
	case MQTT_DISCONNECT:
		return MQTT_OK;
	case MQTT_AUTH:
		break;
	}
	return MQTT_ERR_TYPE;
}

int mqtt_decode(uint8_t first_byte, const uint8_t *body, size_t len,
		struct mqtt_packet *out)
{
	struct mqtt_rd r;
	int rc = mqtt_decode_first(first_byte, MQTT_DISCONNECT, &out->type, &out->flags);

	if (rc != MQTT_OK)
		return rc;
	mqtt_rd_init(&r, body, len);
	return mqtt_decode_end(&r, mqtt_decode_body(&r, out));
}

/* --- lists -------------------------------------------------------------- */

void mqtt_list_iter_init(struct mqtt_list_iter *it, const struct mqtt_packet *pkt)
{
	mqtt_list_iter_set(it, pkt->type, &pkt->u.list);
}

/* No bounds checks: mqtt_decode_list() already walked the same bytes. */
bool mqtt_list_next(struct mqtt_list_iter *it, struct mqtt_str *filter, uint8_t *qos)
{
	struct mqtt_str f = { NULL, 0 };
	uint8_t q = 0;

	if (it->p >= it->end)
		return false;
	if (it->type != MQTT_SUBACK && it->type != MQTT_UNSUBACK) {
		f.len = (uint16_t)(it->p[0] << 8 | it->p[1]);
		f.p = it->p + 2;
		it->p += 2 + (size_t)f.len;
	}
	if (it->type != MQTT_UNSUBSCRIBE)
		q = *it->p++;
	if (filter)
		*filter = f;
	if (qos)
		*qos = q;
	return true;
}

/* --- encoding ----------------------------------------------------------- */

size_t mqtt_varint_size(uint32_t n)
{
	if (n < 128u)
		return 1;
	if (n < 16384u)
		return 2;
	if (n < 2097152u)
		return 3;
	return n <= MQTT_MAX_REMAINING ? 4 : 0;
}

size_t mqtt_varint_encode(uint8_t *out, uint32_t n)
{
	size_t i = 0;

	if (n > MQTT_MAX_REMAINING)
		return 0;
	do {
		uint8_t b = n & 0x7F;

		n >>= 7;
		out[i++] = n ? (uint8_t)(b | 0x80) : b;
	} while (n);
	return i;
}

size_t mqtt_encode_connack(uint8_t out[4], bool session_present, uint8_t rc)
{
	out[0] = MQTT_CONNACK << 4;
	out[1] = 2;
	out[2] = session_present && rc == MQTT_CONNACK_ACCEPTED; /* [MQTT-3.2.2-4] */
	out[3] = rc;
	return 4;
}

size_t mqtt_encode_ack(uint8_t out[4], enum mqtt_type type, uint16_t packet_id)
{
	if (type != MQTT_PUBACK && type != MQTT_PUBREC && type != MQTT_PUBREL &&
	    type != MQTT_PUBCOMP && type != MQTT_UNSUBACK)
		return 0;
	out[0] = (uint8_t)(type << 4 | mqtt_required_flags(type));
	out[1] = 2;
	mqtt_put_u16(out + 2, packet_id);
	return 4;
}

size_t mqtt_encode_empty(uint8_t out[2], enum mqtt_type type)
{
	if (type != MQTT_PINGREQ && type != MQTT_PINGRESP && type != MQTT_DISCONNECT)
		return 0;
	out[0] = (uint8_t)(type << 4);
	out[1] = 0;
	return 2;
}

/*
 * The encoders below serve both versions: props NULL is 3.1.1, where no
 * property block goes out; MQTT 5's NULL (the empty block) is mqtt5_empty.
 */
static const struct mqtt5_out mqtt5_empty;

static inline const struct mqtt5_out *mqtt5_block(const struct mqtt5_out *props)
{
	return props ? props : &mqtt5_empty;
}

/* SUBACK, and MQTT 5 UNSUBACK: packet id, block, one code per entry. */
static size_t mqtt_codes_remaining(size_t n, const struct mqtt5_out *props)
{
	size_t pn = props ? mqtt5_out_size(props) : 0;

	if (n == 0 || n > MQTT_MAX_REMAINING || pn == SIZE_MAX)
		return SIZE_MAX;
	return 2 + pn + n;
}

static inline size_t mqtt_size_of(size_t rem)
{
	return rem == SIZE_MAX ? 0 : mqtt_packet_size(rem);
}

static size_t mqtt_encode_codes(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
				const struct mqtt5_out *props, const uint8_t *codes, size_t n)
{
	size_t rem = mqtt_codes_remaining(n, props);
	uint8_t *p;

	if (rem == SIZE_MAX || rem > MQTT_MAX_REMAINING)
		return 0;
	p = mqtt_put_header(out, (uint8_t)(type << 4), (uint32_t)rem);
	p = mqtt_put_u16(p, packet_id);
	if (props)
		p = mqtt5_put_out(p, props);
	memcpy(p, codes, n);
	return (size_t)(p + n - out);
}

size_t mqtt_suback_size(size_t n)
{
	return mqtt_size_of(mqtt_codes_remaining(n, NULL));
}

size_t mqtt_encode_suback(uint8_t *out, uint16_t packet_id, const uint8_t *codes, size_t n)
{
	return mqtt_encode_codes(out, MQTT_SUBACK, packet_id, NULL, codes, n);
}

size_t mqtt5_suback_size(size_t n, const struct mqtt5_out *props)
{
	return mqtt_size_of(mqtt_codes_remaining(n, mqtt5_block(props)));
}

size_t mqtt5_encode_suback(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
			   const uint8_t *codes, size_t n, const struct mqtt5_out *props)
{
	if (type != MQTT_SUBACK && type != MQTT_UNSUBACK)
		return 0;
	return mqtt_encode_codes(out, type, packet_id, mqtt5_block(props), codes, n);
}

static inline size_t mqtt_publish_remaining(size_t topic_len, size_t payload_len, uint8_t qos,
					    const struct mqtt5_out *props)
{
	size_t pn = props ? mqtt5_out_size(props) : 0;

	if (topic_len > UINT16_MAX || qos > 2 || payload_len > MQTT_MAX_REMAINING ||
	    pn > MQTT_MAX_REMAINING)
		return SIZE_MAX;
	return 2 + topic_len + (qos ? 2 : 0) + pn + payload_len;
}

/* Inlined into both versions' encoders: 3.1.1's pays nothing for MQTT 5. */
static inline size_t mqtt_publish_write(uint8_t *out, bool dup, uint8_t qos, bool retain,
					const uint8_t *topic, size_t topic_len,
					uint16_t packet_id, const struct mqtt5_out *props,
					const uint8_t *payload, size_t payload_len)
{
	size_t rem = mqtt_publish_remaining(topic_len, payload_len, qos, props);
	uint8_t first;
	uint8_t *p;

	if (rem == SIZE_MAX || rem > MQTT_MAX_REMAINING)
		return 0;
	/* DUP is meaningless at QoS 0 and must be clear [MQTT-3.3.1-2] */
	first = (uint8_t)(MQTT_PUBLISH << 4 | (dup && qos ? 0x08 : 0) | qos << 1 | (retain ? 1 : 0));
	p = mqtt_put_header(out, first, (uint32_t)rem);
	p = mqtt_put_bin(p, topic, topic_len);
	if (qos)
		p = mqtt_put_u16(p, packet_id);
	if (props)
		p = mqtt5_put_out(p, props);
	if (payload_len)
		memcpy(p, payload, payload_len);
	return (size_t)(p + payload_len - out);
}

size_t mqtt_publish_size(size_t topic_len, size_t payload_len, uint8_t qos)
{
	return mqtt_size_of(mqtt_publish_remaining(topic_len, payload_len, qos, NULL));
}

size_t mqtt_encode_publish(uint8_t *out, bool dup, uint8_t qos, bool retain,
			   const uint8_t *topic, size_t topic_len, uint16_t packet_id,
			   const uint8_t *payload, size_t payload_len)
{
	return mqtt_publish_write(out, dup, qos, retain, topic, topic_len, packet_id, NULL,
				  payload, payload_len);
}

size_t mqtt5_publish_size(size_t topic_len, size_t payload_len, uint8_t qos,
			  const struct mqtt5_out *props)
{
	return mqtt_size_of(mqtt_publish_remaining(topic_len, payload_len, qos, mqtt5_block(props)));
}

size_t mqtt5_encode_publish(uint8_t *out, bool dup, uint8_t qos, bool retain,
			    const uint8_t *topic, size_t topic_len, uint16_t packet_id,
			    const struct mqtt5_out *props, const uint8_t *payload,
			    size_t payload_len)
{
	return mqtt_publish_write(out, dup, qos, retain, topic, topic_len, packet_id,
				  mqtt5_block(props), payload, payload_len);
}

static inline const char *mqtt_protocol_name(uint8_t level)
{
	return level == 3 ? "MQIsdp" : "MQTT";
}

/* The property blocks (length fields included) go in at level 5 only. */
static size_t mqtt_connect_remaining(const struct mqtt_connect *c, const struct mqtt5_out *props,
				     const struct mqtt5_out *will)
{
	size_t n = 2 + strlen(mqtt_protocol_name(c->protocol_level)) + 1 + 1 + 2;

	n += 2 + (size_t)c->client_id.len;
	if (c->will_flag)
		n += 4 + (size_t)c->will_topic.len + c->will_payload.len;
	if (c->username_flag)
		n += 2 + (size_t)c->username.len;
	if (c->password_flag)
		n += 2 + (size_t)c->password.len;
	if (c->protocol_level == 5) {
		size_t pn = mqtt5_out_size(props);
		size_t wn = c->will_flag ? mqtt5_out_size(will) : 0;

		if (pn == SIZE_MAX || wn == SIZE_MAX)
			return SIZE_MAX;
		n += pn + wn;
	}
	return n;
}

size_t mqtt5_connect_size(const struct mqtt_connect *c, const struct mqtt5_out *props,
			  const struct mqtt5_out *will)
{
	return mqtt_size_of(mqtt_connect_remaining(c, props, will));
}

size_t mqtt_connect_size(const struct mqtt_connect *c)
{
	return mqtt5_connect_size(c, NULL, NULL);
}

/*
 * Flags go out as given, even inconsistent ones, so tests can build the
 * invalid CONNECTs the decoder must refuse; the fields that follow are
 * written according to those flags.
 */
static inline uint8_t mqtt_connect_flags(const struct mqtt_connect *c)
{
	return (uint8_t)((c->clean_session ? 0x02 : 0) | (c->will_flag ? 0x04 : 0) |
			 (c->will_qos & 3) << 3 | (c->will_retain ? 0x20 : 0) |
			 (c->password_flag ? 0x40 : 0) | (c->username_flag ? 0x80 : 0));
}

size_t mqtt5_encode_connect(uint8_t *out, const struct mqtt_connect *c,
			    const struct mqtt5_out *props, const struct mqtt5_out *will)
{
	const char *name = mqtt_protocol_name(c->protocol_level);
	size_t rem = mqtt_connect_remaining(c, props, will);
	uint8_t *p;

	if (rem == SIZE_MAX || rem > MQTT_MAX_REMAINING)
		return 0;
	p = mqtt_put_header(out, MQTT_CONNECT << 4, (uint32_t)rem);
	p = mqtt_put_bin(p, (const uint8_t *)name, strlen(name));
	*p++ = c->protocol_level;
	*p++ = mqtt_connect_flags(c);
	p = mqtt_put_u16(p, c->keepalive);
	if (c->protocol_level == 5)
		p = mqtt5_put_out(p, props);
	p = mqtt_put_bin(p, c->client_id.p, c->client_id.len);
	if (c->will_flag) {
		if (c->protocol_level == 5)
			p = mqtt5_put_out(p, will);
		p = mqtt_put_bin(p, c->will_topic.p, c->will_topic.len);
		p = mqtt_put_bin(p, c->will_payload.p, c->will_payload.len);
	}
	if (c->username_flag)
		p = mqtt_put_bin(p, c->username.p, c->username.len);
	if (c->password_flag)
		p = mqtt_put_bin(p, c->password.p, c->password.len);
	return (size_t)(p - out);
}

size_t mqtt_encode_connect(uint8_t *out, const struct mqtt_connect *c)
{
	return mqtt5_encode_connect(out, c, NULL, NULL);
}

static size_t mqtt_sub_remaining(enum mqtt_type type, const struct mqtt_str *filters, size_t n,
				 const struct mqtt5_out *props)
{
	size_t per = type == MQTT_SUBSCRIBE ? 3 : 2;  /* length prefix (+ qos) */
	size_t rem = 2 + (props ? mqtt5_out_size(props) : 0);

	if ((type != MQTT_SUBSCRIBE && type != MQTT_UNSUBSCRIBE) || n == 0 ||
	    n > MQTT_MAX_REMAINING / per || rem > MQTT_MAX_REMAINING)
		return SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		rem += per + filters[i].len;
		if (rem > MQTT_MAX_REMAINING)
			return SIZE_MAX;
	}
	return rem;
}

size_t mqtt_sub_size(enum mqtt_type type, const struct mqtt_str *filters, size_t n)
{
	return mqtt_size_of(mqtt_sub_remaining(type, filters, n, NULL));
}

size_t mqtt5_sub_size(enum mqtt_type type, const struct mqtt_str *filters, size_t n,
		      const struct mqtt5_out *props)
{
	return mqtt_size_of(mqtt_sub_remaining(type, filters, n, mqtt5_block(props)));
}

static size_t mqtt_encode_list(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
			       const struct mqtt5_out *props, const struct mqtt_str *filters,
			       const uint8_t *qos, size_t n)
{
	size_t rem = mqtt_sub_remaining(type, filters, n, props);
	uint8_t *p;

	if (rem == SIZE_MAX)
		return 0;
	p = mqtt_put_header(out, (uint8_t)(type << 4 | MQTT_PUBREL_FLAGS), (uint32_t)rem);
	p = mqtt_put_u16(p, packet_id);
	if (props)
		p = mqtt5_put_out(p, props);
	for (size_t i = 0; i < n; i++) {
		p = mqtt_put_bin(p, filters[i].p, filters[i].len);
		if (type == MQTT_SUBSCRIBE)
			*p++ = qos[i];
	}
	return (size_t)(p - out);
}

size_t mqtt_encode_sub(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
		       const struct mqtt_str *filters, const uint8_t *qos, size_t n)
{
	return mqtt_encode_list(out, type, packet_id, NULL, filters, qos, n);
}

size_t mqtt5_encode_sub(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
			const struct mqtt_str *filters, const uint8_t *options, size_t n,
			const struct mqtt5_out *props)
{
	return mqtt_encode_list(out, type, packet_id, mqtt5_block(props), filters, options, n);
}

/* --- names -------------------------------------------------------------- */

const char *mqtt_type_name(int type)
{
	static const char *const names[] = {
		[MQTT_CONNECT] = "CONNECT",         [MQTT_CONNACK] = "CONNACK",
		[MQTT_PUBLISH] = "PUBLISH",         [MQTT_PUBACK] = "PUBACK",
		[MQTT_PUBREC] = "PUBREC",           [MQTT_PUBREL] = "PUBREL",
		[MQTT_PUBCOMP] = "PUBCOMP",         [MQTT_SUBSCRIBE] = "SUBSCRIBE",
		[MQTT_SUBACK] = "SUBACK",           [MQTT_UNSUBSCRIBE] = "UNSUBSCRIBE",
		[MQTT_UNSUBACK] = "UNSUBACK",       [MQTT_PINGREQ] = "PINGREQ",
		[MQTT_PINGRESP] = "PINGRESP",       [MQTT_DISCONNECT] = "DISCONNECT",
		[MQTT_AUTH] = "AUTH",
	};

	if (type < MQTT_CONNECT || type > MQTT_AUTH)
		return "UNKNOWN";
	return names[type];
}

const char *mqtt_result_str(int result)
{
	switch (result) {
	case MQTT_OK:                   return "ok";
	case MQTT_INCOMPLETE:           return "incomplete packet";
	case MQTT_ERR_MALFORMED:        return "malformed packet";
	case MQTT_ERR_UTF8:             return "invalid UTF-8 string";
	case MQTT_ERR_PROTOCOL_NAME:    return "unknown protocol name";
	case MQTT_ERR_PROTOCOL_LEVEL:   return "unsupported protocol level";
	case MQTT_ERR_TOO_LARGE:        return "packet too large";
	case MQTT_ERR_TYPE:             return "invalid packet type";
	case MQTT_ERR_PROTOCOL:         return "protocol error";
	}
	return "unknown result";
}
