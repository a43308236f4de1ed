/*
 * test_rec.c - unit tests of the record field writer, the bounds-checked
 * reader, and the decoder and encoder of every record type: round trips,
 * the wire layouts pinned byte by byte, and malformed records refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "iotd.h"
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

/* ---- records ----------------------------------------------------------- */

#define STR(s) ((struct rec_str){ (const uint8_t *)(s), sizeof(s) - 1 })
#define BYTES(s) ((struct rec_bytes){ (const uint8_t *)(s), sizeof(s) - 1 })

static void assert_str(struct rec_str s, const char *want)
{
	assert_int_equal(s.len, strlen(want));
	if (s.len)
		assert_memory_equal(s.p, want, s.len);
}

static void assert_bytes(struct rec_bytes b, const char *want)
{
	assert_int_equal(b.len, strlen(want));
	if (b.len)
		assert_memory_equal(b.p, want, b.len);
}

/* rec_validate() on a copy of exactly len bytes, so that ASan sees any read past it. */
static int validate_exact(uint16_t type, const uint8_t *p, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);
	int rc;

	assert_non_null(copy);
	if (len)
		memcpy(copy, p, len);
	rc = rec_validate(type, copy, len);
	free(copy);
	return rc;
}

/* The record is well-formed; cut at any byte, or with a byte more, it is not. */
static void assert_whole_only(uint16_t type, const uint8_t *p, size_t len)
{
	uint8_t *longer = malloc(len + 1);

	assert_non_null(longer);
	assert_int_equal(validate_exact(type, p, len), 0);
	for (size_t cut = 0; cut < len; cut++)
		if (validate_exact(type, p, cut) != -1)
			fail_msg("%s of %zu bytes cut to %zu decodes", rec_type_name(type), len, cut);
	memcpy(longer, p, len);
	longer[len] = 0;
	assert_int_equal(validate_exact(type, longer, len + 1), -1);
	free(longer);
}

/* w, just written, holds exactly the len bytes of wire. */
static void assert_wire(const struct recw *w, const uint8_t *wire, size_t len)
{
	assert_false(w->oom);
	assert_int_equal(w->len, len);
	assert_memory_equal(w->buf, wire, len);
}

/*
 * The count of the list of the rec_<name> record in w, at count_off, must
 * say how many items follow, no more and no fewer: written as each of the
 * wrong counts listed, the record is refused (by its decoder, through
 * rec_validate).
 */
#define ASSERT_COUNT_EXACT(name, type, w, count_off, ...) \
	do { \
		const uint32_t wrong_[] = { __VA_ARGS__ }; \
\
		for (size_t i_ = 0; i_ < ARRAY_SIZE(wrong_); i_++) { \
			rec_##name##_end(w, count_off, wrong_[i_]); \
			if (rec_validate(type, (w)->buf, (w)->len) != -1) \
				fail_msg("%s with a count of %u decodes", #name, wrong_[i_]); \
		} \
	} while (0)

/* The layouts below are spelled in little-endian bytes. */
static bool host_little_endian(void)
{
	uint16_t v = 1;
	uint8_t b;

	memcpy(&b, &v, 1);
	return b == 1;
}

/* A test of a layout spelled in little-endian bytes: skipped on another host; w made ready. */
static void wire_test_begin(struct recw *w)
{
	if (!host_little_endian())
		skip();
	recw_init(w);
}

static void test_publish_layout(void **state)
{
	static const uint8_t wire[] = {
		0x01,                                           /* qos */
		REC_PUB_RETAIN | REC_PUB_ASK,                   /* flags */
		0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, /* conn */
		0x03, 0x00, 'a', '/', 'b',                      /* topic */
		0x02, 0x00, 0x00, 0x00, 'x', 'y',               /* payload */
		0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* ask */
	};
	const struct rec_publish x = {
		.qos = 1, .flags = REC_PUB_RETAIN | REC_PUB_ASK, .conn = 0x1112131415161718ull,
		.topic = STR("a/b"), .payload = BYTES("xy"), .ask = 0x0102030405060708ull,
	};
	uint8_t put[sizeof(wire) + 1];
	struct rec_publish d;
	struct recw w;

	wire_test_begin(&w);
	rec_publish_encode(&w, &x);
	assert_wire(&w, wire, sizeof(wire));

	/* Straight into reserved memory: exactly rec_publish_size() bytes, the same ones. */
	assert_int_equal(rec_publish_size(&x), sizeof(wire));
	put[sizeof(wire)] = 0xee;
	rec_publish_put(put, &x);
	assert_memory_equal(put, wire, sizeof(wire));
	assert_int_equal(put[sizeof(wire)], 0xee);

	assert_int_equal(rec_publish_decode(&d, wire, sizeof(wire)), 0);
	assert_int_equal(d.qos, 1);
	assert_int_equal(d.flags, REC_PUB_RETAIN | REC_PUB_ASK);
	assert_true(d.conn == 0x1112131415161718ull);
	assert_str(d.topic, "a/b");
	assert_bytes(d.payload, "xy");
	assert_true(d.ask == 0x0102030405060708ull);
	assert_whole_only(REC_PUBLISH, wire, sizeof(wire));
	recw_free(&w);
}

static void test_publish_ask_only_with_its_flag(void **state)
{
	struct rec_publish x = {
		.qos = 0, .flags = REC_PUB_RETAIN, .topic = STR("t"), .payload = BYTES("p"),
		.ask = 99,                                  /* no REC_PUB_ASK: not written */
	};
	struct rec_publish d;
	struct recw w;

	recw_init(&w);
	rec_publish_encode(&w, &x);
	assert_int_equal(w.len, REC_PUBLISH_FIXED_BYTES + 1 + 1);
	assert_int_equal(rec_publish_size(&x), w.len);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), 0);
	assert_true(d.ask == 0);
	assert_int_equal(d.flags, REC_PUB_RETAIN);
	assert_whole_only(REC_PUBLISH, w.buf, w.len);

	/* The same bytes with REC_PUB_ASK lack the ask. */
	w.buf[1] |= REC_PUB_ASK;
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), -1);
	/* And an ask after a record without the flag is a trailing byte too many. */
	w.buf[1] &= (uint8_t)~REC_PUB_ASK;
	recw_u64(&w, 99);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), -1);

	x.flags = REC_PUB_ASK;
	rec_publish_encode(&w, &x);
	assert_int_equal(w.len, REC_PUBLISH_FIXED_BYTES + 1 + 1 + REC_PUBLISH_ASK_BYTES);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), 0);
	assert_true(d.ask == 99);
	assert_whole_only(REC_PUBLISH, w.buf, w.len);

	/* Empty topic and payload, no pointers. */
	x = (struct rec_publish){ .qos = 2 };
	rec_publish_encode(&w, &x);
	assert_false(w.oom);
	assert_int_equal(w.len, REC_PUBLISH_FIXED_BYTES);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), 0);
	assert_int_equal(d.topic.len, 0);
	assert_int_equal(d.payload.len, 0);
	recw_free(&w);
}

