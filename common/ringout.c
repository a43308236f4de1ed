/*
 * ringout.c - a ring's producer end with its overflow backlog (see
 * ringout.h).
 *
 * Owns the backlog: a FIFO of copies in the producer's private memory,
 * and the memory of records moved out of it, kept for the next ones.
 * The ring itself, its geometry and its checks are shmring's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ringout.h"

void ringout_init(struct ringout *o, struct shmring_producer *prod)
{
	*o = (struct ringout){ .prod = prod };
	spares_init(&o->spares, RINGOUT_SPARE_BYTES);
}

void ringout_clear(struct ringout *o)
{
	struct ringout_rec *e, *next;

	for (e = o->head; e != NULL; e = next) {
		next = e->next;
		free(e);
	}
	spares_clear(&o->spares);
	o->head = o->tail = NULL;
	o->n = 0;
	o->bytes = 0;
}

void *ringout_reserve(struct ringout *o, uint16_t type, uint32_t len)
{
	void *dst;

	if (len > shmring_max_payload(o->prod->r.size)) {
		errno = EMSGSIZE;      /* held, it would block the backlog for good */
		return NULL;
	}
	if (o->head != NULL) {
		errno = EAGAIN;
		return NULL;
	}
	dst = shmring_reserve(o->prod, type, 0, len);
	if (dst != NULL)
		o->reserved = true;
	return dst;
}

struct ringout_rec *ringout_hold(struct ringout *o, uint64_t seq, uint16_t type,
				 const void *data, uint32_t len)
{
	struct ringout_rec *e = spares_alloc(&o->spares, ringout_cost(len));

	if (e == NULL)
		return NULL;
	*e = (struct ringout_rec){ .seq = seq, .type = type, .len = len };
	if (len)
		memcpy(e->data, data, len);
	if (o->tail)
		o->tail->next = e;
	else
		o->head = e;
	o->tail = e;
	o->n++;
	o->bytes += ringout_cost(len);
	if (seq >= o->next_seq)
		o->next_seq = seq + 1;
	return e;
}

int ringout_put(struct ringout *o, uint16_t type, const void *data, uint32_t len)
{
	void *dst = ringout_reserve(o, type, len);

	if (dst != NULL) {
		memcpy(dst, data, len);
		return 0;
	}
	if (errno != EAGAIN)
		return -1;
	if (ringout_hold(o, o->next_seq, type, data, len) == NULL) {
		errno = ENOMEM;
		return -1;
	}
	return 1;
}

int ringout_flush(struct ringout *o, void (*moved)(void *arg, const struct ringout_rec *rec),
		  void *arg)
{
	struct ringout_rec *e;

	while ((e = o->head) != NULL) {
		void *dst;

		/* Held a while, the records are cold: ask for the next one early. */
		if (e->next != NULL)
			__builtin_prefetch(e->next);
		dst = shmring_reserve(o->prod, e->type, 0, e->len);
		if (dst == NULL)
			return errno == EPROTO ? -1 : 0;    /* full: p_wait set, the consumer wakes us */
		memcpy(dst, e->data, e->len);
		o->reserved = true;
		if (moved)
			moved(arg, e);
		o->head = e->next;
		if (o->head == NULL)
			o->tail = NULL;
		o->n--;
		o->bytes -= ringout_cost(e->len);
		spares_free(&o->spares, e, ringout_cost(e->len));
	}
	return 0;
}

bool ringout_commit(struct ringout *o)
{
	if (!o->reserved)
		return false;
	o->reserved = false;
	return shmring_commit(o->prod);
}
