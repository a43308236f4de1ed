/*
 * supervisor.c - the main process of iotd: setup, signals, the loop,
 * systemd's status and stopping.
 *
 * Owns the supervisor's state (struct supervisor, supervisor_int.h): the
 * configuration in force, the shared-memory mapping with every ring, the
 * eventfds that wake the router and the workers, the listener <-> worker
 * fd channels, the event loop (signals, a timer, the children's control
 * sockets) and the conversation with systemd (READY, STATUS, STOPPING;
 * RELOADING is sup_reload.c's, WATCHDOG sup_children.c's). It never
 * touches a client byte. The listening sockets are sup_listen.c's, the
 * child table sup_children.c's, SIGHUP sup_reload.c's. See docs/arch.md
 * for the crash contract and each role's privileges.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "ipc.h"
#include "log.h"
#include "privsep.h"
#include "proctitle.h"
#include "store.h"
#include "supervisor.h"
#include "supervisor_int.h"

#define STOP_GRACE_MS 5000       /* graceful stop: then SIGKILL */

const char *role_name(enum iotd_role role)
{
	switch (role) {
	case ROLE_SUPERVISOR: return "supervisor";
	case ROLE_LISTENER: return "listener";
	case ROLE_ROUTER: return "router";
	case ROLE_WORKER: return "worker";
	case ROLE_AUTH: return "auth";
	case ROLE_KEYS: return "keys";
	default: return "?";
	}
}

/* "router", "worker 3": how logs name a child. */
const char *child_name(const struct child *c, char *buf, size_t len)
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

/* --- shared memory, eventfds, channels ---------------------------------- */

static int create_shm(struct supervisor *sv)
{
	size_t ring_size;

	/* A ring must carry a whole max-size PUBLISH with room to spare. */
	ring_size = round_pow2(MAX((size_t)1 << 20, 2 * ((size_t)sv->cfg->max_packet_size + 65536)));
	if (shm_create(&sv->shm, sv->env.nworkers, ring_size) < 0 ||
	    shm_map_role(&sv->env.shm, &sv->shm, ROLE_SUPERVISOR, 0) < 0)
		return -1;
	return 0;
}

/*
 * One of the auth role's or the key role's channels. Made even without
 * such a role: a reload may start one. A message may be as long as IPC_MAX_PAYLOAD: room
 * for more than one in flight (the kernel caps this at twice
 * net.core.wmem_max).
 */
static int auth_channel(int *auth_end, int *other_end)
{
	int sp[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
		return -1;
	*auth_end = sp[0];
	*other_end = sp[1];
	for (int k = 0; k < 2; k++)
		if (setsockopt(sp[k], SOL_SOCKET, SO_SNDBUF, &(int){ 4 * IPC_MAX_PAYLOAD },
			       sizeof(int)) < 0)
			return -1;
	return 0;
}

static int create_channels(struct supervisor *sv)
{
	int sp[2];

	sv->env.router_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (sv->env.router_efd < 0 || auth_channel(&sv->env.auth_router, &sv->env.router_auth) < 0)
		goto fail;
	for (unsigned i = 0; i < sv->env.nworkers; i++) {
		sv->env.worker_efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (sv->env.worker_efd[i] < 0)
			goto fail;
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
			goto fail;
		sv->env.chan_listener[i] = sp[0];
		sv->env.chan_worker[i] = sp[1];
		if (auth_channel(&sv->env.auth_chan[i], &sv->env.auth_chan_worker[i]) < 0 ||
		    auth_channel(&sv->env.keys_chan[i], &sv->env.keys_chan_worker[i]) < 0)
			goto fail;
	}
	return 0;
fail:
	log_error("cannot create channels: %s", strerror(errno));
	return -1;
}

void notify_status(struct supervisor *sv)
{
	uint64_t conns = 0, in = 0, out = 0;

	/* The workers' own claims: numbers to show, nothing to act on. */
	for (unsigned i = 0; i < sv->env.nworkers; i++) {
		const struct shm_worker *w = sv->env.shm.worker[i];
		uint64_t released = atomic_load(&w->released), accepted = atomic_load(&w->accepted);

		if (atomic_load(&sv->env.shm.sup->workers[i].up) && accepted >= released)
			conns += accepted - released;
		in += atomic_load(&w->msgs_in);
		out += atomic_load(&w->msgs_out);
	}
	sd_notifyf(0, "STATUS=%llu connections, %llu messages in, %llu out, %u workers",
		   (unsigned long long)conns, (unsigned long long)in,
		   (unsigned long long)out, sv->env.nworkers);
}

/* --- stopping ----------------------------------------------------------- */

/*
 * The daemon cannot start (the router cannot open its store, a socket
 * cannot listen): stop every child and exit 1 (supervisor_main), rather
 * than accept clients no router can route for.
 */
void stop_failed_start(struct supervisor *sv)
{
	sv->start_failed = true;
	sv->stopping = true;
	sv->router_told = true;      /* told below, with the others */
	sv->stop_deadline_ms = clock_ms() + STOP_GRACE_MS;
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state != CHILD_DOWN && c->ctl_fd >= 0)
			ipc_send(c->ctl_fd, IPC_SHUTDOWN, c->index, NULL, 0, -1);
	}
}

