/*
 * mqtt5.h - the MQTT 5.0 side of the packet codec: properties, reason
 * codes, the decoding of every packet type and the encoders of what a
 * broker sends (daemon/mqtt_props.c, daemon/mqtt5_codec.c, and the
 * encoders 3.1.1 shares in daemon/mqtt_codec.c).
 *
 * The rules of mqtt.h hold: pure functions, no allocation, decoded
 * strings point into the caller's buffer. A property block is kept as
 * its raw bytes as well as parsed, so that a PUBLISH's properties can be
 * forwarded by copying them. Results are mqtt.h's: MQTT_ERR_MALFORMED
 * and MQTT_ERR_UTF8 are a Malformed Packet (reason code 0x81),
 * MQTT_ERR_PROTOCOL a Protocol Error (0x82); mqtt5_result_reason() maps
 * every result to the reason code of the DISCONNECT (or CONNACK) to send.
 */
#ifndef IOTD_MQTT5_H
#define IOTD_MQTT5_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt.h"

#define MQTT5_PROTOCOL_LEVEL 5

/* Property identifiers [MQTT-2.2.2.2]. */
enum mqtt5_prop_id {
	MQTT5_PROP_PAYLOAD_FORMAT = 0x01,
	MQTT5_PROP_MESSAGE_EXPIRY = 0x02,
	MQTT5_PROP_CONTENT_TYPE = 0x03,
	MQTT5_PROP_RESPONSE_TOPIC = 0x08,
	MQTT5_PROP_CORRELATION_DATA = 0x09,
	MQTT5_PROP_SUB_ID = 0x0B,
	MQTT5_PROP_SESSION_EXPIRY = 0x11,
	MQTT5_PROP_ASSIGNED_CLIENT_ID = 0x12,
	MQTT5_PROP_SERVER_KEEP_ALIVE = 0x13,
	MQTT5_PROP_AUTH_METHOD = 0x15,
	MQTT5_PROP_AUTH_DATA = 0x16,
	MQTT5_PROP_REQUEST_PROBLEM_INFO = 0x17,
	MQTT5_PROP_WILL_DELAY = 0x18,
	MQTT5_PROP_REQUEST_RESPONSE_INFO = 0x19,
	MQTT5_PROP_RESPONSE_INFO = 0x1A,
	MQTT5_PROP_SERVER_REFERENCE = 0x1C,
	MQTT5_PROP_REASON_STRING = 0x1F,
	MQTT5_PROP_RECEIVE_MAX = 0x21,
	MQTT5_PROP_TOPIC_ALIAS_MAX = 0x22,
	MQTT5_PROP_TOPIC_ALIAS = 0x23,
	MQTT5_PROP_MAX_QOS = 0x24,
	MQTT5_PROP_RETAIN_AVAILABLE = 0x25,
	MQTT5_PROP_USER_PROPERTY = 0x26,
	MQTT5_PROP_MAX_PACKET_SIZE = 0x27,
	MQTT5_PROP_WILDCARD_SUB_AVAILABLE = 0x28,
	MQTT5_PROP_SUB_ID_AVAILABLE = 0x29,
	MQTT5_PROP_SHARED_SUB_AVAILABLE = 0x2A,
};
#define MQTT5_PROP_LAST MQTT5_PROP_SHARED_SUB_AVAILABLE

/* A set of properties as a bit mask: bit id. */
#define MQTT5_BIT(id) ((uint64_t)1 << (id))

/*
 * Where a property block sits: a packet type (enum mqtt_type), or the
 * will properties of a CONNECT, which allow properties of their own.
 */
#define MQTT5_CTX_WILL 0u

/* The largest subscription identifier, the 4-byte Variable Byte Integer's. */
#define MQTT5_SUB_ID_MAX 268435455u

