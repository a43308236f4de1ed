/*
 * supervisor.c - the main process of iotd.
 *
 * Owns: the configuration, the listening sockets, the shared-memory mapping
 * with every ring, the eventfds that wake the router and the workers, the
 * listener <-> worker fd channels, and the child table. It never touches a
 * client byte. Children are forked (not exec'd) from it, so each inherits
 * the mapping and the fds; a dead child is reaped, logged and forked again
 * with backoff, and finds its rings and channels where its predecessor left
 * them. See docs/arch.md for the crash contract.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "ipc.h"
#include "log.h"
#include "proctitle.h"
#include "rec.h"
#include "role.h"
#include "supervisor.h"

#define RESTART_MIN_MS 10        /* first restart after a crash */
#define RESTART_MAX_MS 5000      /* backoff cap */
#define STABLE_MS 10000          /* a child up this long has its backoff reset */
#define STOP_GRACE_MS 5000       /* graceful stop: then SIGKILL */

enum child_state { CHILD_DOWN, CHILD_STARTING, CHILD_RUNNING };

struct child {
	enum iotd_role role;
	unsigned index;
	pid_t pid;
	int ctl_fd;                  /* supervisor's end; -1 when down */
	enum child_state state;
	uint64_t started_ms;
	uint64_t restart_at_ms;      /* 0: no restart scheduled */
	unsigned backoff_ms;
	unsigned restarts;
	bool down_record_pending;    /* a dead worker's REC_WORKER_DOWN not yet in its ring */
};

struct supervisor {
	struct iotd_config *cfg;
	const struct cli_args *args;
	struct role_env env;
	size_t shm_len;
	int epfd, sigfd, timerfd;
	struct child children[2 + IOTD_MAX_WORKERS];
	unsigned n_children;
	bool ready_sent;
	bool stopping;
	uint64_t stop_deadline_ms;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *role_name(enum iotd_role role)
{
	switch (role) {
	case ROLE_SUPERVISOR: return "supervisor";
	case ROLE_LISTENER: return "listener";
	case ROLE_ROUTER: return "router";
	case ROLE_WORKER: return "worker";
	default: return "?";
	}
}

/* "router", "worker 3": how logs name a child. */
static const char *child_name(const struct child *c, char *buf, size_t len)
{
	if (c->role == ROLE_WORKER)
		snprintf(buf, len, "worker %u", c->index);
	else
		snprintf(buf, len, "%s", role_name(c->role));
	return buf;
}

static size_t round_pow2(size_t n)
{
	size_t p = 4096;

	while (p < n)
		p <<= 1;
	return p;
}

/* --- listening sockets ------------------------------------------------- */

static int bind_one(const struct addrinfo *ai, bool v6only)
{
	int fd, one = 1, v6 = v6only ? 1 : 0;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ai->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof(v6));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/*
 * Bind one configured address. An empty host means every address: both
 * families, IPv6 with V6ONLY so the IPv4 socket can share the port.
 * "[::]:port" alone is dual stack (V6ONLY off) unless it fails because an
 * IPv4 wildcard already holds the port.
 */
static int bind_listen_addr(struct role_env *env, const struct listen_addr *la)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res, *ai;
	const char *host = la->host[0] && strcmp(la->host, "*") ? la->host : NULL;
	int rc, fd, bound = 0;

