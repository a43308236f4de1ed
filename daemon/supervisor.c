/*
 * supervisor.c - the main process of iotd.
 *
 * Owns: the configuration, the listening sockets (its own or systemd's),
 * the shared-memory mapping with every ring, the eventfds that wake the
 * router and the workers, the listener <-> worker fd channels, the child
 * table with each child's health, and the conversation with systemd
 * (READY, STATUS, RELOADING, STOPPING, WATCHDOG). It never touches a
 * client byte. Children are forked (not exec'd) from it, so each inherits
 * the mapping and the fds, then leaves root when iotd was started as root
 * (privsep.c); a dead child is reaped, logged and forked again with
 * backoff, and finds its rings and channels where its predecessor left
 * them. See docs/arch.md for the crash contract and each role's privileges.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "ipc.h"
#include "keyhash.h"
#include "log.h"
#include "privsep.h"
#include "proctitle.h"
#include "role.h"
#include "router.h"
#include "store.h"
#include "supervisor.h"

#define RESTART_MIN_MS 10        /* first restart after a crash */
#define RESTART_MAX_MS 5000      /* backoff cap */
#define STABLE_MS 100            /* serving this long after READY resets the backoff */
#define STOP_GRACE_MS 5000       /* graceful stop: then SIGKILL */
#define HEALTH_MS 5000           /* health check period when systemd's watchdog is off */
#define HEALTH_MIN_MS 50

enum child_state { CHILD_DOWN, CHILD_STARTING, CHILD_RUNNING };

struct child {
	enum iotd_role role;
	unsigned index;
	pid_t pid;
	int ctl_fd;                  /* supervisor's end; -1 when down */
	enum child_state state;
	uint64_t started_ms;
	uint64_t ready_ms;           /* when it reported READY; 0 until then */
	uint64_t restart_at_ms;      /* 0: no restart scheduled */
	unsigned backoff_ms;
	unsigned restarts;
	uint32_t epoch;              /* a worker's: its current (or last) process's epoch */
	bool down_pending;           /* a dead worker: the router has not confirmed IPC_WORKER_DOWN */
	bool down_sent;              /* ... and the router in charge now was told */
	bool replacing;              /* asked to exit so a successor takes a new configuration */
	bool ping_outstanding;       /* IPC_PING sent, IPC_PONG not yet back */
	bool hang_logged;            /* "not answering" logged for this episode */
	uint64_t ping_sent_ms;
};

struct supervisor {
	struct iotd_config *cfg;
	const struct cli_args *args;
	struct role_env env;
	struct shm_set shm;          /* every shared-memory region, both descriptors */
	int epfd, sigfd, timerfd;
	struct child children[2 + IOTD_MAX_WORKERS];
	unsigned n_children;
	bool ready_sent;
	bool serving;                /* the router was ready once: sockets listen, the listener runs */
	bool start_failed;           /* stopping because the daemon could not start: exit 1 */
	bool stopping;
	bool router_told;            /* stopping: the router was asked to stop (it goes last) */
	uint64_t stop_deadline_ms;
	bool socket_activated;       /* systemd passed the listening sockets */
	/* For each of env.listen_fds: the index in cfg->listen it was bound for (-1: systemd's). */
	int listen_owner[CONFIG_MAX_LISTEN * 2];
	struct privsep ps;           /* the identity children take when started as root */
	bool watchdog;               /* systemd expects WATCHDOG=1 */
	uint64_t health_ms;          /* ping period: half the watchdog interval, or HEALTH_MS */
	uint64_t next_health_ms;
	char store_name[STORE_NAME_LEN]; /* the "memory" store's directory, drawn once at start */
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

/* The sockets of a set of configured addresses (an empty host gives two). */
struct listen_set {
	int fd[CONFIG_MAX_LISTEN * 2];
	int owner[CONFIG_MAX_LISTEN * 2];   /* index of the address in its configuration */
	bool kept[CONFIG_MAX_LISTEN * 2];   /* taken over from the running set, not bound anew */
	int n;
};

/* "127.0.0.1:1883", "[::1]:1883", "*:1883": a configured address, for log lines. */
static void format_listen_addr(const struct listen_addr *la, char *out, size_t len)
{
	bool v6 = la->family == AF_INET6;

	snprintf(out, len, "%s%s%s:%s", v6 ? "[" : "", la->host[0] ? la->host : "*",
		 v6 ? "]" : "", la->port);
}

static bool listen_addr_equal(const struct listen_addr *a, const struct listen_addr *b)
{
	return strcmp(a->host, b->host) == 0 && strcmp(a->port, b->port) == 0 &&
	       a->family == b->family;
}

/*
 * listen_now false: bound only, so that the address is ours (a clash is a
 * start-up error) while connections are still refused; start_serving()
 * makes it listen once the router is ready.
 */
static int bind_one(const struct addrinfo *ai, bool v6only, bool listen_now)
{
	int fd, one = 1, v6 = v6only ? 1 : 0;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ai->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof(v6));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || (listen_now && listen(fd, SOMAXCONN) < 0)) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/*
 * Bind one configured address, appending its sockets to set (owner: its
 * index). An empty host means every address: both families, IPv6 with
 * V6ONLY so the IPv4 socket can share the port. "[::]:port" alone is dual
 * stack (V6ONLY off) unless it fails because an IPv4 wildcard already
 * holds the port. Returns 0, or -1 with the reason in err; the sockets it
 * appended stay in set for the caller to close.
 */
