/*
 * spares.c - freed blocks kept for the next ones of their size step (see
 * spares.h).
 *
 * Owns the spare blocks of a set: free lists by step, last freed first.
 */
#include <stdlib.h>
#include <string.h>

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
	void *p = step ? s->head[step] : NULL;

	if (p == NULL)
		return malloc(step ? step * (size_t)SPARES_STEP : bytes);
	memcpy(&s->head[step], p, sizeof(p));
	s->n--;
	return p;
}

void spares_free(struct spares *s, void *p, size_t bytes)
{
	unsigned step = spares_step(bytes);

	if (p == NULL)
		return;
	if (step == 0 || s->n >= s->max) {
		free(p);
		return;
	}
	memcpy(p, &s->head[step], sizeof(p));
	s->head[step] = p;
	s->n++;
}

void spares_clear(struct spares *s)
{
	for (unsigned i = 0; i <= SPARES_STEPS; i++) {
		void *p = s->head[i], *next;

		for (; p != NULL; p = next) {
			memcpy(&next, p, sizeof(next));
			free(p);
		}
		s->head[i] = NULL;
	}
	s->n = 0;
}
