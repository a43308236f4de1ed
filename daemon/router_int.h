/*
 * router_int.h - what the files of the router's logic share (daemon/router*.c):
 * the session and what hangs from it, struct router, and the functions one
 * file offers the others. include/router.h is the interface to the rest of
 * iotd; nothing outside the router includes this.
 *
 * Each group of fields of struct router names the file that keeps them
 * (router_new() sets them up, router_load.c refills them from the store);
 * each file's header comment says what it owns.
 */
#ifndef IOTD_ROUTER_INT_H
#define IOTD_ROUTER_INT_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* An allocation failure in a hash add must not exit the router: the add fails, tbl is NULL. */
#define HASH_NONFATAL_OOM 1
#include "keyhash.h"  /* uthash, keyed */

#include "acl.h"
#include "hidx.h"
#include "iotd.h"
#include "log.h"
#include "rec.h"
#include "retain.h"
#include "role.h"
#include "router.h"

#define ROUTER_REMOTE_LEN 64          /* as struct ipc_client: enough for "[v6]:port" */
#define ROUTER_SUBACK_FAILURE 0x80
/* Queue order: messages a closing connection still owed sort before those queued for it. */
#define ROUTER_ORDER_QUEUED (UINT64_C(1) << 63)

/* ---- data -------------------------------------------------------------- */

/*
 * A CONNECT as the worker sent it, in one allocation, with the token's
 * rules its grant carried (taken out of the grant as the record is
 * accepted, so that a CONNECT waiting for a takeover keeps them however
 * long it waits, and the store keeps them with it). Every online session
 * keeps one, so its strings are found by their lengths rather than by
 * pointers of their own: see the cx_ accessors below.
 */
struct session_connect {
	conn_id_t conn;
	uint32_t will_payload_len;
	uint32_t token_rules_len;    /* 0 with token: the rules are lost, it may do nothing */
	uint32_t session_expiry;     /* granted (rec.h): 0 the session ends with the connection */
	uint32_t will_props_len;     /* its MQTT 5 properties (rec.h REC_PUB_PROPS) */
	uint16_t keepalive;
	uint16_t client_id_len, will_topic_len;
	uint16_t user_len;           /* 0: no user name */
	uint8_t remote_len;          /* < ROUTER_REMOTE_LEN */
	bool clean : 1;
	bool will_flag : 1;
	bool token : 1;              /* its user came with a token's rules (its grant said so) */
	uint8_t will_qos : 2;
	bool will_retain : 1;
	/*
	 * client id, remote, user (each NUL-terminated), with a will its
	 * struct cx_will_times (unaligned), will topic (NUL-terminated),
	 * will payload, will properties, token's rules; once it is a
	 * session's cx, client id and user "" and no rules: the session
	 * holds them
	 */
	char data[];
};

static_assert(ROUTER_REMOTE_LEN <= 256, "remote_len is 8 bits");

/* What only a CONNECT with a will keeps of it beside its topic, payload and properties. */
struct cx_will_times {
	uint32_t delay;              /* seconds the will waits after the connection closed */
	uint32_t expiry;             /* the will's message expiry interval, seconds; 0: none */
};

static inline const char *cx_client_id(const struct session_connect *c)
{
	return c->data;
}

static inline const char *cx_remote(const struct session_connect *c)
{
	return c->data + c->client_id_len + 1;
}

static inline const char *cx_user(const struct session_connect *c)
{
	return cx_remote(c) + c->remote_len + 1;
}

/* The will's delay and expiry; without a will, 0 and 0. */
static inline struct cx_will_times cx_will_times(const struct session_connect *c)
{
	struct cx_will_times t = { 0, 0 };

	if (c->will_flag)
		memcpy(&t, cx_user(c) + c->user_len + 1, sizeof(t));
	return t;
}

static inline const char *cx_will_topic(const struct session_connect *c)
{
	return cx_user(c) + c->user_len + 1 + (c->will_flag ? sizeof(struct cx_will_times) : 0);
}