static int bind_listen_addr(struct listen_set *set, const struct listen_addr *la, int owner,
			    bool listen_now, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res, *ai;
	const char *host = la->host[0] && strcmp(la->host, "*") ? la->host : NULL;
	char where[96];
	int rc, fd, bound = 0;

	format_listen_addr(la, where, sizeof(where));
	hints.ai_family = la->family;
	rc = getaddrinfo(host, la->port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve listen address %s: %s", where,
			 gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (set->n >= (int)ARRAY_SIZE(set->fd))
			break;
		fd = bind_one(ai, host == NULL, listen_now);
		if (fd < 0 && ai->ai_family == AF_INET6 && errno == EADDRINUSE)
			fd = bind_one(ai, true, listen_now);
		if (fd < 0) {
			int saved = errno;

			/* After a drop of privileges (User= in the unit), say why rather than just EACCES. */
			snprintf(err, errlen, "cannot listen on %s: %s%s", where, strerror(saved),
				 saved == EACCES && atoi(la->port) < 1024 && geteuid() != 0 ?
				 " (a port below 1024 needs root or CAP_NET_BIND_SERVICE, which the "
				 "supervisor does not have)" : "");
			freeaddrinfo(res);
			return -1;
		}
		set->fd[set->n] = fd;
		set->owner[set->n] = owner;
		set->kept[set->n] = false;
		set->n++;
		bound++;
	}
	freeaddrinfo(res);
	if (bound == 0) {
		snprintf(err, errlen, "cannot listen on %s: no usable address", where);
		return -1;
	}
	return 0;
}

/* Close the sockets of set that were bound for it (a reload that failed). */
static void listen_set_abandon(struct listen_set *set)
{
	for (int i = 0; i < set->n; i++)
		if (!set->kept[i])
			close(set->fd[i]);
	set->n = 0;
}

/* Make set the sockets the listener serves. */
static void listen_set_install(struct supervisor *sv, const struct listen_set *set)
{
	for (int i = 0; i < set->n; i++) {
		sv->env.listen_fds[i] = set->fd[i];
		sv->listen_owner[i] = set->owner[i];
	}
	sv->env.n_listen_fds = set->n;
}

/* "0.0.0.0:1883", "[::]:1883", "/run/x.sock": for log lines about a socket. */
static void format_sockname(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t slen = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";

	snprintf(out, len, "?");
	if (getsockname(fd, (struct sockaddr *)&ss, &slen) < 0)
		return;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else if (ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;

		snprintf(out, len, "%s", slen > offsetof(struct sockaddr_un, sun_path) &&
			 sun->sun_path[0] ? sun->sun_path : "(unnamed)");
	}
}

/*
 * What a passed socket carries, from its FileDescriptorName=. A socket
 * unit without the option passes its own unit name ("iotd.socket"), and
 * a launcher that names nothing passes "unknown": both mean plain MQTT.
 */
enum transport { TRANSPORT_MQTT, TRANSPORT_WEBSOCKET, TRANSPORT_UNKNOWN };

static enum transport transport_of(const char *name)
{
	size_t len = strlen(name);

	if (strcmp(name, "mqtt") == 0 || strcmp(name, "unknown") == 0 ||
	    (len > 7 && strcmp(name + len - 7, ".socket") == 0))
		return TRANSPORT_MQTT;
	if (strcmp(name, "websocket") == 0 || strcmp(name, "mqtt-ws") == 0)
		return TRANSPORT_WEBSOCKET;
	return TRANSPORT_UNKNOWN;
}

