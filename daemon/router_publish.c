/*
 * router_publish.c - where messages go: subscriptions, the routing of
 * each publish, retained messages, and the routes workers cache.
 *
 * Owns the subscription trie (each session's filters are its
 * session_sub), the retained store, and the walks over it that send a new
 * subscription its retained messages a bounded amount per loop turn
 * (router_send_retained). router_publish() matches a topic, builds one
 * REC_DELIVER per worker that has targets, queues for sessions that are
 * offline or being taken over, and returns what it matched: from that
 * router_answer_route() tells the worker that asked whether it may deliver
 * the topic's messages itself (REC_ROUTE; docs/arch.md, "Local delivery").
 * Under an ACL every target, live or retained, is checked for reading
 * (docs/arch.md, "Access control").
 */
#include <stdlib.h>
#include <string.h>

#include "router_int.h"
#include "mqtt5.h"
#include "mqtt.h"
#include "store.h"
#include "topic.h"

#define ROUTER_ROUTE_MAX 1024        /* targets a REC_ROUTE names at most: a larger fan-out stays with the router */
/*
 * Retained messages owed to new subscriptions go out a bounded amount per
 * loop turn and worker (router_send_retained): nodes of the retained tree
 * visited, bytes sent, and the nodes one walk takes before the next walk's
 * turn. A turn's time stays small however many or big they are.
 */
#define ROUTER_RETAINED_STEPS 4096
#define ROUTER_RETAINED_BYTES (2u << 20)
#define ROUTER_RETAINED_SLICE 256
/* Nodes of the retained tree the 1 s sweep for expired messages visits per tick. */
#define ROUTER_RETAINED_SWEEP 16384

static void router_cursor_drop(struct router *r, struct session_sub *sub);

/* ---- subscriptions ----------------------------------------------------- */

/*
 * Put the subscription where publishes find it: the trie for a plain
 * one (with its options, and ROUTER_OPT_SUB_ID when it has an
 * identifier), its group for a shared one (parts: its name and filter;
 * the QoS its options grant). 0, or -1 when out of memory.
 */
static int router_sub_attach(struct router *r, struct session *s, const char *filter,
			     uint16_t len, const struct topic_share_parts *parts, uint8_t opts,
			     uint32_t sub_id)
{
	if (parts)
		return router_share_join(r, s, parts, MQTT5_SUB_QOS(opts), sub_id);
	return topic_trie_subscribe(r->trie, filter, len, s,
				    (uint8_t)(opts | (sub_id ? ROUTER_OPT_SUB_ID : 0))) < 0 ? -1 : 0;
}

static void router_sub_detach(struct router *r, struct session *s, struct session_sub *sub)
{
	if (sub->shared)
		router_share_leave(r, s, sub->filter, sub->len);
	else
		topic_trie_unsubscribe(r->trie, sub->filter, sub->len, s);
}

/* Options a subscription may hold: a QoS up to 2, retain handling up to 2, nothing else. */
static bool sub_opts_valid(uint8_t opts)
{
	return MQTT5_SUB_QOS(opts) <= 2 && MQTT5_SUB_RETAIN_HANDLING(opts) <= 2 &&
	       !(opts & 0xC0);
}

