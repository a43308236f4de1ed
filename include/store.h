/*
 * store.h - the router's state on LMDB: what lets a restarted router (and,
 * with storage.backend "disk", a restarted daemon) pick up where the last
 * one stopped.
 *
 * Owns the store directory (the LMDB environment, its lock file) and the
 * record layout inside it; the router owns the meaning. Every mutation
 * joins one write transaction, begun lazily by the first mutation and
 * ended by store_commit(): the router commits once per loop turn, so a
 * turn's changes land together or not at all. A failed write is logged
 * once, aborts the transaction and marks the store stale: further
 * mutations are ignored until the router rewrites its whole state
 * (store_resync_begin), and the router goes on serving from memory.
 *
 * Nothing here is LMDB-typed: the router sees plain structs and callbacks.
 */
#ifndef IOTD_STORE_H
#define IOTD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STORE_FORMAT 8                    /* meta "format"; a newer store is refused */
#define STORE_FORMAT_OLDEST 1             /* still read (and upgraded in place) */
#define STORE_MEMORY_ROOT "/dev/shm"      /* backend "memory": <root>/<store_memory_name()> */
#define STORE_MEMORY_FALLBACK "/tmp"      /* ... when /dev/shm is missing or read-only */
#define STORE_MEMORY_MAP ((size_t)1 << 30)
#define STORE_DISK_MAP ((size_t)4 << 30)
#define STORE_SEEN_UNKNOWN UINT64_MAX     /* last_seen of a session from an earlier daemon */
#define STORE_IDENT_LEN 96
#define STORE_NAME_LEN 64                 /* store_memory_name(): "iotd-<pid>-" and 32 hex digits */

struct store;

enum store_kind {
	STORE_MEMORY,      /* tmpfs, never synced: outlives the router, not the daemon */
	STORE_DISK,        /* synced by store_sync(): outlives the daemon */
};

/* A CONNECT as the router accepted it: the connection and its will. */
struct store_connect {
	uint64_t conn;
	bool clean;
	bool will_flag;
	uint8_t will_qos, will_retain;
	uint16_t keepalive;
	const char *remote;               /* NUL-terminated */
	const char *user;                 /* the user name ("" and 0: none) */
	uint16_t user_len;
	const char *will_topic;
	uint16_t will_topic_len;
	const uint8_t *will_payload;
	uint32_t will_payload_len;
	/* Format 6; an older store's: expiry as clean says (0, or never), no will delay nor properties. */
	uint32_t session_expiry;          /* granted (rec.h REC_CONNECT) */
	uint32_t will_delay, will_expiry;
	const uint8_t *will_props;
	uint32_t will_props_len;
};

/*
 * A token's rules (acl_client_encode's bytes), which a user's token gave
 * it instead of the ACL file's. on with no rules: they were lost, and the
 * router allows that session nothing.
 */
struct store_token {
	bool on;
	const uint8_t *rules;
	uint32_t len;
};

/* One session; pointers are only valid during the call that passes it. */
struct store_session {
	uint32_t sid;
	bool clean;
	const char *client_id;            /* "" for a server-named session */
	uint16_t client_id_len;
	const char *remote;               /* NUL-terminated: for log lines */
	const char *user;                 /* its (last) connection's user name, for the ACL ("": none) */
	uint16_t user_len;
	struct store_token token;         /* that user's token's rules */
	uint64_t last_seen_ms;            /* router clock; STORE_SEEN_UNKNOWN: an earlier daemon's */
	const uint16_t *qos2_ids;         /* inbound QoS 2 awaiting PUBREL (host order) */
	uint16_t n_qos2_ids;
	bool online;                      /* cx: the connection holding it */
	struct store_connect cx;
	bool pending;                     /* pend: a CONNECT waiting to take it over */
	struct store_connect pend;
	struct store_token pend_token;    /* ... and its token's rules */
	/* Format 6. */
	uint32_t expiry;                  /* its session expiry interval (rec.h) */
	bool will_held;                   /* offline, will: the CONNECT whose will waits */
	uint64_t will_at_ms;              /* ... until then (wall clock, ms since the epoch) */
	struct store_connect will;
};

