/*
 * supervisor_int.h - what the supervisor's files share: its state, the
 * child table included, and the functions one of them calls in another.
 * Private to daemon/supervisor.c and daemon/sup_*.c; each file's header
 * says what it owns.
 */
#ifndef IOTD_SUPERVISOR_INT_H
#define IOTD_SUPERVISOR_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "config.h"
#include "iotd.h"
#include "ipc.h"
#include "privsep.h"
#include "role.h"
#include "shm.h"
#include "store.h"

enum child_state { CHILD_DOWN, CHILD_STARTING, CHILD_RUNNING };

struct child {
	enum iotd_role role;
	unsigned index;
	pid_t pid;
	int ctl_fd;                  /* supervisor's end; -1 when down */
	struct ipc_dispatcher ctl_in; /* what it may say on ctl_fd (child_message) */
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
	struct child children[4 + IOTD_MAX_WORKERS];
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

/* The sockets of a set of configured addresses (an empty host gives two). */
struct listen_set {
	int fd[CONFIG_MAX_LISTEN * 2];
	int owner[CONFIG_MAX_LISTEN * 2];   /* index of the address in its configuration */
	bool kept[CONFIG_MAX_LISTEN * 2];   /* taken over from the running set, not bound anew */
	int n;
};

/* supervisor.c */
const char *child_name(const struct child *c, char *buf, size_t len);
const char *role_name(enum iotd_role role);
void notify_status(struct supervisor *sv);
void stop_failed_start(struct supervisor *sv);
void kill_children(struct supervisor *sv, int sig, bool router_too);

/* sup_listen.c */
int open_listeners(struct supervisor *sv);
bool listen_addr_equal(const struct listen_addr *a, const struct listen_addr *b);
int listen_prepare(struct supervisor *sv, const struct iotd_config *next,
		   struct listen_set *set, char *err, size_t errlen);
void listen_commit(struct supervisor *sv, const struct iotd_config *next,
		   const struct listen_set *set);
void start_serving(struct supervisor *sv);

/* sup_children.c */
bool child_wanted(const struct supervisor *sv, const struct child *c);
struct child *child_of_role(struct supervisor *sv, enum iotd_role role);
int child_spawn(struct supervisor *sv, struct child *c);
void child_schedule_restart(struct supervisor *sv, struct child *c);
void child_exited(struct supervisor *sv, struct child *c, int status);
struct child *child_by_pid(struct supervisor *sv, pid_t pid);
void reap_children(struct supervisor *sv);
void restart_due_children(struct supervisor *sv);
unsigned children_alive(const struct supervisor *sv);
unsigned feeders_alive(const struct supervisor *sv);
void child_message(struct supervisor *sv, struct child *c);
void health_setup(struct supervisor *sv);
void health_tick(struct supervisor *sv);
void log_auth_mode(const struct iotd_config *cfg);
void check_memory(struct supervisor *sv);

/* sup_reload.c */
void reload_config(struct supervisor *sv);

#endif
