/*
 * sup_children.c - the supervisor's children: the listener, the router
 * and the workers.
 *
 * Owns the child table and each child's health. Children are forked (not
 * exec'd), so each inherits the mapping and the fds, closes what its role
 * must not hold, then leaves root when iotd was started as root
 * (privsep.c); a dead child is reaped, logged and forked again with
 * backoff, and finds its rings and channels where its predecessor left
 * them. A dead worker's successor waits until the router has applied its
 * last records (IPC_WORKER_DOWN, _DONE). Also here: what the children
 * say on their control sockets, the health checks behind systemd's
 * watchdog, and memory_limit.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "http_upgrade.h"
#include "ipc.h"
#include "keyhash.h"
#include "log.h"
#include "proctitle.h"
#include "router.h"
#include "supervisor_int.h"
#include "worker_tls.h"

#define RESTART_MIN_MS 10        /* first restart after a crash */
#define RESTART_MAX_MS 5000      /* backoff cap */
#define STABLE_MS 100            /* serving this long after READY resets the backoff */
#define HEALTH_MS 5000           /* health check period when systemd's watchdog is off */
#define HEALTH_MIN_MS 50

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
		if (c->role != ROLE_AUTH)
			close_if(&env->auth_chan[i]);
		if (c->role != ROLE_WORKER || i != c->index)
			close_if(&env->auth_chan_worker[i]);
		if (c->role != ROLE_KEYS)
			close_if(&env->keys_chan[i]);
		if (c->role != ROLE_WORKER || i != c->index)
			close_if(&env->keys_chan_worker[i]);
		if (c->role != ROLE_LISTENER)
			close_if(&env->chan_listener[i]);
		if (c->role != ROLE_WORKER || i != c->index)
			close_if(&env->chan_worker[i]);
		/* Only the router wakes workers; a worker sleeps on its own. */
		if (c->role != ROLE_ROUTER && (c->role != ROLE_WORKER || i != c->index))
			close_if(&env->worker_efd[i]);
	}
	if (c->role == ROLE_LISTENER || c->role == ROLE_AUTH || c->role == ROLE_KEYS)
		close_if(&env->router_efd);
	if (c->role != ROLE_AUTH)
		close_if(&env->auth_router);
	if (c->role != ROLE_ROUTER)
		close_if(&env->router_auth);
}

/*
 * In the child: drop the supervisor's mappings and map what the role
 * needs, each region writable only where the role is its writer; then no
 * descriptor of any region stays open (shm.h).
 */
static void child_map_shm(struct supervisor *sv, struct child *c)
{
	shm_unmap(&sv->env.shm);
	if (shm_map_role(&sv->env.shm, &sv->shm, c->role, c->index) < 0)
		_exit(1);
	shm_close(&sv->shm);
}

static void child_run(struct supervisor *sv, struct child *c, int ctl_fd, pid_t parent)
{
	sigset_t all;
	char title[64];
	int rc;

	/*
	 * The supervisor's death must take us with it, even mid-setup. All but
	 * the router die at once; the router sees its control socket's EOF,
	 * applies and stores what the dead workers left in the rings (messages
	 * they acknowledged) and exits, within a bounded time (router_proc.c).
	 */
	prctl(PR_SET_PDEATHSIG, c->role == ROLE_ROUTER ? 0 : SIGKILL);
	if (getppid() != parent)
		_exit(0);
	/* Our own hash key, before any table and before seccomp (getrandom). */
	keyhash_init();
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	/* Ctrl-C reaches the whole process group: only the supervisor acts on it. */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	child_close_fds(sv, c);
	child_map_shm(sv, c);
	sv->env.ctl_fd = ctl_fd;
	sv->env.index = c->index;
	if (c->role == ROLE_WORKER) {
		snprintf(title, sizeof(title), "iotd: worker %u", c->index);
		sv->env.epoch = c->epoch;
		log_set_role("worker", (int)c->index);
	} else {
		snprintf(title, sizeof(title), "iotd: %s", role_name(c->role));
		log_set_role(role_name(c->role), -1);
	}
	proctitle_set(title);
	/* A worker's TLS: OpenSSL's files read while files can be read. */
	if (c->role == ROLE_WORKER && config_tls(sv->cfg) && tls_worker_preinit() < 0)
		_exit(1);
	if (c->role == ROLE_WORKER)
		http_upgrade_prepare();   /* WebSocket accept keys need OpenSSL's files */
	if (privsep_enter(&sv->ps, c->role, parent) < 0)
		_exit(1);
	if (c->role == ROLE_ROUTER)
		router_set_memory_store(sv->store_name, c->restarts > 0);
	switch (c->role) {
	case ROLE_LISTENER: rc = listener_main(&sv->env); break;
	case ROLE_ROUTER: rc = router_main(&sv->env); break;
	case ROLE_WORKER: rc = worker_main(&sv->env); break;
	case ROLE_AUTH: rc = auth_main(&sv->env); break;
	case ROLE_KEYS: rc = keys_main(&sv->env); break;
	default: rc = 1; break;
	}
	_exit(rc);
}

