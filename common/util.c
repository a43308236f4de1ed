/*
 * util.c - small helpers every role shares: eventfd wake-ups (role.h).
 *
 * Owns nothing: the eventfds are the supervisor's, created non-blocking,
 * one per consuming process, and live as long as the daemon.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "log.h"
#include "role.h"

void eventfd_wake(int efd)
{
	uint64_t one = 1;
	ssize_t n;

	do
		n = write(efd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
	/* EAGAIN: the counter is saturated, so the sleeper is woken anyway. */
	if (n < 0 && errno != EAGAIN)
		fatal("eventfd %d: write: %m", efd);
}

void eventfd_drain(int efd)
{
	uint64_t v;

	/* One read resets a plain eventfd; the loop also empties an EFD_SEMAPHORE one. */
	for (;;) {
		ssize_t n = read(efd, &v, sizeof(v));

		if (n >= 0)
			continue;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return;
		fatal("eventfd %d: read: %m", efd);
	}
}