/* A message's properties travel with REC_PUB_PROPS and in a REC_DELIVER head; present means not empty. */
static void test_publish_and_deliver_carry_props(void **state)
{
	static const uint8_t block[] = { 0x03, 0x01, 0x01, 0x17 };   /* not checked here */
	struct rec_publish x = {
		.qos = 1, .flags = REC_PUB_PROPS | REC_PUB_ASK, .topic = STR("t"),
		.payload = BYTES("p"), .props = { block, sizeof(block) }, .ask = 5,
	};
	struct rec_deliver dx = {
		.qos = 1, .topic = STR("t"), .payload = BYTES("p"), .retain = 1,
		.props = { block, sizeof(block) },
	};
	struct rec_publish d;
	struct rec_deliver dd;
	struct rec_target t = { 0 };
	struct recw w;
	size_t off;

	recw_init(&w);
	rec_publish_encode(&w, &x);
	assert_int_equal(w.len, REC_PUBLISH_FIXED_BYTES + 2 + 4 + sizeof(block) +
			 REC_PUBLISH_ASK_BYTES);
	assert_int_equal(rec_publish_size(&x), w.len);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), 0);
	assert_int_equal(d.props.len, sizeof(block));
	assert_memory_equal(d.props.p, block, sizeof(block));
	assert_true(d.ask == 5);
	assert_whole_only(REC_PUBLISH, w.buf, w.len);

	/* The flag with an empty block is refused. */
	x.props.len = 0;
	rec_publish_encode(&w, &x);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), -1);

	/* The expiry deadline with its flag; 0 with it is refused. */
	x = (struct rec_publish){ .flags = REC_PUB_EXPIRY, .topic = STR("t"),
				  .expires_at = 0x0102030405060708ull };
	rec_publish_encode(&w, &x);
	assert_int_equal(w.len, REC_PUBLISH_FIXED_BYTES + 1 + 8);
	assert_int_equal(rec_publish_size(&x), w.len);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), 0);
	assert_true(d.expires_at == 0x0102030405060708ull);
	assert_whole_only(REC_PUBLISH, w.buf, w.len);
	x.expires_at = 0;
	rec_publish_encode(&w, &x);
	assert_int_equal(rec_publish_decode(&d, w.buf, w.len), -1);
	dx.expires_at = 77;

	off = rec_deliver_begin(&w, &dx);
	rec_deliver_add(&w, &(struct rec_target){ .conn = 1, .sid = 2, .qos = 1 });
	rec_deliver_end(&w, off, 1);
	assert_int_equal(rec_deliver_decode(&dd, w.buf, w.len), 0);
	assert_int_equal(dd.retain, 1);
	assert_true(dd.expires_at == 77);
	assert_int_equal(dd.props.len, sizeof(block));
	assert_memory_equal(dd.props.p, block, sizeof(block));
	assert_true(rec_deliver_next(&dd.targets, &t));
	assert_true(t.conn == 1 && t.sid == 2);
	assert_whole_only(REC_DELIVER, w.buf, w.len);

	/* Without properties and expiry the head is as it was. */
	dx.props.len = 0;
	dx.expires_at = 0;
	off = rec_deliver_begin(&w, &dx);
	rec_deliver_end(&w, off, 0);
	assert_int_equal(w.len, REC_DELIVER_FIXED_BYTES + 2);
	assert_int_equal(rec_deliver_decode(&dd, w.buf, w.len), 0);
	assert_int_equal(dd.props.len, 0);
	recw_free(&w);
}

