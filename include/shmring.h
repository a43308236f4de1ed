/*
 * shmring.h - single-producer/single-consumer record ring in shared memory.
 *
 * A ring outlives both its producer and its consumer (the supervisor
 * creates its memory before it forks anybody), so a restarted worker or
 * router finds it exactly as the dead process left it. Nothing
 * half-written is ever visible: the producer publishes its head only
 * after whole records are in place.
 *
 * Each end writes only its own memory, which the other end maps read-only
 * (shm.h says which region holds what):
 *
 *   producer's memory                            consumer's memory
 *   +------+--------+   +-------------------+    +------+---------+
 *   | head | p_wait |   | data[size]        |    | tail | c_sleep |
 *   +------+--------+   |rec|rec|pad..|rec| |    +------+---------+
 *                       +-------------------+
 *
 * The geometry (where the three parts are, the size) is fixed when an end
 * attaches and kept in that end's private memory (struct shmring): nothing
 * about it is ever read from shared memory. Every cursor read from the
 * other side is checked against it before use, a record's header is read
 * once, and the consumer copies each record into private memory before
 * anyone parses it. So a hostile peer can make a ring report "broken",
 * never make its reader go out of bounds or see a record change under it.
 *
 * head and tail are byte counters that only grow (64 bits never wrap);
 * position = counter & (size - 1). Every record starts with a
 * struct shmring_rec (8 bytes) and is padded to 8 bytes. A record never
 * wraps: when it does not fit before the end, a PAD record fills the rest.
 *
 * Wake-ups: a consumer about to sleep writes an odd c_sleep (a new value
 * each time) and re-checks; a producer that commits and finds an odd
 * c_sleep it has not answered yet tells its caller to wake the consumer
 * (one eventfd write per sleep, not per record). The same dance with
 * p_wait wakes a producer that found the ring full. The eventfds belong to
 * the processes: one eventfd wakes a process whatever ring has work for it.
 */
#ifndef IOTD_SHMRING_H
#define IOTD_SHMRING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHMRING_PAD 0            /* record type reserved for padding */
#define SHMRING_ALIGN 8
#define SHMRING_MIN_SIZE 4096u

struct shmring_rec {
	uint32_t len;                /* payload bytes, header excluded, unpadded */
	uint16_t type;               /* != SHMRING_PAD for real records */
	uint16_t flags;
};

/* The producer's cursor and flag: in memory only the producer may write. */
struct shmring_pctl {
	_Atomic uint64_t head;       /* records below it are published */
	char pad0[56];
	_Atomic uint32_t p_wait;     /* odd: waiting for room (a new value each wait) */
	char pad1[60];
};

/* The consumer's cursor and flag: in memory only the consumer may write. */
struct shmring_cctl {
	_Atomic uint64_t tail;       /* space below it is free again */
	char pad0[56];
	_Atomic uint32_t c_sleep;    /* odd: (about to be) asleep (a new value each sleep) */
	char pad1[60];
};

/* A ring as one end sees it: fixed at attach, in that end's private memory. */
struct shmring {
	struct shmring_pctl *pctl;
	struct shmring_cctl *cctl;
	uint8_t *data;
	uint64_t size;               /* bytes in data[], a power of two >= SHMRING_MIN_SIZE */
};

/* Describe a ring from its three parts (size: a power of two >= SHMRING_MIN_SIZE). */
void shmring_view(struct shmring *r, struct shmring_pctl *pctl, struct shmring_cctl *cctl,
		  void *data, size_t size);
/* Largest payload a ring of 'size' data bytes carries in one record. */
size_t shmring_max_payload(size_t size);

/* Process-local state of the producer: records are reserved, then committed as a batch. */
struct shmring_producer {
	struct shmring r;
	uint64_t head;               /* local head: reserved but not yet committed */
	uint64_t published;          /* head as last published */
	uint64_t tail;               /* the consumer's tail as last checked */
	uint32_t wait_gen;           /* p_wait values written so far */
	uint32_t woken;              /* the c_sleep value last answered with a wake-up */
	bool broken;                 /* the consumer published an impossible tail */
};

/*
 * Take over the producer's end where the published head is. Use it when
 * the memory was written by this role's predecessor, which the caller
 * trusts (a restarted router). Returns false (and the ring is broken) when
 * head and the consumer's tail disagree.
 */
bool shmring_producer_attach(struct shmring_producer *p, const struct shmring *r);
/*
 * Take over the producer's end where the consumer's tail is, discarding
 * whatever a predecessor left published and unread: for a successor that
 * must not trust its predecessor, whose records the consumer has already
 * read to the end (a restarted worker).
 */
