/*
 * test_rec.c - unit tests of the record field writer and the
 * bounds-checked reader that decodes ring payloads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "rec.h"

static void test_every_field_type_round_trips(void **state)
{
	struct recw w;
	struct recr r;
	const uint8_t *p;
	uint16_t slen;
	uint32_t blen;

	recw_init(&w);
	recw_u8(&w, 0xab);
	recw_u16(&w, 0xbeef);
	recw_u32(&w, 0xdeadbeef);
	recw_u64(&w, 0x0123456789abcdefull);
	recw_str(&w, "sensors/+/temp", 14);
	recw_bytes(&w, "\0\1\2\3", 4);
	recw_str(&w, NULL, 0);                      /* empty: no pointer needed */
	recw_bytes(&w, NULL, 0);
	recw_u8(&w, 0);
	assert_false(w.oom);
	assert_int_equal(w.len, 1 + 2 + 4 + 8 + (2 + 14) + (4 + 4) + 2 + 4 + 1);

	recr_init(&r, w.buf, w.len);
	assert_int_equal(recr_u8(&r), 0xab);
	assert_int_equal(recr_u16(&r), 0xbeef);
	assert_int_equal(recr_u32(&r), 0xdeadbeef);
	assert_int_equal(recr_u64(&r), 0x0123456789abcdefull);
	recr_str(&r, &p, &slen);
	assert_int_equal(slen, 14);
	assert_memory_equal(p, "sensors/+/temp", 14);
	recr_bytes(&r, &p, &blen);
	assert_int_equal(blen, 4);
	assert_memory_equal(p, "\0\1\2\3", 4);
	recr_str(&r, &p, &slen);
	assert_int_equal(slen, 0);
	recr_bytes(&r, &p, &blen);
	assert_int_equal(blen, 0);
	assert_int_equal(recr_end(&r), -1);         /* one byte left */
	assert_int_equal(recr_u8(&r), 0);
	assert_false(r.err);
	assert_int_equal(recr_end(&r), 0);
	recw_free(&w);
	assert_null(w.buf);
}

static void test_writer_grows_past_initial_capacity(void **state)
{
	static uint8_t big[70000];
	struct recw w;
	struct recr r;
	const uint8_t *p;
	uint32_t len;

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 13);
	recw_init(&w);
	for (uint32_t i = 0; i < 1000; i++)
		recw_u32(&w, i);
	recw_bytes(&w, big, sizeof(big));
	assert_false(w.oom);
	assert_true(w.cap >= w.len);

	recr_init(&r, w.buf, w.len);
	for (uint32_t i = 0; i < 1000; i++)
		assert_int_equal(recr_u32(&r), i);
	recr_bytes(&r, &p, &len);
	assert_int_equal(len, sizeof(big));
	assert_memory_equal(p, big, sizeof(big));
	assert_int_equal(recr_end(&r), 0);
	recw_free(&w);
}

static void test_overrun_sets_err_and_reads_zero(void **state)
{
	const uint8_t buf[3] = { 1, 2, 3 };
	struct recr r;

	recr_init(&r, buf, sizeof(buf));
	assert_int_equal(recr_u16(&r), 0x0201);
	assert_int_equal(recr_u32(&r), 0);          /* 1 byte left, 4 wanted */
	assert_true(r.err);
	/* After an overrun nothing is read any more, not even what would fit. */
	assert_int_equal(recr_u8(&r), 0);
	assert_int_equal(recr_u64(&r), 0);
	assert_int_equal(recr_end(&r), -1);

	recr_init(&r, buf, sizeof(buf));
	assert_int_equal(recr_u64(&r), 0);
	assert_true(r.err);

	recr_init(&r, NULL, 0);
	assert_int_equal(recr_end(&r), 0);          /* an empty record read in full */
	assert_int_equal(recr_u8(&r), 0);
	assert_true(r.err);
}

static void test_end_fails_with_leftover_bytes(void **state)
{
	struct recw w;
	struct recr r;

	recw_init(&w);
	recw_u64(&w, 42);
	recw_u8(&w, 7);
	recr_init(&r, w.buf, w.len);
	assert_int_equal(recr_u64(&r), 42);
	assert_false(r.err);
	assert_int_equal(recr_end(&r), -1);
	recw_free(&w);
}