uint8_t router_subscribe_one(struct router *r, struct session *s, const char *filter,
			     uint16_t len, uint8_t opts, uint32_t sub_id)
{
	uint8_t qos = MQTT5_SUB_QOS(opts);
	struct session_sub *sub;
	struct topic_share_parts parts;
	enum topic_share share = topic_share_parse(filter, len, &parts);
	bool added = false;

	if (!sub_opts_valid(opts) || !len || !topic_filter_valid(filter, len, 0, 0) ||
	    share == TOPIC_SHARE_BAD || sub_id > MQTT5_SUB_ID_MAX)
		return ROUTER_SUBACK_FAILURE;
	HASH_FIND(hh, s->subs, filter, len, sub);
	if (sub && sub->opts == opts && sub->sub_id == sub_id)
		return qos;               /* the same again (a filter repeated in one SUBSCRIBE): nothing changes */
	if (!sub) {
		sub = malloc(sizeof(*sub) + (size_t)len + 1);
		if (!sub)
			goto nomem;
		sub->cur = NULL;
		sub->fresh = true;
		memcpy(sub->filter, filter, len);
		sub->filter[len] = '\0';
		sub->len = len;
		sub->shared = share == TOPIC_SHARE_OK;
		added = true;
	}
	if (router_sub_attach(r, s, filter, len, sub->shared ? &parts : NULL, opts, sub_id) < 0)
		goto nomem_free;
	if (added) {
		HASH_ADD_KEYPTR(hh, s->subs, sub->filter, sub->len, sub);
		if (!sub->hh.tbl) {
			router_sub_detach(r, s, sub);
			goto nomem_free;
		}
	}
	sub->opts = opts;
	sub->sub_id = sub_id;
	router_routes_changed(r);
	if (r->st)
		store_sub_put(r->st, s->sid, sub->filter, sub->len, opts, sub_id);
	log_debug("router: session %u subscribed to '%s' options 0x%02x identifier %u", s->sid,
		  sub->filter, opts, sub_id);
	return qos;
nomem_free:
	if (added)
		free(sub);
nomem:
	log_client(LOG_LVL_ERROR, s->client_id, session_remote(s), "out of memory: subscription refused");
	return ROUTER_SUBACK_FAILURE;
}

/*
 * A filter the session does not hold yet, past max_subscriptions_per_session:
 * refused (0x80 in SUBACK). One it holds may always be subscribed again.
 */
bool router_subscription_refused(struct session *s, const struct iotd_config *cfg,
				 const char *filter, uint16_t len)
{
	struct session_sub *sub;
	long max = cfg->max_subscriptions_per_session;

	if (max <= 0 || HASH_COUNT(s->subs) < (size_t)max)
		return false;
	HASH_FIND(hh, s->subs, filter, len, sub);
	if (sub)
		return false;
	if (!s->subs_warned)
		log_client(LOG_LVL_WARN, s->client_id, session_remote(s),
			   "max_subscriptions_per_session (%ld) reached: new filters refused (logged once per session)",
			   max);
	s->subs_warned = true;
	return true;
}

bool router_unsubscribe_one(struct router *r, struct session *s, const char *filter,
			    uint16_t len)
{
	struct session_sub *sub;

	HASH_FIND(hh, s->subs, filter, len, sub);
	if (!sub)
		return false;
	if (r->st)
		store_sub_del(r->st, s->sid, sub->filter, sub->len);
	router_cursor_drop(r, sub);
	router_sub_detach(r, s, sub);
	HASH_DEL(s->subs, sub);
	free(sub);
	router_routes_changed(r);
	return true;
}

void session_unsubscribe_all(struct router *r, struct session *s)
{
	struct session_sub *sub, *tmp;

	if (s->subs)
		router_routes_changed(r);
	HASH_ITER(hh, s->subs, sub, tmp) {
		router_cursor_drop(r, sub);
		router_sub_detach(r, s, sub);
		HASH_DEL(s->subs, sub);
		free(sub);
	}
}

/* ---- retained messages ------------------------------------------------- */

static void router_persist_retained(struct router *r, const struct router_msg *m, int rc)
{
	if (!r->st || (rc != RETAIN_STORED && rc != RETAIN_CLEARED))
		return;
	router_touch_retained(r, m->topic, m->topic_len);
	if (rc == RETAIN_STORED)
		store_retained_put(r->st, m->topic, m->topic_len, m->qos, m->payload,
				   m->payload_len,
				   &(struct store_v5){ m->props, m->props_len, m->expires_at });
	else
		store_retained_del(r->st, m->topic, m->topic_len);
}

