/*
 * test_shmring.c - unit tests of the shared-memory record ring: batching,
 * wrap-around, the wake-up protocol, corruption handling, and real
 * producer/consumer pairs (two processes over a memfd mapping, a producer
 * killed mid-stream and replaced, and a threaded pair for TSan).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "role.h"
#include "shmring.h"
#include "stub_log.h"

#define WAIT_MS 10000            /* no legitimate wait in these tests comes close */

/* ---- helpers ----------------------------------------------------------- */

static struct shmring *ring_new(size_t size)
{
	struct shmring *r = aligned_alloc(64, shmring_footprint(size));

	assert_non_null(r);
	memset(r, 0xee, shmring_footprint(size));   /* init must not rely on zeroed memory */
	shmring_init(r, size);
	return r;
}

static void put(struct shmring_producer *p, uint16_t type, uint32_t len, uint8_t fill)
{
	uint8_t *pl = shmring_reserve(p, type, 0, len);

	assert_non_null(pl);
	memset(pl, fill, len);
}

static void expect(struct shmring_consumer *c, uint16_t type, uint32_t len, uint8_t fill)
{
	const struct shmring_rec *rec = shmring_peek(c);
	const uint8_t *pl;

	assert_non_null(rec);
	assert_int_equal(rec->type, type);
	assert_int_equal(rec->len, len);
	pl = shmring_payload(rec);
	for (uint32_t i = 0; i < len; i++)
		assert_int_equal(pl[i], fill);
	shmring_next(c);
}

static void expect_empty(struct shmring_consumer *c)
{
	errno = 0;
	assert_null(shmring_peek(c));
	assert_int_equal(errno, EAGAIN);
}

/* Deterministic content of record number seq, so the consumer can check it. */
static uint32_t seq_len(uint64_t seq)
{
	uint64_t h = seq * 0x9e3779b97f4a7c15ull;

	if ((h >> 59) == 0)                  /* 1 in 32: big, to force wide PADs */
		return 8 + (uint32_t)((h >> 20) % 3000);
	return 8 + (uint32_t)((h >> 20) % 120);
}

static uint8_t seq_byte(uint64_t seq, uint32_t i)
{
	return (uint8_t)(seq * 131 + i * 7 + (seq >> 8));
}

static void seq_fill(uint8_t *pl, uint64_t seq)
{
	uint32_t len = seq_len(seq);

	memcpy(pl, &seq, sizeof(seq));
	for (uint32_t i = sizeof(seq); i < len; i++)
		pl[i] = seq_byte(seq, i);
}

static uint16_t seq_type(uint64_t seq)
{
	return (uint16_t)(1 + seq % 1000);
}

/* NULL when record rec is record number seq; otherwise what is wrong with it. */
static const char *seq_check(const struct shmring_rec *rec, uint64_t seq)
{
	const uint8_t *pl = shmring_payload(rec);
	uint64_t got;

	if (rec->len != seq_len(seq))
		return "wrong length";
	if (rec->type != seq_type(seq) || rec->flags != (uint16_t)(seq >> 3))
		return "wrong type or flags";
	memcpy(&got, pl, sizeof(got));
	if (got != seq)
		return "out of order";
	for (uint32_t i = sizeof(seq); i < rec->len; i++)
		if (pl[i] != seq_byte(seq, i))
			return "wrong content";
	return NULL;
}

/* Sleep on an eventfd for at most ms; -1 on timeout. */
static int efd_wait(int efd, int ms)
{
	struct pollfd pfd = { .fd = efd, .events = POLLIN };
	int n;

	do
		n = poll(&pfd, 1, ms);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	eventfd_drain(efd);
	return 0;
}

enum { PRODUCE_OK = 0, PRODUCE_TIMEOUT = 2, PRODUCE_ERROR = 3, PRODUCE_STOPPED = 4 };

/*
 * Producer side of the real pairs: records [start, end) in batches of
 * varying size, committing before it sleeps on a full ring (otherwise the
 * consumer could have nothing to free).
 */
