/*
 * auth_pool.c - the auth role's threads: a few (auth.hash_threads) that
 * run auth_decide() on queued jobs, so that a slow hash (PBKDF2, Argon2)
 * never stalls the role's loop and one client's hash never waits behind
 * the loop.
 *
 * Owns the two queues, under one mutex: jobs to decide (FIFO) and jobs
 * decided, which the loop takes when the pool's eventfd wakes it. The
 * loop gives it a job or two per thread, in the order auth_sched.c
 * chooses; how many jobs exist at once is the loop's bound
 * (auth.max_pending per worker), not the pool's.
 */
#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "auth_int.h"
#include "log.h"
#include "role.h"

static void *pool_thread(void *arg)
{
	struct auth_pool *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct auth_job *j;

		while (p->todo == NULL && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop)
			break;
		j = p->todo;
		p->todo = j->next;
		if (p->todo == NULL)
			p->todo_tail = &p->todo;
		pthread_mutex_unlock(&p->mu);
		j->next = NULL;
		auth_decide(j);
		pthread_mutex_lock(&p->mu);
		*p->done_tail = j;
		p->done_tail = &j->next;
		eventfd_wake(p->efd);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int auth_pool_start(struct auth_pool *p, unsigned nthreads)
{
	int rc;

	p->todo = p->done = NULL;
	p->todo_tail = &p->todo;
	p->done_tail = &p->done;
	p->stop = false;
	p->n = 0;
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0 || pthread_mutex_init(&p->mu, NULL) != 0 ||
	    pthread_cond_init(&p->cv, NULL) != 0) {
		log_error("cannot set up the hashing threads: %s", strerror(errno));
		return -1;
	}
	nthreads = MIN(nthreads, (unsigned)ARRAY_SIZE(p->threads));
	for (p->n = 0; p->n < nthreads; p->n++) {
		rc = pthread_create(&p->threads[p->n], NULL, pool_thread, p);
		if (rc != 0) {
			log_error("cannot start a hashing thread: %s", strerror(rc));
			auth_pool_stop(p);
			return -1;
		}
	}
	return 0;
}

void auth_pool_submit(struct auth_pool *p, struct auth_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&p->mu);
	*p->todo_tail = j;
	p->todo_tail = &j->next;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

struct auth_job *auth_pool_take_done(struct auth_pool *p)
{
	struct auth_job *list;

	eventfd_drain(p->efd);
	pthread_mutex_lock(&p->mu);
	list = p->done;
	p->done = NULL;
	p->done_tail = &p->done;
	pthread_mutex_unlock(&p->mu);
	return list;
}

void auth_pool_stop(struct auth_pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n; i++)
		pthread_join(p->threads[i], NULL);
	p->n = 0;
}