static inline const uint8_t *cx_will_payload(const struct session_connect *c)
{
	return (const uint8_t *)cx_will_topic(c) + c->will_topic_len + 1;
}

static inline const uint8_t *cx_will_props(const struct session_connect *c)
{
	return cx_will_payload(c) + c->will_payload_len;
}

static inline const uint8_t *cx_token_rules(const struct session_connect *c)
{
	return cx_will_props(c) + c->will_props_len;
}

struct router_cursor;

struct session_sub {
	UT_hash_handle hh;
	struct router_cursor *cur;   /* its retained messages still to send, or NULL */
	uint8_t opts;                /* MQTT 5 subscription options (mqtt5.h MQTT5_SUB_*): QoS in the low bits */
	uint32_t sub_id;             /* its MQTT 5 subscription identifier; 0: none */
	bool shared;                 /* "$share/...": its group's (router_share.c), not in the trie */
	bool fresh;                  /* made by the SUBSCRIBE being answered (retain handling 1) */
	uint16_t len;
	char filter[];               /* NUL-terminated for log lines */
};

/*
 * The topic, payload and MQTT 5 properties of a message held in session
 * queues: one publish queued for many sessions is held once, shared by
 * every entry that holds it (refs), and freed with the last one.
 */
struct msg_body {
	uint32_t refs;               /* session_msg entries holding it */
	uint32_t payload_len;
	uint32_t props_len;          /* its property block (rec.h REC_PUB_PROPS); 0: none */
	uint16_t topic_len;
	uint8_t size_step;           /* data allocated in MSG_BODY_STEP bytes: this many; 0: as long as it is */
	uint64_t expires_at;         /* its message expiry, ms since the epoch; 0: never */
	uint8_t data[];              /* topic, then payload, then props */
};

/*
 * Bodies of up to MSG_BODY_STEPS steps of data are allocated in whole
 * steps, so that a freed one serves the next body of its step
 * (router_queue.c: the spare bodies).
 */
#define MSG_BODY_STEP 64u
#define MSG_BODY_STEPS 8u

static inline const uint8_t *msg_body_props(const struct msg_body *b)
{
	return b->data + b->topic_len + b->payload_len;
}

/* Has the message's expiry passed at wall-clock time now (ms since the epoch)? */
static inline bool msg_expired(uint64_t expires_at, uint64_t now)
{
	return expires_at != 0 && expires_at <= now;
}

/*
 * One message in one session's queue; what differs per session, and its
 * shared body. The identifiers of the session's subscriptions it matched
 * (MQTT 5) follow the entry: one without any (every 3.1.1 session's) is
 * no bigger than before they were kept.
 */
#define SESSION_MSG_AHEAD 16   /* entries between one and its prefetch hint (session_msg.ahead) */

struct session_msg {
	struct session_msg *next;
	struct msg_body *body;
	/*
	 * While the entry is its queue's tail: the entry about
	 * SESSION_MSG_AHEAD before it (session.q_lag_gap says how far), or
	 * NULL, always one in the queue (session_msg_drop sees to it). After:
	 * only a hint for __builtin_prefetch, never read through: the entry
	 * about SESSION_MSG_AHEAD after it, or one since freed.
	 */
	struct session_msg *ahead;
	uint64_t order;              /* key in the store's queue: ascending = list order */
	uint16_t packet_id;
	uint8_t state, qos, retain;
	bool at_worker;              /* a copy of what the session's connection holds (rec.h) */
	uint8_t n_sub_ids;           /* at most REC_TARGET_SUB_IDS_MAX */
	uint32_t sub_ids[];
};

/*
 * What only an offline persistent session has: its place in the offline
 * list and in router.due, when it left, a will held back for its delay
 * and where it last connected from. Made as its connection closes, freed
 * as it connects again; an online session has its CONNECT in this room
 * instead.
 */
