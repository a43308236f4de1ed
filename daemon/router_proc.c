/*
 * router_proc.c - the router process: router_main() and its loop around
 * the router's logic (router.h).
 *
 * Owns the router's ends of the rings (w2r[i] read, r2w[i] written), the
 * records held back for a full r2w ring (the backlog, capped by
 * max_router_backlog_bytes), the journal of ring positions in shared
 * memory, the store it opens, the control socket to the supervisor
 * (SHUTDOWN, PING, CONFIG, WORKER_DOWN...) and the channel from the auth
 * role, which brings the ACL (a sealed memfd, checked before it is
 * mapped): while the configuration names an ACL file and none has come,
 * the rings are not read. A worker that breaks its rings
 * is reported (IPC_WORKER_FAULT) and no longer read. Each loop turn
 * handles a batch of records from every ring, then commits the store
 * BEFORE it publishes the r2w records and releases the w2r ones, so that
 * whatever a worker sees or may overwrite is already stored and a
 * restarted router neither repeats nor loses a record (docs/arch.md,
 * "Storage"; router_restore_rings takes the rings over).
 */
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "iotd.h"
#include "ipc.h"
#include "log.h"
#include "mqtt.h"
#include "privsep.h"
#include "rec.h"
#include "role.h"
#include "router.h"
#include "ringout.h"
#include "sealedfd.h"
#include "shmring.h"
#include "store.h"

#define ROUTER_ORPHAN_SECS 2          /* most time to drain the rings once the supervisor is gone */
#define ROUTER_STORE_FAILED_WAIT_MS 2000 /* most time to wait for the supervisor to read why the store failed */
#define ROUTER_BATCH 256             /* records per ring per turn: no worker starves the others */
#define ROUTER_POLL_EVERY 16       /* busy turns between two looks at control events */
#define ROUTER_MAX_EVENTS 8
#define ROUTER_NO_POS UINT64_MAX     /* a ring position the store does not have yet */
#define ROUTER_POISON_CRASHES 3      /* deaths in a row on one record before it is set aside */
#define ROUTER_HUGE_QUEUES (8u << 20) /* queued bytes past which the heap goes in huge pages */
#define ROUTER_HEAP_STEP (32u << 20)  /* then glibc grows the heap by this much at a time (M_TOP_PAD) */
#define ROUTER_HUGE_PAGE ((uintptr_t)2 << 20)
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25              /* Linux 6.1; an older one says EINVAL: only new growth is huge */
#endif

/*
 * Records for a worker wait in its ringout's backlog while its r2w ring is
 * full (those durable also in the store's outbox, under their seq). Their
 * bytes are capped by max_router_backlog_bytes (router_proc_emit): past
 * the cap, deliveries are dropped; an episode lasts until it is empty.
 */
struct router_proc {
	struct role_env *env;
	struct router *r;
	struct store *st;
	bool st_memory;                 /* backend "memory": removed at a graceful stop */
	char st_dir[256];
	int epfd, tfd;
	struct shmring_consumer in[IOTD_MAX_WORKERS];
	struct shmring_producer out[IOTD_MAX_WORKERS];
	struct ringout out_q[IOTD_MAX_WORKERS];      /* r2w producers with their backlogs */
	uint64_t dropped[IOTD_MAX_WORKERS];          /* deliveries dropped in this backlog episode */
	uint64_t stored_tail[IOTD_MAX_WORKERS];  /* ring positions as last written to the store */
	uint64_t stored_head[IOTD_MAX_WORKERS];
	/*
	 * A worker that published something impossible in its rings: its ring
	 * is no longer read (nor written) until its death is handled.
	 */
	bool faulty[IOTD_MAX_WORKERS];
	/* IPC_WORKER_DOWN received: handle it once the dead worker's records are. */
	bool down_pending[IOTD_MAX_WORKERS];
	uint32_t down_epoch[IOTD_MAX_WORKERS];
	bool down_done_due[IOTD_MAX_WORKERS];   /* IPC_WORKER_DOWN_DONE to send after the turn */
	/*
	 * After a death, the ring is left alone until the successor (of epoch
	 * gate_epoch) has reported READY to the supervisor (sup ready_epoch):
	 * it first moves the ring's head back to where we stand
	 * (shmring_producer_attach_at_tail). Nothing in the worker's own
	 * region could say so: its dead predecessor wrote that too.
	 */
	bool gated[IOTD_MAX_WORKERS];
	uint32_t gate_epoch[IOTD_MAX_WORKERS];
	bool poison_armed;              /* the journal's suspect is to be set aside when met */
	struct ipc_dispatcher ctl_in;   /* what the supervisor may send (router_from_supervisor) */
	struct ipc_dispatcher auth_in;  /* what the auth role may send (router_from_auth) */
	/*
	 * The configuration names an ACL file and the auth role's ACL has not
	 * come: the rings are not read, so that no record passes unchecked.
	 */
	bool acl_wait;
	bool have_acl;                  /* the auth role's ACL is in force */
	bool stopping;                  /* IPC_SHUTDOWN came */
	/* The heap in huge pages (router_heap_huge). */
	uintptr_t heap_lo;              /* where the heap ended at start */
	uintptr_t heap_huge_end;        /* huge pages asked for up to here */
	bool heap_huge;                 /* the queues grew past ROUTER_HUGE_QUEUES once */
	bool heap_huge_off;             /* the kernel said no */
};

/*
 * Worker i broke its rings: say so once, stop reading them, and ask the
 * supervisor to kill it. Its death comes back as IPC_WORKER_DOWN.
 */
