/*
 * router_session.c - the session registry, and the CONNECTs and closes
 * that change it.
 *
 * Owns every struct session: the lookups by client id and by session id
 * (hidx), the online sessions by connection slot per worker, the list of
 * offline persistent sessions (oldest first, for expiry), the CONNECTs
 * waiting for a takeover and the connections kicked by a newer one, and
 * each session's user name, token's rules and view of the ACL
 * (session_view_make). A
 * CONNECT makes, resumes or takes over a session; a close (or its
 * worker's death) publishes the will, if the ACL lets its owner, and ends
 * or parks it. What a session queues is router_queue.c's, what it
 * subscribes router_publish.c's.
 */
#include <stdlib.h>
#include <string.h>

#include "router_int.h"
#include "mqtt.h"
#include "store.h"

/* Offline sessions whose interval and held will one tick checks (router_sessions_expire). */
#define ROUTER_SESSION_CHECKS 16384

/* ---- persistence and output -------------------------------------------- */

static void store_connect_view(const struct session_connect *c, struct store_connect *o)
{
	*o = (struct store_connect){
		.conn = c->conn,
		.clean = c->clean,
		.will_flag = c->will_flag,
		.will_qos = c->will_qos,
		.will_retain = c->will_retain,
		.keepalive = c->keepalive,
		.remote = cx_remote(c),
		.user = cx_user(c),
		.user_len = c->user_len,
		.will_topic = cx_will_topic(c),
		.will_topic_len = c->will_topic_len,
		.will_payload = cx_will_payload(c),
		.will_payload_len = c->will_payload_len,
		.session_expiry = c->session_expiry,
		.will_delay = cx_will_times(c).delay,
		.will_expiry = cx_will_times(c).expiry,
		.will_props = cx_will_props(c),
		.will_props_len = c->will_props_len,
	};
}

/* Write the session record (not its subscriptions or queue, which are written as they change). */
void session_persist(struct router *r, const struct session *s)
{
	const struct session_connect *cx = s->online ? session_cx(s) : NULL;
	const struct session_away *away = session_away_of(s);
	struct store_session ss = {
		.sid = s->sid,
		.clean = s->clean,
		.client_id = s->client_id,
		.client_id_len = s->client_id_len,
		.remote = session_remote(s),
		.user = s->user ? s->user : "",
		.user_len = s->user ? (uint16_t)strlen(s->user) : 0,
		/* Online, it has none: an online session's is never read back. */
		.last_seen_ms = away ? away->last_seen_ms : 0,
		.qos2_ids = s->qos2_ids,
		.n_qos2_ids = s->n_qos2_ids,
		.online = cx != NULL,
		.pending = s->pending != NULL,
		.token = { s->token, s->token_rules ? s->token_rules->bytes : NULL,
			   s->token_rules ? s->token_rules->len : 0 },
		.expiry = s->expiry,
		.will_held = away && away->will,
		.will_at_ms = away ? away->will_at_ms : 0,
	};

	if (!r->st)
		return;
	if (ss.online)
		store_connect_view(cx, &ss.cx);
	if (ss.will_held)
		store_connect_view(away->will, &ss.will);
	if (ss.pending) {
		store_connect_view(s->pending, &ss.pend);
		ss.pend_token = (struct store_token){ s->pending->token, cx_token_rules(s->pending),
						      s->pending->token_rules_len };
	}
	store_session_put(r->st, &ss);
}

void router_send_connack(struct router *r, conn_id_t conn, uint32_t sid, uint8_t rc,
			 bool present, const uint16_t *ids, uint16_t n)
{
	const struct rec_connack x = {
		.conn = conn, .sid = sid, .rc = rc, .session_present = present,
	};

	rec_connack_encode(&r->out, &x, ids, n);
	router_emit(r, conn_id_worker(conn), REC_CONNACK, &r->out);
}

static void router_send_kick(struct router *r, conn_id_t conn)
{
	rec_kick_encode(&r->out, &(struct rec_kick){ .conn = conn });
	router_emit(r, conn_id_worker(conn), REC_KICK, &r->out);
}

/* ---- the registry ------------------------------------------------------ */

/* Index s by s->conn. false: out of memory, or the slot is held (a bug: logged). */
bool router_conn_link(struct router *r, struct session *s)
{
	unsigned w = conn_id_worker(s->conn), slot = conn_id_slot(s->conn);

	if (w >= IOTD_MAX_WORKERS)
		return false;
	if (slot >= r->n_conn_slots[w]) {
		uint32_t n = MAX(r->n_conn_slots[w] * 2, 64u);
		struct session **grown;

		while (n <= slot)
			n *= 2;
		grown = reallocarray(r->conn_slots[w], n, sizeof(*grown));
		if (!grown)
			return false;
		memset(grown + r->n_conn_slots[w], 0, (n - r->n_conn_slots[w]) * sizeof(*grown));
		r->conn_slots[w] = grown;
		r->n_conn_slots[w] = n;
	}
	if (r->conn_slots[w][slot]) {
		log_error("router: connection slot %u of worker %u is already held by session %u",
			  slot, w, r->conn_slots[w][slot]->sid);
		return false;
	}
	r->conn_slots[w][slot] = s;
	r->n_online++;
	if (s->subs)
		router_routes_changed(r);
	return true;
}

