/*
 * worker_int.h - what the files of a worker process (daemon/worker*.c)
 * share: its structs and the functions each file offers the others.
 * Private to them (role.h has worker_main(); docs/arch.md, "Map of the
 * source", says which file owns what). A connection's QoS 1/2 state is
 * qos.h's; the topics a worker may deliver itself, routes.h's.
 */
#ifndef IOTD_WORKER_INT_H
#define IOTD_WORKER_INT_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "acl.h"
#include "addrlimit.h"
#include "ipc.h"
#include "mqtt.h"
#include "mqtt5.h"
#include "qos.h"
#include "rec.h"
#include "ringout.h"
#include "role.h"
#include "routes.h"
#include "shmring.h"

#define READ_CHUNK 65536         /* bytes read from a client at once */

struct xport;                    /* worker_transport.h */
struct tls_worker;               /* worker_tls.h */

enum conn_state {
	CS_NEW,          /* accepted, waiting for CONNECT */
	CS_AUTHENTICATING, /* CONNECT valid, its credentials with the auth role (worker_auth.c) */
	CS_CONNECTING,   /* CONNECT sent to the router, waiting for its CONNACK */
	CS_ACTIVE,
	CS_CLOSED,       /* gone; freed at the end of the loop turn */
};

/* Allocated only while it holds bytes: an idle connection has none. */
struct buf {
	size_t len, cap, off;        /* off: bytes of data already written (output) */
	uint8_t data[];
};

/*
 * One per client connection; an idle connection costs little more than
 * this struct, so its fields leave no padding, the buffers and the QoS
 * state are allocated apart and only while in use, and the remote address
 * and client id are allocated at their lengths, at the end.
 */
struct conn {
	conn_id_t id;
	uint64_t last_rx_ms;
	struct buf *in, *out;        /* NULL when empty */
	struct conn_qos *qos;        /* NULL while no QoS 1/2 message is held */
	struct conn *dirty_next;
	struct acl_client *acl;      /* its view of the ACL (conn_set_rules); NULL: none given */
	struct xport *xp;            /* layers above the socket (worker_transport.h); NULL: plain TCP */
	struct conn_v5 *v5_state;    /* MQTT 5: its state (CONN_V5); NULL: 3.1.1 */
	int fd;
	uint32_t sid;                /* the router's session id, from CONNACK */
	uint16_t keepalive;          /* effective, seconds; 0 = none */
	uint16_t next_pid;           /* not in qos: ids go on rotating when that is freed */
	uint8_t remote_len;
	/* Flags as bits, so that the pointer xp costs an idle connection one byte. */
	uint8_t state : 3;           /* enum conn_state */
	bool rules_from_token : 1;   /* acl is a token's lists: kept when the ACL file changes */
	bool clean : 1;
	bool paused : 1;             /* not reading: waiting for the router's CONNACK, or TLS for the key role */
	bool throttled : 1;          /* not reading: the router is behind (see worker.throttled) */
	bool want_out : 1;           /* EPOLLOUT armed */
	bool dirty : 1;              /* in the flush list */
	bool drop_logged : 1;
	bool in_off : 1;             /* EPOLLIN left out of its epoll registration */
	bool out_full : 1;           /* not reading: its unsent output is past max_output_bytes */
	/* "127.0.0.1:53412" or "[::1]:53412", NUL, the client id (empty before CONNECT), NUL */
	char remote[];
};

/* 88: the MQTT 5 pointer costs less here than an array of them sized by slot. */
static_assert(sizeof(struct conn) <= 88, "struct conn grew: every idle connection pays for it");
/*
 * What an MQTT 5 connection holds beyond struct conn, allocated apart so
 * that a 3.1.1 connection pays nothing for it: the client's limits on
 * what it is sent, what it was granted, and the topic aliases each side
 * set. The alias tables are allocated at their first alias, so that a
 * connection that sets none (most) pays nothing for them either.
 */
/* A topic the client set an alias to (its index + 1); unset: a NULL topic. */
struct topic_alias {
	uint8_t *topic;
	uint16_t len;
};

/* A topic iotd gave an alias to (its index + 1) on a connection, with the topic's hash. */
struct topic_alias_out {
	uint8_t *topic;
	uint32_t hash;
	uint16_t len;
};

