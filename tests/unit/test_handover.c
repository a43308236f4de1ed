/*
 * test_handover.c - connections from the listener to the workers: the
 * listener's batches (one message per worker with every connection chosen
 * for it, balanced, counted, with each one's remote address) and the
 * worker's side (every connection of a batch counted, each fd it cannot
 * take closed, nothing leaked when a batch is malformed or truncated).
 *
 * Each test runs listener_main() or worker_main() in a child over the
 * shared memory and channels the supervisor would have made, and plays
 * the other side itself.
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
#include <sys/eventfd.h>
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
#include "shmring.h"

#define RING 4096
#define NWORKERS 2

struct fx {
	struct iotd_config cfg;
	struct role_env env;
	struct iotd_shm *shm;
	size_t shm_len;
	int ctl;                       /* the supervisor's end of the child's control socket */
	pid_t pid;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* What the supervisor makes before the first fork: memory, rings, eventfds, channels. */
static void fx_init(struct fx *f)
{
	memset(f, 0, sizeof(*f));
	config_defaults(&f->cfg);
	f->shm_len = shm_size(NWORKERS, RING);
	f->shm = mmap(NULL, f->shm_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(f->shm != MAP_FAILED);
	shm_layout(f->shm, NWORKERS, RING);
	for (unsigned i = 0; i < NWORKERS; i++) {
		int sp[2];

		atomic_store(&f->shm->workers[i].alive, 1);
		atomic_store(&f->shm->workers[i].capacity, 1000);
		f->env.worker_efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		assert_true(f->env.worker_efd[i] >= 0);
		assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC,
					    0, sp), 0);
		f->env.chan_listener[i] = sp[0];
		f->env.chan_worker[i] = sp[1];
	}
	f->env.cfg = &f->cfg;
	f->env.shm = f->shm;
	f->env.nworkers = NWORKERS;
	f->env.router_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_true(f->env.router_efd >= 0);
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

/*
 * Fork a role and wait for its READY. With room > 0 the child's open-file
 * limit leaves it that many free fd numbers.
 */
