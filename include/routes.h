/*
 * routes.h - a worker's cache of the routes the router told it.
 *
 * When every session a topic matches is a clean session online on the
 * publisher's own worker, that worker can deliver the topic's messages
 * itself: nothing to copy or queue, no other worker involved, and one
 * process wake-up per message instead of three. The worker asks the
 * router for a topic's route by flagging a PUBLISH it sends
 * (REC_PUB_ASK); the router answers with REC_ROUTE after that message's
 * deliveries. A route holds while the shared route generation is the one
 * it was answered at (shm.h, shm_router.route_gen).
 *
 * Order: a route becomes usable only by the answer to the last message of
 * its topic the worker sent to the router. The router wrote that
 * message's deliveries (and those of every earlier one) into this
 * worker's ring before the answer, so by the time the worker reads the
 * answer it has handed them all to its connections, and a message it
 * delivers itself from then on cannot overtake them.
 */
#ifndef IOTD_ROUTES_H
#define IOTD_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hidx.h"
#include "iotd.h"

enum route_kind {
	ROUTE_ASKED,      /* asked; messages go to the router until answered */
	ROUTE_LOCAL,      /* delivered by this worker to targets[] */
	ROUTE_REMOTE,     /* the router delivers; no need to ask again at this generation */
};

struct route_target {
	conn_id_t conn;
	uint8_t qos;      /* granted: a message goes out at min(its QoS, this) */
};

struct route {
	uint64_t gen;     /* LOCAL, REMOTE: valid while the route generation is this; ASKED: asked at */
	uint64_t ask;     /* ASKED: the last ask sent for this topic */
	uint32_t hash;
	uint32_t n_targets;
	uint16_t topic_len;
	uint8_t kind;
	struct route_target *targets;
	char topic[];
};

struct route_cache {
	struct hidx idx;
	size_t bytes;     /* held by the routes, for the bound below */
	uint64_t next_ask;
	uint64_t swept;   /* 1 + the generation of the last sweep; 0: none yet */
};

/*
 * Bounds. A full cache takes a new topic only after a sweep has removed
 * the entries of older generations (at most one sweep a generation);
 * failing that the topic is not cached and its messages go to the router
 * without asking. So a worker that sees more topics than this costs the
 * router no answer per message, and the topics it caches stay cached.
 */
#define ROUTES_MAX 4096
#define ROUTES_MAX_BYTES (1u << 20)

/* A zeroed struct route_cache is empty. */
void routes_free(struct route_cache *rc);

struct route *routes_find(const struct route_cache *rc, const uint8_t *topic, uint16_t len);

/*
 * A message of this topic goes to the router asking for its route: make
 * (or turn) the topic's entry ROUTE_ASKED and return the ask to send, or
 * 0 when the cache is full (see above) or out of memory (the message goes
 * unflagged). gen: the current route generation.
 */
uint64_t routes_ask(struct route_cache *rc, const uint8_t *topic, uint16_t len, uint64_t gen);

enum route_decision {
	ROUTE_DELIVER_LOCAL, /* deliver to *rt's targets here; the router is not involved */
	ROUTE_SEND,          /* send it to the router as it is */
	ROUTE_SEND_ASK,      /* send it to the router carrying *ask */
};

/*
 * Where a message of this topic goes at route generation current_gen. A
 * valid local route delivers it here, a valid remote one sends it to the
 * router as it is; any other topic goes to the router asking for its route
 * (routes_ask; ROUTE_SEND when the cache cannot hold the ask). QoS 2
 * messages and those the caller says must reach the router (to_router:
 * retained ones, which it keeps, and under an ACL those of a publisher the
 * worker cannot check) always go to the router (which routes QoS 2 ones
 * once), and take a local route back to asking until the router answers
 * again, so that later messages delivered here cannot overtake them. *rt
 * is set for ROUTE_DELIVER_LOCAL only, *ask for ROUTE_SEND_ASK.
 */
enum route_decision routes_decide(struct route_cache *rc, const uint8_t *topic, uint16_t len,
				  uint8_t qos, bool to_router, uint64_t current_gen,
				  const struct route **rt, uint64_t *ask);

/*
 * The router's answer. Taken when the topic still waits for an answer
 * and gen is the current generation; a local one only when it answers
 * the last ask. targets: n of them, read by the caller from the record
 * (n_targets 0 for a remote answer). Returns true when taken.
 */
bool routes_answer(struct route_cache *rc, const uint8_t *topic, uint16_t len, uint64_t ask,
		   uint64_t gen, uint64_t current_gen, bool local,
		   const struct route_target *targets, uint32_t n_targets);

#endif