static void router_proc_fault(struct router_proc *p, unsigned i, const char *what)
{
	struct ipc_worker msg = { .index = i,
				  .epoch = atomic_load(&p->env->shm.sup->workers[i].epoch) };

	if (p->faulty[i])
		return;
	p->faulty[i] = true;
	log_error("router: worker %u %s: no longer reading its ring; asking for its restart", i,
		  what);
	if (ipc_send(p->env->ctl_fd, IPC_WORKER_FAULT, i, &msg, sizeof(msg), -1) < 0)
		log_warn("router: cannot report worker %u: %s", i, strerror(errno));
}

/* May ring i be used now: not faulty, and not waiting for a successor to serve? */
static bool router_proc_ring_open(struct router_proc *p, unsigned i)
{
	if (p->faulty[i])
		return false;
	if (!p->gated[i])
		return true;
	if (atomic_load(&p->env->shm.sup->workers[i].ready_epoch) != p->gate_epoch[i])
		return false;
	/* The successor serves: its ring starts where we stand; take its view afresh. */
	p->gated[i] = false;
	shmring_consumer_resync(&p->in[i]);
	if (!shmring_producer_resync(&p->out[i]))
		router_proc_fault(p, i, "published an impossible position in the ring to it");
	return !p->faulty[i];
}

/*
 * A DELIVER of a QoS 0 message may be lost with the router, as with a
 * worker: storing it would only fill the store while a slow worker floods.
 */
static bool router_rec_durable(uint16_t type, const struct recw *rec)
{
	if (type == REC_ROUTE)
		return false;       /* a worker that misses one asks again */
	return type != REC_DELIVER || rec_deliver_qos(rec->buf, rec->len) != 0;
}

static bool router_backlog_push(struct router_proc *p, unsigned worker, uint16_t type,
				const struct recw *rec)
{
	struct ringout *o = &p->out_q[worker];
	uint64_t seq = o->next_seq;
	bool stored = p->st && router_rec_durable(type, rec);
	struct ringout_rec *e;

	if (o->n == 0)
		log_debug("router: ring to worker %u full: holding records", worker);
	e = ringout_hold(o, seq, type, rec->buf, (uint32_t)rec->len);
	if (e == NULL)
		return false;
	e->stored = stored;
	/* Held records are emitted output: a restarted router must still send them. */
	if (stored)
		store_outbox_put(p->st, worker, seq, type, rec->buf, (uint32_t)rec->len);
	return true;
}

/*
 * Past max_router_backlog_bytes, what may go (a record already waiting is
 * never dropped, and one record always fits an empty backlog):
 * deliveries, whose loss MQTT tolerates (QoS 0), or that the router keeps
 * a copy of (QoS 1/2 to a persistent session: that copy stays in memory
 * and in the store and reaches the client after it reconnects), or that
 * a clean session loses as it would with its worker; and route answers,
 * which a worker asks for again. Never CONNACK, SUBACK, UNSUBACK, KICK or
 * SESSION_MSG: a client or a takeover waits for each, and there are no
 * more of them than requests the worker's clients made.
 */
static bool router_backlog_over(struct router_proc *p, unsigned worker, uint16_t type,
				const struct recw *rec)
{
	struct ringout *o = &p->out_q[worker];
	long cap = p->env->cfg->max_router_backlog_bytes;

	if (cap <= 0 || !o->head || (type != REC_DELIVER && type != REC_ROUTE) ||
	    o->bytes + ringout_cost((uint32_t)rec->len) <= (size_t)cap)
		return false;
	if (!p->dropped[worker]++)
		log_warn("router: ring to worker %u full and %zu bytes held (max_router_backlog_bytes %ld): dropping deliveries to it until it catches up",
			 worker, o->bytes, cap);
	return true;
}

/* Records go to the ring in order: once one waits, all later ones wait behind it. */
static int router_proc_emit(void *arg, unsigned worker, uint16_t type, const struct recw *rec)
{
	struct router_proc *p = arg;
	void *dst;

	if (worker >= p->env->nworkers)
		return -1;
	if (rec->len > shmring_max_payload(p->out[worker].r.size)) {
		log_error("router: %s of %zu bytes exceeds the ring to worker %u: dropped",
			  rec_type_name(type), rec->len, worker);
		return -1;
	}
	if (!p->out_q[worker].head && router_proc_ring_open(p, worker)) {
		dst = ringout_reserve(&p->out_q[worker], type, (uint32_t)rec->len);
		if (dst) {
			memcpy(dst, rec->buf, rec->len);
			return 0;
		}
		if (errno == EPROTO)
			router_proc_fault(p, worker, "published an impossible position in the ring to it");
	}
	if (router_backlog_over(p, worker, type, rec))
		return -1;
	if (router_backlog_push(p, worker, type, rec))
		return 0;
	log_error("router: out of memory holding %s for worker %u: dropped", rec_type_name(type),
		  worker);
	return -1;
}

struct router_moved_ctx {
	struct router_proc *p;
	unsigned worker;
};

/* A held record went into the ring: the outbox no longer needs it. */
static void router_backlog_moved(void *arg, const struct ringout_rec *e)
{
	struct router_moved_ctx *ctx = arg;

	if (e->stored && ctx->p->st)
		store_outbox_del(ctx->p->st, ctx->worker, e->seq);
}

/* Move held records into the ring (reserved: published after the store's commit). */
static void router_backlog_flush(struct router_proc *p, unsigned worker)
{
	struct router_moved_ctx ctx = { p, worker };
	struct ringout *o = &p->out_q[worker];

	if (!o->head || !router_proc_ring_open(p, worker))
		return;
	/* Stops where the ring is full: p_wait is set, the worker wakes us when it makes room. */
	if (ringout_flush(o, router_backlog_moved, &ctx) < 0)
		router_proc_fault(p, worker, "published an impossible position in the ring to it");
	if (!o->head && p->dropped[worker]) {
		log_info("router: ring to worker %u caught up; %llu deliveries to it were dropped",
			 worker, (unsigned long long)p->dropped[worker]);
		p->dropped[worker] = 0;
	}
}