static void test_deliver_layout(void **state)
{
	static const uint8_t wire[] = {
		0x02,                                           /* qos */
		0x01, 0x00, 't',                                /* topic */
		0x01, 0x00, 0x00, 0x00, 'p',                    /* payload */
		0x01,                                           /* retain */
		0x02, 0x00, 0x00, 0x00,                         /* targets */
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, /* conn */
		0x07, 0x00, 0x00, 0x00,                         /* sid */
		0x01,                                           /* qos */
		0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* conn */
		0x04, 0x03, 0x02, 0x01,                         /* sid */
		0x02 | REC_TARGET_COPY,                         /* qos, a copy follows */
		0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* copy */
	};
	const struct rec_deliver x = { .qos = 2, .topic = STR("t"), .payload = BYTES("p"), .retain = 1 };
	const struct rec_target t[2] = {
		{ .conn = 0x1122334455667788ull, .sid = 7, .qos = 1 },
		{ .conn = 2, .sid = 0x01020304, .qos = 2, .copy = 10 },
	};
	struct rec_deliver d;
	struct rec_target got = { 0 };
	struct recw w;
	size_t count_off;

	wire_test_begin(&w);
	count_off = rec_deliver_begin(&w, &x);
	assert_int_equal(count_off, 10);
	assert_int_equal(rec_deliver_head_size(&x), 14);
	rec_deliver_add(&w, &t[0]);
	rec_deliver_add(&w, &t[1]);
	rec_deliver_end(&w, count_off, 2);
	assert_wire(&w, wire, sizeof(wire));
	assert_int_equal(rec_target_size(&t[0]), REC_TARGET_BYTES);
	assert_int_equal(rec_target_size(&t[1]), REC_TARGET_BYTES + REC_TARGET_COPY_BYTES);

	assert_int_equal(rec_deliver_decode(&d, wire, sizeof(wire)), 0);
	assert_int_equal(d.qos, 2);
	assert_str(d.topic, "t");
	assert_bytes(d.payload, "p");
	assert_int_equal(d.retain, 1);
	assert_int_equal(d.targets.n, 2);
	for (int i = 0; i < 2; i++) {
		assert_true(rec_deliver_next(&d.targets, &got));
		assert_true(got.conn == t[i].conn);
		assert_int_equal(got.sid, t[i].sid);
		assert_int_equal(got.qos, t[i].qos);
		assert_true(got.copy == t[i].copy);
	}
	assert_false(rec_deliver_next(&d.targets, &got));
	assert_ptr_equal(d.targets.p, wire + sizeof(wire));
	assert_whole_only(REC_DELIVER, wire, sizeof(wire));
	recw_free(&w);
}

/*
 * A target's subscription identifiers: REC_TARGET_SUB_IDS, a count and
 * that many u32 after the copy; a count of 0 or past
 * REC_TARGET_SUB_IDS_MAX is malformed.
 */
static void test_deliver_target_sub_ids(void **state)
{
	const struct rec_deliver x = { .qos = 1, .topic = STR("t"), .payload = BYTES("p") };
	const uint32_t ids[2] = { 5, 268435455 };
	const struct rec_target t = { .conn = 3, .sid = 4, .qos = 1, .copy = 9, .n_sub_ids = 2,
				      .sub_ids = ids };
	struct rec_deliver d;
	struct rec_target got = { 0 };
	struct recw w;
	size_t count_off, at;

	(void)state;
	recw_init(&w);
	count_off = rec_deliver_begin(&w, &x);
	at = w.len;
	rec_deliver_add(&w, &t);
	rec_deliver_end(&w, count_off, 1);
	assert_false(w.oom);
	assert_int_equal(rec_target_size(&t), REC_TARGET_BYTES + REC_TARGET_COPY_BYTES + 1 + 8);
	assert_int_equal(w.len - at, rec_target_size(&t));
	assert_int_equal(w.buf[at + REC_TARGET_BYTES - 1], 1 | REC_TARGET_COPY | REC_TARGET_SUB_IDS);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), 0);
	assert_true(rec_deliver_next(&d.targets, &got));
	assert_int_equal(got.qos, 1);
	assert_true(got.copy == 9);
	assert_int_equal(got.n_sub_ids, 2);
	assert_int_equal(rec_target_sub_id(&got, 0), 5);
	assert_int_equal(rec_target_sub_id(&got, 1), 268435455);
	assert_whole_only(REC_DELIVER, w.buf, w.len);

	/* The count byte follows the copy: 0, or one past the cap, is malformed. */
	w.buf[at + REC_TARGET_BYTES + REC_TARGET_COPY_BYTES] = 0;
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);
	w.buf[at + REC_TARGET_BYTES + REC_TARGET_COPY_BYTES] = REC_TARGET_SUB_IDS_MAX + 1;
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);
	/* Three said, two there. */
	w.buf[at + REC_TARGET_BYTES + REC_TARGET_COPY_BYTES] = 3;
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);
	recw_free(&w);
}