	hints.ai_family = la->family;
	rc = getaddrinfo(host, la->port, &hints, &res);
	if (rc != 0) {
		log_error("cannot resolve listen address %s:%s: %s", la->host, la->port,
			  gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (env->n_listen_fds >= (int)ARRAY_SIZE(env->listen_fds))
			break;
		fd = bind_one(ai, host == NULL);
		if (fd < 0 && ai->ai_family == AF_INET6 && errno == EADDRINUSE)
			fd = bind_one(ai, true);
		if (fd < 0) {
			log_error("cannot listen on %s:%s: %s", la->host[0] ? la->host : "*",
				  la->port, strerror(errno));
			freeaddrinfo(res);
			return -1;
		}
		env->listen_fds[env->n_listen_fds++] = fd;
		bound++;
	}
	freeaddrinfo(res);
	return bound > 0 ? 0 : -1;
}

static int open_listeners(struct supervisor *sv)
{
	int n = sd_listen_fds(1);

	if (n > 0) {
		for (int i = 0; i < n && i < (int)ARRAY_SIZE(sv->env.listen_fds); i++) {
			int fd = SD_LISTEN_FDS_START + i;

			if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
				log_error("socket-activation fd %d is not a listening stream socket", fd);
				return -1;
			}
			sv->env.listen_fds[sv->env.n_listen_fds++] = fd;
		}
		log_info("using %d socket(s) passed by systemd", n);
		return 0;
	}
	for (int i = 0; i < sv->cfg->n_listen; i++)
		if (bind_listen_addr(&sv->env, &sv->cfg->listen[i]) < 0)
			return -1;
	for (int i = 0; i < sv->cfg->n_listen; i++)
		log_info("listening on %s%s%s:%s", sv->cfg->listen[i].family == AF_INET6 ? "[" : "",
			 sv->cfg->listen[i].host[0] ? sv->cfg->listen[i].host : "*",
			 sv->cfg->listen[i].family == AF_INET6 ? "]" : "", sv->cfg->listen[i].port);
	return 0;
}

/* --- shared memory, eventfds, channels ---------------------------------- */

static int create_shm(struct supervisor *sv)
{
	size_t ring_size, ring_bytes, header, len;
	unsigned n = sv->env.nworkers;
	struct iotd_shm *shm;
	int fd;

	/* A ring must carry a whole max-size PUBLISH with room to spare. */
	ring_size = round_pow2(MAX((size_t)1 << 20, 2 * ((size_t)sv->cfg->max_packet_size + 65536)));
	ring_bytes = shmring_footprint(ring_size);
	header = (sizeof(struct iotd_shm) + 4095) & ~(size_t)4095;
	len = header + 2 * n * ring_bytes;
	fd = memfd_create("iotd-shm", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)len) < 0) {
		log_error("cannot create shared memory: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	shm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (shm == MAP_FAILED) {
		log_error("cannot map shared memory: %s", strerror(errno));
		return -1;
	}
	shm->magic = IOTD_SHM_MAGIC;
	shm->nworkers = n;
	shm->ring_size = ring_size;
	for (unsigned i = 0; i < n; i++) {
		shm->w2r_off[i] = header + (2 * i) * ring_bytes;
		shm->r2w_off[i] = header + (2 * i + 1) * ring_bytes;
		shmring_init(shm_w2r(shm, i), ring_size);
		shmring_init(shm_r2w(shm, i), ring_size);
	}
	sv->env.shm = shm;
	sv->shm_len = len;
	return 0;
}

static int create_channels(struct supervisor *sv)
{
	int sp[2];

	sv->env.router_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (sv->env.router_efd < 0)
		goto fail;
	for (unsigned i = 0; i < sv->env.nworkers; i++) {
		sv->env.worker_efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (sv->env.worker_efd[i] < 0)
			goto fail;
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
			goto fail;
		sv->env.chan_listener[i] = sp[0];
		sv->env.chan_worker[i] = sp[1];
	}
	return 0;
fail:
	log_error("cannot create channels: %s", strerror(errno));
	return -1;
}

/* --- children ----------------------------------------------------------- */

