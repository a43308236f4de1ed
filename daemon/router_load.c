/*
 * router_load.c - the router's state read back from the store, and
 * written to it again in full.
 *
 * router_new() rebuilds sessions (online ones keep their connection ids),
 * subscriptions, queues and retained messages as the store last committed
 * them. A commit the store refused leaves it stale: router_tick() then
 * rewrites every session and the retained topics touched since the last
 * good commit (router_resync), until one commit succeeds. What is stored,
 * and when: docs/arch.md, "Storage".
 */
#include <stdlib.h>
#include <string.h>

#include "router_int.h"
#include "store.h"

#define ROUTER_RESYNC_MAX_MS 60000    /* a store that keeps refusing is rewritten at most this rarely */

/* ---- rebuilding from the store ----------------------------------------- */

struct router_load {
	struct router *r;
	struct session **offline;
	size_t n_offline, cap_offline;
	uint32_t max_sid;
	size_t sessions, online, subs, queued, retained, skipped;
	bool failed;                 /* out of memory: the router cannot start */
	/*
	 * The bodies made so far, by content: the store keeps a message once
	 * per queue, and equal ones are held once again, as they were.
	 */
	struct hidx bodies;
};

static struct session_connect *session_connect_load(const struct store_session *ss,
						    const struct store_connect *c,
						    const struct store_token *t)
{
	const struct session_token tok = { t->on, t->rules, t->len };
	struct rec_connect f = {
		.conn = c->conn,
		.clean = c->clean,
		.keepalive = c->keepalive,
		.client_id = { (const uint8_t *)ss->client_id, ss->client_id_len },
		.remote = { (const uint8_t *)c->remote,
			    (uint16_t)strnlen(c->remote, ROUTER_REMOTE_LEN - 1) },
		.user = { (const uint8_t *)c->user, c->user_len },
		.will_flag = c->will_flag,
		.will_qos = c->will_qos,
		.will_retain = c->will_retain,
		.will_topic = { (const uint8_t *)c->will_topic, c->will_topic_len },
		.will_payload = { c->will_payload, c->will_payload_len },
		.session_expiry = c->session_expiry,
		.will_delay = c->will_delay,
		.will_expiry = c->will_expiry,
		.will_props = { c->will_props, c->will_props_len },
	};

	return session_connect_new(&f, &tok);
}

/*
 * The session's token's rules as stored. Without memory for them they are
 * lost, and the session may do nothing until it connects again: never
 * everything.
 */
static void session_token_load(struct session *s, const struct store_session *ss)
{
	const struct store_token *t = &ss->token;

	s->token = t->on;
	if (!t->on || !t->len)
		return;
	if (!(s->token_rules = session_rules_new(t->rules, t->len))) {
		log_client(LOG_LVL_ERROR, s->client_id, ss->remote,
			   "out of memory loading its token's rules: it may do nothing until it connects again");
		return;
	}
}

/* The allocations of a stored session, linked nowhere yet. */
static struct session *session_load_new(const struct store_session *ss)
{
	struct session *s = session_alloc(ss->client_id, ss->client_id_len);

	if (!s)
		return NULL;
	s->sid = ss->sid;
	s->clean = ss->clean;
	s->expiry = ss->clean ? 0 : ss->expiry;
	if (!ss->online) {
		s->away = session_away_new(ss->remote, strnlen(ss->remote, ROUTER_REMOTE_LEN - 1));
		if (!s->away)
			goto fail;
		s->is_away = true;
		s->away->last_seen_ms = ss->last_seen_ms;
	}
	/* Its view: of its token's rules now (router_load_session), of the ACL when it comes. */
	if (ss->user_len && !(s->user = strndup(ss->user, ss->user_len)))
		goto fail;
	session_token_load(s, ss);
	if (ss->n_qos2_ids) {
		s->qos2_ids = malloc((size_t)ss->n_qos2_ids * sizeof(uint16_t));
		if (!s->qos2_ids)
			goto fail;
		memcpy(s->qos2_ids, ss->qos2_ids, (size_t)ss->n_qos2_ids * sizeof(uint16_t));
		s->n_qos2_ids = ss->n_qos2_ids;
	}
	/* The connection's token's rules are the session's (above): the CONNECT keeps none. */
	if (ss->online &&
	    !(s->cx = session_connect_load(ss, &ss->cx, &(struct store_token){ 0 })))
		goto fail;
	if (ss->pending && !(s->pending = session_connect_load(ss, &ss->pend, &ss->pend_token)))
		goto fail;
	if (ss->will_held && !ss->online) {
		if (!(s->away->will = session_connect_load(ss, &ss->will, &(struct store_token){ 0 })))
			goto fail;
		s->away->will_at_ms = ss->will_at_ms;
	}
	return s;
fail:
	session_dealloc(s);
	return NULL;
}