static void test_connect_layout(void **state)
{
	static const uint8_t wire[] = {
		0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* conn */
		0x01,                                           /* clean */
		0x3c, 0x00,                                     /* keepalive */
		0x02, 0x00, 'c', '1',                           /* client id */
		0x01, 0x00, 'r',                                /* remote */
		0x02, 0x00, 'u', '1',                           /* user */
		0x01, 0x01, 0x00,                               /* will flag, qos, retain */
		0x01, 0x00, 'w',                                /* will topic */
		0x03, 0x00, 0x00, 0x00, 'b', 'y', 'e',          /* will payload */
		0x2c, 0x01, 0x00, 0x00,                         /* session expiry 300 */
		0x05, 0x00, 0x00, 0x00,                         /* will delay 5 */
		0x0a, 0x00, 0x00, 0x00,                         /* will expiry 10 */
		0x02, 0x00, 0x00, 0x00, 0x01, 0x01,             /* will props: payload format 1 */
	};
	const struct rec_connect x = {
		.conn = 0x0102030405060708ull, .clean = 1, .keepalive = 60,
		.client_id = STR("c1"), .remote = STR("r"), .user = STR("u1"),
		.will_flag = 1, .will_qos = 1, .will_retain = 0,
		.will_topic = STR("w"), .will_payload = BYTES("bye"),
		.session_expiry = 300, .will_delay = 5, .will_expiry = 10,
		.will_props = BYTES("\x01\x01"),
	};
	struct rec_connect d;
	struct recw w;

	wire_test_begin(&w);
	rec_connect_encode(&w, &x);
	assert_wire(&w, wire, sizeof(wire));

	assert_int_equal(rec_connect_decode(&d, wire, sizeof(wire)), 0);
	assert_true(d.conn == x.conn);
	assert_int_equal(d.clean, 1);
	assert_int_equal(d.keepalive, 60);
	assert_str(d.client_id, "c1");
	assert_str(d.remote, "r");
	assert_str(d.user, "u1");
	assert_int_equal(d.will_flag, 1);
	assert_int_equal(d.will_qos, 1);
	assert_int_equal(d.will_retain, 0);
	assert_str(d.will_topic, "w");
	assert_bytes(d.will_payload, "bye");
	assert_int_equal(d.session_expiry, 300);
	assert_int_equal(d.will_delay, 5);
	assert_int_equal(d.will_expiry, 10);
	assert_bytes(d.will_props, "\x01\x01");
	assert_whole_only(REC_CONNECT, wire, sizeof(wire));

	/* Without a will: empty strings, no pointers. */
	rec_connect_encode(&w, &(struct rec_connect){ .conn = 5, .client_id = STR("id") });
	assert_false(w.oom);
	assert_int_equal(rec_connect_decode(&d, w.buf, w.len), 0);
	assert_str(d.client_id, "id");
	assert_str(d.will_topic, "");
	assert_bytes(d.will_payload, "");
	assert_whole_only(REC_CONNECT, w.buf, w.len);
	recw_free(&w);
}

static void test_subscribe_round_trip(void **state)
{
	const struct rec_subscription subs[3] = {
		{ STR("a/+/c"), 1 }, { STR(""), 0x80 }, { STR("#"), 2 },
	};
	struct rec_subscribe d;
	struct rec_subscription s;
	struct rec_iter it;
	struct recw w;
	size_t count_off;

	recw_init(&w);
	count_off = rec_subscribe_begin(&w, &(struct rec_subscribe){ .conn = 42, .packet_id = 7,
								      .sub_id = 268435455 });
	for (int i = 0; i < 3; i++)
		rec_subscribe_add(&w, &subs[i]);
	rec_subscribe_end(&w, count_off, 3);
	assert_false(w.oom);
	assert_int_equal(w.len, 8 + 2 + 4 + 2 + (2 + 5 + 1) + (2 + 0 + 1) + (2 + 1 + 1));

	assert_int_equal(rec_subscribe_decode(&d, w.buf, w.len), 0);
	assert_true(d.conn == 42);
	assert_int_equal(d.packet_id, 7);
	assert_int_equal(d.sub_id, 268435455);
	assert_int_equal(d.filters.n, 3);
	/* A copy iterates; the list stays for a second walk. */
	for (int pass = 0; pass < 2; pass++) {
		it = d.filters;
		for (int i = 0; i < 3; i++) {
			assert_true(rec_subscribe_next(&it, &s));
			assert_int_equal(s.filter.len, subs[i].filter.len);
			assert_memory_equal(s.filter.p, subs[i].filter.p, s.filter.len);
			assert_int_equal(s.qos, subs[i].qos);
		}
		assert_false(rec_subscribe_next(&it, &s));
	}
	assert_whole_only(REC_SUBSCRIBE, w.buf, w.len);

	/* The count must say how many follow, no more and no fewer. */
	ASSERT_COUNT_EXACT(subscribe, REC_SUBSCRIBE, &w, count_off, 4, 2, UINT16_MAX);

	/* None at all is a well-formed record (whether it makes sense is the router's call). */
	count_off = rec_subscribe_begin(&w, &(struct rec_subscribe){ .conn = 1, .packet_id = 2 });
	rec_subscribe_end(&w, count_off, 0);
	assert_int_equal(rec_subscribe_decode(&d, w.buf, w.len), 0);
	assert_int_equal(d.filters.n, 0);
	assert_false(rec_subscribe_next(&d.filters, &s));
	assert_whole_only(REC_SUBSCRIBE, w.buf, w.len);
	recw_free(&w);
}

