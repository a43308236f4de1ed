/*
 * test_spares.c - unit tests of the spare blocks: a freed block serves
 * the next one of its size step, last freed first, up to the set's
 * bound; larger blocks and those past the bound are freed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "spares.h"

static void a_freed_block_serves_the_next_of_its_step_last_freed_first(void **state)
{
	struct spares s;
	void *a, *b, *c;

	spares_init(&s, 4 * SPARES_STEP * 2);
	a = spares_alloc(&s, 10);
	b = spares_alloc(&s, 64);
	c = spares_alloc(&s, 65);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	memset(b, 0xAB, 64);            /* the whole step is the block's */
	memset(c, 0xCD, 128);
	spares_free(&s, a, 10);
	spares_free(&s, b, 64);
	spares_free(&s, c, 65);
	assert_int_equal(s.bytes, 4 * SPARES_STEP);
	assert_ptr_equal(spares_alloc(&s, 1), b);     /* step 1: b, freed after a */
	assert_ptr_equal(spares_alloc(&s, 33), a);
	assert_ptr_equal(spares_alloc(&s, 100), c);   /* step 2 */
	assert_int_equal(s.bytes, 0);
	spares_free(&s, a, 1);
	spares_free(&s, b, 1);
	spares_free(&s, c, 128);
	spares_clear(&s);
	assert_int_equal(s.bytes, 0);
	assert_null(s.kept[0]);
	assert_null(s.kept[1]);
}

static void the_set_keeps_no_more_than_its_bound_nor_large_blocks(void **state)
{
	struct spares s;
	void *p[3], *big;

	spares_init(&s, 2 * SPARES_STEP * SPARES_STEPS + SPARES_STEP - 1);
	for (int i = 0; i < 3; i++)
		p[i] = spares_alloc(&s, SPARES_STEP * SPARES_STEPS);
	big = spares_alloc(&s, SPARES_STEP * SPARES_STEPS + 1);
	assert_non_null(big);
	spares_free(&s, big, SPARES_STEP * SPARES_STEPS + 1);
	assert_int_equal(s.bytes, 0);
	for (int i = 0; i < 3; i++)
		spares_free(&s, p[i], SPARES_STEP * SPARES_STEPS);
	assert_int_equal(s.bytes, 2 * SPARES_STEP * SPARES_STEPS);   /* the third was freed */
	spares_free(&s, NULL, 8);
	assert_int_equal(s.bytes, 2 * SPARES_STEP * SPARES_STEPS);
	assert_ptr_equal(spares_alloc(&s, SPARES_STEP * SPARES_STEPS), p[1]);
	spares_free(&s, p[1], SPARES_STEP * SPARES_STEPS);
	spares_clear(&s);
	assert_int_equal(s.bytes, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_freed_block_serves_the_next_of_its_step_last_freed_first),
		cmocka_unit_test(the_set_keeps_no_more_than_its_bound_nor_large_blocks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