static int produce(struct shmring *r, int c_efd, int p_efd, uint64_t start, uint64_t end,
		   atomic_bool *stop)
{
	struct shmring_producer p;
	uint64_t seq = start;

	shmring_producer_attach(&p, r);
	while (seq < end) {
		unsigned batch = 1 + (unsigned)(seq % 61);
		bool full = false;

		for (unsigned i = 0; i < batch && seq < end; i++) {
			uint8_t *pl = shmring_reserve(&p, seq_type(seq), (uint16_t)(seq >> 3),
						      seq_len(seq));

			if (!pl) {
				if (errno != EAGAIN)
					return PRODUCE_ERROR;
				full = true;
				break;
			}
			seq_fill(pl, seq++);
		}
		if (shmring_commit(&p))
			eventfd_wake(c_efd);
		if (full && efd_wait(p_efd, WAIT_MS) < 0)
			return PRODUCE_TIMEOUT;
		if (stop && atomic_load(stop))
			return PRODUCE_STOPPED;
	}
	return PRODUCE_OK;
}

/*
 * Consumer side: records *next up to end, checked one by one, sleeping on
 * c_efd when the ring is empty. Returns NULL, or why it failed.
 */
static const char *consume(struct shmring *r, struct shmring_consumer *c, int c_efd, int p_efd,
			   uint64_t *next, uint64_t end)
{
	static char why[160];

	while (*next < end) {
		const struct shmring_rec *rec = shmring_peek(c);

		if (rec) {
			const char *bad = seq_check(rec, *next);

			if (bad) {
				snprintf(why, sizeof(why), "record %llu: %s",
					 (unsigned long long)*next, bad);
				return why;
			}
			shmring_next(c);
			/* Release as we go, or the producer waits for the whole drain. */
			if ((++*next & 63) == 0 && shmring_release(c))
				eventfd_wake(p_efd);
			continue;
		}
		if (errno != EAGAIN) {
			snprintf(why, sizeof(why), "record %llu: peek: %s",
				 (unsigned long long)*next, strerror(errno));
			return why;
		}
		if (shmring_release(c))
			eventfd_wake(p_efd);
		if (!shmring_prepare_sleep(c))
			continue;
		if (efd_wait(c_efd, WAIT_MS) < 0) {
			snprintf(why, sizeof(why),
				 "no wake-up within %d ms waiting for record %llu (lost wake-up?)"
				 " head=%llu tail=%llu c_sleep=%u p_wait=%u", WAIT_MS,
				 (unsigned long long)*next, (unsigned long long)atomic_load(&r->head),
				 (unsigned long long)c->tail, atomic_load(&r->c_sleep),
				 atomic_load(&r->p_wait));
			return why;
		}
		shmring_awake(c);
	}
	if (shmring_release(c))
		eventfd_wake(p_efd);
	return NULL;
}

/* ---- single-threaded behaviour ----------------------------------------- */

static void test_single_record_round_trip(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;
	const struct shmring_rec *rec;
	uint8_t *pl;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	pl = shmring_reserve(&p, 7, 0x55, 5);
	assert_non_null(pl);
	assert_int_equal((uintptr_t)pl % SHMRING_ALIGN, 0);
	memcpy(pl, "hello", 5);
	assert_false(shmring_commit(&p));

	rec = shmring_peek(&c);
	assert_non_null(rec);
	assert_int_equal(rec->type, 7);
	assert_int_equal(rec->flags, 0x55);
	assert_int_equal(rec->len, 5);
	assert_memory_equal(shmring_payload(rec), "hello", 5);
	shmring_next(&c);
	expect_empty(&c);
	assert_false(shmring_release(&c));
	assert_int_equal(atomic_load(&r->tail), 16);   /* 8-byte header + 5 bytes padded to 8 */
	assert_int_equal(atomic_load(&r->head), 16);
	free(r);
}

static void test_batch_commit_publishes_all_at_once(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	for (int i = 0; i < 10; i++) {
		put(&p, (uint16_t)(100 + i), (uint32_t)i * 3, (uint8_t)i);
		expect_empty(&c);            /* reserved is not visible */
	}
	assert_int_equal(atomic_load(&r->head), 0);
	assert_false(shmring_commit(&p));
	for (int i = 0; i < 10; i++)
		expect(&c, (uint16_t)(100 + i), (uint32_t)i * 3, (uint8_t)i);
	expect_empty(&c);
	assert_false(shmring_commit(&p));           /* nothing new: nothing happens */
	free(r);
}

