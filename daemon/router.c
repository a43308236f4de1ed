/*
 * router.c - the router role: the one place that knows every session,
 * every subscription and every retained message.
 *
 * Owns the session registry (client id -> session; persistent sessions
 * with their subscriptions, offline queues and inbound QoS 2 ids; each
 * session's will), the subscription trie and the retained store. Workers
 * own the connections: they tell the router what happened (rec.h, rings
 * w2r[i]) and the router tells them what to send (rings r2w[i]).
 *
 * Two layers. The logic (router_new/handle/tick/commit/free) takes one
 * record at a time and emits records through a callback, so unit tests
 * run it without processes. router_main() wires it to the rings, the
 * eventfds, a 1 s timer, the supervisor's control socket and the store.
 *
 * Every change to that state is also written to the store (store.h) in
 * the loop turn's transaction, so a restarted router rebuilds it: the
 * store holds the state as of the last commit, and for each ring the
 * position the state corresponds to (w2r: what was applied; r2w: what
 * was emitted, including records held back because the ring was full).
 * A turn commits the store BEFORE it publishes its r2w records and
 * releases its w2r records, so whatever a worker sees or may overwrite
 * is already in the store: a restart neither repeats nor loses a record.
 */
#include <assert.h>
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* An allocation failure in a hash add must not exit the router: the add fails, tbl is NULL. */
#define HASH_NONFATAL_OOM 1
#include "keyhash.h"  /* uthash, keyed */

#include "hidx.h"
#include "iotd.h"
#include "ipc.h"
#include "log.h"
#include "mqtt.h"
#include "privsep.h"
#include "rec.h"
#include "retain.h"
#include "role.h"
#include "router.h"
#include "shmring.h"
#include "store.h"
#include "topic.h"

#define ROUTER_TARGET_BYTES 13        /* u64 conn, u32 sid, u8 qos in a REC_DELIVER */
#define ROUTER_COPY_BYTES 8           /* ... and u64 copy when the router keeps one */
#define ROUTER_MAX_WINDOW 65535u      /* a session cannot owe more in-flight messages than packet ids */
#define ROUTER_REMOTE_LEN 64          /* as struct ipc_client: enough for "[v6]:port" */
#define ROUTER_SUBACK_FAILURE 0x80
/* Queue order: messages a closing connection still owed sort before those queued for it. */
#define ROUTER_ORDER_QUEUED (UINT64_C(1) << 63)
#define ROUTER_RESYNC_MAX_MS 60000    /* a store that keeps refusing is rewritten at most this rarely */
#define ROUTER_ROUTE_MAX 1024        /* targets a REC_ROUTE names at most: a larger fan-out stays with the router */
#define ROUTER_ORPHAN_SECS 2          /* most time to drain the rings once the supervisor is gone */
/*
 * Retained messages owed to new subscriptions go out a bounded amount per
 * loop turn and worker (router_send_retained): nodes of the retained tree
 * visited, bytes sent, and the nodes one walk takes before the next walk's
 * turn. A turn's time stays small however many or big they are.
 */
#define ROUTER_RETAINED_STEPS 4096
#define ROUTER_RETAINED_BYTES (2u << 20)
#define ROUTER_RETAINED_SLICE 256
#define ROUTER_RETAINED_REC_BYTES 32  /* a retained DELIVER's bytes besides topic and payload */
#define ROUTER_STORE_FAILED_WAIT_MS 2000 /* most time to wait for the supervisor to read why the store failed */

enum { ROUTER_OK = 0, ROUTER_BAD = -1, ROUTER_NOCONN = -2 };

/* ---- data -------------------------------------------------------------- */

/*
 * A CONNECT as the worker sent it, in one allocation. Every online session
 * keeps one, so its strings are found by their lengths rather than by
 * pointers of their own: see the cx_ accessors below.
 */
struct session_connect {
	conn_id_t conn;
	uint32_t will_payload_len;
	uint16_t keepalive;
	uint16_t client_id_len, will_topic_len;
	uint8_t remote_len;          /* < ROUTER_REMOTE_LEN */
	bool clean;
	bool will_flag;
	uint8_t will_qos, will_retain;
	char data[];                 /* client id, remote, will topic (each NUL-terminated), will payload */
};

static_assert(ROUTER_REMOTE_LEN <= 256, "remote_len is 8 bits");

static inline const char *cx_client_id(const struct session_connect *c)
{
	return c->data;
}

static inline const char *cx_remote(const struct session_connect *c)
{
	return c->data + c->client_id_len + 1;
}

static inline const char *cx_will_topic(const struct session_connect *c)
{
	return cx_remote(c) + c->remote_len + 1;
}

static inline const uint8_t *cx_will_payload(const struct session_connect *c)
{
	return (const uint8_t *)cx_will_topic(c) + c->will_topic_len + 1;
}

struct router_cursor;

struct session_sub {
	UT_hash_handle hh;
	struct router_cursor *cur;   /* its retained messages still to send, or NULL */
	uint8_t qos;
	uint16_t len;
	char filter[];               /* NUL-terminated for log lines */
};

/*
 * The topic and payload of a message held in session queues: one publish
 * queued for many sessions is held once, shared by every entry that
 * holds it (refs), and freed with the last one.
 */
struct msg_body {
	uint32_t refs;               /* session_msg entries holding it */
	uint32_t payload_len;
	uint16_t topic_len;
	uint8_t data[];              /* topic, then payload */
};

/* One message in one session's queue; what differs per session, and its shared body. */
struct session_msg {
	struct session_msg *next;
	struct msg_body *body;
	uint64_t order;              /* key in the store's queue: ascending = list order */
	uint16_t packet_id;
	uint8_t state, qos, retain;
	bool at_worker;              /* a copy of what the session's connection holds (rec.h) */
};

/*
 * One per session, online or not; thousands of idle connections each have
 * one, so the small fields are packed together ahead of the pointers.
 */
struct session {
	uint32_t sid;
	uint16_t client_id_len;
	uint16_t n_qos2_ids;
	bool clean;
	bool online;
	bool in_offline;             /* linked in the offline list */
	bool q_warned, q_warned_qos0;
	bool subs_warned;            /* max_subscriptions_per_session reached: logged */
	uint8_t granted;             /* with stamp: the QoS this publish goes out at */
	uint32_t q_queued;           /* MSG_QUEUED ones in the queue: what the limits count */
	uint32_t q_window;           /* MSG_INFLIGHT / MSG_PUBREL ones */
	uint32_t q_at_worker;        /* copies of what the connection holds */
	uint32_t n_cursors;          /* subscriptions with retained messages still to send */

	conn_id_t conn;              /* while online: in conn_slots; offline: the last one */
	conn_id_t prev_conn;         /* the connection before conn (a takeover's old one) */
	struct session_connect *cx;  /* the accepted CONNECT (its will, its remote) while online */
	char *remote_off;            /* offline: where it last connected from (session_remote()) */
	struct session_sub *subs;

	/*
	 * Offline queue. Messages a closing connection still owes (REC_SESSION_MSG
	 * from the session's own conn) go before those the router queued since,
	 * because they are older: q_owed_tail marks where they end.
	 */
	struct session_msg *q_head, *q_tail, *q_owed_tail;
	size_t q_queued_bytes;

	uint16_t *qos2_ids;          /* inbound QoS 2 awaiting PUBREL (online: as the worker reports) */

	/* A CONNECT that takes this session over once its conn has closed. */
	struct session_connect *pending;

	uint64_t last_seen_ms;
	struct session *off_prev, *off_next; /* offline persistent sessions, oldest first */
	uint64_t stamp;              /* publish that last matched us: folds overlapping filters */

	char client_id[];            /* NUL-terminated; "" for a server-named clean session */
};

/*
 * A session's CONNECT waiting for its previous connection to close
 * (takeover). Rare, so kept apart rather than as a hash handle in every
 * session.
 */
struct router_waiting {
	conn_id_t conn;
	struct session *s;
	UT_hash_handle hh;
};

/*
 * A waiting CONNECT that lost to a newer one: its worker answers the KICK
 * with a REC_CLOSE, which is expected, not a stray record.
 */
struct router_kicked {
	conn_id_t conn;
	UT_hash_handle hh;
};

/*
 * The retained messages a new subscription is still owed: a walk over the
 * retained store that router_send_retained() advances as the ring to the
 * session's worker takes them. One per subscription at most (a repeated
 * SUBSCRIBE of the filter starts it again); it ends with the walk, or
 * with the subscription, the connection or a takeover.
 */
struct router_cursor {
	struct router_cursor *prev, *next; /* in the worker's list, round robin */
	struct session *s;
	struct session_sub *sub;     /* its filter and granted QoS */
	struct retain_cursor walk;
};

/*
 * A retained topic changed since the last successful commit: if the
 * commit fails, these are what the rewrite of the store must put right
 * (the retained store cannot be listed as a whole).
 */
struct router_touched {
	UT_hash_handle hh;
	uint16_t len;
	char topic[];
};

struct router {
	const struct iotd_config *cfg;
	unsigned nworkers;
	router_emit_fn emit;
	void *emit_arg;
	router_room_fn room;         /* NULL: every worker always has room */

	struct topic_trie *trie;
	struct retain_store *retained;
	struct hidx by_id, by_sid;   /* sessions by client id (server-named ones not), by sid */
	/*
	 * Online sessions by connection: per worker, indexed by the conn id's
	 * slot (dense, reused by the worker), checked against the whole id.
	 */
	struct session **conn_slots[IOTD_MAX_WORKERS];
	uint32_t n_conn_slots[IOTD_MAX_WORKERS];
	/* What each worker's records may speak of (router_set_worker). */
	uint32_t worker_epoch[IOTD_MAX_WORKERS];
	uint32_t worker_slots[IOTD_MAX_WORKERS];
	size_t n_online;
	struct router_waiting *waiting;   /* by the waiting CONNECT's conn */
	struct router_kicked *kicked;
	struct session *off_head, *off_tail;
	uint32_t next_sid;
	uint64_t next_order;         /* queue order counter (without ROUTER_ORDER_QUEUED) */
	uint64_t now_ms;
	size_t max_record;

	/* subscriptions owed retained messages, per worker of their session */
	struct router_cursor *cur_head[IOTD_MAX_WORKERS], *cur_tail[IOTD_MAX_WORKERS];
	size_t n_cursors;

	struct store *st;            /* NULL: in memory only */
	struct router_touched *touched;
	bool touched_oom;            /* a change could not be remembered: a rewrite may miss it */
	bool restamp;                /* sessions of an earlier daemon wait for the first tick */
	uint64_t resync_at_ms;       /* next rewrite of a stale store */
	uint64_t resync_wait_ms;     /* doubles while rewrites fail: each one writes everything */