/* A stored session that cannot be taken as it is (the store was damaged). */
static bool router_load_reject(struct router *r, const struct store_session *ss)
{
	if (!ss->sid || router_find_sid(r, ss->sid))
		return true;
	if ((ss->client_id_len && router_find_id(r, ss->client_id, ss->client_id_len)) ||
	    (ss->clean && !ss->online))
		return true;
	if (ss->online && (conn_id_worker(ss->cx.conn) >= r->nworkers ||
			   router_conn_slot_taken(r, ss->cx.conn)))
		return true;
	return ss->pending && (conn_id_worker(ss->pend.conn) >= r->nworkers ||
			       router_find_pending(r, ss->pend.conn));
}

/*
 * Link a loaded session into the lookups. false when out of memory: in no
 * lookup, the caller frees it; in them, router_free will, and every field
 * says only what is really linked (session_free trusts them).
 */
static bool router_load_link(struct router *r, struct session *s)
{
	struct session_connect *pending = s->pending;

	s->pending = NULL;
	if (!router_session_link(r, s)) {
		s->pending = pending;
		return false;
	}
	if (session_cx(s)) {
		s->conn = s->cx->conn;
		if (!router_conn_link(r, s))
			goto fail;
		s->online = true;
	}
	if (pending) {
		if (!router_waiting_add(r, s, pending->conn))
			goto fail;
		s->pending = pending;
	}
	return true;
fail:
	free(pending);
	return false;
}

static bool router_load_offline(struct router_load *ld, struct session *s)
{
	struct session **grown;

	if (ld->n_offline == ld->cap_offline) {
		ld->cap_offline = ld->cap_offline ? ld->cap_offline * 2 : 64;
		grown = reallocarray(ld->offline, ld->cap_offline, sizeof(*grown));
		if (!grown)
			return false;
		ld->offline = grown;
	}
	ld->offline[ld->n_offline++] = s;
	return true;
}

static void router_load_session(void *arg, const struct store_session *ss)
{
	struct router_load *ld = arg;
	struct router *r = ld->r;
	struct session *s;

	if (ld->failed)
		return;
	if (router_load_reject(r, ss)) {
		log_warn("router: stored session %u ('%.*s') is inconsistent: dropped", ss->sid,
			 (int)ss->client_id_len, ss->client_id);
		ld->skipped++;
		return;
	}
	s = session_load_new(ss);
	if (!s) {
		ld->failed = true;
		return;
	}
	if (!router_load_link(r, s)) {
		if (router_find_sid(r, s->sid) != s)
			session_dealloc(s);
		ld->failed = true;
		return;
	}
	if (!s->online && !router_load_offline(ld, s)) {
		ld->failed = true;
		return;
	}
	session_view_make(r, s);
	if (s->is_away && s->away->last_seen_ms == STORE_SEEN_UNKNOWN)
		r->restamp = true;
	ld->max_sid = MAX(ld->max_sid, s->sid);
	ld->sessions++;
	ld->online += s->online;
}

static void router_load_sub(void *arg, uint32_t sid, const char *filter, uint16_t len,
			    uint8_t opts, uint32_t sub_id)
{
	struct router_load *ld = arg;
	struct session *s = router_find_sid(ld->r, sid);

	struct session_sub *sub;

	if (s && router_subscribe_one(ld->r, s, filter, len, opts, sub_id) != ROUTER_SUBACK_FAILURE) {
		HASH_FIND(hh, s->subs, filter, len, sub);
		sub->fresh = false;      /* made long ago: retain handling 1 sends nothing */
		ld->subs++;
	} else {
		ld->skipped++;
	}
}

static bool msg_body_has(const void *item, const void *key)
{
	const struct msg_body *b = item;
	const struct router_msg *m = key;

	return b->topic_len == m->topic_len && b->payload_len == m->payload_len &&
	       b->props_len == m->props_len && b->expires_at == m->expires_at &&
	       memcmp(b->data, m->topic, m->topic_len) == 0 &&
	       (!m->payload_len || memcmp(b->data + m->topic_len, m->payload, m->payload_len) == 0) &&
	       (!m->props_len || memcmp(msg_body_props(b), m->props, m->props_len) == 0);
}

static uint32_t msg_body_hash(const struct router_msg *m)
{
	return hidx_hash_bytes(m->payload, m->payload_len) ^
	       hidx_hash_bytes(m->topic, m->topic_len) * 31u;
}

