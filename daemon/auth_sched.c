/*
 * auth_sched.c - the order in which the auth role's threads decide jobs
 * (auth_int.h, struct auth_sched): a queue per worker's channel, served
 * in turn, each channel with at most `budget` jobs with the threads at
 * once (all the threads but one for each other worker, at least one,
 * times AUTH_SCHED_DEPTH), so that the clients of one worker cannot take
 * every thread; and the addresses
 * that failed recently, each with one job in flight at a time and a
 * bounded number waiting behind it, so that an address that keeps failing
 * costs one hash per slow-down delay however many connections it opens.
 *
 * Owns the queues and the entries of the failing addresses (one exists
 * while its address has a job in flight). Runs on the role's loop only;
 * the pool (auth_pool.c) is given at most AUTH_SCHED_DEPTH jobs per
 * thread: a thread that finishes one finds the next waiting, instead of
 * sleeping until the loop has taken the verdict and handed it another
 * (measured: about a fifth more connections per CPU-second), and the
 * order stays within one job per thread of the turns above.
 */
#include <stdlib.h>

#include "auth_int.h"

#define AUTH_SCHED_DEPTH 2       /* jobs with the pool per thread: one deciding, one waiting */

/* A failing address with a job in flight, and the jobs waiting behind it. */
struct auth_addr {
	UT_hash_handle hh;
	struct addr_key key;
	struct auth_job *waiting, **waiting_tail;
	uint32_t nwaiting;
};

void auth_sched_init(struct auth_sched *s, unsigned nchans, unsigned threads)
{
	*s = (struct auth_sched){ .nchans = nchans, .slots = threads * AUTH_SCHED_DEPTH };
	s->budget = (threads > nchans ? threads - (nchans - 1) : 1) * AUTH_SCHED_DEPTH;
	for (unsigned i = 0; i < nchans; i++)
		s->chans[i].ready_tail = &s->chans[i].ready;
}

static void ready_push(struct auth_sched *s, struct auth_job *j)
{
	struct auth_sched_chan *c = &s->chans[j->worker];

	j->state = JOB_READY;
	j->next = NULL;
	*c->ready_tail = j;
	c->ready_tail = &j->next;
}

/* Unlink j from the list at *head (whose tail pointer is *tail); false when it is not there. */
static bool list_unlink(struct auth_job **head, struct auth_job ***tail, struct auth_job *j)
{
	struct auth_job **pp = head;

	while (*pp != NULL && *pp != j)
		pp = &(*pp)->next;
	if (*pp == NULL)
		return false;
	*pp = j->next;
	if (*tail == &j->next)
		*tail = pp;
	j->next = NULL;
	return true;
}

enum auth_sched_added auth_sched_add(struct auth_sched *s, struct auth_job *j, bool failing,
				     uint32_t max_waiting)
{
	struct auth_addr *e = NULL;

	if (j->has_key)
		HASH_FIND(hh, s->addrs, &j->key, sizeof(j->key), e);
	if (e != NULL) {
		if (e->nwaiting >= max_waiting)
			return SCHED_FULL;
		j->state = JOB_WAITING;
		j->addr = e;
		j->next = NULL;
		*e->waiting_tail = j;
		e->waiting_tail = &j->next;
		e->nwaiting++;
		return SCHED_WAITING;
	}
	if (j->has_key && failing) {
		e = calloc(1, sizeof(*e));
		if (e == NULL)
			return SCHED_FULL;
		e->key = j->key;
		e->waiting_tail = &e->waiting;
		HASH_ADD(hh, s->addrs, key, sizeof(e->key), e);
		j->addr = e;
	}
	ready_push(s, j);
	return SCHED_READY;
}

struct auth_job *auth_sched_next(struct auth_sched *s)
{
	if (s->hashing >= s->slots)
		return NULL;
	for (unsigned n = 0; n < s->nchans; n++) {
		unsigned i = (s->turn + n) % s->nchans;
		struct auth_sched_chan *c = &s->chans[i];
		struct auth_job *j = c->ready;

		if (j == NULL || c->hashing >= s->budget)
			continue;
		c->ready = j->next;
		if (c->ready == NULL)
			c->ready_tail = &c->ready;
		j->next = NULL;
		j->state = JOB_HASHING;
		c->hashing++;
		s->hashing++;
		s->turn = (i + 1) % s->nchans;
		return j;
	}
	return NULL;
}

void auth_sched_hashed(struct auth_sched *s, struct auth_job *j)
{
	s->chans[j->worker].hashing--;
	s->hashing--;
}

struct auth_job *auth_sched_release(struct auth_sched *s, struct auth_job *j)
{
	struct auth_addr *e = j->addr;
	struct auth_job *next;

	if (e == NULL || j->state == JOB_WAITING)
		return NULL;             /* not in flight: nothing waits for it */
	j->addr = NULL;
	next = e->waiting;
	if (next == NULL) {
		HASH_DEL(s->addrs, e);
		free(e);
		return NULL;
	}
	e->waiting = next->next;
	if (e->waiting == NULL)
		e->waiting_tail = &e->waiting;
	e->nwaiting--;
	ready_push(s, next);
	return next;
}

bool auth_sched_remove(struct auth_sched *s, struct auth_job *j)
{
	struct auth_sched_chan *c = &s->chans[j->worker];

	switch (j->state) {
	case JOB_WAITING:
		if (!list_unlink(&j->addr->waiting, &j->addr->waiting_tail, j))
			return false;
		j->addr->nwaiting--;
		j->addr = NULL;
		return true;
	case JOB_READY:
		return list_unlink(&c->ready, &c->ready_tail, j);
	default:
		return false;
	}
}

static void free_list(struct auth_job *j, void (*free_job)(struct auth_job *))
{
	struct auth_job *next;

	for (; j != NULL; j = next) {
		next = j->next;
		free_job(j);
	}
}

void auth_sched_clear(struct auth_sched *s, void (*free_job)(struct auth_job *))
{
	struct auth_addr *e, *tmp;

	for (unsigned i = 0; i < s->nchans; i++) {
		free_list(s->chans[i].ready, free_job);
		s->chans[i].ready = NULL;
		s->chans[i].ready_tail = &s->chans[i].ready;
	}
	HASH_ITER(hh, s->addrs, e, tmp) {
		HASH_DEL(s->addrs, e);
		free_list(e->waiting, free_job);
		free(e);
	}
}