static void close_if(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* In the child: keep only what its role needs (least privilege, no fd leaks). */
static void child_close_fds(struct supervisor *sv, struct child *c)
{
	struct role_env *env = &sv->env;

	close(sv->epfd);
	close(sv->sigfd);
	close(sv->timerfd);
	for (unsigned i = 0; i < sv->n_children; i++)
		if (&sv->children[i] != c && sv->children[i].ctl_fd >= 0)
			close(sv->children[i].ctl_fd);
	if (c->role != ROLE_LISTENER) {
		for (int i = 0; i < env->n_listen_fds; i++)
			close_if(&env->listen_fds[i]);
		env->n_listen_fds = 0;
	}
	for (unsigned i = 0; i < env->nworkers; i++) {
		if (c->role != ROLE_LISTENER)
			close_if(&env->chan_listener[i]);
		if (c->role != ROLE_WORKER || i != c->index)
			close_if(&env->chan_worker[i]);
	}
}

static void child_run(struct supervisor *sv, struct child *c, int ctl_fd, pid_t parent)
{
	sigset_t all;
	char title[64];
	int rc;

	/* The supervisor's death must take us with it, even mid-setup. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	/* Ctrl-C reaches the whole process group: only the supervisor acts on it. */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	child_close_fds(sv, c);
	sv->env.ctl_fd = ctl_fd;
	sv->env.index = c->index;
	if (c->role == ROLE_WORKER) {
		snprintf(title, sizeof(title), "iotd: worker %u", c->index);
		sv->env.epoch = atomic_load(&sv->env.shm->workers[c->index].epoch);
		log_set_role("worker", (int)c->index);
	} else {
		snprintf(title, sizeof(title), "iotd: %s", role_name(c->role));
		log_set_role(role_name(c->role), -1);
	}
	proctitle_set(title);
	switch (c->role) {
	case ROLE_LISTENER: rc = listener_main(&sv->env); break;
	case ROLE_ROUTER: rc = router_main(&sv->env); break;
	case ROLE_WORKER: rc = worker_main(&sv->env); break;
	default: rc = 1; break;
	}
	_exit(rc);
}

static int child_spawn(struct supervisor *sv, struct child *c)
{
	struct epoll_event ev = { .events = EPOLLIN };
	pid_t parent = getpid(), pid;
	int sp[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		log_error("cannot create control socket for %s: %s", role_name(c->role),
			  strerror(errno));
		return -1;
	}
	if (c->role == ROLE_WORKER)
		atomic_fetch_add(&sv->env.shm->workers[c->index].epoch, 1);
	c->ctl_fd = sp[0];
	pid = fork();
	if (pid < 0) {
		log_error("fork: %s", strerror(errno));
		close(sp[0]);
		close(sp[1]);
		c->ctl_fd = -1;
		return -1;
	}
	if (pid == 0) {
		close(sp[0]);
		child_run(sv, c, sp[1], parent);
	}
	close(sp[1]);
	c->pid = pid;
	c->state = CHILD_STARTING;
	c->started_ms = now_ms();
	c->restart_at_ms = 0;
	ev.data.ptr = c;
	if (epoll_ctl(sv->epfd, EPOLL_CTL_ADD, c->ctl_fd, &ev) < 0)
		fatal("epoll_ctl: %s", strerror(errno));
	char name[32];

	log_debug("started %s (pid %d)", child_name(c, name, sizeof(name)), (int)pid);
	return 0;
}

static struct child *child_by_pid(struct supervisor *sv, pid_t pid)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].pid == pid && sv->children[i].state != CHILD_DOWN)
			return &sv->children[i];
	return NULL;
}

/*
 * Tell the router, in order with the dead worker's last records, that its
 * connections are gone. The worker is dead and its successor not yet
 * forked, so the supervisor is the ring's only producer right now.
 */
static bool write_worker_down(struct supervisor *sv, struct child *c)
{
	struct shmring_producer prod;
	struct recw w;
	void *dst;
	unsigned epoch = atomic_load(&sv->env.shm->workers[c->index].epoch) + 1;

	recw_init(&w);
	recw_u32(&w, c->index);
	recw_u32(&w, epoch);
	if (w.oom) {
		recw_free(&w);
		return false;
	}
	shmring_producer_attach(&prod, shm_w2r(sv->env.shm, c->index));
	dst = shmring_reserve(&prod, REC_WORKER_DOWN, 0, (uint32_t)w.len);
	if (dst != NULL) {
		memcpy(dst, w.buf, w.len);
		shmring_commit(&prod);
		eventfd_wake(sv->env.router_efd);
	}
	recw_free(&w);
	return dst != NULL;
}

