/*
 * listener.c - the listener role: accepts connections and hands each one
 * to a worker.
 *
 * Owns nothing durable: the listening sockets are the supervisor's (a
 * restarted listener inherits them) and the counters it balances on live in
 * shared memory. A client fd crosses to the chosen worker over its
 * SOCK_SEQPACKET channel with SCM_RIGHTS; the listener closes its copy.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"
#include "log.h"
#include "role.h"

#define ACCEPT_BATCH 64

struct listener {
	struct role_env *env;
	int epfd;
	bool accepting;
	bool full_logged;                    /* max_connections reached: logged once per episode */
	unsigned last_worker;                /* the worker chosen last */
};

static void format_remote(const struct sockaddr_storage *ss, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(out, len, "local");
	}
}

/* Connections a worker holds plus those on their way to it. */
static uint64_t worker_load(const struct listener *l, unsigned i)
{
	const struct worker_shm *w = &l->env->shm->workers[i];
	uint64_t released = atomic_load(&w->released), handed = atomic_load(&w->handed);

	return handed > released ? handed - released : 0;
}

static uint64_t total_load(const struct listener *l)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < l->env->nworkers; i++)
		n += worker_load(l, i);
	return n;
}

/* Least-loaded live worker first; a dead worker's channel just queues. */
static int pick_worker(const struct listener *l, const bool *skip)
{
	unsigned n = l->env->nworkers;
	int best = -1;
	uint64_t best_load = UINT64_MAX;

	/* Ties go round-robin, so that a burst of connections alternates. */
	for (unsigned k = 1; k <= n; k++) {
		unsigned i = (l->last_worker + k) % n;
		uint64_t load;

		if (skip[i])
			continue;
		load = worker_load(l, i);
		/* A worker out of file descriptors would have the fd dropped in transit. */
		if (load >= atomic_load(&l->env->shm->workers[i].capacity) &&
		    atomic_load(&l->env->shm->workers[i].alive))
			continue;
		if (!atomic_load(&l->env->shm->workers[i].alive))
			load += 1u << 30;
		if (load < best_load) {
			best = (int)i;
			best_load = load;
		}
	}
	return best;
}

static void hand_over(struct listener *l, int fd, const struct sockaddr_storage *ss)
{
	struct ipc_client info;
	bool skip[IOTD_MAX_WORKERS] = { false };
	int w;

	memset(&info, 0, sizeof(info));
	format_remote(ss, info.remote, sizeof(info.remote));
	while ((w = pick_worker(l, skip)) >= 0) {
		if (ipc_send(l->env->chan_listener[w], IPC_CLIENT_FD, (uint32_t)w, &info,
			     sizeof(info), fd) == 0) {
			atomic_fetch_add(&l->env->shm->workers[w].handed, 1);
			l->last_worker = (unsigned)w;
			l->full_logged = false;
			log_debug("connection from %s to worker %d", info.remote, w);
			close(fd);
			return;
		}
		skip[w] = true;
	}
	if (!l->full_logged)
		log_warn("no worker can take the connection from %s (all at their open-file "
			 "limit or channels full); refusing connections", info.remote);
	l->full_logged = true;
	close(fd);
}

static void accept_some(struct listener *l, int lfd)
{
	for (int n = 0; n < ACCEPT_BATCH; n++) {
		struct sockaddr_storage ss;
		socklen_t slen = sizeof(ss);
		int fd = accept4(lfd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("accept: %s", strerror(errno));
			return;
		}
		if (atomic_load(&l->env->shm->memory_pressure)) {
			if (!l->full_logged)
				log_warn("memory_limit reached; refusing new connections");
			l->full_logged = true;
			close(fd);
			continue;
		}
		if (total_load(l) >= (uint64_t)l->env->cfg->max_connections) {
			if (!l->full_logged)
				log_warn("max_connections (%ld) reached; refusing new connections",
					 l->env->cfg->max_connections);
			l->full_logged = true;
			close(fd);
			continue;
		}
		atomic_fetch_add(&l->env->shm->connects, 1);
		hand_over(l, fd, &ss);
	}
}

static void stop_accepting(struct listener *l)
{
	for (int i = 0; i < l->env->n_listen_fds; i++)
		epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->env->listen_fds[i], NULL);
	l->accepting = false;
}

/* Returns false when the listener must exit. */
static bool control_message(struct listener *l)
{
	struct ipc_hdr hdr;
	char buf[IPC_MAX_PAYLOAD];
	int fd = -1;
	ssize_t n = ipc_recv(l->env->ctl_fd, &hdr, buf, sizeof(buf), &fd);

	if (fd >= 0)
		close(fd);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR;
	switch (hdr.type) {
	case 0:
	case IPC_SHUTDOWN:
		return false;
	case IPC_STOP_ACCEPT:
		stop_accepting(l);
		return true;
	case IPC_PING:
		ipc_send(l->env->ctl_fd, IPC_PONG, 0, NULL, 0, -1);
		return true;
	case IPC_LOG_SETTINGS:
		log_apply_settings(buf, (size_t)n);
		return true;
	case IPC_CONFIG:
		/* max_connections is read at each accept: the copy is all it takes. */
		role_take_config(l->env, buf, (size_t)n);
		return true;
	default:
		return true;
	}
}

int listener_main(struct role_env *env)
{
	struct listener l = { .env = env, .accepting = true };
	struct epoll_event ev = { .events = EPOLLIN }, evs[16];

	l.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l.epfd < 0)
		fatal("epoll_create1: %s", strerror(errno));
	for (int i = 0; i < env->n_listen_fds; i++) {
		/*
		 * Replies are batched per loop turn already: Nagle would only add
		 * delay. Accepted sockets inherit it (Linux), one call for all.
		 * A unix socket refuses it, harmlessly.
		 */
		setsockopt(env->listen_fds[i], IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
		ev.data.fd = env->listen_fds[i];
		if (epoll_ctl(l.epfd, EPOLL_CTL_ADD, env->listen_fds[i], &ev) < 0)
			fatal("epoll_ctl: %s", strerror(errno));
	}
	ev.data.fd = env->ctl_fd;
	if (epoll_ctl(l.epfd, EPOLL_CTL_ADD, env->ctl_fd, &ev) < 0)
		fatal("epoll_ctl: %s", strerror(errno));
	ipc_send(env->ctl_fd, IPC_READY, 0, NULL, 0, -1);
	for (;;) {
		int n = epoll_wait(l.epfd, evs, (int)ARRAY_SIZE(evs), -1);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++) {
			if (evs[i].data.fd == env->ctl_fd) {
				if (!control_message(&l))
					return 0;
			} else if (l.accepting) {
				accept_some(&l, evs[i].data.fd);
			}
		}
	}
}