/*
 * The router stops last, once nothing can write into its rings any more:
 * it then applies (and stores) every record the workers left, so a
 * message a client got PUBACK/PUBCOMP for is never lost by a stop.
 */
static void shutdown_router_when_alone(struct supervisor *sv)
{
	if (sv->router_told || feeders_alive(sv) > 0)
		return;
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->role == ROLE_ROUTER && c->state != CHILD_DOWN && c->ctl_fd >= 0 &&
		    ipc_send(c->ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1) < 0)
			log_warn("cannot ask the router to stop: %s", strerror(errno));
	}
	sv->router_told = true;
}

static void stop_graceful(struct supervisor *sv)
{
	if (sv->stopping)
		return;
	sv->stopping = true;
	sv->stop_deadline_ms = clock_ms() + STOP_GRACE_MS;
	sd_notify(0, "STOPPING=1");
	log_info("stopping (SIGINT): closing clients");
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state != CHILD_DOWN && c->role != ROLE_ROUTER)
			ipc_send(c->ctl_fd, IPC_SHUTDOWN, c->index, NULL, 0, -1);
	}
	shutdown_router_when_alone(sv);
}

void kill_children(struct supervisor *sv, int sig, bool router_too)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].pid > 0 &&
		    (router_too || sv->children[i].role != ROLE_ROUTER))
			kill(sv->children[i].pid, sig);
}

/*
 * SIGTERM: no goodbyes to clients (no will fires), but nothing a client
 * was acknowledged is dropped: listener and workers die at once, then the
 * router drains their rings and exits. All bounded by a second; whatever
 * is still running then is killed.
 */
static void stop_immediate(struct supervisor *sv)
{
	uint64_t deadline = clock_ms() + 1000;

	sd_notify(0, "STOPPING=1");
	log_info("stopping (SIGTERM)");
	sv->stopping = true;
	kill_children(sv, SIGKILL, false);
	while (children_alive(sv) > 0) {
		int status;
		bool late = clock_ms() >= deadline;
		pid_t pid = waitpid(-1, &status, late ? 0 : WNOHANG);
		struct child *c;

		if (pid < 0)
			break;
		if (pid == 0) {
			/* Polled: the router is draining; this wait is bounded by the deadline. */
			nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
			if (clock_ms() >= deadline) {
				log_warn("router still running after a second; killing it");
				kill_children(sv, SIGKILL, true);
			}
			continue;
		}
		c = child_by_pid(sv, pid);
		if (c != NULL)
			child_exited(sv, c, status);
		shutdown_router_when_alone(sv);
	}
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
	/*
	 * A worker's epoch in shared memory is that of its current process,
	 * or of the next one while none has run: the router, forked first,
	 * takes records of that epoch only.
	 */
	for (unsigned i = 0; i < sv->env.nworkers; i++) {
		sv->children[n++] = (struct child){ .role = ROLE_WORKER, .index = i, .ctl_fd = -1 };
		atomic_store(&sv->env.shm.sup->workers[i].epoch, 1);
	}
	/* Forked only while the configuration asks for it (child_wanted). */
	sv->children[n++] = (struct child){ .role = ROLE_AUTH, .ctl_fd = -1 };
	sv->children[n++] = (struct child){ .role = ROLE_KEYS, .ctl_fd = -1 };
	sv->children[n++] = (struct child){ .role = ROLE_LISTENER, .ctl_fd = -1 };
	sv->n_children = n;
}