/*
 * A connection's aliases one way, allocated at the first: n_alias (or
 * n_alias_out) entries, and the topic bytes they hold, at most
 * server.topic_alias_max_bytes. Out: the first used entries are given.
 */
struct alias_table_in {
	uint32_t bytes;
	struct topic_alias a[];
};

struct alias_table_out {
	uint32_t bytes;
	uint16_t used;
	struct topic_alias_out a[];
};

/* SCRAM-SHA-256 (worker_auth.c): made when an exchange succeeds. */
struct conn_scram {
	uint8_t *final;              /* server-final until CONNACK carries it; malloc'd */
	uint16_t final_len, user_len;
	char user[];                 /* whom it authenticated: a re-authentication must agree */
};

/*
 * What an MQTT 5 connection holds only once it uses it (conn_v5_hold()):
 * apart, so that what every one has (struct conn_v5) fits the smallest
 * malloc chunk.
 */
struct conn_v5_held {
	struct conn_scram *scram;    /* NULL: not authenticated by SCRAM */
	struct alias_table_in *alias;        /* allocated at the first the client sets */
	struct alias_table_out *alias_out;   /* allocated at the first iotd sets */
};

struct conn_v5 {
	struct conn_v5_held *held;   /* NULL: none of them yet */
	uint32_t max_packet;         /* the client's maximum packet size; 0: none */
	uint32_t session_expiry;     /* asked in CONNECT; once granted, the session's (rec.h) */
	uint16_t receive_max;        /* the client's: QoS 1/2 messages in flight to it */
	uint16_t n_alias;            /* aliases the client may set (topic_alias_maximum at CONNECT) */
	/*
	 * Aliases iotd sets (min(the client's Topic Alias Maximum,
	 * topic_alias_maximum_out) at CONNECT): the first n_alias_out topics
	 * sent get one each for the connection's life (alias_out_pick()).
	 */
	uint16_t n_alias_out;
	bool expiry_capped : 1;      /* granted another than asked: CONNACK says so */
	bool assigned_id : 1;        /* the client id was made here: sent in CONNACK */
	bool keep_alive_told : 1;    /* conn.keepalive is not the client's: CONNACK says so */
	bool end_session : 1;        /* DISCONNECT set the session expiry to 0: it ends now */
	bool reauth : 1;             /* a SCRAM re-authentication in progress (worker_auth.c) */
};

/* A malloc chunk of 32 bytes, the smallest (up to 24 asked): every MQTT 5 connection pays for it. */
static_assert(sizeof(struct conn_v5) <= 24, "struct conn_v5 grew: every MQTT 5 connection pays for it");

/* v's SCRAM outcome; NULL: not authenticated by SCRAM. */
static inline struct conn_scram *conn_v5_scram(const struct conn_v5 *v)
{
	return v->held != NULL ? v->held->scram : NULL;
}

static_assert(CS_CLOSED < 8, "enum conn_state fits conn.state");

/* c's MQTT 5 state; NULL for an MQTT 3.1.1 connection. */
#define CONN_V5(w, c) ((c)->v5_state)

/* c speaks MQTT 5 (its CONNECT was of level 5). */
static inline bool conn_is_v5(const struct conn *c)
{
	return c->v5_state != NULL;
}

/* Bytes held: not yet sent (output) or not yet decoded (input). */
static inline size_t buf_held(const struct buf *b)
{
	return b != NULL ? b->len - b->off : 0;
}

static inline const char *conn_client_id(const struct conn *c)
{
	return c->remote + c->remote_len + 1;
}

/*
 * What the listener is to hear about this worker's connections, by
 * address (ipc.h), in order; sent at the end of each loop turn, as much as
 * the channel takes.
 */
struct addr_reports {
	struct ipc_addr_entry *e;
	uint32_t n, cap;
	bool lost;                   /* could not keep them: LOST is queued, nothing more until a sync */
	bool send_failed_logged;
};

/* A growable buffer for a property block and its length field (props_begin()). */
struct props_buf {
	uint8_t *p;
	size_t cap;
};