static void test_wrap_around_with_pad_keeps_content(void **state)
{
	const size_t size = 4096;
	struct shmring *r = ring_new(size);
	struct shmring_producer p;
	struct shmring_consumer c;
	uint64_t prod = 0, cons = 0;
	unsigned pads = 0;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	while (cons < 50000) {
		/* Produce until full, then consume a varying part: all offsets get visited. */
		for (;;) {
			uint64_t before = p.head;
			uint8_t *pl = shmring_reserve(&p, seq_type(prod), (uint16_t)(prod >> 3),
						      seq_len(prod) % 1500 + 8);

			if (!pl) {
				assert_int_equal(errno, EAGAIN);
				break;
			}
			/* Placed at the start though we were not there: a PAD went in front. */
			if ((before & (size - 1)) && pl == r->data + SHMRING_ALIGN)
				pads++;
			memcpy(pl, &prod, sizeof(prod));
			memset(pl + 8, (uint8_t)prod, seq_len(prod) % 1500);
			prod++;
		}
		assert_false(shmring_commit(&p));
		for (uint64_t n = (cons * 7) % 13 + 1; n && cons < prod; n--) {
			const struct shmring_rec *rec = shmring_peek(&c);
			uint64_t got;

			assert_non_null(rec);
			assert_int_equal(rec->len, seq_len(cons) % 1500 + 8);
			assert_int_equal(rec->type, seq_type(cons));
			memcpy(&got, shmring_payload(rec), sizeof(got));
			assert_int_equal(got, cons);
			for (uint32_t i = 8; i < rec->len; i++)
				assert_int_equal(((const uint8_t *)shmring_payload(rec))[i],
						 (uint8_t)cons);
			shmring_next(&c);
			cons++;
		}
		shmring_release(&c);
	}
	assert_true(atomic_load(&r->head) > 100 * size);   /* many laps */
	assert_true(pads > 100);
	free(r);
}

static void test_full_ring_returns_eagain_and_release_wakes_producer(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	for (int i = 0; i < 64; i++)                 /* 64 x 64 bytes: exactly full */
		put(&p, 1, 56, (uint8_t)i);
	/* Reserved but uncommitted space counts: the ring is full already. */
	errno = 0;
	assert_null(shmring_reserve(&p, 1, 0, 0));
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(atomic_load(&r->p_wait), 1);
	assert_false(shmring_commit(&p));

	assert_false(shmring_release(&c));           /* nothing consumed: no space given back */
	assert_int_equal(atomic_load(&r->p_wait), 1);
	expect(&c, 1, 56, 0);
	assert_true(shmring_release(&c));            /* space back, producer was waiting */
	assert_int_equal(atomic_load(&r->p_wait), 0);
	expect(&c, 1, 56, 1);
	assert_false(shmring_release(&c));           /* one wake-up per wait */

	/* 128 bytes are free now: 120 payload bytes fit, 121 do not. */
	errno = 0;
	assert_null(shmring_reserve(&p, 1, 0, 121));
	assert_int_equal(errno, EAGAIN);
	put(&p, 2, 120, 0xaa);
	assert_false(shmring_commit(&p));
	for (int i = 2; i < 64; i++)
		expect(&c, 1, 56, (uint8_t)i);
	expect(&c, 2, 120, 0xaa);
	expect_empty(&c);
	free(r);
}

static void test_prepare_sleep_true_only_when_empty(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	assert_true(shmring_prepare_sleep(&c));
	assert_int_equal(atomic_load(&r->c_sleep), 1);
	shmring_awake(&c);
	assert_int_equal(atomic_load(&r->c_sleep), 0);

	put(&p, 3, 4, 9);
	assert_false(shmring_commit(&p));
	/* A record arrived between the last peek and going to sleep. */
	assert_false(shmring_prepare_sleep(&c));
	assert_int_equal(atomic_load(&r->c_sleep), 0);
	expect(&c, 3, 4, 9);
	/* Read but not released still counts as empty: the consumer has seen it. */
	assert_true(shmring_prepare_sleep(&c));
	free(r);
}