/* Arm the timer for the next restart or stop deadline (or 1 s for housekeeping). */
static void arm_timer(struct supervisor *sv)
{
	uint64_t next = clock_ms() + 1000, now = clock_ms();
	struct itimerspec its = { 0 };

	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state == CHILD_DOWN && sv->children[i].restart_at_ms)
			next = MIN(next, sv->children[i].restart_at_ms);
	if (sv->stopping)
		next = MIN(next, sv->stop_deadline_ms);
	else
		next = MIN(next, sv->next_health_ms);
	next = next > now ? next - now : 1;
	its.it_value.tv_sec = (time_t)(next / 1000);
	its.it_value.tv_nsec = (long)(next % 1000) * 1000000;
	timerfd_settime(sv->timerfd, 0, &its, NULL);
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
			shutdown_router_when_alone(sv);
			if (children_alive(sv) == 0)
				return;
			if (clock_ms() >= sv->stop_deadline_ms) {
				log_warn("children still running after %d ms; killing them", STOP_GRACE_MS);
				kill_children(sv, SIGKILL, true);
				sv->stop_deadline_ms = clock_ms() + 1000;
			}
			continue;
		}
		restart_due_children(sv);
		health_tick(sv);
		if (sv->ready_sent && clock_ms() - last_status >= 1000) {
			check_memory(sv);
			notify_status(sv);
			last_status = clock_ms();
		}
	}
}

/*
 * Each worker holds one fd per client: take the whole hard limit, which
 * the children inherit (workers publish what it leaves them as capacity).
 */
static void raise_fd_limit(struct supervisor *sv)
{
	struct rlimit rl;
	uint32_t cap = UINT32_MAX;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn("cannot raise the open-file limit: %s", strerror(errno));
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	/* A worker needs a few fds of its own besides its clients. */
	if (rl.rlim_cur != RLIM_INFINITY)
		cap = rl.rlim_cur > 64 ? (uint32_t)MIN(rl.rlim_cur - 64, UINT32_MAX) : 1;
	for (unsigned i = 0; i < sv->env.nworkers; i++)
		atomic_store(&sv->env.shm.sup->workers[i].capacity, cap);
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
	log_auth_mode(cfg);
	/* Everything that needs root is done before privsep_prepare(): children only drop. */
	if (setup_loop(&sv) < 0 || open_listeners(&sv) < 0 || create_shm(&sv) < 0 ||
	    create_channels(&sv) < 0 || privsep_prepare(&sv.ps, cfg->user) < 0)
		goto fail;
	if (store_memory_name(sv.store_name, sizeof(sv.store_name), getpid()) < 0) {
		log_error("cannot draw a name for the memory store: %s", strerror(errno));
		goto fail;
	}
	raise_fd_limit(&sv);
	if (privsep_limit_supervisor(&sv.ps) < 0)
		goto fail;
	health_setup(&sv);
	setup_children(&sv);
	/* The listener (last) starts once the router is ready: start_serving(). */
	for (unsigned i = 0; i + 1 < sv.n_children; i++)
		if (child_wanted(&sv, &sv.children[i]) && child_spawn(&sv, &sv.children[i]) < 0) {
			kill_children(&sv, SIGKILL, true);
			goto fail;
		}
	run_loop(&sv);
	if (sv.start_failed)
		goto fail;
	privsep_release(&sv.ps);
	log_info("stopped");
	return 0;
fail:
	privsep_release(&sv.ps);
	sd_notify(0, "STATUS=failed to start; see the log");
	return 1;
}
