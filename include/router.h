/*
 * router.h - the router's logic, without the process around it.
 *
 * The router owns the session registry, the subscription trie and the
 * retained messages. router_main() (role.h) feeds it the records read from
 * the w2r rings; this interface lets unit tests feed it records directly
 * and capture what it sends back.
 */
#ifndef IOTD_ROUTER_H
#define IOTD_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "rec.h"

struct router;

/*
 * Called for every record the router sends to worker 'worker' (ring r2w),
 * in order. rec is only valid during the call. Returns 0, or -1 when the
 * record could not be kept (the callee logs: the record is lost).
 */
typedef int (*router_emit_fn)(void *arg, unsigned worker, uint16_t type,
			      const struct recw *rec);

/* nworkers: 1..IOTD_MAX_WORKERS. cfg must outlive the router. NULL on ENOMEM. */
struct router *router_new(const struct iotd_config *cfg, unsigned nworkers,
			  router_emit_fn emit, void *emit_arg);
/* Frees everything and sets *r to NULL; NULL is fine. Emits nothing. */
void router_free(struct router **r);

/*
 * Handle one record read from ring w2r[worker]. Returns 0 when it was
 * acted on, -1 when it was dropped (malformed, unexpected type, unknown
 * connection; logged once per record type).
 */
int router_handle(struct router *r, unsigned worker, uint16_t type,
		  const void *payload, size_t len);

/*
 * Advance the router's clock (CLOCK_MONOTONIC milliseconds) and expire
 * persistent sessions absent longer than session_timeout_secs. The clock
 * also stamps sessions going offline, so call it at least once a second.
 */
void router_tick(struct router *r, uint64_t now_ms);

/*
 * Largest record payload the rings take (0: no limit, the default). A
 * fan-out whose REC_DELIVER would be bigger is split into several records
 * for the same worker.
 */
void router_set_max_record(struct router *r, size_t bytes);

struct router_stats {
	size_t sessions;        /* online and offline */
	size_t online;
	size_t subscriptions;   /* (filter, session) pairs */
	size_t retained;
	uint64_t queue_drops;   /* messages an offline queue had no room for */
	uint64_t bad_records;   /* records dropped by router_handle */
};

void router_get_stats(const struct router *r, struct router_stats *st);

#endif
