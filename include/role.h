/*
 * role.h - what the supervisor hands each child role, and the shared
 * memory segment every role maps.
 *
 * The supervisor creates all of it before the first fork and keeps it for
 * the daemon's whole life: the memfd mapping with the rings and the
 * counters, one eventfd per consuming process, and the listener <-> worker
 * socketpairs. A restarted child therefore finds its rings, its wake-up
 * eventfd and its fd channel exactly where its predecessor left them.
 */
#ifndef IOTD_ROLE_H
#define IOTD_ROLE_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "iotd.h"
#include "shmring.h"

#define IOTD_SHM_MAGIC 0x696f7464u   /* "iotd" */

struct worker_shm {
	_Atomic uint32_t alive;        /* set by the worker when serving, cleared by the supervisor at its death */
	_Atomic uint64_t accepted;     /* client fds the worker has taken from its channel, ever */
	/*
	 * The listener balances on handed - released: a connection counts from
	 * the moment it is handed over until it is gone, with no gap and no
	 * double count in between.
	 */
	_Atomic uint64_t handed;       /* client fds the listener sent this worker, ever */
	_Atomic uint64_t released;     /* of those, gone (closed or refused); at a worker's death the supervisor sets it to accepted */
	_Atomic uint32_t capacity;     /* connections it can hold (open-file limit less a reserve) */
	_Atomic uint32_t epoch;        /* bumped by the supervisor before each (re)start */
	_Atomic uint64_t msgs_in;      /* PUBLISH packets received from clients */
	_Atomic uint64_t msgs_out;     /* PUBLISH packets sent to clients */
};

/*
 * Where the router was in each ring at the end of its last turn: read by a
 * restarted router. Written every turn without a system call, so a turn
 * that changed no state needs no store commit. Two slots: the one named
 * by seq is whole, the other may be half-written by a router that died.
 */
struct router_journal {
	_Atomic uint64_t seq;              /* turns written; slot seq & 1 is valid when > 0 */
	struct {
		uint64_t w2r_tail[IOTD_MAX_WORKERS]; /* applied up to here */
		uint64_t r2w_head[IOTD_MAX_WORKERS]; /* written up to here */
	} slot[2];
};

struct iotd_shm {
	uint32_t magic;
	uint32_t nworkers;
	uint64_t ring_size;            /* data bytes of each ring */
	_Atomic uint64_t connects;     /* total accepted connections (listener) */
	_Atomic uint32_t router_sessions; /* sessions the router knows */
	_Atomic uint32_t retained;     /* retained messages held */
	_Atomic uint32_t memory_pressure; /* set by the supervisor while over memory_limit */
	/*
	 * Bumped by the router whenever a change could alter where a topic's
	 * messages go (a subscription, a subscribed session connecting,
	 * closing, taken over). A worker's cached route (REC_ROUTE) holds
	 * while this is unchanged. Read on every publish, written rarely: on a
	 * cache line of its own, away from the counters above.
	 */
	_Alignas(64) _Atomic uint64_t route_gen;
	_Alignas(64) struct worker_shm workers[IOTD_MAX_WORKERS];
	uint64_t w2r_off[IOTD_MAX_WORKERS]; /* offset of ring worker i -> router */
	uint64_t r2w_off[IOTD_MAX_WORKERS]; /* offset of ring router -> worker i */
	struct router_journal journal;
};

/* Bytes of a mapping that holds the header and both rings of nworkers workers. */
size_t shm_size(unsigned nworkers, size_t ring_size);
/*
 * Lay out a zeroed mapping of shm_size() bytes: the header on its own
 * pages, then worker i's w2r and r2w rings, each initialised empty.
 */
void shm_layout(struct iotd_shm *shm, unsigned nworkers, size_t ring_size);

static inline struct shmring *shm_w2r(struct iotd_shm *s, unsigned i)
{
	return (struct shmring *)((char *)s + s->w2r_off[i]);
}

static inline struct shmring *shm_r2w(struct iotd_shm *s, unsigned i)
{
	return (struct shmring *)((char *)s + s->r2w_off[i]);
}

struct role_env {
	/*
	 * The configuration in force. In a child it is the child's own copy
	 * (fork copied the supervisor's), overwritten when IPC_CONFIG brings a
	 * reloaded one (role_take_config); roles keep pointing at it.
	 */
	struct iotd_config *cfg;
	struct iotd_shm *shm;
	unsigned nworkers;
	unsigned index;                /* worker index; 0 for other roles */
	unsigned epoch;                /* this worker's epoch (conn ids carry it) */
	int ctl_fd;                    /* SOCK_SEQPACKET to the supervisor */
	int router_efd;                /* eventfd that wakes the router */
	int worker_efd[IOTD_MAX_WORKERS]; /* eventfds that wake each worker */
	int chan_listener[IOTD_MAX_WORKERS]; /* listener's end of the fd channel to worker i */
	int chan_worker[IOTD_MAX_WORKERS];   /* worker i's end */
	int listen_fds[CONFIG_MAX_LISTEN * 2];
	int n_listen_fds;
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

/*
 * A child's side of IPC_CONFIG: check the payload is a whole struct
 * iotd_config and copy it over env->cfg. Returns 0, or -1 (logged) when
 * it is not; the running configuration is then kept.
 */
int role_take_config(struct role_env *env, const void *data, size_t len);

/* Wake a process sleeping on an eventfd (errors other than EAGAIN are fatal). */
void eventfd_wake(int efd);
/* Read and discard an eventfd's counter. */
void eventfd_drain(int efd);

#endif