static void router_retain(struct router *r, const struct router_msg *m)
{
	const struct retained in = {
		.topic = m->topic, .topic_len = m->topic_len, .payload = m->payload,
		.payload_len = m->payload_len, .props = m->props, .props_len = m->props_len,
		.expires_at = m->expires_at, .qos = m->qos,
	};
	int rc = retain_put_msg(r->retained, &in);

	router_persist_retained(r, m, rc);
	switch (rc) {
	case RETAIN_FULL:
		if (!r->warned_retain_full)
			log_warn("router: retained store full (%zu topics): new retained topics are not kept",
				 retain_count(r->retained));
		r->warned_retain_full = true;
		break;
	case RETAIN_NOMEM:
		log_error("router: out of memory: retained message on '%.*s' not kept",
			  (int)m->topic_len, m->topic);
		break;
	case RETAIN_CLEARED:
		/* Room again: the next time it fills up deserves a warning of its own. */
		r->warned_retain_full = false;
		break;
	default:
		break;
	}
}

/* ---- publishing -------------------------------------------------------- */

void router_publish_scratch_init(struct router_publish_scratch *pub)
{
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		recw_init(&pub->deliver[i]);
}

void router_publish_scratch_free(struct router_publish_scratch *pub)
{
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		recw_free(&pub->deliver[i]);
	free(pub->targets);
	pub->targets = NULL;
	pub->cap_targets = 0;
}

static inline void router_deliver_end(struct router *r, unsigned worker)
{
	struct router_publish_scratch *pub = &r->pub;
	struct recw *w = &pub->deliver[worker];

	rec_deliver_end(w, pub->deliver_noff[worker], pub->deliver_n[worker]);
	router_emit(r, worker, REC_DELIVER, w);
	pub->deliver_n[worker] = 0;
}

/*
 * One more target of the message whose head is d, in its worker's
 * REC_DELIVER; ids: the identifiers it carries, or NULL.
 */
static void router_deliver_add(struct router *r, const struct rec_deliver *d,
			       const struct session *s, uint8_t qos, bool retain, uint64_t copy,
			       const struct router_sub_ids *ids)
{
	struct router_publish_scratch *pub = &r->pub;
	unsigned worker = conn_id_worker(s->conn);
	struct recw *w = &pub->deliver[worker];
	const struct rec_target t = { .conn = s->conn, .sid = s->sid, .qos = qos, .copy = copy,
				      .retain = retain, .n_sub_ids = ids ? ids->n : 0,
				      .sub_ids = ids ? ids->id : NULL };

	/* A fan-out too big for one ring record goes out in several. */
	if (pub->deliver_n[worker] && r->max_record && w->len + rec_target_size(&t) > r->max_record)
		router_deliver_end(r, worker);
	if (!pub->deliver_n[worker])
		pub->deliver_noff[worker] = rec_deliver_begin(w, d);
	rec_deliver_add(w, &t);
	pub->deliver_n[worker]++;
}

static void router_deliver_flush(struct router *r)
{
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->pub.deliver_n[i])
			router_deliver_end(r, i);
}

static bool router_grow_targets(struct router_publish_scratch *pub)
{
	size_t cap = pub->cap_targets ? pub->cap_targets * 2 : 64;
	struct session **t = reallocarray(pub->targets, cap, sizeof(*t));

	if (!t)
		return false;
	pub->targets = t;
	pub->cap_targets = cap;
	return true;
}

/* A match in progress: the targets so far are in r->pub.targets; from: the publisher's session. */
struct router_match_walk {
	struct router *r;
	const struct session *from;
	size_t n;
	bool incomplete;
	bool options;
};