static void test_commit_reports_wake_exactly_when_consumer_sleeps(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	put(&p, 1, 1, 1);
	assert_false(shmring_commit(&p));            /* consumer awake */
	expect(&c, 1, 1, 1);
	assert_true(shmring_prepare_sleep(&c));
	assert_false(shmring_commit(&p));            /* nothing to publish: no wake-up */
	put(&p, 1, 2, 2);
	assert_true(shmring_commit(&p));             /* consumer asleep */
	assert_int_equal(atomic_load(&r->c_sleep), 0);
	put(&p, 1, 3, 3);
	assert_false(shmring_commit(&p));            /* already woken once */
	expect(&c, 1, 2, 2);
	expect(&c, 1, 3, 3);
	assert_true(shmring_prepare_sleep(&c));
	shmring_awake(&c);
	put(&p, 1, 4, 4);
	assert_false(shmring_commit(&p));            /* consumer woke up by itself */
	free(r);
}

static void test_discard_drops_stale_records(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;

	shmring_producer_attach(&p, r);
	while (shmring_reserve(&p, 5, 0, 100))
		;
	assert_int_equal(atomic_load(&r->p_wait), 1);
	shmring_commit(&p);

	/* A new consumer, as after a restart: stale records must not reach it. */
	shmring_consumer_attach(&c, r);
	shmring_discard(&c);
	expect_empty(&c);
	assert_true(shmring_release(&c));            /* all space back: wake the producer */
	assert_int_equal(atomic_load(&r->tail), atomic_load(&r->head));

	put(&p, 6, 10, 0x42);
	shmring_commit(&p);
	expect(&c, 6, 10, 0x42);
	expect_empty(&c);
	free(r);
}

static void test_max_payload_fits_at_every_offset(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring *big = ring_new(1 << 20);
	struct shmring_producer p;
	struct shmring_consumer c;
	uint32_t max;

	assert_int_equal(shmring_max_payload(r), 4096 / 2 - sizeof(struct shmring_rec));
	assert_int_equal(shmring_max_payload(big), (1 << 19) - sizeof(struct shmring_rec));
	max = (uint32_t)shmring_max_payload(r);

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);
	errno = 0;
	assert_null(shmring_reserve(&p, 1, 0, max + 1));
	assert_int_equal(errno, EMSGSIZE);
	assert_int_equal(atomic_load(&r->p_wait), 0);   /* too big is not full */
	for (uint32_t round = 0; round < 1024; round++) {
		/* A small record of varying size in front moves the big one around. */
		put(&p, 1, round % 72, 1);
		put(&p, 2, max, (uint8_t)round);
		shmring_commit(&p);
		expect(&c, 1, round % 72, 1);
		expect(&c, 2, max, (uint8_t)round);
		shmring_release(&c);
	}
	free(big);
	free(r);
}

/* Publish raw bytes as if a producer had written them. */
static void raw_publish(struct shmring *r, uint64_t at, const struct shmring_rec *hdr,
			uint64_t new_head)
{
	memcpy(r->data + (at & (r->size - 1)), hdr, sizeof(*hdr));
	atomic_store(&r->head, new_head);
}

static void expect_corrupt(struct shmring_consumer *c)
{
	errno = 0;
	assert_null(shmring_peek(c));
	assert_int_equal(errno, EBADMSG);
	assert_int_equal(c->tail, atomic_load(&c->r->head));   /* skipped, not stuck */
	expect_empty(c);
}