/* One passed socket: a listening stream socket for a transport we serve, made non-blocking. */
static int take_passed_socket(struct supervisor *sv, int fd, const char *name)
{
	char where[128];
	int flags;

	format_sockname(fd, where, sizeof(where));
	if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
		log_error("socket '%s' (fd %d, %s) passed by systemd is not a listening stream "
			  "socket", name, fd, where);
		return -1;
	}
	switch (transport_of(name)) {
	case TRANSPORT_MQTT:
		break;
	case TRANSPORT_WEBSOCKET:
		log_error("socket '%s' (fd %d, %s) is for MQTT over WebSocket, which this version "
			  "does not serve", name, fd, where);
		return -1;
	default:
		log_error("socket '%s' (fd %d, %s): unknown FileDescriptorName= (expected "
			  "\"mqtt\")", name, fd, where);
		return -1;
	}
	if (sv->env.n_listen_fds >= (int)ARRAY_SIZE(sv->env.listen_fds)) {
		log_error("too many sockets passed by systemd (at most %zu)",
			  ARRAY_SIZE(sv->env.listen_fds));
		return -1;
	}
	/* The listener accepts until EAGAIN: a blocking socket would stall it. */
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		log_error("socket '%s' (fd %d): cannot make it non-blocking: %s", name, fd,
			  strerror(errno));
		return -1;
	}
	sv->env.listen_fds[sv->env.n_listen_fds++] = fd;
	log_info("listening on %s (socket '%s' passed by systemd)", where, name);
	return 0;
}

/* Sockets from systemd (socket activation): 0 when none were passed. */
static int take_passed_sockets(struct supervisor *sv)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names), rc = 0;

	if (n < 0) {
		log_error("cannot read the sockets passed by systemd: %s", strerror(-n));
		return -1;
	}
	for (int i = 0; i < n && rc == 0; i++)
		rc = take_passed_socket(sv, SD_LISTEN_FDS_START + i,
					names && names[i] ? names[i] : "unknown");
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	if (rc < 0)
		return -1;
	sv->socket_activated = n > 0;
	return n;
}

static int open_listeners(struct supervisor *sv)
{
	struct listen_set set = { .n = 0 };
	char err[CONFIG_ERR_LEN], where[96];
	int n = take_passed_sockets(sv);

	for (int i = 0; i < sv->env.n_listen_fds; i++)
		sv->listen_owner[i] = -1;
	if (n != 0)
		return n < 0 ? -1 : 0;
	for (int i = 0; i < sv->cfg->n_listen; i++)
		if (bind_listen_addr(&set, &sv->cfg->listen[i], i, false, err, sizeof(err)) < 0) {
			log_error("%s", err);
			listen_set_abandon(&set);
			return -1;
		}
	listen_set_install(sv, &set);
	for (int i = 0; i < sv->cfg->n_listen; i++) {
		format_listen_addr(&sv->cfg->listen[i], where, sizeof(where));
		log_debug("bound %s (to listen once the router is ready)", where);
	}
	return 0;
}

/*
 * The sockets for the addresses of `next` (a reload): an address the
 * running configuration has keeps its sockets, so accepting on it never
 * stops; a new one is bound here, by the supervisor, which is still root
 * when iotd was started as root. Returns 0, or -1 with the reason in err,
 * having closed what it bound: the running sockets are untouched.
 */
static int listen_prepare(struct supervisor *sv, const struct iotd_config *next,
			  struct listen_set *set, char *err, size_t errlen)
{
	char where[96];

	set->n = 0;
	for (int i = 0; i < next->n_listen; i++) {
		const struct listen_addr *la = &next->listen[i];
		int old = -1;

		for (int j = 0; j < i; j++)
			if (listen_addr_equal(&next->listen[j], la)) {
				format_listen_addr(la, where, sizeof(where));
				snprintf(err, errlen, "server.listen_addresses: %s is listed twice", where);
				goto fail;
			}
		for (int j = 0; j < sv->cfg->n_listen && old < 0; j++)
			if (listen_addr_equal(&sv->cfg->listen[j], la))
				old = j;
		if (old < 0) {
			if (bind_listen_addr(set, la, i, sv->serving, err, errlen) < 0)
				goto fail;
			continue;
		}
		for (int k = 0; k < sv->env.n_listen_fds; k++)
			if (sv->listen_owner[k] == old && set->n < (int)ARRAY_SIZE(set->fd)) {
				set->fd[set->n] = sv->env.listen_fds[k];
				set->owner[set->n] = i;
				set->kept[set->n] = true;
				set->n++;
			}
	}
	return 0;
fail:
	listen_set_abandon(set);
	return -1;
}

