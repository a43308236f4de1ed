/*
 * test_addrlimit.c - per-address keys (IPv4 exact, IPv6 /64, the same key
 * from a socket address and from the listener's printed form), the
 * connection counts against a reference model, the rate buckets, the
 * loopback test and the slow-down of addresses that fail to authenticate.
 */
#include <assert.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "addrlimit.h"
#include "hidx.h"
#include "iotd.h"

static struct addr_key key_of_remote(const char *remote)
{
	struct addr_key k;

	assert_true(addr_key_from_remote(remote, &k));
	return k;
}

/* The key of a peer at host, an IPv6 address when it has a ':', else IPv4 (port 1883). */
static struct addr_key key_of_ip(const char *host)
{
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	struct addr_key k;

	if (strchr(host, ':')) {
		sin6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, host, &sin6->sin6_addr), 1);
	} else {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(1883);
		assert_int_equal(inet_pton(AF_INET, host, &sin->sin_addr), 1);
	}
	assert_true(addr_key_from_sockaddr(&ss, &k));
	return k;
}

static bool key_eq(struct addr_key a, struct addr_key b)
{
	return memcmp(a.b, b.b, sizeof(a.b)) == 0;
}

static void keys_are_ipv4_exact_and_ipv6_per_64(void **state)
{
	struct addr_key a = key_of_ip("127.0.0.1"), b = key_of_ip("127.0.0.2");
	char out[64];

	assert_false(key_eq(a, b));
	/* The port does not matter; the printed form gives the same key. */
	assert_true(key_eq(a, key_of_remote("127.0.0.1:53412")));
	assert_true(key_eq(b, key_of_remote("127.0.0.2:1")));
	/* An IPv4-mapped IPv6 client is its IPv4 address. */
	assert_true(key_eq(a, key_of_ip("::ffff:127.0.0.1")));
	assert_true(key_eq(a, key_of_remote("[::ffff:127.0.0.1]:9")));
	/* One /64 is one address, the next /64 another. */
	assert_true(key_eq(key_of_ip("2001:db8:1:2::1"), key_of_ip("2001:db8:1:2:ffff::9")));
	assert_true(key_eq(key_of_ip("2001:db8:1:2::1"), key_of_remote("[2001:db8:1:2:a:b:c:d]:80")));
	assert_false(key_eq(key_of_ip("2001:db8:1:2::1"), key_of_ip("2001:db8:1:3::1")));
	assert_false(key_eq(key_of_ip("::1"), a));
	addr_key_format(&a, out, sizeof(out));
	assert_string_equal(out, "127.0.0.1");
	a = key_of_ip("2001:db8:1:2:3:4:5:6");
	addr_key_format(&a, out, sizeof(out));
	assert_string_equal(out, "2001:db8:1:2::/64");
}

static void remotes_that_are_no_address_have_no_key(void **state)
{
	static const char *const bad[] = {
		"local", "", ":", "1.2.3.4", "1.2.3:5", "[::1", "[]:5", "[1.2.3.4]:5",
		"999.1.1.1:5", "[::g]:5", "[0123456789012345678901234567890123456789012345678]:1",
	};
	struct sockaddr_storage ss = { .ss_family = AF_UNIX };
	struct addr_key k;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_false(addr_key_from_remote(bad[i], &k));
	assert_false(addr_key_from_sockaddr(&ss, &k));
}

/* Key number i: distinct IPv4 addresses. */
static struct addr_key nth_key(uint32_t i)
{
	struct addr_key k = { { 0 } };

	k.b[10] = k.b[11] = 0xff;
	memcpy(&k.b[12], &i, 4);
	return k;
}

#define N_KEYS 5000

static void counts_follow_a_reference_and_give_their_memory_back(void **state)
{
	static uint32_t ref[N_KEYS];
	struct addr_counts t = { 0 };
	uint32_t seed = 12345, held = 0;

	/* Random adds and removes, unknown removes among them, checked against an array. */
	for (int step = 0; step < 200000; step++) {
		uint32_t i;

		seed = seed * 1103515245u + 12345u;
		i = (seed >> 8) % N_KEYS;
		if ((seed >> 4) & 1) {
			struct addr_key k = nth_key(i);

			assert_true(addr_counts_add(&t, &k, UINT32_MAX));
			held += ref[i]++ == 0;
		} else {
			struct addr_key k = nth_key(i);

			addr_counts_sub(&t, &k);
			if (ref[i] > 0)
				held -= --ref[i] == 0;
		}
		assert_int_equal(t.used, held);
		if (step % 997 == 0)
			for (uint32_t j = 0; j < N_KEYS; j++) {
				struct addr_key k = nth_key(j);

				assert_int_equal(addr_counts_get(&t, &k), ref[j]);
			}
	}
	/* Load stays at most 3/4. */
	assert_true(t.used * 4 <= (t.mask + 1) * 3);
	for (uint32_t j = 0; j < N_KEYS; j++) {
		struct addr_key k = nth_key(j);

		while (ref[j]-- > 0)
			addr_counts_sub(&t, &k);
	}
	assert_int_equal(t.used, 0);
	assert_null(t.slots);
	addr_counts_clear(&t);
}

