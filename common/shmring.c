/*
 * shmring.c - the single-producer/single-consumer record ring that carries
 * the data plane between workers and the router (see shmring.h).
 *
 * Owns the ring's layout and its wake-up protocol; the memory belongs to
 * the supervisor's mapping and the eventfds to the processes. Reserve,
 * commit, peek and release are the hot path: no syscalls, no locks, one
 * shared store per batch on each side.
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
#include <string.h>

#include "shmring.h"

/* The counters live in memory shared between processes: locks would not be shared. */
static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "shmring needs lock-free 64-bit atomics");
static_assert(ATOMIC_INT_LOCK_FREE == 2, "shmring needs lock-free 32-bit atomics");
static_assert(sizeof(struct shmring_rec) == SHMRING_ALIGN, "record header is one 8-byte unit");
static_assert(offsetof(struct shmring, tail) == 64, "head and tail on separate cache lines");
static_assert(offsetof(struct shmring, c_sleep) == 128, "flags on their own cache line");
static_assert(offsetof(struct shmring, data) % 64 == 0, "data starts on a cache line");

#define SHMRING_MIN_SIZE 4096u
#define SHMRING_HDR ((uint64_t)sizeof(struct shmring_rec))

/* Bytes a record with 'len' payload bytes occupies; 64-bit so no length can overflow it. */
static inline uint64_t shmring_rec_size(uint64_t len)
{
	return (SHMRING_HDR + len + (SHMRING_ALIGN - 1)) & ~(uint64_t)(SHMRING_ALIGN - 1);
}

static inline struct shmring_rec *shmring_at(struct shmring *r, uint64_t counter)
{
	return (struct shmring_rec *)(r->data + (counter & (r->size - 1)));
}

size_t shmring_footprint(size_t size)
{
	/* Rounded to a cache line so that rings placed back to back share none. */
	return (sizeof(struct shmring) + size + 63) & ~(size_t)63;
}

void shmring_init(struct shmring *r, size_t size)
{
	assert(size >= SHMRING_MIN_SIZE && (size & (size - 1)) == 0);
	memset(r, 0, sizeof(*r));
	atomic_init(&r->head, 0);
	atomic_init(&r->tail, 0);
	atomic_init(&r->c_sleep, 0);
	atomic_init(&r->p_wait, 0);
	r->size = size;
}

size_t shmring_max_payload(const struct shmring *r)
{
	/*
	 * Half the ring minus a header: even when the record must wrap, the PAD
	 * in front of it (< size/2 bytes, or it would have fitted) plus the
	 * record itself fit in an empty ring, so a producer can always make
	 * progress once the consumer has caught up.
	 */
	uint64_t max = r->size / 2 - SHMRING_HDR;

	return max > UINT32_MAX ? UINT32_MAX : (size_t)max;
}

/* ---- producer ---------------------------------------------------------- */

void shmring_producer_attach(struct shmring_producer *p, struct shmring *r)
{
	p->r = r;
	/*
	 * Start from the published head: whatever a dead predecessor reserved
	 * but never committed is invisible to the consumer and is overwritten.
	 */
	p->head = atomic_load_explicit(&r->head, memory_order_acquire);
}

static bool shmring_has_room(const struct shmring_producer *p, uint64_t tail, uint64_t need)
{
	return p->r->size - (p->head - tail) >= need;
}

/*
 * Enough room for 'need' bytes? When not, raise p_wait and look again: the
 * consumer either released before our flag became visible (we see its new
 * tail here) or will see the flag when it releases (and wake us).
 */
static bool shmring_wait_room(struct shmring_producer *p, uint64_t need)
{
	struct shmring *r = p->r;

	if (shmring_has_room(p, atomic_load_explicit(&r->tail, memory_order_acquire), need))
		return true;
	atomic_store_explicit(&r->p_wait, 1, memory_order_seq_cst);
	if (shmring_has_room(p, atomic_load_explicit(&r->tail, memory_order_seq_cst), need)) {
		/* Room after all: spare the consumer a pointless wake-up. */
		atomic_store_explicit(&r->p_wait, 0, memory_order_relaxed);
		return true;
	}
	return false;
}

void *shmring_reserve(struct shmring_producer *p, uint16_t type, uint16_t flags,
		      uint32_t payload_len)
{
	struct shmring *r = p->r;
	uint64_t size = shmring_rec_size(payload_len);
	uint64_t to_end = r->size - (p->head & (r->size - 1));
	uint64_t pad = size > to_end ? to_end : 0;
	struct shmring_rec *rec;

	if (payload_len > shmring_max_payload(r)) {
		errno = EMSGSIZE;
		return NULL;
	}
	if (!shmring_wait_room(p, pad + size)) {
		errno = EAGAIN;
		return NULL;
	}
	if (pad) {
		/* to_end is a multiple of 8 and at least 8: the PAD header always fits. */
		rec = shmring_at(r, p->head);
		*rec = (struct shmring_rec){ .len = (uint32_t)(pad - SHMRING_HDR),
					     .type = SHMRING_PAD };
		p->head += pad;
	}
	rec = shmring_at(r, p->head);
	*rec = (struct shmring_rec){ .len = payload_len, .type = type, .flags = flags };
	p->head += size;
	return rec + 1;
}

