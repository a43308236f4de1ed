/*
 * spares.h - freed blocks of memory kept for the next ones of their size.
 *
 * A process that frees a block per message done and allocates one per
 * message made (a worker's QoS 1/2 copies, a ring's backlog records)
 * pays malloc's work on long-cold chunks (consolidation, unlinking) more
 * than the copying. A spare set keeps freed blocks up to 'max_bytes' in
 * all, each allocated in whole SPARES_STEP bytes up to SPARES_STEPS of them, so
 * that a freed one serves the next block of its step; the last freed is
 * the first taken again, the likeliest still in the cache. The blocks
 * are kept in arrays, not linked through themselves: taking one reads
 * nothing of a block that may have gone cold. Larger blocks are plain
 * malloc and free. The caller gives the same size to spares_free() as
 * to spares_alloc(): it names the block's step. One set per owner, no
 * locking.
 */
#ifndef IOTD_SPARES_H
#define IOTD_SPARES_H

#include <stddef.h>
#include <stdint.h>

#define SPARES_STEP 64u
#define SPARES_STEPS 8u

struct spares {
	void **kept[SPARES_STEPS];       /* by step (1 at 0): the blocks, last freed last */
	uint32_t n_kept[SPARES_STEPS], cap_kept[SPARES_STEPS];
	size_t bytes, max_bytes;         /* the blocks kept, and at most */
};

static inline void spares_init(struct spares *s, size_t max_bytes)
{
	*s = (struct spares){ .max_bytes = max_bytes };
}

/* A block of at least bytes (a spare one when its step has one); NULL when out of memory. */
void *spares_alloc(struct spares *s, size_t bytes);
/* p, allocated by spares_alloc(s, bytes), kept while there is room, else freed; p may be NULL. */
void spares_free(struct spares *s, void *p, size_t bytes);
/* Every spare freed. */
void spares_clear(struct spares *s);

#endif