/* The body of a stored message: one already loaded with the same topic and payload, or a new one. */
static struct msg_body *router_load_body(struct router_load *ld, const struct router_msg *m)
{
	uint32_t hash = msg_body_hash(m);
	struct msg_body *b = hidx_find(&ld->bodies, hash, msg_body_has, m);

	if (b)
		return b;
	b = msg_body_new(m);
	if (b && !hidx_add(&ld->bodies, hash, b)) {
		free(b);
		return NULL;
	}
	return b;
}

static void router_load_queued(void *arg, uint32_t sid, uint64_t order, const struct store_msg *m)
{
	struct router_load *ld = arg;
	struct router *r = ld->r;
	struct session *s = router_find_sid(r, sid);
	struct router_msg rm = { .qos = m->qos, .retain = m->retain, .topic = m->topic,
				 .topic_len = m->topic_len, .payload = m->payload,
				 .payload_len = m->payload_len, .props = m->v5.props,
				 .props_len = m->v5.props_len, .expires_at = m->v5.expires_at,
				 .n_sub_ids = m->n_sub_ids, .sub_ids = m->sub_ids };
	struct msg_body *body;
	struct session_msg *q;

	if (!s || m->state > MSG_PUBREL || !router_sub_ids_valid(m->n_sub_ids, m->sub_ids)) {
		ld->skipped++;
		return;
	}
	body = router_load_body(ld, &rm);
	q = session_msg_new(r, m->packet_id, m->state, &rm, body);
	if (!q) {
		if (body && !body->refs) {
			hidx_del(&ld->bodies, msg_body_hash(&rm), body);
			free(body);
		}
		ld->failed = true;
		return;
	}
	q->order = order;
	/* A copy for a connection that is gone (an earlier daemon's) is simply queued. */
	q->at_worker = m->at_worker && s->online;
	/* The store hands them over in queue order: each goes at the tail. */
	session_queue_link(s, q, false);
	if (!(order & ROUTER_ORDER_QUEUED) && s->online)
		s->q_owed_tail = q;       /* its connection is still closing */
	r->next_order = MAX(r->next_order, (order & ~ROUTER_ORDER_QUEUED) + 1);
	ld->queued++;
}

static void router_load_retained(void *arg, const char *topic, uint16_t len, uint8_t qos,
				 const uint8_t *payload, uint32_t payload_len,
				 const struct store_v5 *v5)
{
	struct router_load *ld = arg;
	const struct retained in = {
		.topic = topic, .topic_len = len, .payload = payload, .payload_len = payload_len,
		.props = v5->props, .props_len = v5->props_len, .expires_at = v5->expires_at,
		.qos = qos,
	};
	/* One whose expiry passed while no router ran goes with the first sweep. */
	int rc = qos > 2 ? RETAIN_CLEARED : retain_put_msg(ld->r->retained, &in);

	if (rc == RETAIN_STORED)
		ld->retained++;
	else if (rc == RETAIN_NOMEM)
		ld->failed = true;
	else
		ld->skipped++;           /* past retained_message_limit, or damaged */
}

static int router_cmp_last_seen(const void *a, const void *b)
{
	const struct session *x = *(struct session *const *)a, *y = *(struct session *const *)b;

	if (x->away->last_seen_ms != y->away->last_seen_ms)
		return x->away->last_seen_ms < y->away->last_seen_ms ? -1 : 1;
	return x->sid < y->sid ? -1 : x->sid > y->sid;
}

/* Rebuild sessions, subscriptions, queues and retained messages as the store last committed them. */
int router_load(struct router *r, struct store *st)
{
	struct router_load ld = { .r = r };
	uint64_t next_sid = 0;
	int rc = 0;

	if (store_each_session(st, router_load_session, &ld) < 0 ||
	    store_each_sub(st, router_load_sub, &ld) < 0 ||
	    store_each_queued(st, router_load_queued, &ld) < 0 ||
	    store_each_retained(st, router_load_retained, &ld) < 0 || ld.failed) {
		if (ld.failed)
			log_error("router: out of memory rebuilding the state from the store");
		rc = -1;
		goto out;
	}
	/* Offline sessions expire oldest first: relink them in the order they left. */
	if (ld.n_offline)
		qsort(ld.offline, ld.n_offline, sizeof(*ld.offline), router_cmp_last_seen);
	for (size_t i = 0; i < ld.n_offline; i++)
		session_offline_link(r, ld.offline[i]);
	store_meta_get(st, "next_sid", &next_sid);
	r->next_sid = (uint32_t)MAX(next_sid, (uint64_t)ld.max_sid + 1);
	if (!r->next_sid)
		r->next_sid = 1;
	if (ld.sessions || ld.retained)
		log_info("router: state rebuilt from the store: %zu sessions (%zu online), %zu subscriptions, %zu queued messages, %zu retained messages",
			 ld.sessions, ld.online, ld.subs, ld.queued, ld.retained);
	if (ld.skipped)
		log_warn("router: %zu stored entries could not be taken back (inconsistent, or past a limit)",
			 ld.skipped);
out:
	/* Every body loaded is held by a queue entry: a failed load frees them with the sessions. */
	hidx_free(&ld.bodies);
	free(ld.offline);
	return rc;
}

