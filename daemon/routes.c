/*
 * routes.c - a worker's cache of the routes the router told it (routes.h).
 *
 * Owns the cached routes of one worker: topics, their state and, for a
 * local route, its targets; and so the choice, for each message, between
 * delivering it there and sending it to the router (routes_decide). Bounded (ROUTES_MAX entries, ROUTES_MAX_BYTES):
 * a topic without an entry only goes to the router, which is never wrong.
 */
#include <stdlib.h>
#include <string.h>

#include "routes.h"

static bool route_has_topic(const void *item, const void *key)
{
	const struct route *rt = item;

	return hidx_bytes_eq(key, rt->topic, rt->topic_len);
}

static size_t route_size(const struct route *rt)
{
	return sizeof(*rt) + rt->topic_len + rt->n_targets * sizeof(struct route_target);
}

static void route_free(struct route *rt)
{
	free(rt->targets);
	free(rt);
}

void routes_free(struct route_cache *rc)
{
	for (uint32_t i = hidx_slots(&rc->idx); i-- > 0;) {
		struct route *rt = hidx_at(&rc->idx, i);

		if (rt)
			route_free(rt);
	}
	hidx_free(&rc->idx);
	rc->bytes = 0;
}

struct route *routes_find(const struct route_cache *rc, const uint8_t *topic, uint16_t len)
{
	struct hidx_bytes k = { topic, len };

	if (!hidx_count(&rc->idx))
		return NULL;
	return hidx_find(&rc->idx, hidx_hash_bytes(topic, len), route_has_topic, &k);
}

static void route_remove(struct route_cache *rc, struct route *rt)
{
	hidx_del(&rc->idx, rt->hash, rt);
	rc->bytes -= route_size(rt);
	route_free(rt);
}

static bool routes_full(const struct route_cache *rc, uint16_t len)
{
	return hidx_count(&rc->idx) >= ROUTES_MAX ||
	       rc->bytes + sizeof(struct route) + len > ROUTES_MAX_BYTES;
}

/*
 * Remove the entries of other generations: routes no longer valid, asks
 * made before the last change. From the last slot down, each slot looked
 * at again after a removal (see hidx.c); an entry a removal shifts behind
 * the walk is only kept.
 */
static void routes_sweep(struct route_cache *rc, uint64_t gen)
{
	struct route *rt;

	for (uint32_t i = hidx_slots(&rc->idx); i-- > 0;)
		while ((rt = hidx_at(&rc->idx, i)) != NULL && rt->gen != gen)
			route_remove(rc, rt);
	rc->swept = gen + 1;
}

static struct route *route_new(struct route_cache *rc, const uint8_t *topic, uint16_t len,
			       uint64_t gen)
{
	struct route *rt;

	if (routes_full(rc, len) && rc->swept != gen + 1)
		routes_sweep(rc, gen);
	if (routes_full(rc, len))
		return NULL;
	rt = calloc(1, sizeof(*rt) + len);
	if (!rt)
		return NULL;
	rt->hash = hidx_hash_bytes(topic, len);
	rt->topic_len = len;
	memcpy(rt->topic, topic, len);
	if (!hidx_add(&rc->idx, rt->hash, rt)) {
		free(rt);
		return NULL;
	}
	rc->bytes += route_size(rt);
	return rt;
}

static void route_set_targets(struct route_cache *rc, struct route *rt, struct route_target *t,
			      uint32_t n)
{
	rc->bytes -= route_size(rt);
	free(rt->targets);
	rt->targets = t;
	rt->n_targets = n;
	rc->bytes += route_size(rt);
}

/* routes_ask() on the topic's entry rt, or NULL when it has none. */
static uint64_t route_ask(struct route_cache *rc, struct route *rt, const uint8_t *topic,
			  uint16_t len, uint64_t gen)
{
	if (!rt && !(rt = route_new(rc, topic, len, gen)))
		return 0;
	if (rt->kind != ROUTE_ASKED) {
		route_set_targets(rc, rt, NULL, 0);
		rt->kind = ROUTE_ASKED;
	}
	rt->gen = gen;
	rt->ask = ++rc->next_ask;
	return rt->ask;
}

uint64_t routes_ask(struct route_cache *rc, const uint8_t *topic, uint16_t len, uint64_t gen)
{
	return route_ask(rc, routes_find(rc, topic, len), topic, len, gen);
}

enum route_decision routes_decide(struct route_cache *rc, const uint8_t *topic, uint16_t len,
				  uint8_t qos, bool to_router, uint64_t current_gen,
				  const struct route **rt_r, uint64_t *ask)
{
	struct route *rt = routes_find(rc, topic, len);

	if (rt && rt->kind != ROUTE_ASKED && rt->gen == current_gen) {
		if (rt->kind == ROUTE_REMOTE)
			return ROUTE_SEND;
		if (qos < 2 && !to_router) {
			*rt_r = rt;
			return ROUTE_DELIVER_LOCAL;
		}
	}
	*ask = route_ask(rc, rt, topic, len, current_gen);
	return *ask ? ROUTE_SEND_ASK : ROUTE_SEND;
}

bool routes_answer(struct route_cache *rc, const uint8_t *topic, uint16_t len, uint64_t ask,
		   uint64_t gen, uint64_t current_gen, bool local,
		   const struct route_target *targets, uint32_t n_targets)
{
	struct route *rt = routes_find(rc, topic, len);
	struct route_target *t = NULL;

	if (!rt || rt->kind != ROUTE_ASKED || gen != current_gen)
		return false;
	if (!local) {
		/* Nothing is delivered here on a remote route: any answer will do. */
		rt->kind = ROUTE_REMOTE;
		rt->gen = gen;
		return true;
	}
	if (ask != rt->ask)
		return false;
	if (n_targets) {
		t = malloc(n_targets * sizeof(*t));
		if (!t)
			return false;
		memcpy(t, targets, n_targets * sizeof(*t));
	}
	route_set_targets(rc, rt, t, n_targets);
	rt->kind = ROUTE_LOCAL;
	rt->gen = gen;
	return true;
}