static void test_unsubscribe_round_trip(void **state)
{
	struct rec_unsubscribe d;
	struct rec_str f;
	struct recw w;
	size_t count_off;

	recw_init(&w);
	count_off = rec_unsubscribe_begin(&w, &(struct rec_unsubscribe){ .conn = 3, .packet_id = 65535 });
	rec_unsubscribe_add(&w, STR("x/y"));
	rec_unsubscribe_add(&w, STR(""));
	rec_unsubscribe_end(&w, count_off, 2);
	assert_false(w.oom);
	assert_int_equal(w.len, 8 + 2 + 2 + (2 + 3) + 2);

	assert_int_equal(rec_unsubscribe_decode(&d, w.buf, w.len), 0);
	assert_true(d.conn == 3);
	assert_int_equal(d.packet_id, 65535);
	assert_int_equal(d.filters.n, 2);
	assert_true(rec_unsubscribe_next(&d.filters, &f));
	assert_str(f, "x/y");
	assert_true(rec_unsubscribe_next(&d.filters, &f));
	assert_str(f, "");
	assert_false(rec_unsubscribe_next(&d.filters, &f));
	assert_whole_only(REC_UNSUBSCRIBE, w.buf, w.len);

	ASSERT_COUNT_EXACT(unsubscribe, REC_UNSUBSCRIBE, &w, count_off, 3, 1);
	recw_free(&w);
}

static void test_session_msg_round_trip(void **state)
{
	static const uint32_t ids[2] = { 7, 268435455 };
	struct rec_session_msg x = {
		.conn = 0xfedcba9876543210ull, .sid = 0xffffffff, .copy = 1ull << 63,
		.packet_id = 0x1234, .state = MSG_PUBREL, .qos = 2, .retain = 1,
		.topic = STR("s/t"), .payload = BYTES("hello"), .props = BYTES("\x03\x01\x00\x01"),
		.expires_at = 1234567890123ull, .sub_ids = { (const uint8_t *)ids, 2 },
	};
	const size_t fixed = 8 + 4 + 8 + 2 + 1 + 1 + 1 + (2 + 3) + (4 + 5) + (4 + 4) + 8;
	struct rec_session_msg d;
	uint32_t id;
	struct recw w;

	recw_init(&w);
	rec_session_msg_encode(&w, &x);
	assert_false(w.oom);
	assert_int_equal(w.len, fixed + 1 + 2 * 4);
	assert_int_equal(rec_session_msg_decode(&d, w.buf, w.len), 0);
	assert_true(d.conn == x.conn);
	assert_int_equal(d.sid, x.sid);
	assert_true(d.copy == x.copy);
	assert_int_equal(d.packet_id, x.packet_id);
	assert_int_equal(d.state, MSG_PUBREL);
	assert_int_equal(d.qos, 2);
	assert_int_equal(d.retain, 1);
	assert_str(d.topic, "s/t");
	assert_bytes(d.payload, "hello");
	assert_int_equal(d.props.len, 4);
	assert_memory_equal(d.props.p, "\x03\x01\x00\x01", 4);
	assert_true(d.expires_at == x.expires_at);
	assert_int_equal(d.sub_ids.n, 2);
	assert_true(rec_sub_id_next(&d.sub_ids, &id));
	assert_int_equal(id, 7);
	assert_true(rec_sub_id_next(&d.sub_ids, &id));
	assert_int_equal(id, 268435455);
	assert_false(rec_sub_id_next(&d.sub_ids, &id));
	assert_whole_only(REC_SESSION_MSG, w.buf, w.len);

	/* No identifiers: the count alone. */
	x.sub_ids = (struct rec_iter){ 0 };
	rec_session_msg_encode(&w, &x);
	assert_false(w.oom);
	assert_int_equal(w.len, fixed + 1);
	assert_int_equal(rec_session_msg_decode(&d, w.buf, w.len), 0);
	assert_int_equal(d.sub_ids.n, 0);
	assert_whole_only(REC_SESSION_MSG, w.buf, w.len);

	/* A count past REC_TARGET_SUB_IDS_MAX is refused by the reader, and never written. */
	{
		uint8_t buf[512];

		memcpy(buf, w.buf, fixed);
		buf[fixed] = REC_TARGET_SUB_IDS_MAX + 1;
		memset(buf + fixed + 1, 1, (REC_TARGET_SUB_IDS_MAX + 1) * 4);
		assert_int_equal(rec_session_msg_decode(&d, buf, fixed + 1 +
							(REC_TARGET_SUB_IDS_MAX + 1) * 4), -1);
		buf[fixed] = REC_TARGET_SUB_IDS_MAX;
		assert_int_equal(rec_session_msg_decode(&d, buf, fixed + 1 +
							REC_TARGET_SUB_IDS_MAX * 4), 0);
		x.sub_ids = (struct rec_iter){ buf, REC_TARGET_SUB_IDS_MAX + 1 };
		rec_session_msg_encode(&w, &x);
		assert_true(w.oom);
	}
	recw_free(&w);
}