/* The retained messages a subscription is owed wait while anything is held for its worker. */
static bool router_proc_room(void *arg, unsigned worker)
{
	struct router_proc *p = arg;

	return worker < p->env->nworkers && !p->out_q[worker].head;
}

static void router_proc_backlogs(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++)
		router_backlog_flush(p, i);
}

/*
 * Record in the turn's transaction how far each ring was applied (w2r)
 * and written (r2w), then commit. After this the store agrees with what
 * the workers are about to see, so publishing and releasing are safe.
 */
static void router_journal_write(struct router_proc *p)
{
	struct router_journal *j = p->env->shm.journal;
	uint64_t seq = atomic_load_explicit(&j->seq, memory_order_relaxed) + 1;

	for (unsigned i = 0; i < p->env->nworkers; i++) {
		j->slot[seq & 1].w2r_tail[i] = p->in[i].tail;
		j->slot[seq & 1].r2w_head[i] = p->out[i].head;
	}
	atomic_store_explicit(&j->seq, seq, memory_order_release);
}

/* The journal's positions for ring i, when a router of this daemon wrote one. */
static bool router_journal_get(struct router_proc *p, unsigned i, uint64_t *tail,
			       uint64_t *head)
{
	struct router_journal *j = p->env->shm.journal;
	uint64_t seq = atomic_load_explicit(&j->seq, memory_order_acquire);

	if (seq == 0)
		return false;
	*tail = j->slot[seq & 1].w2r_tail[i];
	*head = j->slot[seq & 1].r2w_head[i];
	return true;
}

static void router_proc_persist(struct router_proc *p)
{
	char key[16];

	/*
	 * A turn that only routed needs no commit: the journal in shared
	 * memory carries the positions. A turn that changed state commits
	 * them with it, before the journal moves on.
	 */
	if (!p->st || !store_pending(p->st)) {
		router_journal_write(p);
		return;
	}
	for (unsigned i = 0; i < p->env->nworkers; i++) {
		if (p->in[i].tail != p->stored_tail[i]) {
			snprintf(key, sizeof(key), "tail/%u", i);
			store_meta_put(p->st, key, p->in[i].tail);
			p->stored_tail[i] = p->in[i].tail;
		}
		if (p->out[i].head != p->stored_head[i]) {
			snprintf(key, sizeof(key), "head/%u", i);
			store_meta_put(p->st, key, p->out[i].head);
			p->stored_head[i] = p->out[i].head;
		}
	}
	if (router_commit(p->r) < 0) {
		/* Unknown to the store after all: the rewrite puts them back. */
		for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
			p->stored_tail[i] = p->stored_head[i] = ROUTER_NO_POS;
	}
	router_journal_write(p);
}

/*
 * Publish each worker's batch and give back the room its records took:
 * one wake-up at most per worker, whether it sleeps on its ring from us,
 * waits for room in its ring to us, or both (one eventfd serves both).
 */
static void router_proc_publish(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++) {
		bool wake = ringout_commit(&p->out_q[i]);

		if (shmring_release(&p->in[i]))
			wake = true;
		if (wake)
			eventfd_wake(p->env->worker_efd[i]);
	}
}

/*
 * The end of a turn, in the order that keeps the store ahead of the rings.
 * Retained messages owed to new subscriptions fill what room the turn's
 * records left. true when some are left that could go now.
 */
static bool router_proc_flush(struct router_proc *p)
{
	bool more;

	router_proc_backlogs(p);
	more = router_send_retained(p->r);
	router_proc_persist(p);
	router_proc_publish(p);
	return more;
}

/*
 * A dead worker's records are all handled (or its ring is broken, or its
 * successor has not written yet): its sessions go, and the ring waits for
 * the successor, which starts where we stand.
 */
static void router_proc_down(struct router_proc *p, unsigned i)
{
	router_worker_down(p->r, i, p->down_epoch[i]);
	p->down_pending[i] = false;
	p->faulty[i] = false;
	p->gated[i] = true;
	p->gate_epoch[i] = p->down_epoch[i];
	p->down_done_due[i] = true;
}

/*
 * A router that died handling a record is restarted and meets the same
 * record again (the ring is its log). The journal says which record was in
 * hand at each death: after ROUTER_POISON_CRASHES deaths in a row on one
 * record, that record is set aside (logged, not handled) and the router
 * serves again. Called once at start, after the rings are restored.
 */
static void router_proc_poison_check(struct router_proc *p)
{
	struct router_journal *j = p->env->shm.journal;

	if (j->in_hand.ring == 0) {
		/* A death elsewhere, or a start after a clean stop: the count starts over. */
		j->suspect.ring = 0;
		j->suspect_crashes = 0;
		return;
	}
	if (j->in_hand.ring == j->suspect.ring && j->in_hand.pos == j->suspect.pos) {
		j->suspect_crashes++;
	} else {
		j->suspect = j->in_hand;
		j->suspect_crashes = 1;
	}
	j->in_hand.ring = 0;
	log_warn("router: the previous router died handling the record at position %llu of worker %u's ring (%u time(s) in a row)",
		 (unsigned long long)j->suspect.pos, (unsigned)(j->suspect.ring - 1),
		 j->suspect_crashes);
	p->poison_armed = j->suspect_crashes >= ROUTER_POISON_CRASHES;
}

/* Is rec, at the tail of ring i, the record that keeps killing the router? Then skip it. */
static bool router_proc_set_aside(struct router_proc *p, unsigned i, const struct shmring_rec *rec)
{
	struct router_journal *j = p->env->shm.journal;

	if (!p->poison_armed || j->suspect.ring != i + 1 || j->suspect.pos != p->in[i].tail)
		return false;
	log_error("router: set aside the %s record (%u bytes) at position %llu of worker %u's ring: the router died %u times handling it",
		  rec_type_name(rec->type), rec->len, (unsigned long long)j->suspect.pos, i,
		  j->suspect_crashes);
	p->poison_armed = false;
	j->suspect.ring = 0;
	j->suspect_crashes = 0;
	return true;
}