struct session_away {
	struct session *off_prev, *off_next; /* offline persistent sessions, oldest first */
	struct session_connect *will; /* the CONNECT whose will waits (will_at_ms, wall clock); NULL: none */
	uint64_t will_at_ms;
	uint64_t last_seen_ms;       /* router clock; STORE_SEEN_UNKNOWN: an earlier daemon's */
	uint32_t due_slot;           /* its place in router.due + 1; 0: in none */
	char remote[];               /* for log lines (session_remote()) */
};

/*
 * One per session, online or not; thousands of idle connections each have
 * one, so the small fields are packed together ahead of the pointers, and
 * what only an online or only an offline session needs shares one pointer.
 */
struct session {
	uint32_t sid;
	uint16_t client_id_len;
	uint16_t n_qos2_ids;
	bool clean;
	bool online;
	bool is_away;                /* away, not cx, is what the union holds */
	bool in_offline;             /* linked in the offline list */
	bool q_warned, q_warned_qos0;
	bool subs_warned;            /* max_subscriptions_per_session reached: logged */
	bool token;                  /* its user came with a token's rules: they, or nothing, hold */
	uint8_t granted;             /* with stamp: the QoS this publish goes out at, | SESSION_RAP */
	uint8_t q_lag_gap;           /* entries from q_tail->ahead to q_tail (session_queue_link) */
	uint32_t expiry;             /* seconds it outlives its connection (rec.h); 0: clean */
	uint32_t q_queued;           /* MSG_QUEUED ones in the queue: what the limits count */
	uint32_t q_window;           /* MSG_INFLIGHT / MSG_PUBREL ones */
	uint32_t q_at_worker;        /* copies of what the connection holds */
	uint32_t n_cursors;          /* subscriptions with retained messages still to send */

	conn_id_t conn;              /* while online: in conn_slots; offline: the last one */
	conn_id_t prev_conn;         /* the connection before conn (a takeover's old one) */
	union {
		/* !is_away: the accepted CONNECT (its will, its remote) while online; NULL: none */
		struct session_connect *cx;
		/* is_away: offline (session_away_of()) */
		struct session_away *away;
	};
	char *user;                  /* its (last) connection's user name; NULL: none */
	struct acl_client *acl;      /* its view of the router's ACL (router_acl_allows) */
	struct session_rules *token_rules; /* with token: its token's view; NULL: lost */
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

	uint64_t stamp;              /* publish that last matched us: folds overlapping filters */

	char client_id[];            /* NUL-terminated; "" for a server-named clean session */
};

/* The session's CONNECT while it has one (online, or closing); NULL: none. */
static inline struct session_connect *session_cx(const struct session *s)
{
	return s->is_away ? NULL : s->cx;
}

/* An offline session's own state; NULL: none (online, or not made yet). */
static inline struct session_away *session_away_of(const struct session *s)
{
	return s->is_away ? s->away : NULL;
}

/* A token's view of the ACL (acl_client_encode), its length in its allocation. */
struct session_rules {
	uint32_t len;
	uint8_t bytes[];
};

struct session_rules *session_rules_new(const uint8_t *bytes, uint32_t len);

/*
 * An offline session's next deadline on the router's clock (router.now_ms):
 * the end of its session expiry interval, or its held will's delay.
 */