static void counts_refuse_a_new_address_past_the_bound(void **state)
{
	struct addr_counts t = { 0 };
	struct addr_key a = nth_key(1), b = nth_key(2), c = nth_key(3);

	assert_true(addr_counts_add(&t, &a, 2));
	assert_true(addr_counts_add(&t, &b, 2));
	assert_false(addr_counts_add(&t, &c, 2));
	/* An address already held still counts one more. */
	assert_true(addr_counts_add(&t, &a, 2));
	assert_int_equal(addr_counts_get(&t, &a), 2);
	assert_int_equal(addr_counts_get(&t, &c), 0);
	addr_counts_sub(&t, &b);
	assert_true(addr_counts_add(&t, &c, 2));
	addr_counts_clear(&t);
	assert_int_equal(addr_counts_get(&t, &a), 0);
}

/* A rate or failure table in *state: zeroed for the test, freed however the test ends. */
static int rates_new(void **state)
{
	*state = calloc(1, sizeof(struct addr_rates));
	return *state ? 0 : -1;
}

static int fails_new(void **state)
{
	*state = calloc(1, sizeof(struct addr_fails));
	return *state ? 0 : -1;
}

static int table_free(void **state)
{
	free(*state);
	return 0;
}

static void a_rate_bucket_holds_a_second_and_refills(void **state)
{
	struct addr_rates *r = *state;
	struct addr_key k = nth_key(7);
	uint64_t t = 1000;
	struct addr_rate *e = addr_rates_get(r, &k, t, 4);

	for (int i = 0; i < 4; i++)
		assert_true(addr_rate_take(e, t, 4));
	assert_false(addr_rate_take(e, t, 4));
	/* A quarter of a second gives one back, not two. */
	assert_true(addr_rate_take(e, t + 250, 4));
	assert_false(addr_rate_take(e, t + 250, 4));
	/* The same entry is found again; a long pause refills to the bucket's size only. */
	assert_ptr_equal(addr_rates_get(r, &k, t + 60000, 4), e);
	for (int i = 0; i < 4; i++)
		assert_true(addr_rate_take(e, t + 60000, 4));
	assert_false(addr_rate_take(e, t + 60000, 4));
	/* A lowered rate caps what is there; a raised one refills at the new pace. */
	assert_true(addr_rate_take(e, t + 62000, 1));
	assert_false(addr_rate_take(e, t + 62000, 1));
	assert_true(addr_rate_take(e, t + 62010, 100));
	/* The largest rate does not overflow. */
	assert_true(addr_rate_take(e, t + 999999, 1000000));
}

static unsigned set_of(const struct addr_key *k)
{
	return hidx_hash_bytes(k->b, sizeof(k->b)) & (ADDR_RATE_SETS - 1);
}

/* n addresses of one set (the rate and failure tables index alike). */
static void keys_of_one_set(struct addr_key *keys, unsigned n)
{
	unsigned have = 0;

	static_assert(ADDR_RATE_SETS == ADDR_FAIL_SETS, "one set function for both tables");
	keys[have++] = nth_key(0);
	for (uint32_t i = 1; have < n; i++) {
		struct addr_key k = nth_key(i);

		if (set_of(&k) == set_of(&keys[0]))
			keys[have++] = k;
	}
}

static void a_full_rate_set_gives_up_the_entry_seen_longest_ago(void **state)
{
	struct addr_rates *r = *state;
	struct addr_key keys[ADDR_RATE_WAYS + 1];

	keys_of_one_set(keys, ARRAY_SIZE(keys));
	/* Each seen at its time, each with its bucket emptied (rate 1). */
	for (unsigned i = 0; i < ADDR_RATE_WAYS; i++)
		assert_true(addr_rate_take(addr_rates_get(r, &keys[i], 10 + i, 1), 10 + i, 1));
	/* Key 1 seen again: key 0 is now the one seen longest ago, and goes. */
	assert_false(addr_rate_take(addr_rates_get(r, &keys[1], 20, 1), 20, 1));
	assert_true(addr_rate_take(addr_rates_get(r, &keys[ADDR_RATE_WAYS], 21, 1), 21, 1));
	/* The others kept their empty buckets; key 0 comes back with a full one. */
	for (unsigned i = 1; i < ADDR_RATE_WAYS; i++)
		assert_false(addr_rate_take(addr_rates_get(r, &keys[i], 22, 1), 22, 1));
	assert_true(addr_rate_take(addr_rates_get(r, &keys[0], 22, 1), 22, 1));
}

