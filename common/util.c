/*
 * util.c - small helpers every role shares: eventfd wake-ups, the wall
 * and monotonic clocks in ms, watching an fd with epoll, taking a reloaded configuration, answering the
 * supervisor's health checks and applying new log settings (role.h).
 *
 * Owns nothing: the eventfds are the supervisor's, created non-blocking,
 * one per consuming process, and live as long as the daemon.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "ipc.h"
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

uint64_t wall_clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int epoll_watch(int epfd, int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* The whole struct crosses one control message: it must fit. */
_Static_assert(sizeof(struct iotd_config) <= IPC_MAX_PAYLOAD,
	       "struct iotd_config must fit in one IPC_CONFIG message");

int role_take_config(struct role_env *env, const void *data, size_t len)
{
	if (len != sizeof(*env->cfg)) {
		log_error("ignoring a configuration of %zu bytes from the supervisor (expected %zu)",
			  len, sizeof(*env->cfg));
		return -1;
	}
	memcpy(env->cfg, data, len);
	log_debug("took the reloaded configuration");
	return 0;
}

int role_on_ping(void *ctx, struct ipc_msg *m)
{
	/* EPIPE: the supervisor is gone, which its socket's EOF says next. */
	if (ipc_send(m->sock, IPC_PONG, m->hdr.peer, NULL, 0, -1) < 0 && errno != EPIPE)
		log_warn("cannot answer the supervisor's health check: %s", strerror(errno));
	return 0;
}

int role_on_log_settings(void *ctx, struct ipc_msg *m)
{
	log_apply_settings(m->data, m->hdr.len);
	return 0;
}