struct worker {
	struct role_env *env;
	const struct iotd_config *cfg;
	unsigned index, epoch;
	int epfd, timerfd;
	struct shmring_producer prod;    /* to the router */
	struct ringout out;              /* prod, with the records that did not fit yet */
	struct shmring_consumer cons;    /* from the router */
	struct conn **slots;
	uint16_t *serials;
	uint32_t n_slots, cap_slots;
	uint32_t *free_slots;
	uint32_t n_free;
	uint32_t n_conns;
	struct conn *dirty;
	struct conn *graveyard;          /* closed this turn: epoll may still name them */
	bool throttled;                  /* backlog for the router too big: stop reading clients */
	bool window_freed;               /* the packets being processed freed in-flight room */
	bool router_room_due;            /* the router waits for room drain_ring gave back: wake it */
	/*
	 * An ACL is in force (auth.acl_file, or a backend whose verdicts carry
	 * rules): a PUBLISH uses a local route only when its connection's view
	 * lets it write the topic (route_publish). False: no test beyond this.
	 */
	bool acl_in_force;
	struct recw rw;
	struct route_cache routes;       /* topics this worker may deliver itself (routes.h) */
	struct addr_reports reports;     /* to the listener */
	struct route_target *rt_scratch; /* a REC_ROUTE's targets being read */
	uint32_t cap_rt_scratch;
	uint8_t *rbuf;
	struct props_buf pub_props;      /* an MQTT 5 PUBLISH's properties on their way to the router */
	struct props_buf sub_id_props;   /* a delivery's properties with its subscription identifiers */
	uint64_t now_ms;
	uint64_t msgs_in, msgs_out;      /* not yet added to shared memory */
	bool stopping;
	struct ipc_dispatcher ctl_in;    /* what the supervisor may send (from_supervisor) */
	struct ipc_dispatcher chan_in;   /* what the listener may send (from_listener) */
	unsigned accept_turn;            /* connections handed in this loop turn (accept_clients) */
	struct worker_auth *auth;        /* CONNECTs waiting for the auth role (worker_auth.c) */
	struct tls_worker *tls;          /* TLS is configured: the SSL_CTX and the key role's channel */
	uint32_t tls_jobs_wanted;        /* handshakes waiting for a job (xport_jobs_freed) */
};

enum pkt_result { PKT_OK, PKT_PAUSE, PKT_CLOSED };

/* worker.c */
void report_gone(struct worker *w, const char *remote);
void worker_teardown(struct worker *w);

/* worker_conn.c */
struct conn *conn_lookup(struct worker *w, conn_id_t id);
bool conn_new(struct worker *w, int fd, const struct ipc_client *info);
struct conn *conn_add_client_id(struct worker *w, struct conn *c, const char *id, size_t len);
void conn_set_events(struct worker *w, struct conn *c);
uint8_t *out_reserve(struct worker *w, struct conn *c, size_t n);
void send_ack(struct worker *w, struct conn *c, enum mqtt_type type, uint16_t id);
void send_connack(struct worker *w, struct conn *c, bool sp, uint8_t rc);
void send_connack5(struct worker *w, struct conn *c, bool sp, uint8_t reason,
		   const struct mqtt5_out *props);
void send_ack5(struct worker *w, struct conn *c, enum mqtt_type type, uint16_t id,
	       uint8_t reason);
/*
 * What an MQTT 5 message carries besides its topic and payload (rec.h,
 * REC_PUB_PROPS, REC_PUB_EXPIRY): sent to MQTT 5 clients alone, the expiry
 * as the interval left.
 */
struct msg_v5 {
	struct rec_bytes props;
	uint64_t expires_at;
};

/*
 * A property block built by the worker: props_begin() gives room for a
 * body of up to n bytes (NULL: out of memory), props_end() puts the
 * length field of the len bytes written before it and returns the block.
 */
uint8_t *props_begin(struct props_buf *b, size_t n);
struct rec_bytes props_end(struct props_buf *b, size_t len);
/* Where a block's body starts, after its length field (which the router checked). */
size_t props_body_off(struct rec_bytes props);

/* Has its message expiry passed? Such a message is not sent (a resend of one in flight is). */
static inline bool msg_v5_expired(struct msg_v5 x5)
{
	return x5.expires_at != 0 && x5.expires_at <= wall_clock_ms();
}

bool publish_fits(const struct worker *w, const struct conn *c, size_t tlen, size_t plen,
		  struct msg_v5 x5, uint8_t qos);