/* ---- sessions an earlier daemon left ----------------------------------- */

/*
 * Sessions an earlier daemon left offline: their clock is not ours, so
 * their timeout starts now. They sort last in the offline list.
 */
void router_restamp(struct router *r)
{
	struct session *s;

	for (s = r->off_tail; s && s->away->last_seen_ms == STORE_SEEN_UNKNOWN; s = s->away->off_prev) {
		s->away->last_seen_ms = r->now_ms;
		session_due_update(r, s, wall_clock_ms());
		session_persist(r, s);
	}
	r->restamp = false;
}

/* ---- rewriting a store that refused a commit --------------------------- */

/* The last commit succeeded: the retained topics it held need no rewrite. */
void router_touched_clear(struct router *r)
{
	struct router_touched *t, *tmp;

	HASH_ITER(hh, r->touched, t, tmp) {
		HASH_DEL(r->touched, t);
		free(t);
	}
	r->touched_oom = false;
}

/* A retained topic changed (router_publish.c): a rewrite must put it right. */
void router_touch_retained(struct router *r, const char *topic, uint16_t len)
{
	struct router_touched *t;

	HASH_FIND(hh, r->touched, topic, len, t);
	if (t)
		return;
	t = malloc(sizeof(*t) + len);
	if (!t) {
		r->touched_oom = true;
		return;
	}
	t->len = len;
	memcpy(t->topic, topic, len);
	HASH_ADD_KEYPTR(hh, r->touched, t->topic, t->len, t);
	if (!t->hh.tbl) {
		free(t);
		r->touched_oom = true;
	}
}

struct router_resync_ctx {
	struct router *r;
	bool found;
};

static void router_resync_retained_cb(const struct retained *m, void *arg)
{
	struct router_resync_ctx *ctx = arg;

	ctx->found = true;
	store_retained_put(ctx->r->st, m->topic, (uint16_t)m->topic_len, m->qos, m->payload,
			   (uint32_t)m->payload_len,
			   &(struct store_v5){ m->props, m->props_len, m->expires_at });
}

static void router_resync_session(struct router *r, struct session *s)
{
	struct session_sub *sub, *tmp;

	session_persist(r, s);
	HASH_ITER(hh, s->subs, sub, tmp)
		store_sub_put(r->st, s->sid, sub->filter, sub->len, sub->opts, sub->sub_id);
	for (const struct session_msg *q = s->q_head; q; q = q->next)
		session_msg_persist(r, s, q);
}

/*
 * A write to the store failed earlier: write the state again, in full for
 * the sessions, topic by topic for the retained messages that changed
 * since the last good commit (a topic is its own exact filter).
 */
static void router_resync(struct router *r)
{
	struct router_touched *t, *ttmp;
	struct session *s;

	if (store_resync_begin(r->st) < 0)
		return;
	for (uint32_t i = hidx_slots(&r->by_sid); i-- > 0;)
		if ((s = hidx_at(&r->by_sid, i)))
			router_resync_session(r, s);
	store_meta_put(r->st, "next_sid", r->next_sid);
	HASH_ITER(hh, r->touched, t, ttmp) {
		struct router_resync_ctx ctx = { r, false };

		retain_match(r->retained, t->topic, t->len, router_resync_retained_cb, &ctx);
		if (!ctx.found)
			store_retained_del(r->st, t->topic, t->len);
	}
	if (r->touched_oom)
		log_warn("router: out of memory earlier: some retained messages may be outdated in the store");
}

/* A stale store (a commit failed) is rewritten, less often while rewrites fail too (router_tick). */
void router_resync_due(struct router *r)
{
	if (r->st && store_stale(r->st)) {
		if (r->now_ms >= r->resync_at_ms) {
			router_resync(r);
			r->resync_wait_ms = r->resync_wait_ms ?
					    MIN(r->resync_wait_ms * 2, ROUTER_RESYNC_MAX_MS) : 1000;
			r->resync_at_ms = r->now_ms + r->resync_wait_ms;
		}
	} else {
		r->resync_at_ms = r->resync_wait_ms = 0;
	}
}