static void router_conn_unlink(struct router *r, struct session *s)
{
	unsigned w = conn_id_worker(s->conn), slot = conn_id_slot(s->conn);

	if (w < IOTD_MAX_WORKERS && slot < r->n_conn_slots[w] && r->conn_slots[w][slot] == s) {
		r->conn_slots[w][slot] = NULL;
		r->n_online--;
		if (s->subs)
			router_routes_changed(r);
	}
}

/* ---- offline sessions by deadline ------------------------------------- */

/*
 * router.due is a binary min-heap of the offline sessions that have a
 * deadline (an interval that is not REC_EXPIRY_NEVER, or a held will), by
 * that deadline on the router's clock: each tick takes those whose time
 * came, however many sessions are offline, and each change costs
 * O(log n). A held will's deadline is wall-clock time (it outlives the
 * daemon), turned into the router's clock as the session is placed; the
 * check itself is on the wall clock, and a session whose will is not due
 * after all (the wall clock moved) is placed again.
 */

static void session_due_put(struct router *r, uint32_t i, struct session_due d)
{
	r->due[i] = d;
	d.s->away->due_slot = i + 1;
}

static void session_due_up(struct router *r, uint32_t i)
{
	struct session_due d = r->due[i];

	for (uint32_t parent; i > 0 && r->due[parent = (i - 1) / 2].at > d.at; i = parent)
		session_due_put(r, i, r->due[parent]);
	session_due_put(r, i, d);
}

static void session_due_down(struct router *r, uint32_t i)
{
	struct session_due d = r->due[i];

	for (uint32_t child; (child = 2 * i + 1) < r->n_due; i = child) {
		if (child + 1 < r->n_due && r->due[child + 1].at < r->due[child].at)
			child++;
		if (r->due[child].at >= d.at)
			break;
		session_due_put(r, i, r->due[child]);
	}
	session_due_put(r, i, d);
}

static void session_due_remove(struct router *r, struct session *s)
{
	struct session_away *a = session_away_of(s);
	uint32_t i;

	if (!a || !a->due_slot)
		return;
	i = a->due_slot - 1;
	a->due_slot = 0;
	if (i == --r->n_due)
		return;
	session_due_put(r, i, r->due[r->n_due]);
	if (i > 0 && r->due[(i - 1) / 2].at > r->due[i].at)
		session_due_up(r, i);
	else
		session_due_down(r, i);
}

/* When offline s is next due on the router's clock; UINT64_MAX: never. */
static uint64_t session_due_at(const struct router *r, const struct session *s, uint64_t wall_ms)
{
	const struct session_away *a = s->away;
	uint64_t at = UINT64_MAX;

	if (s->expiry != REC_EXPIRY_NEVER && a->last_seen_ms != STORE_SEEN_UNKNOWN)
		at = a->last_seen_ms + (uint64_t)s->expiry * 1000;
	if (a->will)
		at = MIN(at, r->now_ms + (a->will_at_ms > wall_ms ? a->will_at_ms - wall_ms : 0));
	return at;
}

static bool session_due_grow(struct router *r)
{
	uint32_t cap = r->cap_due ? r->cap_due * 2 : 64;
	struct session_due *due;

	if (r->cap_due >= UINT32_MAX / 2 || !(due = reallocarray(r->due, cap, sizeof(*due))))
		return false;
	r->due = due;
	r->cap_due = cap;
	return true;
}

/*
 * Place offline session s by its deadlines as they are now. Out of memory
 * it is left to the backstop sweep (router_sessions_expire), which finds it
 * later.
 */
void session_due_update(struct router *r, struct session *s, uint64_t wall_ms)
{
	uint64_t at = session_due_at(r, s, wall_ms);

	session_due_remove(r, s);
	if (at == UINT64_MAX)
		return;
	if (r->n_due == r->cap_due && !session_due_grow(r)) {
		if (!r->warned_due)
			log_error("router: out of memory: offline sessions past the first %u are checked by the sweep alone (%u a second)",
				  r->n_due, ROUTER_SESSION_CHECKS);
		r->warned_due = true;
		return;
	}
	r->warned_due = false;
	r->due[r->n_due] = (struct session_due){ at, s };
	session_due_up(r, r->n_due++);
}