static void child_listen_to(struct child *c);

int child_spawn(struct supervisor *sv, struct child *c)
{
	struct epoll_event ev = { .events = EPOLLIN };
	pid_t parent = getpid(), pid;
	int sp[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		log_error("cannot create control socket for %s: %s", role_name(c->role),
			  strerror(errno));
		return -1;
	}
	if (c->role == ROLE_WORKER) {
		struct shm_worker_state *ws = &sv->env.shm.sup->workers[c->index];

		/* Before the fork: whoever sees it up knows which epoch it has. */
		atomic_store(&ws->epoch, ++c->epoch);
		atomic_store(&ws->up, 1);
	}
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
	child_listen_to(c);
	c->pid = pid;
	c->state = CHILD_STARTING;
	c->started_ms = clock_ms();
	c->ready_ms = 0;
	c->restart_at_ms = 0;
	c->ping_outstanding = false;
	c->hang_logged = false;
	ev.data.ptr = c;
	if (epoll_ctl(sv->epfd, EPOLL_CTL_ADD, c->ctl_fd, &ev) < 0)
		fatal("epoll_ctl: %s", strerror(errno));
	char name[32];

	log_debug("started %s (pid %d)", child_name(c, name, sizeof(name)), (int)pid);
	return 0;
}

/* The auth and key roles run only while the configuration asks for them; every other role always. */
bool child_wanted(const struct supervisor *sv, const struct child *c)
{
	if (c->role == ROLE_AUTH)
		return config_auth_role(sv->cfg);
	if (c->role == ROLE_KEYS)
		return config_tls(sv->cfg);
	return true;
}

/* The one child of a role other than a worker. */
struct child *child_of_role(struct supervisor *sv, enum iotd_role role)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].role == role)
			return &sv->children[i];
	return NULL;
}

/* Which clients are served, said once at start and at every reload that changes it. */
void log_auth_mode(const struct iotd_config *cfg)
{
	const char *acl = cfg->auth_acl_file[0] ? ", ACL file " : "";
	const char *acl_path = cfg->auth_acl_file[0] ? cfg->auth_acl_file : "";

	if (strcmp(cfg->auth_backend, "none") != 0)
		log_info("authentication: backend %s, anonymous clients %s%s%s", cfg->auth_backend,
			 cfg->auth_allow_anonymous ? "allowed" : "refused", acl, acl_path);
	else if (cfg->auth_allow_anonymous)
		log_info("authentication: none; clients from any address are served "
			 "(auth.allow_anonymous)%s%s", acl, acl_path);
	else
		log_info("authentication: none; only loopback clients are served (set an "
			 "auth.backend, or auth.allow_anonymous = true)%s%s", acl, acl_path);
}

struct child *child_by_pid(struct supervisor *sv, pid_t pid)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].pid == pid && sv->children[i].state != CHILD_DOWN)
			return &sv->children[i];
	return NULL;
}

