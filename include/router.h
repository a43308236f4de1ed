/*
 * router.h - the router's logic, without the process around it.
 *
 * The router owns the session registry, the subscription trie and the
 * retained messages. router_main() (role.h) feeds it the records read from
 * the w2r rings; this interface lets unit tests feed it records directly
 * and capture what it sends back. Given a store (store.h), the router
 * writes every change to it and, when created over a store that holds
 * state, starts from that state.
 */
#ifndef IOTD_ROUTER_H
#define IOTD_ROUTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "acl.h"
#include "config.h"
#include "iotd.h"
#include "rec.h"

struct router;
struct store;

/*
 * What a queue entry counts against max_queued_bytes_total besides the
 * topic and payload of its message (counted once per message, however
 * many queues hold it): the entry itself, the message's header and what
 * the allocator adds to both.
 */
#define ROUTER_ENTRY_COST 64

/*
 * Called for every record the router sends to worker 'worker' (ring r2w),
 * in order. rec is only valid during the call. Returns 0, or -1 when the
 * record could not be kept (the callee logs: the record is lost).
 */
typedef int (*router_emit_fn)(void *arg, unsigned worker, uint16_t type,
			      const struct recw *rec);

/*
 * May the router send more to worker 'worker' now? The retained messages
 * a SUBSCRIBE starts are sent only while it says yes (router_send_retained).
 */
typedef bool (*router_room_fn)(void *arg, unsigned worker);

/*
 * nworkers: 1..IOTD_MAX_WORKERS. cfg must outlive the router; its limits
 * are read at each use (see router_config_changed for a reload). st: NULL
 * keeps everything in memory; otherwise the router rebuilds sessions
 * (online ones keep their connection ids), subscriptions, queues and
 * retained messages from it, emitting nothing, and from then on writes
 * every change into the store's open transaction (st must outlive the
 * router). NULL on ENOMEM or when the store cannot be read (logged).
 */
struct router *router_new(const struct iotd_config *cfg, unsigned nworkers,
			  router_emit_fn emit, void *emit_arg, struct store *st);
/*
 * Frees everything and sets *r to NULL; NULL is fine. Emits nothing and
 * writes nothing: the store keeps what was committed, as after a crash.
 */
void router_free(struct router **r);

/*
 * Commit the changes made since the last commit to the store (one loop
 * turn). 0, or -1 when the store refused them (logged once): the router
 * keeps serving from memory and router_tick() writes the whole state
 * again until the store takes it. 0 without a store.
 */
int router_commit(struct router *r);

/*
 * Handle one record read from ring w2r[worker]. Returns 0 when it was
 * acted on, -1 when it was dropped (malformed, unexpected type, unknown
 * connection; logged once per record type).
 */
int router_handle(struct router *r, unsigned worker, uint16_t type,
		  const void *payload, size_t len);

/*
 * Provenance: a record from ring w2r[worker] may only speak of that
 * worker's connections of its current epoch, and of slots below 'slots'
 * (the connections it can hold). The router process sets both from the
 * supervisor's memory at start and the epoch again at each worker death.
 * Until set, the epoch is 1 and slots are unbounded (unit tests).
 */
void router_set_worker(struct router *r, unsigned worker, uint32_t epoch, uint32_t slots);
/*
 * Worker 'worker' died (IPC_WORKER_DOWN) and every record it wrote was
 * handled: every session on one of its connections of an epoch other than
 * new_epoch goes offline as if its connection had dropped (wills
 * published), CONNECTs it left waiting are dropped, and the worker's
 * records are from then on taken from epoch new_epoch only. Idempotent.
 * Returns the number of sessions closed.
 */
size_t router_worker_down(struct router *r, unsigned worker, uint32_t new_epoch);

/*
 * Advance the router's clock (CLOCK_MONOTONIC milliseconds) and expire
 * persistent sessions absent longer than session_timeout_secs. The clock
 * also stamps sessions going offline, so call it at least once a second.
 * The first tick starts the timeout of sessions an earlier daemon left;
 * a tick after a failed commit rewrites the store.
 */
void router_tick(struct router *r, uint64_t now_ms);

/*
 * A SUBSCRIBE answers SUBACK at once and leaves its retained messages to
 * this: call it once per loop turn, after the turn's records. For each
 * worker whose ring has room (router_set_room; called with emit_arg) it
 * sends more of the retained messages its sessions' new subscriptions are
 * owed, a bounded amount per call (nodes of the retained store visited,
 * bytes), and stops as soon as the room check says no. Returns true when
 * some are left that could be sent now (the call's budget ran out): call
 * it again without waiting. Costs nothing when no subscription is owed any.
 */
