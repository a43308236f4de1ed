/*
 * mqttbytes.h - what the MQTT codec's unit tests (test_mqtt_codec.c,
 * test_mqtt_props.c) share: packets as byte literals, the checks of
 * strings and bytes, one whole packet split at its fixed header, and
 * tables of one-packet-one-answer cases. Included after <cmocka.h>.
 */
#ifndef IOTD_TEST_MQTTBYTES_H
#define IOTD_TEST_MQTTBYTES_H

#include <stdbool.h>
#include <string.h>

#include "mqtt.h"
#include "mqtt5.h"

/* A byte-array literal and its size, for (ptr, len) arguments. */
#define BYTES(...) ((const uint8_t[]){ __VA_ARGS__ }), sizeof((const uint8_t[]){ __VA_ARGS__ })
#define STR(s) ((struct mqtt_str){ (const uint8_t *)(s), (uint16_t)(sizeof(s) - 1) })

static inline void assert_str(struct mqtt_str s, const char *want)
{
	assert_int_equal(s.len, strlen(want));
	if (s.len)
		assert_memory_equal(s.p, want, s.len);
}

static inline void assert_bytes(const uint8_t *got, size_t got_len, const uint8_t *want,
				size_t want_len)
{
	assert_int_equal(got_len, want_len);
	assert_memory_equal(got, want, want_len);
}

/*
 * b holds exactly one packet: its fixed header (MQTT 5's when v5, which
 * takes type 15) and the body. Returns the header's length.
 */
static inline size_t whole_packet(const uint8_t *b, size_t len, bool v5, uint8_t *first,
				  uint32_t *rem)
{
	size_t hl = 0;

	*first = 0;
	*rem = 0;
	if (v5)
		assert_int_equal(mqtt5_fixed_header(b, len, 0, first, rem, &hl), MQTT_OK);
	else
		assert_int_equal(mqtt_fixed_header(b, len, 0, first, rem, &hl), MQTT_OK);
	assert_int_equal(hl + *rem, len);
	return hl;
}

/* A packet's body under the first byte of its fixed header, and the decoder's answer. */
struct decode_case {
	const char *name;
	uint8_t first;
	const uint8_t *body;
	size_t len;
	int rc;
};

#define DECODE(name, first, rc, ...) { name, first, BYTES(__VA_ARGS__), rc }
#define DECODE_EMPTY(name, first, rc) { name, first, NULL, 0, rc }

/* Each case of a table as a test of its own, named as the case. */
#define ADD_CASES(tests, n, run, cases) \
	for (size_t i_ = 0; i_ < ARRAY_SIZE(cases); i_++) \
		tests[n++] = (struct CMUnitTest){ cases[i_].name, run, NULL, NULL, (void *)&cases[i_] }

#endif