/*
 * Serve `set` (from listen_prepare) from now on: the sockets of addresses
 * no longer configured are closed here; the old listener keeps its copies
 * until it exits, and its successor inherits exactly `set`.
 */
static void listen_commit(struct supervisor *sv, const struct iotd_config *next,
			  const struct listen_set *set)
{
	char where[96];

	for (int k = 0; k < sv->env.n_listen_fds; k++) {
		bool kept = false;

		for (int i = 0; i < set->n && !kept; i++)
			kept = set->kept[i] && set->fd[i] == sv->env.listen_fds[k];
		if (kept)
			continue;
		format_sockname(sv->env.listen_fds[k], where, sizeof(where));
		log_info("no longer listening on %s", where);
		close(sv->env.listen_fds[k]);
	}
	listen_set_install(sv, set);
	for (int i = 0; i < next->n_listen; i++) {
		bool bound = false;

		for (int k = 0; k < set->n; k++)
			bound |= set->owner[k] == i && !set->kept[k];
		format_listen_addr(&next->listen[i], where, sizeof(where));
		if (bound)
			log_info("listening on %s", where);
	}
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
		/* Only the router wakes workers; a worker sleeps on its own. */
		if (c->role != ROLE_ROUTER && (c->role != ROLE_WORKER || i != c->index))
			close_if(&env->worker_efd[i]);
	}
	if (c->role == ROLE_LISTENER)
		close_if(&env->router_efd);
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
	 * they acknowledged) and exits, within a bounded time (router.c).
	 */
	prctl(PR_SET_PDEATHSIG, c->role == ROLE_ROUTER ? 0 : SIGKILL);
	if (getppid() != parent)
		_exit(0);
	ipc_set_process();
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
	if (privsep_enter(&sv->ps, c->role, parent) < 0)
		_exit(1);
	if (c->role == ROLE_ROUTER)
		router_set_memory_store(sv->store_name, c->restarts > 0);
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
	c->pid = pid;
	c->state = CHILD_STARTING;
	c->started_ms = now_ms();
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

static struct child *child_by_pid(struct supervisor *sv, pid_t pid)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].pid == pid && sv->children[i].state != CHILD_DOWN)
			return &sv->children[i];
	return NULL;
}

static struct child *router_child(struct supervisor *sv)
{
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].role == ROLE_ROUTER)
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
	struct child *rc = router_child(sv);
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
 * its epoch in *epoch; NULL for a message of the wrong size or index.
 */
static struct child *worker_named(struct supervisor *sv, const void *data, ssize_t n,
				  uint32_t *epoch)
{
	struct ipc_worker msg;

	if (n != (ssize_t)sizeof(msg))
		return NULL;
	memcpy(&msg, data, sizeof(msg));
	*epoch = msg.epoch;
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].role == ROLE_WORKER && sv->children[i].index == msg.index)
			return &sv->children[i];
	return NULL;
}

/* IPC_WORKER_DOWN_DONE: the successor may start. */
static void worker_down_done(struct supervisor *sv, const void *data, ssize_t n)
{
	uint32_t epoch;
	struct child *c = worker_named(sv, data, n, &epoch);

	if (c != NULL && c->down_pending && epoch == c->epoch + 1)
		c->down_pending = c->down_sent = false;
}

/* IPC_WORKER_FAULT: the router found a worker's rings impossible. */
static void worker_fault(struct supervisor *sv, const void *data, ssize_t n)
{
	uint32_t epoch;
	struct child *c = worker_named(sv, data, n, &epoch);

	if (c != NULL && c->epoch == epoch && c->state != CHILD_DOWN && c->pid > 0) {
		log_error("worker %u broke its shared memory: killing it", c->index);
		kill(c->pid, SIGKILL);
	}
}