static void child_schedule_restart(struct supervisor *sv, struct child *c)
{
	uint64_t now = now_ms();
	char name[32];

	if (now - c->started_ms >= STABLE_MS)
		c->backoff_ms = 0;
	c->restart_at_ms = now + c->backoff_ms;
	if (c->backoff_ms >= RESTART_MAX_MS / 2)
		log_warn("%s keeps dying (%u restarts); next restart in %u ms",
			 child_name(c, name, sizeof(name)), c->restarts, c->backoff_ms);
	c->backoff_ms = c->backoff_ms == 0 ? RESTART_MIN_MS : MIN(c->backoff_ms * 4, RESTART_MAX_MS);
}

static void child_exited(struct supervisor *sv, struct child *c, int status)
{
	char what[64], name[32];

	if (WIFSIGNALED(status))
		snprintf(what, sizeof(what), "killed by signal %d%s", WTERMSIG(status),
			 WCOREDUMP(status) ? " (core dumped)" : "");
	else
		snprintf(what, sizeof(what), "exited with status %d", WEXITSTATUS(status));
	epoll_ctl(sv->epfd, EPOLL_CTL_DEL, c->ctl_fd, NULL);
	close_if(&c->ctl_fd);
	c->state = CHILD_DOWN;
	c->pid = 0;
	if (c->role == ROLE_WORKER) {
		atomic_store(&sv->env.shm->workers[c->index].alive, 0);
		atomic_store(&sv->env.shm->workers[c->index].conns, 0);
	}
	child_name(c, name, sizeof(name));
	if (sv->stopping) {
		log_debug("%s %s", name, what);
		return;
	}
	c->restarts++;
	log_warn("%s %s; restarting it", name, what);
	if (c->role == ROLE_WORKER)
		c->down_record_pending = true;
	child_schedule_restart(sv, c);
}

static void reap_children(struct supervisor *sv)
{
	struct child *c;
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		c = child_by_pid(sv, pid);
		if (c != NULL)
			child_exited(sv, c, status);
	}
}

/*
 * A process killed between claiming a peer's wake-up flag and writing its
 * eventfd leaves that peer asleep with work waiting: after a restart,
 * wake every consumer once.
 */
static void wake_everyone(struct supervisor *sv)
{
	eventfd_wake(sv->env.router_efd);
	for (unsigned i = 0; i < sv->env.nworkers; i++)
		eventfd_wake(sv->env.worker_efd[i]);
}

static unsigned children_alive(const struct supervisor *sv)
{
	unsigned n = 0;

	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN)
			n++;
	return n;
}

static void restart_due_children(struct supervisor *sv)
{
	uint64_t now = now_ms();

	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state != CHILD_DOWN || c->restart_at_ms == 0 || c->restart_at_ms > now)
			continue;
		if (c->down_record_pending) {
			if (!write_worker_down(sv, c)) {
				c->restart_at_ms = now + 10;   /* ring full: the router is behind */
				continue;
			}
			c->down_record_pending = false;
		}
		if (child_spawn(sv, c) < 0) {
			child_schedule_restart(sv, c);
			continue;
		}
		wake_everyone(sv);
	}
}

/* Arm the timer for the next restart or stop deadline (or 1 s for housekeeping). */
static void arm_timer(struct supervisor *sv)
{
	uint64_t next = now_ms() + 1000, now = now_ms();
	struct itimerspec its = { 0 };

	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state == CHILD_DOWN && sv->children[i].restart_at_ms)
			next = MIN(next, sv->children[i].restart_at_ms);
	if (sv->stopping)
		next = MIN(next, sv->stop_deadline_ms);
	next = next > now ? next - now : 1;
	its.it_value.tv_sec = (time_t)(next / 1000);
	its.it_value.tv_nsec = (long)(next % 1000) * 1000000;
	timerfd_settime(sv->timerfd, 0, &its, NULL);
}