/*
 * A decoded property block. raw/raw_len are the properties themselves
 * (without the length field). 'present' has MQTT5_BIT(id) set for each
 * property the block holds; the value fields of absent properties hold
 * the spec's defaults (receive_max 65535, max_qos 2, request_problem_info,
 * retain/wildcard/sub_id/shared_available 1, everything else 0 or empty).
 * User properties and every subscription identifier are walked from raw
 * with mqtt5_prop_iter; sub_id is the first of them.
 */
struct mqtt5_props {
	const uint8_t *raw;
	uint32_t raw_len;
	uint64_t present;
	uint32_t message_expiry, session_expiry, will_delay, max_packet_size;
	uint32_t sub_id;
	uint32_t sub_id_count, user_prop_count;
	uint16_t server_keep_alive, receive_max, topic_alias_max, topic_alias;
	uint8_t payload_format, request_problem_info, request_response_info, max_qos;
	uint8_t retain_available, wildcard_sub_available, sub_id_available, shared_sub_available;
	struct mqtt_str content_type, response_topic, correlation_data, assigned_client_id;
	struct mqtt_str auth_method, auth_data, response_info, server_reference, reason_string;
};

/*
 * Decode a property block (Variable Byte Integer length, then properties)
 * at the start of p[0..len) in context ctx. Sets *used to the block's
 * bytes, length field included. Refuses as MQTT_ERR_MALFORMED: an unknown
 * identifier or one the context does not allow, a length past the block
 * or the buffer, a Variable Byte Integer of more than 4 bytes; as
 * MQTT_ERR_UTF8 an ill-formed string; as MQTT_ERR_PROTOCOL: a property
 * given twice (other than user properties, and subscription identifiers
 * in a PUBLISH), a value out of its range (receive maximum 0, maximum
 * packet size 0, topic alias 0, subscription identifier 0, a 0/1 byte
 * property or maximum QoS of another value), authentication data without
 * a method.
 */
int mqtt5_props_decode(const uint8_t *p, size_t len, unsigned ctx, struct mqtt5_props *out,
		       size_t *used);
/* An empty block: no property, the defaults. */
void mqtt5_props_init(struct mqtt5_props *props);

static inline bool mqtt5_props_has(const struct mqtt5_props *props, enum mqtt5_prop_id id)
{
	return props->present & MQTT5_BIT(id);
}

/* One property as walked: numbers in num, strings and binary data in str, pairs in str/value. */
struct mqtt5_prop {
	uint8_t id;
	uint32_t num;
	struct mqtt_str str, value;
};

struct mqtt5_prop_iter {
	const uint8_t *p, *end;
};

/* Walk a decoded block in order; cannot fail (the decoder checked it). */
void mqtt5_prop_iter_init(struct mqtt5_prop_iter *it, const struct mqtt5_props *props);
bool mqtt5_prop_next(struct mqtt5_prop_iter *it, struct mqtt5_prop *prop);
/* The next user property (key, value) or subscription identifier; false at the end. */
bool mqtt5_user_prop_next(struct mqtt5_prop_iter *it, struct mqtt_str *key, struct mqtt_str *value);
bool mqtt5_sub_id_next(struct mqtt5_prop_iter *it, uint32_t *sub_id);

const char *mqtt5_prop_name(unsigned id);

/*
 * Building a block: a buffer the caller owns (a small one on the stack
 * is the intent), properties appended one by one. A property that does
 * not fit, or an id that takes another kind of value, or a value its
 * kind or range does not allow (what the decoder refuses), sets 'failed'
 * and is left out; check it once at the end. Sizes: the *_size functions below give a property's bytes
 * (0 for the wrong kind), so buffers can be sized first.
 */
struct mqtt5_pbuf {
	uint8_t *p;
	size_t cap, len;
	bool failed;
};

