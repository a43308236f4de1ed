/*
 * ringrec.h - a ring's records as the unit tests check them: each one's
 * type and length, and its payload filled with one byte that tells it
 * apart from its neighbours. Included after <cmocka.h>.
 */
#ifndef IOTD_TEST_RINGREC_H
#define IOTD_TEST_RINGREC_H

#include <stdint.h>

#include "shmring.h"

/* The consumer's next record: type, len bytes of fill. Stepped over, not released. */
static inline void expect_record(struct shmring_consumer *c, uint16_t type, uint32_t len,
				 uint8_t fill)
{
	const struct shmring_rec *rec = shmring_peek(c);
	const uint8_t *p;

	assert_non_null(rec);
	assert_int_equal(rec->type, type);
	assert_int_equal(rec->len, len);
	p = shmring_payload(rec);
	for (uint32_t i = 0; i < len; i++)
		assert_int_equal(p[i], fill);
	shmring_next(c);
}

#endif
