/*
 * test_ringout.c - unit tests of a ring's producer end with its overflow
 * backlog: straight into the ring while nothing waits, held in order
 * otherwise, moved into the ring as room appears.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ringout.h"
#include "shmring.h"

#include "ringrec.h"

#define RING_SIZE 4096

struct fixture {
	struct shmring_pctl pctl;
	struct shmring_cctl cctl;
	uint8_t *data;
	struct shmring r;
	struct shmring_producer prod;
	struct shmring_consumer cons;
	struct ringout out;
	uint64_t moved[64];
	unsigned n_moved;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->data = aligned_alloc(64, RING_SIZE);
	assert_non_null(f->data);
	shmring_view(&f->r, &f->pctl, &f->cctl, f->data, RING_SIZE);
	assert_true(shmring_producer_attach(&f->prod, &f->r));
	assert_true(shmring_consumer_attach(&f->cons, &f->r));
	ringout_init(&f->out, &f->prod);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	ringout_clear(&f->out);
	shmring_consumer_detach(&f->cons);
	free(f->data);
	free(f);
	return 0;
}

/* A record of len bytes, each byte tag: tells records apart in the ring. */
static int put(struct fixture *f, uint16_t type, uint32_t len, uint8_t tag)
{
	uint8_t buf[RING_SIZE];

	memset(buf, tag, len);
	return ringout_put(&f->out, type, buf, len);
}

/* Consume one record and check it; its space is given back at once. */
static void expect(struct fixture *f, uint16_t type, uint32_t len, uint8_t tag)
{
	expect_record(&f->cons, type, len, tag);
	shmring_release(&f->cons);
}

static void expect_nothing(struct fixture *f)
{
	assert_null(shmring_peek(&f->cons));
}

static void count_moved(void *arg, const struct ringout_rec *rec)
{
	struct fixture *f = arg;

	assert_true(f->n_moved < sizeof(f->moved) / sizeof(f->moved[0]));
	f->moved[f->n_moved++] = rec->seq;
}

static void straight_into_the_ring_while_nothing_waits(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(put(f, 7, 100, 0xa1), 0);
	assert_int_equal(f->out.n, 0);
	expect_nothing(f);                   /* reserved, not yet published */
	ringout_commit(&f->out);
	expect(f, 7, 100, 0xa1);
	expect_nothing(f);
	assert_false(ringout_commit(&f->out));   /* nothing reserved since */
}

/* Fill the ring with 512-byte records until one is held; returns how many went in. */
static unsigned fill(struct fixture *f)
{
	unsigned in = 0;
	int rc;

	while ((rc = put(f, 1, 512, (uint8_t)in)) == 0)
		in++;
	assert_int_equal(rc, 1);
	return in;
}

static void a_full_ring_holds_in_order_and_flush_moves_them(void **state)
{
	struct fixture *f = *state;
	unsigned in = fill(f);

	assert_true(in > 0);
	assert_int_equal(f->out.n, 1);
	assert_int_equal(f->out.bytes, ringout_cost(512));
	/* Small enough to fit now, but something waits: behind it, not before. */
	ringout_commit(&f->out);
	expect(f, 1, 512, 0);
	assert_int_equal(put(f, 2, 8, 0xb2), 1);
	assert_int_equal(f->out.n, 2);
	errno = 0;
	assert_null(ringout_reserve(&f->out, 3, 8));
	assert_int_equal(errno, EAGAIN);
	/* Drain: the held ones follow the ring's, in the order they were put. */
	for (unsigned i = 1; i < in; i++)
		expect(f, 1, 512, (uint8_t)i);
	assert_int_equal(ringout_flush(&f->out, count_moved, f), 0);
	assert_int_equal(f->out.n, 0);
	assert_int_equal(f->out.bytes, 0);
	assert_null(f->out.head);
	assert_null(f->out.tail);
	assert_int_equal(f->n_moved, 2);
	assert_true(f->moved[0] < f->moved[1]);
	ringout_commit(&f->out);
	expect(f, 1, 512, (uint8_t)in);
	expect(f, 2, 8, 0xb2);
	expect_nothing(f);
	/* Nothing waits any more: straight in again. */
	assert_int_equal(put(f, 3, 8, 0xc3), 0);
}

