/*
 * fuzzinput.h - the fuzzer's input as the harnesses that build records
 * from it (fuzz_router, fuzz_worker) take it: a byte or two at a time,
 * zeroes once it has run out, a string picked from a set, a payload, or
 * raw bytes under any record type.
 */
#ifndef IOTD_FUZZ_INPUT_H
#define IOTD_FUZZ_INPUT_H

#include <stdint.h>
#include <string.h>

#include "rec.h"

struct fuzz_in {
	const uint8_t *p;
	size_t left;
};

static inline uint8_t take(struct fuzz_in *in)
{
	if (in->left == 0)
		return 0;
	in->left--;
	return *in->p++;
}

/* Two bytes, the first the low one. */
static inline uint16_t take16(struct fuzz_in *in)
{
	uint16_t lo = take(in);

	return (uint16_t)(lo | take(in) << 8);
}

/* One of the n strings of set. */
static inline struct rec_str take_str(struct fuzz_in *in, const char *const *set, size_t n)
{
	const char *s = set[take(in) % n];

	return (struct rec_str){ (const uint8_t *)s, (uint16_t)strlen(s) };
}

/* Fewer than cap bytes of input, copied to buf (which has cap). */
static inline struct rec_bytes take_payload(struct fuzz_in *in, uint8_t *buf, uint8_t cap)
{
	uint8_t n = take(in) % cap;

	for (uint8_t i = 0; i < n; i++)
		buf[i] = take(in);
	return (struct rec_bytes){ buf, n };
}

/* Fewer than cap raw bytes into w under any type number, none included: no layout at all. */
/*
 * A message's MQTT 5 part as records carry it: no properties, a block a
 * PUBLISH may forward, or one holding what the broker rewrites (a topic
 * alias); no expiry, one long past, or one far off.
 */
static inline void take_msg_v5(struct fuzz_in *in, struct rec_bytes *props, uint64_t *expires_at)
{
	static const uint64_t deadlines[3] = { 0, 1, UINT64_MAX / 2 };
	uint8_t v = take(in);

	*props = (struct rec_bytes){ 0 };
	if (v & 1)
		*props = (struct rec_bytes){ (const uint8_t *)(v & 2 ? "\x02\x01\x01" : "\x02\x23\x01"),
					     3 };
	*expires_at = deadlines[(v >> 2) % 3];
}

static inline uint16_t take_raw_record(struct recw *w, struct fuzz_in *in, uint8_t cap)
{
	uint16_t type = take(in) % (REC_TYPE_MAX + 2);
	uint8_t n = take(in) % cap;

	for (uint8_t i = 0; i < n; i++)
		recw_u8(w, take(in));
	return type;
}

#endif
