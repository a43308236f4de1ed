/*
 * shmring.h - single-producer/single-consumer record ring in shared memory.
 *
 * The supervisor places the rings in one memfd mapping (MAP_SHARED) before
 * it forks anybody, so a ring outlives both its producer and its consumer:
 * a restarted worker or router finds the ring exactly as the dead process
 * left it. Nothing half-written is ever visible, because the producer
 * publishes its head only after whole records are in place.
 *
 *   struct shmring (shared)                      data[size], size = 2^k
 *   +------+------+---------+---------+------+   +-----------------------------+
 *   | head | tail | c_sleep | p_wait  | size |   |rec|rec|rec|pad....|rec|     |
 *   +------+------+---------+---------+------+   +-----------------------------+
 *     ^ producer    ^ consumer                        ^tail          ^head
 *
 * head and tail are byte counters that only grow (64 bits never wrap);
 * position = counter & (size - 1). Every record starts with a
 * struct shmring_rec (8 bytes) and is padded to 8 bytes. A record never
 * wraps: when it does not fit before the end, a PAD record fills the rest.
 *
 * Wake-ups: a consumer about to sleep sets c_sleep and re-checks; a
 * producer that commits clears c_sleep and, if it was set, tells its
 * caller to wake the consumer (one eventfd write per batch, not per
 * record). The same dance with p_wait wakes a producer that found the ring
 * full. The eventfds belong to the processes, not to the ring: one eventfd
 * wakes a process whatever ring has work for it.
 */
#ifndef IOTD_SHMRING_H
#define IOTD_SHMRING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHMRING_PAD 0            /* record type reserved for padding */
#define SHMRING_ALIGN 8

struct shmring_rec {
	uint32_t len;                /* payload bytes, header excluded, unpadded */
	uint16_t type;               /* != SHMRING_PAD for real records */
	uint16_t flags;
};

struct shmring {
	_Atomic uint64_t head;       /* written by the producer only */
	char pad0[56];
	_Atomic uint64_t tail;       /* written by the consumer only */
	char pad1[56];
	_Atomic uint32_t c_sleep;    /* consumer is (about to be) asleep */
	_Atomic uint32_t p_wait;     /* producer is waiting for space */
	uint64_t size;               /* bytes in data[], a power of two */
	char pad2[48];
	uint8_t data[];
};

/* Bytes a ring with 'size' data bytes takes in the mapping. */
size_t shmring_footprint(size_t size);
/* Initialise a ring in place (supervisor, before any fork). size: power of two >= 4096. */
void shmring_init(struct shmring *r, size_t size);
/* Largest payload a ring can carry in one record. */
size_t shmring_max_payload(const struct shmring *r);

/* Process-local cursor of the producer: records are reserved, then committed as a batch. */
struct shmring_producer {
	struct shmring *r;
	uint64_t head;               /* local head: reserved but not yet committed */
};

void shmring_producer_attach(struct shmring_producer *p, struct shmring *r);
/*
 * Reserve room for a record with payload_len bytes; returns a pointer to
 * the payload, or NULL when the ring is full (errno EAGAIN; p_wait is then
 * set, so the consumer will wake us: commit what was reserved before
 * sleeping, or the consumer has nothing to free) or payload_len >
 * shmring_max_payload() (errno EMSGSIZE).
 */
void *shmring_reserve(struct shmring_producer *p, uint16_t type, uint16_t flags,
		      uint32_t payload_len);
/* Publish everything reserved so far. Returns true when the consumer must be woken. */
bool shmring_commit(struct shmring_producer *p);
/*
 * Move the local head to pos, the end of records a predecessor wrote in
 * place but died before committing: the next shmring_commit() publishes
 * them. pos must lie between the published head and the consumer's tail
 * plus the ring size, and be aligned; otherwise nothing changes and false
 * is returned.
 */
bool shmring_producer_seek(struct shmring_producer *p, uint64_t pos);

/* Process-local cursor of the consumer. */
struct shmring_consumer {
	struct shmring *r;
	uint64_t tail;               /* local tail: read but not yet released */
};

void shmring_consumer_attach(struct shmring_consumer *c, struct shmring *r);
/*
 * The next record (PAD skipped), or NULL when empty (errno EAGAIN). The
 * payload follows the header. A record that does not fit in what the
 * producer published means corrupted memory: NULL with errno EBADMSG, and
 * everything published so far is skipped.
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
 * stale records). As for records read, shmring_release() gives the space back.
 */
void shmring_discard(struct shmring_consumer *c);
/*
 * About to sleep: returns true when the ring is empty and c_sleep is now
 * set (safe to sleep), false when records arrived meanwhile.
 */
bool shmring_prepare_sleep(struct shmring_consumer *c);
/* Clear c_sleep after waking up (optional: the producer clears it too). */
void shmring_awake(struct shmring_consumer *c);

static inline const void *shmring_payload(const struct shmring_rec *rec)
{
	return rec + 1;
}

#endif
