/*
 * mqtt_props.c - MQTT 5 properties, declared in mqtt5.h: the table of
 * every property (its kind of value, the packets that may carry it, its
 * range), the decoding and checking of a block, the walk over a decoded
 * block, the builder of outgoing blocks and the copy of a received block
 * into an outgoing one.
 */
#include "mqtt5.h"
#include "mqtt_int.h"

#include <stddef.h>
#include <string.h>

enum mqtt5_kind {
	MQTT5_NONE = 0,         /* not a property identifier */
	MQTT5_BYTE,
	MQTT5_U16,
	MQTT5_U32,
	MQTT5_VARINT,
	MQTT5_UTF8,
	MQTT5_BIN,
	MQTT5_PAIR,
};

/* A context's bit (mqtt5.h: the will, or a packet type). */
#define CTX(t) (1u << (t))
#define CTX_ACKS (CTX(MQTT_PUBACK) | CTX(MQTT_PUBREC) | CTX(MQTT_PUBREL) | CTX(MQTT_PUBCOMP))
#define CTX_MESSAGE (CTX(MQTT_PUBLISH) | CTX(MQTT5_CTX_WILL))
#define CTX_ALL (CTX(MQTT5_CTX_WILL) | CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK) | \
		 CTX(MQTT_PUBLISH) | CTX_ACKS | CTX(MQTT_SUBSCRIBE) | CTX(MQTT_SUBACK) | \
		 CTX(MQTT_UNSUBSCRIBE) | CTX(MQTT_UNSUBACK) | CTX(MQTT_DISCONNECT) | \
		 CTX(MQTT_AUTH))

/* Range rules beyond the kind's. */
#define MQTT5_ZERO_BAD 1        /* 0 is a Protocol Error */
#define MQTT5_FLAG 2            /* only 0 and 1 [MQTT-3.1.2.11], [MQTT-3.2.2.3] */
#define MQTT5_QOS01 MQTT5_FLAG  /* maximum QoS: 0 or 1 (2 is said by leaving it out) */

/*
 * Each property [MQTT-2.2.2.2]: its value, where it may appear, where it
 * may appear more than once (user properties anywhere, subscription
 * identifiers in a PUBLISH from the server), its range rule and the
 * field of struct mqtt5_props that holds it.
 */
struct mqtt5_prop_def {
	const char *name;
	uint8_t kind;
	uint8_t rule;
	uint16_t where;
	uint16_t many;
	uint16_t field;         /* offsetof(struct mqtt5_props, ...) */
};

#define DEF(id, nm, k, w, r, f) \
	[id] = { nm, k, r, w, 0, offsetof(struct mqtt5_props, f) }