/* Handle one record, with the journal saying which one is in hand should it kill us. */
static void router_proc_handle(struct router_proc *p, unsigned i, const struct shmring_rec *rec)
{
	struct router_journal *j = p->env->shm.journal;

	if (router_proc_set_aside(p, i, rec))
		return;
	j->in_hand.pos = p->in[i].tail;
	j->in_hand.ring = i + 1;
	/* A crash is no event the compiler knows of: keep the stores where they are. */
	atomic_signal_fence(memory_order_seq_cst);
	router_handle(p->r, i, rec->type, shmring_payload(rec), rec->len);
	atomic_signal_fence(memory_order_seq_cst);
	j->in_hand.ring = 0;
}

/* Up to ROUTER_BATCH records of ring i; returns how many. */
static unsigned router_proc_drain_ring(struct router_proc *p, unsigned i)
{
	const struct shmring_rec *rec = NULL;
	unsigned n = 0;
	bool open = router_proc_ring_open(p, i);

	while (open && n < ROUTER_BATCH && (rec = shmring_peek(&p->in[i]))) {
		router_proc_handle(p, i, rec);
		shmring_next(&p->in[i]);
		n++;
	}
	if (open && rec == NULL && errno == EBADMSG)
		router_proc_fault(p, i, "published an impossible position or record in its ring");
	if (p->down_pending[i] && (!router_proc_ring_open(p, i) || (rec == NULL && errno == EAGAIN)))
		router_proc_down(p, i);
	return n;
}

/* One round-robin turn over the w2r rings; true when any record was handled. */
static bool router_proc_drain(struct router_proc *p)
{
	bool busy = false;

	for (unsigned i = 0; i < p->env->nworkers; i++)
		busy |= router_proc_drain_ring(p, i) > 0;
	return busy;
}

/* After the turn is stored and released: the supervisor may fork the successors. */
static void router_proc_downs_done(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++) {
		struct ipc_worker msg = { .index = i, .epoch = p->gate_epoch[i] };

		if (!p->down_done_due[i])
			continue;
		if (ipc_send(p->env->ctl_fd, IPC_WORKER_DOWN_DONE, i, &msg, sizeof(msg), -1) < 0) {
			log_warn("router: cannot confirm worker %u's death: %s", i, strerror(errno));
			continue;          /* again after the next turn */
		}
		p->down_done_due[i] = false;
	}
}

static bool router_proc_prepare_sleep(struct router_proc *p)
{
	bool ok = true;

	/* Every ring gets c_sleep set, so whichever producer commits next wakes us. */
	for (unsigned i = 0; i < p->env->nworkers; i++)
		if (!shmring_prepare_sleep(&p->in[i]))
			ok = false;
	return ok;
}

static void router_proc_awake(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++)
		shmring_awake(&p->in[i]);
}

/*
 * A busy router's queues hold tens of MiB, and each copy is touched again
 * long after it was made (some 90,000 deliveries later in a busy shared
 * group): in 4 KiB pages that is a TLB miss or two per copy done, which
 * no prefetch hides (see BENCHMARKS.md, "MQTT 5 and shared
 * subscriptions"). So once the queues hold more than ROUTER_HUGE_QUEUES,
 * the heap asks for transparent huge pages (THP's "madvise" mode; a
 * system set to "never" says no, and that is that): what it holds is
 * collapsed into them once, glibc is asked to grow it ROUTER_HEAP_STEP at
 * a time, and each growth is marked by the next busy turn, before most of
 * it is touched. A router whose queues stay small, however many idle
 * sessions it has, keeps its 4 KiB pages and its memory.
 */
static void router_heap_huge(struct router_proc *p, size_t queued)
{
	uintptr_t brk, lo, hi;

	if (p->heap_huge_off || (!p->heap_huge && queued < ROUTER_HUGE_QUEUES))
		return;
	brk = (uintptr_t)sbrk(0);
	if (brk < p->heap_huge_end)
		p->heap_huge_end = brk;         /* trimmed: what grows there again is new */
	lo = (p->heap_huge ? p->heap_huge_end : p->heap_lo) + ROUTER_HUGE_PAGE - 1;
	lo &= ~(ROUTER_HUGE_PAGE - 1);
	hi = brk & ~(ROUTER_HUGE_PAGE - 1);
	if (hi <= lo)
		return;
	if (madvise((void *)lo, hi - lo, MADV_HUGEPAGE) < 0) {
		log_info("router: no huge pages for the queues: %s", strerror(errno));
		p->heap_huge_off = true;
		return;
	}
	if (!p->heap_huge) {
		if (madvise((void *)lo, hi - lo, MADV_COLLAPSE) < 0)
			log_debug("router: the heap not collapsed into huge pages: %s",
				  strerror(errno));
		mallopt(M_TOP_PAD, ROUTER_HEAP_STEP);
		p->heap_huge = true;
	}
	p->heap_huge_end = hi;
}

static void router_proc_stats(struct router_proc *p)
{
	struct router_stats st;

	router_get_stats(p->r, &st);
	atomic_store_explicit(&p->env->shm.router->sessions, (uint32_t)st.sessions,
			      memory_order_relaxed);
	atomic_store_explicit(&p->env->shm.router->retained, (uint32_t)st.retained,
			      memory_order_relaxed);
	router_heap_huge(p, st.queued_bytes_total);
}

/* ---- the process: what the supervisor says ----------------------------- */

#define ROUTER_CTL_PER_WAKE 16          /* messages read from the supervisor per wake-up */

static int router_on_shutdown(void *ctx, struct ipc_msg *m)
{
	struct router_proc *p = ctx;

	log_info("router: shutting down");
	p->stopping = true;
	return IPC_STOP;
}

