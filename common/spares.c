/*
 * spares.c - freed blocks kept for the next ones of their size step (see
 * spares.h).
 *
 * Owns the spare blocks of a set and their arrays: a stack by step.
 */
#include <stdbool.h>
#include <stdlib.h>

#include "spares.h"

/* How many SPARES_STEPs a block of bytes is allocated in; 0: too big to keep, as long as it is. */
static unsigned spares_step(size_t bytes)
{
	size_t steps = (bytes + SPARES_STEP - 1) / SPARES_STEP;

	return steps && steps <= SPARES_STEPS ? (unsigned)steps : 0;
}

void *spares_alloc(struct spares *s, size_t bytes)
{
	unsigned step = spares_step(bytes);
	void *p;

	if (step == 0)
		return malloc(bytes);
	if (s->n_kept[step - 1] == 0)
		return malloc(step * (size_t)SPARES_STEP);
	s->bytes -= step * (size_t)SPARES_STEP;
	p = s->kept[step - 1][--s->n_kept[step - 1]];
	/* Blocks are taken in bursts, deeper and colder: the next one is asked for now. */
	if (s->n_kept[step - 1] > 0)
		__builtin_prefetch(s->kept[step - 1][s->n_kept[step - 1] - 1], 1);
	return p;
}

/* Room for one more block of step i + 1 (within the bound); false when the array cannot grow. */
static bool spares_room(struct spares *s, unsigned i)
{
	size_t size = (i + 1) * (size_t)SPARES_STEP, most = s->max_bytes / size;
	uint32_t cap = s->cap_kept[i] ? s->cap_kept[i] * 2 : 64;
	void **a;

	if (s->bytes + size > s->max_bytes)
		return false;
	if (s->n_kept[i] < s->cap_kept[i])
		return true;
	if (cap > most)
		cap = (uint32_t)most;
	if (cap <= s->cap_kept[i] || (a = reallocarray(s->kept[i], cap, sizeof(*a))) == NULL)
		return false;
	s->kept[i] = a;
	s->cap_kept[i] = cap;
	return true;
}

void spares_free(struct spares *s, void *p, size_t bytes)
{
	unsigned step = spares_step(bytes);

	if (p == NULL)
		return;
	if (step == 0 || !spares_room(s, step - 1)) {
		free(p);
		return;
	}
	s->kept[step - 1][s->n_kept[step - 1]++] = p;
	s->bytes += step * (size_t)SPARES_STEP;
}

void spares_clear(struct spares *s)
{
	for (unsigned i = 0; i < SPARES_STEPS; i++) {
		while (s->n_kept[i] > 0)
			free(s->kept[i][--s->n_kept[i]]);
		free(s->kept[i]);
		s->kept[i] = NULL;
		s->cap_kept[i] = 0;
	}
	s->bytes = 0;
}