void shmring_producer_attach_at_tail(struct shmring_producer *p, const struct shmring *r);
/*
 * Reserve room for a record with payload_len bytes; returns a pointer to
 * the payload, or NULL: errno EAGAIN when the ring is full (p_wait is
 * then set, so the consumer will wake us: commit what was reserved before
 * sleeping, or the consumer has nothing to free), EMSGSIZE when
 * payload_len > shmring_max_payload(), EPROTO when the consumer's tail is
 * impossible (the ring is broken: the consumer is faulty).
 */
void *shmring_reserve(struct shmring_producer *p, uint16_t type, uint16_t flags,
		      uint32_t payload_len);
/* Publish everything reserved so far. Returns true when the consumer must be woken. */
bool shmring_commit(struct shmring_producer *p);
/*
 * The consumer's end was replaced (a successor that starts reading where
 * its predecessor stopped, or repaired what it left): take its tail as it
 * is now, checked afresh but not against the old one's. Returns false
 * (and the ring is broken) when it is impossible.
 */
bool shmring_producer_resync(struct shmring_producer *p);
/*
 * Move the local head to pos, the end of records a predecessor wrote in
 * place but died before committing: the next shmring_commit() publishes
 * them. pos must lie between the published head and the consumer's tail
 * plus the ring size, and be aligned; otherwise nothing changes and false
 * is returned.
 */
bool shmring_producer_seek(struct shmring_producer *p, uint64_t pos);

/* Process-local state of the consumer. */
struct shmring_consumer {
	struct shmring r;
	uint64_t tail;               /* local tail: read but not yet released */
	uint64_t head;               /* the producer's head as last checked */
	uint32_t sleep_gen;          /* c_sleep values written so far */
	uint32_t woken;              /* the p_wait value last answered with a wake-up */
	bool broken;                 /* the producer published something impossible */
	uint64_t cur_size;           /* bytes the record last peeked takes in the ring */
	struct shmring_rec *copy;    /* private copy of that record (header + payload) */
	size_t copy_cap;
};

/*
 * Take over the consumer's end where the tail is (records a dead
 * predecessor read but never released are delivered again). Returns false
 * (and the ring is broken) when the tail and the producer's head disagree.
 */
bool shmring_consumer_attach(struct shmring_consumer *c, const struct shmring *r);
/*
 * The producer's end was replaced by one that starts at our tail
 * (shmring_producer_attach_at_tail): forget what the old one published.
 */
void shmring_consumer_resync(struct shmring_consumer *c);
/* Free the private copy buffer. */
void shmring_consumer_detach(struct shmring_consumer *c);
/*
 * The next record (PAD skipped), copied into private memory: the pointer
 * stays valid until the next peek. NULL when there is none: errno EAGAIN
 * (empty), ENOMEM (no memory for the copy: try again later) or EBADMSG:
 * the producer published an impossible head or record; the ring is then
 * broken and stays so (every later peek fails the same way) until
 * shmring_discard() or a new attach.
 */
const struct shmring_rec *shmring_peek(struct shmring_consumer *c);
/* Step past the record shmring_peek() returned. */
void shmring_next(struct shmring_consumer *c);
/*
 * Move the local tail to pos, a record boundary a predecessor recorded
 * (a restarted consumer skipping records it knows were already applied).
 * pos must lie between the shared tail and the published head and be
 * aligned; otherwise nothing changes and false is returned. The space is
 * given back by the next shmring_release().
 */
bool shmring_consumer_seek(struct shmring_consumer *c, uint64_t pos);
/* Give back the space of everything consumed. Returns true when the producer must be woken. */
bool shmring_release(struct shmring_consumer *c);
/*
 * Drop everything currently in the ring (a fresh consumer that must not see
 * stale records, or one that gives up on a broken ring) and clear broken
 * when the producer's head is aligned. The head is taken as the producer
 * says: only for a producer the consumer trusts (a worker reading the
 * router's ring), never to repair a ring a hostile producer broke. As for records read,
 * shmring_release() gives the space back.
 */
void shmring_discard(struct shmring_consumer *c);
/* The consumer's tail as last released (the other end's view of it). */
uint64_t shmring_released(const struct shmring_consumer *c);
/*
 * About to sleep: returns true when the ring is empty and c_sleep now says
 * so (safe to sleep), false when records arrived meanwhile.
 */
bool shmring_prepare_sleep(struct shmring_consumer *c);
/* After waking up: c_sleep says awake again, sparing the producer pointless wake-ups. */
void shmring_awake(struct shmring_consumer *c);

static inline const void *shmring_payload(const struct shmring_rec *rec)
{
	return rec + 1;
}

#endif