	/* per publish: matched sessions, and one REC_DELIVER being built per worker */
	uint64_t stamp;
	struct session **targets;
	size_t n_targets, cap_targets;
	bool targets_short;          /* out of memory: the match missed some sessions */
	/* the route generation (shm.h), in shared memory, or route_gen_own */
	_Atomic uint64_t *route_gen;
	_Atomic uint64_t route_gen_own;
	struct recw deliver[IOTD_MAX_WORKERS];
	size_t deliver_noff[IOTD_MAX_WORKERS];
	uint32_t deliver_n[IOTD_MAX_WORKERS];

	struct recw out;             /* any other record */
	struct recw ack;             /* a SUBACK, kept while its filters start their retained messages */

	bool warned_bad[REC_TYPE_MAX + 1];
	bool warned_noconn[REC_TYPE_MAX + 1];
	bool warned_retain_full, warned_targets;
	bool warned_sessions_full;   /* max_sessions reached: logged once until a session fits again */
	bool warned_held_full;       /* max_queued_bytes_total reached: logged once per episode */
	uint64_t queue_drops, bad_records;

	/* What every session queue holds (max_queued_bytes_total): each body once, each entry. */
	size_t held_bytes;
	size_t held_bodies;
};

/* A message being routed; pointers into the record or into a stored will. */
struct router_msg {
	uint8_t qos, retain;
	const char *topic;
	uint16_t topic_len;
	const uint8_t *payload;
	uint32_t payload_len;
};

static void router_publish(struct router *r, const struct router_msg *m);
static void router_connect_apply(struct router *r, struct session_connect *c);

/*
 * Where some topic's messages go may have changed: every route a worker
 * cached (REC_ROUTE) is void. Before the record that makes the change
 * visible to a client (SUBACK, CONNACK...) is emitted, so that a publish
 * made after it cannot take a route from before it.
 */
static void router_routes_changed(struct router *r)
{
	atomic_fetch_add_explicit(r->route_gen, 1, memory_order_release);
}

/* For log lines: the connection's address, or where an offline session was last seen. */
static const char *session_remote(const struct session *s)
{
	if (s->cx)
		return cx_remote(s->cx);
	return s->remote_off ? s->remote_off : "";
}

/* ---- persistence ------------------------------------------------------- */

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
		.will_topic = cx_will_topic(c),
		.will_topic_len = c->will_topic_len,
		.will_payload = cx_will_payload(c),
		.will_payload_len = c->will_payload_len,
	};
}

/* Write the session record (not its subscriptions or queue, which are written as they change). */
static void session_persist(struct router *r, const struct session *s)
{
	struct store_session ss = {
		.sid = s->sid,
		.clean = s->clean,
		.client_id = s->client_id,
		.client_id_len = s->client_id_len,
		.remote = session_remote(s),
		.last_seen_ms = s->last_seen_ms,
		.qos2_ids = s->qos2_ids,
		.n_qos2_ids = s->n_qos2_ids,
		.online = s->online && s->cx,
		.pending = s->pending != NULL,
	};

	if (!r->st)
		return;
	if (ss.online)
		store_connect_view(s->cx, &ss.cx);
	if (ss.pending)
		store_connect_view(s->pending, &ss.pend);
	store_session_put(r->st, &ss);
}

static void session_msg_persist(struct router *r, const struct session *s,
				const struct session_msg *q)
{
	struct store_msg m = {
		.packet_id = q->packet_id,
		.state = q->state,
		.qos = q->qos,
		.retain = q->retain,
		.at_worker = q->at_worker,
		.topic = (const char *)q->body->data,
		.topic_len = q->body->topic_len,
		.payload = q->body->data + q->body->topic_len,
		.payload_len = q->body->payload_len,
	};

	if (r->st)
		store_queue_put(r->st, s->sid, q->order, &m);
}

static void router_touched_clear(struct router *r)
{
	struct router_touched *t, *tmp;

	HASH_ITER(hh, r->touched, t, tmp) {
		HASH_DEL(r->touched, t);
		free(t);
	}
	r->touched_oom = false;
}

static void router_touch_retained(struct router *r, const char *topic, uint16_t len)
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

static void router_persist_retained(struct router *r, const struct router_msg *m, int rc)
{
	if (!r->st || (rc != RETAIN_STORED && rc != RETAIN_CLEARED))
		return;
	router_touch_retained(r, m->topic, m->topic_len);
	if (rc == RETAIN_STORED)
		store_retained_put(r->st, m->topic, m->topic_len, m->qos, m->payload,
				   m->payload_len);
	else
		store_retained_del(r->st, m->topic, m->topic_len);
}

/* ---- output ------------------------------------------------------------ */

static void router_emit(struct router *r, unsigned worker, uint16_t type, const struct recw *w)
{
	if (w->oom) {
		log_error("router: out of memory building %s for worker %u: dropped",
			  rec_type_name(type), worker);
		return;
	}
	r->emit(r->emit_arg, worker, type, w);
}

static void router_send_connack(struct router *r, conn_id_t conn, uint32_t sid, uint8_t rc,
				bool present, const uint16_t *ids, uint16_t n)
{
	struct recw *w = &r->out;

	recw_reset(w);
	recw_u64(w, conn);
	recw_u32(w, sid);
	recw_u8(w, rc);
	recw_u8(w, present);
	recw_u16(w, n);
	for (uint16_t i = 0; i < n; i++)
		recw_u16(w, ids[i]);
	router_emit(r, conn_id_worker(conn), REC_CONNACK, w);
}

static void router_send_kick(struct router *r, conn_id_t conn)
{
	struct recw *w = &r->out;

	recw_reset(w);
	recw_u64(w, conn);
	router_emit(r, conn_id_worker(conn), REC_KICK, w);
}

static void router_send_session_msg(struct router *r, conn_id_t conn, uint32_t sid, uint64_t copy,
				    uint16_t packet_id, uint8_t state, const struct router_msg *m)
{
	struct recw *w = &r->out;

	recw_reset(w);
	recw_u64(w, conn);
	recw_u32(w, sid);
	recw_u64(w, copy);
	recw_u16(w, packet_id);
	recw_u8(w, state);
	recw_u8(w, m->qos);
	recw_u8(w, m->retain);
	recw_str(w, m->topic, m->topic_len);
	recw_bytes(w, m->payload, m->payload_len);
	router_emit(r, conn_id_worker(conn), REC_SESSION_MSG, w);
}

/* Header of a REC_DELIVER; the target count is patched in at the end. */
static void router_deliver_begin(struct router *r, unsigned worker, const struct router_msg *m)
{
	struct recw *w = &r->deliver[worker];

	recw_reset(w);
	recw_u8(w, m->qos);
	recw_str(w, m->topic, m->topic_len);
	recw_bytes(w, m->payload, m->payload_len);
	recw_u8(w, m->retain);
	r->deliver_noff[worker] = w->len;
	recw_u32(w, 0);
}

static void router_deliver_end(struct router *r, unsigned worker)
{
	struct recw *w = &r->deliver[worker];

	recw_patch_u32(w, r->deliver_noff[worker], r->deliver_n[worker]);
	router_emit(r, worker, REC_DELIVER, w);
	r->deliver_n[worker] = 0;
}

static void router_deliver_add(struct router *r, const struct router_msg *m,
			       const struct session *s, uint8_t qos, uint64_t copy)
{
	unsigned worker = conn_id_worker(s->conn);
	struct recw *w = &r->deliver[worker];

	/* A fan-out too big for one ring record goes out in several. */
	if (r->deliver_n[worker] && r->max_record &&
	    w->len + ROUTER_TARGET_BYTES + (copy ? ROUTER_COPY_BYTES : 0) > r->max_record)
		router_deliver_end(r, worker);
	if (!r->deliver_n[worker])
		router_deliver_begin(r, worker, m);
	recw_u64(w, s->conn);
	recw_u32(w, s->sid);
	if (copy) {
		recw_u8(w, qos | REC_TARGET_COPY);
		recw_u64(w, copy);
	} else {
		recw_u8(w, qos);
	}
	r->deliver_n[worker]++;
}

static void router_deliver_flush(struct router *r)
{
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->deliver_n[i])
			router_deliver_end(r, i);
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
static void session_cursors_drop(struct router *r, struct session *s)
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
static void router_cursor_start(struct router *r, struct session *s, struct session_sub *sub)
{
	struct router_cursor *c = sub->cur;

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
};