/* opts: the matching subscription's (QoS and MQTT 5 options), as the trie holds them. */
static void router_match_cb(void *subscriber, uint8_t opts, void *arg)
{
	struct router_match_walk *mw = arg;
	struct router_publish_scratch *pub = &mw->r->pub;
	struct session *s = subscriber;
	uint8_t qos = MQTT5_SUB_QOS(opts) |
		      (opts & MQTT5_SUB_RETAIN_AS_PUBLISHED ? SESSION_RAP : 0) |
		      (opts & ROUTER_OPT_SUB_ID ? SESSION_SUB_IDS : 0);

	if (opts & (MQTT5_SUB_NO_LOCAL | MQTT5_SUB_RETAIN_AS_PUBLISHED | ROUTER_OPT_SUB_ID)) {
		mw->options = true;
		if ((opts & MQTT5_SUB_NO_LOCAL) && s == mw->from)
			return;           /* [MQTT-3.8.3-3] */
	}
	if (s->stamp == pub->stamp) {
		s->granted = (uint8_t)(MAX(SESSION_GRANTED_QOS(s->granted), SESSION_GRANTED_QOS(qos)) |
				       ((s->granted | qos) & (SESSION_RAP | SESSION_SUB_IDS)));
		return;
	}
	if (mw->n == pub->cap_targets && !router_grow_targets(pub)) {
		mw->incomplete = true;
		if (!mw->r->warned_targets)
			log_error("router: out of memory: a message misses some subscribers");
		mw->r->warned_targets = true;
		return;
	}
	s->stamp = pub->stamp;
	s->granted = qos;
	pub->targets[mw->n++] = s;
}

/*
 * The identifiers of s's plain subscriptions that match m (one in the
 * trie had one: SESSION_SUB_IDS), in *ids, the first
 * REC_TARGET_SUB_IDS_MAX of them. Only sessions that gave identifiers
 * pay for this walk of their subscriptions.
 */
static void router_sub_ids_of(const struct session *s, const struct router_msg *m,
			      struct router_sub_ids *ids)
{
	const struct session_sub *sub, *tmp;

	ids->n = 0;
	HASH_ITER(hh, s->subs, sub, tmp) {
		if (ids->n == REC_TARGET_SUB_IDS_MAX)
			break;
		if (sub->sub_id == 0 || sub->shared ||
		    ((sub->opts & MQTT5_SUB_NO_LOCAL) && s == m->from) ||
		    !topic_matches(sub->filter, sub->len, m->topic, m->topic_len))
			continue;
		ids->id[ids->n++] = sub->sub_id;
	}
}

/*
 * m at qos to session s, sharing *body: into the REC_DELIVER of s's
 * worker while s is online (retain: the flag it goes out with, retain as
 * published; ids: the subscription identifiers it carries, or NULL), else
 * into its queue when it keeps one.
 * shared: through a shared subscription, which keeps a copy even for a
 * clean session (router_share_reroute).
 */
static void router_deliver_one(struct router *r, const struct rec_deliver *head,
			       struct session *s, uint8_t qos, bool retain,
			       const struct router_sub_ids *ids, const struct router_msg *m,
			       struct msg_body **body, bool shared)
{
	/* What this session keeps of it: its QoS, retain flag and identifiers, the rest as published. */
	struct router_msg qm = *m;

	qm.qos = qos;
	qm.retain = retain;
	qm.n_sub_ids = ids ? ids->n : 0;
	qm.sub_ids = ids ? ids->id : NULL;

	if (s->online && !s->pending)
		router_deliver_add(r, head, s, qos, retain,
				   session_copy_new(r, s, 0, MSG_QUEUED, &qm, body, shared), ids);
	else if ((qos > 0 && (!s->clean || s->online)) ||
		 (qos == 0 && !s->clean && !s->online && r->cfg->queue_qos0_messages))
		/* Offline persistent, or taken over: the next connection gets it. */
		session_enqueue(r, s, false, 0, MSG_QUEUED, &qm, body);
}

/* m to the one member of group g share_pick() chooses; except: see there. */
static void router_share_deliver(struct router *r, const struct rec_deliver *head,
				 struct share_group *g, const struct router_msg *m,
				 const struct session *except, struct msg_body **body)
{
	uint8_t granted;
	struct router_sub_ids ids = { .n = 1 };
	struct session *s = share_pick(r, g, m, except, &granted, &ids.id[0]);

	if (s)
		router_deliver_one(r, head, s, MIN(m->qos, granted), false, ids.id[0] ? &ids : NULL,
				   m, body, true);
}

static struct rec_deliver router_deliver_head(const struct router_msg *m)
{
	/* Retain is set only on deliveries caused by a new subscription [MQTT-3.3.1-9]. */
	return (struct rec_deliver){
		.qos = m->qos,
		.topic = { (const uint8_t *)m->topic, m->topic_len },
		.payload = { m->payload, m->payload_len },
		.retain = 0,
		.props = { m->props, m->props_len },
		.expires_at = m->expires_at,
	};
}