static void notify_status(struct supervisor *sv)
{
	uint64_t conns = 0, in = 0, out = 0;

	for (unsigned i = 0; i < sv->env.nworkers; i++) {
		conns += atomic_load(&sv->env.shm->workers[i].conns);
		in += atomic_load(&sv->env.shm->workers[i].msgs_in);
		out += atomic_load(&sv->env.shm->workers[i].msgs_out);
	}
	sd_notifyf(0, "STATUS=%llu connections, %llu messages in, %llu out, %u workers",
		   (unsigned long long)conns, (unsigned long long)in,
		   (unsigned long long)out, sv->env.nworkers);
}

static void child_message(struct supervisor *sv, struct child *c)
{
	struct ipc_hdr hdr;
	char buf[IPC_MAX_PAYLOAD];
	int fd = -1;
	ssize_t n = ipc_recv(c->ctl_fd, &hdr, buf, sizeof(buf), &fd);

	if (fd >= 0)
		close(fd);
	if (n < 0 || hdr.type == 0) {
		/* EOF: the child is exiting; SIGCHLD does the rest. */
		epoll_ctl(sv->epfd, EPOLL_CTL_DEL, c->ctl_fd, NULL);
		return;
	}
	if (hdr.type != IPC_READY)
		return;
	char name[32];

	c->state = CHILD_RUNNING;
	if (c->restarts > 0)
		log_info("%s is back (pid %d)", child_name(c, name, sizeof(name)), (int)c->pid);
	if (!sv->ready_sent) {
		for (unsigned i = 0; i < sv->n_children; i++)
			if (sv->children[i].state != CHILD_RUNNING)
				return;
		sv->ready_sent = true;
		log_info("iotd %s ready: %u workers", IOTD_VERSION, sv->env.nworkers);
		sd_notify(0, "READY=1");
		notify_status(sv);
	}
}

/* --- stopping ----------------------------------------------------------- */

static void stop_graceful(struct supervisor *sv)
{
	if (sv->stopping)
		return;
	sv->stopping = true;
	sv->stop_deadline_ms = now_ms() + STOP_GRACE_MS;
	sd_notify(0, "STOPPING=1");
	log_info("stopping (SIGINT): closing clients");
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN)
			ipc_send(sv->children[i].ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1);
}

static void kill_children(struct supervisor *sv, int sig)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].pid > 0)
			kill(sv->children[i].pid, sig);
}

/* SIGTERM: no goodbyes. Wait (bounded) only so that no child outlives us. */
static void stop_immediate(struct supervisor *sv)
{
	uint64_t deadline = now_ms() + 1000;

	sd_notify(0, "STOPPING=1");
	log_info("stopping (SIGTERM)");
	sv->stopping = true;
	kill_children(sv, SIGKILL);
	while (children_alive(sv) > 0 && now_ms() < deadline) {
		int status;
		pid_t pid = waitpid(-1, &status, 0);
		struct child *c;

		if (pid < 0)
			break;
		c = child_by_pid(sv, pid);
		if (c != NULL)
			child_exited(sv, c, status);
	}
}

static void reload_config(struct supervisor *sv)
{
	struct iotd_config next;
	char err[CONFIG_ERR_LEN];

	sd_notify(0, "RELOADING=1");
	if (config_load(&next, sv->args, environ, err, sizeof(err)) < 0) {
		log_error("reload failed, keeping the running configuration: %s", err);
	} else {
		sv->cfg->log_level = next.log_level;
		log_set_level(next.log_level);
		log_info("configuration reloaded (log level applied; other changes take effect "
			 "when a role restarts)");
	}
	sd_notify(0, "READY=1");
}