/* One retained message to the cursor's subscriber; false: the turn's budget or the ring is full. */
static bool router_retained_cb(const char *topic, size_t topic_len, const uint8_t *payload,
			       size_t payload_len, uint8_t qos, void *arg)
{
	struct router_retained_send *ctx = arg;
	const struct session *s = ctx->c->s;
	struct recw *w = &ctx->r->out;
	size_t cost = topic_len + payload_len + ROUTER_RETAINED_REC_BYTES;

	if (topic_len <= UINT16_MAX && payload_len <= UINT32_MAX) {
		recw_reset(w);
		recw_u8(w, qos);
		recw_str(w, topic, (uint16_t)topic_len);
		recw_bytes(w, payload, (uint32_t)payload_len);
		recw_u8(w, 1);
		recw_u32(w, 1);
		recw_u64(w, s->conn);
		recw_u32(w, s->sid);
		recw_u8(w, MIN(qos, ctx->c->sub->qos));
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
	struct router_retained_send ctx = { r, NULL, worker, ROUTER_RETAINED_BYTES };
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

/* ---- sessions: queue --------------------------------------------------- */

static size_t msg_body_bytes(const struct msg_body *b)
{
	return (size_t)b->topic_len + b->payload_len;
}

/* A body for m's topic and payload, held by no entry yet (refs 0, not counted). */
static struct msg_body *msg_body_new(const struct router_msg *m)
{
	struct msg_body *b = malloc(sizeof(*b) + (size_t)m->topic_len + m->payload_len);

	if (!b)
		return NULL;
	b->refs = 0;
	b->topic_len = m->topic_len;
	b->payload_len = m->payload_len;
	if (m->topic_len)
		memcpy(b->data, m->topic, m->topic_len);
	if (m->payload_len)
		memcpy(b->data + m->topic_len, m->payload, m->payload_len);
	return b;
}

/* A body made for a message that no queue took in the end. */
static void msg_body_discard(struct msg_body *b)
{
	if (b && !b->refs)
		free(b);
}

/* The body a message about to be queued shares: *body, made from m on first need. */
static struct msg_body *msg_body_get(struct msg_body **body, const struct router_msg *m)
{
	if (!*body)
		*body = msg_body_new(m);
	return *body;
}

/* What one more entry holding body (NULL: not made yet) adds to held_bytes. */
static size_t router_held_cost(const struct msg_body *body, const struct router_msg *m)
{
	if (body && body->refs)
		return ROUTER_ENTRY_COST;
	return ROUTER_ENTRY_COST + (size_t)m->topic_len + m->payload_len;
}

/* Would holding more bytes take the session queues past max_queued_bytes_total? */
static bool router_held_full(const struct router *r, size_t more)
{
	long max = r->cfg->max_queued_bytes_total;

	return max > 0 && r->held_bytes + more > (size_t)max;
}

static void router_held_warn(struct router *r, const char *what)
{
	if (!r->warned_held_full)
		log_warn("router: session queues hold %zu bytes, max_queued_bytes_total (%ld) reached: %s (logged once until they hold 10%% less)",
			 r->held_bytes, r->cfg->max_queued_bytes_total, what);
	r->warned_held_full = true;
}

/* An episode ends once the queues are 10% below the budget (or it was lifted). */
static void router_held_check(struct router *r)
{
	long max = r->cfg->max_queued_bytes_total;

	if (r->warned_held_full && (max <= 0 || r->held_bytes <= (size_t)max / 10 * 9))
		r->warned_held_full = false;
}

/* A queue entry for body, which it holds (and which is counted once, with its first holder). */
static struct session_msg *session_msg_new(struct router *r, uint16_t packet_id, uint8_t state,
					   uint8_t qos, uint8_t retain, struct msg_body *body)
{
	struct session_msg *q;

	if (!body || body->refs == UINT32_MAX || !(q = malloc(sizeof(*q))))
		return NULL;
	q->body = body;
	q->packet_id = packet_id;
	q->state = state;
	q->at_worker = false;
	q->qos = qos;
	q->retain = retain;
	if (body->refs++ == 0) {
		r->held_bytes += msg_body_bytes(body);
		r->held_bodies++;
	}
	r->held_bytes += ROUTER_ENTRY_COST;
	return q;
}

/* Free an entry (already out of its queue) and, with its last holder, its body. */
static void session_msg_free(struct router *r, struct session_msg *q)
{
	struct msg_body *b = q->body;

	r->held_bytes -= ROUTER_ENTRY_COST;
	if (--b->refs == 0) {
		r->held_bytes -= msg_body_bytes(b);
		r->held_bodies--;
		free(b);
	}
	free(q);
}

static void session_queue_clear(struct router *r, struct session *s)
{
	struct session_msg *m, *next;

	for (m = s->q_head; m; m = next) {
		next = m->next;
		session_msg_free(r, m);
	}
	s->q_head = s->q_tail = s->q_owed_tail = NULL;
	s->q_queued = s->q_queued_bytes = s->q_window = s->q_at_worker = 0;
	s->q_warned = s->q_warned_qos0 = false;
}

/*
 * Add (dir 1) or take away (dir -1) q from the counts its kind is in. A
 * session counts the whole size of every message it queues, shared or not.
 */
static void session_queue_count(struct session *s, const struct session_msg *q, int dir)
{
	size_t bytes = msg_body_bytes(q->body);

	if (q->at_worker) {
		s->q_at_worker += (uint32_t)dir;
	} else if (q->state == MSG_QUEUED) {
		s->q_queued += (uint32_t)dir;
		s->q_queued_bytes += dir > 0 ? bytes : -bytes;
	} else {
		s->q_window += (uint32_t)dir;
	}
}

static size_t session_queue_len(const struct session *s)
{
	return s->q_queued + s->q_window;
}

/*
 * No room for a message of bytes (topic + payload) in state, whose entry
 * would add held to what all queues hold: the session's own limits, then
 * the budget of all sessions together.
 */
static bool session_queue_full(const struct router *r, const struct session *s,
			       uint8_t state, size_t bytes, size_t held)
{
	long max_msgs = r->cfg->max_queued_messages;
	long max_bytes = r->cfg->max_queued_bytes;

	/* The in-flight window is not "queued": it is only bounded by the packet ids. */
	if (state != MSG_QUEUED)
		return s->q_window >= ROUTER_MAX_WINDOW;
	if (max_msgs > 0 && s->q_queued >= (size_t)max_msgs)
		return true;
	if (max_bytes > 0 && s->q_queued_bytes + bytes > (size_t)max_bytes)
		return true;
	return router_held_full(r, held);
}

/*
 * Link q into the session's queue and count it. owed: it comes from the
 * session's closing connection, so it is older than anything the router
 * queued meanwhile and goes before it. The order key says the same to
 * the store: owed ones without ROUTER_ORDER_QUEUED sort first.
 */
static void session_queue_link(struct session *s, struct session_msg *q, bool owed)
{
	if (owed) {
		q->next = s->q_owed_tail ? s->q_owed_tail->next : s->q_head;
		if (s->q_owed_tail)
			s->q_owed_tail->next = q;
		else
			s->q_head = q;
		s->q_owed_tail = q;
	} else {
		q->next = NULL;
		if (s->q_tail)
			s->q_tail->next = q;
		else
			s->q_head = q;
	}
	if (!q->next)
		s->q_tail = q;
	session_queue_count(s, q, 1);
}

static void session_msg_drop(struct router *r, struct session *s, struct session_msg *q,
			     struct session_msg *prev);

/*
 * A full queue makes room by dropping its oldest queued QoS 0 messages
 * first (queue_qos0_messages): they were never promised. true when the
 * message now fits.
 */
static bool session_queue_evict_qos0(struct router *r, struct session *s, size_t bytes,
				     size_t held)
{
	struct session_msg *q = s->q_head, *prev = NULL;

	while (session_queue_full(r, s, MSG_QUEUED, bytes, held)) {
		while (q && (q->qos != 0 || q->at_worker)) {
			prev = q;
			q = q->next;
		}
		if (!q)
			return false;
		if (!s->q_warned_qos0)
			log_client(LOG_LVL_WARN, s->client_id, session_remote(s),
				   "offline queue full (%zu messages, %zu bytes; all queues %zu bytes): dropping QoS 0 messages first",
				   session_queue_len(s), s->q_queued_bytes, r->held_bytes);
		s->q_warned_qos0 = true;
		r->queue_drops++;
		session_msg_drop(r, s, q, prev);
		q = prev ? prev->next : s->q_head;
	}
	return true;
}

/*
 * Store a message for a session that is not (or no longer) connected.
 * *body: the message's shared body, made on first need; the caller
 * discards it when no queue took it (msg_body_discard).
 */
static void session_enqueue(struct router *r, struct session *s, bool owed, uint16_t packet_id,
			    uint8_t state, const struct router_msg *m, struct msg_body **body)
{
	size_t bytes = (size_t)m->topic_len + m->payload_len;
	size_t held = router_held_cost(*body, m);
	struct session_msg *q;

	if (session_queue_full(r, s, state, bytes, held) &&
	    (state != MSG_QUEUED || !session_queue_evict_qos0(r, s, bytes, held))) {
		r->queue_drops++;
		if (state == MSG_QUEUED && router_held_full(r, held)) {
			router_held_warn(r, "new messages for offline sessions are dropped");
		} else {
			if (!s->q_warned)
				log_client(LOG_LVL_WARN, s->client_id, session_remote(s),
					   "offline queue full (%zu messages, %zu bytes): dropping new messages",
					   session_queue_len(s), s->q_queued_bytes);
			s->q_warned = true;
		}
		return;
	}
	q = session_msg_new(r, packet_id, state, m->qos, m->retain, msg_body_get(body, m));
	if (!q) {
		r->queue_drops++;
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory: queued message dropped");
		return;
	}
	q->order = (r->next_order++ & ~ROUTER_ORDER_QUEUED) | (owed ? 0 : ROUTER_ORDER_QUEUED);
	session_queue_link(s, q, owed);
	session_msg_persist(r, s, q);
	log_debug("router: session %u queued %s message (%zu stored)", s->sid,
		  owed ? "owed" : "new", session_queue_len(s));
}

/* Queue a message of its own (not a publish shared with other sessions). */
static void session_enqueue_one(struct router *r, struct session *s, bool owed,
				uint16_t packet_id, uint8_t state, const struct router_msg *m)
{
	struct msg_body *body = NULL;

	session_enqueue(r, s, owed, packet_id, state, m, &body);
	msg_body_discard(body);
}

static void session_msg_view(const struct session_msg *q, struct router_msg *m)
{
	m->qos = q->qos;
	m->retain = q->retain;
	m->topic = (const char *)q->body->data;
	m->topic_len = q->body->topic_len;
	m->payload = q->body->data + q->body->topic_len;
	m->payload_len = q->body->payload_len;
}

/* Mark q as a copy of what the session's connection holds, or no longer; counted and stored. */
static void session_msg_mark(struct router *r, struct session *s, struct session_msg *q,
			     bool at_worker)
{
	session_queue_count(s, q, -1);
	q->at_worker = at_worker;
	session_queue_count(s, q, 1);
	session_msg_persist(r, s, q);
}

/*
 * Hand the stored messages to the session's new connection, the
 * unfinished exchanges first. Each stays here as a copy until the worker
 * reports it done (REC_MSG_STATE).
 */
static void session_queue_send(struct router *r, struct session *s)
{
	struct router_msg m;

	for (int pass = 0; pass < 2; pass++) {
		struct session_msg *q, *prev = NULL, *next;

		for (q = s->q_head; q; prev = q, q = next) {
			next = q->next;
			if (q->at_worker || (q->state == MSG_QUEUED) != (pass == 1))
				continue;
			session_msg_view(q, &m);
			if (q->qos == 0) {
				/* Nothing to acknowledge: it leaves the queue as it goes out. */
				router_send_session_msg(r, s->conn, s->sid, 0, 0, MSG_QUEUED, &m);
				session_msg_drop(r, s, q, prev);
				q = prev;
				continue;
			}
			session_msg_mark(r, s, q, true);
			router_send_session_msg(r, s->conn, s->sid, q->order, q->packet_id, q->state,
						&m);
		}
	}
	s->q_owed_tail = NULL;
	s->q_warned = s->q_warned_qos0 = false;
}

/*
 * Keep a copy of a QoS 1/2 message handed to a persistent session's
 * connection, sharing *body (see session_enqueue). Returns its id for the
 * worker, or 0 when none is kept (out of memory, or past
 * max_queued_bytes_total: the worker then hands the message back on a
 * clean close, as before copies existed, and a crash of the worker loses
 * it).
 */
static uint64_t session_copy_new(struct router *r, struct session *s, uint16_t packet_id,
				 uint8_t state, const struct router_msg *m, struct msg_body **body)
{
	struct session_msg *q;

	if (s->clean || m->qos == 0 ||
	    s->q_at_worker >= ROUTER_MAX_WINDOW + (size_t)r->cfg->max_queued_messages)
		return 0;
	if (router_held_full(r, router_held_cost(*body, m))) {
		router_held_warn(r, "messages to persistent sessions' connections are not kept against a worker crash");
		return 0;
	}
	q = session_msg_new(r, packet_id, state, m->qos, m->retain, msg_body_get(body, m));
	if (!q) {
		log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
			   "out of memory: a QoS %u message is not kept against a worker crash",
			   m->qos);
		return 0;
	}
	q->at_worker = true;
	q->order = (r->next_order++ & ~ROUTER_ORDER_QUEUED) | ROUTER_ORDER_QUEUED;
	session_queue_link(s, q, false);
	session_msg_persist(r, s, q);
	return q->order;
}

/* The connection is gone: what it held becomes the head of the offline queue, as last reported. */
static void session_copies_release(struct router *r, struct session *s)
{
	for (struct session_msg *q = s->q_head; q && s->q_at_worker; q = q->next)
		if (q->at_worker)
			session_msg_mark(r, s, q, false);
}

/* The copy named copy, or NULL; *prev_r: the message before it in the queue. */
static struct session_msg *session_copy_find(struct session *s, uint64_t copy,
					     struct session_msg **prev_r)
{
	struct session_msg *prev = NULL;

	for (struct session_msg *q = s->q_head; q; prev = q, q = q->next) {
		if (q->order == copy && q->at_worker) {
			*prev_r = prev;
			return q;
		}
	}
	return NULL;
}

/* Take q (after prev, NULL at the head) out of the queue and the store, and free it. */
static void session_msg_drop(struct router *r, struct session *s, struct session_msg *q,
			     struct session_msg *prev)
{
	if (prev)
		prev->next = q->next;
	else
		s->q_head = q->next;
	if (s->q_tail == q)
		s->q_tail = prev;
	if (s->q_owed_tail == q)
		s->q_owed_tail = prev;
	session_queue_count(s, q, -1);
	if (r->st)
		store_queue_del(r->st, s->sid, q->order);
	session_msg_free(r, q);
}

/* ---- sessions: registry ------------------------------------------------ */

/* Index s by s->conn. false: out of memory, or the slot is held (a bug: logged). */
static bool router_conn_link(struct router *r, struct session *s)
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

static void session_offline_link(struct router *r, struct session *s)
{
	s->off_next = NULL;
	s->off_prev = r->off_tail;
	if (r->off_tail)
		r->off_tail->off_next = s;
	else
		r->off_head = s;
	r->off_tail = s;
	s->in_offline = true;
}

static void session_offline_unlink(struct router *r, struct session *s)
{
	if (!s->in_offline)
		return;
	if (s->off_prev)
		s->off_prev->off_next = s->off_next;
	else
		r->off_head = s->off_next;
	if (s->off_next)
		s->off_next->off_prev = s->off_prev;
	else
		r->off_tail = s->off_prev;
	s->off_prev = s->off_next = NULL;
	s->in_offline = false;
}

static bool router_waiting_add(struct router *r, struct session *s, conn_id_t conn)
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

static void session_pending_drop(struct router *r, struct session *s)
{
	if (!s->pending)
		return;
	router_waiting_del(r, s->pending->conn);
	free(s->pending);
	s->pending = NULL;
}

static void session_unsubscribe_all(struct router *r, struct session *s)
{
	struct session_sub *sub, *tmp;

	if (s->subs)
		router_routes_changed(r);
	HASH_ITER(hh, s->subs, sub, tmp) {
		router_cursor_drop(r, sub);
		topic_trie_unsubscribe(r->trie, sub->filter, sub->len, s);
		HASH_DEL(s->subs, sub);
		free(sub);
	}
}

/* ---- session lookups ------------------------------------------------- */

struct session_key {
	const char *id;
	uint16_t len;
};

static bool session_has_id(const void *item, const void *key)
{
	const struct session *s = item;
	const struct session_key *k = key;

	return s->client_id_len == k->len && memcmp(s->client_id, k->id, k->len) == 0;
}

static bool session_has_sid(const void *item, const void *key)
{
	return ((const struct session *)item)->sid == *(const uint32_t *)key;
}

static struct session *router_find_id(const struct router *r, const char *id, uint16_t len)
{
	struct session_key k = { id, len };

	return hidx_find(&r->by_id, hidx_hash_bytes(id, len), session_has_id, &k);
}

static struct session *router_find_sid(const struct router *r, uint32_t sid)
{
	return hidx_find(&r->by_sid, hidx_hash_u32(sid), session_has_sid, &sid);
}

/*
 * Into both lookups; a server-named session (empty client id) is nobody
 * else's, so by sid only. false when out of memory: then in neither.
 */
static bool router_session_link(struct router *r, struct session *s)
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
static struct session *session_alloc(const char *client_id, uint16_t len)
{
	struct session *s = calloc(1, sizeof(*s) + (size_t)len + 1);

	if (!s)
		return NULL;
	if (len)
		memcpy(s->client_id, client_id, len);
	s->client_id_len = len;
	return s;
}

/* The session is gone for good (router_free frees without this: the store keeps it). */
static void session_free(struct router *r, struct session *s)
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
	free(s->cx);
	free(s->remote_off);
	free(s->qos2_ids);
	free(s);
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

static struct session *router_find_conn(struct router *r, conn_id_t conn)
{
	unsigned w = conn_id_worker(conn), slot = conn_id_slot(conn);
	struct session *s;

	if (w >= IOTD_MAX_WORKERS || slot >= r->n_conn_slots[w])
		return NULL;
	s = r->conn_slots[w][slot];
	return s && s->conn == conn ? s : NULL;
}

/* True when conn's slot is held, by conn or by another (which only a bug can make). */
static bool router_conn_slot_taken(const struct router *r, conn_id_t conn)
{
	unsigned w = conn_id_worker(conn), slot = conn_id_slot(conn);

	return w < IOTD_MAX_WORKERS && slot < r->n_conn_slots[w] && r->conn_slots[w][slot];
}

static struct session *router_find_pending(struct router *r, conn_id_t conn)
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

static bool router_kicked_take(struct router *r, conn_id_t conn)
{
	struct router_kicked *k;

	HASH_FIND(hh, r->kicked, &conn, sizeof(conn), k);
	if (!k)
		return false;
	HASH_DEL(r->kicked, k);
	free(k);
	return true;
}

struct connect_fields {
	conn_id_t conn;
	uint8_t clean;
	uint16_t keepalive;
	const uint8_t *client_id, *remote, *will_topic, *will_payload;
	uint16_t client_id_len, remote_len, will_topic_len;
	uint8_t will_flag, will_qos, will_retain;
	uint32_t will_payload_len;
};

static struct session_connect *session_connect_new(const struct connect_fields *f)
{
	size_t remote_len = MIN((size_t)f->remote_len, (size_t)ROUTER_REMOTE_LEN - 1);
	size_t topic_len = f->will_flag ? f->will_topic_len : 0;
	size_t payload_len = f->will_flag ? f->will_payload_len : 0;
	struct session_connect *c;
	char *p;

	c = malloc(sizeof(*c) + (size_t)f->client_id_len + 1 + remote_len + 1 + topic_len + 1 +
		   payload_len);
	if (!c)
		return NULL;
	c->conn = f->conn;
	c->clean = f->clean;
	c->keepalive = f->keepalive;
	c->will_flag = f->will_flag;
	c->will_qos = f->will_qos;
	c->will_retain = f->will_retain;
	c->client_id_len = f->client_id_len;
	c->remote_len = (uint8_t)remote_len;
	c->will_topic_len = (uint16_t)topic_len;
	c->will_payload_len = (uint32_t)payload_len;

	p = c->data;
	if (f->client_id_len)
		memcpy(p, f->client_id, f->client_id_len);
	p[f->client_id_len] = '\0';
	p += f->client_id_len + 1;
	if (remote_len)
		memcpy(p, f->remote, remote_len);
	p[remote_len] = '\0';
	p += remote_len + 1;
	if (topic_len)
		memcpy(p, f->will_topic, topic_len);
	p[topic_len] = '\0';
	p += topic_len + 1;
	if (payload_len)
		memcpy(p, f->will_payload, payload_len);
	return c;
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

/* Accept a CONNECT: takes ownership of c. */
static void router_connect_apply(struct router *r, struct session_connect *c)
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
		session_free(r, s);
		s = NULL;
	}
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
	s->clean = c->clean;
	free(s->cx);
	s->cx = c;
	free(s->remote_off);
	s->remote_off = NULL;

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

/* Replace the inbound QoS 2 ids with the n (unaligned u16) at ids. */
static void session_qos2_ids_set(struct session *s, const uint8_t *ids, uint16_t n)
{
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
	memcpy(s->qos2_ids, ids, (size_t)n * sizeof(uint16_t));
	s->n_qos2_ids = n;
}

/*
 * The session's connection is gone. The will goes out before the session
 * state does, so a persistent session subscribed to it keeps it. A CONNECT
 * waiting for this close is then accepted. ids: the inbound QoS 2 ids the
 * worker reported at close; NULL when the worker died (the router's own
 * record of them, kept by REC_QOS2_IN, stands).
 */
static void router_close(struct router *r, struct session *s, bool publish_will,
			 const uint8_t *ids, uint16_t n)
{
	struct session_connect *pending = s->pending;

	if (pending) {
		router_waiting_del(r, pending->conn);
		s->pending = NULL;
	}
	session_cursors_drop(r, s);
	router_conn_unlink(r, s);
	s->online = false;

	if (publish_will && s->cx && s->cx->will_flag) {
		struct router_msg will = {
			.qos = s->cx->will_qos,
			.retain = s->cx->will_retain,
			.topic = cx_will_topic(s->cx),
			.topic_len = s->cx->will_topic_len,
			.payload = cx_will_payload(s->cx),
			.payload_len = s->cx->will_payload_len,
		};

		log_client(LOG_LVL_INFO, s->client_id, session_remote(s), "publishing will on '%s'",
			   cx_will_topic(s->cx));
		router_publish(r, &will);
	}

	if (s->clean) {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s), "session ended");
		session_free(r, s);
	} else {
		/* Kept for log lines while offline; without it (out of memory) they show none. */
		free(s->remote_off);
		s->remote_off = s->cx ? strdup(cx_remote(s->cx)) : NULL;
		free(s->cx);
		s->cx = NULL;
		if (ids)
			session_qos2_ids_set(s, ids, n);
		session_copies_release(r, s);
		s->q_owed_tail = NULL;
		s->last_seen_ms = r->now_ms;
		session_offline_link(r, s);
		session_persist(r, s);
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "session offline (%zu stored messages)", session_queue_len(s));
	}
	if (pending)
		router_connect_apply(r, pending);
}

