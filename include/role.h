/*
 * role.h - what the supervisor hands each child role.
 *
 * The supervisor creates all of it before the first fork and keeps it for
 * the daemon's whole life: the shared-memory regions (shm.h), one eventfd
 * per consuming process, the listener <-> worker socketpairs and the
 * auth <-> worker socketpairs and the auth <-> router one, the keys <-> worker
 * socketpairs. A restarted child therefore finds its
 * rings, its wake-up eventfd and its channels exactly where its
 * predecessor left them.
 */
#ifndef IOTD_ROLE_H
#define IOTD_ROLE_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "iotd.h"
#include "shm.h"

struct role_env {
	/*
	 * The configuration in force. In a child it is the child's own copy
	 * (fork copied the supervisor's), overwritten when IPC_CONFIG brings a
	 * reloaded one (role_take_config); roles keep pointing at it.
	 */
	struct iotd_config *cfg;
	struct shm_map shm;            /* this process's mappings (shm_map_role) */
	unsigned nworkers;
	unsigned index;                /* worker index; 0 for other roles */
	unsigned epoch;                /* this worker's epoch (conn ids carry it) */
	int ctl_fd;                    /* SOCK_SEQPACKET to the supervisor */
	int router_efd;                /* eventfd that wakes the router */
	int worker_efd[IOTD_MAX_WORKERS]; /* eventfds that wake each worker */
	int chan_listener[IOTD_MAX_WORKERS]; /* listener's end of the fd channel to worker i */
	int chan_worker[IOTD_MAX_WORKERS];   /* worker i's end */
	int auth_chan[IOTD_MAX_WORKERS];     /* the auth role's end of its channel to worker i */
	int auth_chan_worker[IOTD_MAX_WORKERS]; /* worker i's end */
	int keys_chan[IOTD_MAX_WORKERS];     /* the key role's end of its channel to worker i */
	int keys_chan_worker[IOTD_MAX_WORKERS]; /* worker i's end */
	int auth_router;               /* the auth role's end of its channel to the router */
	int router_auth;               /* the router's end */
	int listen_fds[CONFIG_MAX_LISTEN * 2];
	int n_listen_fds;
	/* For each of listen_fds: what its connections speak, handed on with each of them. */
	struct listen_kind {
		int transport;             /* enum listen_transport */
		char path[LISTEN_PATH_MAX]; /* ws, wss: the path served; "": any */
		int tls;                   /* mqtts, wss: the certificate presented (TLS_CERTS_MAX) */
	} listen_kinds[CONFIG_MAX_LISTEN * 2];
};

/*
 * Role entry points. Each sets up its own loop and runs until told to stop
 * (IPC_SHUTDOWN or EOF on ctl_fd); the return value is the exit status.
 * The supervisor has already set the process title, the log role and the
 * parent-death signal, and closed the fds the role must not hold.
 */
int listener_main(struct role_env *env);
int router_main(struct role_env *env);
int worker_main(struct role_env *env);
int auth_main(struct role_env *env);
int keys_main(struct role_env *env);

/*
 * A child's side of IPC_CONFIG: check the payload is a whole struct
 * iotd_config and copy it over env->cfg. Returns 0, or -1 (logged) when
 * it is not; the running configuration is then kept.
 */
int role_take_config(struct role_env *env, const void *data, size_t len);

/*
 * What every child does with the supervisor's IPC_PING (answer IPC_PONG,
 * under the ping's peer) and IPC_LOG_SETTINGS (apply them), and the
 * child's own IPC_CONFIG handler (which calls role_take_config()): the
 * entries every child's handler table for the supervisor's socket holds
 * (ipc.h).
 */
struct ipc_msg;
int role_on_ping(void *ctx, struct ipc_msg *m);
int role_on_log_settings(void *ctx, struct ipc_msg *m);
#define ROLE_SUPERVISOR_ENTRIES(config_handler) \
	[IPC_PING] = { .fn = role_on_ping }, \
	[IPC_LOG_SETTINGS] = { .fn = role_on_log_settings, IPC_LEN(sizeof(struct log_settings)) }, \
	[IPC_CONFIG] = { .fn = (config_handler), IPC_LEN(sizeof(struct iotd_config)) }

/* Wake a process sleeping on an eventfd (errors other than EAGAIN are fatal). */
void eventfd_wake(int efd);
/* Read and discard an eventfd's counter. */
void eventfd_drain(int efd);

/*
 * The wall clock in ms since the epoch (CLOCK_REALTIME): what a message's
 * expiry deadline is measured in (rec.h), the same in every process and
 * across restarts.
 */
uint64_t wall_clock_ms(void);

/*
 * The monotonic clock in ms (CLOCK_MONOTONIC): what every timeout,
 * interval and deadline inside one process is measured in.
 */
uint64_t clock_ms(void);

/* Add fd to the epoll set epfd for events; its events carry ptr. 0, or -1 (errno). */
int epoll_watch(int epfd, int fd, uint32_t events, void *ptr);

#endif
