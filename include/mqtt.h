/*
 * mqtt.h - MQTT 3.1.1 (and 3.1) packet codec: bytes in, structs out, and back.
 *
 * Pure functions: no I/O, no allocation, no globals. Decoded strings and
 * payloads point into the caller's buffer (zero copy), so a decoded packet
 * lives as long as that buffer. Every length is checked against the packet
 * end; every UTF-8 string is validated ([MQTT-1.5.3]). Both directions are
 * covered: the broker decodes client packets, the benchmark client and the
 * tests decode server packets. MQTT 5 is mqtt5.h's.
 */
#ifndef IOTD_MQTT_H
#define IOTD_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mqtt_type {
	MQTT_CONNECT = 1,
	MQTT_CONNACK = 2,
	MQTT_PUBLISH = 3,
	MQTT_PUBACK = 4,
	MQTT_PUBREC = 5,
	MQTT_PUBREL = 6,
	MQTT_PUBCOMP = 7,
	MQTT_SUBSCRIBE = 8,
	MQTT_SUBACK = 9,
	MQTT_UNSUBSCRIBE = 10,
	MQTT_UNSUBACK = 11,
	MQTT_PINGREQ = 12,
	MQTT_PINGRESP = 13,
	MQTT_DISCONNECT = 14,
	MQTT_AUTH = 15,                 /* MQTT 5 only (mqtt5.h); refused by the 3.1.1 decoder */
};

/* CONNACK return codes [MQTT-3.2.2.3] */
enum mqtt_connack_rc {
	MQTT_CONNACK_ACCEPTED = 0,
	MQTT_CONNACK_BAD_PROTOCOL = 1,    /* unacceptable protocol version */
	MQTT_CONNACK_ID_REJECTED = 2,
	MQTT_CONNACK_UNAVAILABLE = 3,
	MQTT_CONNACK_BAD_AUTH = 4,        /* bad user name or password */
	MQTT_CONNACK_NOT_AUTHORIZED = 5,
};

#define MQTT_SUBACK_FAILURE 0x80
#define MQTT_MAX_REMAINING 268435455u     /* 4-byte remaining length */
#define MQTT_MAX_FIXED_HEADER 5

/* Codec results. Negative values are protocol violations: disconnect. */
enum mqtt_result {
	MQTT_OK = 0,
	MQTT_INCOMPLETE = 1,        /* need more bytes */
	MQTT_ERR_MALFORMED = -1,    /* lengths, flags, reserved bits, missing fields */
	MQTT_ERR_UTF8 = -2,         /* invalid UTF-8 or U+0000 in a string */
	MQTT_ERR_PROTOCOL_NAME = -3,/* CONNECT protocol name not MQTT/MQIsdp: close, no CONNACK */
	MQTT_ERR_PROTOCOL_LEVEL = -4,/* name fine, level unsupported: CONNACK 1 then close */
	MQTT_ERR_TOO_LARGE = -5,    /* remaining length over the caller's limit */
	MQTT_ERR_TYPE = -6,         /* packet type 0 or 15 */
	MQTT_ERR_PROTOCOL = -7,     /* MQTT 5 only: a Protocol Error (reason code 0x82) */
};

struct mqtt_str {
	const uint8_t *p;
	uint16_t len;
};

struct mqtt_connect {
	uint8_t protocol_level;     /* 3 (MQIsdp), 4 (MQTT) or 5 (MQTT 5, mqtt5.h) */
	bool clean_session;         /* Clean Start in MQTT 5 */
	uint16_t keepalive;
	struct mqtt_str client_id;
	bool will_flag;
	uint8_t will_qos;
	bool will_retain;
	struct mqtt_str will_topic;
	struct mqtt_str will_payload;   /* binary */
	bool username_flag;
	struct mqtt_str username;
	bool password_flag;
	struct mqtt_str password;       /* binary */
};

struct mqtt_connack {
	bool session_present;
	uint8_t rc;
};

struct mqtt_publish {
	bool dup;
	uint8_t qos;
	bool retain;
	struct mqtt_str topic;          /* UTF-8 checked; wildcards NOT checked here */
	uint16_t packet_id;             /* 0 for QoS 0 */
	const uint8_t *payload;
	uint32_t payload_len;
};

/*
 * SUBSCRIBE, SUBACK and UNSUBSCRIBE carry lists. The decoder checks the
 * whole list; mqtt_list_next() then walks it and cannot fail.
 */
struct mqtt_list {
	uint16_t packet_id;
	uint16_t count;                 /* number of entries, >= 1 for SUBSCRIBE/UNSUBSCRIBE */
	const uint8_t *p;               /* the entries, undecoded */
	size_t len;
};

