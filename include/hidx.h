/*
 * hidx.h - an open-addressing hash index of pointers.
 *
 * The router finds each session by client id and by session id. uthash
 * would put a 56-byte handle in every session per index, and chains that
 * cost a cache miss per link; this index costs 12 bytes per slot (the
 * pointer and its 32-bit hash) at a load of at most 3/4, and a probe
 * compares hashes without touching the item. The caller computes the
 * hashes and says what "equal" means; the index never looks inside an
 * item. Linear probing, deletion by backward shift (no tombstones).
 */
#ifndef IOTD_HIDX_H
#define IOTD_HIDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct hidx {
	void **items;                /* NULL: a free slot */
	uint32_t *hashes;            /* hashes[i] belongs to items[i] */
	uint32_t mask;               /* slots - 1; no slots while items is NULL */
	uint32_t count;
};

typedef bool (*hidx_eq_fn)(const void *item, const void *key);

/* A key of bytes (a client id, a topic), for an index by such keys. */
struct hidx_bytes {
	const void *p;
	size_t len;
};

/* For an hidx_eq_fn: is the key (a struct hidx_bytes) these very bytes? */
static inline bool hidx_bytes_eq(const void *key, const void *p, size_t len)
{
	const struct hidx_bytes *k = key;

	return len == k->len && memcmp(p, k->p, len) == 0;
}

/* A zeroed struct hidx is an empty index. */
void hidx_free(struct hidx *x);

/* false when out of memory: the item is not in the index. */
bool hidx_add(struct hidx *x, uint32_t hash, void *item);

/* The item with this hash for which eq(item, key) holds, or NULL. */
void *hidx_find(const struct hidx *x, uint32_t hash, hidx_eq_fn eq, const void *key);

/* Remove this very item (compared as a pointer); false when it is not there. */
bool hidx_del(struct hidx *x, uint32_t hash, const void *item);

static inline uint32_t hidx_count(const struct hidx *x)
{
	return x->count;
}

/* Slot positions, for a walk over every item: for (i = hidx_slots(x); i-- > 0;) */
static inline uint32_t hidx_slots(const struct hidx *x)
{
	return x->items ? x->mask + 1 : 0;
}

static inline void *hidx_at(const struct hidx *x, uint32_t pos)
{
	return x->items[pos];
}

/*
 * Hashes the callers use: spread over all 32 bits, as the index takes the
 * low ones. Bytes a client chose (client ids, topics) go through the
 * process's keyed hash (keyhash.h); numbers the daemon assigns (session
 * ids) through a fixed mix.
 */
uint32_t hidx_hash_bytes(const void *data, size_t len);
uint32_t hidx_hash_u32(uint32_t v);

#endif
