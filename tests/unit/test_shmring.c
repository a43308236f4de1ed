/*
 * test_shmring.c - unit tests of the shared-memory record ring: batching,
 * wrap-around, the wake-up protocol, each end's checks of what the other
 * end published (a consumer never reads outside data[] and keeps a
 * private copy of each record; a producer refuses an impossible tail),
 * repair after a fault, the daemon's read-only mappings (shm.c), and real
 * producer/consumer pairs (two processes over the daemon's regions, a
 * producer killed mid-stream and replaced, and a threaded pair for TSan).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
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
#include "shm.h"
#include "shmring.h"

#include "ringrec.h"

#define WAIT_MS 10000            /* no legitimate wait in these tests comes close */
#define HDR ((uint64_t)sizeof(struct shmring_rec))

/* ---- helpers ----------------------------------------------------------- */

/*
 * A ring in private memory where every byte outside its three parts
 * faults: [guard][pctl ... cctl][guard][data[]][guard], data[] ending
 * exactly at the last guard page (and starting at a guard page when size
 * is a multiple of the page size, as every ring here is on x86-64). A
 * read out of bounds kills the test instead of going unnoticed.
 */
struct tring {
	struct shmring r;            /* the view both ends are given */
	struct shmring_pctl *pctl;
	struct shmring_cctl *cctl;
	uint8_t *data;
	size_t size;
	uint8_t *map;
	size_t map_len;
};

static struct tring *ring_new(size_t size)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), data_len = (size + pg - 1) / pg * pg;
	struct tring *t = calloc(1, sizeof(*t));

	assert_non_null(t);
	t->map_len = 4 * pg + data_len;
	t->map = mmap(NULL, t->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(t->map != MAP_FAILED);
	assert_int_equal(mprotect(t->map, pg, PROT_NONE), 0);
	assert_int_equal(mprotect(t->map + 2 * pg, pg, PROT_NONE), 0);
	assert_int_equal(mprotect(t->map + 3 * pg + data_len, pg, PROT_NONE), 0);
	/* Zeroed control parts, as shm_create() makes them; the data holds leftovers. */
	t->pctl = (struct shmring_pctl *)(t->map + pg);
	t->cctl = (struct shmring_cctl *)(t->map + 2 * pg - sizeof(struct shmring_cctl));
	t->data = t->map + 3 * pg + data_len - size;
	t->size = size;
	memset(t->data, 0xee, size);
	shmring_view(&t->r, t->pctl, t->cctl, t->data, size);
	return t;
}

static void ring_free(struct tring *t)
{
	munmap(t->map, t->map_len);
	free(t);
}

/* A ring with its two ends attached: what most tests start from. */
struct ends {
	struct tring *t;
	struct shmring_producer p;
	struct shmring_consumer c;
};

static void ends_open(struct ends *e, size_t size)
{
	e->t = ring_new(size);
	assert_true(shmring_producer_attach(&e->p, &e->t->r));
	assert_true(shmring_consumer_attach(&e->c, &e->t->r));
}

static void ends_close(struct ends *e)
{
	shmring_consumer_detach(&e->c);
	ring_free(e->t);
}

static uint64_t head_of(const struct tring *t)
{
	return atomic_load(&t->pctl->head);
}

static uint64_t tail_of(const struct tring *t)
{
	return atomic_load(&t->cctl->tail);
}

static void put(struct shmring_producer *p, uint16_t type, uint32_t len, uint8_t fill)
{
	uint8_t *pl = shmring_reserve(p, type, 0, len);

	assert_non_null(pl);
	memset(pl, fill, len);
}

static void expect_empty(struct shmring_consumer *c)
{
	errno = 0;
	assert_null(shmring_peek(c));
	assert_int_equal(errno, EAGAIN);
}

static void expect_broken(struct shmring_consumer *c)
{
	errno = 0;
	assert_null(shmring_peek(c));
	assert_int_equal(errno, EBADMSG);
	assert_true(c->broken);
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
 * consumer could have nothing to free). at_tail: start where the consumer
 * stands, as a successor that does not trust its predecessor does.
 */
static int produce(const struct shmring *r, bool at_tail, int c_efd, int p_efd, uint64_t start,
		   uint64_t end, atomic_bool *stop)
{
	struct shmring_producer p;
	uint64_t seq = start;

	if (at_tail)
		shmring_producer_attach_at_tail(&p, r);
	else if (!shmring_producer_attach(&p, r))
		return PRODUCE_ERROR;
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
static const char *consume(struct shmring_consumer *c, int c_efd, int p_efd, uint64_t *next,
			   uint64_t end)
{
	static char why[200];

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
				 (unsigned long long)*next,
				 (unsigned long long)atomic_load(&c->r.pctl->head),
				 (unsigned long long)c->tail, atomic_load(&c->r.cctl->c_sleep),
				 atomic_load(&c->r.pctl->p_wait));
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
	struct ends e;
	const struct shmring_rec *rec;
	uint8_t *pl;

	ends_open(&e, 4096);
	pl = shmring_reserve(&e.p, 7, 0x55, 5);
	assert_non_null(pl);
	assert_int_equal((uintptr_t)pl % SHMRING_ALIGN, 0);
	memcpy(pl, "hello", 5);
	assert_false(shmring_commit(&e.p));

	rec = shmring_peek(&e.c);
	assert_non_null(rec);
	assert_int_equal(rec->type, 7);
	assert_int_equal(rec->flags, 0x55);
	assert_int_equal(rec->len, 5);
	assert_memory_equal(shmring_payload(rec), "hello", 5);
	shmring_next(&e.c);
	expect_empty(&e.c);
	assert_false(shmring_release(&e.c));
	assert_int_equal(tail_of(e.t), 16);         /* 8-byte header + 5 bytes padded to 8 */
	assert_int_equal(head_of(e.t), 16);
	assert_int_equal(shmring_released(&e.c), 16);
	ends_close(&e);
}

static void test_batch_commit_publishes_all_at_once(void **state)
{
	struct ends e;

	ends_open(&e, 4096);
	for (int i = 0; i < 10; i++) {
		put(&e.p, (uint16_t)(100 + i), (uint32_t)i * 3, (uint8_t)i);
		expect_empty(&e.c);          /* reserved is not visible */
	}
	assert_int_equal(head_of(e.t), 0);
	assert_false(shmring_commit(&e.p));
	for (int i = 0; i < 10; i++)
		expect_record(&e.c, (uint16_t)(100 + i), (uint32_t)i * 3, (uint8_t)i);
	expect_empty(&e.c);
	assert_false(shmring_commit(&e.p));         /* nothing new: nothing happens */
	ends_close(&e);
}