static void test_corruption_detected_without_crash(void **state)
{
	struct shmring *r = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;
	uint64_t h;

	shmring_producer_attach(&p, r);
	shmring_consumer_attach(&c, r);

	/* A length running past head. */
	raw_publish(r, 0, &(struct shmring_rec){ .len = 9, .type = 1 }, 16);
	expect_corrupt(&c);
	/* A length running past the end of the ring, within head. */
	h = atomic_load(&r->head);
	raw_publish(r, h, &(struct shmring_rec){ .len = 0xfffffff0u, .type = 1 }, h + 4000);
	expect_corrupt(&c);
	/* A PAD that stops short of the end. */
	h = atomic_load(&r->head);
	raw_publish(r, h, &(struct shmring_rec){ .len = 8, .type = SHMRING_PAD }, h + 16);
	expect_corrupt(&c);
	/* head more than a ring ahead, and head behind tail. */
	h = atomic_load(&r->head);
	raw_publish(r, h, &(struct shmring_rec){ .len = 0, .type = 1 }, h + 8192);
	expect_corrupt(&c);
	h = atomic_load(&r->head);
	atomic_store(&r->head, h - 8);
	errno = 0;
	assert_null(shmring_peek(&c));
	assert_int_equal(errno, EBADMSG);
	/* Misaligned head: the consumer skips to it, then finds its own tail misaligned. */
	h = atomic_load(&r->head);
	atomic_store(&r->head, h + 4);
	expect_corrupt(&c);
	atomic_store(&r->head, h + 4 + 16);
	expect_corrupt(&c);
	/* A partial header: fewer than 8 bytes published. */
	h = (atomic_load(&r->head) + 7) & ~7ull;
	c.tail = h;
	atomic_store(&r->head, h + 4);
	expect_corrupt(&c);

	/* The ring still works for a producer that resumes from a sane head. */
	atomic_store(&r->head, h + 64);
	c.tail = h + 64;
	shmring_release(&c);
	shmring_producer_attach(&p, r);
	put(&p, 9, 33, 0x33);
	shmring_commit(&p);
	expect(&c, 9, 33, 0x33);
	free(r);
}

/* ---- real producer/consumer pairs -------------------------------------- */

#define PAIR_RING_SIZE 65536

struct pair {
	struct shmring *r;
	size_t map_len;
	int memfd, c_efd, p_efd;
	pid_t child;
};

static int pair_setup(void **state)
{
	struct pair *t = calloc(1, sizeof(*t));

	if (!t)
		return -1;
	t->child = -1;
	t->map_len = shmring_footprint(PAIR_RING_SIZE);
	/* The supervisor's layout: one memfd, mapped shared, set up before fork. */
	t->memfd = memfd_create("iotd-test-ring", MFD_CLOEXEC);
	if (t->memfd < 0 || ftruncate(t->memfd, (off_t)t->map_len) < 0)
		return -1;
	t->r = mmap(NULL, t->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd, 0);
	if (t->r == MAP_FAILED)
		return -1;
	shmring_init(t->r, PAIR_RING_SIZE);
	t->c_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	t->p_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (t->c_efd < 0 || t->p_efd < 0)
		return -1;
	*state = t;
	return 0;
}

static int pair_teardown(void **state)
{
	struct pair *t = *state;

	if (t->child > 0) {                          /* a failed test leaves its child behind */
		kill(t->child, SIGKILL);
		waitpid(t->child, NULL, 0);
	}
	munmap(t->r, t->map_len);
	close(t->memfd);
	close(t->c_efd);
	close(t->p_efd);
	free(t);
	return 0;
}

static pid_t spawn_producer(struct pair *t, uint64_t start, uint64_t end)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0)
		_exit(produce(t->r, t->c_efd, t->p_efd, start, end, NULL));
	t->child = pid;
	return pid;
}

static int reap(struct pair *t)
{
	int status;

	assert_int_equal(waitpid(t->child, &status, 0), t->child);
	t->child = -1;
	return status;
}

static void test_two_processes_million_records_no_lost_wakeup(void **state)
{
	struct pair *t = *state;
	struct shmring_consumer c;
	uint64_t next = 0;
	const char *why;
	int status;

	shmring_consumer_attach(&c, t->r);
	spawn_producer(t, 0, 1000000);
	why = consume(t->r, &c, t->c_efd, t->p_efd, &next, 1000000);
	if (why)
		fail_msg("consumer: %s", why);
	status = reap(t);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), PRODUCE_OK);
	expect_empty(&c);
}

/* Drain without sleeping: whatever a dead producer committed. */
static void drain_committed(struct shmring_consumer *c, uint64_t *next)
{
	const struct shmring_rec *rec;

	while ((rec = shmring_peek(c))) {
		const char *bad = seq_check(rec, *next);

		if (bad)
			fail_msg("record %llu after the kill: %s", (unsigned long long)*next, bad);
		shmring_next(c);
		++*next;
	}
	assert_int_equal(errno, EAGAIN);
	shmring_release(c);
}