/*
 * Tell the router that a worker died. The router applies the dead
 * worker's last records first, closes its sessions, and confirms
 * (IPC_WORKER_DOWN_DONE); only then is the successor forked, so that the
 * ring holds nothing of the dead process when the successor starts
 * writing. The supervisor never writes into a child's memory: this goes
 * over the router's control socket. A router that is not serving yet is
 * told once it reports READY (router_told_downs).
 */
static void send_worker_down(struct supervisor *sv, struct child *c)
{
	struct child *rc = child_of_role(sv, ROLE_ROUTER);
	struct ipc_worker msg = { .index = c->index, .epoch = c->epoch + 1 };

	if (!c->down_pending || c->down_sent || rc == NULL || rc->state != CHILD_RUNNING ||
	    rc->ctl_fd < 0)
		return;
	if (ipc_send(rc->ctl_fd, IPC_WORKER_DOWN, c->index, &msg, sizeof(msg), -1) < 0) {
		log_warn("cannot tell the router that worker %u is down: %s", c->index,
			 strerror(errno));
		return;
	}
	c->down_sent = true;
}

/* The router (re)started: every death it has not confirmed is its to handle. */
static void router_told_downs(struct supervisor *sv)
{
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->role == ROLE_WORKER && c->down_pending) {
			c->down_sent = false;
			send_worker_down(sv, c);
		}
	}
}

/*
 * The worker child an IPC_WORKER_DOWN_DONE or IPC_WORKER_FAULT names, with
 * its epoch in *epoch; NULL for an index of no worker.
 */
static struct child *worker_named(struct supervisor *sv, const struct ipc_msg *m,
				  uint32_t *epoch)
{
	struct ipc_worker msg;

	memcpy(&msg, m->data, sizeof(msg));
	*epoch = msg.epoch;
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].role == ROLE_WORKER && sv->children[i].index == msg.index)
			return &sv->children[i];
	return NULL;
}

/* IPC_WORKER_DOWN_DONE: the successor may start. */
static void worker_down_done(struct supervisor *sv, const struct ipc_msg *m)
{
	uint32_t epoch;
	struct child *c = worker_named(sv, m, &epoch);

	if (c != NULL && c->down_pending && epoch == c->epoch + 1)
		c->down_pending = c->down_sent = false;
}

/* IPC_WORKER_FAULT: the router found a worker's rings impossible. */
static void worker_fault(struct supervisor *sv, const struct ipc_msg *m)
{
	uint32_t epoch;
	struct child *c = worker_named(sv, m, &epoch);

	if (c != NULL && c->epoch == epoch && c->state != CHILD_DOWN && c->pid > 0) {
		log_error("worker %u broke its shared memory: killing it", c->index);
		kill(c->pid, SIGKILL);
	}
}

void child_schedule_restart(struct supervisor *sv, struct child *c)
{
	uint64_t now = clock_ms();
	char name[32];

	/*
	 * A child that got as far as serving for a while died of something
	 * new: restart it at once. One that dies before that, again and
	 * again, is a crash loop: back off.
	 */
	if (c->ready_ms != 0 && now - c->ready_ms >= STABLE_MS)
		c->backoff_ms = 0;
	c->restart_at_ms = now + c->backoff_ms;
	if (c->backoff_ms >= RESTART_MAX_MS / 2)
		log_warn("%s keeps dying (%u restarts); next restart in %u ms",
			 child_name(c, name, sizeof(name)), c->restarts, c->backoff_ms);
	c->backoff_ms = c->backoff_ms == 0 ? RESTART_MIN_MS : MIN(c->backoff_ms * 4, RESTART_MAX_MS);
}