static void loopback_is_127_8_and_ipv6_loopback(void **state)
{
	static const char *const yes[] = { "127.0.0.1:1883", "127.200.3.4:1", "[::1]:5",
					   "[::ffff:127.0.0.1]:7" };
	static const char *const no[] = { "10.0.0.1:1883", "128.0.0.1:1", "[::2]:5",
					  "[::ffff:10.0.0.1]:7", "[2001:db8::1]:1", "local", "",
					  "127.0.0.1", "[::1" };

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++)
		assert_true(addr_remote_is_loopback(yes[i]));
	for (size_t i = 0; i < ARRAY_SIZE(no); i++)
		assert_false(addr_remote_is_loopback(no[i]));
}

static void failures_double_the_delay_up_to_the_maximum(void **state)
{
	struct addr_fails *t = *state;
	struct addr_key a = key_of_ip("192.0.2.1"), b = key_of_ip("192.0.2.2");
	uint64_t now = 1000;

	assert_int_equal(addr_fail_delay(t, &a, now, 5000), 0);
	for (uint32_t n = 1; n <= 8; n++) {
		addr_fail_count(t, &a, now);
		assert_int_equal(addr_fail_delay(t, &a, now, 5000),
				 MIN(ADDR_FAIL_BASE_MS << (n - 1), 5000u));
		assert_int_equal(addr_fail_delay(t, &a, now, 0), 0);
	}
	assert_int_equal(addr_fail_delay(t, &b, now, 5000), 0);
	/* A success forgets them. */
	addr_fail_clear(t, &a);
	assert_int_equal(addr_fail_delay(t, &a, now, 5000), 0);
	/* So does time without a failure. */
	addr_fail_count(t, &a, now);
	assert_int_equal(addr_fail_delay(t, &a, now + ADDR_FAIL_FORGET_MS - 1, 5000),
			 ADDR_FAIL_BASE_MS);
	assert_int_equal(addr_fail_delay(t, &a, now + ADDR_FAIL_FORGET_MS, 5000), 0);
	addr_fail_count(t, &a, now + ADDR_FAIL_FORGET_MS);
	assert_int_equal(addr_fail_delay(t, &a, now + ADDR_FAIL_FORGET_MS, 5000),
			 ADDR_FAIL_BASE_MS);
}

static void failures_count_per_ipv6_64(void **state)
{
	struct addr_fails *t = *state;
	struct addr_key a = key_of_ip("2001:db8::1"), same = key_of_ip("2001:db8::ff"),
			other = key_of_ip("2001:db8:0:1::1");

	addr_fail_count(t, &a, 5);
	assert_int_equal(addr_fail_delay(t, &same, 5, 5000), ADDR_FAIL_BASE_MS);
	assert_int_equal(addr_fail_delay(t, &other, 5, 5000), 0);
}

static void a_full_failure_set_gives_up_the_oldest_failure(void **state)
{
	struct addr_fails *t = *state;
	struct addr_key keys[ADDR_FAIL_WAYS + 1];

	keys_of_one_set(keys, ARRAY_SIZE(keys));
	for (unsigned i = 0; i < ADDR_FAIL_WAYS; i++)
		addr_fail_count(t, &keys[i], 10 + i);
	addr_fail_count(t, &keys[0], 20);      /* key 1 now failed longest ago */
	addr_fail_count(t, &keys[ADDR_FAIL_WAYS], 21);
	assert_int_equal(addr_fail_delay(t, &keys[1], 22, 5000), 0);
	assert_int_equal(addr_fail_delay(t, &keys[0], 22, 5000), 2 * ADDR_FAIL_BASE_MS);
	for (unsigned i = 2; i <= ADDR_FAIL_WAYS; i++)
		assert_int_equal(addr_fail_delay(t, &keys[i], 22, 5000), ADDR_FAIL_BASE_MS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(keys_are_ipv4_exact_and_ipv6_per_64),
		cmocka_unit_test(remotes_that_are_no_address_have_no_key),
		cmocka_unit_test(counts_follow_a_reference_and_give_their_memory_back),
		cmocka_unit_test(counts_refuse_a_new_address_past_the_bound),
		cmocka_unit_test_setup_teardown(a_rate_bucket_holds_a_second_and_refills,
						rates_new, table_free),
		cmocka_unit_test_setup_teardown(a_full_rate_set_gives_up_the_entry_seen_longest_ago,
						rates_new, table_free),
		cmocka_unit_test(loopback_is_127_8_and_ipv6_loopback),
		cmocka_unit_test_setup_teardown(failures_double_the_delay_up_to_the_maximum,
						fails_new, table_free),
		cmocka_unit_test_setup_teardown(failures_count_per_ipv6_64, fails_new, table_free),
		cmocka_unit_test_setup_teardown(a_full_failure_set_gives_up_the_oldest_failure,
						fails_new, table_free),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