static void router_proc_grant_fetch(void *arg);

/* The rings wait for the ACL while the configuration names a file and none has come. */
static void router_acl_wait_update(struct router_proc *p)
{
	bool wait = p->env->cfg->auth_acl_file[0] != '\0' && !p->have_acl;

	if (wait && !p->acl_wait)
		log_info("router: waiting for the auth role's ACL before reading the rings");
	p->acl_wait = wait;
}

/* An ACL file no longer configured: nothing is checked any more. */
static int router_on_config(void *ctx, struct ipc_msg *m)
{
	struct router_proc *p = ctx;

	if (role_take_config(p->env, m->data, m->hdr.len) < 0 || p->r == NULL)
		return 0;
	router_config_changed(p->r);
	router_set_grants(p->r, config_acl_in_force(p->env->cfg), router_proc_grant_fetch, p);
	if (p->env->cfg->auth_acl_file[0] == '\0' && p->have_acl) {
		router_set_acl(p->r, NULL);
		p->have_acl = false;
		log_info("router: no ACL file any more; nothing is checked");
	}
	router_acl_wait_update(p);
	return 0;
}

/* IPC_WORKER_DOWN: the supervisor reaped worker i; handled once its records are. */
static int router_on_worker_down(void *ctx, struct ipc_msg *m)
{
	struct router_proc *p = ctx;
	struct ipc_worker msg;

	memcpy(&msg, m->data, sizeof(msg));
	if (msg.index >= p->env->nworkers)
		return 0;
	p->down_pending[msg.index] = true;
	p->down_epoch[msg.index] = msg.epoch;
	return 0;
}

static const struct ipc_handler router_from_supervisor[IPC_TYPE_MAX] = {
	[IPC_SHUTDOWN] = { .fn = router_on_shutdown },
	ROLE_SUPERVISOR_ENTRIES(router_on_config),
	[IPC_WORKER_DOWN] = { .fn = router_on_worker_down, IPC_LEN(sizeof(struct ipc_worker)) },
};

/* ---- the process: what the auth role says ------------------------------- */

/*
 * IPC_AUTH_ACL: the ACL in force, hostile input from a trusted role: a
 * sealed memfd of the size announced, at most ACL_LIMITS_DEFAULT's
 * max_bytes, decoded by router_set_acl_bytes (which keeps the ACL in
 * force when it does not decode). "No ACL" while the configuration names
 * a file can only be an old auth process's: ignored. Answered with its
 * generation, whatever became of it.
 */
static int router_on_auth_acl(void *ctx, struct ipc_msg *m)
{
	static const struct acl_limits lim = ACL_LIMITS_DEFAULT;
	struct router_proc *p = ctx;
	struct ipc_auth_acl msg;
	const void *bytes;
	char err[160];
	int fd = m->nfds > 0 ? m->fds[0] : -1;

	memcpy(&msg, m->data, sizeof(msg));
	if (msg.len == 0) {
		if (p->env->cfg->auth_acl_file[0] != '\0') {
			log_warn("router: the auth role has no ACL, but the configuration names one; "
				 "keeping what is in force");
		} else if (p->have_acl) {
			router_set_acl(p->r, NULL);
			p->have_acl = false;
		}
	} else if (fd < 0 || !(bytes = sealedfd_map(fd, msg.len, lim.max_bytes, err, sizeof(err)))) {
		log_error("router: the ACL sent to it is refused (%s): the one in force stays",
			  fd < 0 ? "no memfd" : err);
	} else {
		if (router_set_acl_bytes(p->r, bytes, msg.len) == 0) {
			p->have_acl = true;
			log_info("router: ACL in force (%llu bytes)", (unsigned long long)msg.len);
		}
		sealedfd_unmap(bytes, msg.len);
	}
	if (fd >= 0)
		close(fd);
	router_acl_wait_update(p);
	if (ipc_send(p->env->router_auth, IPC_AUTH_ACL_TAKEN, 0, &msg.generation,
		     sizeof(msg.generation), -1) < 0)
		log_warn("router: cannot tell the auth role its ACL was handled: %s", strerror(errno));
	return 0;
}

/* IPC_AUTH_GRANT: a CONNECT the auth role accepted; a token's rules with it. */
static int router_on_auth_grant(void *ctx, struct ipc_msg *m)
{
	struct router_proc *p = ctx;
	struct ipc_auth_fields f;

	if (!ipc_auth_verdict_decode(m->data, m->hdr.len, &f) || f.code != MQTT_CONNACK_ACCEPTED) {
		log_warn("router: a malformed grant from the auth role; dropped");
		return 0;
	}
	/* A failure is logged there; its CONNECT will be refused. */
	(void)router_grant(p->r, f.conn, f.user, f.user_len, f.rules_from_token, f.rules,
			   f.rules_len);
	return 0;
}

static const struct ipc_handler router_from_auth[IPC_TYPE_MAX] = {
	[IPC_AUTH_ACL] = { .fn = router_on_auth_acl, IPC_LEN(sizeof(struct ipc_auth_acl)),
			   .max_fds = 1 },
	[IPC_AUTH_GRANT] = { .fn = router_on_auth_grant, .min_len = sizeof(struct ipc_auth_verdict),
			     .max_len = IPC_MAX_PAYLOAD },
};

static void router_proc_auth(struct router_proc *p)
{
	if (ipc_dispatch(p->env->router_auth, &p->auth_in, p, ROUTER_CTL_PER_WAKE) < 0 &&
	    errno != 0)
		log_warn("router: the auth role's channel: %s", strerror(errno));
}

/*
 * A CONNECT whose grant has not been read: everything the auth role sent
 * so far, which holds it if the auth role accepted it (it grants before
 * it answers the worker).
 */
