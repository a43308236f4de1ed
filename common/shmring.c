/*
 * shmring.c - the single-producer/single-consumer record ring that carries
 * the data plane between workers and the router (see shmring.h).
 *
 * Owns the ring's record format, the checks each end makes of what the
 * other end published, and the wake-up protocol; the memory belongs to the
 * supervisor's regions (shm.c) and the eventfds to the processes. Reserve,
 * commit, peek and release are the hot path: no syscalls, no locks, one
 * shared store per batch on each side.
 *
 * Trust: each end reads the other's cursor once per use, checks it against
 * the geometry it keeps privately and against what it saw last (cursors
 * only grow), and never reads a record header twice: the consumer copies
 * the header and payload out before anything looks at them.
 *
 * Memory ordering, in short:
 *  - data[] is plain memory. The producer writes records, then publishes
 *    head (release); the consumer loads head (acquire) before reading the
 *    records below it. Symmetrically the consumer reads records, then
 *    publishes tail (release), and the producer loads tail (acquire)
 *    before overwriting the space below it.
 *  - The sleep flags need more than acquire/release: "store head, load
 *    c_sleep" against "store c_sleep, load head" is a Dekker pattern, and
 *    only seq_cst on all four accesses guarantees that at least one side
 *    sees the other's store. Hence those accesses are seq_cst; everything
 *    else uses the weakest order that is correct.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "shmring.h"

/* The counters live in memory shared between processes: locks would not be shared. */
static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "shmring needs lock-free 64-bit atomics");
static_assert(ATOMIC_INT_LOCK_FREE == 2, "shmring needs lock-free 32-bit atomics");
static_assert(sizeof(struct shmring_rec) == SHMRING_ALIGN, "record header is one 8-byte unit");
static_assert(sizeof(struct shmring_pctl) == 128, "producer control: two cache lines");
static_assert(sizeof(struct shmring_cctl) == 128, "consumer control: two cache lines");

#define SHMRING_HDR ((uint64_t)sizeof(struct shmring_rec))

/* Bytes a record with 'len' payload bytes occupies; 64-bit so no length can overflow it. */
static inline uint64_t shmring_rec_size(uint64_t len)
{
	return (SHMRING_HDR + len + (SHMRING_ALIGN - 1)) & ~(uint64_t)(SHMRING_ALIGN - 1);
}

static inline uint8_t *shmring_at(const struct shmring *r, uint64_t counter)
{
	return r->data + (counter & (r->size - 1));
}

void shmring_view(struct shmring *r, struct shmring_pctl *pctl, struct shmring_cctl *cctl,
		  void *data, size_t size)
{
	assert(size >= SHMRING_MIN_SIZE && (size & (size - 1)) == 0);
	r->pctl = pctl;
	r->cctl = cctl;
	r->data = data;
	r->size = size;
}

size_t shmring_max_payload(size_t size)
{
	/*
	 * Half the ring minus a header: even when the record must wrap, the PAD
	 * in front of it (< size/2 bytes, or it would have fitted) plus the
	 * record itself fit in an empty ring, so a producer can always make
	 * progress once the consumer has caught up.
	 */
	uint64_t max = (uint64_t)size / 2 - SHMRING_HDR;

	return max > UINT32_MAX ? UINT32_MAX : (size_t)max;
}

/* May a consumer have released up to 'tail', given what was published (head) and seen (prev)? */
static bool shmring_tail_ok(const struct shmring *r, uint64_t tail, uint64_t prev, uint64_t head)
{
	return tail >= prev && tail <= head && head - tail <= r->size &&
	       !(tail & (SHMRING_ALIGN - 1));
}

/* ---- producer ---------------------------------------------------------- */

static void shmring_producer_init(struct shmring_producer *p, const struct shmring *r)
{
	memset(p, 0, sizeof(*p));
	p->r = *r;
}

bool shmring_producer_attach(struct shmring_producer *p, const struct shmring *r)
{
	uint64_t head = atomic_load_explicit(&r->pctl->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->cctl->tail, memory_order_acquire);

	shmring_producer_init(p, r);
	p->wait_gen = (atomic_load_explicit(&r->pctl->p_wait, memory_order_relaxed) + 1) & ~1u;
	/*
	 * Whatever a dead predecessor reserved but never committed is
	 * invisible to the consumer and is overwritten.
	 */
	p->head = p->published = head;
	p->tail = tail;
	p->broken = !shmring_tail_ok(r, tail, 0, head);
	return !p->broken;
}