void send_publish(struct worker *w, struct conn *c, bool dup, uint8_t qos, bool retain,
		  const uint8_t *topic, size_t tlen, uint16_t pid,
		  const uint8_t *payload, size_t plen, struct msg_v5 x5);
bool out_drained(struct worker *w, struct conn *c);
void conn_set_rules(struct worker *w, struct conn *c, struct acl_client *view);
bool conn_flush(struct worker *w, struct conn *c);
/*
 * After a flush of c's output: blocked, some is left for EPOLLOUT (its
 * sent part dropped); else none (its buffer freed). Reading resumes once
 * the output is down to half max_output_bytes.
 */
void conn_flushed(struct worker *w, struct conn *c, bool blocked);
void flush_dirty(struct worker *w);
void conn_read(struct worker *w, struct conn *c);
/*
 * MQTT bytes from the client: decoded at once when nothing is held, else
 * after what is; the rest of a packet is kept in c->in. *cp follows the
 * connection (its CONNECT moves it). Returns false when it was closed.
 */
bool conn_feed(struct worker *w, struct conn **cp, const uint8_t *p, size_t n);
void conn_process_input(struct worker *w, struct conn *c);
void conn_close(struct worker *w, struct conn *c, bool publish_will, const char *why);
void conn_disconnect(struct worker *w, struct conn *c, uint8_t reason, bool publish_will,
		     const char *why);
void conn_v5_free(struct worker *w, struct conn *c);
struct conn_v5_held *conn_v5_hold(struct conn_v5 *v);
void conn_refuse(struct worker *w, struct conn *c, uint8_t code, const char *why);
void bury_closed(struct worker *w);
void close_all(struct worker *w, const char *why);

/* worker_auth.c */
int worker_auth_setup(struct worker *w);
void worker_auth_free(struct worker *w);
void worker_auth_config_changed(struct worker *w);
void worker_auth_event(struct worker *w, uint32_t events);
void worker_auth_flush(struct worker *w);
bool worker_auth_loopback_ok(struct worker *w, struct conn *c, const char *user, size_t ulen);
/*
 * from_cert: ck's user name is the client certificate's identity
 * (IPC_AUTH_USER_FROM_CERT). scram_first: CONNECT's Authentication Data,
 * when its method is SCRAM-SHA-256; else NULL.
 */
bool worker_auth_hold(struct worker *w, struct conn *c, const struct mqtt_connect *ck,
		      bool from_cert, const struct rec_connect *rc,
		      const struct mqtt_str *scram_first);
/* CONNECT's Authentication Method is one iotd offers (SCRAM-SHA-256 with a password file). */
bool worker_auth_method_ok(const struct worker *w, const struct mqtt_str *method);
/* Re-authentications not finished within connect_timeout end their connection (1 s tick). */
void worker_auth_tick(struct worker *w);
/* An AUTH packet (MQTT 5): the client's step of its exchange, else a protocol error. */
enum pkt_result worker_auth_packet(struct worker *w, struct conn *c,
				   const struct mqtt5_packet *p5);
void worker_auth_forget(struct worker *w, const struct conn *c);

/* worker_mqtt.c */
void connack_accepted(struct worker *w, struct conn *c, bool sp);
void connect_forward(struct worker *w, struct conn *c, const struct rec_connect *rc);
ssize_t process_bytes(struct worker *w, struct conn **cp, const uint8_t *p, size_t len);

/* worker_records.c */
void push_recw(struct worker *w, uint16_t type);
void push_publish(struct worker *w, conn_id_t conn, const struct mqtt_publish *pub, uint64_t ask,
		  struct msg_v5 x5);
void push_close(struct worker *w, struct conn *c, bool publish_will);
void report_state(struct worker *w, const struct conn *c, uint64_t copy, uint16_t pid,
		  uint8_t state);
void report_qos2_in(struct worker *w, const struct conn *c, uint16_t pid, bool held);
void ring_commit(struct worker *w);
void deliver_local(struct worker *w, const struct route *rt, const struct mqtt_publish *pub);
void pending_pump(struct worker *w, struct conn *c);
void handle_record(struct worker *w, const struct shmring_rec *rec);
void drain_ring(struct worker *w);

#endif
