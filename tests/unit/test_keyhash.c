/*
 * test_keyhash.c - unit tests of the keyed hash (keyhash.h): SipHash-1-3
 * against known answers, and the point of keying it: the same client ids
 * fall into other buckets under another key, in a uthash table and in the
 * session index (hidx) alike, and every process draws its own key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hidx.h"
#include "iotd.h"
#include "keyhash.h"

#define NKEYS 4096

static const uint8_t zero_key[KEYHASH_KEY_LEN];
/* The key CPython 3.11 derives from PYTHONHASHSEED=1 (its LCG). */
static const uint8_t py_seed1_key[KEYHASH_KEY_LEN] = {
	0x29, 0x23, 0xbe, 0x84, 0xe1, 0x6c, 0xd6, 0xae,
	0x52, 0x90, 0x49, 0xf1, 0xf1, 0xbb, 0xe9, 0xeb,
};
static const uint8_t key_a[KEYHASH_KEY_LEN] = { 1 };
static const uint8_t key_b[KEYHASH_KEY_LEN] = { 2 };

/* The hash of text's n bytes, or of bytes(range(n)) when text is NULL. */
static uint64_t hash_of(const char *text, size_t n)
{
	unsigned char in[64];

	if (text)
		return keyhash(text, n);
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (unsigned char)i;
	return keyhash(in, n);
}

/*
 * CPython hashes bytes with SipHash-1-3 (sys.hash_info.algorithm): these
 * are its hashes under PYTHONHASHSEED=0 (an all-zero key) and 1, as
 * unsigned 64-bit numbers, of bytes(range(n)) for every length of a last
 * partial word and lengths around the 8-byte words, and of a topic name.
 */
static void matches_siphash13_known_answers(void **state)
{
	static const struct { const char *text; size_t n; uint64_t zero, seed1; } kat[] = {
		{ NULL, 1, 0x68a914128e01e473ULL, 0xecd3e5afcecda4b9ULL },
		{ NULL, 2, 0x010bac45c41e3669ULL, 0xbf360f1ea1745965ULL },
		{ NULL, 3, 0x4d4c9a4a8ef6e0adULL, 0x8d5b20ab227ba858ULL },
		{ NULL, 4, 0x7cc43f98813e4dbdULL, 0x968a3280faeeb716ULL },
		{ NULL, 5, 0x5abe2169dff36275ULL, 0xbbda3b5f513c3d69ULL },
		{ NULL, 6, 0xe3c25f87624f1cdbULL, 0xa77f099d6ffed90eULL },
		{ NULL, 7, 0x2f098ab0c751325aULL, 0xfd15e78052a69ddfULL },
		{ NULL, 8, 0xead411e67ebe2eeaULL, 0xc0b5739e7e28dd01ULL },
		{ NULL, 9, 0x75927f9d95124362ULL, 0x208a1a5a0cbbf778ULL },
		{ NULL, 15, 0xf30eb725bb91c9eaULL, 0xfa87985f39e97a53ULL },
		{ NULL, 16, 0x8972188433a5c5b7ULL, 0x12e9d283f9f37002ULL },
		{ "sensors/kitchen/temperature", 27, 0x35d4e15f60cc9c02ULL, 0xc077f2f2d3e04b9dULL },
		{ NULL, 63, 0x385d3e39e5f37359ULL, 0x542052345bc68274ULL },
	};

	for (size_t i = 0; i < ARRAY_SIZE(kat); i++) {
		uint64_t zero, seed1;

		keyhash_set_key(zero_key);
		zero = hash_of(kat[i].text, kat[i].n);
		keyhash_set_key(py_seed1_key);
		seed1 = hash_of(kat[i].text, kat[i].n);
		if (zero != kat[i].zero || seed1 != kat[i].seed1)
			fail_msg("%s, %zu bytes: %#" PRIx64 " and %#" PRIx64 ", want %#" PRIx64 " and %#" PRIx64,
				 kat[i].text ? kat[i].text : "bytes(range(n))", kat[i].n, zero, seed1,
				 kat[i].zero, kat[i].seed1);
	}
}

struct client {
	char id[24];
	UT_hash_handle hh;
};