static void child_schedule_restart(struct supervisor *sv, struct child *c)
{
	uint64_t now = now_ms();
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

static void child_exited(struct supervisor *sv, struct child *c, int status)
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
	if (c->replacing && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		c->replacing = false;
		c->restart_at_ms = now_ms();
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

/* Listener and workers: the processes that write into the router's rings. */
static unsigned feeders_alive(const struct supervisor *sv)
{
	unsigned n = 0;

	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].role != ROLE_ROUTER)
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
	else
		next = MIN(next, sv->next_health_ms);
	next = next > now ? next - now : 1;
	its.it_value.tv_sec = (time_t)(next / 1000);
	its.it_value.tv_nsec = (long)(next % 1000) * 1000000;
	timerfd_settime(sv->timerfd, 0, &its, NULL);
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
static void check_memory(struct supervisor *sv)
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

static void notify_status(struct supervisor *sv)
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

/* --- health checks and systemd's watchdog -------------------------------- */

static void health_setup(struct supervisor *sv)
{
	uint64_t usec = 0;

	sv->health_ms = HEALTH_MS;
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		sv->watchdog = true;
		sv->health_ms = MAX(usec / 2000, (uint64_t)HEALTH_MIN_MS);
		log_debug("systemd watchdog: %llu ms; health check every %llu ms",
			  (unsigned long long)(usec / 1000), (unsigned long long)sv->health_ms);
	}
	sv->next_health_ms = now_ms() + sv->health_ms;
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
static void health_tick(struct supervisor *sv)
{
	uint64_t now = now_ms();
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

/*
 * The daemon cannot start (the router cannot open its store, a socket
 * cannot listen): stop every child and exit 1 (supervisor_main), rather
 * than accept clients no router can route for.
 */
static void stop_failed_start(struct supervisor *sv)
{
	sv->start_failed = true;
	sv->stopping = true;
	sv->router_told = true;      /* told below, with the others */
	sv->stop_deadline_ms = now_ms() + STOP_GRACE_MS;
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].ctl_fd >= 0)
			ipc_send(sv->children[i].ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1);
}

/*
 * The router is ready for the first time: only now do our sockets listen
 * (until then a client is refused, not left waiting for a CONNACK) and
 * the listener start. systemd's sockets listen from the start: their
 * connections wait in the backlog.
 */
static void start_serving(struct supervisor *sv)
{
	struct child *listener = &sv->children[sv->n_children - 1];   /* setup_children() */
	char where[128];

	for (int i = 0; i < sv->env.n_listen_fds; i++) {
		if (sv->listen_owner[i] < 0)
			continue;
		format_sockname(sv->env.listen_fds[i], where, sizeof(where));
		if (listen(sv->env.listen_fds[i], SOMAXCONN) < 0) {
			log_error("cannot listen on %s: %s", where, strerror(errno));
			stop_failed_start(sv);
			return;
		}
		log_info("listening on %s", where);
	}
	sv->serving = true;
	if (child_spawn(sv, listener) < 0)
		child_schedule_restart(sv, listener);
}

/*
 * The router cannot open its store (it waits for our answer before it
 * exits). At start that stops the daemon; later, the router is restarted
 * with backoff like after any other exit, since the store may come back
 * (a full file system freed, a disk remounted).
 */
static void router_cannot_open_store(struct supervisor *sv, struct child *c, const char *why,
				    size_t len)
{
	int n = (int)strnlen(why, len);

	if (!sv->ready_sent && !sv->stopping) {
		log_error("cannot start: router: %.*s", n, why);
		stop_failed_start(sv);
		return;
	}
	log_error("router: %.*s", n, why);
	if (ipc_send(c->ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1) < 0)
		log_warn("cannot answer the router: %s", strerror(errno));
}

static void child_message(struct supervisor *sv, struct child *c)
{
	struct ipc_hdr hdr;
	char buf[IPC_MAX_PAYLOAD];
	int fd = -1;
	ssize_t n = ipc_recv(c->ctl_fd, &hdr, buf, sizeof(buf), &fd);

	if (fd >= 0)
		close(fd);
	/* Nothing to read after all: the channel is fine, keep listening to it. */
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0 || hdr.type == 0) {
		/* EOF: the child is exiting; SIGCHLD does the rest. */
		epoll_ctl(sv->epfd, EPOLL_CTL_DEL, c->ctl_fd, NULL);
		return;
	}
	if (hdr.type == IPC_PONG) {
		child_answered(c);
		return;
	}
	if (hdr.type == IPC_STORE_FAILED && c->role == ROLE_ROUTER) {
		router_cannot_open_store(sv, c, buf, (size_t)n);
		return;
	}
	/* Only the router speaks of workers; from anyone else it is ignored. */
	if (hdr.type == IPC_WORKER_DOWN_DONE && c->role == ROLE_ROUTER) {
		worker_down_done(sv, buf, n);
		return;
	}
	if (hdr.type == IPC_WORKER_FAULT && c->role == ROLE_ROUTER) {
		worker_fault(sv, buf, n);
		return;
	}
	if (hdr.type != IPC_READY || c->state != CHILD_STARTING)
		return;
	char name[32];

	c->state = CHILD_RUNNING;
	c->ready_ms = now_ms();
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
			if (sv->children[i].state != CHILD_RUNNING)
				return;
		sv->ready_sent = true;
		log_info("iotd %s ready: %u workers", IOTD_VERSION, sv->env.nworkers);
		sd_notify(0, "READY=1");
		notify_status(sv);
	}
}