/* Returns false when the supervisor must leave its loop. */
static bool handle_signal(struct supervisor *sv)
{
	struct signalfd_siginfo si;

	while (read(sv->sigfd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			reap_children(sv);
			break;
		case SIGINT:
			stop_graceful(sv);
			break;
		case SIGTERM:
			stop_immediate(sv);
			return false;
		case SIGHUP:
			reload_config(sv);
			break;
		}
	}
	return true;
}

/* --- setup and loop ----------------------------------------------------- */

static int setup_loop(struct supervisor *sv)
{
	struct epoll_event ev = { .events = EPOLLIN };
	sigset_t mask;

	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	sv->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	sv->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	sv->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (sv->sigfd < 0 || sv->timerfd < 0 || sv->epfd < 0) {
		log_error("cannot set up the event loop: %s", strerror(errno));
		return -1;
	}
	ev.data.ptr = &sv->sigfd;
	epoll_ctl(sv->epfd, EPOLL_CTL_ADD, sv->sigfd, &ev);
	ev.data.ptr = &sv->timerfd;
	epoll_ctl(sv->epfd, EPOLL_CTL_ADD, sv->timerfd, &ev);
	return 0;
}

static void setup_children(struct supervisor *sv)
{
	unsigned n = 0;

	sv->children[n++] = (struct child){ .role = ROLE_ROUTER, .ctl_fd = -1 };
	for (unsigned i = 0; i < sv->env.nworkers; i++)
		sv->children[n++] = (struct child){ .role = ROLE_WORKER, .index = i, .ctl_fd = -1 };
	sv->children[n++] = (struct child){ .role = ROLE_LISTENER, .ctl_fd = -1 };
	sv->n_children = n;
}

static void run_loop(struct supervisor *sv)
{
	struct epoll_event evs[16];
	uint64_t last_status = 0;

	for (;;) {
		arm_timer(sv);
		int n = epoll_wait(sv->epfd, evs, (int)ARRAY_SIZE(evs), -1);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &sv->sigfd) {
				if (!handle_signal(sv))
					return;
			} else if (p == &sv->timerfd) {
				uint64_t ticks;

				if (read(sv->timerfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
					log_debug("timerfd: %s", strerror(errno));
			} else {
				child_message(sv, p);
			}
		}
		if (sv->stopping) {
			if (children_alive(sv) == 0)
				return;
			if (now_ms() >= sv->stop_deadline_ms) {
				log_warn("children still running after %d ms; killing them", STOP_GRACE_MS);
				kill_children(sv, SIGKILL);
				sv->stop_deadline_ms = now_ms() + 1000;
			}
			continue;
		}
		restart_due_children(sv);
		if (sv->ready_sent && now_ms() - last_status >= 1000) {
			notify_status(sv);
			last_status = now_ms();
		}
	}
}

int supervisor_main(struct iotd_config *cfg, const struct cli_args *args)
{
	struct supervisor sv = { .cfg = cfg, .args = args };
	long ncpu;

	sv.env.cfg = cfg;
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	sv.env.nworkers = cfg->workers > 0 ? (unsigned)cfg->workers : (unsigned)MAX(ncpu, 1);
	if (sv.env.nworkers > IOTD_MAX_WORKERS)
		sv.env.nworkers = IOTD_MAX_WORKERS;
	proctitle_set("iotd: supervisor");
	if (setup_loop(&sv) < 0 || open_listeners(&sv) < 0 || create_shm(&sv) < 0 ||
	    create_channels(&sv) < 0)
		return 1;
	setup_children(&sv);
	for (unsigned i = 0; i < sv.n_children; i++)
		if (child_spawn(&sv, &sv.children[i]) < 0) {
			kill_children(&sv, SIGKILL);
			return 1;
		}
	run_loop(&sv);
	log_info("stopped");
	return 0;
}