struct session_due {
	uint64_t at;
	struct session *s;
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

/*
 * The buffers router_publish() uses again for each message, so that
 * routing one allocates nothing. Owned by router_publish.c; nothing else
 * reads them.
 */
struct router_publish_scratch {
	uint64_t stamp;              /* the publish being matched: sessions it reached carry it */
	struct session **targets;    /* the sessions it reached (struct router_match) */
	size_t cap_targets;
	/* one REC_DELIVER being built per worker, with its target count so far */
	struct recw deliver[IOTD_MAX_WORKERS];
	size_t deliver_noff[IOTD_MAX_WORKERS];
	uint32_t deliver_n[IOTD_MAX_WORKERS];
};

/*
 * What router_publish() matched: each session a filter reached, once, with
 * the QoS its filters grant in session.granted. targets is the publish
 * scratch's: valid until the next publish.
 */
struct router_match {
	struct session *const *targets;
	size_t n;
	bool incomplete;             /* out of memory: the match missed some sessions */
	bool shared;                 /* a shared subscription matched: never a local route */
	bool options;                /* a subscription with no local, retain as published or an identifier matched */
};

/* In session.granted: a subscription that matched keeps the retain flag as published. */
#define SESSION_RAP 0x04
/* In session.granted: a subscription with an identifier matched (router_sub_ids_of()). */
#define SESSION_SUB_IDS 0x08
/*
 * In the options the trie holds (never in session_sub.opts nor the store):
 * the subscription has an identifier, so its matches are the router's.
 */
#define ROUTER_OPT_SUB_ID 0x40

/* The subscription identifiers one delivery carries (rec.h REC_TARGET_SUB_IDS). */
struct router_sub_ids {
	uint8_t n;
	uint32_t id[REC_TARGET_SUB_IDS_MAX];
};
#define SESSION_GRANTED_QOS(g) ((g) & 3)

/* One CONNECT the auth role accepted (router_grants.c). */
struct router_grant {
	conn_id_t conn;
	UT_hash_handle hh;
	struct router_grant *next, **prev_next; /* in its worker's share, oldest first */
	uint64_t at_ms;
	bool token;                  /* a token's rules: rules (none: lost, it may do nothing) */
	uint8_t *rules;              /* a token's view (acl_client_encode), NULL: none */
	size_t rules_len;
	size_t user_len;
	char user[];                 /* NUL-terminated */
};

/* The grants of one worker's connections, oldest first: what one worker can make the router hold. */
struct router_grant_share {
	struct router_grant *head, **tail;
	size_t n;
};

struct router {
	const struct iotd_config *cfg;
	unsigned nworkers;
	router_emit_fn emit;
	void *emit_arg;
	router_room_fn room;         /* NULL: every worker always has room */
	size_t max_record;
	uint64_t now_ms;             /* router_tick */
	/* the route generation (shm.h), in shared memory, or route_gen_own */
	_Atomic uint64_t *route_gen;
	_Atomic uint64_t route_gen_own;
	struct recw out;             /* any record but a SUBACK, UNSUBACK or a DELIVER being built */
	struct recw ack;             /* a SUBACK, kept while its filters start their retained messages; an UNSUBACK */

	/* The session registry (router_session.c). */
	struct hidx by_id, by_sid;   /* sessions by client id (server-named ones not), by sid */
	/*
	 * Online sessions by connection: per worker, indexed by the conn id's
	 * slot (dense, reused by the worker), checked against the whole id.
	 */
	struct session **conn_slots[IOTD_MAX_WORKERS];
	uint32_t n_conn_slots[IOTD_MAX_WORKERS];
	size_t n_online;
	struct router_waiting *waiting;   /* by the waiting CONNECT's conn */
	struct router_kicked *kicked;
	struct session *off_head, *off_tail;
	struct session *off_sweep;   /* where the backstop check of intervals and wills goes on */
	struct session_due *due;     /* offline sessions by their next deadline: a binary min-heap */
	uint32_t n_due, cap_due;
	bool warned_due;             /* the heap could not grow: logged once until it can */
	uint32_t next_sid;
	bool warned_sessions_full;   /* max_sessions reached: logged once until a session fits again */

	/* What each worker's records may speak of (router_records.c, router_set_worker). */
	uint32_t worker_epoch[IOTD_MAX_WORKERS];
	uint32_t worker_slots[IOTD_MAX_WORKERS];
	bool warned_bad[REC_TYPE_MAX + 1];
	bool warned_noconn[REC_TYPE_MAX + 1];
	uint64_t bad_records;