bool shmring_commit(struct shmring_producer *p)
{
	struct shmring *r = p->r;

	if (atomic_load_explicit(&r->head, memory_order_relaxed) == p->head)
		return false;
	/* seq_cst, not just release: it pairs with the consumer's c_sleep store. */
	atomic_store_explicit(&r->head, p->head, memory_order_seq_cst);
	/*
	 * Load before exchanging: when nobody sleeps (the common case) this is
	 * a plain read of a line that rarely changes, not a locked RMW. Seeing
	 * 0 here is safe: the consumer's later c_sleep store is then ordered
	 * after our head store, so its re-check finds the records.
	 */
	if (!atomic_load_explicit(&r->c_sleep, memory_order_seq_cst))
		return false;
	/* Exchange so that exactly one commit per sleep reports the wake-up. */
	return atomic_exchange_explicit(&r->c_sleep, 0, memory_order_seq_cst) != 0;
}

bool shmring_producer_seek(struct shmring_producer *p, uint64_t pos)
{
	struct shmring *r = p->r;
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);

	/* Never back over published records, never past space the consumer still holds. */
	if (pos < head || pos - tail > r->size || (pos & (SHMRING_ALIGN - 1)))
		return false;
	p->head = pos;
	return true;
}

/* ---- consumer ---------------------------------------------------------- */

void shmring_consumer_attach(struct shmring_consumer *c, struct shmring *r)
{
	c->r = r;
	/* Records a dead predecessor read but never released are delivered again. */
	c->tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
}

/*
 * Is the record header at c->tail sane, given 'avail' published bytes?
 * Anything else means the shared memory was corrupted: never trust a
 * length that would take us past what the producer published or past the
 * end of data[].
 */
static bool shmring_rec_ok(const struct shmring_consumer *c, const struct shmring_rec *rec,
			   uint64_t avail)
{
	const struct shmring *r = c->r;
	uint64_t pos = c->tail & (r->size - 1);
	uint64_t size = shmring_rec_size(rec->len);

	if (size > avail || size > r->size - pos)
		return false;
	if (rec->type == SHMRING_PAD)
		return pos + size == r->size;      /* a PAD only ever fills up to the end */
	return rec->len <= shmring_max_payload(r);
}

/*
 * Corruption: give up on everything published so far and continue from
 * the producer's head. Looping on the bad record would spin the consumer
 * forever; skipping what we cannot parse keeps the data plane alive.
 */
static const struct shmring_rec *shmring_corrupt(struct shmring_consumer *c, uint64_t head)
{
	c->tail = head;
	errno = EBADMSG;
	return NULL;
}

const struct shmring_rec *shmring_peek(struct shmring_consumer *c)
{
	struct shmring *r = c->r;
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);

	for (;;) {
		uint64_t avail = head - c->tail;
		const struct shmring_rec *rec;

		if (avail == 0) {
			errno = EAGAIN;
			return NULL;
		}
		if (avail > r->size || avail < SHMRING_HDR || (c->tail & (SHMRING_ALIGN - 1)))
			return shmring_corrupt(c, head);
		rec = shmring_at(r, c->tail);
		if (!shmring_rec_ok(c, rec, avail))
			return shmring_corrupt(c, head);
		if (rec->type != SHMRING_PAD)
			return rec;
		c->tail += shmring_rec_size(rec->len);
	}
}

void shmring_next(struct shmring_consumer *c)
{
	c->tail += shmring_rec_size(shmring_at(c->r, c->tail)->len);
}

bool shmring_consumer_seek(struct shmring_consumer *c, uint64_t pos)
{
	struct shmring *r = c->r;
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);

	/* Outside [tail, head] the position cannot be one this ring ever had unread. */
	if (pos < tail || pos > head || (pos & (SHMRING_ALIGN - 1)))
		return false;
	c->tail = pos;
	return true;
}

bool shmring_release(struct shmring_consumer *c)
{
	struct shmring *r = c->r;

	/* Only we write tail, so a relaxed load of it is exact. */
	if (atomic_load_explicit(&r->tail, memory_order_relaxed) == c->tail)
		return false;
	/* seq_cst: pairs with the producer's p_wait store (see shmring_wait_room). */
	atomic_store_explicit(&r->tail, c->tail, memory_order_seq_cst);
	if (!atomic_load_explicit(&r->p_wait, memory_order_seq_cst))
		return false;
	return atomic_exchange_explicit(&r->p_wait, 0, memory_order_seq_cst) != 0;
}

void shmring_discard(struct shmring_consumer *c)
{
	/*
	 * Like reading everything: the space comes back, and a waiting
	 * producer is reported, by the next shmring_release().
	 */
	c->tail = atomic_load_explicit(&c->r->head, memory_order_acquire);
}

bool shmring_prepare_sleep(struct shmring_consumer *c)
{
	struct shmring *r = c->r;

	/* seq_cst store then seq_cst load: the consumer half of the Dekker pair. */
	atomic_store_explicit(&r->c_sleep, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&r->head, memory_order_seq_cst) == c->tail)
		return true;
	/* Work arrived: stay awake, and spare the producer a pointless wake-up. */
	atomic_store_explicit(&r->c_sleep, 0, memory_order_relaxed);
	return false;
}

void shmring_awake(struct shmring_consumer *c)
{
	/* Only saves the producer an eventfd write: the consumer re-checks the ring anyway. */
	atomic_store_explicit(&c->r->c_sleep, 0, memory_order_relaxed);
}