void shmring_producer_attach_at_tail(struct shmring_producer *p, const struct shmring *r)
{
	uint64_t tail = atomic_load_explicit(&r->cctl->tail, memory_order_acquire);

	shmring_producer_init(p, r);
	p->wait_gen = (atomic_load_explicit(&r->pctl->p_wait, memory_order_relaxed) + 1) & ~1u;
	tail &= ~(uint64_t)(SHMRING_ALIGN - 1);
	p->head = p->published = p->tail = tail;
	atomic_store_explicit(&r->pctl->head, tail, memory_order_release);
	atomic_store_explicit(&r->pctl->p_wait, p->wait_gen, memory_order_relaxed);
}

/* The consumer's tail, checked; false (ring broken) when it is impossible. */
static bool shmring_load_tail(struct shmring_producer *p, memory_order mo, uint64_t *tail)
{
	uint64_t t = atomic_load_explicit(&p->r.cctl->tail, mo);

	if (p->broken || !shmring_tail_ok(&p->r, t, p->tail, p->published)) {
		p->broken = true;
		return false;
	}
	p->tail = *tail = t;
	return true;
}

static bool shmring_has_room(const struct shmring_producer *p, uint64_t tail, uint64_t need)
{
	return p->r.size - (p->head - tail) >= need;
}

/*
 * Enough room for 'need' bytes? When not, raise p_wait and look again: the
 * consumer either released before our flag became visible (we see its new
 * tail here) or will see the flag when it releases (and wake us).
 */
static int shmring_wait_room(struct shmring_producer *p, uint64_t need)
{
	struct shmring_pctl *pc = p->r.pctl;
	uint64_t tail;

	if (!shmring_load_tail(p, memory_order_acquire, &tail))
		return -1;
	if (shmring_has_room(p, tail, need)) {
		if (p->wait_gen & 1)
			atomic_store_explicit(&pc->p_wait, ++p->wait_gen, memory_order_relaxed);
		return 1;
	}
	if (!(p->wait_gen & 1))
		++p->wait_gen;
	else
		p->wait_gen += 2;       /* a new value: the consumer answers each wait once */
	atomic_store_explicit(&pc->p_wait, p->wait_gen, memory_order_seq_cst);
	if (!shmring_load_tail(p, memory_order_seq_cst, &tail))
		return -1;
	if (shmring_has_room(p, tail, need)) {
		/* Room after all: spare the consumer a pointless wake-up. */
		atomic_store_explicit(&pc->p_wait, ++p->wait_gen, memory_order_relaxed);
		return 1;
	}
	return 0;
}

void *shmring_reserve(struct shmring_producer *p, uint16_t type, uint16_t flags,
		      uint32_t payload_len)
{
	const struct shmring *r = &p->r;
	uint64_t size = shmring_rec_size(payload_len);
	uint64_t to_end = r->size - (p->head & (r->size - 1));
	uint64_t pad = size > to_end ? to_end : 0;
	struct shmring_rec *rec;
	int room;

	if (payload_len > shmring_max_payload(r->size)) {
		errno = EMSGSIZE;
		return NULL;
	}
	room = shmring_wait_room(p, pad + size);
	if (room <= 0) {
		errno = room < 0 ? EPROTO : EAGAIN;
		return NULL;
	}
	if (pad) {
		/* to_end is a multiple of 8 and at least 8: the PAD header always fits. */
		rec = (struct shmring_rec *)shmring_at(r, p->head);
		*rec = (struct shmring_rec){ .len = (uint32_t)(pad - SHMRING_HDR),
					     .type = SHMRING_PAD };
		p->head += pad;
	}
	rec = (struct shmring_rec *)shmring_at(r, p->head);
	*rec = (struct shmring_rec){ .len = payload_len, .type = type, .flags = flags };
	p->head += size;
	return rec + 1;
}

/*
 * Must the other end be woken? now is its c_sleep (or p_wait): yes when
 * odd (asleep, or waiting for room) and not answered yet (*woken).
 */
static inline bool shmring_wake_due(uint32_t now, uint32_t *woken)
{
	if (!(now & 1) || now == *woken)
		return false;
	*woken = now;                /* one wake-up per sleep */
	return true;
}

