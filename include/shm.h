/*
 * shm.h - the daemon's shared memory: one region per writer.
 *
 * The supervisor creates every region (a memfd each) before the first
 * fork and keeps it for the daemon's life, so a restarted child finds its
 * rings and counters where its predecessor left them. Each region is
 * written by exactly one role; every other process that needs it maps it
 * from a descriptor opened read-only, so that not even mprotect() can make
 * it writable there. After fork, a child drops the supervisor's mappings,
 * maps only the regions its role needs (shm_map_role) and closes every
 * region descriptor. Sizes and offsets are never read from a region: each
 * process computes them from nworkers and ring_size in its own memory.
 *
 *   region             written by   mapped read-only by
 *   sup                supervisor   every child
 *   listener           listener     -
 *   router             router       workers (route_gen), supervisor
 *   journal            router       -
 *   worker[i]          worker i     router, listener, supervisor
 *   router_ring[i]     router       worker i
 *
 * A ring's two halves live in its two ends' regions (shmring.h):
 *   w2r[i]: head, p_wait, data in worker[i]; tail, c_sleep in router_ring[i]
 *   r2w[i]: head, p_wait, data in router_ring[i]; tail, c_sleep in worker[i]
 */
#ifndef IOTD_SHM_H
#define IOTD_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "iotd.h"
#include "shmring.h"

#define SHM_HDR_BYTES 4096           /* a ring region's header page; its data follows */

/* What the supervisor says of worker i. */
struct shm_worker_state {
	_Atomic uint32_t epoch;        /* epoch of worker i's current (or next) process */
	_Atomic uint32_t up;           /* 1 from its fork to its death */
	/*
	 * The epoch of the last process that reported READY: set up, its rings
	 * taken over (shmring_producer_attach_at_tail), serving. Written by the
	 * supervisor, so no dead worker can claim it for its successor.
	 */
	_Atomic uint32_t ready_epoch;
	_Atomic uint32_t capacity;     /* connections it can hold (open-file limit less a reserve) */
};

/* Written by the supervisor only. */
struct shm_sup {
	_Atomic uint32_t memory_pressure; /* set while over memory_limit */
	_Alignas(64) struct shm_worker_state workers[IOTD_MAX_WORKERS];
};

/* Written by the listener only; survives the listener. */
struct shm_listener {
	_Atomic uint64_t connects;     /* accepted connections, ever */
	_Atomic uint64_t handed[IOTD_MAX_WORKERS]; /* client fds sent to worker i, ever */
	/*
	 * handed[i] when the listener first saw worker i's epoch base_epoch[i]:
	 * what the worker of that epoch says it took and released counts from
	 * there (listener.c, worker_load).
	 */
	_Atomic uint64_t base[IOTD_MAX_WORKERS];
	_Atomic uint32_t base_epoch[IOTD_MAX_WORKERS];
};

/*
 * Written by worker i only: the header page of its region. Each process
 * starts its counters from 0, whatever its predecessor left. Read by others
 * as claims, never as sizes.
 */
struct shm_worker {
	_Atomic uint64_t accepted;     /* client fds this process took from the channel */
	_Atomic uint64_t released;     /* of those, gone (closed or refused) */
	_Atomic uint64_t msgs_in;      /* PUBLISH packets received from clients */
	_Atomic uint64_t msgs_out;     /* PUBLISH packets sent to clients */
	_Alignas(64) struct shmring_pctl w2r;
	struct shmring_cctl r2w;
};

/* Written by the router only: the header page of router_ring[i]. */
struct shm_router_ring {
	struct shmring_cctl w2r;
	struct shmring_pctl r2w;
};

/* Written by the router only. */
struct shm_router {
	/*
	 * Bumped whenever a change could alter where a topic's messages go (a
	 * subscription, a subscribed session connecting, closing, taken over).
	 * A worker's cached route (REC_ROUTE) holds while this is unchanged.
	 */
	_Atomic uint64_t route_gen;
	_Alignas(64) _Atomic uint32_t sessions; /* sessions the router knows */
	_Atomic uint32_t retained;     /* retained messages held */
};

/*
 * Where the router was in each ring at the end of its last turn, for a
 * restarted router: written every turn without a system call, so a turn
 * that changed no state needs no store commit. Two slots: the one named by
 * seq is whole, the other may be half-written by a router that died.
 */
struct router_journal {
	_Atomic uint64_t seq;              /* turns written; slot seq & 1 is valid when > 0 */
	struct {
		uint64_t w2r_tail[IOTD_MAX_WORKERS]; /* applied up to here */
		uint64_t r2w_head[IOTD_MAX_WORKERS]; /* written up to here */
	} slot[2];
	/*
	 * The record in hand: written before each record is handled, cleared
	 * after. A router that finds it set died handling that record; one
	 * that died on the same record ROUTER_POISON_CRASHES times in a row
	 * sets it aside instead of handling it again (router_proc.c).
	 */
	_Alignas(64) struct router_record_ref {
		uint64_t ring;                 /* worker index + 1; 0: none */
		uint64_t pos;                  /* its position in w2r[ring - 1] */
	} in_hand, suspect;
	uint32_t suspect_crashes;          /* deaths in a row with the suspect in hand */
};

enum {
	SHM_SUP,
	SHM_LISTENER,
	SHM_ROUTER,
	SHM_JOURNAL,
	SHM_WORKER0,                                     /* + i */
	SHM_ROUTER_RING0 = SHM_WORKER0 + IOTD_MAX_WORKERS, /* + i */
	SHM_NREGIONS = SHM_ROUTER_RING0 + IOTD_MAX_WORKERS
};

/* The supervisor's: both descriptors of every region. */
struct shm_set {
	unsigned nworkers;
	size_t ring_size;              /* data bytes of each ring */
	int rw[SHM_NREGIONS];          /* -1 where there is no such region */
	int ro[SHM_NREGIONS];
};

/* One process's mappings, and its private view of each ring it holds an end of. */
struct shm_map {
	unsigned nworkers;
	size_t ring_size;
	struct shm_sup *sup;
	struct shm_listener *listener;
	struct shm_router *router;
	struct router_journal *journal;
	struct shm_worker *worker[IOTD_MAX_WORKERS];
	struct shm_router_ring *router_ring[IOTD_MAX_WORKERS];
	struct shmring w2r[IOTD_MAX_WORKERS];   /* valid where both regions are mapped */
	struct shmring r2w[IOTD_MAX_WORKERS];
	void *addr[SHM_NREGIONS];
	size_t len[SHM_NREGIONS];
};

/* Create every region (zeroed) and its read-only descriptor. Returns 0, or -1 logged. */
int shm_create(struct shm_set *set, unsigned nworkers, size_t ring_size);
/*
 * Map what 'role' (worker 'index') needs, writable where it is the writer.
 * ROLE_SUPERVISOR maps sup writable and the counters it reads read-only.
 * Returns 0, or -1 logged (what was mapped is unmapped).
 */
int shm_map_role(struct shm_map *m, const struct shm_set *set, enum iotd_role role,
		 unsigned index);
/* Unmap everything m holds. */
void shm_unmap(struct shm_map *m);
/* Close every descriptor of the set (a child, once it has mapped what it needs). */
void shm_close(struct shm_set *set);

#endif
