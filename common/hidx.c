/*
 * hidx.c - the open-addressing hash index of pointers (see hidx.h).
 *
 * Owns its two slot arrays, never the items. Walking every item while
 * removing some: go from the last slot down and look at a slot again after
 * a removal. A backward shift only moves an item towards the hole, and the
 * slots after the current one have been emptied already, so the only item
 * that can move is one that wrapped around from the front: into the slot
 * being looked at again.
 */
#include <stdlib.h>
#include <string.h>

#include "hidx.h"
#include "keyhash.h"

#define HIDX_MIN_SLOTS 16u

/* murmur3's finaliser: every input bit reaches every output bit. */
uint32_t hidx_hash_u32(uint32_t v)
{
	v ^= v >> 16;
	v *= 0x85ebca6bu;
	v ^= v >> 13;
	v *= 0xc2b2ae35u;
	v ^= v >> 16;
	return v;
}

/*
 * Client ids and topics are the client's choice: keyed (keyhash.h), so no
 * client can pick keys that pile up in one run of slots.
 */
uint32_t hidx_hash_bytes(const void *data, size_t len)
{
	return (uint32_t)keyhash(data, len);
}

void hidx_free(struct hidx *x)
{
	free(x->items);
	free(x->hashes);
	memset(x, 0, sizeof(*x));
}

static void hidx_put(void **items, uint32_t *hashes, uint32_t mask, uint32_t hash, void *item)
{
	uint32_t i = hash & mask;

	while (items[i])
		i = (i + 1) & mask;
	items[i] = item;
	hashes[i] = hash;
}

static bool hidx_grow(struct hidx *x)
{
	uint32_t slots = x->items ? (x->mask + 1) * 2 : HIDX_MIN_SLOTS;
	void **items;
	uint32_t *hashes;

	if (slots < HIDX_MIN_SLOTS) /* the count wrapped: 2^31 slots are as far as it goes */
		return false;
	items = calloc(slots, sizeof(*items));
	hashes = malloc(slots * sizeof(*hashes));
	if (!items || !hashes) {
		free(items);
		free(hashes);
		return false;
	}
	for (uint32_t i = 0; i < hidx_slots(x); i++)
		if (x->items[i])
			hidx_put(items, hashes, slots - 1, x->hashes[i], x->items[i]);
	free(x->items);
	free(x->hashes);
	x->items = items;
	x->hashes = hashes;
	x->mask = slots - 1;
	return true;
}

bool hidx_add(struct hidx *x, uint32_t hash, void *item)
{
	/* At most 3/4 full: linear probing's runs stay short. */
	if (!x->items || (uint64_t)(x->count + 1) * 4 > (uint64_t)(x->mask + 1) * 3)
		if (!hidx_grow(x))
			return false;
	hidx_put(x->items, x->hashes, x->mask, hash, item);
	x->count++;
	return true;
}

void *hidx_find(const struct hidx *x, uint32_t hash, hidx_eq_fn eq, const void *key)
{
	if (!x->items)
		return NULL;
	for (uint32_t i = hash & x->mask; x->items[i]; i = (i + 1) & x->mask)
		if (x->hashes[i] == hash && eq(x->items[i], key))
			return x->items[i];
	return NULL;
}

/* Empty slot 'hole' and pull back each later item of its run that may now sit nearer home. */
static void hidx_shift_back(struct hidx *x, uint32_t hole)
{
	uint32_t i = hole;

	for (;;) {
		uint32_t home;

		i = (i + 1) & x->mask;
		if (!x->items[i])
			break;
		home = x->hashes[i] & x->mask;
		/* The item stays when its home lies cyclically in (hole, i]. */
		if (((i - home) & x->mask) < ((i - hole) & x->mask))
			continue;
		x->items[hole] = x->items[i];
		x->hashes[hole] = x->hashes[i];
		hole = i;
	}
	x->items[hole] = NULL;
}

bool hidx_del(struct hidx *x, uint32_t hash, const void *item)
{
	if (!x->items)
		return false;
	for (uint32_t i = hash & x->mask; x->items[i]; i = (i + 1) & x->mask) {
		if (x->items[i] == item) {
			hidx_shift_back(x, i);
			x->count--;
			return true;
		}
	}
	return false;
}
