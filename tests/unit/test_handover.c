/*
 * test_handover.c - connections from the listener to the workers: the
 * listener's batches (one message per worker with every connection chosen
 * for it, balanced, counted, with each one's remote address) and the
 * worker's side (every connection of a batch counted, each fd it cannot
 * take closed, nothing leaked when a batch is malformed or truncated).
 *
 * Each test runs listener_main() or worker_main() in a child over the
 * shared memory and channels the supervisor would have made (the child
 * maps only its role's regions, as the supervisor's children do), and
 * plays the other side itself: the supervisor's and the workers' counters
 * through mappings of their regions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "addrlimit.h"
#include "config.h"
#include "iotd.h"
#include "ipc.h"
#include "log.h"
#include "role.h"
#include "shm.h"

#include "roles.h"

#define RING 4096
#define NWORKERS 2
#define MAX_CLIENTS 16

/* What the listener sent one worker. */
struct got {
	unsigned msgs, conns;
	char remote[64][64];
	struct ipc_client info[64];    /* each one as it came */
	int fd[64];                    /* the broker's ends, closed with the fixture */
};

struct fx {
	struct iotd_config cfg;
	struct role_env env;           /* the child maps its role's regions into env.shm */
	struct shm_set set;
	struct shm_map sup;            /* as the supervisor maps them: sup writable */
	struct shm_map lis;            /* as the listener does: its counters writable */
	struct shm_map wrk[NWORKERS];  /* as worker i does: its own region writable */
	int ctl;                       /* the supervisor's end of the child's control socket */
	pid_t pid;                     /* the child, 0 before fx_spawn() */
	int clients[MAX_CLIENTS];      /* the listener's clients, closed with the fixture */
	int nclients;
	struct got got[NWORKERS];      /* what each worker got of the last burst */
};

/* What the supervisor says of worker i. */
static struct shm_worker_state *sup_worker(struct fx *f, unsigned i)
{
	return &f->sup.sup->workers[i];
}

/* What worker i says of itself. */
static struct shm_worker *worker_mem(struct fx *f, unsigned i)
{
	return f->wrk[i].worker[i];
}

/* Client fds the listener sent worker i, ever. */
static _Atomic uint64_t *handed(struct fx *f, unsigned i)
{
	return &f->lis.listener->handed[i];
}

/*
 * What the supervisor makes before the first fork: memory, rings, eventfds,
 * channels; every worker up and serving in epoch 1.
 */
static void fx_init(struct fx *f)
{
	memset(f, 0, sizeof(*f));
	config_defaults(&f->cfg);
	assert_int_equal(shm_create(&f->set, NWORKERS, RING), 0);
	assert_int_equal(shm_map_role(&f->sup, &f->set, ROLE_SUPERVISOR, 0), 0);
	assert_int_equal(shm_map_role(&f->lis, &f->set, ROLE_LISTENER, 0), 0);
	workers_started(f->sup.sup, &f->env, NWORKERS);
	for (unsigned i = 0; i < NWORKERS; i++) {
		int sp[2];

		assert_int_equal(shm_map_role(&f->wrk[i], &f->set, ROLE_WORKER, i), 0);
		assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC,
					    0, sp), 0);
		f->env.chan_listener[i] = sp[0];
		f->env.chan_worker[i] = sp[1];
	}
	f->env.cfg = &f->cfg;
	f->env.nworkers = NWORKERS;
	f->env.epoch = 1;
}

/* The open-file limit that leaves this process exactly room free fd numbers. */
static rlim_t limit_for_room(int room)
{
	int fd = 0;

	for (int free_seen = 0; free_seen < room; fd++)
		if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
			free_seen++;
	return (rlim_t)fd;
}

/* Unmap the test's views of the regions. */
static void fx_unmap(struct fx *f)
{
	shm_unmap(&f->sup);
	shm_unmap(&f->lis);
	for (unsigned i = 0; i < NWORKERS; i++)
		shm_unmap(&f->wrk[i]);
}

/*
 * Fork a role (worker 0 for ROLE_WORKER) and wait for its READY. The child
 * keeps only its role's mappings and no region descriptor. With room > 0
 * the child's open-file limit leaves it that many free fd numbers.
 */
static void fx_spawn(struct fx *f, int (*role_main)(struct role_env *), enum iotd_role role,
		     rlim_t room)
{
	struct ipc_hdr hdr;
	int fd;

	f->pid = fork_role(&f->env, &f->ctl);
	if (f->pid == 0) {
		struct rlimit rl;

		fx_unmap(f);
		if (shm_map_role(&f->env.shm, &f->set, role, 0) < 0)
			_exit(98);
		shm_close(&f->set);
		rl.rlim_cur = rl.rlim_max = limit_for_room((int)room);
		if (room > 0 && setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(99);
		_exit(role_main(&f->env));
	}
	assert_true(ipc_recv(f->ctl, &hdr, NULL, 0, &fd) >= 0);
	assert_int_equal(hdr.type, IPC_READY);
}

static void fx_free(struct fx *f)
{
	for (unsigned i = 0; i < NWORKERS; i++) {
		close(f->env.worker_efd[i]);
		close(f->env.chan_listener[i]);
		close(f->env.chan_worker[i]);
	}
	close(f->env.router_efd);
	for (int i = 0; i < f->env.n_listen_fds; i++)
		close(f->env.listen_fds[i]);
	fx_unmap(f);
	shm_close(&f->set);
}

static void fx_stop(struct fx *f)
{
	int status;

	close(f->ctl);                 /* EOF stops it */
	assert_int_equal(waitpid(f->pid, &status, 0), f->pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	fx_free(f);
}

/* ---- the listener -------------------------------------------------------- */

/* A listening socket on the loopback of that family, port chosen by the kernel. */
static int listen_loopback(int family)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = in6addr_loopback;
		len = sizeof(*sin6);
	}
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Connect n more clients to the listening socket, each sending the first
 * byte of a CONNECT: the listener defers accepting a connection until its
 * client has spoken (TCP_DEFER_ACCEPT). Returns the first one's index in
 * f->clients.
 */
static int connect_clients(struct fx *f, int n)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int first = f->nclients;

	assert_true(n <= MAX_CLIENTS - first);
	assert_int_equal(getsockname(f->env.listen_fds[0], (struct sockaddr *)&ss, &len), 0);
	for (int i = first; i < first + n; i++) {
		int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

		assert_true(fd >= 0);
		f->clients[f->nclients++] = fd;
		assert_int_equal(connect(fd, (struct sockaddr *)&ss, len), 0);
		assert_int_equal(send(fd, "\x10", 1, 0), 1);
	}
	return first;
}