static void test_fixed_records_round_trip(void **state)
{
	struct rec_msg_state ms;
	struct rec_qos2_in q2;
	struct rec_unsuback ua;
	struct rec_kick k;
	struct recw w;
	size_t off;

	recw_init(&w);
	rec_msg_state_encode(&w, &(struct rec_msg_state){
		.conn = 11, .sid = 12, .copy = 13, .packet_id = 14, .state = MSG_DONE });
	assert_int_equal(w.len, 8 + 4 + 8 + 2 + 1);
	assert_int_equal(rec_msg_state_decode(&ms, w.buf, w.len), 0);
	assert_true(ms.conn == 11 && ms.sid == 12 && ms.copy == 13);
	assert_int_equal(ms.packet_id, 14);
	assert_int_equal(ms.state, MSG_DONE);
	assert_whole_only(REC_MSG_STATE, w.buf, w.len);

	rec_qos2_in_encode(&w, &(struct rec_qos2_in){ .conn = 21, .sid = 22, .packet_id = 23, .held = 1 });
	assert_int_equal(w.len, 8 + 4 + 2 + 1);
	assert_int_equal(rec_qos2_in_decode(&q2, w.buf, w.len), 0);
	assert_true(q2.conn == 21 && q2.sid == 22);
	assert_int_equal(q2.packet_id, 23);
	assert_int_equal(q2.held, 1);
	assert_whole_only(REC_QOS2_IN, w.buf, w.len);

	off = rec_unsuback_begin(&w, &(struct rec_unsuback){ .conn = 31, .packet_id = 32 });
	rec_suback_add(&w, 0x00);
	rec_suback_add(&w, 0x11);
	rec_suback_end(&w, off, 2);
	assert_int_equal(w.len, 8 + 2 + 2 + 2);
	assert_int_equal(rec_unsuback_decode(&ua, w.buf, w.len), 0);
	assert_true(ua.conn == 31);
	assert_int_equal(ua.packet_id, 32);
	assert_int_equal(ua.codes.n, 2);
	assert_true(ua.codes.p[0] == 0x00 && ua.codes.p[1] == 0x11);
	assert_whole_only(REC_UNSUBACK, w.buf, w.len);

	rec_kick_encode(&w, &(struct rec_kick){ .conn = 41 });
	assert_int_equal(w.len, 8);
	assert_int_equal(rec_kick_decode(&k, w.buf, w.len), 0);
	assert_true(k.conn == 41);
	assert_whole_only(REC_KICK, w.buf, w.len);
	recw_free(&w);
}

static void test_close_and_connack_carry_ids(void **state)
{
	const uint16_t ids[3] = { 1, 0xbeef, 65535 };
	struct rec_close c;
	struct rec_connack a;
	uint16_t id;
	struct recw w;

	recw_init(&w);
	rec_close_encode(&w, &(struct rec_close){ .conn = 9, .publish_will = 1, .session_expiry = 77 },
			 ids, 3);
	assert_false(w.oom);
	assert_int_equal(w.len, 8 + 1 + 4 + 2 + 3 * 2);
	assert_int_equal(rec_close_decode(&c, w.buf, w.len), 0);
	assert_true(c.conn == 9);
	assert_int_equal(c.publish_will, 1);
	assert_int_equal(c.session_expiry, 77);
	assert_int_equal(c.ids.n, 3);
	for (int i = 0; i < 3; i++) {
		assert_true(rec_packet_id_next(&c.ids, &id));
		assert_int_equal(id, ids[i]);
	}
	assert_false(rec_packet_id_next(&c.ids, &id));
	assert_whole_only(REC_CLOSE, w.buf, w.len);
	recw_patch_u16(&w, 13, 4);                      /* the count */
	assert_int_equal(rec_close_decode(&c, w.buf, w.len), -1);
	recw_patch_u16(&w, 13, 2);
	assert_int_equal(rec_close_decode(&c, w.buf, w.len), -1);

	rec_close_encode(&w, &(struct rec_close){ .conn = 9 }, NULL, 0);
	assert_int_equal(rec_close_decode(&c, w.buf, w.len), 0);
	assert_int_equal(c.ids.n, 0);
	assert_whole_only(REC_CLOSE, w.buf, w.len);

	rec_connack_encode(&w, &(struct rec_connack){ .conn = 8, .sid = 77, .rc = 5, .session_present = 1 },
			   ids, 2);
	assert_false(w.oom);
	assert_int_equal(w.len, 8 + 4 + 1 + 1 + 2 + 2 * 2);
	assert_int_equal(rec_connack_decode(&a, w.buf, w.len), 0);
	assert_true(a.conn == 8);
	assert_int_equal(a.sid, 77);
	assert_int_equal(a.rc, 5);
	assert_int_equal(a.session_present, 1);
	assert_int_equal(a.ids.n, 2);
	assert_true(rec_packet_id_next(&a.ids, &id));
	assert_int_equal(id, 1);
	assert_true(rec_packet_id_next(&a.ids, &id));
	assert_int_equal(id, 0xbeef);
	assert_false(rec_packet_id_next(&a.ids, &id));
	assert_whole_only(REC_CONNACK, w.buf, w.len);
	recw_patch_u16(&w, 14, UINT16_MAX);             /* the count */
	assert_int_equal(rec_connack_decode(&a, w.buf, w.len), -1);
	recw_free(&w);
}