static void fx_spawn(struct fx *f, int (*role_main)(struct role_env *), rlim_t room)
{
	struct ipc_hdr hdr;
	int sv[2], fd;

	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	f->env.ctl_fd = sv[1];
	f->ctl = sv[0];
	f->pid = fork();
	assert_true(f->pid >= 0);
	if (f->pid == 0) {
		struct rlimit rl;

		close(sv[0]);
		rl.rlim_cur = rl.rlim_max = limit_for_room((int)room);
		if (room > 0 && setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(99);
		ipc_set_process();
		_exit(role_main(&f->env));
	}
	close(sv[1]);
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
	munmap(f->shm, f->shm_len);
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
 * Connect n clients to the listening socket, each sending the first byte of
 * a CONNECT: the listener defers accepting a connection until its client
 * has spoken (TCP_DEFER_ACCEPT).
 */
static void connect_clients(int lfd, int *clients, int n)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	assert_int_equal(getsockname(lfd, (struct sockaddr *)&ss, &len), 0);
	for (int i = 0; i < n; i++) {
		clients[i] = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(clients[i] >= 0);
		assert_int_equal(connect(clients[i], (struct sockaddr *)&ss, len), 0);
		assert_int_equal(send(clients[i], "\x10", 1, 0), 1);
	}
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

struct got {
	unsigned msgs, conns;
	char remote[64][64];
	int fd[64];                    /* the broker's ends, held until got_close() */
};

/*
 * Read what the listener sent worker w within wait_ms: check each message
 * (type, peer, one struct ipc_client per fd, each fd the connection its
 * remote names) and keep the fds.
 */
static void read_channel(struct fx *f, unsigned w, struct got *g, int wait_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)wait_ms;

	memset(g, 0, sizeof(*g));
	for (;;) {
		struct pollfd pfd = { .fd = f->env.chan_worker[w], .events = POLLIN };
		struct ipc_client info[IPC_MAX_FDS];
		struct ipc_hdr hdr;
		int fds[IPC_MAX_FDS];
		unsigned nfds;
		ssize_t n;
		uint64_t now = mono_ms();

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
	fx_init(f);
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
	fx_spawn(f, listener_main, 0);
	for (unsigned w = 0; w < NWORKERS; w++) {
		uint64_t t = expect_sync(f, w);

		if (tokens != NULL)
			tokens[w] = t;
	}
}

/* Wait until the process is in that state (/proc/PID/stat). */
static void wait_state(pid_t pid, char want)
{
	uint64_t deadline = mono_ms() + 5000;
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
		assert_true(mono_ms() < deadline);
		poll(NULL, 0, 1);
	}
}

/*
 * The listener stopped while n clients connect, then let go: it finds them
 * all waiting and accepts them in one go.
 */
static void burst(struct fx *f, int *clients, int n)
{
	assert_int_equal(kill(f->pid, SIGSTOP), 0);
	wait_state(f->pid, 'T');
	connect_clients(f->env.listen_fds[0], clients, n);
	poll(NULL, 0, 20);             /* the last first bytes land: all are in the accept queue */
	assert_int_equal(kill(f->pid, SIGCONT), 0);
}

static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

static void listener_sends_one_message_per_worker_balanced(void **state)
{
	struct fx f;
	struct got g[NWORKERS];
	int clients[10];

	listener_fx(&f, AF_INET);
	listener_spawn(&f, NULL);
	burst(&f, clients, 10);
	for (unsigned w = 0; w < NWORKERS; w++)
		read_channel(&f, w, &g[w], 500);
	/* Ten at once over two idle workers: five each, in one message each. */
	for (unsigned w = 0; w < NWORKERS; w++) {
		assert_int_equal(g[w].msgs, 1);
		assert_int_equal(g[w].conns, 5);
		assert_int_equal(atomic_load(&f.shm->workers[w].handed), 5);
	}
	assert_int_equal(atomic_load(&f.shm->connects), 10);
	/* Every client once, by the address it has. */
	for (int i = 0; i < 10; i++) {
		char want[64];
		int seen = 0;

		expected_remote(clients[i], want, sizeof(want));
		for (unsigned w = 0; w < NWORKERS; w++)
			for (unsigned k = 0; k < g[w].conns; k++)
				seen += strcmp(g[w].remote[k], want) == 0;
		assert_int_equal(seen, 1);
	}
	for (unsigned w = 0; w < NWORKERS; w++)
		got_close(&g[w]);
	close_all(clients, 10);
	fx_stop(&f);
}

static void listener_balances_on_load_with_the_batch_counted(void **state)
{
	struct fx f;
	struct got g[NWORKERS];
	int clients[8];

	listener_fx(&f, AF_INET);
	/* Worker 0 holds 4 already: the first 4 of the burst go to worker 1, then they alternate. */
	atomic_store(&f.shm->workers[0].handed, 4);
	listener_spawn(&f, NULL);
	burst(&f, clients, 8);
	for (unsigned w = 0; w < NWORKERS; w++)
		read_channel(&f, w, &g[w], 500);
	assert_int_equal(g[0].conns, 2);
	assert_int_equal(g[1].conns, 6);
	assert_int_equal(atomic_load(&f.shm->workers[0].handed), 6);
	assert_int_equal(atomic_load(&f.shm->workers[1].handed), 6);
	for (unsigned w = 0; w < NWORKERS; w++)
		got_close(&g[w]);
	close_all(clients, 8);
	fx_stop(&f);
}

static void listener_refuses_beyond_max_connections_within_a_batch(void **state)
{
	struct fx f;
	struct got g[NWORKERS];
	int clients[10], refused = 0;

	listener_fx(&f, AF_INET);
	f.cfg.max_connections = 7;
	listener_spawn(&f, NULL);
	burst(&f, clients, 10);
	for (unsigned w = 0; w < NWORKERS; w++)
		read_channel(&f, w, &g[w], 500);
	assert_int_equal(g[0].conns + g[1].conns, 7);
	assert_int_equal(atomic_load(&f.shm->workers[0].handed) +
			 atomic_load(&f.shm->workers[1].handed), 7);
	assert_int_equal(atomic_load(&f.shm->connects), 7);
	/* The three others were closed by the listener: their clients see the end. */
	for (int i = 0; i < 10; i++) {
		struct pollfd pfd = { .fd = clients[i], .events = POLLIN };
		char c;

		if (poll(&pfd, 1, 0) == 1 && recv(clients[i], &c, 1, MSG_DONTWAIT) <= 0)
			refused++;
	}
	assert_int_equal(refused, 3);
	for (unsigned w = 0; w < NWORKERS; w++)
		got_close(&g[w]);
	close_all(clients, 10);
	fx_stop(&f);
}

static void listener_sends_elsewhere_when_a_channel_is_full(void **state)
{
	struct fx f;
	struct got g[NWORKERS];
	int clients[6], queued = 0;
	struct ipc_hdr hdr;
	int fd;

	listener_fx(&f, AF_INET);
	/* Within the slack all six would stay on the first worker chosen: not on a refused channel. */
	f.cfg.placement_slack = 8;
	listener_spawn(&f, NULL);
	/* Worker 0's channel full to the brim (as a dead worker's would be). */
	while (ipc_send(f.env.chan_listener[0], IPC_PING, 0, NULL, 0, -1) == 0)
		queued++;
	assert_int_equal(errno, EAGAIN);
	burst(&f, clients, 6);
	read_channel(&f, 1, &g[1], 500);
	assert_int_equal(g[1].conns, 6);
	assert_int_equal(atomic_load(&f.shm->workers[1].handed), 6);
	assert_int_equal(atomic_load(&f.shm->workers[0].handed), 0);
	/* Worker 0 got nothing but what filled its channel. */
	for (int i = 0; i < queued; i++) {
		assert_int_equal(ipc_recv(f.env.chan_worker[0], &hdr, NULL, 0, &fd), 0);
		assert_int_equal(hdr.type, IPC_PING);
	}
	assert_int_equal(ipc_recv(f.env.chan_worker[0], &hdr, NULL, 0, &fd), -1);
	assert_int_equal(errno, EAGAIN);
	got_close(&g[1]);
	close_all(clients, 6);
	fx_stop(&f);
}

static void listener_names_ipv6_clients_in_brackets(void **state)
{
	struct fx f;
	struct got g[NWORKERS];
	int clients[2];
	char want[64];

	listener_fx(&f, AF_INET6);
	if (f.env.listen_fds[0] < 0) {
		f.env.n_listen_fds = 0;
		fx_free(&f);
		skip();
	}
	listener_spawn(&f, NULL);
	burst(&f, clients, 2);
	for (unsigned w = 0; w < NWORKERS; w++)
		read_channel(&f, w, &g[w], 500);
	assert_int_equal(g[0].conns, 1);
	assert_int_equal(g[1].conns, 1);
	for (int i = 0; i < 2; i++) {
		expected_remote(clients[i], want, sizeof(want));
		assert_true(strncmp(want, "[::1]:", 6) == 0);
		assert_true(strcmp(g[0].remote[0], want) == 0 || strcmp(g[1].remote[0], want) == 0);
	}
	for (unsigned w = 0; w < NWORKERS; w++)
		got_close(&g[w]);
	close_all(clients, 2);
	fx_stop(&f);
}

/*
 * Connect one client and wait for its handover; returns the worker it went
 * to. No worker runs to release it: it counts in that worker's load from
 * then on.
 */
static unsigned next_worker(struct fx *f, int *client)
{
	struct pollfd pfd[NWORKERS];
	struct ipc_client info[IPC_MAX_FDS];
	struct ipc_hdr hdr;
	int fds[IPC_MAX_FDS];
	unsigned w, nfds;

	connect_clients(f->env.listen_fds[0], client, 1);
	for (w = 0; w < NWORKERS; w++)
		pfd[w] = (struct pollfd){ .fd = f->env.chan_worker[w], .events = POLLIN };
	assert_int_equal(poll(pfd, NWORKERS, 5000), 1);
	for (w = 0; !(pfd[w].revents & POLLIN); w++)
		;
	assert_true(ipc_recv_fds(f->env.chan_worker[w], &hdr, info, sizeof(info), fds,
				 IPC_MAX_FDS, &nfds) > 0);
	assert_int_equal(hdr.type, IPC_CLIENT_FD);
	assert_int_equal(nfds, 1);
	close(fds[0]);
	return w;
}

static void listener_with_slack_0_alternates_one_connection_after_another(void **state)
{
	struct fx f;
	int clients[6];
	unsigned prev = NWORKERS;

	listener_fx(&f, AF_INET);
	listener_spawn(&f, NULL);
	for (int i = 0; i < 6; i++) {
		unsigned w = next_worker(&f, &clients[i]);

		assert_int_not_equal(w, prev);
		prev = w;
	}
	for (unsigned w = 0; w < NWORKERS; w++)
		assert_int_equal(atomic_load(&f.shm->workers[w].handed), 3);
	close_all(clients, 6);
	fx_stop(&f);
}

static void listener_keeps_a_worker_within_the_slack_then_takes_the_least_loaded(void **state)
{
	/*
	 * Slack 3 over two idle workers: the first worker takes 3 (3 above the
	 * other), then the other until it holds 3 above (3 and 6), then back.
	 */
	static const bool on_first[] = { 1, 1, 1, 0, 0, 0, 0, 0, 0, 1 };
	struct fx f;
	int clients[ARRAY_SIZE(on_first)];
	unsigned first = NWORKERS;

	listener_fx(&f, AF_INET);
	f.cfg.placement_slack = 3;
	listener_spawn(&f, NULL);
	for (unsigned i = 0; i < ARRAY_SIZE(on_first); i++) {
		unsigned w = next_worker(&f, &clients[i]);

		if (i == 0)
			first = w;
		if ((w == first) != on_first[i])
			fail_msg("connection %u went to worker %u, the first one went to %u", i, w,
				 first);
	}
	assert_int_equal(atomic_load(&f.shm->workers[first].handed), 4);
	assert_int_equal(atomic_load(&f.shm->workers[1 - first].handed), 6);
	close_all(clients, (int)ARRAY_SIZE(on_first));
	fx_stop(&f);
}

static void listener_leaves_a_dead_or_full_worker_within_the_slack(void **state)
{
	struct fx f;
	int clients[6];
	unsigned a, b;

	listener_fx(&f, AF_INET);
	f.cfg.placement_slack = 8;
	listener_spawn(&f, NULL);
	a = next_worker(&f, &clients[0]);
	b = 1 - a;
	assert_int_equal(next_worker(&f, &clients[1]), a);
	/* Dead: its channel would only queue, the other worker serves at once. */
	atomic_store(&f.shm->workers[a].alive, 0);
	assert_int_equal(next_worker(&f, &clients[2]), b);
	assert_int_equal(next_worker(&f, &clients[3]), b);
	/* At its open-file limit (2 held): the fd would be dropped in transit. */
	atomic_store(&f.shm->workers[a].alive, 1);
	atomic_store(&f.shm->workers[b].capacity, 2);
	assert_int_equal(next_worker(&f, &clients[4]), a);
	/* Worker a stays, within the slack, once b has room again. */
	atomic_store(&f.shm->workers[b].capacity, 1000);
	assert_int_equal(next_worker(&f, &clients[5]), a);
	close_all(clients, 6);
	fx_stop(&f);
}

static void listener_keeps_the_slack_within_a_batch(void **state)
{
	struct fx f;
	struct got g[NWORKERS];
	int clients[10];

	listener_fx(&f, AF_INET);
	f.cfg.placement_slack = 3;
	listener_spawn(&f, NULL);
	burst(&f, clients, 10);
	for (unsigned w = 0; w < NWORKERS; w++)
		read_channel(&f, w, &g[w], 500);
	/* As one after another: 3 and 0, then 3 and 6, then 4 and 6; one message each. */
	for (unsigned w = 0; w < NWORKERS; w++)
		assert_int_equal(g[w].msgs, 1);
	assert_int_equal(g[0].conns + g[1].conns, 10);
	assert_true((g[0].conns == 4 && g[1].conns == 6) || (g[0].conns == 6 && g[1].conns == 4));
	for (unsigned w = 0; w < NWORKERS; w++)
		got_close(&g[w]);
	close_all(clients, 10);
	fx_stop(&f);
}

static void listener_takes_a_reloaded_slack_for_the_next_connection(void **state)
{
	struct fx f;
	struct ipc_hdr hdr;
	int clients[4], fd;
	unsigned w;

	listener_fx(&f, AF_INET);
	listener_spawn(&f, NULL);
	w = next_worker(&f, &clients[0]);
	assert_int_equal(next_worker(&f, &clients[1]), 1 - w);
	/* What the supervisor sends on a reload; the PONG says it was read. */
	f.cfg.placement_slack = 8;
	assert_int_equal(ipc_send(f.ctl, IPC_CONFIG, 0, &f.cfg, sizeof(f.cfg), -1), 0);
	assert_int_equal(ipc_send(f.ctl, IPC_PING, 0, NULL, 0, -1), 0);
	assert_true(ipc_recv(f.ctl, &hdr, NULL, 0, &fd) >= 0);
	assert_int_equal(hdr.type, IPC_PONG);
	assert_int_equal(next_worker(&f, &clients[2]), 1 - w);
	assert_int_equal(next_worker(&f, &clients[3]), 1 - w);
	close_all(clients, 4);
	fx_stop(&f);
}

/* ---- the worker ---------------------------------------------------------- */

/* Wait until worker 0 has counted accepted and released as expected. */
static void wait_counts(struct fx *f, uint64_t accepted, uint64_t released)
{
	uint64_t deadline = mono_ms() + 5000;

	while (atomic_load(&f->shm->workers[0].accepted) != accepted ||
	       atomic_load(&f->shm->workers[0].released) != released) {
		if (mono_ms() >= deadline)
			fail_msg("worker 0: accepted %llu released %llu, expected %llu and %llu",
				 (unsigned long long)atomic_load(&f->shm->workers[0].accepted),
				 (unsigned long long)atomic_load(&f->shm->workers[0].released),
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

static void send_batch(struct fx *f, const int *fds, unsigned nfds, unsigned ninfo)
{
	struct ipc_client info[IPC_MAX_FDS];

	memset(info, 0, sizeof(info));
	for (unsigned i = 0; i < ninfo; i++)
		snprintf(info[i].remote, sizeof(info[i].remote), "10.0.0.%u:%u", i + 1, 1000 + i);
	assert_int_equal(ipc_send_fds(f->env.chan_listener[0], IPC_CLIENT_FD, 0, info,
				      ninfo * sizeof(info[0]), fds, nfds), 0);
}

static void worker_takes_a_batch_and_closes_the_fd_it_cannot_take(void **state)
{
	struct fx f;
	char path[] = "/tmp/iotd-test-handover-XXXXXX";
	int a[2], b[2], file, fds[3];

	fx_init(&f);
	fx_spawn(&f, worker_main, 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
	/* epoll refuses a regular file: the middle one of the batch cannot be taken. */
	file = mkstemp(path);
	assert_true(file >= 0);
	fds[0] = a[1];
	fds[1] = file;
	fds[2] = b[1];
	send_batch(&f, fds, 3, 3);
	close(a[1]);
	close(file);
	close(b[1]);
	wait_counts(&f, 3, 1);
	assert_false(holds_path(f.pid, path));
	/* The two others are held and served. */
	assert_false(peer_gone(a[0], 100));
	assert_false(peer_gone(b[0], 0));
	close(a[0]);
	close(b[0]);
	/* Their clients leaving releases them. */
	wait_counts(&f, 3, 3);
	unlink(path);
	fx_stop(&f);
}

static void worker_closes_a_malformed_batch_and_counts_it(void **state)
{
	struct fx f;
	int a[2], b[2], fds[2];

	fx_init(&f);
	fx_spawn(&f, worker_main, 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
	/* Three connections counted by the sender, two fds: none can be matched. */
	fds[0] = a[1];
	fds[1] = b[1];
	send_batch(&f, fds, 2, 3);
	close(a[1]);
	close(b[1]);
	wait_counts(&f, 3, 3);
	assert_true(peer_gone(a[0], 2000));
	assert_true(peer_gone(b[0], 2000));
	/* A well-formed one after it is taken. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
	send_batch(&f, &a[1], 1, 1);
	close(a[1]);
	wait_counts(&f, 4, 3);
	assert_false(peer_gone(a[0], 100));
	close(a[0]);
	close(b[0]);
	fx_stop(&f);
}

static void worker_out_of_fds_closes_a_truncated_batch_and_counts_it(void **state)
{
	struct fx f;
	int peers[IPC_MAX_FDS], fds[IPC_MAX_FDS], a[2];

	fx_init(&f);
	/* Room for its own fds and a few more: a full batch cannot arrive whole (MSG_CTRUNC). */
	fx_spawn(&f, worker_main, 10);
	for (int i = 0; i < IPC_MAX_FDS; i++) {
		int sp[2];

		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
		peers[i] = sp[0];
		fds[i] = sp[1];
	}
	send_batch(&f, fds, IPC_MAX_FDS, IPC_MAX_FDS);
	close_all(fds, IPC_MAX_FDS);
	wait_counts(&f, IPC_MAX_FDS, IPC_MAX_FDS);
	for (int i = 0; i < IPC_MAX_FDS; i++)
		assert_true(peer_gone(peers[i], 2000));
	close_all(peers, IPC_MAX_FDS);
	/* Nothing leaked: a connection is still taken. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
	send_batch(&f, &a[1], 1, 1);
	close(a[1]);
	wait_counts(&f, IPC_MAX_FDS + 1, IPC_MAX_FDS);
	assert_false(peer_gone(a[0], 100));
	close(a[0]);
	fx_stop(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(listener_sends_one_message_per_worker_balanced),
		cmocka_unit_test(listener_balances_on_load_with_the_batch_counted),
		cmocka_unit_test(listener_refuses_beyond_max_connections_within_a_batch),
		cmocka_unit_test(listener_sends_elsewhere_when_a_channel_is_full),
		cmocka_unit_test(listener_names_ipv6_clients_in_brackets),
		cmocka_unit_test(listener_with_slack_0_alternates_one_connection_after_another),
		cmocka_unit_test(listener_keeps_a_worker_within_the_slack_then_takes_the_least_loaded),
		cmocka_unit_test(listener_leaves_a_dead_or_full_worker_within_the_slack),
		cmocka_unit_test(listener_keeps_the_slack_within_a_batch),
		cmocka_unit_test(listener_takes_a_reloaded_slack_for_the_next_connection),
		cmocka_unit_test(worker_takes_a_batch_and_closes_the_fd_it_cannot_take),
		cmocka_unit_test(worker_closes_a_malformed_batch_and_counts_it),
		cmocka_unit_test(worker_out_of_fds_closes_a_truncated_batch_and_counts_it),
	};

	log_init(LOG_LVL_ERROR, LOG_FMT_TEXT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