/* Link s, which is away (session_away_of), last in the offline list. */
void session_offline_link(struct router *r, struct session *s)
{
	s->away->off_next = NULL;
	s->away->off_prev = r->off_tail;
	if (r->off_tail)
		r->off_tail->away->off_next = s;
	else
		r->off_head = s;
	r->off_tail = s;
	s->in_offline = true;
	session_due_update(r, s, wall_clock_ms());
}

static void session_offline_unlink(struct router *r, struct session *s)
{
	struct session_away *a = s->away;

	if (!s->in_offline)
		return;
	session_due_remove(r, s);
	if (r->off_sweep == s)
		r->off_sweep = a->off_next;
	if (a->off_prev)
		a->off_prev->away->off_next = a->off_next;
	else
		r->off_head = a->off_next;
	if (a->off_next)
		a->off_next->away->off_prev = a->off_prev;
	else
		r->off_tail = a->off_prev;
	a->off_prev = a->off_next = NULL;
	s->in_offline = false;
}

bool router_waiting_add(struct router *r, struct session *s, conn_id_t conn)
{
	struct router_waiting *w = malloc(sizeof(*w));

	if (!w)
		return false;
	w->conn = conn;
	w->s = s;
	HASH_ADD(hh, r->waiting, conn, sizeof(w->conn), w);
	if (!w->hh.tbl) {
		free(w);
		return false;
	}
	return true;
}

static void router_waiting_del(struct router *r, conn_id_t conn)
{
	struct router_waiting *w;

	HASH_FIND(hh, r->waiting, &conn, sizeof(conn), w);
	if (w) {
		HASH_DEL(r->waiting, w);
		free(w);
	}
}

void session_pending_drop(struct router *r, struct session *s)
{
	if (!s->pending)
		return;
	router_waiting_del(r, s->pending->conn);
	free(s->pending);
	s->pending = NULL;
}

/* ---- lookups, and a session's life ------------------------------------- */

static bool session_has_id(const void *item, const void *key)
{
	const struct session *s = item;

	return hidx_bytes_eq(key, s->client_id, s->client_id_len);
}

struct session *router_find_id(const struct router *r, const char *id, uint16_t len)
{
	struct hidx_bytes k = { id, len };

	return hidx_find(&r->by_id, hidx_hash_bytes(id, len), session_has_id, &k);
}

/*
 * Into both lookups; a server-named session (empty client id) is nobody
 * else's, so by sid only. false when out of memory: then in neither.
 */
bool router_session_link(struct router *r, struct session *s)
{
	if (!hidx_add(&r->by_sid, hidx_hash_u32(s->sid), s))
		return false;
	if (s->client_id_len &&
	    !hidx_add(&r->by_id, hidx_hash_bytes(s->client_id, s->client_id_len), s)) {
		hidx_del(&r->by_sid, hidx_hash_u32(s->sid), s);
		return false;
	}
	return true;
}

static void router_session_unlink(struct router *r, struct session *s)
{
	if (s->client_id_len)
		hidx_del(&r->by_id, hidx_hash_bytes(s->client_id, s->client_id_len), s);
	hidx_del(&r->by_sid, hidx_hash_u32(s->sid), s);
}

/* The session with room for its client id: the one allocation a session always has. */
struct session *session_alloc(const char *client_id, uint16_t len)
{
	struct session *s = calloc(1, sizeof(*s) + (size_t)len + 1);

	if (!s)
		return NULL;
	if (len)
		memcpy(s->client_id, client_id, len);
	s->client_id_len = len;
	return s;
}

/* An offline session's state, with where it last connected from; NULL: out of memory. */
struct session_away *session_away_new(const char *remote, size_t len)
{
	struct session_away *a = calloc(1, MAX(sizeof(*a), offsetof(struct session_away, remote) + len + 1));

	if (!a)
		return NULL;
	memcpy(a->remote, remote, len);
	a->remote[len] = '\0';
	return a;
}

/* s connects again (its held will released first): its away, or its old CONNECT, goes. */
static void session_away_end(struct session *s)
{
	if (s->is_away) {
		free(s->away->will);
		free(s->away);
		s->is_away = false;
	} else {
		free(s->cx);
	}
	s->cx = NULL;
}

/* A session in no lookup (any more): only its allocations to free. */
void session_dealloc(struct session *s)
{
	acl_client_free(s->acl);
	free(s->token_rules);
	free(s->pending);
	if (s->is_away) {
		free(s->away->will);
		free(s->away);
	} else {
		free(s->cx);
	}
	free(s->user);
	free(s->qos2_ids);
	free(s);
}