struct mqtt_list_iter {
	const uint8_t *p, *end;
	enum mqtt_type type;
};

struct mqtt_packet {
	enum mqtt_type type;
	uint8_t flags;                  /* low nibble of the first byte */
	union {
		struct mqtt_connect connect;
		struct mqtt_connack connack;
		struct mqtt_publish publish;
		struct mqtt_list list;  /* SUBSCRIBE, SUBACK, UNSUBSCRIBE */
		uint16_t packet_id;     /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK */
	} u;
};

/*
 * Read a fixed header from buf. On MQTT_OK sets *hdr_len (2..5) and
 * *remaining. Returns MQTT_INCOMPLETE when buf ends inside the header,
 * MQTT_ERR_MALFORMED for a 5th length byte, MQTT_ERR_TYPE for type 0/15,
 * MQTT_ERR_TOO_LARGE when hdr_len + remaining > max_packet (0: no limit
 * beyond the protocol's). A non-minimal length encoding is accepted, as
 * the spec does not forbid it for receivers.
 */
int mqtt_fixed_header(const uint8_t *buf, size_t len, size_t max_packet,
		      uint8_t *first_byte, uint32_t *remaining, size_t *hdr_len);

/*
 * Decode one whole packet: first_byte and the body of 'remaining' bytes
 * that follows the fixed header. Checks the fixed-header flags of every
 * type [MQTT-2.2.2-1/2], packet id != 0 where required, QoS 3,
 * string lengths, UTF-8, and that nothing is left over.
 */
int mqtt_decode(uint8_t first_byte, const uint8_t *body, size_t len,
		struct mqtt_packet *out);

void mqtt_list_iter_init(struct mqtt_list_iter *it, const struct mqtt_packet *pkt);
/*
 * Next entry. SUBSCRIBE: filter + requested qos (MQTT 5: the whole
 * subscription options byte). UNSUBSCRIBE: filter. SUBACK (and an MQTT 5
 * UNSUBACK): *qos only (the return or reason code). Returns false at the end.
 */
bool mqtt_list_next(struct mqtt_list_iter *it, struct mqtt_str *filter, uint8_t *qos);

/* UTF-8 per [MQTT-1.5.3]: no ill-formed, overlong, surrogate or U+0000. */
bool mqtt_utf8_valid(const uint8_t *p, size_t len);

/* Bytes needed for a remaining-length field of value n (1..4). */
size_t mqtt_varint_size(uint32_t n);
/* Write the remaining-length field; returns its size. */
size_t mqtt_varint_encode(uint8_t *out, uint32_t n);

/*
 * Encoders. Each writes a whole packet into out, which must hold the size
 * the matching *_size() function returns (or the fixed size noted), and
 * returns the number of bytes written.
 */
size_t mqtt_encode_connack(uint8_t out[4], bool session_present, uint8_t rc);
/* PUBACK, PUBREC, PUBREL (flags 0x2), PUBCOMP, UNSUBACK: 4 bytes. */
size_t mqtt_encode_ack(uint8_t out[4], enum mqtt_type type, uint16_t packet_id);
/* PINGREQ, PINGRESP, DISCONNECT: 2 bytes. */
size_t mqtt_encode_empty(uint8_t out[2], enum mqtt_type type);

size_t mqtt_suback_size(size_t n);
size_t mqtt_encode_suback(uint8_t *out, uint16_t packet_id, const uint8_t *codes, size_t n);

size_t mqtt_publish_size(size_t topic_len, size_t payload_len, uint8_t qos);
size_t mqtt_encode_publish(uint8_t *out, bool dup, uint8_t qos, bool retain,
			   const uint8_t *topic, size_t topic_len, uint16_t packet_id,
			   const uint8_t *payload, size_t payload_len);

/* Client side, for the benchmark client, tests and fuzz seeds. */
size_t mqtt_connect_size(const struct mqtt_connect *c);
size_t mqtt_encode_connect(uint8_t *out, const struct mqtt_connect *c);
/* entries: n filters with their requested qos (qos ignored for UNSUBSCRIBE) */
size_t mqtt_sub_size(enum mqtt_type type, const struct mqtt_str *filters, size_t n);
size_t mqtt_encode_sub(uint8_t *out, enum mqtt_type type, uint16_t packet_id,
		       const struct mqtt_str *filters, const uint8_t *qos, size_t n);

const char *mqtt_type_name(int type);
const char *mqtt_result_str(int result);

#endif