static void test_killed_producer_replaced_consumer_sees_whole_records(void **state)
{
	struct pair *t = *state;
	struct shmring_consumer c;
	uint64_t next = 0;
	const char *why;
	int status;
	pid_t pid;

	shmring_consumer_attach(&c, t->r);

	/* 1. An endless producer, killed at whatever point it has reached. */
	spawn_producer(t, 0, UINT64_MAX);
	why = consume(t->r, &c, t->c_efd, t->p_efd, &next, 100000);
	if (why)
		fail_msg("first producer: %s", why);
	kill(t->child, SIGKILL);
	status = reap(t);
	assert_true(WIFSIGNALED(status));
	drain_committed(&c, &next);

	/* 2. Its successor continues, then dies holding a ring full of uncommitted garbage. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct shmring_producer p;
		uint8_t *pl;
		int rc = produce(t->r, t->c_efd, t->p_efd, next, next + 1000, NULL);

		if (rc != PRODUCE_OK)
			_exit(rc);
		shmring_producer_attach(&p, t->r);
		while ((pl = shmring_reserve(&p, 0xbad, 0xbad, 200)))
			memset(pl, 0xa5, 200);
		kill(getpid(), SIGKILL);
		_exit(PRODUCE_ERROR);
	}
	t->child = pid;
	why = consume(t->r, &c, t->c_efd, t->p_efd, &next, next + 1000);
	if (why)
		fail_msg("second producer: %s", why);
	status = reap(t);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGKILL);
	expect_empty(&c);                           /* the garbage was never published */

	/* 3. A third producer overwrites the garbage and runs to completion. */
	eventfd_drain(t->p_efd);
	spawn_producer(t, next, next + 200000);
	why = consume(t->r, &c, t->c_efd, t->p_efd, &next, next + 200000);
	if (why)
		fail_msg("third producer: %s", why);
	status = reap(t);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), PRODUCE_OK);
	expect_empty(&c);
}

struct thread_producer {
	struct pair *t;
	uint64_t end;
	atomic_bool stop;
	int rc;
};

static void *thread_produce(void *arg)
{
	struct thread_producer *tp = arg;

	tp->rc = produce(tp->t->r, tp->t->c_efd, tp->t->p_efd, 0, tp->end, &tp->stop);
	return NULL;
}

/* The same protocol between two threads: what ThreadSanitizer can check. */
static void test_two_threads_records_in_order(void **state)
{
	struct pair *t = *state;
	struct thread_producer tp = { .t = t, .end = 300000 };
	struct shmring_consumer c;
	pthread_t th;
	uint64_t next = 0;
	const char *why;

	atomic_init(&tp.stop, false);
	shmring_consumer_attach(&c, t->r);
	assert_int_equal(pthread_create(&th, NULL, thread_produce, &tp), 0);
	why = consume(t->r, &c, t->c_efd, t->p_efd, &next, tp.end);
	if (why) {
		atomic_store(&tp.stop, true);
		eventfd_wake(t->p_efd);
	}
	pthread_join(th, NULL);
	if (why)
		fail_msg("consumer: %s", why);
	assert_int_equal(tp.rc, PRODUCE_OK);
	expect_empty(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_record_round_trip),
		cmocka_unit_test(test_batch_commit_publishes_all_at_once),
		cmocka_unit_test(test_wrap_around_with_pad_keeps_content),
		cmocka_unit_test(test_full_ring_returns_eagain_and_release_wakes_producer),
		cmocka_unit_test(test_prepare_sleep_true_only_when_empty),
		cmocka_unit_test(test_commit_reports_wake_exactly_when_consumer_sleeps),
		cmocka_unit_test(test_discard_drops_stale_records),
		cmocka_unit_test(test_max_payload_fits_at_every_offset),
		cmocka_unit_test(test_corruption_detected_without_crash),
		cmocka_unit_test_setup_teardown(test_two_processes_million_records_no_lost_wakeup,
						pair_setup, pair_teardown),
		cmocka_unit_test_setup_teardown(test_killed_producer_replaced_consumer_sees_whole_records,
						pair_setup, pair_teardown),
		cmocka_unit_test_setup_teardown(test_two_threads_records_in_order,
						pair_setup, pair_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