static const struct mqtt5_prop_def mqtt5_defs[MQTT5_PROP_LAST + 1] = {
	DEF(MQTT5_PROP_PAYLOAD_FORMAT, "payload format indicator", MQTT5_BYTE, CTX_MESSAGE,
	    MQTT5_FLAG, payload_format),
	DEF(MQTT5_PROP_MESSAGE_EXPIRY, "message expiry interval", MQTT5_U32, CTX_MESSAGE, 0,
	    message_expiry),
	DEF(MQTT5_PROP_CONTENT_TYPE, "content type", MQTT5_UTF8, CTX_MESSAGE, 0, content_type),
	DEF(MQTT5_PROP_RESPONSE_TOPIC, "response topic", MQTT5_UTF8, CTX_MESSAGE, 0,
	    response_topic),
	DEF(MQTT5_PROP_CORRELATION_DATA, "correlation data", MQTT5_BIN, CTX_MESSAGE, 0,
	    correlation_data),
	[MQTT5_PROP_SUB_ID] = { "subscription identifier", MQTT5_VARINT, MQTT5_ZERO_BAD,
				CTX(MQTT_PUBLISH) | CTX(MQTT_SUBSCRIBE), CTX(MQTT_PUBLISH),
				offsetof(struct mqtt5_props, sub_id) },
	DEF(MQTT5_PROP_SESSION_EXPIRY, "session expiry interval", MQTT5_U32,
	    CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK) | CTX(MQTT_DISCONNECT), 0, session_expiry),
	DEF(MQTT5_PROP_ASSIGNED_CLIENT_ID, "assigned client identifier", MQTT5_UTF8,
	    CTX(MQTT_CONNACK), 0, assigned_client_id),
	DEF(MQTT5_PROP_SERVER_KEEP_ALIVE, "server keep alive", MQTT5_U16, CTX(MQTT_CONNACK), 0,
	    server_keep_alive),
	DEF(MQTT5_PROP_AUTH_METHOD, "authentication method", MQTT5_UTF8,
	    CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK) | CTX(MQTT_AUTH), 0, auth_method),
	DEF(MQTT5_PROP_AUTH_DATA, "authentication data", MQTT5_BIN,
	    CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK) | CTX(MQTT_AUTH), 0, auth_data),
	DEF(MQTT5_PROP_REQUEST_PROBLEM_INFO, "request problem information", MQTT5_BYTE,
	    CTX(MQTT_CONNECT), MQTT5_FLAG, request_problem_info),
	DEF(MQTT5_PROP_WILL_DELAY, "will delay interval", MQTT5_U32, CTX(MQTT5_CTX_WILL), 0,
	    will_delay),
	DEF(MQTT5_PROP_REQUEST_RESPONSE_INFO, "request response information", MQTT5_BYTE,
	    CTX(MQTT_CONNECT), MQTT5_FLAG, request_response_info),
	DEF(MQTT5_PROP_RESPONSE_INFO, "response information", MQTT5_UTF8, CTX(MQTT_CONNACK), 0,
	    response_info),
	DEF(MQTT5_PROP_SERVER_REFERENCE, "server reference", MQTT5_UTF8,
	    CTX(MQTT_CONNACK) | CTX(MQTT_DISCONNECT), 0, server_reference),
	DEF(MQTT5_PROP_REASON_STRING, "reason string", MQTT5_UTF8,
	    CTX(MQTT_CONNACK) | CTX_ACKS | CTX(MQTT_SUBACK) | CTX(MQTT_UNSUBACK) |
	    CTX(MQTT_DISCONNECT) | CTX(MQTT_AUTH), 0, reason_string),
	DEF(MQTT5_PROP_RECEIVE_MAX, "receive maximum", MQTT5_U16,
	    CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK), MQTT5_ZERO_BAD, receive_max),
	DEF(MQTT5_PROP_TOPIC_ALIAS_MAX, "topic alias maximum", MQTT5_U16,
	    CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK), 0, topic_alias_max),
	DEF(MQTT5_PROP_TOPIC_ALIAS, "topic alias", MQTT5_U16, CTX(MQTT_PUBLISH), MQTT5_ZERO_BAD,
	    topic_alias),
	DEF(MQTT5_PROP_MAX_QOS, "maximum QoS", MQTT5_BYTE, CTX(MQTT_CONNACK), MQTT5_QOS01,
	    max_qos),
	DEF(MQTT5_PROP_RETAIN_AVAILABLE, "retain available", MQTT5_BYTE, CTX(MQTT_CONNACK),
	    MQTT5_FLAG, retain_available),
	[MQTT5_PROP_USER_PROPERTY] = { "user property", MQTT5_PAIR, 0, CTX_ALL, CTX_ALL,
				       offsetof(struct mqtt5_props, user_prop_count) },
	DEF(MQTT5_PROP_MAX_PACKET_SIZE, "maximum packet size", MQTT5_U32,
	    CTX(MQTT_CONNECT) | CTX(MQTT_CONNACK), MQTT5_ZERO_BAD, max_packet_size),
	DEF(MQTT5_PROP_WILDCARD_SUB_AVAILABLE, "wildcard subscription available", MQTT5_BYTE,
	    CTX(MQTT_CONNACK), MQTT5_FLAG, wildcard_sub_available),
	DEF(MQTT5_PROP_SUB_ID_AVAILABLE, "subscription identifier available", MQTT5_BYTE,
	    CTX(MQTT_CONNACK), MQTT5_FLAG, sub_id_available),
	DEF(MQTT5_PROP_SHARED_SUB_AVAILABLE, "shared subscription available", MQTT5_BYTE,
	    CTX(MQTT_CONNACK), MQTT5_FLAG, shared_sub_available),
};

static inline const struct mqtt5_prop_def *mqtt5_def(unsigned id)
{
	if (id > MQTT5_PROP_LAST || mqtt5_defs[id].kind == MQTT5_NONE)
		return NULL;
	return &mqtt5_defs[id];
}

const char *mqtt5_prop_name(unsigned id)
{
	const struct mqtt5_prop_def *d = mqtt5_def(id);

	return d ? d->name : "unknown property";
}

/* --- decoding ----------------------------------------------------------- */

/*
 * One property, its value read by its kind. The identifier is a Variable
 * Byte Integer, but every defined one is a single byte below 0x80, so a
 * byte that is not one of them is refused whatever would follow it.
 */