static void client_id(char *out, size_t len, unsigned i)
{
	snprintf(out, len, "client-%05u", i);
}

/* Build a uthash table of NKEYS client ids; hv[i]: the hash uthash took for id i. */
static unsigned uthash_buckets(struct client *c, unsigned *hv)
{
	struct client *table = NULL, *found;
	unsigned nbuckets;

	for (unsigned i = 0; i < NKEYS; i++) {
		client_id(c[i].id, sizeof(c[i].id), i);
		HASH_ADD_STR(table, id, &c[i]);
	}
	nbuckets = table->hh.tbl->num_buckets;
	for (unsigned i = 0; i < NKEYS; i++) {
		HASH_FIND_STR(table, c[i].id, found);
		assert_ptr_equal(found, &c[i]);
		hv[i] = c[i].hh.hashv;
	}
	HASH_CLEAR(hh, table);
	return nbuckets;
}

/*
 * Under a fixed hash, a set of ids that shares one bucket stays in one
 * bucket everywhere: the same set under another key is spread like any
 * other (about 1 in nbuckets pairs still share a bucket by chance).
 */
static void another_key_puts_the_same_ids_in_other_uthash_buckets(void **state)
{
	struct client *c = calloc(NKEYS, sizeof(*c));
	unsigned *a = calloc(NKEYS, sizeof(*a)), *b = calloc(NKEYS, sizeof(*b));
	unsigned na, nb, mask, same = 0, in_first = 0, stay = 0;

	assert_non_null(c);
	assert_non_null(a);
	assert_non_null(b);
	keyhash_set_key(key_a);
	na = uthash_buckets(c, a);
	keyhash_set_key(key_b);
	nb = uthash_buckets(c, b);
	/* Both tables have 2^k buckets: compare in the smaller one (uthash sizes by chain length). */
	mask = MIN(na, nb) - 1;
	assert_true(mask >= 255);
	for (unsigned i = 0; i < NKEYS; i++) {
		a[i] &= mask;
		b[i] &= mask;
		same += a[i] == b[i];
	}
	/* Chance alone: NKEYS / (mask + 1), at most 16. */
	assert_true(same < NKEYS / 64);
	/* The ids that shared bucket a[0] under key A are scattered under key B. */
	for (unsigned i = 0; i < NKEYS; i++) {
		if (a[i] != a[0])
			continue;
		in_first++;
		stay += b[i] == b[0];
	}
	assert_true(in_first >= 2);
	assert_true(stay < in_first);
	free(c);
	free(a);
	free(b);
}

/* The session index takes the low bits of hidx_hash_bytes: they move with the key. */
static void another_key_moves_client_ids_in_the_session_index(void **state)
{
	unsigned same = 0;
	char id[24];

	for (unsigned i = 0; i < NKEYS; i++) {
		uint32_t ha, hb;

		client_id(id, sizeof(id), i);
		keyhash_set_key(key_a);
		ha = hidx_hash_bytes(id, strlen(id));
		keyhash_set_key(key_b);
		hb = hidx_hash_bytes(id, strlen(id));
		same += (ha & 1023) == (hb & 1023);
	}
	assert_true(same < NKEYS / 64);
}

/* keyhash_init() draws a fresh key: two processes forked alike hash differently. */
static void each_process_draws_its_own_key(void **state)
{
	const char *id = "the-same-client-id";
	uint64_t h[2];

	for (int i = 0; i < 2; i++) {
		int fds[2], status;
		pid_t pid;

		assert_int_equal(pipe(fds), 0);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			uint64_t v;

			keyhash_init();
			v = keyhash(id, strlen(id));
			_exit(write(fds[1], &v, sizeof(v)) == sizeof(v) ? 0 : 1);
		}
		close(fds[1]);
		assert_int_equal(read(fds[0], &h[i], sizeof(h[i])), sizeof(h[i]));
		close(fds[0]);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	assert_true(h[0] != h[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(matches_siphash13_known_answers),
		cmocka_unit_test(another_key_puts_the_same_ids_in_other_uthash_buckets),
		cmocka_unit_test(another_key_moves_client_ids_in_the_session_index),
		cmocka_unit_test(each_process_draws_its_own_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