/* The session is gone for good (router_free frees without this: the store keeps it). */
void session_free(struct router *r, struct session *s)
{
	if (r->st)
		store_session_del(r->st, s->sid);
	session_unsubscribe_all(r, s);
	session_queue_clear(r, s);
	session_pending_drop(r, s);
	session_offline_unlink(r, s);
	if (s->online)
		router_conn_unlink(r, s);
	router_session_unlink(r, s);
	session_dealloc(s);
}

static struct session *session_new(struct router *r, const struct session_connect *c)
{
	struct session *s = session_alloc(cx_client_id(c), c->client_id_len);

	if (!s)
		return NULL;
	/* sids are never 0 and never reused: skip any still held after a wrap. */
	do {
		s->sid = r->next_sid++;
		if (!s->sid)
			s->sid = r->next_sid++;
	} while (router_find_sid(r, s->sid));
	/* Never reused, not even by a restarted router: a worker may still name an old sid. */
	if (r->st)
		store_meta_put(r->st, "next_sid", r->next_sid);
	if (!router_session_link(r, s)) {
		free(s);
		return NULL;
	}
	return s;
}

/* True when conn's slot is held, by conn or by another (which only a bug can make). */
bool router_conn_slot_taken(const struct router *r, conn_id_t conn)
{
	unsigned w = conn_id_worker(conn), slot = conn_id_slot(conn);

	return w < IOTD_MAX_WORKERS && slot < r->n_conn_slots[w] && r->conn_slots[w][slot];
}

struct session *router_find_pending(struct router *r, conn_id_t conn)
{
	struct router_waiting *w;

	HASH_FIND(hh, r->waiting, &conn, sizeof(conn), w);
	return w ? w->s : NULL;
}

/* ---- connect, takeover, close ------------------------------------------ */

static void router_kicked_add(struct router *r, conn_id_t conn)
{
	struct router_kicked *k = malloc(sizeof(*k));

	/* Without it the CLOSE is merely logged as unexpected. */
	if (!k)
		return;
	k->conn = conn;
	HASH_ADD(hh, r->kicked, conn, sizeof(k->conn), k);
	if (!k->hh.tbl)
		free(k);
}

bool router_kicked_take(struct router *r, conn_id_t conn)
{
	struct router_kicked *k;

	HASH_FIND(hh, r->kicked, &conn, sizeof(conn), k);
	if (!k)
		return false;
	HASH_DEL(r->kicked, k);
	free(k);
	return true;
}

/* Copies len bytes and a '\0' to p; returns where the next field goes. */
static char *put_string(char *p, const void *src, size_t len)
{
	if (len)
		memcpy(p, src, len);
	p[len] = '\0';
	return p + len + 1;
}

struct session_connect *session_connect_new(const struct rec_connect *f,
					    const struct session_token *tok)
{
	size_t remote_len = MIN((size_t)f->remote.len, (size_t)ROUTER_REMOTE_LEN - 1);
	size_t topic_len = f->will_flag ? f->will_topic.len : 0;
	size_t payload_len = f->will_flag ? f->will_payload.len : 0;
	size_t props_len = f->will_flag ? f->will_props.len : 0;
	size_t rules_len = tok && tok->token && tok->rules ? tok->len : 0;
	size_t times_len = f->will_flag ? sizeof(struct cx_will_times) : 0;
	struct session_connect *c;
	char *p;

	if (rules_len > UINT32_MAX)
		rules_len = 0;               /* no encoding is that long: lost, so nothing allowed */
	c = malloc(offsetof(struct session_connect, data) + (size_t)f->client_id.len + 1 +
		   remote_len + 1 + f->user.len + 1 + times_len + topic_len + 1 + payload_len +
		   props_len + rules_len);
	if (!c)
		return NULL;
	c->conn = f->conn;
	c->clean = f->clean;
	c->keepalive = f->keepalive;
	c->will_flag = f->will_flag;
	c->will_qos = f->will_qos;
	c->will_retain = f->will_retain;
	c->client_id_len = f->client_id.len;
	c->remote_len = (uint8_t)remote_len;
	c->user_len = f->user.len;
	c->will_topic_len = (uint16_t)topic_len;
	c->will_payload_len = (uint32_t)payload_len;
	c->will_props_len = (uint32_t)props_len;
	c->session_expiry = f->session_expiry;
	c->token = tok && tok->token;
	c->token_rules_len = (uint32_t)rules_len;

	p = put_string(c->data, f->client_id.p, f->client_id.len);
	p = put_string(p, f->remote.p, remote_len);
	p = put_string(p, f->user.p, f->user.len);
	if (times_len) {
		const struct cx_will_times t = { f->will_delay, f->will_expiry };

		memcpy(p, &t, sizeof(t));
		p += sizeof(t);
	}
	p = put_string(p, f->will_topic.p, topic_len);
	if (payload_len)
		memcpy(p, f->will_payload.p, payload_len);
	if (props_len)
		memcpy(p + payload_len, f->will_props.p, props_len);
	if (rules_len)
		memcpy(p + payload_len + props_len, tok->rules, rules_len);
	return c;
}