/* --- stopping ----------------------------------------------------------- */

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
	sv->stop_deadline_ms = now_ms() + STOP_GRACE_MS;
	sd_notify(0, "STOPPING=1");
	log_info("stopping (SIGINT): closing clients");
	for (unsigned i = 0; i < sv->n_children; i++)
		if (sv->children[i].state != CHILD_DOWN && sv->children[i].role != ROLE_ROUTER)
			ipc_send(sv->children[i].ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1);
	shutdown_router_when_alone(sv);
}

static void kill_children(struct supervisor *sv, int sig, bool router_too)
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
	uint64_t deadline = now_ms() + 1000;

	sd_notify(0, "STOPPING=1");
	log_info("stopping (SIGTERM)");
	sv->stopping = true;
	kill_children(sv, SIGKILL, false);
	while (children_alive(sv) > 0) {
		int status;
		bool late = now_ms() >= deadline;
		pid_t pid = waitpid(-1, &status, late ? 0 : WNOHANG);
		struct child *c;

		if (pid < 0)
			break;
		if (pid == 0) {
			/* Polled: the router is draining; this wait is bounded by the deadline. */
			nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
			if (now_ms() >= deadline) {
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

/* --- reload ---------------------------------------------------------------- */

/*
 * How a changed key reaches the running daemon. APPLY_LOG: every process
 * takes the new logging settings at once (IPC_LOG_SETTINGS). APPLY_LIVE:
 * a limit; every child gets the whole new configuration (IPC_CONFIG) and
 * reads it at its next use of the limit, so new packets and new
 * connections follow it while live connections stay. APPLY_RESTART: it
 * sizes the processes, their identity or the store that the running state
 * lives in; it takes effect at the next start of iotd. Listen addresses
 * have their own path (listen_prepare, listen_commit).
 */
enum apply { APPLY_LOG, APPLY_LIVE, APPLY_RESTART };

struct cfg_field {
	const char *name;
	size_t off, size;
	bool is_string;
	enum apply how;
};

#define CF(name, f, str, how) \
	{ name, offsetof(struct iotd_config, f), sizeof(((struct iotd_config *)0)->f), str, how }

static const struct cfg_field cfg_fields[] = {
	CF("server.workers", workers, false, APPLY_RESTART),
	CF("server.max_connections", max_connections, false, APPLY_LIVE),
	CF("server.max_sessions", max_sessions, false, APPLY_LIVE),
	CF("server.max_subscriptions_per_session", max_subscriptions_per_session, false, APPLY_LIVE),
	CF("server.max_connections_per_address", max_connections_per_address, false, APPLY_LIVE),
	CF("server.max_connect_rate_per_address", max_connect_rate_per_address, false, APPLY_LIVE),
	CF("server.placement_slack", placement_slack, false, APPLY_LIVE),
	CF("server.session_timeout_secs", session_timeout_secs, false, APPLY_LIVE),
	CF("server.keep_alive_timeout_secs", keep_alive_timeout_secs, false, APPLY_LIVE),
	CF("server.max_keepalive", max_keepalive, false, APPLY_LIVE),
	CF("server.connect_timeout", connect_timeout, false, APPLY_LIVE),
	CF("server.max_packet_size", max_packet_size, false, APPLY_LIVE),
	CF("server.max_connect_size", max_connect_size, false, APPLY_LIVE),
	CF("server.max_client_id_length", max_client_id_length, false, APPLY_LIVE),
	CF("server.retained_message_limit", retained_message_limit, false, APPLY_LIVE),
	CF("server.retained_bytes_limit", retained_bytes_limit, false, APPLY_LIVE),
	CF("server.memory_limit", memory_limit, false, APPLY_LIVE),
	CF("server.max_inflight", max_inflight, false, APPLY_LIVE),
	CF("server.max_queued_messages", max_queued_messages, false, APPLY_LIVE),
	CF("server.max_queued_bytes", max_queued_bytes, false, APPLY_LIVE),
	CF("server.max_queued_bytes_total", max_queued_bytes_total, false, APPLY_LIVE),
	CF("server.max_inflight_bytes", max_inflight_bytes, false, APPLY_LIVE),
	CF("server.max_output_bytes", max_output_bytes, false, APPLY_LIVE),
	CF("server.max_router_backlog_bytes", max_router_backlog_bytes, false, APPLY_LIVE),
	CF("server.queue_qos0_messages", queue_qos0_messages, false, APPLY_LIVE),
	CF("server.max_topic_levels", max_topic_levels, false, APPLY_LIVE),
	CF("server.max_topic_length", max_topic_length, false, APPLY_LIVE),
	CF("server.user", user, true, APPLY_RESTART),
	CF("auth.enabled", auth_enabled, false, APPLY_RESTART),
	CF("auth.backend", auth_backend, true, APPLY_RESTART),
	CF("storage.backend", storage_backend, true, APPLY_RESTART),
	CF("storage.path", storage_path, true, APPLY_RESTART),
	CF("logging.level", log_level, false, APPLY_LOG),
	CF("logging.format", log_format, false, APPLY_LOG),
};

static bool field_differs(const struct cfg_field *f, const struct iotd_config *a,
			  const struct iotd_config *b)
{
	const char *pa = (const char *)a + f->off, *pb = (const char *)b + f->off;

	if (f->is_string)
		return strncmp(pa, pb, f->size) != 0;
	return memcmp(pa, pb, f->size) != 0;
}

static bool listen_differs(const struct iotd_config *a, const struct iotd_config *b)
{
	if (a->n_listen != b->n_listen)
		return true;
	for (int i = 0; i < a->n_listen; i++)
		if (!listen_addr_equal(&a->listen[i], &b->listen[i]))
			return true;
	return false;
}

/*
 * True when `next` differs from the running configuration in a key the
 * table above does not know (one added to config.h later): such a change
 * is reported as waiting for a restart rather than silently ignored.
 */
static bool other_fields_differ(const struct iotd_config *cur, const struct iotd_config *next)
{
	struct iotd_config a = *cur, b = *next;

	for (size_t i = 0; i < ARRAY_SIZE(cfg_fields); i++)
		memcpy((char *)&b + cfg_fields[i].off, (char *)&a + cfg_fields[i].off,
		       cfg_fields[i].size);
	memcpy(b.listen, a.listen, sizeof(a.listen));
	b.n_listen = a.n_listen;
	memcpy(b.path, a.path, sizeof(a.path));
	return memcmp(&a, &b, sizeof(a)) != 0;
}

/* What main() refuses at start is refused at reload too. */
static int config_refused(const struct iotd_config *cfg, char *err, size_t len)
{
	if (cfg->auth_enabled) {
		snprintf(err, len, "%s: auth: enabled: authentication is not available in this "
			 "version", cfg->path[0] ? cfg->path : "(environment)");
		return -1;
	}
	return 0;
}

/*
 * The largest max_packet_size the rings made at start can carry: create_shm()
 * would have made rings of the same size for it.
 */
static long ring_packet_max(const struct supervisor *sv)
{
	return (long)(sv->shm.ring_size / 2) - 65536;
}

static void append_name(char *list, size_t len, const char *name)
{
	size_t used = strlen(list);

	snprintf(list + used, len - used, "%s%s", used ? ", " : "", name);
}

static void broadcast(struct supervisor *sv, uint32_t type, const void *data, size_t len)
{
	char name[32];

	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state == CHILD_DOWN || c->ctl_fd < 0)
			continue;
		if (ipc_send(c->ctl_fd, type, c->index, data, len, -1) < 0)
			log_warn("cannot send the new settings to %s: %s",
				 child_name(c, name, sizeof(name)), strerror(errno));
	}
}

/* Ask the listener to exit; child_exited() forks its successor at once. */
static void replace_listener(struct supervisor *sv)
{
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->role != ROLE_LISTENER || c->state == CHILD_DOWN)
			continue;
		if (ipc_send(c->ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1) == 0)
			c->replacing = true;
		else
			log_warn("cannot ask the listener to restart: %s", strerror(errno));
	}
}

