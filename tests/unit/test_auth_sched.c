/*
 * test_auth_sched.c - the order in which the auth role's threads decide
 * jobs (daemon/auth_sched.c): channels served in turn within their
 * budget, one job in flight per failing address with a bounded number
 * waiting behind it, jobs taken out of the queues when cancelled.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../../daemon/auth_int.h"

static struct auth_job jobs[32];

/* Job i of worker w; from address addr (0: none). */
static struct auth_job *job(unsigned i, unsigned w, uint8_t addr)
{
	struct auth_job *j = &jobs[i];

	memset(j, 0, sizeof(*j));
	j->worker = w;
	j->conn = i;
	if (addr != 0) {
		j->has_key = true;
		j->key.b[15] = addr;
	}
	return j;
}

static void no_free(struct auth_job *j)
{
	(void)j;
}

static void channels_take_turns_within_their_budget(void **state)
{
	struct auth_sched s;

	/*
	 * Four threads, two workers: the pool holds two jobs per thread, and
	 * each channel may have three threads' worth (six) at once.
	 */
	auth_sched_init(&s, 2, 4);
	assert_int_equal(s.budget, 6);
	assert_int_equal(s.slots, 8);
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(auth_sched_add(&s, job(i, 0, 0), false, 4), SCHED_READY);
	for (unsigned i = 0; i < 6; i++)
		assert_ptr_equal(auth_sched_next(&s), &jobs[i]);
	/* Worker 0 has its six: the last thread's two are left for worker 1. */
	assert_null(auth_sched_next(&s));
	assert_int_equal(auth_sched_add(&s, job(10, 1, 0), false, 4), SCHED_READY);
	assert_int_equal(auth_sched_add(&s, job(11, 1, 0), false, 4), SCHED_READY);
	assert_int_equal(auth_sched_add(&s, job(12, 1, 0), false, 4), SCHED_READY);
	assert_ptr_equal(auth_sched_next(&s), &jobs[10]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[11]);
	assert_null(auth_sched_next(&s));        /* the pool is full */
	/* Served in turn: worker 0 (after worker 1's job), then worker 1. */
	auth_sched_hashed(&s, &jobs[0]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[6]);
	auth_sched_hashed(&s, &jobs[1]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[12]);
	auth_sched_clear(&s, no_free);
	/* Fewer threads than workers: one thread's worth each. */
	auth_sched_init(&s, 4, 2);
	assert_int_equal(s.budget, 2);
}

static void a_failing_address_has_one_job_in_flight(void **state)
{
	struct auth_sched s;

	auth_sched_init(&s, 1, 4);
	/* Not failing: any number at once. */
	assert_int_equal(auth_sched_add(&s, job(0, 0, 7), false, 1), SCHED_READY);
	assert_int_equal(auth_sched_add(&s, job(1, 0, 7), false, 1), SCHED_READY);
	assert_null(jobs[0].addr);
	/* Failing: the first goes, one waits, the next is refused. */
	assert_int_equal(auth_sched_add(&s, job(2, 0, 9), true, 1), SCHED_READY);
	assert_int_equal(auth_sched_add(&s, job(3, 0, 9), true, 1), SCHED_WAITING);
	assert_int_equal(auth_sched_add(&s, job(4, 0, 9), true, 1), SCHED_FULL);
	/* Another address is not held by it. */
	assert_int_equal(auth_sched_add(&s, job(5, 0, 8), true, 1), SCHED_READY);
	assert_ptr_equal(auth_sched_next(&s), &jobs[0]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[1]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[2]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[5]);
	auth_sched_hashed(&s, &jobs[2]);
	assert_null(auth_sched_next(&s));        /* 3 waits until 2 is done, not hashed */
	jobs[2].state = JOB_DELAYED;
	assert_ptr_equal(auth_sched_release(&s, &jobs[2]), &jobs[3]);
	assert_int_equal(jobs[3].state, JOB_READY);
	assert_ptr_equal(auth_sched_next(&s), &jobs[3]);
	/* While 3 is in flight the address is still held; once done, it is forgotten. */
	assert_int_equal(auth_sched_add(&s, job(6, 0, 9), false, 1), SCHED_WAITING);
	assert_true(auth_sched_remove(&s, &jobs[6]));
	assert_null(auth_sched_release(&s, &jobs[6]));
	auth_sched_hashed(&s, &jobs[3]);
	assert_null(auth_sched_release(&s, &jobs[3]));
	auth_sched_hashed(&s, &jobs[5]);
	assert_null(auth_sched_release(&s, &jobs[5]));
	assert_null(s.addrs);
	auth_sched_clear(&s, no_free);
}

static void a_cancelled_job_leaves_the_queues(void **state)
{
	struct auth_sched s;

	auth_sched_init(&s, 1, 1);
	assert_int_equal(auth_sched_add(&s, job(0, 0, 0), false, 4), SCHED_READY);
	assert_int_equal(auth_sched_add(&s, job(1, 0, 9), true, 4), SCHED_READY);
	assert_int_equal(auth_sched_add(&s, job(2, 0, 9), true, 4), SCHED_WAITING);
	assert_int_equal(auth_sched_add(&s, job(3, 0, 9), true, 4), SCHED_WAITING);
	assert_ptr_equal(auth_sched_next(&s), &jobs[0]);
	/* With a thread: it stays until it is decided. */
	assert_false(auth_sched_remove(&s, &jobs[0]));
	/* Waiting: out at once, the others stay in order. */
	assert_true(auth_sched_remove(&s, &jobs[2]));
	assert_null(auth_sched_release(&s, &jobs[2]));
	/* Ready and in flight for its address: out, and the next behind it is ready. */
	assert_true(auth_sched_remove(&s, &jobs[1]));
	assert_ptr_equal(auth_sched_release(&s, &jobs[1]), &jobs[3]);
	auth_sched_hashed(&s, &jobs[0]);
	assert_ptr_equal(auth_sched_next(&s), &jobs[3]);
	assert_null(auth_sched_next(&s));
	auth_sched_clear(&s, no_free);
	assert_null(s.addrs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(channels_take_turns_within_their_budget),
		cmocka_unit_test(a_failing_address_has_one_job_in_flight),
		cmocka_unit_test(a_cancelled_job_leaves_the_queues),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
