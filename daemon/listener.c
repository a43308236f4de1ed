/*
 * listener.c - the listener role: accepts connections and hands them to
 * the workers.
 *
 * Owns nothing durable: the listening sockets are the supervisor's (a
 * restarted listener inherits them) and the counters it balances on live in
 * shared memory. The connections accepted in one go cross to their chosen
 * workers over their SOCK_SEQPACKET channels with SCM_RIGHTS, one message
 * per worker; the listener closes its copies.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"
#include "log.h"
#include "role.h"

#define ACCEPT_BATCH IPC_MAX_FDS     /* accepted per wake-up: one batch, at most one message per worker */

struct listener {
	struct role_env *env;
	int epfd;
	bool accepting;
	bool full_logged;                    /* max_connections reached: logged once per episode */
	unsigned last_worker;                /* the worker chosen last (0 before the first) */
};

/*
 * Connections accepted in one go, not yet handed over. Until a worker's
 * message is sent they count in pending[], so that balancing and
 * max_connections see each of them as if it had been handed already.
 */
struct batch {
	unsigned n;
	int fd[ACCEPT_BATCH];                /* -1 once handed over or refused */
	int worker[ACCEPT_BATCH];            /* the worker chosen for it */
	struct ipc_client info[ACCEPT_BATCH];
	unsigned pending[IOTD_MAX_WORKERS];  /* chosen for worker i, not yet sent */
	bool skip[IOTD_MAX_WORKERS];         /* its channel refused a message in this batch */
};

/* Decimal digits of v at p; returns the end. */
static char *put_uint(char *p, unsigned v)
{
	char digits[10];
	int n = 0;

	do
		digits[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	while (n > 0)
		*p++ = digits[--n];
	return p;
}

/*
 * "1.2.3.4:port", "[v6]:port" or "local". By hand for IPv4 (glibc's
 * inet_ntop formats it with sprintf), inet_ntop's rules for IPv6: this
 * runs once per connection in the listener.
 */
static void format_remote(const struct sockaddr_storage *ss, struct ipc_client *info)
{
	char *p = info->remote;

	memset(info, 0, sizeof(*info));     /* all of it crosses to the worker */
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		const unsigned char *a = (const unsigned char *)&sin->sin_addr;

		for (int i = 0; i < 4; i++) {
			p = put_uint(p, a[i]);
			*p++ = i < 3 ? '.' : ':';
		}
		p = put_uint(p, ntohs(sin->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		/* "[" + INET6_ADDRSTRLEN - 1 + "]:65535" + NUL fits in remote[64]. */
		*p++ = '[';
		if (inet_ntop(AF_INET6, &sin6->sin6_addr, p, INET6_ADDRSTRLEN) == NULL)
			strcpy(p, "?");
		p += strlen(p);
		*p++ = ']';
		*p++ = ':';
		p = put_uint(p, ntohs(sin6->sin6_port));
	} else {
		memcpy(p, "local", 5);
		p += 5;
	}
	*p = '\0';
}

/* Is worker i's process of the current epoch up and serving? */
static bool worker_alive(const struct listener *l, unsigned i)
{
	const struct shm_worker_state *st = &l->env->shm.sup->workers[i];

	return atomic_load(&st->up) &&
	       atomic_load(&l->env->shm.worker[i]->serving_epoch) == atomic_load(&st->epoch);
}

static uint32_t worker_capacity(const struct listener *l, unsigned i)
{
	return atomic_load(&l->env->shm.sup->workers[i].capacity);
}

/*
 * Connections a worker holds plus those on their way to it: handed (our
 * count) less those gone. A live worker says how many it released; of a
 * dead one every connection it had taken is gone, and those still in its
 * channel wait for its successor (which starts by releasing its
 * predecessor's). The worker's numbers are its claims: a lying worker can
 * only skew where new connections go, never make the count wrap.
 */
static uint64_t worker_load(const struct listener *l, unsigned i)
{
	const struct shm_worker *w = l->env->shm.worker[i];
	uint64_t handed = atomic_load(&l->env->shm.listener->handed[i]);
	uint64_t gone = worker_alive(l, i) ? atomic_load(&w->released) : atomic_load(&w->accepted);

	return handed > gone ? handed - gone : 0;
}

static uint64_t total_load(const struct listener *l)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < l->env->nworkers; i++)
		n += worker_load(l, i);
	return n;
}

/* Connections worker i holds, with those of this batch chosen for it. */
static uint64_t placed_load(const struct listener *l, const struct batch *b, unsigned i)
{
	return worker_load(l, i) + b->pending[i];
}

/*
 * Least-loaded live worker first; a dead worker's channel just queues, so
 * one is chosen only when no live worker can take the connection. Sets
 * *least to the load chosen.
 */
static int least_loaded(const struct listener *l, const struct batch *b, uint64_t *least)
{
	unsigned n = l->env->nworkers;
	int best = -1;
	uint64_t best_load = UINT64_MAX;

	/* Ties go round-robin, so that a burst of connections alternates. */
	for (unsigned k = 1; k <= n; k++) {
		unsigned i = (l->last_worker + k) % n;
		uint64_t load;

		if (b->skip[i])
			continue;
		load = placed_load(l, b, i);
		/* A worker out of file descriptors would have the fd dropped in transit. */
		if (load >= worker_capacity(l, i) && worker_alive(l, i))
			continue;
		if (!worker_alive(l, i))
			load += 1u << 30;
		if (load < best_load) {
			best = (int)i;
			best_load = load;
		}
	}
	*least = best_load;
	return best;
}