bool router_send_retained(struct router *r);
/* The room check router_send_retained() asks; NULL (the default): always room. */
void router_set_room(struct router *r, router_room_fn room);

/*
 * Largest record payload the rings take (0: no limit, the default). A
 * fan-out whose REC_DELIVER would be bigger is split into several records
 * for the same worker.
 */
void router_set_max_record(struct router *r, size_t bytes);
/*
 * The configuration router_new() was given has changed (a reload): take
 * the limits that are not read afresh at each use (the retained store's).
 * The others (max_sessions, max_subscriptions_per_session, the queue
 * limits) are read from cfg at each use; their "limit reached" warnings
 * may come again.
 */
void router_config_changed(struct router *r);

/*
 * The ACL (acl.h) every check is made against, from now on: the router
 * owns it (and frees the one it replaces); NULL: none, everything is
 * allowed. Each session's view is made from its user name (its CONNECT
 * record's, kept with the session in the store) and client id, now for
 * every session and later at each CONNECT. What is checked: each filter
 * of a SUBSCRIBE (0x80 when it could reach nothing readable), each
 * PUBLISH record (write: refused ones are not delivered, retained or
 * queued) and will (write), each delivery, queued message, stored message
 * sent and retained message sent (read, per target); a route is answered
 * "local" only when every target may read the topic. Cached routes are
 * voided (the route generation moves).
 */
void router_set_acl(struct router *r, struct acl *acl);
/*
 * The same from the auth role's bytes (acl_encode), decoded as hostile
 * input within ACL_LIMITS_DEFAULT. 0, or -1 when they do not decode
 * (logged): the ACL in force stays. A router that is to enforce an ACL
 * must have it before its first record, so that nothing passes
 * unchecked: router_proc.c reads no ring until the auth role's has come.
 */
int router_set_acl_bytes(struct router *r, const void *bytes, size_t len);

/*
 * Grants (daemon/router_grants.c): with required set (an ACL is in
 * force), a CONNECT record is taken only when the auth role granted its
 * connection under its user name (router_grant); otherwise it is answered
 * CONNACK 5 (logged). A grant missing when its CONNECT comes is asked for
 * with fetch(arg) (read what the auth role sent: it sent the grant before
 * its verdict, so the grant is there). A token's grant (token set) carries
 * its rules (a token's view, acl_client_encode), which become its
 * session's view, kept with the session in the store; a token's grant
 * without rules leaves its session allowed nothing. Grants no CONNECT
 * takes are forgotten after a minute, and past a bound per worker (twice
 * auth.max_pending, at least 1,024 for all workers together) that
 * worker's oldest first.
 */
typedef void router_grant_fetch_fn(void *arg);
void router_set_grants(struct router *r, bool required, router_grant_fetch_fn *fetch, void *arg);
/*
 * 0, or -1 (logged) when out of memory or when conn is no worker's of
 * this router: the grant is lost, its CONNECT will be refused.
 */
int router_grant(struct router *r, conn_id_t conn, const char *user, size_t ulen, bool token,
		 const void *rules, size_t rlen);

/*
 * The route generation (shm.h: shm_router.route_gen): the router bumps it
 * at every change that can alter where a topic's messages go, and stamps
 * each REC_ROUTE with it. By default a counter of the router's own (unit
 * tests); router_main() points it into shared memory. Setting it bumps it;
 * router_free() leaves it alone.
 */
void router_set_route_gen(struct router *r, _Atomic uint64_t *gen);
uint64_t router_route_gen(const struct router *r);

struct router_stats {
	size_t sessions;        /* online and offline */
	size_t online;
	size_t subscriptions;   /* (filter, session) pairs */
	size_t retained;
	size_t retained_walks;  /* subscriptions still owed retained messages */
	uint64_t queue_drops;   /* messages an offline queue had no room for */
	uint64_t bad_records;   /* records dropped by router_handle */
	/*
	 * What the session queues (offline messages and copies) hold, as
	 * max_queued_bytes_total counts it: topic + payload of each message
	 * once however many queues share it, plus ROUTER_ENTRY_COST per entry and
	 * 4 bytes per subscription identifier an entry carries.
	 */
	size_t queued_bytes_total;
	size_t queued_payloads; /* messages held, each once */
};

void router_get_stats(const struct router *r, struct router_stats *st);

/*
 * Where router_main() keeps a "memory" store, set in the router's process
 * between fork and router_main(): the directory name the supervisor drew
 * once at start (store_memory_name()), and whether a router of this
 * daemon ran before. The first one makes the directory and refuses
 * anything already there; a successor resumes its predecessor's.
 */
void router_set_memory_store(const char *name, bool successor);

#endif