static void test_wrap_around_with_pad_keeps_content(void **state)
{
	const size_t size = 4096;
	struct tring *t = ring_new(size);
	struct shmring_producer p;
	struct shmring_consumer c;
	uint64_t prod = 0, cons = 0;
	unsigned pads = 0;

	shmring_producer_attach(&p, &t->r);
	shmring_consumer_attach(&c, &t->r);
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
			if ((before & (size - 1)) && pl == t->data + SHMRING_ALIGN)
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
	assert_true(head_of(t) > 100 * size);       /* many laps */
	assert_true(pads > 100);
	assert_false(p.broken || c.broken);
	shmring_consumer_detach(&c);
	ring_free(t);
}

static void test_full_ring_returns_eagain_and_release_wakes_producer(void **state)
{
	struct ends e;

	ends_open(&e, 4096);
	for (int i = 0; i < 64; i++)                 /* 64 x 64 bytes: exactly full */
		put(&e.p, 1, 56, (uint8_t)i);
	/* Reserved but uncommitted space counts: the ring is full already. */
	errno = 0;
	assert_null(shmring_reserve(&e.p, 1, 0, 0));
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(atomic_load(&e.t->pctl->p_wait), 1); /* odd: waiting */
	assert_false(shmring_commit(&e.p));

	assert_false(shmring_release(&e.c));         /* nothing consumed: no space given back */
	expect_record(&e.c, 1, 56, 0);
	assert_true(shmring_release(&e.c));          /* space back, producer was waiting */
	expect_record(&e.c, 1, 56, 1);
	assert_false(shmring_release(&e.c));         /* one wake-up per wait */

	/* 128 bytes are free now: 120 payload bytes fit, 121 do not (a new wait). */
	errno = 0;
	assert_null(shmring_reserve(&e.p, 1, 0, 121));
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(atomic_load(&e.t->pctl->p_wait), 3);
	put(&e.p, 2, 120, 0xaa);
	assert_int_equal(atomic_load(&e.t->pctl->p_wait), 4); /* room again: not waiting */
	assert_false(shmring_commit(&e.p));
	for (int i = 2; i < 64; i++)
		expect_record(&e.c, 1, 56, (uint8_t)i);
	assert_false(shmring_release(&e.c));         /* the producer stopped waiting by itself */
	expect_record(&e.c, 2, 120, 0xaa);
	expect_empty(&e.c);
	ends_close(&e);
}

static void test_prepare_sleep_true_only_when_empty(void **state)
{
	struct ends e;

	ends_open(&e, 4096);
	assert_true(shmring_prepare_sleep(&e.c));
	assert_int_equal(atomic_load(&e.t->cctl->c_sleep), 1);
	shmring_awake(&e.c);
	assert_int_equal(atomic_load(&e.t->cctl->c_sleep), 2);

	put(&e.p, 3, 4, 9);
	assert_false(shmring_commit(&e.p));
	/* A record arrived between the last peek and going to sleep. */
	assert_false(shmring_prepare_sleep(&e.c));
	assert_int_equal(atomic_load(&e.t->cctl->c_sleep) & 1, 0);
	expect_record(&e.c, 3, 4, 9);
	/* Read but not released still counts as empty: the consumer has seen it. */
	assert_true(shmring_prepare_sleep(&e.c));
	assert_int_equal(atomic_load(&e.t->cctl->c_sleep) & 1, 1);
	ends_close(&e);
}

static void test_commit_reports_wake_exactly_when_consumer_sleeps(void **state)
{
	struct ends e;

	ends_open(&e, 4096);
	put(&e.p, 1, 1, 1);
	assert_false(shmring_commit(&e.p));          /* consumer awake */
	expect_record(&e.c, 1, 1, 1);
	assert_true(shmring_prepare_sleep(&e.c));
	assert_false(shmring_commit(&e.p));          /* nothing to publish: no wake-up */
	put(&e.p, 1, 2, 2);
	assert_true(shmring_commit(&e.p));           /* consumer asleep */
	put(&e.p, 1, 3, 3);
	assert_false(shmring_commit(&e.p));          /* this sleep was answered already */
	expect_record(&e.c, 1, 2, 2);
	expect_record(&e.c, 1, 3, 3);
	assert_true(shmring_prepare_sleep(&e.c));
	shmring_awake(&e.c);
	put(&e.p, 1, 4, 4);
	assert_false(shmring_commit(&e.p));          /* consumer woke up by itself */
	ends_close(&e);
}

/*
 * The flags are generation counters: every sleep (and every wait) is a new
 * value, answered once; a spurious wake-up followed by a new sleep is a new
 * sleep. A restarted producer answers a sleep its predecessor had answered
 * already, and so does a restarted consumer for a wait.
 */