static void flush_stops_where_the_ring_is_full(void **state)
{
	struct fixture *f = *state;
	unsigned in = fill(f);

	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(put(f, 2, 512, (uint8_t)(0x40 + i)), 1);
	assert_int_equal(f->out.n, 4);
	ringout_commit(&f->out);
	/* Room for two: two move, two stay held, in order. */
	expect(f, 1, 512, 0);
	expect(f, 1, 512, 1);
	assert_int_equal(ringout_flush(&f->out, count_moved, f), 0);
	assert_int_equal(f->n_moved, 2);
	assert_int_equal(f->out.n, 2);
	assert_int_equal(f->out.bytes, 2 * ringout_cost(512));
	ringout_commit(&f->out);
	for (unsigned i = 2; i < in; i++)
		expect(f, 1, 512, (uint8_t)i);
	expect(f, 1, 512, (uint8_t)in);
	expect(f, 2, 512, 0x40);
	expect_nothing(f);
	assert_int_equal(ringout_flush(&f->out, NULL, NULL), 0);
	ringout_commit(&f->out);
	expect(f, 2, 512, 0x41);
	expect(f, 2, 512, 0x42);
	expect_nothing(f);
}

static void a_record_the_ring_can_never_take_is_refused(void **state)
{
	struct fixture *f = *state;
	uint32_t too_big = (uint32_t)shmring_max_payload(RING_SIZE) + 1;
	uint8_t *big = calloc(1, too_big);

	assert_non_null(big);
	errno = 0;
	assert_int_equal(ringout_put(&f->out, 1, big, too_big), -1);
	assert_int_equal(errno, EMSGSIZE);
	/* Also while others wait: held, it would block everything behind it for good. */
	fill(f);
	errno = 0;
	assert_int_equal(ringout_put(&f->out, 1, big, too_big), -1);
	assert_int_equal(errno, EMSGSIZE);
	assert_int_equal(f->out.n, 1);
	free(big);
}

static void held_records_are_numbered_and_a_restored_number_is_kept(void **state)
{
	struct fixture *f = *state;

	/* A restarted producer restores what it held, numbers and all. */
	assert_non_null(ringout_hold(&f->out, 41, 5, "abc", 3));
	assert_int_equal(f->out.next_seq, 42);
	assert_int_equal(put(f, 6, 3, 0x11), 1);
	assert_int_equal(f->out.tail->seq, 42);
	assert_int_equal(f->out.next_seq, 43);
	assert_int_equal(f->out.n, 2);
	ringout_clear(&f->out);
	assert_int_equal(f->out.n, 0);
	assert_int_equal(f->out.bytes, 0);
	assert_null(f->out.head);
	assert_int_equal(put(f, 6, 3, 0x11), 0);
}

static void a_record_moved_into_the_ring_leaves_its_memory_to_the_next(void **state)
{
	struct fixture *f = *state;
	struct ringout_rec *e = ringout_hold(&f->out, 0, 5, "abc", 3);

	assert_non_null(e);
	assert_int_equal(ringout_flush(&f->out, NULL, NULL), 0);
	assert_int_equal(f->out.n, 0);
	assert_int_equal(f->out.spares.bytes, SPARES_STEP);
	assert_ptr_equal(ringout_hold(&f->out, 1, 6, "defg", 4), e);
	assert_int_equal(f->out.spares.bytes, 0);
	assert_memory_equal(f->out.head->data, "defg", 4);
	assert_int_equal(f->out.bytes, ringout_cost(4));
	assert_int_equal(ringout_flush(&f->out, NULL, NULL), 0);
	ringout_commit(&f->out);
	/* teardown's ringout_clear frees the kept one */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(straight_into_the_ring_while_nothing_waits, setup,
						teardown),
		cmocka_unit_test_setup_teardown(a_full_ring_holds_in_order_and_flush_moves_them, setup,
						teardown),
		cmocka_unit_test_setup_teardown(flush_stops_where_the_ring_is_full, setup, teardown),
		cmocka_unit_test_setup_teardown(a_record_the_ring_can_never_take_is_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(held_records_are_numbered_and_a_restored_number_is_kept,
						setup, teardown),
		cmocka_unit_test_setup_teardown(a_record_moved_into_the_ring_leaves_its_memory_to_the_next,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
