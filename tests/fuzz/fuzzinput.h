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
static inline uint16_t take_raw_record(struct recw *w, struct fuzz_in *in, uint8_t cap)
{
	uint16_t type = take(in) % (REC_TYPE_MAX + 2);
	uint8_t n = take(in) % cap;

	for (uint8_t i = 0; i < n; i++)
		recw_u8(w, take(in));
	return type;
}

#endif