static void test_one_wakeup_per_sleep_generation_and_after_a_restart(void **state)
{
	struct tring *t = ring_new(4096);
	struct shmring_producer p, p2;
	struct shmring_consumer c, c2;
	uint32_t gen;

	shmring_producer_attach(&p, &t->r);
	shmring_consumer_attach(&c, &t->r);
	assert_true(shmring_prepare_sleep(&c));
	gen = atomic_load(&t->cctl->c_sleep);
	assert_int_equal(gen & 1, 1);
	put(&p, 1, 8, 1);
	assert_true(shmring_commit(&p));
	put(&p, 1, 8, 2);
	assert_false(shmring_commit(&p));            /* same generation: once */
	assert_int_equal(atomic_load(&t->cctl->c_sleep), gen);
	/* Woken without reading (spurious), asleep again: a new generation. */
	assert_false(shmring_prepare_sleep(&c));     /* records are there */
	expect_record(&c, 1, 8, 1);
	expect_record(&c, 1, 8, 2);
	assert_true(shmring_prepare_sleep(&c));
	assert_true(atomic_load(&t->cctl->c_sleep) != gen);
	gen = atomic_load(&t->cctl->c_sleep);
	assert_true(shmring_prepare_sleep(&c));      /* slept again without waking: new value */
	assert_true(atomic_load(&t->cctl->c_sleep) != gen);
	put(&p, 1, 8, 3);
	assert_true(shmring_commit(&p));
	put(&p, 1, 8, 4);
	assert_false(shmring_commit(&p));

	/* The producer dies after the wake-up; its successor wakes the same sleep again. */
	assert_true(shmring_producer_attach(&p2, &t->r));
	put(&p2, 1, 8, 5);
	assert_true(shmring_commit(&p2));
	put(&p2, 1, 8, 6);
	assert_false(shmring_commit(&p2));
	/* And one that starts at the consumer's tail, too. */
	shmring_release(&c);
	shmring_producer_attach_at_tail(&p, &t->r);
	put(&p, 1, 8, 7);
	assert_true(shmring_commit(&p));
	shmring_consumer_resync(&c);
	expect_record(&c, 1, 8, 7);
	expect_empty(&c);
	shmring_awake(&c);
	assert_int_equal(atomic_load(&t->cctl->c_sleep) & 1, 0);

	/* The same for p_wait: one wake-up per wait, and again from a new consumer. */
	while (shmring_reserve(&p, 2, 0, 100))
		;
	assert_int_equal(errno, EAGAIN);
	gen = atomic_load(&t->pctl->p_wait);
	assert_int_equal(gen & 1, 1);
	assert_false(shmring_commit(&p));
	assert_non_null(shmring_peek(&c));
	shmring_next(&c);
	assert_true(shmring_release(&c));
	assert_non_null(shmring_peek(&c));
	shmring_next(&c);
	assert_false(shmring_release(&c));           /* this wait was answered already */
	assert_true(shmring_consumer_attach(&c2, &t->r));
	assert_non_null(shmring_peek(&c2));
	shmring_next(&c2);
	assert_true(shmring_release(&c2));           /* a restarted consumer answers it again */
	assert_int_equal(atomic_load(&t->pctl->p_wait), gen);
	shmring_consumer_detach(&c2);
	shmring_consumer_detach(&c);
	ring_free(t);
}

static void test_discard_drops_stale_records(void **state)
{
	struct tring *t = ring_new(4096);
	struct shmring_producer p;
	struct shmring_consumer c;

	shmring_producer_attach(&p, &t->r);
	while (shmring_reserve(&p, 5, 0, 100))
		;
	assert_int_equal(atomic_load(&t->pctl->p_wait), 1);
	shmring_commit(&p);

	/* A new consumer, as after a restart: stale records must not reach it. */
	assert_true(shmring_consumer_attach(&c, &t->r));
	shmring_discard(&c);
	expect_empty(&c);
	assert_true(shmring_release(&c));            /* all space back: wake the producer */
	assert_int_equal(tail_of(t), head_of(t));

	put(&p, 6, 10, 0x42);
	shmring_commit(&p);
	expect_record(&c, 6, 10, 0x42);
	expect_empty(&c);
	shmring_consumer_detach(&c);
	ring_free(t);
}

static void test_max_payload_fits_at_every_offset(void **state)
{
	struct ends e;
	uint32_t max;

	assert_int_equal(shmring_max_payload(4096), 4096 / 2 - HDR);
	assert_int_equal(shmring_max_payload(1 << 20), (1 << 19) - HDR);
	max = (uint32_t)shmring_max_payload(4096);

	ends_open(&e, 4096);
	errno = 0;
	assert_null(shmring_reserve(&e.p, 1, 0, max + 1));
	assert_int_equal(errno, EMSGSIZE);
	assert_int_equal(atomic_load(&e.t->pctl->p_wait), 0); /* too big is not full */
	for (uint32_t round = 0; round < 1024; round++) {
		/* A small record of varying size in front moves the big one around. */
		put(&e.p, 1, round % 72, 1);
		put(&e.p, 2, max, (uint8_t)round);
		shmring_commit(&e.p);
		expect_record(&e.c, 1, round % 72, 1);
		expect_record(&e.c, 2, max, (uint8_t)round);
		shmring_release(&e.c);
	}
	ends_close(&e);
}

/* ---- a hostile producer: what the consumer does with what it finds ----- */

/* Drop whatever is published and give the space back: the repair after a fault. */
static void repair(struct shmring_consumer *c)
{
	shmring_discard(c);
	assert_false(c->broken);
	assert_int_equal(c->tail, atomic_load(&c->r.pctl->head));
	shmring_release(c);
	expect_empty(c);
}

/* Broken, and it stays so whatever the producer publishes next, until repaired. */
static void expect_sticky_broken(struct tring *t, struct shmring_consumer *c, uint64_t sane_head)
{
	uint64_t tail = c->tail;

	expect_broken(c);
	expect_broken(c);
	assert_int_equal(c->tail, tail);            /* not moved by what it refused */
	atomic_store(&t->pctl->head, sane_head);
	expect_broken(c);
	assert_false(shmring_consumer_seek(c, sane_head));
	assert_true(shmring_prepare_sleep(c));      /* nothing to read until repaired */
	assert_int_equal(c->tail, tail);
	repair(c);
}

/* After a repair, an honest producer at the published head is heard clearly. */
static void expect_works_again(struct tring *t, struct shmring_consumer *c)
{
	struct shmring_producer p;

	assert_true(shmring_producer_attach(&p, &t->r));
	put(&p, 9, 33, 0x33);
	shmring_commit(&p);
	expect_record(c, 9, 33, 0x33);
	expect_empty(c);
}

/*
 * One record header written at counter 'at' where the consumer stands,
 * then 'head' published: the consumer must refuse it without reading a
 * byte outside data[] (guard pages), stay broken until discarded, then
 * work again.
 */
static void hostile_record(size_t size, uint64_t at, struct shmring_rec hdr, uint64_t head)
{
	struct tring *t = ring_new(size);
	struct shmring_consumer c;

	atomic_store(&t->cctl->tail, at);
	atomic_store(&t->pctl->head, at);
	assert_true(shmring_consumer_attach(&c, &t->r));
	memcpy(t->data + (at & (size - 1)), &hdr, sizeof(hdr));
	atomic_store(&t->pctl->head, head);
	expect_sticky_broken(t, &c, at);
	expect_works_again(t, &c);
	shmring_consumer_detach(&c);
	ring_free(t);
}

