/*
 * listener.c - the listener role: accepts connections and hands them to
 * the workers.
 *
 * Owns nothing durable: the listening sockets are the supervisor's (a
 * restarted listener inherits them) and the counters it balances on live in
 * shared memory. The connections accepted in one go cross to their chosen
 * workers over their SOCK_SEQPACKET channels with SCM_RIGHTS, one message
 * per worker; the listener closes its copies.
 *
 * Also owns what it knows per remote address (addrlimit.h): how many
 * connections each worker holds from it, learnt from the workers over the
 * same channels (IPC_ADDR_SYNC, IPC_ADDR_REPORT in ipc.h), and how fast
 * new ones come. What a worker reports is taken as hostile: it can make
 * the counts wrong, never make the tables grow past their bounds.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "addrlimit.h"
#include "ipc.h"
#include "log.h"
#include "role.h"

#define ACCEPT_BATCH IPC_MAX_FDS     /* accepted per wake-up: one batch, at most one message per worker */
#define REPORTS_PER_WAKE 64          /* messages read from one worker's channel per wake-up */
#define CTL_PER_WAKE 16              /* messages read from the supervisor per wake-up */

/* What the listener knows of one worker's connections, by address. */
struct worker_view {
	struct addr_counts held;             /* connections per address */
	uint64_t sync_token;                 /* an IPC_ADDR_SYNC waits for its answer; 0: in step */
	uint32_t epoch;                      /* the worker's epoch the view is of */
	bool sync_unsent;                    /* that IPC_ADDR_SYNC still to be sent (channel full) */
	struct ipc_dispatcher reports;       /* what the worker may send on its channel */
};

struct listener {
	struct role_env *env;
	int epfd;
	bool accepting;
	bool stopping;                       /* IPC_SHUTDOWN came */
	bool full_logged;                    /* max_connections reached: logged once per episode */
	bool table_full_logged;              /* the address counts at their bound: logged once */
	unsigned last_worker;                /* the worker chosen last (0 before the first) */
	uint32_t next_token;
	struct ipc_dispatcher ctl;           /* what the supervisor may send */
	struct addr_rates *rates;
	struct worker_view views[IOTD_MAX_WORKERS];
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
	bool keyed[ACCEPT_BATCH];            /* it has an address (IP), counted in key[] */
	struct addr_key key[ACCEPT_BATCH];
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

/* Is worker i's process of the current epoch up and serving (the supervisor says so)? */
static bool worker_alive(const struct listener *l, unsigned i)
{
	const struct shm_worker_state *st = &l->env->shm.sup->workers[i];

	return atomic_load(&st->up) && atomic_load(&st->ready_epoch) == atomic_load(&st->epoch);
}

static uint32_t worker_capacity(const struct listener *l, unsigned i)
{
	return atomic_load(&l->env->shm.sup->workers[i].capacity);
}

/*
 * Where worker i's process counts from: our handed[i] when we first saw
 * its epoch (kept in our region, so a restarted listener keeps it too).
 * Each worker process starts its own counts from 0.
 */
static uint64_t worker_base(const struct listener *l, unsigned i)
{
	struct shm_listener *ls = l->env->shm.listener;
	uint32_t epoch = atomic_load(&l->env->shm.sup->workers[i].epoch);

	if (atomic_load(&ls->base_epoch[i]) != epoch) {
		atomic_store(&ls->base[i], atomic_load(&ls->handed[i]));
		atomic_store(&ls->base_epoch[i], epoch);
	}
	return atomic_load(&ls->base[i]);
}

/*
 * Connections a worker holds plus those on their way to it. Since the base
 * we handed it 'since'; it says it took 'accepted' (more than 'since' when
 * it took fds its predecessor left in the channel) and released
 * 'released'. A dead worker's connections are all gone; what it had not
 * taken waits in the channel for its successor. The worker's numbers are
 * its claims, clamped so that the count never wraps: a lying worker can
 * skew where new connections go, not the count of another worker nor its
 * successor's.
 */
static uint64_t worker_load(const struct listener *l, unsigned i)
{
	const struct shm_worker *w = l->env->shm.worker[i];
	uint64_t since = atomic_load(&l->env->shm.listener->handed[i]) - worker_base(l, i);
	uint64_t accepted = atomic_load(&w->accepted), released = atomic_load(&w->released);
	uint64_t taken = since > accepted ? since : accepted;

	if (!worker_alive(l, i))
		return since > accepted ? since - accepted : 0;
	return taken > released ? taken - released : 0;
}

static uint64_t total_load(const struct listener *l)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < l->env->nworkers; i++)
		n += worker_load(l, i);
	return n;
}