/* ---- subscriptions and publishing -------------------------------------- */

static uint8_t router_subscribe_one(struct router *r, struct session *s, const char *filter,
				    uint16_t len, uint8_t qos)
{
	struct session_sub *sub;
	bool added = false;

	if (qos > 2 || !len || !topic_filter_valid(filter, len, 0, 0))
		return ROUTER_SUBACK_FAILURE;
	HASH_FIND(hh, s->subs, filter, len, sub);
	if (sub && sub->qos == qos)
		return qos;               /* the same again (a filter repeated in one SUBSCRIBE): nothing changes */
	if (!sub) {
		sub = malloc(sizeof(*sub) + (size_t)len + 1);
		if (!sub)
			goto nomem;
		sub->cur = NULL;
		memcpy(sub->filter, filter, len);
		sub->filter[len] = '\0';
		sub->len = len;
		added = true;
	}
	if (topic_trie_subscribe(r->trie, filter, len, s, qos) < 0)
		goto nomem_free;
	if (added) {
		HASH_ADD_KEYPTR(hh, s->subs, sub->filter, sub->len, sub);
		if (!sub->hh.tbl) {
			topic_trie_unsubscribe(r->trie, filter, len, s);
			goto nomem_free;
		}
	}
	sub->qos = qos;
	router_routes_changed(r);
	if (r->st)
		store_sub_put(r->st, s->sid, sub->filter, sub->len, qos);
	log_debug("router: session %u subscribed to '%s' qos %u", s->sid, sub->filter, qos);
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
static bool router_subscription_refused(struct session *s, const struct iotd_config *cfg,
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

static void router_unsubscribe_one(struct router *r, struct session *s, const char *filter,
				   uint16_t len)
{
	struct session_sub *sub;

	HASH_FIND(hh, s->subs, filter, len, sub);
	if (!sub)
		return;
	if (r->st)
		store_sub_del(r->st, s->sid, sub->filter, sub->len);
	router_cursor_drop(r, sub);
	topic_trie_unsubscribe(r->trie, sub->filter, sub->len, s);
	HASH_DEL(s->subs, sub);
	free(sub);
	router_routes_changed(r);
}

static void router_retain(struct router *r, const struct router_msg *m)
{
	int rc = retain_put(r->retained, m->topic, m->topic_len, m->payload, m->payload_len,
			    m->qos);

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

static bool router_grow_targets(struct router *r)
{
	size_t cap = r->cap_targets ? r->cap_targets * 2 : 64;
	struct session **t = reallocarray(r->targets, cap, sizeof(*t));

	if (!t)
		return false;
	r->targets = t;
	r->cap_targets = cap;
	return true;
}

static void router_match_cb(void *subscriber, uint8_t qos, void *arg)
{
	struct router *r = arg;
	struct session *s = subscriber;

	if (s->stamp == r->stamp) {
		s->granted = MAX(s->granted, qos);
		return;
	}
	if (r->n_targets == r->cap_targets && !router_grow_targets(r)) {
		r->targets_short = true;
		if (!r->warned_targets)
			log_error("router: out of memory: a message misses some subscribers");
		r->warned_targets = true;
		return;
	}
	s->stamp = r->stamp;
	s->granted = qos;
	r->targets[r->n_targets++] = s;
}

static void router_publish(struct router *r, const struct router_msg *m)
{
	struct router_msg routed = *m;
	struct msg_body *body = NULL;    /* held once by every queue the message enters */

	if (m->retain)
		router_retain(r, m);
	/* Retain is set only on deliveries caused by a new subscription [MQTT-3.3.1-9]. */
	routed.retain = 0;

	r->stamp++;
	r->n_targets = 0;
	r->targets_short = false;
	topic_trie_match(r->trie, m->topic, m->topic_len, router_match_cb, r);
	for (size_t i = 0; i < r->n_targets; i++) {
		struct session *s = r->targets[i];
		uint8_t qos = MIN(m->qos, s->granted);

		if (s->online && !s->pending)
			router_deliver_add(r, &routed, s, qos,
					   session_copy_new(r, s, 0, MSG_QUEUED,
							    &(struct router_msg){ qos, 0, m->topic,
										  m->topic_len, m->payload,
										  m->payload_len }, &body));
		else if ((qos > 0 && (!s->clean || s->online)) ||
			 (qos == 0 && !s->clean && !s->online && r->cfg->queue_qos0_messages))
			/* Offline persistent, or taken over: the next connection gets it. */
			session_enqueue(r, s, false, 0, MSG_QUEUED,
					&(struct router_msg){ qos, 0, m->topic, m->topic_len,
							      m->payload, m->payload_len }, &body);
	}
	msg_body_discard(body);
	router_deliver_flush(r);
	log_debug("router: '%.*s' qos %u to %zu sessions", (int)m->topic_len, m->topic, m->qos,
		  r->n_targets);
}

/* ---- record handlers --------------------------------------------------- */

/*
 * Provenance: the conn must be one the worker whose ring carried the
 * record can hold now: its own, of its current epoch, in a slot it can
 * have. A worker cannot act for another's connections or sessions, nor
 * for its dead predecessor's, nor make the slot arrays grow past its
 * capacity.
 */
static bool router_conn_ok(const struct router *r, unsigned worker, conn_id_t conn)
{
	return conn_id_worker(conn) == worker &&
	       conn_id_epoch(conn) == (r->worker_epoch[worker] & 0xffff) &&
	       conn_id_slot(conn) < r->worker_slots[worker];
}

static int router_on_connect(struct router *r, unsigned worker, struct recr *rd)
{
	struct connect_fields f = { 0 };
	struct session_connect *c;

	f.conn = recr_u64(rd);
	f.clean = recr_u8(rd);
	f.keepalive = recr_u16(rd);
	recr_str(rd, &f.client_id, &f.client_id_len);
	recr_str(rd, &f.remote, &f.remote_len);
	f.will_flag = recr_u8(rd);
	f.will_qos = recr_u8(rd);
	f.will_retain = recr_u8(rd);
	recr_str(rd, &f.will_topic, &f.will_topic_len);
	recr_bytes(rd, &f.will_payload, &f.will_payload_len);
	if (recr_end(rd) || !router_conn_ok(r, worker, f.conn) || f.clean > 1 ||
	    f.will_flag > 1 || f.will_qos > 2 || f.will_retain > 1)
		return ROUTER_BAD;
	if (memchr(f.client_id, '\0', f.client_id_len))
		return ROUTER_BAD;
	if (router_conn_slot_taken(r, f.conn) || router_find_pending(r, f.conn))
		return ROUTER_BAD;         /* a second CONNECT on one connection */
	if (f.will_flag && !topic_name_valid((const char *)f.will_topic, f.will_topic_len, 0, 0)) {
		log_warn("router: CONNECT from worker %u with an invalid will topic: will ignored",
			 worker);
		f.will_flag = 0;
	}
	if (!f.client_id_len)
		f.clean = 1;              /* a server-named session cannot persist [MQTT-3.1.3-8] */

	c = session_connect_new(&f);
	if (!c) {
		log_error("router: out of memory: connection refused");
		router_send_connack(r, f.conn, 0, MQTT_CONNACK_UNAVAILABLE, false, NULL, 0);
		return ROUTER_OK;
	}
	router_connect_apply(r, c);
	return ROUTER_OK;
}

static int router_on_subscribe(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint16_t n = recr_u16(rd);
	struct recr start = *rd, fr;
	struct recw *ack = &r->ack;
	const uint8_t *f;
	uint16_t flen;
	size_t codes;
	struct session *s;

	for (uint16_t i = 0; i < n; i++) {
		recr_str(rd, &f, &flen);
		recr_u8(rd);
	}
	if (recr_end(rd) || !router_conn_ok(r, worker, conn))
		return ROUTER_BAD;
	s = router_find_conn(r, conn);
	if (!s)
		return ROUTER_NOCONN;

	recw_reset(ack);
	recw_u64(ack, conn);
	recw_u16(ack, packet_id);
	recw_u16(ack, n);
	codes = ack->len;
	fr = start;
	for (uint16_t i = 0; i < n; i++) {
		uint8_t qos;

		recr_str(&fr, &f, &flen);
		qos = recr_u8(&fr);
		recw_u8(ack, router_subscription_refused(s, r->cfg, (const char *)f, flen) ?
			     ROUTER_SUBACK_FAILURE :
			     router_subscribe_one(r, s, (const char *)f, flen, qos));
	}
	router_emit(r, worker, REC_SUBACK, ack);
	if (ack->oom)
		return ROUTER_OK;

	/*
	 * Retained messages after the SUBACK, for every filter granted, sent
	 * by router_send_retained() as the ring takes them. A filter repeated
	 * in the packet is one subscription at its last QoS, and one walk.
	 */
	fr = start;
	for (uint16_t i = 0; i < n; i++) {
		struct session_sub *sub;

		recr_str(&fr, &f, &flen);
		recr_u8(&fr);
		if (ack->buf[codes + i] == ROUTER_SUBACK_FAILURE)
			continue;
		HASH_FIND(hh, s->subs, f, flen, sub);
		if (sub)
			router_cursor_start(r, s, sub);
	}
	return ROUTER_OK;
}

static int router_on_unsubscribe(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint16_t n = recr_u16(rd);
	struct recr fr = *rd;
	const uint8_t *f;
	uint16_t flen;
	struct session *s;
	struct recw *w = &r->out;

	for (uint16_t i = 0; i < n; i++)
		recr_str(rd, &f, &flen);
	if (recr_end(rd) || !router_conn_ok(r, worker, conn))
		return ROUTER_BAD;
	s = router_find_conn(r, conn);
	if (!s)
		return ROUTER_NOCONN;
	for (uint16_t i = 0; i < n; i++) {
		recr_str(&fr, &f, &flen);
		router_unsubscribe_one(r, s, (const char *)f, flen);
	}
	recw_reset(w);
	recw_u64(w, conn);
	recw_u16(w, packet_id);
	router_emit(r, worker, REC_UNSUBACK, w);
	return ROUTER_OK;
}

/*
 * Can the worker that asked deliver the topic's messages itself? Only
 * when the match just made (router_publish) found nothing but clean
 * sessions online on that worker: they need no copy, no queue and no
 * other worker. Anything else stays with the router.
 */
static bool router_route_local(const struct router *r, unsigned worker)
{
	if (r->targets_short || r->n_targets > ROUTER_ROUTE_MAX)
		return false;
	for (size_t i = 0; i < r->n_targets; i++) {
		const struct session *s = r->targets[i];

		if (!s->online || s->pending || !s->clean || conn_id_worker(s->conn) != worker)
			return false;
	}
	return true;
}

static void router_route_record(const struct router *r, struct recw *w, uint64_t ask,
				const struct router_msg *m, bool local)
{
	recw_reset(w);
	recw_u64(w, ask);
	recw_u64(w, atomic_load_explicit(r->route_gen, memory_order_relaxed));
	recw_str(w, m->topic, m->topic_len);
	recw_u8(w, local);
	recw_u32(w, local ? (uint32_t)r->n_targets : 0);
	for (size_t i = 0; local && i < r->n_targets; i++) {
		recw_u64(w, r->targets[i]->conn);
		recw_u8(w, r->targets[i]->granted);
	}
}

/* Answer a REC_PUBLISH that asked for its topic's route (rec.h REC_ROUTE). */
static void router_answer_route(struct router *r, unsigned worker, uint64_t ask,
				const struct router_msg *m)
{
	bool local = router_route_local(r, worker);

	router_route_record(r, &r->out, ask, m, local);
	/* An answer too big for the ring would be dropped and asked for again and again. */
	if (local && r->max_record && r->out.len > r->max_record)
		router_route_record(r, &r->out, ask, m, false);
	router_emit(r, worker, REC_ROUTE, &r->out);
}

static int router_on_publish(struct router *r, unsigned worker, struct recr *rd)
{
	struct router_msg m;
	const uint8_t *topic;
	uint8_t flags;
	uint64_t ask = 0;

	m.qos = recr_u8(rd);
	flags = recr_u8(rd);
	recr_str(rd, &topic, &m.topic_len);
	recr_bytes(rd, &m.payload, &m.payload_len);
	if (flags & REC_PUB_ASK)
		ask = recr_u64(rd);
	m.topic = (const char *)topic;
	m.retain = flags & REC_PUB_RETAIN;
	if (recr_end(rd) || m.qos > 2 || (flags & ~(REC_PUB_RETAIN | REC_PUB_ASK)) ||
	    !topic_name_valid(m.topic, m.topic_len, 0, 0))
		return ROUTER_BAD;
	router_publish(r, &m);
	if (flags & REC_PUB_ASK)
		router_answer_route(r, worker, ask, &m);
	return ROUTER_OK;
}

static int router_on_session_msg(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint32_t sid = recr_u32(rd);
	uint64_t copy = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint8_t state = recr_u8(rd);
	struct router_msg m;
	const uint8_t *topic;
	struct session *s;

	m.qos = recr_u8(rd);
	m.retain = recr_u8(rd);
	recr_str(rd, &topic, &m.topic_len);
	recr_bytes(rd, &m.payload, &m.payload_len);
	m.topic = (const char *)topic;
	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || state > MSG_PUBREL ||
	    m.qos > 2 || m.retain > 1)
		return ROUTER_BAD;
	/* An unfinished exchange needs QoS >= 1 (PUBREL: 2); anything to publish needs a topic. */
	if ((state != MSG_QUEUED && m.qos == 0) || (state == MSG_PUBREL && m.qos != 2))
		return ROUTER_BAD;
	if (state != MSG_PUBREL && !topic_name_valid(m.topic, m.topic_len, 0, 0))
		return ROUTER_BAD;

	s = router_find_sid(r, sid);
	if (!s) {
		log_debug("router: stored message for gone session %u dropped", sid);
		return ROUTER_OK;
	}
	/*
	 * Provenance: only what one of the session's own connections (the
	 * current or last one, or the one a takeover replaced) owes it. A
	 * worker cannot queue messages for sessions it never held.
	 */
	if (conn != s->conn && conn != s->prev_conn)
		return ROUTER_NOCONN;
	if (copy) {
		/* The router holds this one already, with its state as last reported. */
		return ROUTER_OK;
	}
	if (s->online && s->conn == conn) {
		/* Owed by the session's own closing connection (REC_CLOSE follows). */
		session_enqueue_one(r, s, true, packet_id, state, &m);
	} else if (!s->online || s->pending) {
		if (m.qos > 0)
			session_enqueue_one(r, s, false, packet_id, state, &m);
	} else {
		/*
		 * A delivery or stored message that reached a connection the session
		 * has since left: on to the current one as it is, as a resume would.
		 * A PUBREL carries no message, so it cannot become a new delivery;
		 * the worker turns an in-flight one whose id is taken into one.
		 */
		struct msg_body *body = NULL;

		router_send_session_msg(r, s->conn, s->sid,
					session_copy_new(r, s, packet_id, state, &m, &body), packet_id,
					state, &m);
		msg_body_discard(body);
	}
	return ROUTER_OK;
}

/* A persistent session's inbound QoS 2 id was taken (PUBLISH) or released (PUBREL). */
static int router_on_qos2_in(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint32_t sid = recr_u32(rd);
	uint16_t packet_id = recr_u16(rd);
	uint8_t held = recr_u8(rd);
	struct session *s;
	uint16_t i;

	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || !packet_id || held > 1)
		return ROUTER_BAD;
	s = router_find_sid(r, sid);
	if (!s || !s->online || s->conn != conn || s->clean)
		return ROUTER_OK;            /* gone meanwhile: its CLOSE carried the ids */
	for (i = 0; i < s->n_qos2_ids && s->qos2_ids[i] != packet_id; i++)
		;
	if (held && i == s->n_qos2_ids) {
		uint16_t *grown;

		if (s->n_qos2_ids == UINT16_MAX)
			return ROUTER_BAD;
		grown = realloc(s->qos2_ids, ((size_t)s->n_qos2_ids + 1) * sizeof(*grown));
		if (!grown) {
			log_client(LOG_LVL_ERROR, s->client_id, session_remote(s),
				   "out of memory: inbound QoS 2 id %u not kept against a worker crash",
				   packet_id);
			return ROUTER_OK;
		}
		s->qos2_ids = grown;
		s->qos2_ids[s->n_qos2_ids++] = packet_id;
	} else if (!held && i < s->n_qos2_ids) {
		s->qos2_ids[i] = s->qos2_ids[--s->n_qos2_ids];
	} else {
		return ROUTER_OK;
	}
	session_persist(r, s);
	return ROUTER_OK;
}

/* A worker's report on a message the router holds a copy of. */
static int router_on_msg_state(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint32_t sid = recr_u32(rd);
	uint64_t copy = recr_u64(rd);
	uint16_t packet_id = recr_u16(rd);
	uint8_t state = recr_u8(rd);
	struct session_msg *q, *prev;
	struct session *s;

	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || !copy ||
	    state < MSG_INFLIGHT || state > MSG_DONE || (state != MSG_DONE && !packet_id))
		return ROUTER_BAD;
	s = router_find_sid(r, sid);
	/* Reports come before the connection's REC_CLOSE: a copy released since is not theirs. */
	if (!s || !s->online || s->conn != conn || !(q = session_copy_find(s, copy, &prev))) {
		log_debug("router: state of message %llu of gone session %u ignored",
			  (unsigned long long)copy, sid);
		return ROUTER_OK;
	}
	if (state == MSG_DONE) {
		session_msg_drop(r, s, q, prev);
		return ROUTER_OK;
	}
	if (state == MSG_PUBREL && q->qos != 2)
		return ROUTER_BAD;
	q->packet_id = packet_id;
	q->state = state;
	session_msg_persist(r, s, q);
	return ROUTER_OK;
}