static void test_consumer_refuses_impossible_records_within_bounds(void **state)
{
	const size_t size = 4096;
	uint64_t lap = 7 * size;                    /* counters far from 0: masking matters */

	/* A length running past the published head. */
	hostile_record(size, lap, (struct shmring_rec){ .len = 9, .type = 1 }, lap + 16);
	/* A length running past the end of the ring, within head: the copy would fault. */
	hostile_record(size, lap + size - 16, (struct shmring_rec){ .len = 100, .type = 1 },
		       lap + size - 16 + 200);
	hostile_record(size, lap + size - 8, (struct shmring_rec){ .len = 8, .type = 1 },
		       lap + size - 8 + 64);
	/* The largest length there is: its size must not wrap around. */
	hostile_record(size, lap, (struct shmring_rec){ .len = UINT32_MAX, .type = 1 },
		       lap + size);
	hostile_record(size, lap + size - 16, (struct shmring_rec){ .len = UINT32_MAX - 7,
		       .type = SHMRING_PAD }, lap + size);
	/* A whole ring in one record: within every bound but the payload limit. */
	hostile_record(size, lap, (struct shmring_rec){ .len = size - HDR, .type = 1 }, lap + size);
	hostile_record(size, lap, (struct shmring_rec){ .len = size / 2, .type = 1 }, lap + size);
	/* A PAD that stops short of the end, and one that runs past it. */
	hostile_record(size, lap, (struct shmring_rec){ .len = 8, .type = SHMRING_PAD }, lap + 32);
	hostile_record(size, lap + size - 16, (struct shmring_rec){ .len = 100,
		       .type = SHMRING_PAD }, lap + size + 128);
	/* The same on a ring larger than a page. */
	hostile_record(65536, 3 * 65536 - 24, (struct shmring_rec){ .len = 4000, .type = 1 },
		       3 * 65536 + 4096);
}

/* The producer's head moving in ways no producer's head can. */
static void test_consumer_refuses_impossible_heads(void **state)
{
	const size_t size = 4096;
	struct {
		const char *what;
		int64_t from_head;                  /* the bad head, relative to the one seen */
		int64_t from_tail;                  /* or relative to the consumer's tail, if != 0 */
	} cases[] = {
		{ "backwards, still ahead of the tail", -16, 0 },
		{ "behind the tail", 0, -8 },
		{ "more than a ring ahead of the tail", 0, (int64_t)size + 8 },
		{ "far ahead", (int64_t)1 << 62, 0 },
		{ "misaligned", 4, 0 },
		{ "misaligned by one", 1, 0 },
	};

	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		struct tring *t = ring_new(size);
		struct shmring_producer p;
		struct shmring_consumer c;
		uint64_t seen, bad;

		shmring_producer_attach(&p, &t->r);
		shmring_consumer_attach(&c, &t->r);
		for (int i = 0; i < 4; i++)
			put(&p, 1, 8, (uint8_t)i);
		shmring_commit(&p);
		expect_record(&c, 1, 8, 0);                /* seen head 64, tail 16 */
		seen = head_of(t);
		bad = cases[k].from_tail ? c.tail + (uint64_t)cases[k].from_tail
					 : seen + (uint64_t)cases[k].from_head;
		atomic_store(&t->pctl->head, bad);
		print_message("head %s: %llu (seen %llu, tail %llu)\n", cases[k].what,
			      (unsigned long long)bad, (unsigned long long)seen,
			      (unsigned long long)c.tail);
		expect_sticky_broken(t, &c, seen);
		assert_int_equal(c.tail, seen);
		expect_works_again(t, &c);
		shmring_consumer_detach(&c);
		ring_free(t);
	}
}

static void test_consumer_attach_and_discard_check_the_head(void **state)
{
	struct tring *t = ring_new(4096);
	struct shmring_consumer c;

	/* A tail that the published head cannot have: attach says so. */
	atomic_store(&t->cctl->tail, 64);
	atomic_store(&t->pctl->head, 32);
	assert_false(shmring_consumer_attach(&c, &t->r));
	expect_broken(&c);
	repair(&c);
	assert_int_equal(shmring_released(&c), 32);
	atomic_store(&t->cctl->tail, 20);          /* misaligned (our own memory, left so) */
	atomic_store(&t->pctl->head, 32);
	assert_false(shmring_consumer_attach(&c, &t->r));
	repair(&c);
	/* A misaligned head leaves no record boundary to skip to: still broken. */
	atomic_store(&t->pctl->head, 36);
	expect_broken(&c);
	shmring_discard(&c);
	assert_true(c.broken);
	expect_broken(&c);
	atomic_store(&t->pctl->head, 40);
	repair(&c);
	expect_works_again(t, &c);
	shmring_consumer_detach(&c);
	ring_free(t);
}

/* What peek returned is the consumer's own copy: later writes to data[] do not reach it. */
static void test_peeked_record_is_a_private_copy(void **state)
{
	struct ends e;
	const struct shmring_rec *rec;
	uint8_t want[300];

	ends_open(&e, 4096);
	for (size_t i = 0; i < sizeof(want); i++)
		want[i] = (uint8_t)(i * 13);
	memcpy(shmring_reserve(&e.p, 0x1234, 0x77, sizeof(want)), want, sizeof(want));
	put(&e.p, 2, 8, 2);
	shmring_commit(&e.p);

	rec = shmring_peek(&e.c);
	assert_non_null(rec);
	assert_true((uintptr_t)rec + HDR + rec->len <= (uintptr_t)e.t->data ||
		    (uintptr_t)rec >= (uintptr_t)e.t->data + e.t->size);
	/* The producer rewrites everything after publishing: header and payload. */
	memset(e.t->data, 0x5a, e.t->size);
	assert_int_equal(rec->len, sizeof(want));
	assert_int_equal(rec->type, 0x1234);
	assert_int_equal(rec->flags, 0x77);
	assert_memory_equal(shmring_payload(rec), want, sizeof(want));
	/* Stepping past it goes by the size it had when copied. */
	shmring_next(&e.c);
	assert_int_equal(e.c.tail, HDR + sizeof(want) + 4);
	rec = shmring_peek(&e.c);                   /* the rewritten header: 0x5a5a5a5a bytes */
	assert_null(rec);
	assert_int_equal(errno, EBADMSG);
	ends_close(&e);
}

/* ---- a hostile consumer: what the producer does with its tail ---------- */

