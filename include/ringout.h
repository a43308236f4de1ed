/*
 * ringout.h - a ring's producer end with its overflow backlog.
 *
 * A producer that serves many clients from one loop (a worker, the
 * router) cannot wait for its consumer to make room, and must lose no
 * record and reorder none. So a record goes straight into the ring while
 * nothing waits, and otherwise to the end of a backlog in the producer's
 * own memory; ringout_flush() moves the backlog into the ring, in order,
 * as room appears. Every ring producer of iotd goes through this: a
 * worker's w2r ring, and each of the router's r2w rings.
 *
 * What may be held, and for how long, is the owner's policy (a worker
 * stops reading its clients past a size; the router drops deliveries
 * past max_router_backlog_bytes): ringout only counts what it holds.
 * Records moved into the ring leave their memory for the next ones held
 * (RINGOUT_SPARE_BYTES at most, records of up to 512 bytes), which
 * nothing counts: a backlog that stays makes and frees a record per record.
 */
#ifndef IOTD_RINGOUT_H
#define IOTD_RINGOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shmring.h"
#include "spares.h"

/* A record held for the ring, a copy in the producer's memory. */
struct ringout_rec {
	struct ringout_rec *next;
	uint64_t seq;                /* numbered in order of holding (the router's outbox key) */
	uint16_t type;
	bool stored;                 /* the owner's: the router also keeps it in its store */
	uint32_t len;
	uint8_t data[];
};

#define RINGOUT_SPARE_BYTES (256u << 10)

struct ringout {
	struct shmring_producer *prod;
	struct ringout_rec *head, *tail;
	struct spares spares;        /* records' memory freed lately, for the next ones */
	size_t n;                    /* records held */
	size_t bytes;                /* held, each record's own overhead included */
	uint64_t next_seq;
	bool reserved;               /* records reserved in the ring since the last commit */
};

/* What holding one record of len bytes costs, as ringout.bytes counts it. */
static inline size_t ringout_cost(uint32_t len)
{
	return sizeof(struct ringout_rec) + len;
}

void ringout_init(struct ringout *o, struct shmring_producer *prod);
/* Frees what is held and kept; the ring is not touched. */
void ringout_clear(struct ringout *o);

/*
 * Room for a record straight in the ring, to fill before the next
 * commit: only while nothing is held (order). NULL with errno EAGAIN
 * (something is held, or the ring is full), EMSGSIZE (larger than the
 * ring can ever take) or EPROTO (the consumer published an impossible
 * tail: the ring is broken).
 */
void *ringout_reserve(struct ringout *o, uint16_t type, uint32_t len);

/*
 * Hold a copy of a record behind everything held, numbered seq (the next
 * number: o->next_seq). NULL when out of memory.
 */
struct ringout_rec *ringout_hold(struct ringout *o, uint64_t seq, uint16_t type,
				 const void *data, uint32_t len);

/*
 * The ring if it has room and nothing waits, else the backlog. Returns 0
 * when the record went into the ring, 1 when held, -1 with errno
 * EMSGSIZE, EPROTO (as ringout_reserve) or ENOMEM: the record is lost.
 */
int ringout_put(struct ringout *o, uint16_t type, const void *data, uint32_t len);

/*
 * Move held records into the ring while it has room, oldest first;
 * moved(arg, rec), if not NULL, is told of each one before it is freed.
 * Returns 0, or -1 with errno EPROTO when the ring is broken.
 */
int ringout_flush(struct ringout *o, void (*moved)(void *arg, const struct ringout_rec *rec),
		  void *arg);

/* Publish what was reserved. Returns true when the consumer sleeps and must be woken. */
bool ringout_commit(struct ringout *o);

#endif