void router_share_deliver_one(struct router *r, struct share_group *g,
			      const struct router_msg *m, const struct session *except,
			      struct msg_body *body)
{
	const struct rec_deliver head = router_deliver_head(m);

	router_share_deliver(r, &head, g, m, except, &body);
	msg_body_discard(body);
	router_deliver_flush(r);
}

/* The groups a publish matches, each giving it to one member. */
struct router_share_walk {
	struct router *r;
	const struct rec_deliver *head;
	const struct router_msg *m;
	struct msg_body **body;
	bool matched;
};

static void router_share_match_cb(void *group, uint8_t qos, void *arg)
{
	struct router_share_walk *sw = arg;

	(void)qos;
	sw->matched = true;
	router_share_deliver(sw->r, sw->head, group, sw->m, NULL, sw->body);
}

/*
 * Route a message to every session subscribed to its topic, and to one
 * member of each shared subscription's group it matches. Returns what
 * matched: the caller's, until the next publish.
 */
struct router_match router_publish(struct router *r, const struct router_msg *m)
{
	struct router_match_walk mw = { .r = r, .from = m->from };
	const struct rec_deliver head = router_deliver_head(m);  /* of each REC_DELIVER it makes */
	struct msg_body *body = NULL;    /* held once by every queue the message enters */
	struct router_share_walk sw = { r, &head, m, &body, false };
	struct session *const *targets;

	if (m->retain)
		router_retain(r, m);

	r->pub.stamp++;
	topic_trie_match(r->trie, m->topic, m->topic_len, router_match_cb, &mw);
	targets = r->pub.targets;
	for (size_t i = 0; i < mw.n; i++) {
		struct session *s = targets[i];
		uint8_t qos = MIN(m->qos, SESSION_GRANTED_QOS(s->granted));
		bool retain = m->retain && (s->granted & SESSION_RAP);
		struct router_sub_ids ids;

		if (!router_acl_allows(r, s, m->topic, m->topic_len, ACL_READ))
			continue;
		if (s->granted & SESSION_SUB_IDS)
			router_sub_ids_of(s, m, &ids);
		router_deliver_one(r, &head, s, qos, retain,
				   s->granted & SESSION_SUB_IDS ? &ids : NULL, m, &body, false);
	}
	if (r->shares)
		topic_trie_match(r->share_trie, m->topic, m->topic_len, router_share_match_cb, &sw);
	msg_body_discard(body);
	router_deliver_flush(r);
	log_debug("router: '%.*s' qos %u to %zu sessions", (int)m->topic_len, m->topic, m->qos,
		  mw.n);
	return (struct router_match){ targets, mw.n, mw.incomplete, sw.matched, mw.options };
}

/* ---- route answers ----------------------------------------------------- */

/*
 * Can the worker that asked deliver the topic's messages itself? Only
 * when the match (router_publish) found no shared subscription (one
 * member each, chosen here) and nothing but clean sessions online on that worker, each of which the ACL lets read the topic: they need no
 * copy, no queue, no other worker and no check the worker cannot make.
 * Anything else stays with the router, as does a message whose publish
 * was refused (match NULL).
 */
static bool router_route_local(const struct router *r, const struct router_match *match,
			       unsigned worker, const struct router_msg *m)
{
	/* Per-target differences (no local, retain as published, identifiers) are the router's to make. */
	if (!match || match->incomplete || match->shared || match->options ||
	    match->n > ROUTER_ROUTE_MAX)
		return false;
	for (size_t i = 0; i < match->n; i++) {
		const struct session *s = match->targets[i];

		if (!s->online || s->pending || !s->clean || conn_id_worker(s->conn) != worker ||
		    !router_acl_allows(r, s, m->topic, m->topic_len, ACL_READ))
			return false;
	}
	return true;
}