bool shmring_commit(struct shmring_producer *p)
{
	struct shmring_cctl *cc = p->r.cctl;

	if (p->published == p->head)
		return false;
	/* seq_cst, not just release: it pairs with the consumer's c_sleep store. */
	atomic_store_explicit(&p->r.pctl->head, p->head, memory_order_seq_cst);
	p->published = p->head;
	/*
	 * When nobody sleeps (the common case) this is a plain read of a line
	 * that rarely changes. Seeing "awake" here is safe: the consumer's
	 * later c_sleep store is then ordered after our head store, so its
	 * re-check finds the records.
	 */
	return shmring_wake_due(atomic_load_explicit(&cc->c_sleep, memory_order_seq_cst),
				&p->woken);
}

bool shmring_producer_resync(struct shmring_producer *p)
{
	uint64_t tail = atomic_load_explicit(&p->r.cctl->tail, memory_order_acquire);

	/* What was reserved but not yet published must still fit within a ring of it. */
	p->broken = !shmring_tail_ok(&p->r, tail, 0, p->published) || p->head - tail > p->r.size;
	if (!p->broken)
		p->tail = tail;
	return !p->broken;
}

bool shmring_producer_seek(struct shmring_producer *p, uint64_t pos)
{
	uint64_t tail;

	/* Never back over published records, never past space the consumer still holds. */
	if (!shmring_load_tail(p, memory_order_acquire, &tail) || pos < p->published ||
	    pos - tail > p->r.size || (pos & (SHMRING_ALIGN - 1)))
		return false;
	p->head = pos;
	return true;
}

/* ---- consumer ---------------------------------------------------------- */

bool shmring_consumer_attach(struct shmring_consumer *c, const struct shmring *r)
{
	uint64_t tail = atomic_load_explicit(&r->cctl->tail, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->pctl->head, memory_order_acquire);

	memset(c, 0, sizeof(*c));
	c->r = *r;
	/* Our own flag: the next sleep writes a value not written before. */
	c->sleep_gen = (atomic_load_explicit(&r->cctl->c_sleep, memory_order_relaxed) + 1) & ~1u;
	/* Records a dead predecessor read but never released are delivered again. */
	c->tail = tail;
	c->head = tail;
	c->broken = !shmring_tail_ok(r, tail, 0, head);
	return !c->broken;
}

void shmring_consumer_resync(struct shmring_consumer *c)
{
	c->broken = false;
	c->head = c->tail;
	c->cur_size = 0;
}

void shmring_consumer_detach(struct shmring_consumer *c)
{
	free(c->copy);
	c->copy = NULL;
	c->copy_cap = 0;
}

/* Corrupted memory: stay put and say so until someone discards or re-attaches. */
static const struct shmring_rec *shmring_corrupt(struct shmring_consumer *c)
{
	c->broken = true;
	errno = EBADMSG;
	return NULL;
}

/* The producer's head, checked against what we hold and saw; false when impossible. */
static bool shmring_load_head(struct shmring_consumer *c, memory_order mo, uint64_t *head)
{
	uint64_t h = atomic_load_explicit(&c->r.pctl->head, mo);

	/*
	 * Heads only grow, and what is published but unread never exceeds
	 * the ring: a reader bounded by head - tail stays inside data[].
	 */
	if (h < c->head || h < c->tail || h - c->tail > c->r.size || (h & (SHMRING_ALIGN - 1)))
		return false;
	c->head = *head = h;
	return true;
}

/* Room in the private copy for a record of 'bytes' (header included). */
static bool shmring_copy_room(struct shmring_consumer *c, size_t bytes)
{
	void *grown;
	size_t cap;

	if (bytes <= c->copy_cap)
		return true;
	cap = c->copy_cap ? c->copy_cap : 256;
	while (cap < bytes)
		cap *= 2;
	grown = realloc(c->copy, cap);
	if (grown == NULL)
		return false;
	c->copy = grown;
	c->copy_cap = cap;
	return true;
}