/* What an MQTT 5 message carries beside its payload (rec.h REC_PUB_PROPS, REC_PUB_EXPIRY). */
struct store_v5 {
	const uint8_t *props;             /* its property block; props_len 0: none */
	uint32_t props_len;
	uint64_t expires_at;              /* its message expiry, ms since the epoch; 0: never */
};

/* A message in a session's queue. */
struct store_msg {
	uint16_t packet_id;
	uint8_t state, qos, retain;       /* state: enum msg_state */
	bool at_worker;                   /* a copy of what the session's connection holds */
	const char *topic;
	uint16_t topic_len;
	const uint8_t *payload;
	uint32_t payload_len;
	struct store_v5 v5;               /* format 6; none in an older store */
	/* Format 7: its subscription identifiers (rec.h REC_SESSION_MSG); none in an older store. */
	uint8_t n_sub_ids;
	const void *sub_ids;              /* n_sub_ids u32, unaligned */
};

/* ---- location and life cycle ------------------------------------------- */

/*
 * Open the store in directory dir, creating the directory (mode 0700) and
 * an empty store when missing. Refuses a store of a newer format, a
 * directory whose data.mdb is not an iotd store, and a store another
 * process holds. NULL with a message in err on failure.
 */
struct store *store_open(const char *dir, enum store_kind kind, size_t mapsize,
			 char *err, size_t errlen);
/* Abort what is not committed, close, set *st to NULL; NULL is fine. */
void store_close(struct store **st);
/* Remove a store directory and the files iotd put in it. 0 or -1 (errno). */
int store_remove(const char *dir);
/* STORE_MEMORY_ROOT when this user may create in it, else STORE_MEMORY_FALLBACK. */
const char *store_memory_root(void);
/*
 * "iotd-<pid>-<32 hex digits>": the name of daemon pid's memory store
 * directory, 128 bits of it from getrandom(), so that no local user can
 * guess it and plant something under it in the world-writable root
 * before the router makes it. The supervisor draws it once at start and
 * every router of that daemon uses it. 0, or -1 (errno).
 */
int store_memory_name(char *buf, size_t len, pid_t daemon);
/* "<root>/<name>": where backend "memory" keeps the store. 0, or -1 (too long). */
int store_memory_dir(char *buf, size_t len, const char *root, const char *name);
/*
 * Make the directory of a new memory store: mkdir mode 0700, which fails
 * when anything at all is there. The first router of a daemon makes it;
 * a restarted one opens its predecessor's with store_open(), which checks
 * it is still a private directory of this user. 0, or -1 with err.
 */
int store_memory_create(const char *dir, char *err, size_t errlen);
/*
 * Remove every "<root>/iotd-<pid>-<hex>" (or "<root>/iotd-<pid>", the
 * name of older versions) left behind by a daemon that no longer runs
 * (kill(pid, 0) fails with ESRCH, and no router holds it) that is a
 * private directory of this user. Returns how many were removed.
 */
int store_sweep(const char *root, pid_t self);
/*
 * Who the daemon is: boot id, pid and start time of process 'daemon',
 * so that a reused pid (or pid 1 in a new container) is not mistaken
 * for the daemon that wrote the store.
 */
int store_daemon_ident(pid_t daemon, char *buf, size_t len);

/*
 * True when the store was last claimed by daemon ident (the router of a
 * running daemon restarted: the rings are the same). Otherwise the store
 * belongs to an earlier daemon: store_new_daemon() must run before the
 * state is loaded.
 */
bool store_same_daemon(struct store *st, const char *ident);
/*
 * Claim the store for daemon ident, forgetting the previous daemon's ring
 * positions and held records. keep_persistent: persistent sessions stay
 * (offline, with subscriptions and queues, last_seen STORE_SEEN_UNKNOWN,
 * wills dropped unfired) and clean ones go; otherwise every session and
 * retained message goes. Commits. 0, or -1 (logged).
 */