static int mqtt5_prop_read(struct mqtt_rd *r, struct mqtt5_prop *prop, bool check_utf8)
{
	const struct mqtt5_prop_def *d;
	uint16_t v16;
	int rc = MQTT_OK;

	*prop = (struct mqtt5_prop){ 0 };
	if (!mqtt_rd_u8(r, &prop->id) || (d = mqtt5_def(prop->id)) == NULL)
		return MQTT_ERR_MALFORMED;
	switch (d->kind) {
	case MQTT5_BYTE: {
		uint8_t v8;

		if (!mqtt_rd_u8(r, &v8))
			return MQTT_ERR_MALFORMED;
		prop->num = v8;
		return MQTT_OK;
	}
	case MQTT5_U16:
		if (!mqtt_rd_u16(r, &v16))
			return MQTT_ERR_MALFORMED;
		prop->num = v16;
		return MQTT_OK;
	case MQTT5_U32:
		if (!mqtt_rd_u16(r, &v16))
			return MQTT_ERR_MALFORMED;
		prop->num = (uint32_t)v16 << 16;
		if (!mqtt_rd_u16(r, &v16))
			return MQTT_ERR_MALFORMED;
		prop->num |= v16;
		return MQTT_OK;
	case MQTT5_VARINT:
		return mqtt_rd_varint(r, &prop->num) ? MQTT_OK : MQTT_ERR_MALFORMED;
	case MQTT5_BIN:
		return mqtt_rd_bin(r, &prop->str);
	case MQTT5_PAIR:
		rc = check_utf8 ? mqtt_rd_utf8(r, &prop->str) : mqtt_rd_bin(r, &prop->str);
		if (rc != MQTT_OK)
			return rc;
		return check_utf8 ? mqtt_rd_utf8(r, &prop->value) : mqtt_rd_bin(r, &prop->value);
	default:        /* MQTT5_UTF8 */
		return check_utf8 ? mqtt_rd_utf8(r, &prop->str) : mqtt_rd_bin(r, &prop->str);
	}
}

static int mqtt5_prop_range(const struct mqtt5_prop_def *d, uint32_t v)
{
	if ((d->rule & MQTT5_ZERO_BAD) && v == 0)
		return MQTT_ERR_PROTOCOL;
	if ((d->rule & MQTT5_FLAG) && v > 1)
		return MQTT_ERR_PROTOCOL;
	return MQTT_OK;
}

/* Check one property against its context and what came before, then keep its value. */
static int mqtt5_prop_accept(struct mqtt5_props *out, unsigned ctx, const struct mqtt5_prop *prop)
{
	const struct mqtt5_prop_def *d = &mqtt5_defs[prop->id];
	char *field = (char *)out + d->field;
	int rc;

	if (!(d->where & CTX(ctx)))
		return MQTT_ERR_MALFORMED;      /* [MQTT-2.2.2.2]: not valid for the packet */
	if ((out->present & MQTT5_BIT(prop->id)) && !(d->many & CTX(ctx)))
		return MQTT_ERR_PROTOCOL;       /* given twice */
	rc = mqtt5_prop_range(d, prop->num);
	if (rc != MQTT_OK)
		return rc;
	if (prop->id == MQTT5_PROP_USER_PROPERTY) {
		out->user_prop_count++;
	} else if (prop->id == MQTT5_PROP_SUB_ID) {
		if (out->sub_id_count++ == 0)
			out->sub_id = prop->num;
	} else if (d->kind == MQTT5_UTF8 || d->kind == MQTT5_BIN) {
		memcpy(field, &prop->str, sizeof(prop->str));
	} else if (d->kind == MQTT5_BYTE) {
		*(uint8_t *)field = (uint8_t)prop->num;
	} else if (d->kind == MQTT5_U16) {
		uint16_t v = (uint16_t)prop->num;

		memcpy(field, &v, sizeof(v));
	} else {
		memcpy(field, &prop->num, sizeof(prop->num));
	}
	out->present |= MQTT5_BIT(prop->id);
	return MQTT_OK;
}

/* The defaults of a block with no property (mqtt5.h). */
static const struct mqtt5_props mqtt5_props_empty = {
	.receive_max = UINT16_MAX,
	.max_qos = 2,
	.request_problem_info = 1,
	.retain_available = 1,
	.wildcard_sub_available = 1,
	.sub_id_available = 1,
	.shared_sub_available = 1,
};

/*
 * Every packet of an MQTT 5 connection comes here: a copy of a constant
 * is a few vector stores, where building the struct in place was a
 * string instruction with a start-up cost as large as the rest.
 */
void mqtt5_props_init(struct mqtt5_props *props)
{
	memcpy(props, &mqtt5_props_empty, sizeof(*props));
}