/* --- addresses ----------------------------------------------------------- */

/* Addresses held in every view together. */
static uint32_t counted_addresses(const struct listener *l)
{
	uint32_t n = 0;

	for (unsigned i = 0; i < l->env->nworkers; i++)
		n += l->views[i].held.used;
	return n;
}

/*
 * One more connection from k on worker w. Every view together holds at
 * most max_connections (and a batch) addresses, as many as there can be
 * connections: only wrong reports from a worker can reach that, and then
 * a connection goes uncounted rather than the table growing.
 */
static void count_address(struct listener *l, unsigned w, const struct addr_key *k)
{
	struct addr_counts *t = &l->views[w].held;
	uint64_t budget = (uint64_t)l->env->cfg->max_connections + ACCEPT_BATCH;
	uint64_t others = counted_addresses(l) - t->used;

	if (addr_counts_add(t, k, budget > others ? (uint32_t)MIN(budget - others, UINT32_MAX) : 0))
		return;
	if (!l->table_full_logged)
		log_warn("per-address connection counts full (%u addresses) or out of memory; "
			 "a connection goes uncounted", counted_addresses(l));
	l->table_full_logged = true;
}

/* Connections from k on every worker, this batch's included. */
static uint64_t address_load(const struct listener *l, const struct addr_key *k)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < l->env->nworkers; i++)
		n += addr_counts_get(&l->views[i].held, k);
	return n;
}

static bool send_sync(struct listener *l, unsigned w)
{
	struct worker_view *v = &l->views[w];

	if (ipc_send(l->env->chan_listener[w], IPC_ADDR_SYNC, w, &v->sync_token,
		     sizeof(v->sync_token), -1) < 0)
		return false;       /* its channel is full (a worker down): tried again */
	v->sync_unsent = false;
	return true;
}

/*
 * Start worker w's view afresh: count from zero what is handed over from
 * now on, and ask the worker for what it holds (see ipc.h). Until it
 * answers, the connections it held before count for nothing.
 */
static void resync(struct listener *l, unsigned w)
{
	struct worker_view *v = &l->views[w];

	addr_counts_clear(&v->held);
	/* Never 0, and not one a previous listener could have asked with. */
	v->sync_token = (uint64_t)(uint32_t)getpid() << 32 | ++l->next_token;
	v->sync_unsent = true;
	send_sync(l, w);
}

/* A restarted worker holds none of its predecessor's connections. */
static void views_check(struct listener *l)
{
	for (unsigned w = 0; w < l->env->nworkers; w++) {
		struct worker_view *v = &l->views[w];
		uint32_t epoch = atomic_load(&l->env->shm.sup->workers[w].epoch);

		if (epoch != v->epoch) {
			v->epoch = epoch;
			resync(l, w);
		} else if (v->sync_unsent) {
			send_sync(l, w);
		}
	}
}

/* One entry of a worker's report; anything unexpected is ignored. */
static void apply_report(struct listener *l, unsigned w, const struct ipc_addr_entry *e)
{
	struct worker_view *v = &l->views[w];
	struct addr_key k;

	memcpy(k.b, e->key, sizeof(k.b));
	switch (e->op) {
	case IPC_ADDR_RESET:
		if (v->sync_token != 0 && e->token == v->sync_token && !v->sync_unsent)
			v->sync_token = 0;
		break;
	case IPC_ADDR_HELD:
		if (v->sync_token == 0)
			count_address(l, w, &k);
		break;
	case IPC_ADDR_GONE:
		if (v->sync_token == 0)
			addr_counts_sub(&v->held, &k);
		break;
	case IPC_ADDR_LOST:
		/* Even with a request on its way: the worker may have failed to answer it. */
		resync(l, w);
		break;
	default:
		break;
	}
}