/*
 * Take from `next` every key that can change while clients stay
 * connected; name the others. The running configuration only ever holds
 * values that are in force: children forked later (a restart after a
 * crash) inherit it. `set`: the sockets for next's listen addresses when
 * they changed (listen_prepare), else NULL.
 */
static void apply_config(struct supervisor *sv, const struct iotd_config *next,
			 const struct listen_set *set)
{
	char applied[512] = "", pending[512] = "", note[160];
	bool logging = false, live = false;

	for (size_t i = 0; i < ARRAY_SIZE(cfg_fields); i++) {
		const struct cfg_field *f = &cfg_fields[i];

		if (!field_differs(f, sv->cfg, next))
			continue;
		if (f->how == APPLY_RESTART) {
			append_name(pending, sizeof(pending), f->name);
			continue;
		}
		/* A whole packet must fit in a ring record, and the rings keep their size. */
		if (f->off == offsetof(struct iotd_config, max_packet_size) &&
		    next->max_packet_size > ring_packet_max(sv)) {
			snprintf(note, sizeof(note), "%s (above %ld, the most the shared-memory rings "
				 "made at start carry)", f->name, ring_packet_max(sv));
			append_name(pending, sizeof(pending), note);
			continue;
		}
		memcpy((char *)sv->cfg + f->off, (const char *)next + f->off, f->size);
		append_name(applied, sizeof(applied), f->name);
		logging |= f->how == APPLY_LOG;
		live |= f->how == APPLY_LIVE;
	}
	if (set != NULL) {
		listen_commit(sv, next, set);
		memcpy(sv->cfg->listen, next->listen, sizeof(next->listen));
		sv->cfg->n_listen = next->n_listen;
		append_name(applied, sizeof(applied), "server.listen_addresses");
	} else if (listen_differs(sv->cfg, next)) {
		append_name(pending, sizeof(pending),
			    "server.listen_addresses (ignored: systemd passes the sockets)");
	}
	if (other_fields_differ(sv->cfg, next))
		append_name(pending, sizeof(pending), "other keys");
	if (logging) {
		struct log_settings ls;

		log_set_level(sv->cfg->log_level);
		log_set_format(sv->cfg->log_format);
		log_get_settings(&ls);
		broadcast(sv, IPC_LOG_SETTINGS, &ls, sizeof(ls));
	}
	if (live)
		broadcast(sv, IPC_CONFIG, sv->cfg, sizeof(*sv->cfg));
	if (set != NULL)
		replace_listener(sv);
	if (!applied[0] && !pending[0])
		log_info("configuration reloaded: nothing changed");
	else
		log_info("configuration reloaded: applied: %s; after a restart of iotd: %s",
			 applied[0] ? applied : "nothing", pending[0] ? pending : "nothing");
}