/* "1.2.3.4:port" or "[v6]:port" by the C library: what the listener must print. */
static void format_addr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	char host[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, cap, "%s:%u", host, ntohs(sin->sin_port));
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, cap, "[%s]:%u", host, ntohs(sin6->sin6_port));
	}
}

/* What the listener would print for this client: its own address, seen from the broker. */
static void expected_remote(int client, char *out, size_t cap)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	assert_int_equal(getsockname(client, (struct sockaddr *)&ss, &len), 0);
	format_addr(&ss, out, cap);
}

/* The same, for the broker's end of a handed-over connection. */
static void peer_remote(int fd, char *out, size_t cap)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	assert_int_equal(getpeername(fd, (struct sockaddr *)&ss, &len), 0);
	format_addr(&ss, out, cap);
}

/*
 * Read what the listener sent worker w within wait_ms: check each message
 * (type, peer, one struct ipc_client per fd, each fd the connection its
 * remote names) and keep the fds.
 */
static void read_channel(struct fx *f, unsigned w, struct got *g, int wait_ms)
{
	uint64_t deadline = clock_ms() + (uint64_t)wait_ms;

	memset(g, 0, sizeof(*g));
	for (;;) {
		struct pollfd pfd = { .fd = f->env.chan_worker[w], .events = POLLIN };
		struct ipc_client info[IPC_MAX_FDS];
		struct ipc_hdr hdr;
		int fds[IPC_MAX_FDS];
		unsigned nfds;
		ssize_t n;
		uint64_t now = clock_ms();

		if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
			return;
		n = ipc_recv_fds(f->env.chan_worker[w], &hdr, info, sizeof(info), fds,
				 IPC_MAX_FDS, &nfds);
		assert_true(n > 0);
		assert_int_equal(hdr.type, IPC_CLIENT_FD);
		assert_int_equal(hdr.peer, w);
		assert_true(nfds > 0);
		assert_int_equal((size_t)n, nfds * sizeof(info[0]));
		for (unsigned i = 0; i < nfds; i++) {
			char remote[64];

			peer_remote(fds[i], remote, sizeof(remote));
			assert_string_equal(info[i].remote, remote);
			assert_true(g->conns < ARRAY_SIZE(g->remote));
			strcpy(g->remote[g->conns], info[i].remote);
			g->info[g->conns] = info[i];
			g->fd[g->conns++] = fds[i];
		}
		g->msgs++;
	}
}

static void got_close(struct got *g)
{
	for (unsigned i = 0; i < g->conns; i++)
		close(g->fd[i]);
}

/*
 * Placement on load alone (slack 0) unless a test sets a slack; no
 * per-address limits unless a test sets them.
 */
static void listener_fx(struct fx *f, int family)
{
	f->cfg.placement_slack = 0;
	f->cfg.max_connections_per_address = 0;
	f->cfg.max_connect_rate_per_address = 0;
	f->env.listen_fds[0] = listen_loopback(family);
	f->env.n_listen_fds = 1;
}

/* The IPC_ADDR_SYNC the listener sent worker w; returns its token. */
static uint64_t expect_sync(struct fx *f, unsigned w)
{
	struct pollfd pfd = { .fd = f->env.chan_worker[w], .events = POLLIN };
	struct ipc_hdr hdr;
	uint64_t token;
	int fd;

	assert_int_equal(poll(&pfd, 1, 5000), 1);
	assert_int_equal(ipc_recv(f->env.chan_worker[w], &hdr, &token, sizeof(token), &fd),
			 sizeof(token));
	assert_int_equal(hdr.type, IPC_ADDR_SYNC);
	assert_int_equal(fd, -1);
	assert_true(token != 0);
	return token;
}

/* Run the listener; it asks every worker for what it holds first. */
static void listener_spawn(struct fx *f, uint64_t *tokens)
{
	fx_spawn(f, listener_main, ROLE_LISTENER, 0);
	for (unsigned w = 0; w < NWORKERS; w++) {
		uint64_t t = expect_sync(f, w);

		if (tokens != NULL)
			tokens[w] = t;
	}
}

/* Wait until the process is in that state (/proc/PID/stat). */
static void wait_state(pid_t pid, char want)
{
	uint64_t deadline = clock_ms() + 5000;
	char path[64], buf[256], *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	for (;;) {
		FILE *fp = fopen(path, "r");

		assert_non_null(fp);
		p = fgets(buf, sizeof(buf), fp);
		fclose(fp);
		assert_non_null(p);
		p = strrchr(buf, ')');
		assert_non_null(p);
		if (p[2] == want)
			return;
		assert_true(clock_ms() < deadline);
		poll(NULL, 0, 1);
	}
}

/*
 * The listener stopped while n clients connect, then let go: it finds them
 * all waiting and accepts them in one go.
 */
static void burst(struct fx *f, int n)
{
	assert_int_equal(kill(f->pid, SIGSTOP), 0);
	wait_state(f->pid, 'T');
	connect_clients(f, n);
	poll(NULL, 0, 20);             /* the last first bytes land: all are in the accept queue */
	assert_int_equal(kill(f->pid, SIGCONT), 0);
}

static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/* A burst of n clients, and what each worker got of it within 500 ms (f->got). */
static void burst_read(struct fx *f, int n)
{
	burst(f, n);
	for (unsigned w = 0; w < NWORKERS; w++)
		read_channel(f, w, &f->got[w], 500);
}

/* How many of the clients the listener closed (they see the end). */
static int refused_clients(const struct fx *f)
{
	int refused = 0;

	for (int i = 0; i < f->nclients; i++) {
		struct pollfd pfd = { .fd = f->clients[i], .events = POLLIN };
		char c;

		if (poll(&pfd, 1, 0) == 1 && recv(f->clients[i], &c, 1, MSG_DONTWAIT) <= 0)
			refused++;
	}
	return refused;
}