/* IPC_ADDR_REPORT; hdr.peer is the channel's worker (ipc_dispatch checked it). */
static int on_addr_report(void *ctx, struct ipc_msg *m)
{
	const struct ipc_addr_entry *e = m->data;

	for (size_t i = 0; i < m->hdr.len / sizeof(*e); i++)
		apply_report(ctx, m->hdr.peer, &e[i]);
	return 0;
}

static const struct ipc_handler from_worker[IPC_TYPE_MAX] = {
	[IPC_ADDR_REPORT] = { .fn = on_addr_report, .unit = sizeof(struct ipc_addr_entry),
			      .max_len = IPC_ADDR_ENTRIES_MAX * sizeof(struct ipc_addr_entry) },
};

/* What worker w reported, a bounded number of messages per wake-up. */
static void read_reports(struct listener *l, unsigned w)
{
	views_check(l);
	/* No EOF can come: the supervisor holds both ends. */
	ipc_dispatch(l->env->chan_listener[w], &l->views[w].reports, l, REPORTS_PER_WAKE);
}

static bool refuse_address(struct addr_rate *r, uint8_t what, const struct addr_key *k,
			   const char *remote, const char *key, long limit)
{
	char addr[64];

	if (!(r->logged & what)) {
		addr_key_format(k, addr, sizeof(addr));
		log_client(LOG_LVL_WARN, "", remote,
			   "%s (%ld) reached for %s; refusing its new connections", key, limit, addr);
		r->logged |= what;
	}
	return false;
}

/*
 * max_connect_rate_per_address (every connection takes a token, refused
 * ones too: a client hammering at the door stays out), then
 * max_connections_per_address. Both are read at each connection, so that
 * a reload applies to the next one. A refusal is logged once per address
 * until one of its connections is admitted again.
 */
static bool admit_address(struct listener *l, const struct addr_key *k, const char *remote)
{
	const struct iotd_config *cfg = l->env->cfg;
	long rate = cfg->max_connect_rate_per_address, per = cfg->max_connections_per_address;
	uint64_t now = clock_ms();
	struct addr_rate *r = addr_rates_get(l->rates, k, now, rate);

	if (rate > 0 && !addr_rate_take(r, now, rate))
		return refuse_address(r, ADDR_LOGGED_RATE, k, remote,
				      "max_connect_rate_per_address", rate);
	if (per > 0 && address_load(l, k) >= (uint64_t)per)
		return refuse_address(r, ADDR_LOGGED_COUNT, k, remote,
				      "max_connections_per_address", per);
	r->logged = 0;
	return true;
}