static void test_suback_codes(void **state)
{
	const uint8_t codes[4] = { 0, 1, 2, 0x80 };
	struct rec_suback d;
	struct recw w;
	size_t count_off;
	uint8_t code;

	recw_init(&w);
	count_off = rec_suback_begin(&w, &(struct rec_suback){ .conn = 5, .packet_id = 6 });
	for (int i = 0; i < 4; i++)
		rec_suback_add(&w, codes[i]);
	rec_suback_end(&w, count_off, 4);
	assert_false(w.oom);
	assert_int_equal(w.len, 8 + 2 + 2 + 4);
	/* The writer can read back what it granted. */
	assert_memory_equal(rec_suback_codes(&w, count_off), codes, 4);

	assert_int_equal(rec_suback_decode(&d, w.buf, w.len), 0);
	assert_true(d.conn == 5);
	assert_int_equal(d.packet_id, 6);
	assert_int_equal(d.codes.n, 4);
	assert_memory_equal(d.codes.p, codes, 4);       /* the codes are an array */
	for (int i = 0; i < 4; i++) {
		assert_true(rec_suback_next(&d.codes, &code));
		assert_int_equal(code, codes[i]);
	}
	assert_false(rec_suback_next(&d.codes, &code));
	assert_whole_only(REC_SUBACK, w.buf, w.len);

	ASSERT_COUNT_EXACT(suback, REC_SUBACK, &w, count_off, 5, 3);
	recw_free(&w);
}

static void test_deliver_many_targets(void **state)
{
	enum { N = 1000 };
	struct rec_deliver d;
	struct rec_target t;
	struct recw w;
	size_t count_off, want;
	uint32_t i;

	recw_init(&w);
	count_off = rec_deliver_begin(&w, &(struct rec_deliver){ .qos = 1, .topic = STR("big/fan") });
	want = rec_deliver_head_size(&(struct rec_deliver){ .topic = STR("big/fan") });
	for (i = 0; i < N; i++) {
		t = (struct rec_target){ .conn = i, .sid = i * 3, .qos = (uint8_t)(i % 3),
					 .copy = i % 2 ? i + 1000 : 0 };
		want += rec_target_size(&t);
		rec_deliver_add(&w, &t);
	}
	rec_deliver_end(&w, count_off, N);
	assert_false(w.oom);
	assert_int_equal(w.len, want);

	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), 0);
	assert_int_equal(d.qos, 1);
	assert_str(d.topic, "big/fan");
	assert_bytes(d.payload, "");
	assert_int_equal(d.retain, 0);
	assert_int_equal(d.targets.n, N);
	for (i = 0; rec_deliver_next(&d.targets, &t); i++) {
		assert_true(t.conn == i);
		assert_int_equal(t.sid, i * 3);
		assert_int_equal(t.qos, i % 3);
		assert_true(t.copy == (i % 2 ? i + 1000 : 0));
	}
	assert_int_equal(i, N);

	/* Counts that do not match what follows. */
	rec_deliver_end(&w, count_off, N + 1);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);
	rec_deliver_end(&w, count_off, N - 1);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);
	rec_deliver_end(&w, count_off, UINT32_MAX);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);
	recw_free(&w);
}

static void test_deliver_target_copy_flag(void **state)
{
	struct rec_deliver d;
	struct rec_target t;
	struct recw w;
	size_t count_off;

	recw_init(&w);
	/* A qos that claims a copy without one is written as what it is. */
	count_off = rec_deliver_begin(&w, &(struct rec_deliver){ .qos = 2, .topic = STR("t") });
	rec_deliver_add(&w, &(struct rec_target){ .conn = 1, .sid = 2, .qos = 1 | REC_TARGET_COPY });
	rec_deliver_end(&w, count_off, 1);
	assert_int_equal(w.len, count_off + 4 + REC_TARGET_BYTES);
	assert_int_equal(w.buf[w.len - 1], 1);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), 0);
	assert_true(rec_deliver_next(&d.targets, &t));
	assert_int_equal(t.qos, 1);
	assert_true(t.copy == 0);

	/* The flag on the wire with copy id 0 is malformed: 0 means no copy. */
	count_off = rec_deliver_begin(&w, &(struct rec_deliver){ .qos = 2, .topic = STR("t") });
	recw_u64(&w, 1);
	recw_u32(&w, 2);
	recw_u8(&w, 1 | REC_TARGET_COPY);
	recw_u64(&w, 0);
	rec_deliver_end(&w, count_off, 1);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);

	/* The flag whose copy id is missing: the record is cut short. */
	count_off = rec_deliver_begin(&w, &(struct rec_deliver){ .qos = 2, .topic = STR("t") });
	recw_u64(&w, 1);
	recw_u32(&w, 2);
	recw_u8(&w, 1 | REC_TARGET_COPY);
	rec_deliver_end(&w, count_off, 1);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), -1);

	/* A copy id sets the flag and travels with the target. */
	count_off = rec_deliver_begin(&w, &(struct rec_deliver){ .qos = 2, .topic = STR("t") });
	rec_deliver_add(&w, &(struct rec_target){ .conn = 1, .sid = 2, .qos = 2, .copy = UINT64_MAX });
	rec_deliver_end(&w, count_off, 1);
	assert_int_equal(w.len, count_off + 4 + REC_TARGET_BYTES + REC_TARGET_COPY_BYTES);
	assert_int_equal(w.buf[count_off + 4 + REC_TARGET_BYTES - 1], 2 | REC_TARGET_COPY);
	assert_int_equal(rec_deliver_decode(&d, w.buf, w.len), 0);
	assert_true(rec_deliver_next(&d.targets, &t));
	assert_int_equal(t.qos, 2);
	assert_true(t.copy == UINT64_MAX);
	assert_whole_only(REC_DELIVER, w.buf, w.len);
	recw_free(&w);
}