/* May worker i take one more: its channel not refused in this batch, alive, with room? */
static bool can_take(const struct listener *l, const struct batch *b, unsigned i)
{
	return !b->skip[i] && worker_alive(l, i) && placed_load(l, b, i) < worker_capacity(l, i);
}

/*
 * Connections that arrive one after another, typically one application's
 * clients, are kept together on one worker: a publish whose subscribers
 * are all clean sessions on its publisher's worker is delivered there,
 * without the router. Balance stays bounded: the previous connection's
 * worker is kept only while it can take this one and would then hold at
 * most placement_slack more than the least-loaded worker; otherwise, and
 * always with a slack of 0, the least-loaded. The slack is read here, at
 * each connection, so that a reload applies to the next one.
 */
static int pick_worker(const struct listener *l, const struct batch *b)
{
	unsigned last = l->last_worker;
	uint64_t least, slack = (uint64_t)l->env->cfg->placement_slack;
	int best = least_loaded(l, b, &least);

	if (best < 0 || (unsigned)best == last || !can_take(l, b, last))
		return best;
	/* Counted with this connection: with a slack of 0 it never stays. */
	if (placed_load(l, b, last) + 1 <= least + slack)
		return (int)last;
	return best;
}

/* Choose a worker for connection i of the batch, or refuse it (closed). */
static void place(struct listener *l, struct batch *b, unsigned i)
{
	int w = pick_worker(l, b);

	if (w >= 0) {
		b->worker[i] = w;
		b->pending[w]++;
		l->last_worker = (unsigned)w;
		return;
	}
	if (!l->full_logged)
		log_warn("no worker can take the connection from %s (all at their open-file "
			 "limit or channels full); refusing connections", b->info[i].remote);
	l->full_logged = true;
	close(b->fd[i]);
	b->fd[i] = -1;
}

/*
 * One message to worker w with every connection chosen for it. Counted
 * as handed once sent; on failure (its channel full or gone) they are
 * placed again, elsewhere.
 */
static void send_to_worker(struct listener *l, struct batch *b, unsigned w)
{
	struct ipc_client info[ACCEPT_BATCH];
	int fds[ACCEPT_BATCH];
	unsigned n = 0;

	for (unsigned i = 0; i < b->n; i++) {
		if (b->fd[i] >= 0 && b->worker[i] == (int)w) {
			fds[n] = b->fd[i];
			info[n++] = b->info[i];
		}
	}
	b->pending[w] = 0;
	if (ipc_send_fds(l->env->chan_listener[w], IPC_CLIENT_FD, w, info, n * sizeof(info[0]),
			 fds, n) < 0) {
		b->skip[w] = true;
		for (unsigned i = 0; i < b->n; i++)
			if (b->fd[i] >= 0 && b->worker[i] == (int)w)
				place(l, b, i);
		return;
	}
	atomic_fetch_add(&l->env->shm.listener->handed[w], n);
	l->full_logged = false;
	for (unsigned i = 0; i < b->n; i++) {
		if (b->fd[i] >= 0 && b->worker[i] == (int)w) {
			log_debug("connection from %s to worker %u", b->info[i].remote, w);
			close(b->fd[i]);
			b->fd[i] = -1;
		}
	}
}

/* Send until nothing is pending: each failed channel is skipped from then on. */
static void hand_over(struct listener *l, struct batch *b)
{
	bool again;

	do {
		again = false;
		for (unsigned w = 0; w < l->env->nworkers; w++) {
			if (b->pending[w] > 0) {
				send_to_worker(l, b, w);
				again = true;
			}
		}
	} while (again);
}

/* May one more connection come in, with the batch's own counted? */
static bool admit(struct listener *l, const struct batch *b)
{
	if (atomic_load(&l->env->shm.sup->memory_pressure)) {
		if (!l->full_logged)
			log_warn("memory_limit reached; refusing new connections");
		l->full_logged = true;
		return false;
	}
	if (total_load(l) + b->n >= (uint64_t)l->env->cfg->max_connections) {
		if (!l->full_logged)
			log_warn("max_connections (%ld) reached; refusing new connections",
				 l->env->cfg->max_connections);
		l->full_logged = true;
		return false;
	}
	return true;
}

static void accept_some(struct listener *l, int lfd)
{
	struct batch b;

	b.n = 0;
	memset(b.pending, 0, sizeof(b.pending));
	memset(b.skip, 0, sizeof(b.skip));
	/* Refused ones count too: a flood past max_connections does not keep us here. */
	for (int k = 0; k < ACCEPT_BATCH; k++) {
		struct sockaddr_storage ss;
		socklen_t slen = sizeof(ss);
		int fd = accept4(lfd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("accept: %s", strerror(errno));
			break;
		}
		if (!admit(l, &b)) {
			close(fd);
			continue;
		}
		atomic_fetch_add(&l->env->shm.listener->connects, 1);
		b.fd[b.n] = fd;
		format_remote(&ss, &b.info[b.n]);
		place(l, &b, b.n++);
	}
	hand_over(l, &b);
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
		/* max_connections and placement_slack are read at each use: the copy is all it takes. */
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
		/*
		 * An MQTT client speaks first: the kernel keeps a new connection
		 * until its first bytes (the CONNECT) are in, so that its worker
		 * reads them at once instead of sleeping and waking again for
		 * them. One second: a client that sends nothing is accepted at the
		 * kernel's first SYN-ACK retransmission and meets connect_timeout
		 * from then on.
		 */
		setsockopt(env->listen_fds[i], IPPROTO_TCP, TCP_DEFER_ACCEPT, &(int){ 1 }, sizeof(int));
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