static void router_proc_grant_fetch(void *arg)
{
	struct router_proc *p = arg;

	while (ipc_dispatch(p->env->router_auth, &p->auth_in, p, ROUTER_CTL_PER_WAKE) > 0)
		;
}

/* Returns 1 to go on, 0 to stop (shutdown or the supervisor is gone). */
static int router_proc_ctl(struct router_proc *p)
{
	if (ipc_dispatch(p->env->ctl_fd, &p->ctl_in, p, ROUTER_CTL_PER_WAKE) >= 0)
		return !p->stopping;
	if (errno != 0) {
		log_error("router: control socket: %s", strerror(errno));
		return 0;
	}
	/*
	 * The supervisor is gone, and the workers with it: drain the rings
	 * and exit (router_main). alarm() bounds that, should it hang.
	 */
	log_warn("router: the supervisor is gone; storing what the rings hold, then exiting");
	alarm(ROUTER_ORPHAN_SECS);
	return 0;
}

/* ---- the process: the store -------------------------------------------- */

/* Set by router_set_memory_store() before router_main(). */
static char memory_store_name[STORE_NAME_LEN];
static bool memory_store_successor;

void router_set_memory_store(const char *name, bool successor)
{
	snprintf(memory_store_name, sizeof(memory_store_name), "%s", name);
	memory_store_successor = successor;
}

/* "memory": the directory of this daemon's store, after clearing what dead daemons left. */
static int router_memory_dir(struct router_proc *p, pid_t daemon, char *err, size_t errlen)
{
	const char *root = store_memory_root();

	if (strcmp(root, STORE_MEMORY_ROOT) != 0)
		log_warn("router: %s is not writable: keeping the state in %s", STORE_MEMORY_ROOT,
			 root);
	store_sweep(root, daemon);
	if (store_memory_dir(p->st_dir, sizeof(p->st_dir), root, memory_store_name) < 0) {
		snprintf(err, errlen, "store in %s: no name for it, or too long", root);
		return -1;
	}
	if (memory_store_successor)
		return 0;
	return store_memory_create(p->st_dir, err, errlen);
}

/*
 * Open the store of this daemon: backend "memory" in a tmpfs directory
 * under the name the supervisor drew (see router_set_memory_store),
 * "disk" at storage.path. A store another daemon wrote is claimed, and
 * forgets that daemon's connections and rings. *same: this daemon wrote
 * it (the router restarted): its ring positions are ours. On failure the
 * reason is in err.
 */
static int router_store_open(struct router_proc *p, bool *same, char *err, size_t errlen)
{
	const struct iotd_config *cfg = p->env->cfg;
	pid_t daemon = getppid();
	char ident[STORE_IDENT_LEN];

	p->st_memory = strcmp(cfg->storage_backend, "disk") != 0;
	if (p->st_memory) {
		if (router_memory_dir(p, daemon, err, errlen) < 0)
			return -1;
	} else if (snprintf(p->st_dir, sizeof(p->st_dir), "%s", cfg->storage_path) >=
		   (int)sizeof(p->st_dir)) {
		snprintf(err, errlen, "storage.path is too long (at most %zu bytes)",
			 sizeof(p->st_dir) - 1);
		return -1;
	}
	p->st = store_open(p->st_dir, p->st_memory ? STORE_MEMORY : STORE_DISK,
			   p->st_memory ? STORE_MEMORY_MAP : STORE_DISK_MAP, err, errlen);
	if (!p->st)
		return -1;
	store_daemon_ident(daemon, ident, sizeof(ident));
	*same = store_same_daemon(p->st, ident);
	if (*same)
		return 0;
	/* A memory store of a dead daemon that had our pid is not ours to resume. */
	if (store_new_daemon(p->st, ident, !p->st_memory) < 0) {
		snprintf(err, errlen, "store %s: cannot claim it for this daemon (see above)",
			 p->st_dir);
		return -1;
	}
	return 0;
}

/*
 * The store cannot be opened: tell the supervisor why (it logs it, and at
 * the daemon's start stops it rather than serving clients no router can
 * route for), then wait for its answer, so that the message is read
 * before our exit is reaped. Bounded: an exit without the answer only
 * means a restart with backoff.
 */
static void router_store_failed(struct router_proc *p, const char *why)
{
	struct pollfd pfd = { .fd = p->env->ctl_fd, .events = POLLIN };
	uint64_t deadline = clock_ms() + ROUTER_STORE_FAILED_WAIT_MS;

	if (ipc_send(p->env->ctl_fd, IPC_STORE_FAILED, 0, why, strlen(why) + 1, -1) < 0) {
		log_error("router: %s (and cannot tell the supervisor: %s)", why, strerror(errno));
		return;
	}
	/* Until the answer (IPC_SHUTDOWN) or the supervisor's end; a PING meanwhile is answered. */
	for (uint64_t now = clock_ms(); now < deadline && !p->stopping; now = clock_ms()) {
		if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
			continue;
		if (ipc_dispatch(p->env->ctl_fd, &p->ctl_in, p, ROUTER_CTL_PER_WAKE) < 0)
			return;
	}
}

struct router_held_ctx {
	struct router_proc *p;
	unsigned worker;
};

static void router_restore_held(void *arg, uint64_t seq, uint16_t type, const void *data,
				uint32_t len)
{
	struct router_held_ctx *ctx = arg;

	struct ringout_rec *e = ringout_hold(&ctx->p->out_q[ctx->worker], seq, type, data, len);

	if (e != NULL)
		e->stored = true;
	else
		log_error("router: out of memory: a held %s for worker %u is lost",
			  rec_type_name(type), ctx->worker);
}

/*
 * Where ring i stood at the last commit, "tail" (w2r) or "head" (r2w):
 * the later of the store's position and the journal's (positions only
 * grow), or now when neither has one.
 */