/*
 * A producer that saw tail 128 with head 320 published and 64 more
 * bytes reserved, then finds 'bad' there: EPROTO, and it stays so until
 * the consumer's end is resynced with a possible tail.
 */
static void hostile_tail(uint64_t bad, bool backwards)
{
	struct ends e;

	ends_open(&e, 4096);
	for (int i = 0; i < 4; i++)
		put(&e.p, 1, 56, (uint8_t)i);
	shmring_commit(&e.p);
	expect_record(&e.c, 1, 56, 0);
	expect_record(&e.c, 1, 56, 1);
	shmring_release(&e.c);
	put(&e.p, 1, 56, 4);                        /* the producer has seen tail 128 */
	assert_int_equal(e.p.tail, 128);
	shmring_commit(&e.p);
	put(&e.p, 1, 56, 5);                        /* reserved, not published */
	assert_int_equal(head_of(e.t), 320);

	atomic_store(&e.t->cctl->tail, bad);
	errno = 0;
	assert_null(shmring_reserve(&e.p, 1, 0, 8));
	assert_int_equal(errno, EPROTO);
	assert_true(e.p.broken);
	assert_int_equal(atomic_load(&e.t->pctl->p_wait), 0); /* not a wait: nothing to wake */
	/* The consumer's memory back to a possible value changes nothing by itself. */
	atomic_store(&e.t->cctl->tail, 128);
	errno = 0;
	assert_null(shmring_reserve(&e.p, 1, 0, 8));
	assert_int_equal(errno, EPROTO);
	assert_false(shmring_producer_seek(&e.p, 384));
	/*
	 * A resync takes a tail only when it is possible; a new consumer's
	 * tail behind the old one's is (it re-reads what its predecessor
	 * read but did not release).
	 */
	if (!backwards) {
		atomic_store(&e.t->cctl->tail, bad);
		assert_false(shmring_producer_resync(&e.p));
		assert_null(shmring_reserve(&e.p, 1, 0, 8));
		assert_int_equal(errno, EPROTO);
	}
	atomic_store(&e.t->cctl->tail, 128);
	assert_true(shmring_producer_resync(&e.p));
	assert_false(e.p.broken);
	put(&e.p, 1, 56, 6);
	shmring_commit(&e.p);
	for (int i = 2; i <= 6; i++)
		expect_record(&e.c, 1, 56, (uint8_t)i);
	expect_empty(&e.c);
	ends_close(&e);
}

static void test_producer_refuses_impossible_tails(void **state)
{
	hostile_tail(120, true);                    /* backwards */
	hostile_tail(0, true);                      /* backwards to the start */
	hostile_tail(328, false);                   /* beyond the published head */
	hostile_tail(384, false);                   /* beyond even the reserved head */
	hostile_tail(UINT64_MAX - 7, false);
	hostile_tail(132, false);                   /* misaligned */
	hostile_tail(129, false);
}

static void test_producer_attach_checks_the_tail(void **state)
{
	struct tring *t = ring_new(4096);
	struct shmring_producer p;

	/* A trusted predecessor's head, and a consumer's tail ahead of it. */
	atomic_store(&t->pctl->head, 3 * 4096 + 64);
	atomic_store(&t->cctl->tail, 3 * 4096 + 72);
	assert_false(shmring_producer_attach(&p, &t->r));
	errno = 0;
	assert_null(shmring_reserve(&p, 1, 0, 8));
	assert_int_equal(errno, EPROTO);
	atomic_store(&t->cctl->tail, 2 * 4096 + 56);   /* more than a ring behind */
	assert_false(shmring_producer_resync(&p));
	atomic_store(&t->cctl->tail, 2 * 4096 + 64);   /* exactly a ring behind: full */
	assert_true(shmring_producer_resync(&p));
	errno = 0;
	assert_null(shmring_reserve(&p, 1, 0, 8));
	assert_int_equal(errno, EAGAIN);

	/* Starting at a misaligned tail: the head goes to the boundary below, which refuses it. */
	atomic_store(&t->cctl->tail, 84);
	shmring_producer_attach_at_tail(&p, &t->r);
	assert_int_equal(head_of(t), 80);
	errno = 0;
	assert_null(shmring_reserve(&p, 1, 0, 8));
	assert_int_equal(errno, EPROTO);
	atomic_store(&t->cctl->tail, 80);
	assert_true(shmring_producer_resync(&p));
	assert_non_null(shmring_reserve(&p, 1, 0, 8));
	ring_free(t);
}

/* ---- repair and restart ------------------------------------------------ */

/*
 * A successor that must not trust its predecessor starts where the
 * consumer stands: whatever the predecessor published beyond is gone, and
 * the consumer, resynced, reads the successor's records only.
 */
static void test_attach_at_tail_drops_the_predecessors_unread_records(void **state)
{
	struct tring *t = ring_new(4096);
	struct shmring_producer p, succ;
	struct shmring_consumer c;

	shmring_producer_attach(&p, &t->r);
	shmring_consumer_attach(&c, &t->r);
	for (int i = 1; i <= 3; i++)
		put(&p, 1, 20, (uint8_t)i);
	shmring_commit(&p);
	put(&p, 1, 20, 4);                          /* reserved, never published */
	expect_record(&c, 1, 20, 1);
	expect_record(&c, 1, 20, 2);
	shmring_release(&c);                         /* read to here: 2 x 32 bytes */

	/* The predecessor dies; the successor starts at the tail, not at head 96. */
	shmring_producer_attach_at_tail(&succ, &t->r);
	assert_int_equal(head_of(t), 64);
	assert_int_equal(succ.head, 64);
	/* Until resynced, the consumer sees a head that went backwards: a fault. */
	expect_broken(&c);
	shmring_consumer_resync(&c);
	expect_empty(&c);
	put(&succ, 2, 10, 0xa0);
	put(&succ, 2, 11, 0xa1);
	shmring_commit(&succ);
	expect_record(&c, 2, 10, 0xa0);                     /* not record 3 */
	expect_record(&c, 2, 11, 0xa1);
	expect_empty(&c);
	shmring_release(&c);
	assert_int_equal(tail_of(t), head_of(t));
	shmring_consumer_detach(&c);
	ring_free(t);
}