	/* Session queues (router_queue.c). */
	uint64_t next_order;         /* queue order counter (without ROUTER_ORDER_QUEUED) */
	/* What every session queue holds (max_queued_bytes_total): each body once, each entry. */
	size_t held_bytes;
	size_t held_bodies;
	bool warned_held_full;       /* max_queued_bytes_total reached: logged once per episode */
	uint64_t queue_drops;
	/*
	 * Entries without identifiers and bodies freed lately, for the next
	 * ones (ROUTER_SPARE_MSGS and ROUTER_SPARE_BODIES at most): bodies by
	 * their size step, linked through their data.
	 */
	struct session_msg *spare_msgs;
	uint32_t n_spare_msgs;
	struct msg_body *spare_bodies[MSG_BODY_STEPS + 1];
	uint32_t n_spare_bodies;

	/* Subscriptions, retained messages, publishing (router_publish.c). */
	struct topic_trie *trie;
	/* Shared subscriptions' groups, and the trie of their filters (router_share.c). */
	struct share_group *shares;
	struct topic_trie *share_trie;
	struct retain_store *retained;
	/* subscriptions owed retained messages, per worker of their session */
	struct router_cursor *cur_head[IOTD_MAX_WORKERS], *cur_tail[IOTD_MAX_WORKERS];
	size_t n_cursors;
	struct router_publish_scratch pub;
	bool warned_retain_full, warned_targets;

	/* The ACL every session's view is made from (router_set_acl); NULL: none, all allowed. */
	struct acl *acl;
	/* Who the auth role accepted (router_grants.c). */
	struct router_grant *grants;          /* by conn */
	struct router_grant_share grant_share[IOTD_MAX_WORKERS];
	bool grants_required;
	router_grant_fetch_fn *grant_fetch;
	void *grant_fetch_arg;