void child_exited(struct supervisor *sv, struct child *c, int status)
{
	char what[96], name[32];

	if (WIFSIGNALED(status))
		snprintf(what, sizeof(what), "killed by signal %d%s", WTERMSIG(status),
			 WTERMSIG(status) == SIGSYS ? " (a system call outside its seccomp allow-list)" :
			 WCOREDUMP(status) ? " (core dumped)" : "");
	else
		snprintf(what, sizeof(what), "exited with status %d", WEXITSTATUS(status));
	epoll_ctl(sv->epfd, EPOLL_CTL_DEL, c->ctl_fd, NULL);
	close_if(&c->ctl_fd);
	c->state = CHILD_DOWN;
	c->pid = 0;
	c->ping_outstanding = false;
	/*
	 * Every fd a dead worker had taken died with it; those still in its
	 * channel wait for its successor (the listener counts them so).
	 */
	if (c->role == ROLE_WORKER)
		atomic_store(&sv->env.shm.sup->workers[c->index].up, 0);
	child_name(c, name, sizeof(name));
	if (sv->stopping) {
		log_debug("%s %s", name, what);
		return;
	}
	if (!child_wanted(sv, c)) {
		c->replacing = false;
		log_info("%s stopped: the configuration no longer asks for it", name);
		return;
	}
	if (c->replacing && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		c->replacing = false;
		c->restart_at_ms = clock_ms();
		log_info("%s restarting with the new configuration", name);
		return;
	}
	c->replacing = false;
	c->restarts++;
	log_warn("%s %s; restarting it", name, what);
	if (c->role == ROLE_WORKER) {
		c->down_pending = true;
		c->down_sent = false;
		send_worker_down(sv, c);
	}
	child_schedule_restart(sv, c);
}

void reap_children(struct supervisor *sv)
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

unsigned children_alive(const struct supervisor *sv)
{
	unsigned n = 0;

	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN)
			n++;
	return n;
}

/* Listener and workers: the processes that write into the router's rings. */
unsigned feeders_alive(const struct supervisor *sv)
{
	unsigned n = 0;

	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].role != ROLE_ROUTER)
			n++;
	return n;
}

void restart_due_children(struct supervisor *sv)
{
	uint64_t now = clock_ms();

	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state != CHILD_DOWN || c->restart_at_ms == 0 || c->restart_at_ms > now)
			continue;
		if (!child_wanted(sv, c)) {
			c->restart_at_ms = 0;
			continue;
		}
		if (c->down_pending) {
			c->restart_at_ms = now + 10;   /* the router has not applied the death yet */
			continue;
		}
		if (child_spawn(sv, c) < 0) {
			child_schedule_restart(sv, c);
			continue;
		}
		wake_everyone(sv);
	}
}

/* Proportional set size of one process in KiB: shared pages counted once overall. */
static uint64_t process_pss_kb(pid_t pid)
{
	char path[64], line[128];
	uint64_t kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	f = fopen(path, "re");
	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "Pss: %" SCNu64, &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/*
 * memory_limit: once a second, the daemon's PSS against the ceiling. Over
 * it, the listener refuses connections and the workers stop reading
 * clients (as when the router is behind), so nothing new arrives to grow;
 * reading resumes 10% below the ceiling.
 */
void check_memory(struct supervisor *sv)
{
	uint64_t limit_kb = ((uint64_t)sv->cfg->memory_limit + 1023) / 1024, kb;
	uint32_t was;

	if (limit_kb == 0) {
		/* The ceiling was removed by a reload while it held reads back. */
		if (atomic_exchange(&sv->env.shm.sup->memory_pressure, 0))
			log_info("memory_limit removed: accepting and reading again");
		return;
	}
	kb = process_pss_kb(getpid());
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].pid > 0)
			kb += process_pss_kb(sv->children[i].pid);
	was = atomic_load(&sv->env.shm.sup->memory_pressure);
	if (!was && kb > limit_kb) {
		atomic_store(&sv->env.shm.sup->memory_pressure, 1);
		log_warn("memory_limit reached (%" PRIu64 " KiB of %" PRIu64 " KiB): refusing "
			 "connections and pausing reads from clients", kb, limit_kb);
	} else if (was && kb < limit_kb - limit_kb / 10) {
		atomic_store(&sv->env.shm.sup->memory_pressure, 0);
		log_info("memory back to %" PRIu64 " KiB: accepting and reading again", kb);
	}
}

/* --- health checks and systemd's watchdog -------------------------------- */