int mqtt5_props_read(struct mqtt_rd *r, unsigned ctx, struct mqtt5_props *out)
{
	struct mqtt_rd block;
	uint32_t len;

	mqtt5_props_init(out);
	if (!mqtt_rd_varint(r, &len) || len > mqtt_rd_left(r))
		return MQTT_ERR_MALFORMED;
	out->raw = r->p;
	out->raw_len = len;
	mqtt_rd_init(&block, r->p, len);
	r->p += len;
	while (block.p != block.end) {
		struct mqtt5_prop prop;
		int rc = mqtt5_prop_read(&block, &prop, true);

		if (rc == MQTT_OK)
			rc = mqtt5_prop_accept(out, ctx, &prop);
		if (rc != MQTT_OK)
			return rc;
	}
	if (mqtt5_props_has(out, MQTT5_PROP_AUTH_DATA) &&
	    !mqtt5_props_has(out, MQTT5_PROP_AUTH_METHOD))
		return MQTT_ERR_PROTOCOL;       /* [MQTT-3.1.2.11.10] */
	return MQTT_OK;
}

int mqtt5_props_decode(const uint8_t *p, size_t len, unsigned ctx, struct mqtt5_props *out,
		       size_t *used)
{
	struct mqtt_rd r;
	int rc;

	if (ctx > MQTT_AUTH)
		return MQTT_ERR_TYPE;
	mqtt_rd_init(&r, p, len);
	rc = mqtt5_props_read(&r, ctx, out);
	if (rc == MQTT_OK)
		*used = (size_t)(r.p - p);
	return rc;
}

/* --- walking ------------------------------------------------------------ */

void mqtt5_prop_iter_init(struct mqtt5_prop_iter *it, const struct mqtt5_props *props)
{
	it->p = props->raw;
	it->end = props->raw_len ? props->raw + props->raw_len : props->raw;
}

bool mqtt5_prop_next(struct mqtt5_prop_iter *it, struct mqtt5_prop *prop)
{
	struct mqtt_rd r = { it->p, it->end };

	if (it->p >= it->end || mqtt5_prop_read(&r, prop, false) != MQTT_OK)
		return false;
	it->p = r.p;
	return true;
}

bool mqtt5_user_prop_next(struct mqtt5_prop_iter *it, struct mqtt_str *key, struct mqtt_str *value)
{
	struct mqtt5_prop prop;

	while (mqtt5_prop_next(it, &prop)) {
		if (prop.id == MQTT5_PROP_USER_PROPERTY) {
			*key = prop.str;
			*value = prop.value;
			return true;
		}
	}
	return false;
}

bool mqtt5_sub_id_next(struct mqtt5_prop_iter *it, uint32_t *sub_id)
{
	struct mqtt5_prop prop;

	while (mqtt5_prop_next(it, &prop)) {
		if (prop.id == MQTT5_PROP_SUB_ID) {
			*sub_id = prop.num;
			return true;
		}
	}
	return false;
}

/* --- building ----------------------------------------------------------- */

size_t mqtt5_prop_num_size(enum mqtt5_prop_id id, uint32_t v)
{
	const struct mqtt5_prop_def *d = mqtt5_def(id);

	if (d == NULL || mqtt5_prop_range(d, v) != MQTT_OK)
		return 0;
	switch (d->kind) {
	case MQTT5_BYTE:
		return v <= UINT8_MAX ? 2 : 0;
	case MQTT5_U16:
		return v <= UINT16_MAX ? 3 : 0;
	case MQTT5_U32:
		return 5;
	case MQTT5_VARINT:
		return v <= MQTT5_SUB_ID_MAX ? 1 + mqtt_varint_size(v) : 0;
	}
	return 0;
}

size_t mqtt5_prop_str_size(enum mqtt5_prop_id id, size_t len)
{
	const struct mqtt5_prop_def *d = mqtt5_def(id);

	if (d == NULL || (d->kind != MQTT5_UTF8 && d->kind != MQTT5_BIN) || len > UINT16_MAX)
		return 0;
	return 3 + len;
}

size_t mqtt5_prop_user_size(size_t key_len, size_t value_len)
{
	if (key_len > UINT16_MAX || value_len > UINT16_MAX)
		return 0;
	return 5 + key_len + value_len;
}

void mqtt5_pbuf_init(struct mqtt5_pbuf *b, uint8_t *buf, size_t cap)
{
	*b = (struct mqtt5_pbuf){ .p = buf, .cap = cap };
}

/* Room for n bytes (n 0: the property was refused), or NULL and 'failed'. */
static uint8_t *mqtt5_pbuf_room(struct mqtt5_pbuf *b, size_t n)
{
	uint8_t *at;

	if (n == 0 || b->failed || n > b->cap - b->len) {
		b->failed = true;
		return NULL;
	}
	at = b->p + b->len;
	b->len += n;
	return at;
}