static void router_route_record(const struct router *r, struct recw *w, uint64_t ask,
				const struct router_msg *m, const struct router_match *match,
				bool local)
{
	const struct rec_route x = {
		.ask = ask,
		.gen = atomic_load_explicit(r->route_gen, memory_order_relaxed),
		.topic = { (const uint8_t *)m->topic, m->topic_len },
		.local = local,
	};
	size_t count_off = rec_route_begin(w, &x);
	size_t n = local ? match->n : 0;

	for (size_t i = 0; i < n; i++)
		rec_route_add(w, &(struct rec_route_target){
			match->targets[i]->conn, SESSION_GRANTED_QOS(match->targets[i]->granted) });
	rec_route_end(w, count_off, (uint32_t)n);
}

/*
 * Answer a REC_PUBLISH that asked for its topic's route (rec.h REC_ROUTE),
 * from what its router_publish() matched; match NULL: it was not routed
 * (the ACL refused it), and the answer is "remote".
 */
void router_answer_route(struct router *r, unsigned worker, uint64_t ask,
			 const struct router_msg *m, const struct router_match *match)
{
	bool local = router_route_local(r, match, worker, m);

	router_route_record(r, &r->out, ask, m, match, local);
	/* An answer too big for the ring would be dropped and asked for again and again. */
	if (local && r->max_record && r->out.len > r->max_record)
		router_route_record(r, &r->out, ask, m, match, false);
	router_emit(r, worker, REC_ROUTE, &r->out);
}

/* ---- retained messages owed to new subscriptions ----------------------- */

static bool router_room(struct router *r, unsigned worker)
{
	return !r->room || r->room(r->emit_arg, worker);
}

static void router_cursor_unlink(struct router *r, struct router_cursor *c)
{
	unsigned w = conn_id_worker(c->s->conn);

	if (c->prev)
		c->prev->next = c->next;
	else
		r->cur_head[w] = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		r->cur_tail[w] = c->prev;
	c->prev = c->next = NULL;
}

static void router_cursor_link(struct router *r, struct router_cursor *c)
{
	unsigned w = conn_id_worker(c->s->conn);

	c->next = NULL;
	c->prev = r->cur_tail[w];
	if (c->prev)
		c->prev->next = c;
	else
		r->cur_head[w] = c;
	r->cur_tail[w] = c;
}

/* The subscription owes nothing more (all sent, or it or its connection is gone). */
static void router_cursor_drop(struct router *r, struct session_sub *sub)
{
	struct router_cursor *c = sub->cur;

	if (!c)
		return;
	router_cursor_unlink(r, c);
	retain_cursor_stop(r->retained, &c->walk);
	c->s->n_cursors--;
	r->n_cursors--;
	sub->cur = NULL;
	free(c);
}

/* The connection stops taking retained messages: it closes or is taken over. */
void session_cursors_drop(struct router *r, struct session *s)
{
	struct session_sub *sub, *tmp;

	if (!s->n_cursors)
		return;
	HASH_ITER(hh, s->subs, sub, tmp)
		router_cursor_drop(r, sub);
}

/*
 * The subscription was just made or made again: it is owed every message
 * retained now on a topic it matches [MQTT-3.3.1-6, MQTT-3.8.4-3], from
 * the start of the store, even when an earlier walk of it had not ended.
 */
void router_cursor_start(struct router *r, struct session *s, struct session_sub *sub)
{
	struct router_cursor *c = sub->cur;

	if (sub->shared)
		return;                  /* no retained messages on a shared subscription [MQTT-4.8.2] */
	if (c) {
		retain_cursor_stop(r->retained, &c->walk);
	} else {
		c = calloc(1, sizeof(*c));
		if (!c) {
			log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
				   "out of memory: retained messages of '%s' not sent", sub->filter);
			return;
		}
		c->s = s;
		c->sub = sub;
		sub->cur = c;
		s->n_cursors++;
		r->n_cursors++;
		router_cursor_link(r, c);
	}
	retain_cursor_start(r->retained, &c->walk, sub->filter, sub->len);
}