void health_setup(struct supervisor *sv)
{
	uint64_t usec = 0;

	sv->health_ms = HEALTH_MS;
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		sv->watchdog = true;
		sv->health_ms = MAX(usec / 2000, (uint64_t)HEALTH_MIN_MS);
		log_debug("systemd watchdog: %llu ms; health check every %llu ms",
			  (unsigned long long)(usec / 1000), (unsigned long long)sv->health_ms);
	}
	sv->next_health_ms = clock_ms() + sv->health_ms;
}

static void child_answered(struct child *c)
{
	char name[32];

	c->ping_outstanding = false;
	if (c->hang_logged)
		log_info("%s answers health checks again", child_name(c, name, sizeof(name)));
	c->hang_logged = false;
}

/*
 * False when the child still owes the answer to the previous ping. One
 * ping at a time: the control sockets block, and a hung child's queue
 * must never fill up and stall the supervisor.
 */
static bool child_ping(struct supervisor *sv, struct child *c, uint64_t now)
{
	char name[32];

	if (c->ping_outstanding) {
		if (!c->hang_logged)
			log_warn("%s (pid %d) has not answered a health check for %llu ms%s",
				 child_name(c, name, sizeof(name)), (int)c->pid,
				 (unsigned long long)(now - c->ping_sent_ms),
				 sv->watchdog ? "; withholding the watchdog keep-alive" : "");
		c->hang_logged = true;
		return false;
	}
	if (ipc_send(c->ctl_fd, IPC_PING, c->index, NULL, 0, -1) == 0) {
		c->ping_outstanding = true;
		c->ping_sent_ms = now;
		return true;
	}
	/* Gone: SIGCHLD follows. A full control socket: a child that stopped reading. */
	if (errno == EPIPE || errno == ECONNRESET)
		return true;
	if (!c->hang_logged)
		log_warn("cannot send a health check to %s (pid %d): %s",
			 child_name(c, name, sizeof(name)), (int)c->pid, strerror(errno));
	c->hang_logged = true;
	return false;
}

/*
 * Every health period: ping every child that has a control socket, and
 * tell systemd we are alive only if each one answered the previous ping.
 * A hung role thus stops the keep-alives and systemd restarts the service.
 * Children that are down are the restart logic's business, not a hang.
 */
void health_tick(struct supervisor *sv)
{
	uint64_t now = clock_ms();
	bool healthy = true;

	if (sv->stopping || now < sv->next_health_ms)
		return;
	sv->next_health_ms = now + sv->health_ms;
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state != CHILD_DOWN && c->ctl_fd >= 0 && !child_ping(sv, c, now))
			healthy = false;
	}
	if (sv->watchdog && healthy)
		sd_notify(0, "WATCHDOG=1");
}

/* READY: the child serves. The daemon is ready once every child is. */
static void child_ready(struct supervisor *sv, struct child *c)
{
	char name[32];

	if (c->state != CHILD_STARTING)
		return;
	c->state = CHILD_RUNNING;
	c->ready_ms = clock_ms();
	if (c->role == ROLE_ROUTER)
		router_told_downs(sv);
	/* Its rings are taken over: the router and the listener may count on it. */
	if (c->role == ROLE_WORKER)
		atomic_store(&sv->env.shm.sup->workers[c->index].ready_epoch, c->epoch);
	if (c->restarts > 0)
		log_info("%s is back (pid %d)", child_name(c, name, sizeof(name)), (int)c->pid);
	if (c->role == ROLE_ROUTER && !sv->serving && !sv->stopping)
		start_serving(sv);
	if (!sv->ready_sent) {
		for (unsigned i = 0; i < sv->n_children; i++)
			if (sv->children[i].state != CHILD_RUNNING &&
			    child_wanted(sv, &sv->children[i]))
				return;
		sv->ready_sent = true;
		log_info("iotd %s ready: %u workers", IOTD_VERSION, sv->env.nworkers);
		sd_notify(0, "READY=1");
		notify_status(sv);
	}
}

/* --- what the children say ------------------------------------------------ */

#define CHILD_MSGS_PER_WAKE 16   /* read from one child's control socket per wake-up */