/*
 * The session's copy of c's token's rules: it needs them offline too,
 * when c is gone. false: out of memory (the CONNECT is refused).
 */
static bool session_token_take(struct session *s, const struct session_connect *c)
{
	struct session_rules *rules = NULL;

	if (c->token_rules_len && !(rules = session_rules_new(cx_token_rules(c), c->token_rules_len)))
		return false;
	free(s->token_rules);
	s->token = c->token;
	s->token_rules = rules;
	return true;
}

/* A copy of a token's rules, len > 0; NULL: out of memory. */
struct session_rules *session_rules_new(const uint8_t *bytes, uint32_t len)
{
	struct session_rules *t = malloc(sizeof(*t) + len);

	if (!t)
		return NULL;
	t->len = len;
	memcpy(t->bytes, bytes, len);
	return t;
}

/*
 * The session's view of the ACL, made afresh from its user name and
 * client id (at CONNECT, and for every session when the ACL changes).
 * None without an ACL; none when out of memory, which router_acl_allows
 * takes as "nothing allowed".
 */
void session_view_make(struct router *r, struct session *s)
{
	char err[160];

	acl_client_free(s->acl);
	s->acl = NULL;
	if (s->token) {
		/* A token's lists, as the auth role granted them: they are its rules. */
		const char *why = "they are lost";

		if (s->token_rules &&
		    !(s->acl = acl_client_decode(s->token_rules->bytes, s->token_rules->len, err,
						 sizeof(err))))
			why = err;
		if (!s->acl)
			log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
				   "its token's rules are refused (%s): it may do nothing until it connects again",
				   why);
		return;
	}
	if (!r->acl)
		return;
	s->acl = acl_client_new(r->acl, s->user, s->user ? strlen(s->user) : 0, s->client_id,
				s->client_id_len);
	if (!s->acl)
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory making its view of the ACL: it may do nothing");
}

/*
 * c is placed: its client id, user name and token's rules are its
 * session's now, so c's copies go (an online session keeps its CONNECT as
 * long as it is connected). Its client id and user read "" from here on:
 * s->client_id and s->user are the ones.
 */
static struct session_connect *cx_placed_shrink(struct session_connect *c)
{
	const char *will = cx_user(c) + c->user_len + 1;   /* its will's times, or its topic */
	size_t will_len = (size_t)((const char *)cx_token_rules(c) - will);
	struct session_connect *smaller;
	char *p;

	if (!c->client_id_len && !c->user_len && !c->token_rules_len)
		return c;
	/* A new allocation: realloc keeps the whole chunk when less than 32 bytes would go. */
	smaller = malloc(offsetof(struct session_connect, data) + 1 + c->remote_len + 1 + 1 +
			 will_len);
	if (!smaller)
		return c;
	memcpy(smaller, c, offsetof(struct session_connect, data));
	p = put_string(smaller->data, NULL, 0);
	p = put_string(p, cx_remote(c), c->remote_len);
	p = put_string(p, NULL, 0);
	memcpy(p, will, will_len);
	smaller->client_id_len = 0;
	smaller->user_len = 0;
	smaller->token_rules_len = 0;
	free(c);
	return smaller;
}

/*
 * The session is now c's: c's user name, its token's rules, and the view
 * that goes with them. false: out of memory, the session as it was.
 */
static bool session_user_take(struct router *r, struct session *s, const struct session_connect *c)
{
	char *user = NULL;

	if (c->user_len && !(user = strndup(cx_user(c), c->user_len)))
		return false;
	if (!session_token_take(s, c)) {
		free(user);
		return false;
	}
	free(s->user);
	s->user = user;
	session_view_make(r, s);
	return true;
}

/* A CONNECT the router cannot take (out of memory): the worker closes it. */
static void router_refuse(struct router *r, struct session_connect *c)
{
	log_client(LOG_LVL_ERROR, cx_client_id(c), cx_remote(c),
		   "out of memory: connection refused (server unavailable)");
	router_send_connack(r, c->conn, 0, MQTT_CONNACK_UNAVAILABLE, false, NULL, 0);
	free(c);
}

/* A new session would take the router past max_sessions. */
static bool router_sessions_full(const struct router *r)
{
	long max = r->cfg->max_sessions;

	return max > 0 && hidx_count(&r->by_sid) >= (size_t)max;
}

/*
 * A CONNECT that needs a new session past max_sessions: CONNACK 3 (server
 * unavailable), and the worker closes it. Sessions resumed or taken over
 * are never refused: they exist already.
 */