/* --- placement ------------------------------------------------------------- */

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
		if (b->keyed[i])
			count_address(l, (unsigned)w, &b->key[i]);
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
	/* Its view's request goes first: the worker answers it before taking these. */
	if ((l->views[w].sync_unsent && !send_sync(l, w)) ||
	    ipc_send_fds(l->env->chan_listener[w], IPC_CLIENT_FD, w, info, n * sizeof(info[0]),
			 fds, n) < 0) {
		b->skip[w] = true;
		for (unsigned i = 0; i < b->n; i++) {
			if (b->fd[i] >= 0 && b->worker[i] == (int)w) {
				if (b->keyed[i])
					addr_counts_sub(&l->views[w].held, &b->key[i]);
				place(l, b, i);
			}
		}
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

/* What the connections of listening socket lfd speak (role_env.listen_kinds). */
static const struct listen_kind *listen_kind_of(const struct listener *l, int lfd)
{
	static const struct listen_kind plain = { .transport = LISTEN_TCP };

	for (int i = 0; i < l->env->n_listen_fds; i++)
		if (l->env->listen_fds[i] == lfd)
			return &l->env->listen_kinds[i];
	return &plain;
}

static void accept_some(struct listener *l, int lfd)
{
	const struct listen_kind *kind = listen_kind_of(l, lfd);
	struct batch b;

	b.n = 0;
	memset(b.pending, 0, sizeof(b.pending));
	memset(b.skip, 0, sizeof(b.skip));
	views_check(l);
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
		format_remote(&ss, &b.info[b.n]);
		b.info[b.n].transport = (uint32_t)kind->transport;
		memcpy(b.info[b.n].path, kind->path, sizeof(b.info[b.n].path));
		b.info[b.n].tls = (uint32_t)kind->tls;
		b.keyed[b.n] = addr_key_from_sockaddr(&ss, &b.key[b.n]);
		if (b.keyed[b.n] && !admit_address(l, &b.key[b.n], b.info[b.n].remote)) {
			close(fd);
			continue;
		}
		atomic_fetch_add(&l->env->shm.listener->connects, 1);
		b.fd[b.n] = fd;
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

/* --- what the supervisor says ---------------------------------------------- */

static int on_shutdown(void *ctx, struct ipc_msg *m)
{
	((struct listener *)ctx)->stopping = true;
	return IPC_STOP;
}

static int on_stop_accept(void *ctx, struct ipc_msg *m)
{
	stop_accepting(ctx);
	return 0;
}

/* Its limits and placement_slack are read at each use: the copy is all it takes. */
static int on_config(void *ctx, struct ipc_msg *m)
{
	role_take_config(((struct listener *)ctx)->env, m->data, m->hdr.len);
	return 0;
}

static const struct ipc_handler from_supervisor[IPC_TYPE_MAX] = {
	[IPC_SHUTDOWN] = { .fn = on_shutdown },
	[IPC_STOP_ACCEPT] = { .fn = on_stop_accept },
	ROLE_SUPERVISOR_ENTRIES(on_config),
};

/* Returns false when the listener must exit: told to, or the supervisor is gone. */
static bool control_message(struct listener *l)
{
	return ipc_dispatch(l->env->ctl_fd, &l->ctl, l, CTL_PER_WAKE) >= 0 && !l->stopping;
}

/* The worker whose channel fd is, or -1. */
static int channel_worker(const struct listener *l, int fd)
{
	for (unsigned w = 0; w < l->env->nworkers; w++)
		if (l->env->chan_listener[w] == fd)
			return (int)w;
	return -1;
}

int listener_main(struct role_env *env)
{
	struct listener l = { .env = env, .accepting = true };
	struct epoll_event ev = { .events = EPOLLIN }, evs[16];

	l.rates = calloc(1, sizeof(*l.rates));
	l.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l.rates == NULL)
		fatal("out of memory for the per-address rates");
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
	ipc_dispatcher_init(&l.ctl, from_supervisor, IPC_PEER_ANY, "the supervisor");
	ev.data.fd = env->ctl_fd;
	if (epoll_ctl(l.epfd, EPOLL_CTL_ADD, env->ctl_fd, &ev) < 0)
		fatal("epoll_ctl: %s", strerror(errno));
	/* The workers' reports; and what they hold now, from each of them. */
	for (unsigned w = 0; w < env->nworkers; w++) {
		char from[32];

		snprintf(from, sizeof(from), "worker %u", w);
		ipc_dispatcher_init(&l.views[w].reports, from_worker, w, from);
		ev.data.fd = env->chan_listener[w];
		if (epoll_ctl(l.epfd, EPOLL_CTL_ADD, env->chan_listener[w], &ev) < 0)
			fatal("epoll_ctl: %s", strerror(errno));
		l.views[w].epoch = atomic_load(&env->shm.sup->workers[w].epoch);
		resync(&l, w);
	}
	ipc_send(env->ctl_fd, IPC_READY, 0, NULL, 0, -1);
	for (;;) {
		int n = epoll_wait(l.epfd, evs, (int)ARRAY_SIZE(evs), -1);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++) {
			int w = channel_worker(&l, evs[i].data.fd);

			if (evs[i].data.fd == env->ctl_fd) {
				if (!control_message(&l))
					return 0;
			} else if (w >= 0) {
				read_reports(&l, (unsigned)w);
			} else if (l.accepting) {
				accept_some(&l, evs[i].data.fd);
			}
		}
	}
}