/* The seek functions a restarted router resumes with take only positions the ring can have. */
static void test_seek_takes_only_possible_positions(void **state)
{
	struct ends e;

	ends_open(&e, 4096);
	for (int i = 0; i < 4; i++)
		put(&e.p, 1, 8, (uint8_t)i);
	shmring_commit(&e.p);                        /* records at 0, 16, 32, 48; head 64 */
	expect_record(&e.c, 1, 8, 0);
	shmring_release(&e.c);                       /* released 16 */
	assert_false(shmring_consumer_seek(&e.c, 8)); /* behind the released tail */
	assert_false(shmring_consumer_seek(&e.c, 72)); /* past the head */
	assert_false(shmring_consumer_seek(&e.c, 36)); /* misaligned */
	assert_true(shmring_consumer_seek(&e.c, 48));
	expect_record(&e.c, 1, 8, 3);
	assert_true(shmring_consumer_seek(&e.c, 16)); /* back to the released tail: allowed */
	expect_record(&e.c, 1, 8, 1);
	assert_true(shmring_consumer_seek(&e.c, 64));
	expect_empty(&e.c);
	shmring_release(&e.c);

	/* A predecessor wrote records in place but died before publishing them. */
	put(&e.p, 2, 8, 7);
	put(&e.p, 2, 8, 8);
	shmring_producer_attach(&e.p, &e.t->r);      /* at the published head 64: they are lost... */
	assert_false(shmring_producer_seek(&e.p, 56)); /* behind the published head */
	assert_false(shmring_producer_seek(&e.p, 68)); /* misaligned */
	assert_false(shmring_producer_seek(&e.p, 64 + 4096 + 8)); /* beyond a ring past the tail */
	assert_true(shmring_producer_seek(&e.p, 96)); /* ...unless the store says where they end */
	shmring_commit(&e.p);
	expect_record(&e.c, 2, 8, 7);
	expect_record(&e.c, 2, 8, 8);
	expect_empty(&e.c);
	ends_close(&e);
}

/* ---- the daemon's mappings: each end writes only its own memory -------- */

/*
 * The mechanism shm.c relies on: memory mapped from a descriptor opened
 * read-only (a memfd reopened through /proc/self/fd) cannot be made
 * writable in that process, by mprotect() or through /proc/self/mem, and a
 * store into it kills the process. The child holds a consumer's control
 * part as a producer holds it.
 */
static void test_read_only_mapping_cannot_be_written(void **state)
{
	struct shmring_cctl *mine;
	char path[64];
	int rw, ro, status;
	pid_t pid;

	rw = memfd_create("iotd-test-ro", MFD_CLOEXEC);
	assert_true(rw >= 0);
	assert_int_equal(ftruncate(rw, 4096), 0);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", rw);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	mine = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
	assert_true(mine != MAP_FAILED);
	atomic_store(&mine->tail, 64);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct shmring_cctl *theirs = mmap(NULL, 4096, PROT_READ, MAP_SHARED, ro, 0);
		uint64_t v = 128;
		int mem;

		if (theirs == MAP_FAILED)
			_exit(10);
		if (mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) != MAP_FAILED ||
		    errno != EACCES)
			_exit(11);
		close(rw);                          /* as a child of the daemon: no descriptor left */
		close(ro);
		if (atomic_load(&theirs->tail) != 64)
			_exit(12);
		if (mprotect(theirs, 4096, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
			_exit(13);
		mem = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
		if (mem >= 0 && pwrite(mem, &v, sizeof(v), (off_t)(uintptr_t)&theirs->tail) > 0)
			_exit(14);
		if (atomic_load(&theirs->tail) != 64)
			_exit(15);
		signal(SIGSEGV, SIG_DFL);           /* the sanitizers' handler would exit(1) */
		atomic_store(&theirs->tail, v);
		_exit(16);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (WIFEXITED(status))
		fail_msg("the child exited %d instead of faulting", WEXITSTATUS(status));
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGSEGV);
	assert_int_equal(atomic_load(&mine->tail), 64);
	munmap(mine, 4096);
	close(rw);
	close(ro);
}

enum acc { NO, RO, RW };

/* The region's pointer by name in the map (what the roles use). */
static void *region_named(const struct shm_map *m, unsigned k)
{
	if (k == SHM_SUP)
		return m->sup;
	if (k == SHM_LISTENER)
		return m->listener;
	if (k == SHM_ROUTER)
		return m->router;
	if (k == SHM_JOURNAL)
		return m->journal;
	if (k >= SHM_ROUTER_RING0)
		return m->router_ring[k - SHM_ROUTER_RING0];
	return m->worker[k - SHM_WORKER0];
}

static void check_access(const struct shm_map *m, unsigned k, enum acc want)
{
	uint8_t *addr = m->addr[k];

	assert_ptr_equal(region_named(m, k), addr);
	if (want == NO) {
		assert_null(addr);
		return;
	}
	assert_non_null(addr);
	assert_true(m->len[k] >= 4096);
	/* Zeroed at creation and readable to the end. */
	assert_int_equal(((volatile uint8_t *)addr)[m->len[k] - 1], 0);
	if (want == RO) {
		errno = 0;
		assert_int_equal(mprotect(addr, m->len[k], PROT_READ | PROT_WRITE), -1);
		assert_int_equal(errno, EACCES);
	} else {
		assert_int_equal(mprotect(addr, m->len[k], PROT_READ | PROT_WRITE), 0);
		((volatile uint8_t *)addr)[m->len[k] - 1] = 0;
	}
}

/* Ring i's two views: where both of its regions are mapped, and only there. */
static void check_rings(const struct shm_map *m, unsigned i)
{
	const struct shm_worker *w = m->worker[i];
	const struct shm_router_ring *rr = m->router_ring[i];

	if (w == NULL || rr == NULL) {
		assert_null(m->w2r[i].pctl);
		assert_null(m->r2w[i].pctl);
		return;
	}
	assert_ptr_equal(m->w2r[i].pctl, &w->w2r);
	assert_ptr_equal(m->w2r[i].cctl, &rr->w2r);
	assert_ptr_equal(m->w2r[i].data, (const uint8_t *)w + SHM_HDR_BYTES);
	assert_int_equal(m->w2r[i].size, m->ring_size);
	assert_ptr_equal(m->r2w[i].pctl, &rr->r2w);
	assert_ptr_equal(m->r2w[i].cctl, &w->r2w);
	assert_ptr_equal(m->r2w[i].data, (const uint8_t *)rr + SHM_HDR_BYTES);
	assert_int_equal(m->r2w[i].size, m->ring_size);
}