static uint64_t router_saved_pos(struct router_proc *p, unsigned i, bool tail, uint64_t now)
{
	uint64_t pos, jtail, jhead;
	char key[16];

	snprintf(key, sizeof(key), "%s/%u", tail ? "tail" : "head", i);
	if (!store_meta_get(p->st, key, &pos))
		pos = now;
	if (router_journal_get(p, i, &jtail, &jhead) && (tail ? jtail : jhead) > pos)
		pos = tail ? jtail : jhead;
	return pos;
}

/* w2r: skip what the state already contains. */
static void router_restore_tail(struct router_proc *p, unsigned i)
{
	uint64_t tail = p->in[i].tail, pos = router_saved_pos(p, i, true, tail);

	if (pos == tail)
		return;
	if (shmring_consumer_seek(&p->in[i], pos))
		log_info("router: ring from worker %u: %llu bytes were applied before the restart",
			 i, (unsigned long long)(pos - tail));
	else
		log_warn("router: ring from worker %u: the store's position %llu is outside the ring (tail %llu): records may be lost or applied twice",
			 i, (unsigned long long)pos, (unsigned long long)tail);
}

/* r2w: publish what the predecessor wrote in place and committed to the store, but not to the ring. */
static void router_restore_head(struct router_proc *p, unsigned i)
{
	uint64_t head = p->out[i].head, pos = router_saved_pos(p, i, false, head);

	if (pos == head)
		return;
	if (pos > head && shmring_producer_seek(&p->out[i], pos)) {
		p->out_q[i].reserved = true;
		log_info("router: ring to worker %u: publishing %llu bytes written before the restart",
			 i, (unsigned long long)(pos - head));
	} else {
		log_warn("router: ring to worker %u: the store's position %llu is outside the ring (head %llu): records may be lost",
			 i, (unsigned long long)pos, (unsigned long long)head);
	}
}

/* A router of the same daemon died: take its rings over exactly where the store says it was. */
static void router_restore_rings(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++) {
		struct router_held_ctx ctx = { p, i };

		router_restore_tail(p, i);
		router_restore_head(p, i);
		store_each_outbox(p->st, i, router_restore_held, &ctx);
		if (p->out_q[i].n)
			log_info("router: ring to worker %u: %zu held records taken back", i,
				 p->out_q[i].n);
	}
}

/* The store came back after failed writes: the held records go in again, positions with the turn. */
static void router_proc_resynced(struct router_proc *p)
{
	store_outbox_clear(p->st);
	for (unsigned i = 0; i < p->env->nworkers; i++)
		for (const struct ringout_rec *e = p->out_q[i].head; e; e = e->next)
			store_outbox_put(p->st, i, e->seq, e->type, e->data, e->len);
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		p->stored_tail[i] = p->stored_head[i] = ROUTER_NO_POS;
}

static void router_proc_tick(struct router_proc *p)
{
	bool stale = p->st && store_stale(p->st);

	router_tick(p->r, clock_ms());
	if (stale && !store_stale(p->st))
		router_proc_resynced(p);
	router_proc_stats(p);
	/* Over memory_limit: give the heap's free blocks back to the system. */
	if (atomic_load(&p->env->shm.sup->memory_pressure))
		malloc_trim(0);
}

/* ---- the process: set-up and loop -------------------------------------- */

/*
 * At start: a worker forked once its predecessor's death was handled, but
 * not READY yet, may not have moved its ring's head back to our tail: the
 * ring waits for it.
 */
static void router_proc_gate_setup(struct router_proc *p, unsigned i)
{
	const struct shm_worker_state *st = &p->env->shm.sup->workers[i];
	uint32_t epoch = atomic_load(&st->epoch);

	if (atomic_load(&st->up) && atomic_load(&st->ready_epoch) != epoch) {
		p->gated[i] = true;
		p->gate_epoch[i] = epoch;
	}
}

static int router_proc_setup(struct router_proc *p)
{
	struct role_env *env = p->env;
	struct itimerspec its = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };
	struct epoll_event ev = { .events = EPOLLIN };
	size_t max_record = SIZE_MAX;
	bool same = false;
	char err[512];

	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++) {
		p->stored_tail[i] = p->stored_head[i] = ROUTER_NO_POS;
		ringout_init(&p->out_q[i], &p->out[i]);
	}
	for (unsigned i = 0; i < env->nworkers; i++) {
		if (!shmring_consumer_attach(&p->in[i], &env->shm.w2r[i]))
			router_proc_fault(p, i, "left an impossible position in its ring");
		if (!shmring_producer_attach(&p->out[i], &env->shm.r2w[i]))
			router_proc_fault(p, i, "left an impossible position in the ring to it");
		router_proc_gate_setup(p, i);
	}
	max_record = shmring_max_payload(env->shm.ring_size);
	if (router_store_open(p, &same, err, sizeof(err)) < 0) {
		router_store_failed(p, err);
		return -1;
	}
	/* From here on the router reaches no file but its store's. */
	if (privsep_seal_store(p->st_dir, p->st_memory) < 0)
		return -1;
	p->r = router_new(env->cfg, env->nworkers, router_proc_emit, p, p->st);
	if (!p->r) {
		log_error("router: cannot build its state (out of memory, or the store is unreadable)");
		return -1;
	}
	for (unsigned i = 0; i < env->nworkers; i++)
		router_set_worker(p->r, i, atomic_load(&env->shm.sup->workers[i].epoch),
				  atomic_load(&env->shm.sup->workers[i].capacity));
	router_set_route_gen(p->r, &env->shm.router->route_gen);
	router_set_grants(p->r, config_acl_in_force(env->cfg), router_proc_grant_fetch, p);
	if (same)
		router_restore_rings(p);
	router_proc_poison_check(p);
	router_set_max_record(p->r, max_record);
	router_tick(p->r, clock_ms());
	router_proc_flush(p);
	router_proc_stats(p);

	p->epfd = epoll_create1(EPOLL_CLOEXEC);
	p->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (p->epfd < 0 || p->tfd < 0 || timerfd_settime(p->tfd, 0, &its, NULL) < 0)
		goto fail;
	/* Edge-triggered: a wake-up needs no read to re-arm it, one syscall less. */
	ev.events = EPOLLIN | EPOLLET;
	ev.data.fd = env->router_efd;
	if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, env->router_efd, &ev) < 0)
		goto fail;
	ev.events = EPOLLIN;
	ev.data.fd = env->ctl_fd;
	if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, env->ctl_fd, &ev) < 0)
		goto fail;
	ev.data.fd = p->tfd;
	if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->tfd, &ev) < 0)
		goto fail;
	ev.data.fd = env->router_auth;
	if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, env->router_auth, &ev) < 0)
		goto fail;
	/*
	 * With an ACL file, no record is read before the auth role's ACL is
	 * in force: asked for here (a router that restarts has none), and
	 * sent anyway by an auth role that starts. Nothing is sent back
	 * before it comes, so nothing else waits for it but the rings.
	 */
	router_acl_wait_update(p);
	if (p->acl_wait && ipc_send(env->router_auth, IPC_AUTH_ACL_ASK, 0, NULL, 0, -1) < 0)
		log_warn("router: cannot ask the auth role for the ACL: %s", strerror(errno));
	return 0;