/*
 * SIGHUP. A transaction: the new file is parsed and checked whole, and
 * new listen addresses are bound; if anything fails, nothing changes
 * (never a fall-back to defaults, never half a configuration).
 */
static void reload_config(struct supervisor *sv)
{
	struct iotd_config next;
	struct listen_set set = { .n = 0 };
	struct timespec ts;
	char err[CONFIG_ERR_LEN];
	bool rebind;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
	if (config_load(&next, sv->args, environ, err, sizeof(err)) < 0 ||
	    config_refused(&next, err, sizeof(err)) < 0)
		goto fail;
	rebind = !sv->socket_activated && listen_differs(sv->cfg, &next);
	if (rebind && listen_prepare(sv, &next, &set, err, sizeof(err)) < 0)
		goto fail;
	apply_config(sv, &next, rebind ? &set : NULL);
	goto done;
fail:
	log_error("reload failed, keeping the running configuration: %s", err);
done:
	sd_notify(0, "READY=1");
	notify_status(sv);
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
	/*
	 * A worker's epoch in shared memory is that of its current process,
	 * or of the next one while none has run: the router, forked first,
	 * takes records of that epoch only.
	 */
	for (unsigned i = 0; i < sv->env.nworkers; i++) {
		sv->children[n++] = (struct child){ .role = ROLE_WORKER, .index = i, .ctl_fd = -1 };
		atomic_store(&sv->env.shm.sup->workers[i].epoch, 1);
	}
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
			shutdown_router_when_alone(sv);
			if (children_alive(sv) == 0)
				return;
			if (now_ms() >= sv->stop_deadline_ms) {
				log_warn("children still running after %d ms; killing them", STOP_GRACE_MS);
				kill_children(sv, SIGKILL, true);
				sv->stop_deadline_ms = now_ms() + 1000;
			}
			continue;
		}
		restart_due_children(sv);
		health_tick(sv);
		if (sv->ready_sent && now_ms() - last_status >= 1000) {
			check_memory(sv);
			notify_status(sv);
			last_status = now_ms();
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

	ipc_set_process();
	sv.env.cfg = cfg;
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	sv.env.nworkers = cfg->workers > 0 ? (unsigned)cfg->workers : (unsigned)MAX(ncpu, 1);
	if (sv.env.nworkers > IOTD_MAX_WORKERS)
		sv.env.nworkers = IOTD_MAX_WORKERS;
	proctitle_set("iotd: supervisor");
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
		if (child_spawn(&sv, &sv.children[i]) < 0) {
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