static void test_each_role_maps_writable_only_what_it_writes(void **state)
{
	/* shm.h's table, for two workers. */
	static const struct {
		enum iotd_role role;
		unsigned index;
		enum acc sup, listener, router, journal, worker[2], ring[2];
	} roles[] = {
		{ ROLE_SUPERVISOR, 0, RW, NO, RO, NO, { RO, RO }, { NO, NO } },
		{ ROLE_LISTENER, 0, RO, RW, NO, NO, { RO, RO }, { NO, NO } },
		{ ROLE_ROUTER, 0, RO, NO, RW, RW, { RO, RO }, { RW, RW } },
		{ ROLE_WORKER, 0, RO, NO, RO, NO, { RW, NO }, { RO, NO } },
		{ ROLE_WORKER, 1, RO, NO, RO, NO, { NO, RW }, { NO, RO } },
	};
	struct shm_set set;

	assert_int_equal(shm_create(&set, 2, 8192), 0);
	for (unsigned k = 0; k < SHM_NREGIONS; k++) {
		bool used = k < SHM_WORKER0 + 2 || (k >= SHM_ROUTER_RING0 && k < SHM_ROUTER_RING0 + 2);

		assert_int_equal(set.rw[k] >= 0, used);
		if (used)
			assert_int_equal(fcntl(set.ro[k], F_GETFL) & O_ACCMODE, O_RDONLY);
	}
	for (size_t n = 0; n < ARRAY_SIZE(roles); n++) {
		struct shm_map m;

		print_message("role %d index %u\n", roles[n].role, roles[n].index);
		assert_int_equal(shm_map_role(&m, &set, roles[n].role, roles[n].index), 0);
		assert_int_equal(m.nworkers, 2);
		assert_int_equal(m.ring_size, 8192);
		check_access(&m, SHM_SUP, roles[n].sup);
		check_access(&m, SHM_LISTENER, roles[n].listener);
		check_access(&m, SHM_ROUTER, roles[n].router);
		check_access(&m, SHM_JOURNAL, roles[n].journal);
		for (unsigned i = 0; i < 2; i++) {
			check_access(&m, SHM_WORKER0 + i, roles[n].worker[i]);
			check_access(&m, SHM_ROUTER_RING0 + i, roles[n].ring[i]);
			check_rings(&m, i);
		}
		for (unsigned i = 2; i < IOTD_MAX_WORKERS; i++) {
			check_access(&m, SHM_WORKER0 + i, NO);
			check_access(&m, SHM_ROUTER_RING0 + i, NO);
		}
		shm_unmap(&m);
		assert_null(m.sup);
		assert_int_equal(m.nworkers, 2);
	}
	shm_close(&set);
	for (unsigned k = 0; k < SHM_NREGIONS; k++)
		assert_int_equal(set.rw[k], -1);
}

/*
 * Both rings of worker 0 driven through the worker's and the router's own
 * mappings, each end holding the other's memory read-only: any store of
 * one end into the other's memory would kill the test. Covers a full ring
 * (p_wait), a sleeping consumer (c_sleep), release, discard and resync.
 */
static void test_ring_ends_work_over_the_roles_mappings(void **state)
{
	struct shm_set set;
	struct shm_map wm, rm;
	struct {
		const struct shmring *prod, *cons;
		const char *name;
	} rings[2];

	assert_int_equal(shm_create(&set, 2, 4096), 0);
	assert_int_equal(shm_map_role(&wm, &set, ROLE_WORKER, 0), 0);
	assert_int_equal(shm_map_role(&rm, &set, ROLE_ROUTER, 0), 0);
	rings[0].prod = &wm.w2r[0];
	rings[0].cons = &rm.w2r[0];
	rings[0].name = "w2r";
	rings[1].prod = &rm.r2w[0];
	rings[1].cons = &wm.r2w[0];
	rings[1].name = "r2w";
	for (int k = 0; k < 2; k++) {
		struct shmring_producer p;
		struct shmring_consumer c;
		unsigned n = 0;

		print_message("%s\n", rings[k].name);
		shmring_producer_attach_at_tail(&p, rings[k].prod);
		assert_true(shmring_consumer_attach(&c, rings[k].cons));
		assert_true(shmring_prepare_sleep(&c));
		while (shmring_reserve(&p, 1, 0, 100))
			n++;
		assert_int_equal(errno, EAGAIN);
		assert_true(shmring_commit(&p));         /* the consumer sleeps */
		shmring_awake(&c);
		for (unsigned i = 0; i < n; i++) {
			assert_non_null(shmring_peek(&c));
			shmring_next(&c);
			if (i == 0)
				assert_true(shmring_release(&c));   /* the producer waits */
		}
		expect_empty(&c);
		shmring_release(&c);
		put(&p, 2, 8, 1);
		shmring_commit(&p);
		shmring_discard(&c);
		shmring_release(&c);
		expect_empty(&c);
		assert_true(shmring_producer_resync(&p));
		shmring_consumer_resync(&c);
		put(&p, 3, 8, 2);
		shmring_commit(&p);
		expect_record(&c, 3, 8, 2);
		shmring_consumer_detach(&c);
	}
	shm_unmap(&wm);
	shm_unmap(&rm);
	shm_close(&set);
}

/* ---- real producer/consumer pairs -------------------------------------- */

#define PAIR_RING_SIZE 65536

/*
 * Worker 0's ring to the router, in the supervisor's regions: the test
 * process is the router (its mapping), each producer a child process that
 * maps worker 0's (or, for the threaded pair, a second mapping here).
 */
struct pair {
	struct shm_set set;
	struct shm_map router;
	int c_efd, p_efd;
	pid_t child;
};

static int pair_setup(void **state)
{
	struct pair *t = calloc(1, sizeof(*t));

	if (!t)
		return -1;
	t->child = -1;
	if (shm_create(&t->set, 1, PAIR_RING_SIZE) < 0 ||
	    shm_map_role(&t->router, &t->set, ROLE_ROUTER, 0) < 0)
		return -1;
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
	shm_unmap(&t->router);
	shm_close(&t->set);
	close(t->c_efd);
	close(t->p_efd);
	free(t);
	return 0;
}