void mqtt5_pbuf_init(struct mqtt5_pbuf *b, uint8_t *buf, size_t cap);
/* Byte, Two Byte, Four Byte and Variable Byte Integer properties. */
void mqtt5_pbuf_num(struct mqtt5_pbuf *b, enum mqtt5_prop_id id, uint32_t v);
/* UTF-8 string and binary data properties (the string is not checked here). */
void mqtt5_pbuf_str(struct mqtt5_pbuf *b, enum mqtt5_prop_id id, const uint8_t *p, size_t len);
void mqtt5_pbuf_user(struct mqtt5_pbuf *b, const uint8_t *key, size_t key_len,
		     const uint8_t *value, size_t value_len);
/* Properties already encoded (another block's raw bytes, say). */
void mqtt5_pbuf_raw(struct mqtt5_pbuf *b, const uint8_t *p, size_t len);

size_t mqtt5_prop_num_size(enum mqtt5_prop_id id, uint32_t v);
size_t mqtt5_prop_str_size(enum mqtt5_prop_id id, size_t len);
size_t mqtt5_prop_user_size(size_t key_len, size_t value_len);

/*
 * The property block an encoder sends, in two pieces written one after
 * the other: 'own', the caller's (built with mqtt5_pbuf: a reason string,
 * or for a forwarded PUBLISH the message expiry, topic alias and
 * subscription identifiers it rewrites), then 'fwd', a received block
 * copied through with the properties in 'skip' left out (for a PUBLISH:
 * the sender's message expiry, topic alias and subscription identifiers).
 * mqtt5_out_init() computes the length once; when the received block
 * holds none of 'skip' the copy is one memcpy. A NULL struct mqtt5_out *
 * is the empty block.
 */
struct mqtt5_out {
	const uint8_t *own;
	size_t own_len;
	const uint8_t *fwd;
	size_t fwd_len;
	uint64_t skip;          /* what of 'skip' the received block holds */
	size_t len;             /* the whole block, without its length field */
};

void mqtt5_out_init(struct mqtt5_out *o, const uint8_t *own, size_t own_len,
		    const struct mqtt5_props *fwd, uint64_t skip);

/* What a broker rewrites on a PUBLISH it forwards. */
#define MQTT5_PUBLISH_REWRITTEN (MQTT5_BIT(MQTT5_PROP_MESSAGE_EXPIRY) | \
				 MQTT5_BIT(MQTT5_PROP_TOPIC_ALIAS) | \
				 MQTT5_BIT(MQTT5_PROP_SUB_ID))

/* Reason codes [MQTT-2.4]; some values carry several names. */
enum mqtt5_reason {
	MQTT5_RC_SUCCESS = 0x00,
	MQTT5_RC_NORMAL_DISCONNECTION = 0x00,
	MQTT5_RC_GRANTED_QOS_0 = 0x00,
	MQTT5_RC_GRANTED_QOS_1 = 0x01,
	MQTT5_RC_GRANTED_QOS_2 = 0x02,
	MQTT5_RC_DISCONNECT_WITH_WILL = 0x04,
	MQTT5_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
	MQTT5_RC_NO_SUBSCRIPTION_EXISTED = 0x11,
	MQTT5_RC_CONTINUE_AUTHENTICATION = 0x18,
	MQTT5_RC_REAUTHENTICATE = 0x19,
	MQTT5_RC_UNSPECIFIED_ERROR = 0x80,
	MQTT5_RC_MALFORMED_PACKET = 0x81,
	MQTT5_RC_PROTOCOL_ERROR = 0x82,
	MQTT5_RC_IMPLEMENTATION_SPECIFIC_ERROR = 0x83,
	MQTT5_RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84,
	MQTT5_RC_CLIENT_IDENTIFIER_NOT_VALID = 0x85,
	MQTT5_RC_BAD_USER_NAME_OR_PASSWORD = 0x86,
	MQTT5_RC_NOT_AUTHORIZED = 0x87,
	MQTT5_RC_SERVER_UNAVAILABLE = 0x88,
	MQTT5_RC_SERVER_BUSY = 0x89,
	MQTT5_RC_BANNED = 0x8A,
	MQTT5_RC_SERVER_SHUTTING_DOWN = 0x8B,
	MQTT5_RC_BAD_AUTHENTICATION_METHOD = 0x8C,
	MQTT5_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
	MQTT5_RC_SESSION_TAKEN_OVER = 0x8E,
	MQTT5_RC_TOPIC_FILTER_INVALID = 0x8F,
	MQTT5_RC_TOPIC_NAME_INVALID = 0x90,
	MQTT5_RC_PACKET_IDENTIFIER_IN_USE = 0x91,
	MQTT5_RC_PACKET_IDENTIFIER_NOT_FOUND = 0x92,
	MQTT5_RC_RECEIVE_MAXIMUM_EXCEEDED = 0x93,
	MQTT5_RC_TOPIC_ALIAS_INVALID = 0x94,
	MQTT5_RC_PACKET_TOO_LARGE = 0x95,
	MQTT5_RC_MESSAGE_RATE_TOO_HIGH = 0x96,
	MQTT5_RC_QUOTA_EXCEEDED = 0x97,
	MQTT5_RC_ADMINISTRATIVE_ACTION = 0x98,
	MQTT5_RC_PAYLOAD_FORMAT_INVALID = 0x99,
	MQTT5_RC_RETAIN_NOT_SUPPORTED = 0x9A,
	MQTT5_RC_QOS_NOT_SUPPORTED = 0x9B,
	MQTT5_RC_USE_ANOTHER_SERVER = 0x9C,
	MQTT5_RC_SERVER_MOVED = 0x9D,
	MQTT5_RC_SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E,
	MQTT5_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
	MQTT5_RC_MAXIMUM_CONNECT_TIME = 0xA0,
	MQTT5_RC_SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1,
	MQTT5_RC_WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2,
};