static void test_str_longer_than_remaining_fails(void **state)
{
	struct recw w;
	struct recr r;
	const uint8_t *p = (const uint8_t *)"x";
	uint16_t slen = 99;
	uint32_t blen = 99;

	recw_init(&w);
	recw_u16(&w, 10);                           /* claims 10 bytes */
	recw_u32(&w, 0x41414141);                   /* only 4 follow */
	recr_init(&r, w.buf, w.len);
	recr_str(&r, &p, &slen);
	assert_null(p);
	assert_int_equal(slen, 0);
	assert_true(r.err);
	assert_int_equal(recr_end(&r), -1);

	/* A bytes length near 4 GiB must not wrap the bounds check. */
	recw_reset(&w);
	recw_u32(&w, UINT32_MAX);
	recw_u8(&w, 1);
	recr_init(&r, w.buf, w.len);
	p = (const uint8_t *)"x";
	recr_bytes(&r, &p, &blen);
	assert_null(p);
	assert_int_equal(blen, 0);
	assert_true(r.err);

	/* A truncated length prefix. */
	recr_init(&r, w.buf, 1);
	recr_str(&r, &p, &slen);
	assert_null(p);
	assert_int_equal(slen, 0);
	assert_true(r.err);
	recw_free(&w);
}

static void test_patch_overwrites_late_counts(void **state)
{
	struct recw w;
	struct recr r;
	size_t n16, n32;

	recw_init(&w);
	recw_u64(&w, 1);
	n16 = w.len;
	recw_u16(&w, 0);
	n32 = w.len;
	recw_u32(&w, 0);
	for (int i = 0; i < 3; i++)
		recw_u8(&w, (uint8_t)i);
	recw_patch_u16(&w, n16, 3);
	recw_patch_u32(&w, n32, 0x11223344);
	assert_false(w.oom);

	recr_init(&r, w.buf, w.len);
	assert_int_equal(recr_u64(&r), 1);
	assert_int_equal(recr_u16(&r), 3);
	assert_int_equal(recr_u32(&r), 0x11223344);
	for (int i = 0; i < 3; i++)
		assert_int_equal(recr_u8(&r), i);
	assert_int_equal(recr_end(&r), 0);

	/* A patch past what was written spoils the record rather than memory. */
	recw_patch_u32(&w, w.len - 3, 5);
	assert_true(w.oom);
	recw_free(&w);
}

static void test_oom_record_ignores_writes_until_reset(void **state)
{
	struct recw w;

	recw_init(&w);
	recw_u32(&w, 7);
	/* Allocation failure cannot be forced portably; the flag is what the writer obeys. */
	w.oom = true;
	recw_u32(&w, 8);
	recw_str(&w, "abc", 3);
	recw_bytes(&w, "abc", 3);
	recw_patch_u32(&w, 0, 9);
	assert_int_equal(w.len, 4);
	assert_int_equal(*(uint32_t *)(void *)w.buf, 7);

	recw_reset(&w);
	assert_false(w.oom);
	assert_int_equal(w.len, 0);
	assert_non_null(w.buf);                     /* the buffer is kept for the next record */
	recw_u8(&w, 1);
	assert_int_equal(w.len, 1);
	assert_int_equal(w.buf[0], 1);
	recw_free(&w);
	assert_int_equal(w.cap, 0);
	recw_free(&w);                              /* twice is harmless */
}

static void test_type_names_cover_every_type(void **state)
{
	assert_string_equal(rec_type_name(REC_CONNECT), "CONNECT");
	assert_string_equal(rec_type_name(REC_DELIVER), "DELIVER");
	assert_string_equal(rec_type_name(REC_KICK), "KICK");
	for (int t = REC_CONNECT; t < REC_TYPE_MAX; t++)
		assert_string_not_equal(rec_type_name(t), "UNKNOWN");
	assert_string_equal(rec_type_name(REC_TYPE_MAX), "UNKNOWN");
	assert_string_equal(rec_type_name(-1), "UNKNOWN");
	assert_string_equal(rec_type_name(0xbad), "UNKNOWN");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_field_type_round_trips),
		cmocka_unit_test(test_writer_grows_past_initial_capacity),
		cmocka_unit_test(test_overrun_sets_err_and_reads_zero),
		cmocka_unit_test(test_end_fails_with_leftover_bytes),
		cmocka_unit_test(test_str_longer_than_remaining_fails),
		cmocka_unit_test(test_patch_overwrites_late_counts),
		cmocka_unit_test(test_oom_record_ignores_writes_until_reset),
		cmocka_unit_test(test_type_names_cover_every_type),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