/* A burst of n clients: the listener takes (and counts) taken of them and closes the others. */
static void burst_taking(struct fx *f, int n, int taken)
{
	burst_read(f, n);
	assert_int_equal(f->got[0].conns + f->got[1].conns, taken);
	assert_int_equal(atomic_load(handed(f, 0)) + atomic_load(handed(f, 1)), taken);
	assert_int_equal(atomic_load(&f->lis.listener->connects), taken);
	assert_int_equal(refused_clients(f), n - taken);
}

/* ---- the fixture of each test ---------------------------------------------- */

/* Each test's fixture: what the supervisor makes (fx_init), for a worker's tests. */
static int fx_setup(void **state)
{
	struct fx *f = malloc(sizeof(*f));

	assert_non_null(f);
	fx_init(f);
	*state = f;
	return 0;
}

/* For the listener's tests: a listening socket on the loopback too (listener_fx). */
static int listener_setup(void **state)
{
	fx_setup(state);
	listener_fx(*state, AF_INET);
	return 0;
}

static int listener6_setup(void **state)
{
	fx_setup(state);
	listener_fx(*state, AF_INET6);
	return 0;
}

/* The broker's ends and the clients closed, the child stopped, the rest freed. */
static int fx_teardown(void **state)
{
	struct fx *f = *state;

	for (unsigned w = 0; w < NWORKERS; w++)
		got_close(&f->got[w]);
	close_all(f->clients, f->nclients);
	if (f->pid > 0)
		fx_stop(f);
	else
		fx_free(f);
	free(f);
	return 0;
}

/* The child answers a PING: it has read all that its supervisor sent before. */
static void expect_pong(struct fx *f)
{
	struct ipc_hdr hdr;
	int fd;

	assert_int_equal(ipc_send(f->ctl, IPC_PING, 0, NULL, 0, -1), 0);
	assert_true(ipc_recv(f->ctl, &hdr, NULL, 0, &fd) >= 0);
	assert_int_equal(hdr.type, IPC_PONG);
}

static void listener_sends_one_message_per_worker_balanced(void **state)
{
	struct fx *f = *state;

	listener_spawn(f, NULL);
	burst_read(f, 10);
	/* Ten at once over two idle workers: five each, in one message each. */
	for (unsigned w = 0; w < NWORKERS; w++) {
		assert_int_equal(f->got[w].msgs, 1);
		assert_int_equal(f->got[w].conns, 5);
		assert_int_equal(atomic_load(handed(f, w)), 5);
	}
	assert_int_equal(atomic_load(&f->lis.listener->connects), 10);
	/* Every client once, by the address it has. */
	for (int i = 0; i < 10; i++) {
		char want[64];
		int seen = 0;

		expected_remote(f->clients[i], want, sizeof(want));
		for (unsigned w = 0; w < NWORKERS; w++)
			for (unsigned k = 0; k < f->got[w].conns; k++)
				seen += strcmp(f->got[w].remote[k], want) == 0;
		assert_int_equal(seen, 1);
	}
}

/* Each connection names the transport, path and certificate of the socket it came through. */
static void listener_hands_on_the_transport_of_the_socket(void **state)
{
	struct fx *f = *state;

	f->env.listen_kinds[0].transport = LISTEN_WSS;
	strcpy(f->env.listen_kinds[0].path, "/mqtt");
	f->env.listen_kinds[0].tls = 2;
	listener_spawn(f, NULL);
	burst_read(f, 4);
	for (unsigned w = 0; w < NWORKERS; w++)
		for (unsigned k = 0; k < f->got[w].conns; k++) {
			assert_int_equal(f->got[w].info[k].transport, LISTEN_WSS);
			assert_string_equal(f->got[w].info[k].path, "/mqtt");
			assert_int_equal(f->got[w].info[k].tls, 2);
		}
}

static void listener_balances_on_load_with_the_batch_counted(void **state)
{
	struct fx *f = *state;

	/* Worker 0 holds 4 already: the first 4 of the burst go to worker 1, then they alternate. */
	atomic_store(handed(f, 0), 4);
	atomic_store(&worker_mem(f, 0)->accepted, 4);
	listener_spawn(f, NULL);
	burst_read(f, 8);
	assert_int_equal(f->got[0].conns, 2);
	assert_int_equal(f->got[1].conns, 6);
	assert_int_equal(atomic_load(handed(f, 0)), 6);
	assert_int_equal(atomic_load(handed(f, 1)), 6);
}

static void listener_refuses_beyond_max_connections_within_a_batch(void **state)
{
	struct fx *f = *state;

	f->cfg.max_connections = 7;
	listener_spawn(f, NULL);
	burst_taking(f, 10, 7);
}

static void listener_sends_elsewhere_when_a_channel_is_full(void **state)
{
	struct fx *f = *state;
	int queued = 0;
	struct ipc_hdr hdr;
	int fd;

	/* Within the slack all six would stay on the first worker chosen: not on a refused channel. */
	f->cfg.placement_slack = 8;
	listener_spawn(f, NULL);
	/* Worker 0's channel full to the brim (as a dead worker's would be). */
	while (ipc_send(f->env.chan_listener[0], IPC_PING, 0, NULL, 0, -1) == 0)
		queued++;
	assert_int_equal(errno, EAGAIN);
	burst(f, 6);
	read_channel(f, 1, &f->got[1], 500);
	assert_int_equal(f->got[1].conns, 6);
	assert_int_equal(atomic_load(handed(f, 1)), 6);
	assert_int_equal(atomic_load(handed(f, 0)), 0);
	/* Worker 0 got nothing but what filled its channel. */
	for (int i = 0; i < queued; i++) {
		assert_int_equal(ipc_recv(f->env.chan_worker[0], &hdr, NULL, 0, &fd), 0);
		assert_int_equal(hdr.type, IPC_PING);
	}
	assert_int_equal(ipc_recv(f->env.chan_worker[0], &hdr, NULL, 0, &fd), -1);
	assert_int_equal(errno, EAGAIN);
}

static void listener_names_ipv6_clients_in_brackets(void **state)
{
	struct fx *f = *state;
	char want[64];

	if (f->env.listen_fds[0] < 0)
		skip();                /* no IPv6 here */
	listener_spawn(f, NULL);
	burst_read(f, 2);
	assert_int_equal(f->got[0].conns, 1);
	assert_int_equal(f->got[1].conns, 1);
	for (int i = 0; i < 2; i++) {
		expected_remote(f->clients[i], want, sizeof(want));
		assert_true(strncmp(want, "[::1]:", 6) == 0);
		assert_true(strcmp(f->got[0].remote[0], want) == 0 ||
			    strcmp(f->got[1].remote[0], want) == 0);
	}
}