int store_new_daemon(struct store *st, const char *ident, bool keep_persistent);

/* ---- transactions ------------------------------------------------------ */

/* Commit the open transaction, if any. 0, or -1: logged, the store is now stale. */
int store_commit(struct store *st);
/* True when this turn changed something (a write transaction is open). */
bool store_pending(const struct store *st);
/* Drop the open transaction, as a crash would. */
void store_abort(struct store *st);
/* A write failed since the last successful store_resync_begin(). */
bool store_stale(const struct store *st);
/*
 * Start rewriting the state: clears the stale mark and empties sessions,
 * subscriptions and queues in a new transaction (retained messages and
 * meta are kept: the caller puts back what changed). 0 or -1.
 */
int store_resync_begin(struct store *st);
/* STORE_DISK: flush what was committed since the last call to the device. */
void store_sync(struct store *st);

/* ---- mutations (join the open transaction) ----------------------------- */

void store_session_put(struct store *st, const struct store_session *s);
/*
 * The session and its subscriptions. Not its queue, which is no key range
 * of its own (format 8): the caller deletes each message (store_queue_del).
 */
void store_session_del(struct store *st, uint32_t sid);
/* opts: the subscription options byte; sub_id: its identifier, 0 for none. */
void store_sub_put(struct store *st, uint32_t sid, const char *filter, uint16_t len, uint8_t opts,
		   uint32_t sub_id);
void store_sub_del(struct store *st, uint32_t sid, const char *filter, uint16_t len);
/*
 * order: position in the session's queue, kept in ascending order; one
 * counter for every session, so that a new message's key is the last.
 */
void store_queue_put(struct store *st, uint32_t sid, uint64_t order, const struct store_msg *m);
void store_queue_del(struct store *st, uint32_t sid, uint64_t order);
/* v5: the message's properties and expiry (format 6); NULL: none. */
void store_retained_put(struct store *st, const char *topic, uint16_t len, uint8_t qos,
			const uint8_t *payload, uint32_t payload_len, const struct store_v5 *v5);
void store_retained_del(struct store *st, const char *topic, uint16_t len);
/* Named counters in meta: "next_sid", "tail/<i>", "head/<i>". */
void store_meta_put(struct store *st, const char *key, uint64_t v);
bool store_meta_get(struct store *st, const char *key, uint64_t *v);
/* Records for ring r2w[ring] the router holds because the ring was full. */
void store_outbox_put(struct store *st, unsigned ring, uint64_t seq, uint16_t type,
		      const void *data, uint32_t len);
void store_outbox_del(struct store *st, unsigned ring, uint64_t seq);
void store_outbox_clear(struct store *st);

/* ---- reading (in key order) -------------------------------------------- */

typedef void (*store_session_cb)(void *arg, const struct store_session *s);
typedef void (*store_sub_cb)(void *arg, uint32_t sid, const char *filter, uint16_t len,
			     uint8_t opts, uint32_t sub_id);
typedef void (*store_queue_cb)(void *arg, uint32_t sid, uint64_t order, const struct store_msg *m);
typedef void (*store_retained_cb)(void *arg, const char *topic, uint16_t len, uint8_t qos,
				  const uint8_t *payload, uint32_t payload_len,
				  const struct store_v5 *v5);
typedef void (*store_outbox_cb)(void *arg, uint64_t seq, uint16_t type, const void *data,
				uint32_t len);

/* Each returns 0, or -1 on a read error (logged). Corrupt entries are skipped and logged. */
int store_each_session(struct store *st, store_session_cb cb, void *arg);
int store_each_sub(struct store *st, store_sub_cb cb, void *arg);
int store_each_queued(struct store *st, store_queue_cb cb, void *arg);
int store_each_retained(struct store *st, store_retained_cb cb, void *arg);
int store_each_outbox(struct store *st, unsigned ring, store_outbox_cb cb, void *arg);

#endif