static int router_on_close(struct router *r, unsigned worker, struct recr *rd)
{
	conn_id_t conn = recr_u64(rd);
	uint8_t publish_will = recr_u8(rd);
	uint16_t n = recr_u16(rd);
	const uint8_t *ids = rd->p;
	struct session *s;

	for (uint16_t i = 0; i < n; i++)
		recr_u16(rd);
	if (recr_end(rd) || !router_conn_ok(r, worker, conn) || publish_will > 1)
		return ROUTER_BAD;
	s = router_find_conn(r, conn);
	if (s) {
		router_close(r, s, publish_will, ids, n);
		return ROUTER_OK;
	}
	s = router_find_pending(r, conn);
	if (s) {
		/* Gone before the connection it takes over closed: never accepted, no will. */
		log_client(LOG_LVL_INFO, s->client_id, cx_remote(s->pending),
			   "connection closed while waiting for its session");
		session_pending_drop(r, s);
		session_persist(r, s);
		return ROUTER_OK;
	}
	if (router_kicked_take(r, conn))
		return ROUTER_OK;
	return ROUTER_NOCONN;
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
			router_close(r, s, true, NULL, 0);
			closed++;
		}
	}
	return closed;
}

size_t router_worker_down(struct router *r, unsigned worker, uint32_t new_epoch)
{
	struct session *s;
	struct router_waiting *w, *wtmp;
	struct router_kicked *k, *ktmp;
	size_t closed;

	if (worker >= r->nworkers)
		return 0;
	r->worker_epoch[worker] = new_epoch;
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
	closed = router_close_dead(r, worker, new_epoch);
	log_warn("router: worker %u down (epoch now %u): %zu sessions disconnected", worker,
		 new_epoch, closed);
	return closed;
}