/*
 * The listener counts a connection once its message is sent: the count can
 * trail the receipt by an instant.
 */
static void expect_handed(struct fx *f, unsigned w, uint64_t want)
{
	uint64_t deadline = clock_ms() + 5000;

	while (atomic_load(handed(f, w)) != want) {
		if (clock_ms() >= deadline)
			fail_msg("worker %u: handed %llu, expected %llu", w,
				 (unsigned long long)atomic_load(handed(f, w)),
				 (unsigned long long)want);
		poll(NULL, 0, 1);
	}
}

/*
 * Connect one client and wait for its handover; returns the worker it went
 * to. No worker runs to release it: it counts in that worker's load from
 * then on.
 */
static unsigned next_worker(struct fx *f)
{
	struct pollfd pfd[NWORKERS];
	struct ipc_client info[IPC_MAX_FDS];
	struct ipc_hdr hdr;
	int fds[IPC_MAX_FDS];
	unsigned nfds;

	connect_clients(f, 1);
	for (;;) {
		for (unsigned w = 0; w < NWORKERS; w++)
			pfd[w] = (struct pollfd){ .fd = f->env.chan_worker[w], .events = POLLIN };
		assert_true(poll(pfd, NWORKERS, 5000) > 0);
		for (unsigned w = 0; w < NWORKERS; w++) {
			if (!(pfd[w].revents & POLLIN))
				continue;
			assert_true(ipc_recv_fds(f->env.chan_worker[w], &hdr, info, sizeof(info), fds,
						 IPC_MAX_FDS, &nfds) > 0);
			if (hdr.type == IPC_ADDR_SYNC)    /* the listener asks a new epoch afresh */
				continue;
			assert_int_equal(hdr.type, IPC_CLIENT_FD);
			assert_int_equal(nfds, 1);
			close(fds[0]);
			return w;
		}
	}
}

static void listener_with_slack_0_alternates_one_connection_after_another(void **state)
{
	struct fx *f = *state;
	unsigned prev = NWORKERS;

	listener_spawn(f, NULL);
	for (int i = 0; i < 6; i++) {
		unsigned w = next_worker(f);

		assert_int_not_equal(w, prev);
		prev = w;
	}
	for (unsigned w = 0; w < NWORKERS; w++)
		expect_handed(f, w, 3);
}

static void listener_keeps_a_worker_within_the_slack_then_takes_the_least_loaded(void **state)
{
	struct fx *f = *state;
	/*
	 * Slack 3 over two idle workers: the first worker takes 3 (3 above the
	 * other), then the other until it holds 3 above (3 and 6), then back.
	 */
	static const bool on_first[] = { 1, 1, 1, 0, 0, 0, 0, 0, 0, 1 };
	unsigned first = NWORKERS;

	f->cfg.placement_slack = 3;
	listener_spawn(f, NULL);
	for (unsigned i = 0; i < ARRAY_SIZE(on_first); i++) {
		unsigned w = next_worker(f);

		if (i == 0)
			first = w;
		if ((w == first) != on_first[i])
			fail_msg("connection %u went to worker %u, the first one went to %u", i, w,
				 first);
	}
	expect_handed(f, first, 4);
	expect_handed(f, 1 - first, 6);
}

static void listener_leaves_a_dead_or_full_worker_within_the_slack(void **state)
{
	struct fx *f = *state;
	unsigned a, b;

	f->cfg.placement_slack = 8;
	listener_spawn(f, NULL);
	a = next_worker(f);
	b = 1 - a;
	assert_int_equal(next_worker(f), a);
	/* Dead: its channel would only queue, the other worker serves at once. */
	atomic_store(&sup_worker(f, a)->up, 0);
	assert_int_equal(next_worker(f), b);
	assert_int_equal(next_worker(f), b);
	/* At its open-file limit (2 held): the fd would be dropped in transit. */
	atomic_store(&sup_worker(f, a)->up, 1);
	atomic_store(&sup_worker(f, b)->capacity, 2);
	assert_int_equal(next_worker(f), a);
	/* Worker a stays, within the slack, once b has room again. */
	atomic_store(&sup_worker(f, b)->capacity, 1000);
	assert_int_equal(next_worker(f), a);
}

static void listener_keeps_the_slack_within_a_batch(void **state)
{
	struct fx *f = *state;

	f->cfg.placement_slack = 3;
	listener_spawn(f, NULL);
	burst_read(f, 10);
	/* As one after another: 3 and 0, then 3 and 6, then 4 and 6; one message each. */
	for (unsigned w = 0; w < NWORKERS; w++)
		assert_int_equal(f->got[w].msgs, 1);
	assert_int_equal(f->got[0].conns + f->got[1].conns, 10);
	assert_true((f->got[0].conns == 4 && f->got[1].conns == 6) ||
		    (f->got[0].conns == 6 && f->got[1].conns == 4));
}

static void listener_takes_a_reloaded_slack_for_the_next_connection(void **state)
{
	struct fx *f = *state;
	unsigned w;

	listener_spawn(f, NULL);
	w = next_worker(f);
	assert_int_equal(next_worker(f), 1 - w);
	/* What the supervisor sends on a reload; the PONG says it was read. */
	f->cfg.placement_slack = 8;
	assert_int_equal(ipc_send(f->ctl, IPC_CONFIG, 0, &f->cfg, sizeof(f->cfg), -1), 0);
	expect_pong(f);
	assert_int_equal(next_worker(f), 1 - w);
	assert_int_equal(next_worker(f), 1 - w);
}

/*
 * A worker whose successor is forked (the supervisor's epoch moved on) but
 * not serving yet is passed over like a dead one, until it says it serves.
 */
static void listener_passes_over_a_worker_not_yet_serving_its_epoch(void **state)
{
	struct fx *f = *state;
	unsigned a, b;

	listener_spawn(f, NULL);
	a = next_worker(f);
	b = 1 - a;
	/* b holds nothing, but its new process has not started serving. */
	atomic_store(&sup_worker(f, b)->epoch, 2);
	assert_int_equal(next_worker(f), a);
	assert_int_equal(next_worker(f), a);
	atomic_store(&sup_worker(f, b)->ready_epoch, 2);
	assert_int_equal(next_worker(f), b);
	expect_handed(f, a, 3);
	expect_handed(f, b, 1);
}