static void router_refuse_full(struct router *r, struct session_connect *c)
{
	if (!r->warned_sessions_full)
		log_warn("router: max_sessions (%ld) reached: connections that need a new session are refused (logged once until one fits again)",
			 r->cfg->max_sessions);
	r->warned_sessions_full = true;
	log_client(LOG_LVL_INFO, cx_client_id(c), cx_remote(c),
		   "connection refused: max_sessions reached (server unavailable)");
	router_send_connack(r, c->conn, 0, MQTT_CONNACK_UNAVAILABLE, false, NULL, 0);
	free(c);
}

/*
 * The session is still connected elsewhere [MQTT-3.1.4-2]: kick that
 * connection and finish this CONNECT once its REC_CLOSE arrives, so that
 * what it still owes reaches the session first.
 */
static void router_takeover(struct router *r, struct session *s, struct session_connect *c)
{
	/* The kicked connection gets no more retained messages; the new one subscribes anew. */
	session_cursors_drop(r, s);
	if (s->pending) {
		/* The older waiting CONNECT loses: its connection never got a CONNACK. */
		router_send_kick(r, s->pending->conn);
		router_kicked_add(r, s->pending->conn);
		session_pending_drop(r, s);
	} else {
		router_send_kick(r, s->conn);
	}
	if (!router_waiting_add(r, s, c->conn)) {
		router_refuse(r, c);
		session_persist(r, s);
		return;
	}
	s->pending = c;
	if (s->subs)
		router_routes_changed(r);
	session_persist(r, s);
	log_client(LOG_LVL_INFO, s->client_id, cx_remote(c),
		   "session taken over: closing its previous connection");
}

/* The will of c, s's connection, published now if the ACL lets s write there. */
static void session_will_publish(struct router *r, struct session *s,
				 const struct session_connect *c)
{
	const struct router_msg will = {
		.qos = c->will_qos,
		.retain = c->will_retain,
		.topic = cx_will_topic(c),
		.topic_len = c->will_topic_len,
		.payload = cx_will_payload(c),
		.payload_len = c->will_payload_len,
		.props = cx_will_props(c),
		.props_len = c->will_props_len,
		.expires_at = cx_will_times(c).expiry ?
			      wall_clock_ms() + (uint64_t)cx_will_times(c).expiry * 1000 : 0,
		.from = s,
	};

	if (router_acl_allows(r, s, will.topic, will.topic_len, ACL_WRITE)) {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "publishing will on '%s'", cx_will_topic(c));
		router_publish(r, &will);
	} else {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "will on '%s' not published: the ACL does not let it write there",
			   cx_will_topic(c));
	}
}

/*
 * The will s holds back for its delay: published (the delay passed, or the
 * session ends first) or cancelled (the session was resumed in time
 * [MQTT-3.1.3-9]).
 */
static void session_will_release(struct router *r, struct session *s, bool publish)
{
	struct session_away *a = session_away_of(s);
	struct session_connect *c = a ? a->will : NULL;

	if (!c)
		return;
	a->will = NULL;
	if (publish)
		session_will_publish(r, s, c);
	else
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "delayed will on '%s' cancelled: the session was resumed", cx_will_topic(c));
	free(c);
}

/* The session's interval as a record gave it: bounded by max_session_expiry_interval. */
uint32_t router_expiry_cap(const struct router *r, uint32_t expiry)
{
	uint32_t cap = (uint32_t)r->cfg->max_session_expiry_interval;

	return cap && expiry > cap ? cap : expiry;
}

/* Accept a CONNECT: takes ownership of c. */
void router_connect_apply(struct router *r, struct session_connect *c)
{
	struct session *s = NULL;
	bool present;
	size_t stored;

	if (c->client_id_len)
		s = router_find_id(r, cx_client_id(c), c->client_id_len);
	if (s && s->online) {
		router_takeover(r, s, c);
		return;
	}
	if (s && (c->clean || s->clean)) {
		log_client(LOG_LVL_INFO, s->client_id, cx_remote(c),
			   "stored session discarded (clean session requested)");
		session_will_release(r, s, true);    /* the session ends: its will goes */
		session_free(r, s);
		s = NULL;
	}
	if (s)
		session_will_release(r, s, false);
	present = s != NULL;
	if (!s) {
		if (router_sessions_full(r)) {
			router_refuse_full(r, c);
			return;
		}
		s = session_new(r, c);
		if (!s) {
			router_refuse(r, c);
			return;
		}
		r->warned_sessions_full = false;
	}
	if (!session_user_take(r, s, c)) {
		if (!present)
			session_free(r, s);
		router_refuse(r, c);
		return;
	}
	s->prev_conn = s->conn;
	s->conn = c->conn;
	if (!router_conn_link(r, s)) {
		if (!present)
			session_free(r, s);
		router_refuse(r, c);
		return;
	}
	s->online = true;
	session_offline_unlink(r, s);
	s->expiry = c->session_expiry;
	s->clean = s->expiry == 0;
	session_away_end(s);
	s->cx = cx_placed_shrink(c);

	/*
	 * The worker takes the inbound QoS 2 ids over; a persistent session's
	 * stay here too, kept in step by REC_QOS2_IN, for the worker's death.
	 */
	router_send_connack(r, s->conn, s->sid, MQTT_CONNACK_ACCEPTED, present, s->qos2_ids,
			    s->n_qos2_ids);
	if (s->clean) {
		free(s->qos2_ids);
		s->qos2_ids = NULL;
		s->n_qos2_ids = 0;
	}
	stored = session_queue_len(s);
	if (present)
		session_queue_send(r, s);
	session_persist(r, s);
	if (present) {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "session resumed (%zu stored messages)", stored);
	} else {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s), "session %s",
			   s->clean ? "started (clean)" : "created (persistent)");
	}
}