/* In a child: map what worker 0 maps, as the supervisor's child does, and drop the rest. */
static const struct shmring *child_ring(struct pair *t)
{
	static struct shm_map m;

	shm_unmap(&t->router);
	if (shm_map_role(&m, &t->set, ROLE_WORKER, 0) < 0)
		_exit(PRODUCE_ERROR);
	shm_close(&t->set);
	return &m.w2r[0];
}

static pid_t spawn_producer(struct pair *t, bool at_tail, uint64_t start, uint64_t end)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0)
		_exit(produce(child_ring(t), at_tail, t->c_efd, t->p_efd, start, end, NULL));
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

/* Consumes records up to end; a bad one fails the test, naming who produced it. */
static void consume_from(struct pair *t, struct shmring_consumer *c, uint64_t *next, uint64_t end,
			 const char *who)
{
	const char *why = consume(c, t->c_efd, t->p_efd, next, end);

	if (why)
		fail_msg("%s: %s", who, why);
}

/* The child producer exited and said all went well. */
static void reap_ok(struct pair *t)
{
	int status = reap(t);

	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), PRODUCE_OK);
}

static void test_two_processes_million_records_no_lost_wakeup(void **state)
{
	struct pair *t = *state;
	struct shmring_consumer c;
	uint64_t next = 0;

	assert_true(shmring_consumer_attach(&c, &t->router.w2r[0]));
	spawn_producer(t, true, 0, 1000000);
	consume_from(t, &c, &next, 1000000, "consumer");
	reap_ok(t);
	expect_empty(&c);
	shmring_consumer_detach(&c);
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
	int status;
	pid_t pid;

	assert_true(shmring_consumer_attach(&c, &t->router.w2r[0]));

	/* 1. An endless producer, killed at whatever point it has reached. */
	spawn_producer(t, true, 0, UINT64_MAX);
	consume_from(t, &c, &next, 100000, "first producer");
	kill(t->child, SIGKILL);
	status = reap(t);
	assert_true(WIFSIGNALED(status));
	drain_committed(&c, &next);

	/*
	 * 2. A successor trusting its predecessor (at the published head)
	 * continues, then dies holding a ring full of uncommitted garbage.
	 */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		const struct shmring *r = child_ring(t);
		struct shmring_producer p;
		uint8_t *pl;
		int rc = produce(r, false, t->c_efd, t->p_efd, next, next + 1000, NULL);

		if (rc != PRODUCE_OK)
			_exit(rc);
		shmring_producer_attach(&p, r);
		while ((pl = shmring_reserve(&p, 0xbad, 0xbad, 200)))
			memset(pl, 0xa5, 200);
		kill(getpid(), SIGKILL);
		_exit(PRODUCE_ERROR);
	}
	t->child = pid;
	consume_from(t, &c, &next, next + 1000, "second producer");
	status = reap(t);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGKILL);
	expect_empty(&c);                           /* the garbage was never published */

	/*
	 * 3. A successor that does not trust it (a restarted worker) starts at
	 * our tail, overwrites the garbage and runs to completion.
	 */
	eventfd_drain(t->p_efd);
	shmring_release(&c);
	spawn_producer(t, true, next, next + 200000);
	shmring_consumer_resync(&c);
	consume_from(t, &c, &next, next + 200000, "third producer");
	reap_ok(t);
	expect_empty(&c);
	shmring_consumer_detach(&c);
}

struct thread_producer {
	const struct shmring *r;
	struct pair *t;
	uint64_t end;
	atomic_bool stop;
	int rc;
};

static void *thread_produce(void *arg)
{
	struct thread_producer *tp = arg;

	tp->rc = produce(tp->r, true, tp->t->c_efd, tp->t->p_efd, 0, tp->end, &tp->stop);
	return NULL;
}

/* The same protocol between two threads: what ThreadSanitizer can check. */
static void test_two_threads_records_in_order(void **state)
{
	struct pair *t = *state;
	struct shm_map wm;
	struct thread_producer tp = { .t = t, .end = 300000 };
	struct shmring_consumer c;
	pthread_t th;
	uint64_t next = 0;
	const char *why;

	assert_int_equal(shm_map_role(&wm, &t->set, ROLE_WORKER, 0), 0);
	tp.r = &wm.w2r[0];
	atomic_init(&tp.stop, false);
	assert_true(shmring_consumer_attach(&c, &t->router.w2r[0]));
	assert_int_equal(pthread_create(&th, NULL, thread_produce, &tp), 0);
	why = consume(&c, t->c_efd, t->p_efd, &next, tp.end);
	if (why) {
		atomic_store(&tp.stop, true);
		eventfd_wake(t->p_efd);
	}
	pthread_join(th, NULL);
	if (why)
		fail_msg("consumer: %s", why);
	assert_int_equal(tp.rc, PRODUCE_OK);
	expect_empty(&c);
	shmring_consumer_detach(&c);
	shm_unmap(&wm);
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
		cmocka_unit_test(test_one_wakeup_per_sleep_generation_and_after_a_restart),
		cmocka_unit_test(test_discard_drops_stale_records),
		cmocka_unit_test(test_max_payload_fits_at_every_offset),
		cmocka_unit_test(test_consumer_refuses_impossible_records_within_bounds),
		cmocka_unit_test(test_consumer_refuses_impossible_heads),
		cmocka_unit_test(test_consumer_attach_and_discard_check_the_head),
		cmocka_unit_test(test_peeked_record_is_a_private_copy),
		cmocka_unit_test(test_producer_refuses_impossible_tails),
		cmocka_unit_test(test_producer_attach_checks_the_tail),
		cmocka_unit_test(test_attach_at_tail_drops_the_predecessors_unread_records),
		cmocka_unit_test(test_seek_takes_only_possible_positions),
		cmocka_unit_test(test_read_only_mapping_cannot_be_written),
		cmocka_unit_test(test_each_role_maps_writable_only_what_it_writes),
		cmocka_unit_test(test_ring_ends_work_over_the_roles_mappings),
		cmocka_unit_test_setup_teardown(test_two_processes_million_records_no_lost_wakeup,
						pair_setup, pair_teardown),
		cmocka_unit_test_setup_teardown(test_killed_producer_replaced_consumer_sees_whole_records,
						pair_setup, pair_teardown),
		cmocka_unit_test_setup_teardown(test_two_threads_records_in_order,
						pair_setup, pair_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