/*
 * A worker's counters are its claims: one that says it released more than
 * it was ever handed counts as empty, not as a load that wrapped around
 * (which would starve it); the listener's own count is unchanged.
 */
static void listener_takes_a_lying_workers_release_count_as_no_load(void **state)
{
	struct fx *f = *state;
	int on_liar = 0;

	atomic_store(&worker_mem(f, 0)->released, 1000);
	listener_spawn(f, NULL);
	for (int i = 0; i < 4; i++)
		on_liar += next_worker(f) == 0;
	/* Worker 1 takes at most the first, on a tie; worker 0 then always looks emptier. */
	assert_true(on_liar >= 3);
	expect_handed(f, 0, (uint64_t)on_liar);
	expect_handed(f, 1, (uint64_t)(4 - on_liar));
}

/* ---- the worker ---------------------------------------------------------- */

/* Wait until worker 0 has counted accepted and released as expected. */
static void wait_counts(struct fx *f, uint64_t accepted, uint64_t released)
{
	uint64_t deadline = clock_ms() + 5000;

	while (atomic_load(&worker_mem(f, 0)->accepted) != accepted ||
	       atomic_load(&worker_mem(f, 0)->released) != released) {
		if (clock_ms() >= deadline)
			fail_msg("worker 0: accepted %llu released %llu, expected %llu and %llu",
				 (unsigned long long)atomic_load(&worker_mem(f, 0)->accepted),
				 (unsigned long long)atomic_load(&worker_mem(f, 0)->released),
				 (unsigned long long)accepted, (unsigned long long)released);
		poll(NULL, 0, 5);
	}
}

/* Does the process hold an fd open on this path? */
static bool holds_path(pid_t pid, const char *path)
{
	char dir[64], link[PATH_MAX + 64], target[PATH_MAX];
	struct dirent *e;
	bool found = false;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	assert_non_null(d);
	while (!found && (e = readdir(d)) != NULL) {
		ssize_t n;

		snprintf(link, sizeof(link), "%s/%s", dir, e->d_name);
		n = readlink(link, target, sizeof(target) - 1);
		if (n > 0) {
			target[n] = '\0';
			found = strcmp(target, path) == 0;
		}
	}
	closedir(d);
	return found;
}

