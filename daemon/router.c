/*
 * router.c - the router role: the one place that knows every session,
 * every subscription and every retained message.
 *
 * Workers own the connections: they tell the router what happened (rec.h,
 * rings w2r[i]) and the router tells them what to send (rings r2w[i]).
 * Two layers. The logic (include/router.h) takes one record at a time and
 * emits records through a callback, so unit tests run it without
 * processes; router_main() (router_proc.c) wires it to the rings, the
 * eventfds, a 1 s timer, the supervisor's control socket and the store.
 * Every change the logic makes is written to the store (store.h) in the
 * loop turn's transaction, so a restarted router rebuilds it (docs/arch.md,
 * "Storage").
 *
 * The logic is split by concern, over state declared in router_int.h:
 * this file makes and frees the router and keeps its clock, its commit
 * and its settings; router_session.c, router_queue.c, router_publish.c,
 * router_records.c and router_load.c hold the rest.
 */
#include <stdlib.h>

#include "router_int.h"
#include "store.h"
#include "topic.h"

struct router *router_new(const struct iotd_config *cfg, unsigned nworkers,
			  router_emit_fn emit, void *emit_arg, struct store *st)
{
	struct router *r;
	long limit = cfg->retained_message_limit;

	if (!nworkers || nworkers > IOTD_MAX_WORKERS || !emit)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->cfg = cfg;
	r->nworkers = nworkers;
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++) {
		r->worker_epoch[i] = 1;
		r->worker_slots[i] = 1u << 24;
	}
	r->emit = emit;
	r->emit_arg = emit_arg;
	r->next_sid = 1;
	r->route_gen = &r->route_gen_own;
	recw_init(&r->out);
	recw_init(&r->ack);
	router_publish_scratch_init(&r->pub);
	r->trie = topic_trie_new();
	r->share_trie = topic_trie_new();
	r->retained = retain_new(limit > 0 ? (size_t)limit : 0,
				 cfg->retained_bytes_limit > 0 ? (size_t)cfg->retained_bytes_limit : 0);
	if (!r->trie || !r->share_trie || !r->retained || (st && router_load(r, st) < 0)) {
		router_free(&r);
		return NULL;
	}
	/* Only now: loading must not write back what it reads. */
	r->st = st;
	return r;
}

void router_free(struct router **rp)
{
	struct router *r = rp ? *rp : NULL;

	if (!r)
		return;
	/* The store keeps what was committed: freeing memory is not ending sessions. */
	r->st = NULL;
	/* Nor is it a change of where messages go: the route generation stays as it is. */
	r->route_gen = &r->route_gen_own;
	router_sessions_free(r);
	router_grants_free(r);
	acl_free(r->acl);            /* after the views, which borrow its rules */
	router_touched_clear(r);
	router_share_free(r);        /* after the sessions: groups only point at them */
	topic_trie_free(&r->trie);
	retain_free(&r->retained);
	recw_free(&r->out);
	recw_free(&r->ack);
	router_publish_scratch_free(&r->pub);
	free(r);
	*rp = NULL;
}

int router_commit(struct router *r)
{
	if (!r->st)
		return 0;
	if (store_commit(r->st) < 0)
		return -1;
	router_touched_clear(r);
	return 0;
}

void router_tick(struct router *r, uint64_t now_ms)
{
	r->now_ms = now_ms;
	router_held_check(r);
	if (r->restamp)
		router_restamp(r);
	router_resync_due(r);
	router_sessions_expire(r);
	router_grants_expire(r);
	router_retained_expire(r);
}

void router_set_room(struct router *r, router_room_fn room)
{
	r->room = room;
}

void router_set_max_record(struct router *r, size_t bytes)
{
	r->max_record = bytes;
}

/* Lowered limits evict nothing; the "store full" warning may come again. */
void router_config_changed(struct router *r)
{
	const struct iotd_config *cfg = r->cfg;

	retain_set_limits(r->retained,
			  cfg->retained_message_limit > 0 ? (size_t)cfg->retained_message_limit : 0,
			  cfg->retained_bytes_limit > 0 ? (size_t)cfg->retained_bytes_limit : 0);
	r->warned_retain_full = false;
	r->warned_sessions_full = false;
	router_held_check(r);
}

/*
 * Every session's view is made again before the old ACL goes (views
 * borrow its rules), and every cached route is void: a worker asks again,
 * and gets "local" only where the new ACL lets every target read.
 */
void router_set_acl(struct router *r, struct acl *acl)
{
	struct acl *old = r->acl;
	struct session *s;

	r->acl = acl;
	for (uint32_t i = hidx_slots(&r->by_sid); i-- > 0;)
		if ((s = hidx_at(&r->by_sid, i)))
			session_view_make(r, s);
	acl_free(old);
	router_routes_changed(r);
}

int router_set_acl_bytes(struct router *r, const void *bytes, size_t len)
{
	static const struct acl_limits lim = ACL_LIMITS_DEFAULT;
	struct acl *acl;
	char err[256];

	if (acl_decode(bytes, len, &lim, &acl, err, sizeof(err)) < 0) {
		log_error("router: the ACL sent to it is refused (%s): the one in force stays", err);
		return -1;
	}
	router_set_acl(r, acl);
	return 0;
}

void router_set_route_gen(struct router *r, _Atomic uint64_t *gen)
{
	r->route_gen = gen ? gen : &r->route_gen_own;
	/* Routes cached before this router (an earlier one's) are void too. */
	router_routes_changed(r);
}

uint64_t router_route_gen(const struct router *r)
{
	return atomic_load_explicit(r->route_gen, memory_order_relaxed);
}

void router_get_stats(const struct router *r, struct router_stats *st)
{
	st->sessions = hidx_count(&r->by_sid);
	st->online = r->n_online;
	st->subscriptions = topic_trie_count(r->trie);
	st->retained = retain_count(r->retained);
	st->retained_walks = r->n_cursors;
	st->queue_drops = r->queue_drops;
	st->bad_records = r->bad_records;
	st->queued_bytes_total = r->held_bytes;
	st->queued_payloads = r->held_bodies;
}