/* The spec's name of a reason code in a packet type ("Granted QoS 0" in a SUBACK); NULL if the type may not carry it. */
const char *mqtt5_reason_name(enum mqtt_type type, uint8_t code);
/* The reason code for a decode result: 0x81, 0x82, 0x95 or 0x84 (0 for MQTT_OK). */
uint8_t mqtt5_result_reason(int result);

/* SUBSCRIBE options byte [MQTT-3.8.3.1]. */
#define MQTT5_SUB_QOS(o) ((o) & 3)
#define MQTT5_SUB_NO_LOCAL 0x04
#define MQTT5_SUB_RETAIN_AS_PUBLISHED 0x08
#define MQTT5_SUB_RETAIN_HANDLING(o) (((o) >> 4) & 3)

/*
 * A decoded MQTT 5 packet. 'reason' is the reason code of CONNACK (also
 * in u.connack.rc), PUBACK, PUBREC, PUBREL, PUBCOMP, DISCONNECT and AUTH,
 * 0 when the packet left it out. 'props' is the packet's block (empty
 * for the types without one: PINGREQ, PINGRESP); 'will_props' a
 * CONNECT's will's (empty without the will flag), and not set for the
 * other types, which have no will. SUBACK and UNSUBACK lists hold one
 * reason code per entry (mqtt_list_next gives it in *qos). Once decoding
 * failed, neither block is set.
 */
struct mqtt5_packet {
	enum mqtt_type type;
	uint8_t flags;
	uint8_t reason;
	union {
		struct mqtt_connect connect;
		struct mqtt_connack connack;
		struct mqtt_publish publish;
		struct mqtt_list list;  /* SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK */
		uint16_t packet_id;     /* PUBACK, PUBREC, PUBREL, PUBCOMP */
	} u;
	struct mqtt5_props props;
	struct mqtt5_props will_props;
};

/*
 * The fixed header on an MQTT 5 connection: as mqtt_fixed_header(), and
 * type 15 (AUTH) is a packet type.
 */
int mqtt5_fixed_header(const uint8_t *buf, size_t len, size_t max_packet,
		       uint8_t *first_byte, uint32_t *remaining, size_t *hdr_len);