/* Has the other end of this socket gone (EOF), within wait_ms? */
static bool peer_gone(int fd, int wait_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char c;

	return poll(&pfd, 1, wait_ms) == 1 && recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

/* A batch to worker 0 of nfds fds that names ninfo connections (10.0.0.1:1000, 10.0.0.2:1001...). */
static void send_batch(struct fx *f, const int *fds, unsigned nfds, unsigned ninfo)
{
	struct ipc_client info[IPC_MAX_FDS];

	memset(info, 0, sizeof(info));
	for (unsigned i = 0; i < ninfo; i++)
		snprintf(info[i].remote, sizeof(info[i].remote), "10.0.0.%u:%u", i + 1, 1000 + i);
	assert_int_equal(ipc_send_fds(f->env.chan_listener[0], IPC_CLIENT_FD, 0, info,
				      ninfo * sizeof(info[0]), fds, nfds), 0);
}

/* A connection: the client's end in sp[0], the broker's in sp[1]. */
static void client_pair(int sp[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
}

/*
 * n new connections handed to worker 0 in one batch that names ninfo of
 * them (see send_batch); the broker's ends closed here, the clients' ends
 * in clients.
 */
static void hand_batch(struct fx *f, int *clients, unsigned n, unsigned ninfo)
{
	int fds[IPC_MAX_FDS];

	for (unsigned i = 0; i < n; i++) {
		int sp[2];

		client_pair(sp);
		clients[i] = sp[0];
		fds[i] = sp[1];
	}
	send_batch(f, fds, n, ninfo);
	close_all(fds, (int)n);
}

static void worker_takes_a_batch_and_closes_the_fd_it_cannot_take(void **state)
{
	struct fx *f = *state;
	char path[] = "/tmp/iotd-test-handover-XXXXXX";
	int a[2], b[2], file, fds[3];

	fx_spawn(f, worker_main, ROLE_WORKER, 0);
	client_pair(a);
	client_pair(b);
	/* epoll refuses a regular file: the middle one of the batch cannot be taken. */
	file = mkstemp(path);
	assert_true(file >= 0);
	fds[0] = a[1];
	fds[1] = file;
	fds[2] = b[1];
	send_batch(f, fds, 3, 3);
	close(a[1]);
	close(file);
	close(b[1]);
	wait_counts(f, 3, 1);
	assert_false(holds_path(f->pid, path));
	/* The two others are held and served. */
	assert_false(peer_gone(a[0], 100));
	assert_false(peer_gone(b[0], 0));
	close(a[0]);
	close(b[0]);
	/* Their clients leaving releases them. */
	wait_counts(f, 3, 3);
	unlink(path);
}

/*
 * The transport is the listener's word: one the worker does not serve (TLS,
 * or no transport at all) is closed and counted released; a path without
 * its NUL is cut, not read past.
 */
static void worker_refuses_a_transport_it_does_not_serve(void **state)
{
	static const uint32_t transports[] = { LISTEN_TCP, 99, LISTEN_WSS, LISTEN_MQTTS, LISTEN_WS };
	struct fx *f = *state;
	struct ipc_client info[5];
	int clients[5], fds[5];

	fx_spawn(f, worker_main, ROLE_WORKER, 0);
	memset(info, 0, sizeof(info));
	for (unsigned i = 0; i < 5; i++) {
		int sp[2];

		client_pair(sp);
		clients[i] = sp[0];
		fds[i] = sp[1];
		snprintf(info[i].remote, sizeof(info[i].remote), "10.0.0.%u:1", i + 1);
		info[i].transport = transports[i];
	}
	memset(info[4].path, '/', sizeof(info[4].path));
	assert_int_equal(ipc_send_fds(f->env.chan_listener[0], IPC_CLIENT_FD, 0, info,
				      sizeof(info), fds, 5), 0);
	close_all(fds, 5);
	wait_counts(f, 5, 3);
	assert_false(peer_gone(clients[0], 100));
	assert_true(peer_gone(clients[1], 2000));
	assert_true(peer_gone(clients[2], 2000));
	assert_true(peer_gone(clients[3], 2000));
	assert_false(peer_gone(clients[4], 0));
	close_all(clients, 5);
	wait_counts(f, 5, 5);
}

static void worker_closes_a_malformed_batch_and_counts_it(void **state)
{
	struct fx *f = *state;
	int clients[2], client;

	fx_spawn(f, worker_main, ROLE_WORKER, 0);
	/* Three connections counted by the sender, two fds: none can be matched. */
	hand_batch(f, clients, 2, 3);
	wait_counts(f, 3, 3);
	assert_true(peer_gone(clients[0], 2000));
	assert_true(peer_gone(clients[1], 2000));
	close_all(clients, 2);
	/* A well-formed one after it is taken. */
	hand_batch(f, &client, 1, 1);
	wait_counts(f, 4, 3);
	assert_false(peer_gone(client, 100));
	close(client);
}

static void worker_out_of_fds_closes_a_truncated_batch_and_counts_it(void **state)
{
	struct fx *f = *state;
	int clients[IPC_MAX_FDS], client;

	/* Room for its own fds and a few more: a full batch cannot arrive whole (MSG_CTRUNC). */
	fx_spawn(f, worker_main, ROLE_WORKER, 10);
	hand_batch(f, clients, IPC_MAX_FDS, IPC_MAX_FDS);
	wait_counts(f, IPC_MAX_FDS, IPC_MAX_FDS);
	for (int i = 0; i < IPC_MAX_FDS; i++)
		assert_true(peer_gone(clients[i], 2000));
	close_all(clients, IPC_MAX_FDS);
	/* Nothing leaked: a connection is still taken. */
	hand_batch(f, &client, 1, 1);
	wait_counts(f, IPC_MAX_FDS + 1, IPC_MAX_FDS);
	assert_false(peer_gone(client, 100));
	close(client);
}

/*
 * A worker starting in a new epoch counts from 0, whatever its
 * predecessor (perhaps a hostile one) left in its region, and has said
 * READY by the time it serves.
 */
static void worker_starts_its_counts_from_zero(void **state)
{
	struct fx *f = *state;
	int client;

	atomic_store(&worker_mem(f, 0)->accepted, UINT64_MAX - 5);
	atomic_store(&worker_mem(f, 0)->released, 3);
	atomic_store(&sup_worker(f, 0)->epoch, 2);
	f->env.epoch = 2;
	fx_spawn(f, worker_main, ROLE_WORKER, 0);
	assert_int_equal(atomic_load(&worker_mem(f, 0)->accepted), 0);
	assert_int_equal(atomic_load(&worker_mem(f, 0)->released), 0);
	hand_batch(f, &client, 1, 1);
	wait_counts(f, 1, 0);
	close(client);
	wait_counts(f, 1, 1);
}


/* ---- per-address limits ---------------------------------------------------- */

/*
 * Connect one client: the worker it is handed to, or -1 when the listener
 * closes it. A sync request on the way is skipped; *sync gets its token.
 */
static int try_connect(struct fx *f, uint64_t *sync)
{
	int client = f->clients[connect_clients(f, 1)];

	for (;;) {
		struct pollfd pfd[NWORKERS + 1];
		struct ipc_client info[IPC_MAX_FDS];
		struct ipc_hdr hdr;
		int fds[IPC_MAX_FDS];
		unsigned nfds;
		char c;

		for (unsigned w = 0; w < NWORKERS; w++)
			pfd[w] = (struct pollfd){ .fd = f->env.chan_worker[w], .events = POLLIN };
		pfd[NWORKERS] = (struct pollfd){ .fd = client, .events = POLLIN };
		assert_true(poll(pfd, NWORKERS + 1, 5000) > 0);
		for (unsigned w = 0; w < NWORKERS; w++) {
			ssize_t n;

			if (!(pfd[w].revents & POLLIN))
				continue;
			n = ipc_recv_fds(f->env.chan_worker[w], &hdr, info, sizeof(info), fds,
					 IPC_MAX_FDS, &nfds);
			assert_true(n > 0);
			if (hdr.type == IPC_ADDR_SYNC) {
				if (sync != NULL)
					memcpy(sync, info, sizeof(*sync));
				continue;
			}
			assert_int_equal(hdr.type, IPC_CLIENT_FD);
			assert_int_equal(nfds, 1);
			close(fds[0]);
			return (int)w;
		}
		if (pfd[NWORKERS].revents && recv(client, &c, 1, MSG_DONTWAIT) <= 0)
			return -1;
	}
}

/* Connect until one is handed over (the listener may not have read a report yet). */
static int connect_until_taken(struct fx *f)
{
	for (int tries = 0; tries < 200; tries++) {
		int w = try_connect(f, NULL);

		if (w >= 0)
			return w;
		close(f->clients[--f->nclients]);    /* refused: not kept */
		poll(NULL, 0, 10);
	}
	fail_msg("no connection taken within 2 s");
	return -1;
}

static struct ipc_addr_entry report(uint32_t op, uint64_t token, const char *remote)
{
	struct ipc_addr_entry e = { .op = op, .token = token };
	struct addr_key k;

	if (remote != NULL) {
		assert_true(addr_key_from_remote(remote, &k));
		memcpy(e.key, k.b, sizeof(e.key));
	}
	return e;
}

/* Send as a worker would, waiting (bounded) for room in the channel. */
static void send_reports(struct fx *f, unsigned w, const struct ipc_addr_entry *e, size_t n)
{
	while (ipc_send(f->env.chan_worker[w], IPC_ADDR_REPORT, w, e, n * sizeof(*e), -1) < 0) {
		struct pollfd pfd = { .fd = f->env.chan_worker[w], .events = POLLOUT };

		assert_int_equal(errno, EAGAIN);
		assert_int_equal(poll(&pfd, 1, 5000), 1);
	}
}

/* Wait until the listener has read everything sent on worker w's channel. */
static void wait_reports_read(struct fx *f, unsigned w)
{
	uint64_t deadline = clock_ms() + 5000;
	int unread;

	while (assert_int_equal(ioctl(f->env.chan_worker[w], SIOCOUTQ, &unread), 0), unread > 0) {
		assert_true(clock_ms() < deadline);
		poll(NULL, 0, 2);
	}
}

/* Resident memory of a process, in KiB. */
static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *fp;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	fp = fopen(path, "r");
	assert_non_null(fp);
	while (fgets(line, sizeof(line), fp) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(fp);
	assert_true(kb > 0);
	return kb;
}

static void listener_refuses_past_max_connections_per_address_until_one_is_gone(void **state)
{
	struct fx *f = *state;
	uint64_t tok[NWORKERS];
	int w0;

	f->cfg.max_connections_per_address = 3;
	listener_spawn(f, tok);
	w0 = try_connect(f, NULL);
	assert_true(w0 >= 0);
	assert_true(try_connect(f, NULL) >= 0);
	assert_true(try_connect(f, NULL) >= 0);
	assert_int_equal(try_connect(f, NULL), -1);
	/*
	 * The worker of the first answers the listener's request (it held
	 * nothing then) and reports that one gone. What comes before its
	 * answer, or with another token, is old news: were it counted, three
	 * more would be taken rather than one.
	 */
	{
		struct ipc_addr_entry e[] = {
			report(IPC_ADDR_GONE, 0, "127.0.0.1:1"),
			report(IPC_ADDR_RESET, tok[w0] + 1, NULL),
			report(IPC_ADDR_GONE, 0, "127.0.0.1:2"),
			report(IPC_ADDR_RESET, tok[w0], NULL),
			report(99, 0, "127.0.0.1:3"),
			report(IPC_ADDR_GONE, 0, "127.0.0.1:4"),
			report(IPC_ADDR_GONE, 0, "10.1.1.1:4"),      /* unknown: ignored */
		};

		send_reports(f, (unsigned)w0, e, ARRAY_SIZE(e));
		wait_reports_read(f, (unsigned)w0);
	}
	connect_until_taken(f);
	assert_int_equal(try_connect(f, NULL), -1);
	/* Another address is not concerned. */
}

static void listener_refuses_past_max_connect_rate_per_address(void **state)
{
	struct fx *f = *state;

	f->cfg.max_connect_rate_per_address = 3;
	listener_spawn(f, NULL);
	/* Eight at once: the bucket holds three. */
	burst_taking(f, 8, 3);
	/* A third of a second later, one more. */
	poll(NULL, 0, 400);
	assert_true(try_connect(f, NULL) >= 0);
}

static void listener_forgets_the_connections_of_a_restarted_worker(void **state)
{
	struct fx *f = *state;
	uint64_t tok[NWORKERS], again = 0;
	int w;

	f->cfg.max_connections_per_address = 1;
	listener_spawn(f, tok);
	w = try_connect(f, NULL);
	assert_true(w >= 0);
	assert_int_equal(try_connect(f, NULL), -1);
	/* Its answer: the batch that refused it is over (epochs are read once a batch). */
	expect_pong(f);
	/* Restarted: its connections died with it, and the listener asks the new one afresh. */
	atomic_fetch_add(&sup_worker(f, (unsigned)w)->epoch, 1);
	atomic_fetch_add(&sup_worker(f, (unsigned)w)->ready_epoch, 1);
	assert_true(try_connect(f, &again) >= 0);
	if (again == 0)
		again = expect_sync(f, (unsigned)w);
	assert_true(again != tok[w]);
}

static void listener_takes_nothing_harmful_from_a_worker(void **state)
{
	struct fx *f = *state;
	uint64_t tok[NWORKERS], again;
	char path[] = "/tmp/iotd-test-reports-XXXXXX", junk[100];
	struct ipc_addr_entry held[IPC_ADDR_ENTRIES_MAX];
	int file;
	long rss;

	f->cfg.max_connections = 50;
	f->cfg.max_connections_per_address = 2;
	listener_spawn(f, tok);
	/* Not a report, a torn one, one carrying an fd, an empty one: ignored, the fd closed. */
	file = mkstemp(path);
	assert_true(file >= 0);
	memset(junk, 0xa5, sizeof(junk));
	assert_int_equal(ipc_send(f->env.chan_worker[0], IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(f->env.chan_worker[0], IPC_ADDR_REPORT, 0, junk, 33, -1), 0);
	assert_int_equal(ipc_send(f->env.chan_worker[0], IPC_ADDR_REPORT, 0, junk, 96, file), 0);
	assert_int_equal(ipc_send(f->env.chan_worker[0], IPC_ADDR_REPORT, 0, NULL, 0, -1), 0);
	close(file);
	/* In step, with one connection held from 127.0.0.1: one more from it, not two. */
	held[0] = report(IPC_ADDR_RESET, tok[0], NULL);
	held[1] = report(IPC_ADDR_HELD, 0, "127.0.0.1:1");
	send_reports(f, 0, held, 2);
	wait_reports_read(f, 0);
	connect_until_taken(f);
	assert_int_equal(try_connect(f, NULL), -1);
	for (uint64_t deadline = clock_ms() + 2000; holds_path(f->pid, path);)
		assert_true(clock_ms() < deadline);
	/*
	 * 51,200 addresses claimed held: the counts keep max_connections and a
	 * batch (114) of them. Unbounded they would take a few MB.
	 */
	rss = rss_kb(f->pid);
	for (uint32_t m = 0; m < 400; m++) {
		for (uint32_t i = 0; i < ARRAY_SIZE(held); i++) {
			char remote[64];

			snprintf(remote, sizeof(remote), "10.%u.%u.%u:1", m / 256, m % 256, i);
			held[i] = report(IPC_ADDR_HELD, 0, remote);
		}
		send_reports(f, 0, held, ARRAY_SIZE(held));
	}
	wait_reports_read(f, 0);
	assert_true(rss_kb(f->pid) - rss < 512);
	/* Lost track: the listener asks again and forgets what worker 0 held. */
	held[0] = report(IPC_ADDR_LOST, 0, NULL);
	send_reports(f, 0, held, 1);
	again = expect_sync(f, 0);
	assert_true(again != tok[0]);
	connect_until_taken(f);
	/* Still answering its supervisor. */
	expect_pong(f);
	unlink(path);
}

/* Read worker 0's reports until n entries came (within 5 s). */
static void read_worker_reports(struct fx *f, struct ipc_addr_entry *e, size_t n)
{
	size_t got = 0;

	while (got < n) {
		struct pollfd pfd = { .fd = f->env.chan_listener[0], .events = POLLIN };
		struct ipc_addr_entry buf[IPC_ADDR_ENTRIES_MAX];
		struct ipc_hdr hdr;
		ssize_t len;
		int fd;

		assert_int_equal(poll(&pfd, 1, 5000), 1);
		len = ipc_recv(f->env.chan_listener[0], &hdr, buf, sizeof(buf), &fd);
		assert_true(len > 0);
		assert_int_equal(hdr.type, IPC_ADDR_REPORT);
		assert_int_equal(len % sizeof(buf[0]), 0);
		assert_true(got + (size_t)len / sizeof(buf[0]) <= n);
		memcpy(&e[got], buf, (size_t)len);
		got += (size_t)len / sizeof(buf[0]);
	}
}

static bool entry_is(const struct ipc_addr_entry *e, uint32_t op, const char *remote)
{
	struct ipc_addr_entry want = report(op, 0, remote);

	return e->op == op && memcmp(e->key, want.key, sizeof(e->key)) == 0;
}

static void worker_answers_a_sync_with_what_it_holds_then_reports_each_close(void **state)
{
	struct fx *f = *state;
	struct ipc_addr_entry e[3];
	uint64_t token = 0x1234567887654321ull;
	int clients[2], late;

	fx_spawn(f, worker_main, ROLE_WORKER, 0);
	hand_batch(f, clients, 2, 2);          /* 10.0.0.1:1000 and 10.0.0.2:1001 */
	wait_counts(f, 2, 0);
	/* One leaves before the request: reported, then left out of the answer. */
	close(clients[0]);
	read_worker_reports(f, e, 1);
	assert_true(entry_is(&e[0], IPC_ADDR_GONE, "10.0.0.1:1"));
	assert_int_equal(ipc_send(f->env.chan_listener[0], IPC_ADDR_SYNC, 0, &token, sizeof(token),
				  -1), 0);
	read_worker_reports(f, e, 2);
	assert_int_equal(e[0].op, IPC_ADDR_RESET);
	assert_true(e[0].token == token);
	assert_true(entry_is(&e[1], IPC_ADDR_HELD, "10.0.0.2:1"));
	/* A connection taken after the request, then both leaving. */
	hand_batch(f, &late, 1, 1);            /* 10.0.0.1:1000 again */
	wait_counts(f, 3, 1);
	close(clients[1]);
	wait_counts(f, 3, 2);
	close(late);
	read_worker_reports(f, e, 2);
	assert_true(entry_is(&e[0], IPC_ADDR_GONE, "10.0.0.2:1"));
	assert_true(entry_is(&e[1], IPC_ADDR_GONE, "10.0.0.1:1"));
}

/*
 * Garbage a dead worker left in its counts is not its successor's: the
 * listener counts from when it saw the new epoch, so the successor is
 * not taken for empty forever, and max_connections holds.
 */
static void listener_counts_a_successor_from_its_own_epoch(void **state)
{
	struct fx *f = *state;

	f->cfg.max_connections = 3;
	f->cfg.placement_slack = 0;
	/* What the dead process left; its successor (epoch 2, READY) counts from 0. */
	atomic_store(&sup_worker(f, 0)->epoch, 2);
	atomic_store(&sup_worker(f, 0)->ready_epoch, 2);
	atomic_store(&worker_mem(f, 0)->accepted, 0);
	atomic_store(&worker_mem(f, 0)->released, 0);
	atomic_store(handed(f, 0), 1000);
	listener_spawn(f, NULL);
	/* Three fit (none of them released, as no worker runs), the fourth does not. */
	for (int i = 0; i < 3; i++)
		assert_true(try_connect(f, NULL) >= 0);
	assert_int_equal(try_connect(f, NULL), -1);
}

#define LISTENER_TEST(t) cmocka_unit_test_setup_teardown(t, listener_setup, fx_teardown)
#define WORKER_TEST(t) cmocka_unit_test_setup_teardown(t, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		LISTENER_TEST(listener_sends_one_message_per_worker_balanced),
		LISTENER_TEST(listener_hands_on_the_transport_of_the_socket),
		LISTENER_TEST(listener_balances_on_load_with_the_batch_counted),
		LISTENER_TEST(listener_refuses_beyond_max_connections_within_a_batch),
		LISTENER_TEST(listener_sends_elsewhere_when_a_channel_is_full),
		cmocka_unit_test_setup_teardown(listener_names_ipv6_clients_in_brackets,
						listener6_setup, fx_teardown),
		LISTENER_TEST(listener_with_slack_0_alternates_one_connection_after_another),
		LISTENER_TEST(listener_keeps_a_worker_within_the_slack_then_takes_the_least_loaded),
		LISTENER_TEST(listener_leaves_a_dead_or_full_worker_within_the_slack),
		LISTENER_TEST(listener_keeps_the_slack_within_a_batch),
		LISTENER_TEST(listener_takes_a_reloaded_slack_for_the_next_connection),
		LISTENER_TEST(listener_passes_over_a_worker_not_yet_serving_its_epoch),
		LISTENER_TEST(listener_takes_a_lying_workers_release_count_as_no_load),
		WORKER_TEST(worker_takes_a_batch_and_closes_the_fd_it_cannot_take),
		WORKER_TEST(worker_refuses_a_transport_it_does_not_serve),
		WORKER_TEST(worker_closes_a_malformed_batch_and_counts_it),
		WORKER_TEST(worker_out_of_fds_closes_a_truncated_batch_and_counts_it),
		WORKER_TEST(worker_starts_its_counts_from_zero),
		LISTENER_TEST(listener_counts_a_successor_from_its_own_epoch),
		LISTENER_TEST(listener_refuses_past_max_connections_per_address_until_one_is_gone),
		LISTENER_TEST(listener_refuses_past_max_connect_rate_per_address),
		LISTENER_TEST(listener_forgets_the_connections_of_a_restarted_worker),
		LISTENER_TEST(listener_takes_nothing_harmful_from_a_worker),
		WORKER_TEST(worker_answers_a_sync_with_what_it_holds_then_reports_each_close),
	};

	log_init(getenv("DBG") ? LOG_LVL_DEBUG : LOG_LVL_ERROR, LOG_FMT_TEXT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
