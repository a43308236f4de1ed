/*
 * test_hidx.c - unit tests of the open-addressing hash index: lookups,
 * growth, removal by backward shift inside runs that wrap around the end
 * of the slots, and the walk that removes as it goes (router_free's).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "hidx.h"

struct item {
	uint32_t key;
	uint32_t hash;               /* chosen by the test: collisions on purpose */
};

static bool item_has_key(const void *item, const void *key)
{
	return ((const struct item *)item)->key == *(const uint32_t *)key;
}

static struct item *find(const struct hidx *x, const struct item *it)
{
	return hidx_find(x, it->hash, item_has_key, &it->key);
}

/* Every item present is found, every absent one is not, and the count agrees. */
static void check_exactly(const struct hidx *x, struct item *items, const bool *present, size_t n)
{
	uint32_t count = 0;

	for (size_t i = 0; i < n; i++) {
		if (present[i]) {
			assert_ptr_equal(find(x, &items[i]), &items[i]);
			count++;
		} else {
			assert_null(find(x, &items[i]));
		}
	}
	assert_int_equal(hidx_count(x), count);
}

static void empty_index_finds_nothing(void **state)
{
	struct hidx x = { 0 };
	struct item a = { 1, 7 };

	assert_null(find(&x, &a));
	assert_false(hidx_del(&x, a.hash, &a));
	assert_int_equal(hidx_count(&x), 0);
	assert_int_equal(hidx_slots(&x), 0);
	hidx_free(&x);
}

static void grows_and_keeps_every_item(void **state)
{
	enum { N = 5000 };
	struct hidx x = { 0 };
	struct item *items = calloc(N, sizeof(*items));
	bool *present = calloc(N, sizeof(*present));

	assert_non_null(items);
	assert_non_null(present);
	for (uint32_t i = 0; i < N; i++) {
		items[i] = (struct item){ i, hidx_hash_u32(i) };
		assert_true(hidx_add(&x, items[i].hash, &items[i]));
		present[i] = true;
	}
	check_exactly(&x, items, present, N);
	/* At most three quarters full. */
	assert_true((uint64_t)hidx_count(&x) * 4 <= (uint64_t)hidx_slots(&x) * 3);
	for (uint32_t i = 0; i < N; i += 3) {
		assert_true(hidx_del(&x, items[i].hash, &items[i]));
		present[i] = false;
	}
	check_exactly(&x, items, present, N);
	hidx_free(&x);
	free(items);
	free(present);
}

/* Runs that wrap from the last slot to the first, removed from every position. */
static void removal_inside_wrapping_runs(void **state)
{
	enum { N = 10 };
	struct item items[N];

	for (uint32_t victim = 0; victim < N; victim++) {
		struct hidx x = { 0 };
		bool present[N];

		/* 16 slots: homes 14, 15 and 0 make one run across the end. */
		for (uint32_t i = 0; i < N; i++) {
			uint32_t home = (uint32_t[]){ 14, 14, 15, 14, 0, 0, 15, 1, 14, 2 }[i];

			items[i] = (struct item){ i, home | (i << 8) };
			assert_true(hidx_add(&x, items[i].hash, &items[i]));
			present[i] = true;
		}
		assert_int_equal(hidx_slots(&x), 16);
		assert_true(hidx_del(&x, items[victim].hash, &items[victim]));
		present[victim] = false;
		assert_false(hidx_del(&x, items[victim].hash, &items[victim]));
		check_exactly(&x, items, present, N);
		hidx_free(&x);
	}
}

static void equal_hashes_are_told_apart_by_eq(void **state)
{
	struct hidx x = { 0 };
	struct item a = { 1, 42 }, b = { 2, 42 }, c = { 3, 42 };

	assert_true(hidx_add(&x, a.hash, &a));
	assert_true(hidx_add(&x, b.hash, &b));
	assert_true(hidx_add(&x, c.hash, &c));
	assert_ptr_equal(find(&x, &b), &b);
	assert_true(hidx_del(&x, a.hash, &a));
	assert_ptr_equal(find(&x, &b), &b);
	assert_ptr_equal(find(&x, &c), &c);
	assert_null(find(&x, &a));
	hidx_free(&x);
}

/* The walk router_free makes: last slot down, each slot again after a removal. */
static void walk_removing_as_it_goes_meets_every_item(void **state)
{
	enum { N = 12 };
	struct hidx x = { 0 };
	struct item items[N];
	int seen[N] = { 0 };
	struct item *it;

	for (uint32_t i = 0; i < N; i++) {
		/* Crowded around the end of 16 slots, so that removals shift across it. */
		items[i] = (struct item){ i, (uint32_t)(13 + i % 5) | (i << 8) };
		assert_true(hidx_add(&x, items[i].hash, &items[i]));
	}
	assert_int_equal(hidx_slots(&x), 16);
	for (uint32_t i = hidx_slots(&x); i-- > 0;) {
		while ((it = hidx_at(&x, i))) {
			seen[it->key]++;
			assert_true(hidx_del(&x, it->hash, it));
		}
	}
	for (uint32_t i = 0; i < N; i++)
		assert_int_equal(seen[i], 1);
	assert_int_equal(hidx_count(&x), 0);
	hidx_free(&x);
}

static void byte_hash_depends_on_every_byte_and_the_length(void **state)
{
	assert_int_not_equal(hidx_hash_bytes("client-1", 8), hidx_hash_bytes("client-2", 8));
	assert_int_not_equal(hidx_hash_bytes("ab", 2), hidx_hash_bytes("ba", 2));
	assert_int_not_equal(hidx_hash_bytes("a\0", 2), hidx_hash_bytes("a", 1));
	assert_int_equal(hidx_hash_bytes("same", 4), hidx_hash_bytes("same", 4));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(empty_index_finds_nothing),
		cmocka_unit_test(grows_and_keeps_every_item),
		cmocka_unit_test(removal_inside_wrapping_runs),
		cmocka_unit_test(equal_hashes_are_told_apart_by_eq),
		cmocka_unit_test(walk_removing_as_it_goes_meets_every_item),
		cmocka_unit_test(byte_hash_depends_on_every_byte_and_the_length),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