	/* The store: each file writes its own changes; router_load.c reads it back and rewrites it. */
	struct store *st;            /* NULL: in memory only */
	struct router_touched *touched;
	bool touched_oom;            /* a change could not be remembered: a rewrite may miss it */
	bool restamp;                /* sessions of an earlier daemon wait for the first tick */
	uint64_t resync_at_ms;       /* next rewrite of a stale store */
	uint64_t resync_wait_ms;     /* doubles while rewrites fail: each one writes everything */
};

/* A message being routed; pointers into the record or into a stored will. */
struct router_msg {
	uint8_t qos, retain;
	const char *topic;
	uint16_t topic_len;
	const uint8_t *payload;
	uint32_t payload_len;
	/* An MQTT 5 message's properties and expiry (rec.h, REC_PUB_*), kept wherever it is kept. */
	const uint8_t *props;
	uint32_t props_len;
	uint64_t expires_at;         /* ms since the epoch; 0: never */
	/*
	 * For one session: the identifiers of its subscriptions the message
	 * matched (rec.h REC_TARGET_SUB_IDS), n_sub_ids u32, unaligned.
	 */
	uint8_t n_sub_ids;
	const void *sub_ids;
	/* The publisher's session (no local, shared_subscription_policy); NULL: none known. */
	const struct session *from;
};

/* ---- small helpers every file uses ------------------------------------- */

/*
 * Where some topic's messages go may have changed: every route a worker
 * cached (REC_ROUTE) is void. Before the record that makes the change
 * visible to a client (SUBACK, CONNACK...) is emitted, so that a publish
 * made after it cannot take a route from before it.
 */
static inline void router_routes_changed(struct router *r)
{
	atomic_fetch_add_explicit(r->route_gen, 1, memory_order_release);
}

/* Is the session's access limited: an ACL, or its token's lists (even lost ones)? */
static inline bool router_acl_on(const struct router *r, const struct session *s)
{
	return r->acl || s->token;
}

/*
 * May session s do access on the topic? Without an ACL, yes, at the cost
 * of this one test; with one, as its view says, and a session without a
 * view (out of memory when it was made) may do nothing.
 */
static inline bool router_acl_allows(const struct router *r, const struct session *s,
				     const char *topic, size_t len, enum acl_access access)
{
	return !router_acl_on(r, s) || (s->acl && acl_client_may(s->acl, topic, len, access));
}

/* router_grants.c */
bool router_grant_vouches(struct router *r, conn_id_t conn, const char *user, size_t ulen,
			  struct router_grant **g);
void router_grant_used(struct router *r, struct router_grant *g);
void router_grants_expire(struct router *r);
void router_grants_free(struct router *r);

/* For log lines: the connection's address, or where an offline session was last seen. */
static inline const char *session_remote(const struct session *s)
{
	if (s->is_away)
		return s->away->remote;
	return s->cx ? cx_remote(s->cx) : "";
}

static inline void router_emit(struct router *r, unsigned worker, uint16_t type,
			       const struct recw *w)
{
	if (w->oom) {
		log_error("router: out of memory building %s for worker %u: dropped",
			  rec_type_name(type), worker);
		return;
	}
	r->emit(r->emit_arg, worker, type, w);
}

static inline bool session_has_sid(const void *item, const void *key)
{
	return ((const struct session *)item)->sid == *(const uint32_t *)key;
}

/* Lookups of every record that names a session or a connection (registry: router_session.c). */
static inline struct session *router_find_sid(const struct router *r, uint32_t sid)
{
	return hidx_find(&r->by_sid, hidx_hash_u32(sid), session_has_sid, &sid);
}

static inline struct session *router_find_conn(struct router *r, conn_id_t conn)
{
	unsigned w = conn_id_worker(conn), slot = conn_id_slot(conn);
	struct session *s;

	if (w >= IOTD_MAX_WORKERS || slot >= r->n_conn_slots[w])
		return NULL;
	s = r->conn_slots[w][slot];
	return s && s->conn == conn ? s : NULL;
}

/* A body made for a message that no queue took in the end (router_queue.c). */
static inline void msg_body_discard(struct msg_body *b)
{
	if (b && !b->refs)
		free(b);
}

/* ---- router_session.c: registry, CONNECT, takeover, close -------------- */

/* A token's rules as a grant or the store gives them; token false: none. */
struct session_token {
	bool token;
	const uint8_t *rules;
	size_t len;
};

/* The router's copy of a CONNECT, as a REC_CONNECT or the store gave it, with its token's rules. */
struct session_connect *session_connect_new(const struct rec_connect *f,
					    const struct session_token *tok);
struct session *session_alloc(const char *client_id, uint16_t len);
void session_dealloc(struct session *s);
struct session_away *session_away_new(const char *remote, size_t len);
void session_view_make(struct router *r, struct session *s);
void session_free(struct router *r, struct session *s);
bool router_session_link(struct router *r, struct session *s);
bool router_conn_link(struct router *r, struct session *s);
void session_offline_link(struct router *r, struct session *s);
void session_due_update(struct router *r, struct session *s, uint64_t wall_ms);
bool router_waiting_add(struct router *r, struct session *s, conn_id_t conn);
void session_pending_drop(struct router *r, struct session *s);
struct session *router_find_id(const struct router *r, const char *id, uint16_t len);
bool router_conn_slot_taken(const struct router *r, conn_id_t conn);
struct session *router_find_pending(struct router *r, conn_id_t conn);
bool router_kicked_take(struct router *r, conn_id_t conn);
void session_persist(struct router *r, const struct session *s);
void router_send_connack(struct router *r, conn_id_t conn, uint32_t sid, uint8_t rc,
			 bool present, const uint16_t *ids, uint16_t n);
void router_connect_apply(struct router *r, struct session_connect *c);
void router_close(struct router *r, struct session *s, bool publish_will,
		  const struct rec_iter *ids);
size_t router_close_worker(struct router *r, unsigned worker, uint32_t new_epoch);
void router_sessions_expire(struct router *r);
uint32_t router_expiry_cap(const struct router *r, uint32_t expiry);
void router_sessions_free(struct router *r);

/* ---- router_queue.c: queued messages, copies, the held-bytes budget ---- */

struct msg_body *msg_body_new(const struct router_msg *m);
void router_held_check(struct router *r);
struct session_msg *session_msg_new(struct router *r, uint16_t packet_id, uint8_t state,
				    const struct router_msg *m, struct msg_body *body);
bool router_sub_ids_valid(uint32_t n, const void *sub_ids);
void session_msg_persist(struct router *r, const struct session *s,
			 const struct session_msg *q);
void session_msg_drop(struct router *r, struct session *s, struct session_msg *q,
		      struct session_msg *prev);
void session_queue_clear(struct router *r, struct session *s);
size_t session_queue_len(const struct session *s);
void session_queue_link(struct session *s, struct session_msg *q, bool owed);
void session_enqueue(struct router *r, struct session *s, bool owed, uint16_t packet_id,
		     uint8_t state, const struct router_msg *m, struct msg_body **body);
void session_enqueue_one(struct router *r, struct session *s, bool owed,
			 uint16_t packet_id, uint8_t state, const struct router_msg *m);
void session_msg_view(const struct session_msg *q, struct router_msg *m);
void session_queue_send(struct router *r, struct session *s);
uint64_t session_copy_new(struct router *r, struct session *s, uint16_t packet_id,
			  uint8_t state, const struct router_msg *m, struct msg_body **body,
			  bool shared);
void session_copies_release(struct router *r, struct session *s);
void router_spares_free(struct router *r);
struct session_msg *session_copy_find(struct session *s, uint64_t copy,
				      struct session_msg **prev_r);
void router_send_session_msg(struct router *r, conn_id_t conn, uint32_t sid, uint64_t copy,
			     uint16_t packet_id, uint8_t state, const struct router_msg *m);

/* ---- router_publish.c: subscriptions, publish, retained, routes -------- */

void router_publish_scratch_init(struct router_publish_scratch *pub);
void router_publish_scratch_free(struct router_publish_scratch *pub);
uint8_t router_subscribe_one(struct router *r, struct session *s, const char *filter,
			     uint16_t len, uint8_t qos, uint32_t sub_id);
bool router_subscription_refused(struct session *s, const struct iotd_config *cfg,
				 const char *filter, uint16_t len);
bool router_unsubscribe_one(struct router *r, struct session *s, const char *filter,
			    uint16_t len);
void session_unsubscribe_all(struct router *r, struct session *s);
void router_cursor_start(struct router *r, struct session *s, struct session_sub *sub);
void router_retained_expire(struct router *r);
void session_cursors_drop(struct router *r, struct session *s);
struct router_match router_publish(struct router *r, const struct router_msg *m);
void router_answer_route(struct router *r, unsigned worker, uint64_t ask,
			 const struct router_msg *m, const struct router_match *match);

/* ---- router_share.c: shared subscriptions' groups ---------------------- */

struct share_group;
struct topic_share_parts;

int router_share_join(struct router *r, struct session *s, const struct topic_share_parts *p,
		      uint8_t qos, uint32_t sub_id);
void router_share_leave(struct router *r, struct session *s, const char *filter, uint16_t len);
void router_share_free(struct router *r);
struct session *share_pick(struct router *r, struct share_group *g, const struct router_msg *m,
			   const struct session *except, uint8_t *qos, uint32_t *sub_id);
void router_share_reroute(struct router *r, struct session *s);
void router_share_deliver_one(struct router *r, struct share_group *g,
			      const struct router_msg *m, const struct session *except,
			      struct msg_body *body);

/* ---- router_load.c: the store read back, and rewritten ----------------- */

int router_load(struct router *r, struct store *st);
void router_touch_retained(struct router *r, const char *topic, uint16_t len);
void router_touched_clear(struct router *r);
void router_restamp(struct router *r);
void router_resync_due(struct router *r);

#endif