/* What a handler of a child's message is given. */
struct from_child {
	struct supervisor *sv;
	struct child *c;
};

static int on_ready(void *ctx, struct ipc_msg *m)
{
	struct from_child *f = ctx;

	child_ready(f->sv, f->c);
	return 0;
}

static int on_pong(void *ctx, struct ipc_msg *m)
{
	child_answered(((struct from_child *)ctx)->c);
	return 0;
}

static int on_worker_down_done(void *ctx, struct ipc_msg *m)
{
	worker_down_done(((struct from_child *)ctx)->sv, m);
	return 0;
}

static int on_worker_fault(void *ctx, struct ipc_msg *m)
{
	worker_fault(((struct from_child *)ctx)->sv, m);
	return 0;
}

/*
 * A child that cannot serve: the router cannot open its store (IPC_STORE_FAILED),
 * the key role cannot use its files (IPC_KEYS_FAILED: a key that does not
 * match its certificate, a file it cannot read or parse). It waits for our
 * answer before it exits, so that its reason is read before its exit is
 * seen. At start that stops the daemon; later, it is told to exit and
 * restarted with backoff like after any other exit, since what it lacks may
 * come back (a full file system freed, a disk remounted, the files fixed).
 */
static int on_cannot_serve(void *ctx, struct ipc_msg *m)
{
	struct from_child *f = ctx;
	int n = (int)strnlen(m->data, m->hdr.len);
	const char *who = role_name(f->c->role);

	if (!f->sv->ready_sent && !f->sv->stopping) {
		log_error("cannot start: %s: %.*s", who, n, (const char *)m->data);
		stop_failed_start(f->sv);
		return 0;
	}
	log_error("%s: %.*s", who, n, (const char *)m->data);
	if (ipc_send(f->c->ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1) < 0)
		log_warn("cannot answer the %s role: %s", who, strerror(errno));
	return 0;
}

static const struct ipc_handler from_listener_or_worker[IPC_TYPE_MAX] = {
	[IPC_READY] = { .fn = on_ready },
	[IPC_PONG] = { .fn = on_pong },
};

/* Only the router speaks of workers and of the store. */
static const struct ipc_handler from_router[IPC_TYPE_MAX] = {
	[IPC_READY] = { .fn = on_ready },
	[IPC_PONG] = { .fn = on_pong },
	[IPC_STORE_FAILED] = { .fn = on_cannot_serve, .max_len = IPC_MAX_PAYLOAD },
	[IPC_WORKER_DOWN_DONE] = { .fn = on_worker_down_done, IPC_LEN(sizeof(struct ipc_worker)) },
	[IPC_WORKER_FAULT] = { .fn = on_worker_fault, IPC_LEN(sizeof(struct ipc_worker)) },
};

/* The key role may say why it cannot start. */
static const struct ipc_handler from_keys[IPC_TYPE_MAX] = {
	[IPC_READY] = { .fn = on_ready },
	[IPC_PONG] = { .fn = on_pong },
	[IPC_KEYS_FAILED] = { .fn = on_cannot_serve, .max_len = 1024 },
};

/* A new process behind c's control socket: what it may say, and nothing logged yet. */
static void child_listen_to(struct child *c)
{
	const struct ipc_handler *table = c->role == ROLE_ROUTER ? from_router :
					  c->role == ROLE_KEYS ? from_keys : from_listener_or_worker;
	char name[32];

	ipc_dispatcher_init(&c->ctl_in, table, c->role == ROLE_WORKER ? c->index : IPC_PEER_ANY,
			    child_name(c, name, sizeof(name)));
}

void child_message(struct supervisor *sv, struct child *c)
{
	struct from_child f = { .sv = sv, .c = c };

	/* EOF: the child is exiting; SIGCHLD does the rest. */
	if (ipc_dispatch(c->ctl_fd, &c->ctl_in, &f, CHILD_MSGS_PER_WAKE) < 0)
		epoll_ctl(sv->epfd, EPOLL_CTL_DEL, c->ctl_fd, NULL);
}