void router_set_worker(struct router *r, unsigned worker, uint32_t epoch, uint32_t slots)
{
	if (worker >= r->nworkers)
		return;
	r->worker_epoch[worker] = epoch;
	/* Slots are 24 bits in a conn id: past that the check is moot. */
	r->worker_slots[worker] = MIN(slots, 1u << 24);
}

typedef int (*router_handler_fn)(struct router *r, unsigned worker, struct recr *rd);

static const router_handler_fn router_handlers[REC_TYPE_MAX] = {
	[REC_CONNECT] = router_on_connect,
	[REC_SUBSCRIBE] = router_on_subscribe,
	[REC_UNSUBSCRIBE] = router_on_unsubscribe,
	[REC_PUBLISH] = router_on_publish,
	[REC_SESSION_MSG] = router_on_session_msg,
	[REC_CLOSE] = router_on_close,
	[REC_MSG_STATE] = router_on_msg_state,
	[REC_QOS2_IN] = router_on_qos2_in,
};

/* ---- public logic interface -------------------------------------------- */

int router_handle(struct router *r, unsigned worker, uint16_t type, const void *payload,
		  size_t len)
{
	unsigned slot = type < REC_TYPE_MAX ? type : REC_TYPE_MAX;
	struct recr rd;
	int rc;

	if (worker >= r->nworkers || type >= REC_TYPE_MAX || !router_handlers[type]) {
		rc = ROUTER_BAD;
	} else {
		recr_init(&rd, payload, len);
		rc = router_handlers[type](r, worker, &rd);
	}
	if (rc == ROUTER_OK)
		return 0;
	r->bad_records++;
	/* Once per record type: a buggy worker must not flood the log. */
	if (rc == ROUTER_BAD && !r->warned_bad[slot]) {
		log_warn("router: malformed or unexpected record %s (type %u, %zu bytes) from ring %u dropped (logged once)",
			 rec_type_name(type), type, len, worker);
		r->warned_bad[slot] = true;
	} else if (rc == ROUTER_NOCONN && !r->warned_noconn[slot]) {
		log_warn("router: record %s for an unknown connection from worker %u dropped (logged once)",
			 rec_type_name(type), worker);
		r->warned_noconn[slot] = true;
	}
	return -1;
}