/*
 * Decode one whole packet of an MQTT 5 connection, as mqtt_decode() does
 * for 3.1.1. A CONNECT decodes at any level: 3 and 4 by the 3.1.1 rules
 * (props and will_props then empty), 5 with its properties; the level
 * says which protocol the connection speaks. A PUBLISH with an empty
 * topic and no topic alias is MQTT_ERR_PROTOCOL [MQTT-3.3.2-8]. Checks
 * left to the caller, as they need the connection: the direction rules
 * (no subscription identifier from a client's PUBLISH), topic alias
 * maximum, receive maximum, and wildcards in a response topic.
 */
int mqtt5_decode(uint8_t first_byte, const uint8_t *body, size_t len, struct mqtt5_packet *out);

/* Walk a decoded SUBSCRIBE, SUBACK, UNSUBSCRIBE or UNSUBACK with mqtt_list_next(). */
void mqtt5_list_iter_init(struct mqtt_list_iter *it, const struct mqtt5_packet *pkt);

/*
 * Encoders. As in mqtt.h, each *_size() gives the whole packet's bytes
 * (0 when the arguments are invalid or the packet would pass the
 * protocol's 268,435,455-byte limit), and the encoder writes that many
 * into out and returns the count (0 on the same refusals). props may be
 * NULL: an empty block.
 */
size_t mqtt5_connack_size(const struct mqtt5_out *props);
size_t mqtt5_encode_connack(uint8_t *out, bool session_present, uint8_t reason,
			    const struct mqtt5_out *props);

size_t mqtt5_publish_size(size_t topic_len, size_t payload_len, uint8_t qos,
			  const struct mqtt5_out *props);
size_t mqtt5_encode_publish(uint8_t *out, bool dup, uint8_t qos, bool retain,
			    const uint8_t *topic, size_t topic_len, uint16_t packet_id,
			    const struct mqtt5_out *props, const uint8_t *payload,
			    size_t payload_len);

/*
 * PUBACK, PUBREC, PUBREL, PUBCOMP: the shortest form the spec allows (no
 * reason code when it is 0 and there are no properties, no block when it
 * is empty). At most MQTT5_ACK_MAX bytes without properties.
 */
#define MQTT5_ACK_MAX 5
size_t mqtt5_ack_size(uint8_t reason, const struct mqtt5_out *props);
size_t mqtt5_encode_ack(uint8_t *out, enum mqtt_type type, uint16_t packet_id, uint8_t reason,
			const struct mqtt5_out *props);

/* SUBACK and UNSUBACK: one reason code per entry of the request. */
size_t mqtt5_suback_size(size_t n, const struct mqtt5_out *props);
size_t mqtt5_encode_suback(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
			   const uint8_t *codes, size_t n, const struct mqtt5_out *props);

/* DISCONNECT and AUTH: nothing after the header for reason 0 without properties. */
size_t mqtt5_reason_size(uint8_t reason, const struct mqtt5_out *props);
size_t mqtt5_encode_reason(uint8_t *out, enum mqtt_type type, uint8_t reason,
			   const struct mqtt5_out *props);

/*
 * Client side, for the benchmark client, tests and fuzz seeds. CONNECT
 * writes its blocks when c->protocol_level is 5 (the will's with the
 * will flag), and is the 3.1.1 CONNECT otherwise.
 */
size_t mqtt5_connect_size(const struct mqtt_connect *c, const struct mqtt5_out *props,
			  const struct mqtt5_out *will_props);
size_t mqtt5_encode_connect(uint8_t *out, const struct mqtt_connect *c,
			    const struct mqtt5_out *props, const struct mqtt5_out *will_props);
/* SUBSCRIBE (options per filter, MQTT5_SUB_*) and UNSUBSCRIBE (options ignored). */
size_t mqtt5_sub_size(enum mqtt_type type, const struct mqtt_str *filters, size_t n,
		      const struct mqtt5_out *props);
size_t mqtt5_encode_sub(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
			const struct mqtt_str *filters, const uint8_t *options, size_t n,
			const struct mqtt5_out *props);

#endif