void mqtt5_pbuf_num(struct mqtt5_pbuf *b, enum mqtt5_prop_id id, uint32_t v)
{
	size_t n = mqtt5_prop_num_size(id, v);
	uint8_t *p = mqtt5_pbuf_room(b, n);

	if (p == NULL)
		return;
	*p++ = (uint8_t)id;
	switch (mqtt5_defs[id].kind) {
	case MQTT5_BYTE:
		*p = (uint8_t)v;
		break;
	case MQTT5_U16:
		mqtt_put_u16(p, (uint16_t)v);
		break;
	case MQTT5_U32:
		mqtt_put_u16(mqtt_put_u16(p, (uint16_t)(v >> 16)), (uint16_t)v);
		break;
	default:        /* MQTT5_VARINT */
		mqtt_varint_encode(p, v);
		break;
	}
}

void mqtt5_pbuf_str(struct mqtt5_pbuf *b, enum mqtt5_prop_id id, const uint8_t *s, size_t len)
{
	uint8_t *p = mqtt5_pbuf_room(b, mqtt5_prop_str_size(id, len));

	if (p == NULL)
		return;
	*p = (uint8_t)id;
	mqtt_put_bin(p + 1, s, len);
}

void mqtt5_pbuf_user(struct mqtt5_pbuf *b, const uint8_t *key, size_t key_len,
		     const uint8_t *value, size_t value_len)
{
	uint8_t *p = mqtt5_pbuf_room(b, mqtt5_prop_user_size(key_len, value_len));

	if (p == NULL)
		return;
	*p = MQTT5_PROP_USER_PROPERTY;
	mqtt_put_bin(mqtt_put_bin(p + 1, key, key_len), value, value_len);
}

void mqtt5_pbuf_raw(struct mqtt5_pbuf *b, const uint8_t *s, size_t len)
{
	uint8_t *p;

	if (len == 0)
		return;
	p = mqtt5_pbuf_room(b, len);
	if (p != NULL)
		memcpy(p, s, len);
}

/* --- outgoing blocks ---------------------------------------------------- */

/*
 * Walk a received block, copying (when to is not NULL) the properties not
 * in skip; returns their bytes.
 */
static size_t mqtt5_copy_kept(uint8_t *to, const uint8_t *raw, size_t len, uint64_t skip)
{
	struct mqtt5_prop_iter it = { raw, raw + len };
	struct mqtt5_prop prop;
	size_t kept = 0;

	for (const uint8_t *at = it.p; mqtt5_prop_next(&it, &prop); at = it.p) {
		size_t n = (size_t)(it.p - at);

		if (skip & MQTT5_BIT(prop.id))
			continue;
		if (to)
			memcpy(to + kept, at, n);
		kept += n;
	}
	return kept;
}

void mqtt5_out_init(struct mqtt5_out *o, const uint8_t *own, size_t own_len,
		    const struct mqtt5_props *fwd, uint64_t skip)
{
	size_t fwd_kept = 0;

	*o = (struct mqtt5_out){ .own = own, .own_len = own_len };
	if (fwd && fwd->raw_len) {
		o->fwd = fwd->raw;
		o->fwd_len = fwd->raw_len;
		o->skip = fwd->present & skip;
		fwd_kept = o->skip ? mqtt5_copy_kept(NULL, o->fwd, o->fwd_len, o->skip)
				   : o->fwd_len;
	}
	/* both pieces are bounded by the caller's buffers; SIZE_MAX says too long */
	o->len = own_len > MQTT_MAX_REMAINING ? SIZE_MAX : own_len + fwd_kept;
}

size_t mqtt5_out_size(const struct mqtt5_out *o)
{
	if (o == NULL)
		return 1;
	/* the block with its length field must fit in a packet */
	if (o->len > MQTT_MAX_REMAINING - 4)
		return SIZE_MAX;
	return mqtt_varint_size((uint32_t)o->len) + o->len;
}

uint8_t *mqtt5_put_out(uint8_t *p, const struct mqtt5_out *o)
{
	if (o == NULL) {
		*p = 0;
		return p + 1;
	}
	p += mqtt_varint_encode(p, (uint32_t)o->len);
	if (o->own_len)
		memcpy(p, o->own, o->own_len);
	p += o->own_len;
	if (o->skip)
		return p + mqtt5_copy_kept(p, o->fwd, o->fwd_len, o->skip);
	if (o->fwd_len)
		memcpy(p, o->fwd, o->fwd_len);
	return p + o->fwd_len;
}