/*
 * Sessions an earlier daemon left offline: their clock is not ours, so
 * their timeout starts now. They sort last in the offline list.
 */
static void router_restamp(struct router *r)
{
	struct session *s;

	for (s = r->off_tail; s && s->last_seen_ms == STORE_SEEN_UNKNOWN; s = s->off_prev) {
		s->last_seen_ms = r->now_ms;
		session_persist(r, s);
	}
	r->restamp = false;
}

struct router_resync_ctx {
	struct router *r;
	bool found;
};

static void router_resync_retained_cb(const char *topic, size_t topic_len,
				      const uint8_t *payload, size_t payload_len, uint8_t qos,
				      void *arg)
{
	struct router_resync_ctx *ctx = arg;

	ctx->found = true;
	store_retained_put(ctx->r->st, topic, (uint16_t)topic_len, qos, payload,
			   (uint32_t)payload_len);
}

static void router_resync_session(struct router *r, struct session *s)
{
	struct session_sub *sub, *tmp;

	session_persist(r, s);
	HASH_ITER(hh, s->subs, sub, tmp)
		store_sub_put(r->st, s->sid, sub->filter, sub->len, sub->qos);
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
	long secs = r->cfg->session_timeout_secs;
	uint64_t timeout_ms;
	struct session *s;

	r->now_ms = now_ms;
	router_held_check(r);
	if (r->restamp)
		router_restamp(r);
	if (r->st && store_stale(r->st)) {
		if (now_ms >= r->resync_at_ms) {
			router_resync(r);
			r->resync_wait_ms = r->resync_wait_ms ?
					    MIN(r->resync_wait_ms * 2, ROUTER_RESYNC_MAX_MS) : 1000;
			r->resync_at_ms = now_ms + r->resync_wait_ms;
		}
	} else {
		r->resync_at_ms = r->resync_wait_ms = 0;
	}
	if (secs <= 0)
		return;
	timeout_ms = (uint64_t)secs * 1000;
	/* Offline sessions are linked in the order they left: the oldest first. */
	while ((s = r->off_head) && now_ms >= s->last_seen_ms &&
	       now_ms - s->last_seen_ms > timeout_ms) {
		log_client(LOG_LVL_INFO, s->client_id, session_remote(s),
			   "session expired after %ld s offline (%zu stored messages dropped)",
			   secs, session_queue_len(s));
		session_free(r, s);
	}
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
						    const struct store_connect *c)
{
	struct connect_fields f = {
		.conn = c->conn,
		.clean = c->clean,
		.keepalive = c->keepalive,
		.client_id = (const uint8_t *)ss->client_id,
		.client_id_len = ss->client_id_len,
		.remote = (const uint8_t *)c->remote,
		.remote_len = (uint16_t)strnlen(c->remote, ROUTER_REMOTE_LEN - 1),
		.will_flag = c->will_flag,
		.will_qos = c->will_qos,
		.will_retain = c->will_retain,
		.will_topic = (const uint8_t *)c->will_topic,
		.will_topic_len = c->will_topic_len,
		.will_payload = c->will_payload,
		.will_payload_len = c->will_payload_len,
	};

	return session_connect_new(&f);
}

/* A session in no lookup yet: only its allocations to free. */
static void session_unlinked_free(struct session *s)
{
	free(s->pending);
	free(s->cx);
	free(s->remote_off);
	free(s->qos2_ids);
	free(s);
}

/* The allocations of a stored session, linked nowhere yet. */
static struct session *session_load_new(const struct store_session *ss)
{
	struct session *s = session_alloc(ss->client_id, ss->client_id_len);

	if (!s)
		return NULL;
	s->sid = ss->sid;
	s->clean = ss->clean;
	s->last_seen_ms = ss->last_seen_ms;
	if (!ss->online && !(s->remote_off = strdup(ss->remote)))
		goto fail;
	if (ss->n_qos2_ids) {
		s->qos2_ids = malloc((size_t)ss->n_qos2_ids * sizeof(uint16_t));
		if (!s->qos2_ids)
			goto fail;
		memcpy(s->qos2_ids, ss->qos2_ids, (size_t)ss->n_qos2_ids * sizeof(uint16_t));
		s->n_qos2_ids = ss->n_qos2_ids;
	}
	if (ss->online && !(s->cx = session_connect_load(ss, &ss->cx)))
		goto fail;
	if (ss->pending && !(s->pending = session_connect_load(ss, &ss->pend)))
		goto fail;
	return s;
fail:
	session_unlinked_free(s);
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
	if (s->cx) {
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
			session_unlinked_free(s);
		ld->failed = true;
		return;
	}
	if (!s->online && !router_load_offline(ld, s)) {
		ld->failed = true;
		return;
	}
	if (s->last_seen_ms == STORE_SEEN_UNKNOWN)
		r->restamp = true;
	ld->max_sid = MAX(ld->max_sid, s->sid);
	ld->sessions++;
	ld->online += s->online;
}

static void router_load_sub(void *arg, uint32_t sid, const char *filter, uint16_t len,
			    uint8_t qos)
{
	struct router_load *ld = arg;
	struct session *s = router_find_sid(ld->r, sid);

	if (s && router_subscribe_one(ld->r, s, filter, len, qos) != ROUTER_SUBACK_FAILURE)
		ld->subs++;
	else
		ld->skipped++;
}

static bool msg_body_has(const void *item, const void *key)
{
	const struct msg_body *b = item;
	const struct router_msg *m = key;

	return b->topic_len == m->topic_len && b->payload_len == m->payload_len &&
	       memcmp(b->data, m->topic, m->topic_len) == 0 &&
	       (!m->payload_len || memcmp(b->data + m->topic_len, m->payload, m->payload_len) == 0);
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
	struct router_msg rm = { m->qos, m->retain, m->topic, m->topic_len, m->payload,
				 m->payload_len };
	struct msg_body *body;
	struct session_msg *q;

	if (!s || m->state > MSG_PUBREL) {
		ld->skipped++;
		return;
	}
	body = router_load_body(ld, &rm);
	q = session_msg_new(r, m->packet_id, m->state, m->qos, m->retain, body);
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
				 const uint8_t *payload, uint32_t payload_len)
{
	struct router_load *ld = arg;
	int rc = qos > 2 ? RETAIN_CLEARED :
		 retain_put(ld->r->retained, topic, len, payload, payload_len, qos);

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

	if (x->last_seen_ms != y->last_seen_ms)
		return x->last_seen_ms < y->last_seen_ms ? -1 : 1;
	return x->sid < y->sid ? -1 : x->sid > y->sid;
}

/* Rebuild sessions, subscriptions, queues and retained messages as the store last committed them. */
static int router_load(struct router *r, struct store *st)
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
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		recw_init(&r->deliver[i]);
	r->trie = topic_trie_new();
	r->retained = retain_new(limit > 0 ? (size_t)limit : 0,
				 cfg->retained_bytes_limit > 0 ? (size_t)cfg->retained_bytes_limit : 0);
	if (!r->trie || !r->retained || (st && router_load(r, st) < 0)) {
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
	struct session *s;
	struct router_kicked *k, *ktmp;

	if (!r)
		return;
	/* The store keeps what was committed: freeing memory is not ending sessions. */
	r->st = NULL;
	/* Nor is it a change of where messages go: the route generation stays as it is. */
	r->route_gen = &r->route_gen_own;
	/* From the last slot down, each slot looked at again after a removal: see hidx.c. */
	for (uint32_t i = hidx_slots(&r->by_sid); i-- > 0;)
		while ((s = hidx_at(&r->by_sid, i)))
			session_free(r, s);
	hidx_free(&r->by_sid);
	hidx_free(&r->by_id);
	router_touched_clear(r);
	HASH_ITER(hh, r->kicked, k, ktmp) {
		HASH_DEL(r->kicked, k);
		free(k);
	}
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		free(r->conn_slots[i]);
	topic_trie_free(&r->trie);
	retain_free(&r->retained);
	recw_free(&r->out);
	recw_free(&r->ack);
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		recw_free(&r->deliver[i]);
	free(r->targets);
	free(r);
	*rp = NULL;
}

/* ---- the process ------------------------------------------------------- */

#define ROUTER_BATCH 256             /* records per ring per turn: no worker starves the others */
#define ROUTER_POLL_EVERY 16       /* busy turns between two looks at control events */
#define ROUTER_MAX_EVENTS 8
#define ROUTER_NO_POS UINT64_MAX     /* a ring position the store does not have yet */
#define ROUTER_POISON_CRASHES 3      /* deaths in a row on one record before it is set aside */

/* A record the r2w ring had no room for yet (kept in the store's outbox under seq too). */
struct router_blrec {
	struct router_blrec *next;
	uint64_t seq;
	uint16_t type;
	bool stored;                 /* also in the store's outbox */
	uint32_t len;
	uint8_t data[];
};

/*
 * Records for one worker waiting for room in its r2w ring, in order. Its
 * bytes are capped by max_router_backlog_bytes (router_proc_emit): past
 * the cap, deliveries are dropped; an episode lasts until it is empty.
 */
struct router_backlog {
	struct router_blrec *head, *tail;
	size_t n;
	size_t bytes;                /* held, with each record's own overhead */
	uint64_t next_seq;
	uint64_t dropped;            /* records dropped in this episode */
};