fail:
	log_error("router: cannot set up its event loop: %s", strerror(errno));
	return -1;
}

/*
 * graceful: the daemon is stopping (or its supervisor is gone): a memory
 * store has nothing left to outlive, a disk store is flushed. Otherwise
 * (a failure) the store stays for the next router.
 */
static void router_proc_cleanup(struct router_proc *p, bool graceful)
{
	if (p->epfd >= 0)
		close(p->epfd);
	if (p->tfd >= 0)
		close(p->tfd);
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++) {
		ringout_clear(&p->out_q[i]);
		shmring_consumer_detach(&p->in[i]);
	}
	router_free(&p->r);
	if (p->st && graceful && !p->st_memory)
		store_sync(p->st);
	store_close(&p->st);
	if (graceful && p->st_memory && p->st_dir[0] && store_remove(p->st_dir) < 0)
		log_warn("router: cannot remove the store %s: %s", p->st_dir, strerror(errno));
}

/* Handle what woke us; returns 0 to stop. */
static int router_proc_events(struct router_proc *p, int timeout)
{
	struct epoll_event evs[ROUTER_MAX_EVENTS];
	uint64_t expirations;
	int n = epoll_wait(p->epfd, evs, ROUTER_MAX_EVENTS, timeout);

	if (n < 0)
		return errno == EINTR ? 1 : -1;
	for (int i = 0; i < n; i++) {
		int fd = evs[i].data.fd;

		if (fd == p->env->router_efd) {
			continue;       /* the rings are drained every turn */
		} else if (fd == p->tfd) {
			if (read(p->tfd, &expirations, sizeof(expirations)) > 0) {
				router_proc_tick(p);
				if (p->st)
					store_sync(p->st);
			}
		} else if (fd == p->env->ctl_fd) {
			if (!router_proc_ctl(p))
				return 0;
		} else if (fd == p->env->router_auth) {
			router_proc_auth(p);
		}
	}
	return 1;
}

int router_main(struct role_env *env)
{
	struct router_proc *p = calloc(1, sizeof(*p));
	int rc = 1, ev;

	if (!p) {
		log_error("router: out of memory at start");
		return 1;
	}
	p->env = env;
	p->epfd = p->tfd = -1;
	ipc_dispatcher_init(&p->ctl_in, router_from_supervisor, IPC_PEER_ANY, "the supervisor");
	ipc_dispatcher_init(&p->auth_in, router_from_auth, IPC_PEER_ANY, "the auth role");
	p->heap_lo = p->heap_huge_end = (uintptr_t)sbrk(0);
	if (router_proc_setup(p) < 0)
		goto out;
	router_set_room(p->r, router_proc_room);
	if (ipc_send(env->ctl_fd, IPC_READY, 0, NULL, 0, -1) < 0) {
		log_error("router: cannot report ready: %s", strerror(errno));
		goto out;
	}
	log_info("router: serving %u workers (store %s)", env->nworkers, p->st_dir);

	for (unsigned busy_turns = 0;;) {
		bool busy = !p->acl_wait && router_proc_drain(p);
		int timeout = 0;

		/* Retained messages waiting for a full ring: its worker wakes us (p_wait). */
		busy |= router_proc_flush(p);
		router_proc_downs_done(p);
		if (busy) {
			router_proc_stats(p);
			/*
			 * Look at the rings again before asking the kernel about
			 * control and timer events; do that only every so often
			 * while busy, so a lone message costs one epoll_wait.
			 */
			if (++busy_turns % ROUTER_POLL_EVERY)
				continue;
		} else if (p->acl_wait || router_proc_prepare_sleep(p)) {
			timeout = -1;
		}
		ev = router_proc_events(p, timeout);
		if (timeout)
			router_proc_awake(p);
		if (ev <= 0) {
			if (ev < 0)
				log_error("router: epoll_wait: %s", strerror(errno));
			rc = ev < 0 ? 1 : 0;
			break;
		}
	}
	/*
	 * Asked to stop (the supervisor does that once the workers are gone) or
	 * orphaned (they died with the supervisor): the rings hold their last
	 * records. Apply and store every one: each
	 * may be a message its publisher was acknowledged.
	 */
	while (rc == 0 && !p->acl_wait && router_proc_drain(p))
		router_proc_flush(p);
	/* Whatever fits still goes out, the tick's changes too. */
	router_proc_flush(p);
out:
	router_proc_cleanup(p, rc == 0);
	free(p);
	return rc;
}
