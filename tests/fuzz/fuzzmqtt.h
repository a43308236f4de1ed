/*
 * fuzzmqtt.h - what the MQTT codec's harnesses (fuzz_mqtt_codec.c,
 * fuzz_mqtt5.c) share: the trap on a failed check, a body copied to an
 * allocation of its exact size (so ASan sees a byte read past it), and
 * the check that a decoded field points into its body, the walk of a
 * decoded list.
 */
#ifndef IOTD_FUZZ_MQTT_H
#define IOTD_FUZZ_MQTT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

/* An exact-size heap copy (NULL for nothing). */
static inline uint8_t *fuzz_copy(const uint8_t *p, size_t n)
{
	uint8_t *c;

	if (n == 0)
		return NULL;
	c = malloc(n);
	CHECK(c != NULL);
	memcpy(c, p, n);
	return c;
}

/* p[0..n) lies in body[0..len). */
static inline void fuzz_in_body(const uint8_t *body, size_t len, const uint8_t *p, size_t n)
{
	if (n == 0)
		return;
	CHECK(p >= body && p + n <= body + len);
}

/*
 * Walk a decoded list of count entries (it already set) into two arrays
 * the caller frees: the filters, each UTF-8 and inside body[0..len),
 * and the byte of each entry (QoS, options or reason code).
 */
static inline void fuzz_walk_list(struct mqtt_list_iter *it, size_t count, const uint8_t *body,
				  size_t len, struct mqtt_str **filters, uint8_t **codes)
{
	struct mqtt_str f;
	uint8_t q;
	size_t n = 0;

	*filters = calloc(count ? count : 1, sizeof(**filters));
	*codes = calloc(count ? count : 1, 1);
	CHECK(*filters != NULL && *codes != NULL && count >= 1);
	while (mqtt_list_next(it, &f, &q)) {
		CHECK(n < count);
		fuzz_in_body(body, len, f.p, f.len);
		CHECK(mqtt_utf8_valid(f.p, f.len));
		(*filters)[n] = f;
		(*codes)[n++] = q;
	}
	CHECK(n == count);
	CHECK(!mqtt_list_next(it, &f, &q));
}

#endif