struct router_proc {
	struct role_env *env;
	struct router *r;
	struct store *st;
	bool st_memory;                 /* backend "memory": removed at a graceful stop */
	char st_dir[256];
	int epfd, tfd;
	struct shmring_consumer in[IOTD_MAX_WORKERS];
	struct shmring_producer out[IOTD_MAX_WORKERS];
	bool dirty[IOTD_MAX_WORKERS];   /* records reserved, not committed */
	struct router_backlog backlog[IOTD_MAX_WORKERS];
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

static uint64_t router_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool router_backlog_append(struct router_proc *p, unsigned worker, uint64_t seq,
				  uint16_t type, const void *data, uint32_t len, bool stored)
{
	struct router_backlog *b = &p->backlog[worker];
	struct router_blrec *e = malloc(sizeof(*e) + len);

	if (!e)
		return false;
	e->next = NULL;
	e->seq = seq;
	e->type = type;
	e->stored = stored;
	e->len = len;
	if (len)
		memcpy(e->data, data, len);
	b->bytes += sizeof(*e) + len;
	if (b->tail)
		b->tail->next = e;
	else
		b->head = e;
	b->tail = e;
	b->next_seq = MAX(b->next_seq, seq + 1);
	if (b->n++ == 0)
		log_debug("router: ring to worker %u full: holding records", worker);
	return true;
}

/*
 * A DELIVER of a QoS 0 message (its header starts with the QoS, see
 * router_deliver_begin) may be lost with the router, as with a worker:
 * storing it would only fill the store while a slow worker floods.
 */
static bool router_rec_durable(uint16_t type, const struct recw *rec)
{
	if (type == REC_ROUTE)
		return false;       /* a worker that misses one asks again */
	return type != REC_DELIVER || (rec->len && rec->buf[0] != 0);
}

static bool router_backlog_push(struct router_proc *p, unsigned worker, uint16_t type,
				const struct recw *rec)
{
	uint64_t seq = p->backlog[worker].next_seq;
	bool stored = p->st && router_rec_durable(type, rec);

	if (!router_backlog_append(p, worker, seq, type, rec->buf, (uint32_t)rec->len, stored))
		return false;
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
	struct router_backlog *b = &p->backlog[worker];
	long cap = p->env->cfg->max_router_backlog_bytes;

	if (cap <= 0 || !b->head || (type != REC_DELIVER && type != REC_ROUTE) ||
	    b->bytes + sizeof(struct router_blrec) + rec->len <= (size_t)cap)
		return false;
	if (!b->dropped++)
		log_warn("router: ring to worker %u full and %zu bytes held (max_router_backlog_bytes %ld): dropping deliveries to it until it catches up",
			 worker, b->bytes, cap);
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
	if (!p->backlog[worker].head && router_proc_ring_open(p, worker)) {
		dst = shmring_reserve(&p->out[worker], type, 0, (uint32_t)rec->len);
		if (dst) {
			memcpy(dst, rec->buf, rec->len);
			p->dirty[worker] = true;
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

/* Move held records into the ring (reserved: published after the store's commit). */
static void router_backlog_flush(struct router_proc *p, unsigned worker)
{
	struct router_backlog *b = &p->backlog[worker];
	struct router_blrec *e;
	void *dst;

	if (!b->head || !router_proc_ring_open(p, worker))
		return;
	while ((e = b->head)) {
		dst = shmring_reserve(&p->out[worker], e->type, 0, e->len);
		if (!dst && errno == EPROTO)
			router_proc_fault(p, worker, "published an impossible position in the ring to it");
		if (!dst)
			return;         /* p_wait is set: the worker wakes us when it makes room */
		memcpy(dst, e->data, e->len);
		p->dirty[worker] = true;
		if (e->stored && p->st)
			store_outbox_del(p->st, worker, e->seq);
		b->head = e->next;
		if (!b->head)
			b->tail = NULL;
		b->n--;
		b->bytes -= sizeof(*e) + e->len;
		free(e);
	}
	if (b->dropped) {
		log_info("router: ring to worker %u caught up; %llu deliveries to it were dropped",
			 worker, (unsigned long long)b->dropped);
		b->dropped = 0;
	}
}

/* The retained messages a subscription is owed wait while anything is held for its worker. */
static bool router_proc_room(void *arg, unsigned worker)
{
	struct router_proc *p = arg;

	return worker < p->env->nworkers && !p->backlog[worker].head;
}

static void router_backlog_free(struct router_backlog *b)
{
	struct router_blrec *e, *next;

	for (e = b->head; e; e = next) {
		next = e->next;
		free(e);
	}
	*b = (struct router_backlog){ 0 };
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

/* Publish each ring's batch with one wake-up at most. */
static void router_proc_publish(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++) {
		if (!p->dirty[i])
			continue;
		p->dirty[i] = false;
		if (shmring_commit(&p->out[i]))
			eventfd_wake(p->env->worker_efd[i]);
	}
}

static void router_proc_release(struct router_proc *p)
{
	for (unsigned i = 0; i < p->env->nworkers; i++)
		if (shmring_release(&p->in[i]))
			eventfd_wake(p->env->worker_efd[i]);
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
	router_proc_release(p);
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

/* IPC_WORKER_DOWN: the supervisor reaped worker i. */
static void router_proc_worker_down(struct router_proc *p, const void *data, ssize_t n)
{
	struct ipc_worker msg;

	if (n != (ssize_t)sizeof(msg))
		return;
	memcpy(&msg, data, sizeof(msg));
	if (msg.index >= p->env->nworkers)
		return;
	p->down_pending[msg.index] = true;
	p->down_epoch[msg.index] = msg.epoch;
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

static void router_proc_stats(struct router_proc *p)
{
	struct router_stats st;

	router_get_stats(p->r, &st);
	atomic_store_explicit(&p->env->shm.router->sessions, (uint32_t)st.sessions,
			      memory_order_relaxed);
	atomic_store_explicit(&p->env->shm.router->retained, (uint32_t)st.retained,
			      memory_order_relaxed);
}

/* Returns 1 to go on, 0 to stop (shutdown or the supervisor is gone). */
static int router_proc_ctl(struct router_proc *p)
{
	struct ipc_hdr hdr;
	char buf[IPC_MAX_PAYLOAD];
	int fd = -1;
	ssize_t n = ipc_recv(p->env->ctl_fd, &hdr, buf, sizeof(buf), &fd);

	if (fd >= 0)
		close(fd);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR || errno == EMSGSIZE)
			return 1;
		log_error("router: control socket: %s", strerror(errno));
		return 0;
	}
	if (n == 0 && hdr.type == 0) {
		/*
		 * The supervisor is gone, and the workers with it: drain the rings
		 * and exit (router_main). alarm() bounds that, should it hang.
		 */
		log_warn("router: the supervisor is gone; storing what the rings hold, then exiting");
		alarm(ROUTER_ORPHAN_SECS);
		return 0;
	}
	switch (hdr.type) {
	case IPC_SHUTDOWN:
		log_info("router: shutting down");
		return 0;
	case IPC_PING:
		if (ipc_send(p->env->ctl_fd, IPC_PONG, 0, NULL, 0, -1) < 0)
			log_warn("router: cannot answer the supervisor's ping: %s", strerror(errno));
		return 1;
	case IPC_LOG_SETTINGS:
		log_apply_settings(buf, (size_t)n);
		return 1;
	case IPC_CONFIG:
		if (role_take_config(p->env, buf, (size_t)n) == 0 && p->r != NULL)
			router_config_changed(p->r);
		return 1;
	case IPC_WORKER_DOWN:
		router_proc_worker_down(p, buf, n);
		return 1;
	default:
		log_debug("router: ignoring control message %u", hdr.type);
		return 1;
	}
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
	uint64_t deadline = router_now_ms() + ROUTER_STORE_FAILED_WAIT_MS;
	struct ipc_hdr hdr;
	char buf[IPC_MAX_PAYLOAD];
	int fd;

	if (ipc_send(p->env->ctl_fd, IPC_STORE_FAILED, 0, why, strlen(why) + 1, -1) < 0) {
		log_error("router: %s (and cannot tell the supervisor: %s)", why, strerror(errno));
		return;
	}
	for (uint64_t now = router_now_ms(); now < deadline; now = router_now_ms()) {
		ssize_t n;

		if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
			continue;
		fd = -1;
		n = ipc_recv(p->env->ctl_fd, &hdr, buf, sizeof(buf), &fd);
		if (fd >= 0)
			close(fd);
		if (n < 0 && (errno == EAGAIN || errno == EINTR || errno == EMSGSIZE))
			continue;
		/* Answered, or the supervisor is gone (an error, EOF); anything else waits. */
		if (n < 0 || hdr.type == 0 || hdr.type == IPC_SHUTDOWN)
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

	if (!router_backlog_append(ctx->p, ctx->worker, seq, type, data, len, true))
		log_error("router: out of memory: a held %s for worker %u is lost",
			  rec_type_name(type), ctx->worker);
}

/* w2r: skip what the state already contains. */
static void router_restore_tail(struct router_proc *p, unsigned i)
{
	uint64_t pos, tail = p->in[i].tail;
	char key[16];

	uint64_t jtail, jhead;

	snprintf(key, sizeof(key), "tail/%u", i);
	if (!store_meta_get(p->st, key, &pos))
		pos = tail;
	/* Positions only grow: the later of the store's and the journal's wins. */
	if (router_journal_get(p, i, &jtail, &jhead) && jtail > pos)
		pos = jtail;
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
	uint64_t pos, head = p->out[i].head;
	char key[16];

	uint64_t jtail, jhead;

	snprintf(key, sizeof(key), "head/%u", i);
	if (!store_meta_get(p->st, key, &pos))
		pos = head;
	if (router_journal_get(p, i, &jtail, &jhead) && jhead > pos)
		pos = jhead;
	if (pos == head)
		return;
	if (pos > head && shmring_producer_seek(&p->out[i], pos)) {
		p->dirty[i] = true;
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
		if (p->backlog[i].n)
			log_info("router: ring to worker %u: %zu held records taken back", i,
				 p->backlog[i].n);
	}
}

/* The store came back after failed writes: the held records go in again, positions with the turn. */
static void router_proc_resynced(struct router_proc *p)
{
	store_outbox_clear(p->st);
	for (unsigned i = 0; i < p->env->nworkers; i++)
		for (struct router_blrec *e = p->backlog[i].head; e; e = e->next)
			store_outbox_put(p->st, i, e->seq, e->type, e->data, e->len);
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		p->stored_tail[i] = p->stored_head[i] = ROUTER_NO_POS;
}

static void router_proc_tick(struct router_proc *p)
{
	bool stale = p->st && store_stale(p->st);

	router_tick(p->r, router_now_ms());
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

	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		p->stored_tail[i] = p->stored_head[i] = ROUTER_NO_POS;
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
	if (same)
		router_restore_rings(p);
	router_proc_poison_check(p);
	router_set_max_record(p->r, max_record);
	router_tick(p->r, router_now_ms());
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
		router_backlog_free(&p->backlog[i]);
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
	if (router_proc_setup(p) < 0)
		goto out;
	router_set_room(p->r, router_proc_room);
	if (ipc_send(env->ctl_fd, IPC_READY, 0, NULL, 0, -1) < 0) {
		log_error("router: cannot report ready: %s", strerror(errno));
		goto out;
	}
	log_info("router: serving %u workers (store %s)", env->nworkers, p->st_dir);

	for (unsigned busy_turns = 0;;) {
		bool busy = router_proc_drain(p);
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
		} else if (router_proc_prepare_sleep(p)) {
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
	while (rc == 0 && router_proc_drain(p))
		router_proc_flush(p);
	/* Whatever fits still goes out, the tick's changes too. */
	router_proc_flush(p);
out:
	router_proc_cleanup(p, rc == 0);
	free(p);
	return rc;
}