struct router_retained_send {
	struct router *r;
	struct router_cursor *c;
	unsigned worker;
	size_t bytes;                /* left in this turn's budget for the worker */
	uint64_t now;                /* wall clock: retained messages past their expiry are not sent */
};

/*
 * One retained message to the cursor's subscriber, unless its expiry
 * passed (the sweep removes it soon); false: the turn's budget or the
 * ring is full.
 */
static bool router_retained_cb(const struct retained *m, void *arg)
{
	struct router_retained_send *ctx = arg;
	const struct session *s = ctx->c->s;
	struct recw *w = &ctx->r->out;
	/* What the record costs the turn, sent or not: its head and one target. */
	size_t cost = REC_DELIVER_FIXED_BYTES + m->topic_len + m->payload_len + m->props_len +
		      REC_TARGET_BYTES;

	if (m->topic_len <= UINT16_MAX && m->payload_len <= UINT32_MAX &&
	    !msg_expired(m->expires_at, ctx->now) &&
	    router_acl_allows(ctx->r, s, m->topic, m->topic_len, ACL_READ)) {
		const struct rec_deliver d = {
			.qos = m->qos,
			.topic = { (const uint8_t *)m->topic, (uint16_t)m->topic_len },
			.payload = { m->payload, (uint32_t)m->payload_len },
			.retain = 1,
			.props = { m->props, m->props_len },
			.expires_at = m->expires_at,
		};
		const struct session_sub *sub = ctx->c->sub;
		const struct rec_target t = {
			.conn = s->conn, .sid = s->sid, .qos = MIN(m->qos, MQTT5_SUB_QOS(sub->opts)),
			.n_sub_ids = sub->sub_id ? 1 : 0, .sub_ids = &sub->sub_id,
		};
		size_t count_off = rec_deliver_begin(w, &d);

		rec_deliver_add(w, &t);
		rec_deliver_end(w, count_off, 1);
		router_emit(ctx->r, ctx->worker, REC_DELIVER, w);
	}
	ctx->bytes -= MIN(ctx->bytes, cost);
	return ctx->bytes > 0 && router_room(ctx->r, ctx->worker);
}

/*
 * The walks owed to one worker's sessions, in turn, within the turn's
 * budget and while its ring has room. true when some could go on now.
 */
static bool router_send_retained_to(struct router *r, unsigned worker)
{
	struct router_retained_send ctx = { r, NULL, worker, ROUTER_RETAINED_BYTES, wall_clock_ms() };
	size_t steps = ROUTER_RETAINED_STEPS;
	struct router_cursor *c;

	while ((c = r->cur_head[worker]) && steps > 0 && ctx.bytes > 0 && router_room(r, worker)) {
		size_t slice = MIN(steps, (size_t)ROUTER_RETAINED_SLICE), left = slice;

		ctx.c = c;
		if (retain_cursor_next(r->retained, &c->walk, &left, router_retained_cb, &ctx)) {
			router_cursor_drop(r, c->sub);
		} else {
			/* The next walk's turn: one subscription cannot hold the others back. */
			router_cursor_unlink(r, c);
			router_cursor_link(r, c);
		}
		steps -= slice - left;
	}
	return r->cur_head[worker] && router_room(r, worker);
}

/* A retained message's expiry passed: the store forgets it too. */
static void router_retained_expired(const struct retained *m, void *arg)
{
	struct router *r = arg;

	log_debug("router: retained message on '%.*s' expired", (int)m->topic_len, m->topic);
	if (r->st) {
		router_touch_retained(r, m->topic, (uint16_t)m->topic_len);
		store_retained_del(r->st, m->topic, (uint16_t)m->topic_len);
	}
}

/* Retained messages whose expiry passed go, a bounded part of the store per tick (router_tick). */
void router_retained_expire(struct router *r)
{
	retain_expire(r->retained, wall_clock_ms(), ROUTER_RETAINED_SWEEP, router_retained_expired,
		      r);
}

bool router_send_retained(struct router *r)
{
	bool more = false;

	if (!r->n_cursors)
		return false;
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->cur_head[i])
			more |= router_send_retained_to(r, i);
	return more;
}