static void test_route_round_trip(void **state)
{
	const struct rec_route_target t[3] = { { 100, 0 }, { 200, 1 }, { UINT64_MAX, 2 } };
	struct rec_route d;
	struct rec_route_target got;
	struct recw w;
	size_t count_off;

	recw_init(&w);
	count_off = rec_route_begin(&w, &(struct rec_route){
		.ask = 7, .gen = 8, .topic = STR("r/t"), .local = 1 });
	for (int i = 0; i < 3; i++)
		rec_route_add(&w, &t[i]);
	rec_route_end(&w, count_off, 3);
	assert_false(w.oom);
	assert_int_equal(w.len, 8 + 8 + (2 + 3) + 1 + 4 + 3 * REC_ROUTE_TARGET_BYTES);

	assert_int_equal(rec_route_decode(&d, w.buf, w.len), 0);
	assert_true(d.ask == 7 && d.gen == 8);
	assert_str(d.topic, "r/t");
	assert_int_equal(d.local, 1);
	assert_int_equal(d.targets.n, 3);
	for (int i = 0; i < 3; i++) {
		assert_true(rec_route_next(&d.targets, &got));
		assert_true(got.conn == t[i].conn);
		assert_int_equal(got.qos, t[i].qos);
	}
	assert_false(rec_route_next(&d.targets, &got));
	assert_whole_only(REC_ROUTE, w.buf, w.len);

	ASSERT_COUNT_EXACT(route, REC_ROUTE, &w, count_off, 4, 2, UINT32_MAX);

	/* Not local: no targets. */
	count_off = rec_route_begin(&w, &(struct rec_route){ .ask = 1, .gen = 2, .topic = STR("x") });
	rec_route_end(&w, count_off, 0);
	assert_int_equal(rec_route_decode(&d, w.buf, w.len), 0);
	assert_int_equal(d.local, 0);
	assert_int_equal(d.targets.n, 0);
	assert_whole_only(REC_ROUTE, w.buf, w.len);
	recw_free(&w);
}

static void test_validate_knows_every_type(void **state)
{
	static const uint8_t kick[8] = { 1 };

	for (int t = REC_CONNECT; t < REC_TYPE_MAX; t++)
		assert_int_equal(rec_validate((uint16_t)t, NULL, 0), -1);   /* nothing is empty */
	assert_int_equal(rec_validate(REC_KICK, kick, sizeof(kick)), 0);
	assert_int_equal(rec_validate(0, kick, sizeof(kick)), -1);
	assert_int_equal(rec_validate(REC_TYPE_MAX, kick, sizeof(kick)), -1);
	assert_int_equal(rec_validate(0xffff, NULL, 0), -1);
}

static void test_encode_starts_afresh_and_keeps_oom(void **state)
{
	struct rec_kick k;
	struct recw w;
	size_t count_off;

	recw_init(&w);
	recw_u32(&w, 0xdeadbeef);                       /* left over from another record */
	rec_kick_encode(&w, &(struct rec_kick){ .conn = 3 });
	assert_int_equal(w.len, 8);
	assert_int_equal(rec_kick_decode(&k, w.buf, w.len), 0);

	/* Once an item could not be written, the record stays spoiled. */
	count_off = rec_deliver_begin(&w, &(struct rec_deliver){ .topic = STR("t") });
	w.oom = true;
	rec_deliver_add(&w, &(struct rec_target){ .conn = 1 });
	rec_deliver_end(&w, count_off, 1);
	assert_true(w.oom);
	assert_int_equal(w.len, count_off + 4);
	assert_null(recw_reserve(&w, 1));
	recw_free(&w);
}

static void test_reserve_hands_out_bytes(void **state)
{
	struct recw w;
	uint8_t *p;

	recw_init(&w);
	p = recw_reserve(&w, 0);
	assert_non_null(p);                             /* even nothing points into a buffer */
	assert_int_equal(w.len, 0);
	recw_u8(&w, 1);
	p = recw_reserve(&w, 1000);
	assert_non_null(p);
	assert_int_equal(w.len, 1001);
	memset(p, 0xab, 1000);
	assert_int_equal(w.buf[0], 1);
	assert_int_equal(w.buf[1000], 0xab);
	recw_free(&w);
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
		cmocka_unit_test(test_publish_layout),
		cmocka_unit_test(test_publish_ask_only_with_its_flag),
		cmocka_unit_test(test_publish_and_deliver_carry_props),
		cmocka_unit_test(test_deliver_layout),
		cmocka_unit_test(test_connect_layout),
		cmocka_unit_test(test_subscribe_round_trip),
		cmocka_unit_test(test_unsubscribe_round_trip),
		cmocka_unit_test(test_session_msg_round_trip),
		cmocka_unit_test(test_fixed_records_round_trip),
		cmocka_unit_test(test_close_and_connack_carry_ids),
		cmocka_unit_test(test_suback_codes),
		cmocka_unit_test(test_deliver_many_targets),
		cmocka_unit_test(test_deliver_target_copy_flag),
		cmocka_unit_test(test_deliver_target_sub_ids),
		cmocka_unit_test(test_route_round_trip),
		cmocka_unit_test(test_validate_knows_every_type),
		cmocka_unit_test(test_encode_starts_afresh_and_keeps_oom),
		cmocka_unit_test(test_reserve_hands_out_bytes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