/* Replace the inbound QoS 2 ids with those of a REC_CLOSE (at most UINT16_MAX). */
static void session_qos2_ids_set(struct session *s, struct rec_iter ids)
{
	uint16_t n = (uint16_t)ids.n;

	free(s->qos2_ids);
	s->qos2_ids = NULL;
	s->n_qos2_ids = 0;
	if (!n)
		return;
	s->qos2_ids = malloc((size_t)n * sizeof(uint16_t));
	if (!s->qos2_ids) {
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory: %u inbound QoS 2 ids forgotten", n);
		return;
	}
	for (uint16_t id; rec_packet_id_next(&ids, &id);)
		s->qos2_ids[s->n_qos2_ids++] = id;
}

/*
 * s's connection closed and s lives on: its away takes the place of its
 * CONNECT, which goes, or stays as the will held back for its delay
 * (hold). false: out of memory, s as it was.
 */
static bool session_away_begin(struct session *s, bool hold)
{
	struct session_connect *cx = session_cx(s);
	struct session_away *a = session_away_new(cx ? cx_remote(cx) : "", cx ? cx->remote_len : 0);

	if (!a)
		return false;
	s->away = a;
	s->is_away = true;
	if (!hold) {
		free(cx);
		return true;
	}
	a->will = cx;
	a->will_at_ms = wall_clock_ms() + (uint64_t)cx_will_times(cx).delay * 1000;
	log_client(LOG_LVL_INFO, s->client_id, a->remote, "will on '%s' held for %u s",
		   cx_will_topic(cx), cx_will_times(cx).delay);
	return true;
}

/*
 * The session's connection is gone. The will goes out before the session
 * state does, so a persistent session subscribed to it keeps it. A CONNECT
 * waiting for this close is then accepted. ids: the inbound QoS 2 ids the
 * worker reported at close; NULL when the worker died (the router's own
 * record of them, kept by REC_QOS2_IN, stands).
 */
void router_close(struct router *r, struct session *s, bool publish_will,
		  const struct rec_iter *ids)
{
	struct session_connect *pending = s->pending;
	struct session_connect *cx = session_cx(s);

	if (pending) {
		router_waiting_del(r, pending->conn);
		s->pending = NULL;
	}
	bool will = publish_will && cx && cx->will_flag;
	/* A will with a delay waits in a session that outlives the connection. */
	bool hold = will && cx_will_times(cx).delay && !s->clean;

	session_cursors_drop(r, s);
	router_conn_unlink(r, s);
	s->online = false;

	if (will && !hold)
		session_will_publish(r, s, cx);

	if (s->clean) {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s), "session ended");
		router_share_reroute(r, s);
		session_free(r, s);
	} else if (!session_away_begin(s, hold)) {
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory: session ended (%zu stored messages dropped)",
			   session_queue_len(s));
		if (hold)
			session_will_publish(r, s, cx);    /* the session ends: its will goes */
		session_free(r, s);
	} else {
		if (ids)
			session_qos2_ids_set(s, *ids);
		session_copies_release(r, s);
		s->q_owed_tail = NULL;
		s->away->last_seen_ms = r->now_ms;
		session_offline_link(r, s);
		session_persist(r, s);
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "session offline (%zu stored messages)", session_queue_len(s));
	}
	if (pending)
		router_connect_apply(r, pending);
}

static bool router_conn_dead(conn_id_t conn, unsigned worker, uint32_t new_epoch)
{
	return conn_id_worker(conn) == worker && conn_id_epoch(conn) != (new_epoch & 0xffff);
}