const struct shmring_rec *shmring_peek(struct shmring_consumer *c)
{
	const struct shmring *r = &c->r;
	uint64_t head;

	if (c->broken || !shmring_load_head(c, memory_order_acquire, &head))
		return shmring_corrupt(c);
	for (;;) {
		uint64_t avail = head - c->tail, pos = c->tail & (r->size - 1), size;
		struct shmring_rec hdr;

		if (avail == 0) {
			errno = EAGAIN;
			return NULL;
		}
		if (avail < SHMRING_HDR || (c->tail & (SHMRING_ALIGN - 1)))
			return shmring_corrupt(c);
		/* The header is read once, into private memory; only the copy is looked at. */
		memcpy(&hdr, shmring_at(r, c->tail), sizeof(hdr));
		size = shmring_rec_size(hdr.len);
		if (size > avail || size > r->size - pos)
			return shmring_corrupt(c);
		if (hdr.type == SHMRING_PAD) {
			if (pos + size != r->size)      /* a PAD only ever fills up to the end */
				return shmring_corrupt(c);
			c->tail += size;
			continue;
		}
		if (hdr.len > shmring_max_payload(r->size))
			return shmring_corrupt(c);
		if (!shmring_copy_room(c, SHMRING_HDR + hdr.len)) {
			errno = ENOMEM;
			return NULL;
		}
		*c->copy = hdr;
		memcpy(c->copy + 1, shmring_at(r, c->tail) + SHMRING_HDR, hdr.len);
		c->cur_size = size;
		return c->copy;
	}
}

void shmring_next(struct shmring_consumer *c)
{
	c->tail += c->cur_size;
	c->cur_size = 0;
}

uint64_t shmring_released(const struct shmring_consumer *c)
{
	/* Only we write tail: our own last store, which nobody else can change. */
	return atomic_load_explicit(&c->r.cctl->tail, memory_order_relaxed);
}

bool shmring_consumer_seek(struct shmring_consumer *c, uint64_t pos)
{
	uint64_t head;

	/* Outside [tail, head] the position cannot be one this ring ever had unread. */
	if (c->broken || !shmring_load_head(c, memory_order_acquire, &head) ||
	    pos < shmring_released(c) || pos > head || (pos & (SHMRING_ALIGN - 1)))
		return false;
	c->tail = pos;
	c->cur_size = 0;
	return true;
}

bool shmring_release(struct shmring_consumer *c)
{
	struct shmring_pctl *pc = c->r.pctl;

	if (shmring_released(c) == c->tail)
		return false;
	/* seq_cst: pairs with the producer's p_wait store (see shmring_wait_room). */
	atomic_store_explicit(&c->r.cctl->tail, c->tail, memory_order_seq_cst);
	return shmring_wake_due(atomic_load_explicit(&pc->p_wait, memory_order_seq_cst),
				&c->woken);
}

void shmring_discard(struct shmring_consumer *c)
{
	uint64_t head = atomic_load_explicit(&c->r.pctl->head, memory_order_acquire);

	/*
	 * Like reading everything: the space comes back, and a waiting
	 * producer is reported, by the next shmring_release(). Only the
	 * producer's head is trusted here, not our own memory: a successor
	 * repairs what a faulty predecessor left. A misaligned head leaves
	 * the ring broken: there is no record boundary to skip to.
	 */
	if (head & (SHMRING_ALIGN - 1)) {
		c->broken = true;
		return;
	}
	c->broken = false;
	c->tail = c->head = head;
	c->cur_size = 0;
}

bool shmring_prepare_sleep(struct shmring_consumer *c)
{
	struct shmring_cctl *cc = c->r.cctl;
	uint64_t head;

	/* A broken ring has nothing to read until the caller repairs it. */
	if (c->broken)
		return true;
	c->sleep_gen += (c->sleep_gen & 1) ? 2 : 1;
	/* seq_cst store then seq_cst load: the consumer half of the Dekker pair. */
	atomic_store_explicit(&cc->c_sleep, c->sleep_gen, memory_order_seq_cst);
	if (shmring_load_head(c, memory_order_seq_cst, &head) && head == c->tail)
		return true;
	/* Work arrived (or an impossible head: the next peek says so): stay awake. */
	atomic_store_explicit(&cc->c_sleep, ++c->sleep_gen, memory_order_relaxed);
	return false;
}

void shmring_awake(struct shmring_consumer *c)
{
	if (c->sleep_gen & 1)
		atomic_store_explicit(&c->r.cctl->c_sleep, ++c->sleep_gen, memory_order_relaxed);
}