/* Close every session on the dead worker, as if each had sent REC_CLOSE(publish_will=1). */
static size_t router_close_dead(struct router *r, unsigned worker, uint32_t new_epoch)
{
	size_t closed = 0;

	/*
	 * Closing publishes wills and accepts waiting CONNECTs (of other
	 * workers): the array may move, so it is indexed afresh each time.
	 */
	for (uint32_t slot = 0; slot < r->n_conn_slots[worker]; slot++) {
		struct session *s = r->conn_slots[worker][slot];

		if (s && router_conn_dead(s->conn, worker, new_epoch)) {
			router_close(r, s, true, NULL);
			closed++;
		}
	}
	return closed;
}


/*
 * Worker 'worker' died (router_worker_down): its connections of an epoch
 * other than new_epoch are gone. Returns the number of sessions closed.
 */
size_t router_close_worker(struct router *r, unsigned worker, uint32_t new_epoch)
{
	struct session *s;
	struct router_waiting *w, *wtmp;
	struct router_kicked *k, *ktmp;

	HASH_ITER(hh, r->kicked, k, ktmp) {
		if (router_conn_dead(k->conn, worker, new_epoch)) {
			HASH_DEL(r->kicked, k);
			free(k);
		}
	}
	/* CONNECTs from the dead worker waiting for a takeover first: none may be accepted. */
	HASH_ITER(hh, r->waiting, w, wtmp) {
		if (router_conn_dead(w->conn, worker, new_epoch)) {
			s = w->s;
			session_pending_drop(r, s);    /* frees w */
			session_persist(r, s);
		}
	}
	return router_close_dead(r, worker, new_epoch);
}

/* An offline session's time is up: its held will goes out, and it ends. */
static void session_expire(struct router *r, struct session *s, uint64_t secs)
{
	log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
		   "session expired after %llu s offline (%zu stored messages dropped)",
		   (unsigned long long)secs, session_queue_len(s));
	session_will_release(r, s, true);
	session_free(r, s);
}

/*
 * One offline session's own clock: its held will once the delay passed,
 * its end once offline for its session expiry interval. false: it ended.
 */
static bool session_check(struct router *r, struct session *s, uint64_t wall_ms)
{
	const struct session_away *a = s->away;
	uint64_t now_ms = r->now_ms;

	if (a->will && a->will_at_ms <= wall_ms) {
		session_will_release(r, s, true);
		session_persist(r, s);
	}
	if (s->expiry != REC_EXPIRY_NEVER && a->last_seen_ms != STORE_SEEN_UNKNOWN &&
	    now_ms >= a->last_seen_ms && now_ms - a->last_seen_ms >= (uint64_t)s->expiry * 1000) {
		session_expire(r, s, s->expiry);
		return false;
	}
	return true;
}

/*
 * Offline persistent sessions whose time is up go (router_tick): those
 * absent longer than session_timeout_secs, oldest first, then those whose
 * own interval or held will is due (router.due), then, as a backstop for
 * a session the heap could not take, ROUTER_SESSION_CHECKS sessions a
 * tick, going on from where the last tick stopped.
 */
void router_sessions_expire(struct router *r)
{
	long secs = r->cfg->session_timeout_secs;
	uint64_t wall_ms = wall_clock_ms();
	size_t budget = ROUTER_SESSION_CHECKS;
	struct session *s, *next;

	/* Offline sessions are linked in the order they left: the oldest first. */
	while (secs > 0 && (s = r->off_head) && r->now_ms >= s->away->last_seen_ms &&
	       r->now_ms - s->away->last_seen_ms > (uint64_t)secs * 1000)
		session_expire(r, s, (uint64_t)secs);
	while (r->n_due && r->due[0].at <= r->now_ms) {
		s = r->due[0].s;
		session_due_remove(r, s);
		if (session_check(r, s, wall_ms))
			session_due_update(r, s, wall_ms);
	}
	for (s = r->off_sweep ? r->off_sweep : r->off_head; s && budget > 0; s = next, budget--) {
		next = s->away->off_next;
		session_check(r, s, wall_ms);
	}
	r->off_sweep = s;
}

/* Every session and the registry's tables, from memory only (router_free: the store keeps them). */
void router_sessions_free(struct router *r)
{
	struct session *s;
	struct router_kicked *k, *ktmp;

	/* From the last slot down, each slot looked at again after a removal: see hidx.c. */
	for (uint32_t i = hidx_slots(&r->by_sid); i-- > 0;)
		while ((s = hidx_at(&r->by_sid, i)))
			session_free(r, s);
	hidx_free(&r->by_sid);
	hidx_free(&r->by_id);
	free(r->due);
	r->due = NULL;
	r->n_due = r->cap_due = 0;
	HASH_ITER(hh, r->kicked, k, ktmp) {
		HASH_DEL(r->kicked, k);
		free(k);
	}
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		free(r->conn_slots[i]);
	router_spares_free(r);
}
