/*
 * test_router.c - the router's logic, driven record by record.
 *
 * Each test feeds w2r records to router_handle() as workers would, written
 * with rec.h's encoders, captures what the router emits through its
 * callback, and decodes it with rec.h's decoders as a worker would. The
 * store tests crash a router over its store and check what its successor
 * finds; the process tests run router_main() over real rings, kill it at
 * the worst instants and restart it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "acl.h"
#include "iotd.h"
#include "ipc.h"
#include "log.h"
#include "mqtt.h"
#include "mqtt5.h"
#include "rec.h"
#include "role.h"
#include "router.h"
#include "sealedfd.h"
#include "shmring.h"
#include "store.h"

#include "roles.h"

/* ---- fixture: a router and the records it emitted ----------------------- */

struct cap {
	unsigned worker;
	uint16_t type;
	size_t len;
	uint8_t *buf;
	uint64_t route_gen;          /* router_route_gen() when the record was emitted */
};

struct fx {
	struct iotd_config cfg;
	struct router *r;
	struct cap *caps;
	size_t n, cap;
	struct store *st;            /* NULL: the router keeps everything in memory */
	char dir[64];                /* the store's temporary directory */
	long room;                   /* records the "ring" still takes; < 0: no limit */
};

static int capture(void *arg, unsigned worker, uint16_t type, const struct recw *rec)
{
	struct fx *f = arg;
	struct cap *c;

	assert_false(rec->oom);
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 64;
		f->caps = realloc(f->caps, f->cap * sizeof(*f->caps));
		assert_non_null(f->caps);
	}
	c = &f->caps[f->n++];
	c->worker = worker;
	c->type = type;
	c->len = rec->len;
	c->route_gen = f->r ? router_route_gen(f->r) : 0;
	c->buf = malloc(rec->len ? rec->len : 1);
	assert_non_null(c->buf);
	memcpy(c->buf, rec->buf, rec->len);
	if (f->room > 0)
		f->room--;
	return 0;
}

/* The "ring" takes f->room more records (router_set_room). */
static bool fx_room(void *arg, unsigned worker)
{
	const struct fx *f = arg;

	return f->room != 0;
}

static void fx_clear(struct fx *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->caps[i].buf);
	f->n = 0;
}

/* The router's counters now. */
static struct router_stats stats_of(struct fx *f)
{
	struct router_stats st;

	router_get_stats(f->r, &st);
	return st;
}

static void fx_start(struct fx *f)
{
	f->r = router_new(&f->cfg, 4, capture, f, NULL);
	assert_non_null(f->r);
	f->room = -1;
	router_set_room(f->r, fx_room);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	f->cfg.max_queued_messages = 100;
	f->cfg.max_queued_bytes = 0;
	f->cfg.session_timeout_secs = 0;
	f->cfg.retained_message_limit = 100;
	f->cfg.max_inflight = 20;
	f->cfg.max_packet_size = 65536;
	fx_start(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];

	router_free(&f->r);
	assert_null(f->r);
	store_close(&f->st);
	if (f->dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
		assert_int_equal(system(cmd), 0);
	}
	fx_clear(f);
	free(f->caps);
	free(f);
	return 0;
}

/* Conn ids as worker w's epoch 1 would make them. */
static conn_id_t C(unsigned worker, unsigned slot)
{
	return conn_id_make(worker, 1, slot, 1);
}

static size_t count_type(const struct fx *f, uint16_t type)
{
	size_t n = 0;

	for (size_t i = 0; i < f->n; i++)
		n += f->caps[i].type == type;
	return n;
}

/* ---- sending w2r records ------------------------------------------------ */

/* A C string as a record's string. */
static struct rec_str str(const char *s)
{
	return (struct rec_str){ (const uint8_t *)s, (uint16_t)strlen(s) };
}

static struct rec_bytes bytes(const char *s)
{
	return (struct rec_bytes){ (const uint8_t *)s, (uint32_t)strlen(s) };
}

static int handle(struct fx *f, unsigned worker, uint16_t type, struct recw *w)
{
	int rc;

	assert_false(w->oom);
	rc = router_handle(f->r, worker, type, w->buf, w->len);
	recw_free(w);
	return rc;
}

struct will {
	const char *topic;
	const char *payload;
	uint8_t qos, retain;
};

/* A CONNECT with a user name (NULL: none). */
static void build_connect_as(struct recw *w, conn_id_t conn, bool clean, const char *id,
			     const char *user, const struct will *will)
{
	const struct rec_connect x = {
		.conn = conn,
		.clean = clean,
		.keepalive = 60,
		.client_id = str(id),
		.remote = str("127.0.0.1:5000"),
		.user = str(user ? user : ""),
		.will_flag = will != NULL,
		.will_qos = will ? will->qos : 0,
		.will_retain = will ? will->retain : 0,
		.will_topic = str(will ? will->topic : ""),
		.will_payload = bytes(will ? will->payload : ""),
		.session_expiry = clean ? 0 : REC_EXPIRY_NEVER,
	};

	recw_init(w);
	rec_connect_encode(w, &x);
}

static void build_connect(struct recw *w, conn_id_t conn, bool clean, const char *id,
			  const struct will *will)
{
	build_connect_as(w, conn, clean, id, NULL, will);
}

static int send_connect(struct fx *f, conn_id_t conn, bool clean, const char *id,
			const struct will *will)
{
	struct recw w;

	build_connect(&w, conn, clean, id, will);
	return handle(f, conn_id_worker(conn), REC_CONNECT, &w);
}

static void build_subscribe(struct recw *w, conn_id_t conn, uint16_t packet_id,
			    const struct rec_subscription *subs, uint16_t n)
{
	size_t count_off;

	recw_init(w);
	count_off = rec_subscribe_begin(w, &(struct rec_subscribe){ .conn = conn,
								 .packet_id = packet_id });
	for (uint16_t i = 0; i < n; i++)
		rec_subscribe_add(w, &subs[i]);
	rec_subscribe_end(w, count_off, n);
}

/* A SUBSCRIBE of the n filters in subs. */
static int send_subscribes(struct fx *f, conn_id_t conn, uint16_t packet_id,
			   const struct rec_subscription *subs, uint16_t n)
{
	struct recw w;

	build_subscribe(&w, conn, packet_id, subs, n);
	return handle(f, conn_id_worker(conn), REC_SUBSCRIBE, &w);
}

static int send_subscribe(struct fx *f, conn_id_t conn, uint16_t packet_id, const char *filter,
			  uint8_t qos)
{
	const struct rec_subscription sub = { str(filter), qos };

	return send_subscribes(f, conn, packet_id, &sub, 1);
}

static int send_unsubscribe(struct fx *f, conn_id_t conn, uint16_t packet_id, const char *filter)
{
	struct recw w;
	size_t count_off;

	recw_init(&w);
	count_off = rec_unsubscribe_begin(&w, &(struct rec_unsubscribe){ .conn = conn,
									.packet_id = packet_id });
	rec_unsubscribe_add(&w, str(filter));
	rec_unsubscribe_end(&w, count_off, 1);
	return handle(f, conn_id_worker(conn), REC_UNSUBSCRIBE, &w);
}

/* conn: the publisher's (0: none, as without an ACL); ask: 0, or the route request (REC_PUB_ASK). */
static void build_publish_from(struct recw *w, conn_id_t conn, uint8_t qos, bool retain,
			       const char *topic, const char *payload, uint64_t ask)
{
	const struct rec_publish x = {
		.qos = qos,
		.flags = (retain ? REC_PUB_RETAIN : 0) | (ask ? REC_PUB_ASK : 0),
		.conn = conn,
		.topic = str(topic),
		.payload = bytes(payload),
		.ask = ask,
	};

	recw_init(w);
	rec_publish_encode(w, &x);
}

static void build_publish_ask(struct recw *w, uint8_t qos, bool retain, const char *topic,
			      const char *payload, uint64_t ask)
{
	build_publish_from(w, 0, qos, retain, topic, payload, ask);
}

static void build_publish(struct recw *w, uint8_t qos, bool retain, const char *topic,
			  const char *payload)
{
	build_publish_ask(w, qos, retain, topic, payload, 0);
}

static int send_publish_ask(struct fx *f, unsigned worker, uint8_t qos, bool retain,
			    const char *topic, const char *payload, uint64_t ask)
{
	struct recw w;

	build_publish_ask(&w, qos, retain, topic, payload, ask);
	return handle(f, worker, REC_PUBLISH, &w);
}

static int send_publish(struct fx *f, unsigned worker, uint8_t qos, bool retain,
			const char *topic, const char *payload)
{
	return send_publish_ask(f, worker, qos, retain, topic, payload, 0);
}

static void build_close(struct recw *w, conn_id_t conn, bool publish_will, uint16_t n,
			const uint16_t *ids)
{
	const struct rec_close x = { .conn = conn, .publish_will = publish_will,
				     .session_expiry = REC_EXPIRY_NEVER };

	recw_init(w);
	rec_close_encode(w, &x, ids, n);
}

static int send_close(struct fx *f, conn_id_t conn, bool publish_will, uint16_t n,
		      const uint16_t *ids)
{
	struct recw w;

	build_close(&w, conn, publish_will, n, ids);
	return handle(f, conn_id_worker(conn), REC_CLOSE, &w);
}

/* What a closing connection owes its session (copy 0: the router holds no copy of it). */
static void build_session_msg(struct recw *w, conn_id_t conn, uint32_t sid, uint16_t packet_id,
			      uint8_t state, uint8_t qos, const char *topic, const char *payload)
{
	const struct rec_session_msg x = {
		.conn = conn,
		.sid = sid,
		.packet_id = packet_id,
		.state = state,
		.qos = qos,
		.topic = str(topic),
		.payload = bytes(payload),
	};

	recw_init(w);
	rec_session_msg_encode(w, &x);
}

static int send_session_msg(struct fx *f, conn_id_t conn, uint32_t sid, uint16_t packet_id,
			    uint8_t state, uint8_t qos, const char *topic, const char *payload)
{
	struct recw w;

	build_session_msg(&w, conn, sid, packet_id, state, qos, topic, payload);
	return handle(f, conn_id_worker(conn), REC_SESSION_MSG, &w);
}

/* A worker's report on a message the router keeps a copy of. */
static int send_msg_state(struct fx *f, conn_id_t conn, uint32_t sid, uint64_t copy,
			  uint16_t packet_id, uint8_t state)
{
	const struct rec_msg_state x = {
		.conn = conn, .sid = sid, .copy = copy, .packet_id = packet_id, .state = state,
	};
	struct recw w;

	recw_init(&w);
	rec_msg_state_encode(&w, &x);
	return handle(f, conn_id_worker(conn), REC_MSG_STATE, &w);
}

static int send_qos2_in(struct fx *f, conn_id_t conn, uint32_t sid, uint16_t packet_id,
			bool held)
{
	const struct rec_qos2_in x = {
		.conn = conn, .sid = sid, .packet_id = packet_id, .held = held,
	};
	struct recw w;

	recw_init(&w);
	rec_qos2_in_encode(&w, &x);
	return handle(f, conn_id_worker(conn), REC_QOS2_IN, &w);
}

/* The router process's part of IPC_WORKER_DOWN, once the worker's records are handled. */
static int send_worker_down(struct fx *f, unsigned worker, uint32_t new_epoch)
{
	router_worker_down(f->r, worker, new_epoch);
	return 0;
}

/* ---- decoding r2w records ----------------------------------------------- */

/*
 * Each record is decoded with rec.h's decoder, as a worker does, and must
 * be well-formed to its last byte; a record about a connection goes to
 * that connection's worker. What the tests look at is copied out: lists
 * into arrays, strings NUL-terminated.
 */

/* The captured record c is of type rtype, and decode (rec.h's decoder for it) takes it whole into *x. */
#define DECODE_CAPTURED(c, rtype, decode, x) \
	do { \
		assert_int_equal((c)->type, rtype); \
		assert_int_equal(decode(x, (c)->buf, (c)->len), 0); \
	} while (0)

static void copy_str(char *dst, size_t cap, const uint8_t *p, size_t len)
{
	assert_true(len < cap);
	if (len)
		memcpy(dst, p, len);
	dst[len] = '\0';
}

struct connack {
	conn_id_t conn;
	uint32_t sid;
	uint8_t rc, present;
	uint16_t n;
	uint16_t ids[16];
};

static void decode_connack(const struct cap *c, struct connack *a)
{
	struct rec_connack x;
	uint16_t id;

	DECODE_CAPTURED(c, REC_CONNACK, rec_connack_decode, &x);
	*a = (struct connack){ .conn = x.conn, .sid = x.sid, .rc = x.rc, .present = x.session_present };
	assert_true(x.ids.n <= ARRAY_SIZE(a->ids));
	for (a->n = 0; rec_packet_id_next(&x.ids, &id);)
		a->ids[a->n++] = id;
	assert_int_equal(c->worker, conn_id_worker(a->conn));
}

struct deliver {
	uint8_t qos, retain;
	char topic[128];
	char payload[128];
	uint32_t n;
	struct rec_target t[16];
};

static void decode_deliver(const struct cap *c, struct deliver *d)
{
	struct rec_deliver x;

	DECODE_CAPTURED(c, REC_DELIVER, rec_deliver_decode, &x);
	*d = (struct deliver){ .qos = x.qos, .retain = x.retain };
	copy_str(d->topic, sizeof(d->topic), x.topic.p, x.topic.len);
	copy_str(d->payload, sizeof(d->payload), x.payload.p, x.payload.len);
	assert_true(x.targets.n <= ARRAY_SIZE(d->t));
	for (d->n = 0; rec_deliver_next(&x.targets, &d->t[d->n]); d->n++)
		assert_int_equal(conn_id_worker(d->t[d->n].conn), c->worker);
}

struct smsg {
	conn_id_t conn;
	uint32_t sid;
	uint64_t copy;
	uint16_t packet_id;
	uint8_t state, qos, retain;
	char topic[128];
	char payload[128];
};

static void decode_session_msg(const struct cap *c, struct smsg *m)
{
	struct rec_session_msg x;

	DECODE_CAPTURED(c, REC_SESSION_MSG, rec_session_msg_decode, &x);
	*m = (struct smsg){ .conn = x.conn, .sid = x.sid, .copy = x.copy, .packet_id = x.packet_id,
			    .state = x.state, .qos = x.qos, .retain = x.retain };
	copy_str(m->topic, sizeof(m->topic), x.topic.p, x.topic.len);
	copy_str(m->payload, sizeof(m->payload), x.payload.p, x.payload.len);
	assert_int_equal(c->worker, conn_id_worker(m->conn));
}

/* The connection a KICK closes. */
static conn_id_t decode_kick(const struct cap *c)
{
	struct rec_kick x;

	DECODE_CAPTURED(c, REC_KICK, rec_kick_decode, &x);
	assert_int_equal(c->worker, conn_id_worker(x.conn));
	return x.conn;
}

static void decode_unsuback(const struct cap *c, struct rec_unsuback *x)
{
	DECODE_CAPTURED(c, REC_UNSUBACK, rec_unsuback_decode, x);
	assert_int_equal(c->worker, conn_id_worker(x->conn));
}

struct suback {
	conn_id_t conn;
	uint16_t packet_id, n;
	uint8_t codes[16];
};

static void decode_suback(const struct cap *c, struct suback *s)
{
	struct rec_suback x;
	uint8_t code;

	DECODE_CAPTURED(c, REC_SUBACK, rec_suback_decode, &x);
	*s = (struct suback){ .conn = x.conn, .packet_id = x.packet_id };
	assert_true(x.codes.n <= ARRAY_SIZE(s->codes));
	for (s->n = 0; rec_suback_next(&x.codes, &code);)
		s->codes[s->n++] = code;
}

struct route_ans {
	uint64_t ask, gen;
	char topic[128];
	uint8_t local;
	uint32_t n;
	struct rec_route_target t[16];   /* the first 16 of n */
};

static void decode_route(const struct cap *c, struct route_ans *a)
{
	struct rec_route x;
	struct rec_route_target t;

	DECODE_CAPTURED(c, REC_ROUTE, rec_route_decode, &x);
	*a = (struct route_ans){ .ask = x.ask, .gen = x.gen, .local = x.local, .n = x.targets.n };
	copy_str(a->topic, sizeof(a->topic), x.topic.p, x.topic.len);
	for (uint32_t i = 0; rec_route_next(&x.targets, &t); i++) {
		assert_int_equal(conn_id_worker(t.conn), c->worker);
		if (i < ARRAY_SIZE(a->t))
			a->t[i] = t;
	}
}

/* The granted QoS a REC_ROUTE gives conn; -1 when it does not name it. */
static int route_qos(const struct route_ans *a, conn_id_t conn)
{
	for (uint32_t i = 0; i < a->n && i < ARRAY_SIZE(a->t); i++)
		if (a->t[i].conn == conn)
			return a->t[i].qos;
	return -1;
}

/* A CONNECT answered by its CONNACK alone, for conn: a; what was captured is cleared. */
static void connect_answered(struct fx *f, conn_id_t conn, bool clean, const char *id,
			     const struct will *will, struct connack *a)
{
	fx_clear(f);
	assert_int_equal(send_connect(f, conn, clean, id, will), 0);
	assert_int_equal(f->n, 1);
	decode_connack(&f->caps[0], a);
	assert_int_equal(a->conn, conn);
	fx_clear(f);
}

/* Connect a fresh session and return its sid; the CONNACK is checked and cleared. */
static uint32_t connect_ok(struct fx *f, conn_id_t conn, bool clean, const char *id,
			   const struct will *will)
{
	struct connack a;

	connect_answered(f, conn, clean, id, will, &a);
	assert_int_equal(a.rc, 0);
	assert_int_equal(a.present, 0);
	assert_int_not_equal(a.sid, 0);
	return a.sid;
}

static void subscribe_ok(struct fx *f, conn_id_t conn, const char *filter, uint8_t qos)
{
	fx_clear(f);
	assert_int_equal(send_subscribe(f, conn, 1, filter, qos), 0);
	assert_true(f->n >= 1);
	assert_int_equal(f->caps[0].type, REC_SUBACK);
	fx_clear(f);
}

/* A persistent session subscribed to filter whose connection closed: its sid. */
static uint32_t offline_subscriber(struct fx *f, conn_id_t conn, const char *id,
				   const char *filter, uint8_t qos)
{
	uint32_t sid = connect_ok(f, conn, false, id, NULL);

	subscribe_ok(f, conn, filter, qos);
	assert_int_equal(send_close(f, conn, false, 0, NULL), 0);
	return sid;
}

/*
 * conn resumes the stored session id: what this emits (after what was
 * captured before) is a CONNACK with session present, then one stored
 * message for each of the n payloads, in order.
 */
static void expect_resumed(struct fx *f, conn_id_t conn, const char *id, size_t n,
			   const char *const *payloads)
{
	struct connack a;
	struct smsg m;

	assert_int_equal(send_connect(f, conn, false, id, NULL), 0);
	assert_int_equal(f->n, 1 + n);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	for (size_t i = 0; i < n; i++) {
		decode_session_msg(&f->caps[1 + i], &m);
		assert_string_equal(m.payload, payloads[i]);
	}
}

/* ---- sessions ----------------------------------------------------------- */

static void connect_new_session_is_acked_without_session_present(void **state)
{
	struct fx *f = *state;
	uint32_t a = connect_ok(f, C(0, 1), false, "dev-a", NULL);
	uint32_t b = connect_ok(f, C(1, 1), true, "dev-b", NULL);

	assert_int_not_equal(a, b);
	assert_int_equal(stats_of(f).sessions, 2);
	assert_int_equal(stats_of(f).online, 2);
}

static void connect_persistent_resumes_with_stored_qos1_but_not_qos0(void **state)
{
	struct fx *f = *state;
	uint32_t sid = offline_subscriber(f, C(0, 1), "dev", "t/#", 1);
	struct connack a;
	struct smsg m;

	assert_int_equal(send_publish(f, 1, 1, false, "t/1", "one"), 0);
	assert_int_equal(send_publish(f, 1, 0, false, "t/0", "zero"), 0);
	assert_int_equal(send_publish(f, 1, 2, false, "t/2", "two"), 0);
	assert_int_equal(f->n, 0);           /* nobody online */

	assert_int_equal(send_connect(f, C(2, 7), false, "dev", NULL), 0);
	assert_int_equal(f->n, 3);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	assert_int_equal(a.sid, sid);
	assert_int_equal(a.conn, C(2, 7));
	decode_session_msg(&f->caps[1], &m);
	assert_int_equal(m.state, MSG_QUEUED);
	assert_int_equal(m.qos, 1);
	assert_string_equal(m.topic, "t/1");
	assert_string_equal(m.payload, "one");
	assert_int_equal(m.sid, sid);
	assert_int_equal(m.conn, C(2, 7));
	decode_session_msg(&f->caps[2], &m);
	assert_int_equal(m.qos, 1);          /* granted 1 caps the QoS 2 publish */
	assert_string_equal(m.topic, "t/2");
	assert_int_not_equal(m.copy, 0);

	/*
	 * The router keeps copies until the worker reports them done: the first
	 * was sent as packet id 9, the second never left the worker, and the
	 * connection dies. The next resume gets both again, the first as an
	 * unfinished exchange with its packet id.
	 */
	decode_session_msg(&f->caps[1], &m);
	assert_int_equal(send_msg_state(f, C(2, 7), sid, m.copy, 9, MSG_INFLIGHT), 0);
	fx_clear(f);
	assert_int_equal(send_close(f, C(2, 7), false, 0, NULL), 0);
	assert_int_equal(send_connect(f, C(2, 8), false, "dev", NULL), 0);
	assert_int_equal(f->n, 3);
	decode_session_msg(&f->caps[1], &m);
	assert_string_equal(m.topic, "t/1");
	assert_int_equal(m.state, MSG_INFLIGHT);
	assert_int_equal(m.packet_id, 9);
	assert_int_equal(send_msg_state(f, C(2, 8), sid, m.copy, 9, MSG_DONE), 0);
	decode_session_msg(&f->caps[2], &m);
	assert_string_equal(m.topic, "t/2");
	assert_int_equal(m.state, MSG_QUEUED);
	assert_int_equal(send_msg_state(f, C(2, 8), sid, m.copy, 0, MSG_DONE), 0);

	/* Both acknowledged: a further resume has nothing. */
	fx_clear(f);
	assert_int_equal(send_close(f, C(2, 8), false, 0, NULL), 0);
	assert_int_equal(send_connect(f, C(2, 9), false, "dev", NULL), 0);
	assert_int_equal(f->n, 1);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
}

static void connect_clean_discards_stored_session(void **state)
{
	struct fx *f = *state;
	uint32_t old = offline_subscriber(f, C(0, 1), "dev", "t", 1);
	uint32_t fresh;

	assert_int_equal(send_publish(f, 0, 1, false, "t", "x"), 0);

	fresh = connect_ok(f, C(0, 2), true, "dev", NULL);   /* checks session_present 0 */
	assert_int_not_equal(fresh, old);
	assert_int_equal(stats_of(f).sessions, 1);
	assert_int_equal(stats_of(f).subscriptions, 0);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "y"), 0);
	assert_int_equal(f->n, 0);

	/* A clean session ends with its connection. */
	assert_int_equal(send_close(f, C(0, 2), false, 0, NULL), 0);
	assert_int_equal(stats_of(f).sessions, 0);
}

static void resume_returns_qos2_ids_and_unfinished_messages_first(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", NULL);
	const uint16_t ids[] = { 5, 7 };
	struct connack a;
	struct smsg m;

	subscribe_ok(f, C(0, 1), "t", 2);
	/* What the closing connection still owes, then the close itself. */
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 0, MSG_QUEUED, 1, "t", "later"), 0);
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 3, MSG_INFLIGHT, 2, "t", "inflight"), 0);
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 4, MSG_PUBREL, 2, "", ""), 0);
	assert_int_equal(send_close(f, C(0, 1), false, 2, ids), 0);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "offline"), 0);
	assert_int_equal(f->n, 0);

	assert_int_equal(send_connect(f, C(1, 1), false, "dev", NULL), 0);
	assert_int_equal(f->n, 5);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	assert_int_equal(a.n, 2);
	assert_int_equal(a.ids[0], 5);
	assert_int_equal(a.ids[1], 7);
	decode_session_msg(&f->caps[1], &m);
	assert_int_equal(m.state, MSG_INFLIGHT);
	assert_int_equal(m.packet_id, 3);
	assert_string_equal(m.payload, "inflight");
	decode_session_msg(&f->caps[2], &m);
	assert_int_equal(m.state, MSG_PUBREL);
	assert_int_equal(m.packet_id, 4);
	decode_session_msg(&f->caps[3], &m);
	assert_int_equal(m.state, MSG_QUEUED);
	assert_string_equal(m.payload, "later");
	decode_session_msg(&f->caps[4], &m);
	assert_int_equal(m.state, MSG_QUEUED);
	assert_string_equal(m.payload, "offline");

	/* The ids went to the worker with the CONNACK. */
	fx_clear(f);
	assert_int_equal(send_close(f, C(1, 1), false, 0, NULL), 0);
	assert_int_equal(send_connect(f, C(1, 2), false, "dev", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.n, 0);
}

static void takeover_across_workers_kicks_then_acks_after_close(void **state)
{
	struct fx *f = *state;
	const struct will will = { "dev/status", "gone", 1, 0 };
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", &will);
	struct connack a;
	struct deliver d;
	struct smsg m;

	connect_ok(f, C(3, 1), true, "watcher", NULL);
	subscribe_ok(f, C(3, 1), "dev/status", 1);
	subscribe_ok(f, C(0, 1), "cmd", 1);

	assert_int_equal(send_connect(f, C(1, 1), false, "dev", NULL), 0);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->caps[0].worker, 0);
	assert_int_equal(decode_kick(&f->caps[0]), C(0, 1));
	fx_clear(f);

	/* Messages routed meanwhile wait for the new connection. */
	assert_int_equal(send_publish(f, 2, 1, false, "cmd", "queued"), 0);
	assert_int_equal(f->n, 0);
	/* The old connection hands back what it owes, then closes. */
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 9, MSG_INFLIGHT, 1, "cmd", "owed"), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);

	assert_int_equal(f->n, 4);
	decode_deliver(&f->caps[0], &d);      /* the will, before the new session starts */
	assert_string_equal(d.topic, "dev/status");
	assert_int_equal(d.t[0].conn, C(3, 1));
	decode_connack(&f->caps[1], &a);
	assert_int_equal(a.conn, C(1, 1));
	assert_int_equal(f->caps[1].worker, 1);
	assert_int_equal(a.present, 1);
	assert_int_equal(a.sid, sid);
	decode_session_msg(&f->caps[2], &m);
	assert_int_equal(m.state, MSG_INFLIGHT);
	assert_int_equal(m.packet_id, 9);
	assert_int_equal(m.conn, C(1, 1));
	decode_session_msg(&f->caps[3], &m);
	assert_int_equal(m.state, MSG_QUEUED);
	assert_string_equal(m.payload, "queued");

	/* Deliveries now go to the new connection, on worker 1. */
	fx_clear(f);
	assert_int_equal(send_publish(f, 2, 1, false, "cmd", "live"), 0);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.t[0].conn, C(1, 1));
}

static void takeover_by_clean_connect_starts_fresh(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", NULL);
	struct connack a;

	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(send_connect(f, C(1, 1), true, "dev", NULL), 0);
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 1);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 0);
	assert_int_not_equal(a.sid, sid);
	fx_clear(f);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "x"), 0);
	assert_int_equal(f->n, 0);
}

static void second_takeover_kicks_the_waiting_connect(void **state)
{
	struct fx *f = *state;
	struct connack a;

	connect_ok(f, C(0, 1), false, "dev", NULL);
	assert_int_equal(send_connect(f, C(1, 1), false, "dev", NULL), 0);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(2, 1), false, "dev", NULL), 0);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->caps[0].worker, 1);
	assert_int_equal(decode_kick(&f->caps[0]), C(1, 1));
	fx_clear(f);

	/* The kicked waiting connection closes: expected, and nothing happens to the session. */
	assert_int_equal(send_close(f, C(1, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(send_close(f, C(1, 1), true, 0, NULL), -1);   /* only once */
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 1);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.conn, C(2, 1));
	assert_int_equal(a.present, 1);
}

static void waiting_connect_closed_early_is_forgotten(void **state)
{
	struct fx *f = *state;

	connect_ok(f, C(0, 1), false, "dev", NULL);
	assert_int_equal(send_connect(f, C(1, 1), false, "dev", NULL), 0);
	assert_int_equal(send_close(f, C(1, 1), true, 0, NULL), 0);
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 0);            /* no CONNACK for the gone connection */
	assert_int_equal(stats_of(f).online, 0);
	assert_int_equal(stats_of(f).sessions, 1);
}

static void waiting_connect_dropped_when_its_worker_dies(void **state)
{
	struct fx *f = *state;

	connect_ok(f, C(0, 1), false, "dev", NULL);
	assert_int_equal(send_connect(f, C(1, 1), false, "dev", NULL), 0);
	assert_int_equal(send_worker_down(f, 1, 2), 0);
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).online, 0);
}

static void anonymous_clients_get_separate_sessions(void **state)
{
	struct fx *f = *state;
	uint32_t a = connect_ok(f, C(0, 1), true, "", NULL);
	uint32_t b = connect_ok(f, C(1, 1), true, "", NULL);   /* no takeover, no KICK */

	assert_int_not_equal(a, b);
	assert_int_equal(stats_of(f).online, 2);
}

static void second_connect_on_one_connection_is_dropped(void **state)
{
	struct fx *f = *state;

	connect_ok(f, C(0, 1), true, "dev", NULL);
	assert_int_equal(send_connect(f, C(0, 1), true, "other", NULL), -1);
	assert_int_equal(f->n, 0);
}

/* ---- subscriptions and routing ------------------------------------------ */

static void subscribe_acks_first_then_sends_matching_retained(void **state)
{
	struct fx *f = *state;
	uint32_t sid;
	struct suback sa;
	struct deliver d;
	const struct rec_subscription subs[] = {
		{ str("home/#"), 1 }, { str("bad/#/x"), 0x80 }, { str("nothing/here"), 2 },
	};

	assert_int_equal(send_publish(f, 0, 2, true, "home/temp", "21"), 0);
	assert_int_equal(send_publish(f, 0, 0, true, "home/hum", "40"), 0);
	assert_int_equal(send_publish(f, 0, 1, true, "office/temp", "19"), 0);
	sid = connect_ok(f, C(1, 1), true, "dev", NULL);

	assert_int_equal(send_subscribes(f, C(1, 1), 42, subs, ARRAY_SIZE(subs)), 0);
	/* The SUBACK at once; the retained messages when the loop turn sends them. */
	assert_int_equal(f->n, 1);
	assert_false(router_send_retained(f->r));

	assert_int_equal(f->n, 3);
	decode_suback(&f->caps[0], &sa);
	assert_int_equal(sa.conn, C(1, 1));
	assert_int_equal(sa.packet_id, 42);
	assert_int_equal(sa.n, 3);
	assert_int_equal(sa.codes[0], 1);
	assert_int_equal(sa.codes[1], 0x80);
	assert_int_equal(sa.codes[2], 2);
	for (size_t i = 1; i < 3; i++) {
		decode_deliver(&f->caps[i], &d);
		assert_int_equal(d.retain, 1);
		assert_int_equal(d.n, 1);
		assert_int_equal(d.t[0].conn, C(1, 1));
		assert_int_equal(d.t[0].sid, sid);
		if (!strcmp(d.topic, "home/temp")) {
			assert_int_equal(d.qos, 2);
			assert_int_equal(d.t[0].qos, 1);     /* min(retained 2, granted 1) */
			assert_string_equal(d.payload, "21");
		} else {
			assert_string_equal(d.topic, "home/hum");
			assert_int_equal(d.t[0].qos, 0);
		}
	}
}

static void retained_message_is_cleared_by_empty_payload(void **state)
{
	struct fx *f = *state;

	assert_int_equal(send_publish(f, 0, 1, true, "a/b", "x"), 0);
	assert_int_equal(stats_of(f).retained, 1);
	assert_int_equal(send_publish(f, 0, 1, true, "a/b", ""), 0);
	assert_int_equal(stats_of(f).retained, 0);
	connect_ok(f, C(0, 1), true, "dev", NULL);
	assert_int_equal(send_subscribe(f, C(0, 1), 1, "a/#", 1), 0);
	assert_int_equal(f->n, 1);            /* the SUBACK only */
}

static void live_publish_with_retain_is_delivered_without_retain(void **state)
{
	struct fx *f = *state;
	struct deliver d;

	connect_ok(f, C(0, 1), true, "dev", NULL);
	subscribe_ok(f, C(0, 1), "a", 1);
	assert_int_equal(send_publish(f, 1, 1, true, "a", "x"), 0);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.retain, 0);
}

/* A PUBLISH with an MQTT 5 property block: the block, the router's check of it. */
static int send_publish_props(struct fx *f, const uint8_t *block, uint32_t len)
{
	const struct rec_publish x = {
		.qos = 1, .flags = REC_PUB_PROPS, .topic = str("a"), .payload = bytes("x"),
		.props = { block, len },
	};
	struct recw w;

	recw_init(&w);
	rec_publish_encode(&w, &x);
	return handle(f, 1, REC_PUBLISH, &w);
}

static void message_properties_go_with_live_deliveries_once_checked(void **state)
{
	/* user property k=v, content type "c" */
	static const uint8_t good[] = { 0x0b, 0x26, 0, 1, 'k', 0, 1, 'v', 0x03, 0, 1, 'c' };
	static const uint8_t alias[] = { 0x03, 0x23, 0, 1 };          /* a topic alias */
	static const uint8_t expiry[] = { 0x05, 0x02, 0, 0, 0, 9 };   /* a message expiry */
	static const uint8_t short_len[] = { 0x05, 0x03, 0, 1, 'c' }; /* length past the end */
	static const uint8_t extra[] = { 0x01, 0x01, 0x01, 0x00 };    /* a byte after the block */
	static const uint8_t subscribe_only[] = { 0x02, 0x0b, 0x01 }; /* a subscription id */
	struct fx *f = *state;
	struct rec_deliver x;

	connect_ok(f, C(0, 1), true, "dev", NULL);
	subscribe_ok(f, C(0, 1), "a", 1);
	assert_int_equal(send_publish_props(f, good, sizeof(good)), 0);
	assert_int_equal(f->n, 1);
	DECODE_CAPTURED(&f->caps[0], REC_DELIVER, rec_deliver_decode, &x);
	assert_int_equal(x.props.len, sizeof(good));
	assert_memory_equal(x.props.p, good, sizeof(good));
	fx_clear(f);

	assert_int_equal(send_publish_props(f, alias, sizeof(alias)), -1);
	assert_int_equal(send_publish_props(f, expiry, sizeof(expiry)), -1);
	assert_int_equal(send_publish_props(f, short_len, sizeof(short_len)), -1);
	assert_int_equal(send_publish_props(f, extra, sizeof(extra)), -1);
	assert_int_equal(send_publish_props(f, subscribe_only, sizeof(subscribe_only)), -1);
	assert_int_equal(f->n, 0);
}

static int send_publish_from(struct fx *f, conn_id_t conn, bool retain, const char *topic)
{
	struct recw w;

	build_publish_from(&w, conn, 1, retain, topic, "x", 0);
	return handle(f, conn_id_worker(conn), REC_PUBLISH, &w);
}

/* MQTT 5 options in the subscription byte: no local, retain as published (per target). */
static void no_local_and_retain_as_published_shape_each_target(void **state)
{
	struct fx *f = *state;
	struct rec_deliver x;
	struct rec_target t;
	struct suback sa;
	size_t n = 0;

	connect_ok(f, C(0, 1), true, "nl", NULL);
	connect_ok(f, C(0, 2), true, "rap", NULL);
	subscribe_ok(f, C(0, 1), "t", 1 | MQTT5_SUB_NO_LOCAL);
	subscribe_ok(f, C(0, 2), "t", 1 | MQTT5_SUB_RETAIN_AS_PUBLISHED);
	assert_int_equal(send_publish_from(f, C(0, 1), true, "t"), 0);
	assert_int_equal(f->n, 1);
	DECODE_CAPTURED(&f->caps[0], REC_DELIVER, rec_deliver_decode, &x);
	assert_int_equal(x.retain, 0);
	while (rec_deliver_next(&x.targets, &t)) {
		assert_true(t.conn == C(0, 2));    /* not back to its publisher */
		assert_true(t.retain);
		assert_int_equal(t.qos, 1);
		n++;
	}
	assert_int_equal(n, 1);
	fx_clear(f);

	/* From another publisher, without retain: both, and no retain flag. */
	connect_ok(f, C(0, 3), true, "pub", NULL);
	fx_clear(f);
	assert_int_equal(send_publish_from(f, C(0, 3), false, "t"), 0);
	assert_int_equal(f->n, 1);
	DECODE_CAPTURED(&f->caps[0], REC_DELIVER, rec_deliver_decode, &x);
	for (n = 0; rec_deliver_next(&x.targets, &t); n++)
		assert_false(t.retain);
	assert_int_equal(n, 2);

	/* Options the protocol does not have are refused. */
	fx_clear(f);
	assert_int_equal(send_subscribe(f, C(0, 3), 9, "u", 0x30), 0);   /* retain handling 3 */
	decode_suback(&f->caps[0], &sa);
	assert_int_equal(sa.n, 1);
	assert_int_equal(sa.codes[0], 0x80);
}

/* Retain handling 1 sends the retained messages when the subscription is new only; 2 never. */
static void retain_handling_decides_what_a_subscribe_sends(void **state)
{
	struct fx *f = *state;

	assert_int_equal(send_publish(f, 0, 1, true, "r/1", "kept"), 0);
	connect_ok(f, C(1, 1), true, "dev", NULL);
	fx_clear(f);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(send_subscribe(f, C(1, 1), 1, "r/#", 1 | 0x10), 0);
		assert_false(router_send_retained(f->r));
		assert_int_equal(count_type(f, REC_DELIVER), i == 0 ? 1 : 0);
		fx_clear(f);
	}
	assert_int_equal(send_subscribe(f, C(1, 1), 2, "r/+", 1 | 0x20), 0);
	assert_false(router_send_retained(f->r));
	assert_int_equal(count_type(f, REC_DELIVER), 0);
}

static void overlapping_subscriptions_give_one_copy_at_highest_qos(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), true, "dev", NULL);
	struct deliver d;

	subscribe_ok(f, C(0, 1), "a/+", 0);
	subscribe_ok(f, C(0, 1), "a/#", 2);
	subscribe_ok(f, C(0, 1), "a/b", 1);
	assert_int_equal(send_publish(f, 1, 2, false, "a/b", "x"), 0);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.n, 1);
	assert_int_equal(d.t[0].sid, sid);
	assert_int_equal(d.t[0].qos, 2);
	assert_int_equal(d.qos, 2);
}

static void fan_out_to_three_sessions_on_two_workers_gives_two_delivers(void **state)
{
	struct fx *f = *state;
	struct deliver d;
	size_t seen = 0;

	connect_ok(f, C(0, 1), true, "a", NULL);
	connect_ok(f, C(0, 2), true, "b", NULL);
	connect_ok(f, C(2, 1), true, "c", NULL);
	subscribe_ok(f, C(0, 1), "s/#", 1);
	subscribe_ok(f, C(0, 2), "s/x", 1);
	subscribe_ok(f, C(2, 1), "+/x", 1);

	assert_int_equal(send_publish(f, 1, 1, false, "s/x", "payload"), 0);
	assert_int_equal(f->n, 2);
	for (size_t i = 0; i < f->n; i++) {
		decode_deliver(&f->caps[i], &d);
		assert_string_equal(d.topic, "s/x");
		assert_string_equal(d.payload, "payload");
		assert_int_equal(d.retain, 0);
		assert_int_equal(d.n, f->caps[i].worker == 0 ? 2 : 1);
		seen += d.n;
	}
	assert_int_equal(seen, 3);
	assert_int_not_equal(f->caps[0].worker, f->caps[1].worker);
}

static void big_fan_out_is_split_to_fit_a_ring_record(void **state)
{
	struct fx *f = *state;
	char id[16];
	size_t targets = 0;
	/* Room for the message and 3 targets (clean sessions: no copies). */
	const size_t max = rec_deliver_head_size(&(struct rec_deliver){ .topic = str("t"),
									.payload = bytes("p") }) +
			   3 * rec_target_size(&(struct rec_target){ .copy = 0 });

	for (unsigned i = 0; i < 10; i++) {
		snprintf(id, sizeof(id), "c%u", i);
		connect_ok(f, C(0, i + 1), true, id, NULL);
		subscribe_ok(f, C(0, i + 1), "t", 1);
	}
	router_set_max_record(f->r, max);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "p"), 0);
	assert_int_equal(f->n, 4);
	for (size_t i = 0; i < f->n; i++) {
		struct deliver d;

		assert_true(f->caps[i].len <= max);
		decode_deliver(&f->caps[i], &d);
		targets += d.n;
	}
	assert_int_equal(targets, 10);
	assert_int_equal(stats_of(f).subscriptions, 10);
}

static void delivered_qos_is_the_lower_of_publish_and_granted(void **state)
{
	struct fx *f = *state;
	struct deliver d;

	connect_ok(f, C(0, 1), true, "low", NULL);
	connect_ok(f, C(0, 2), true, "high", NULL);
	subscribe_ok(f, C(0, 1), "t", 0);
	subscribe_ok(f, C(0, 2), "t", 2);

	assert_int_equal(send_publish(f, 1, 1, false, "t", "x"), 0);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.qos, 1);
	assert_int_equal(d.n, 2);
	for (uint32_t i = 0; i < d.n; i++)
		assert_int_equal(d.t[i].qos, d.t[i].conn == C(0, 1) ? 0 : 1);
}

static void unsubscribe_stops_delivery_and_is_acked(void **state)
{
	struct fx *f = *state;
	struct rec_unsuback ua;

	connect_ok(f, C(0, 1), true, "dev", NULL);
	subscribe_ok(f, C(0, 1), "t/+", 1);
	assert_int_equal(send_unsubscribe(f, C(0, 1), 77, "t/+"), 0);
	assert_int_equal(f->n, 1);
	decode_unsuback(&f->caps[0], &ua);
	assert_int_equal(ua.conn, C(0, 1));
	assert_int_equal(ua.packet_id, 77);
	assert_int_equal(ua.codes.n, 1);
	assert_int_equal(ua.codes.p[0], MQTT5_RC_SUCCESS);
	fx_clear(f);

	assert_int_equal(send_publish(f, 0, 1, false, "t/a", "x"), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).subscriptions, 0);

	/* Unsubscribing from nothing is still acknowledged, saying so (MQTT 5's 0x11). */
	assert_int_equal(send_unsubscribe(f, C(0, 1), 78, "never"), 0);
	assert_int_equal(count_type(f, REC_UNSUBACK), 1);
	decode_unsuback(&f->caps[0], &ua);
	assert_int_equal(ua.codes.n, 1);
	assert_int_equal(ua.codes.p[0], MQTT5_RC_NO_SUBSCRIPTION_EXISTED);
}

static void resubscribe_replaces_the_qos(void **state)
{
	struct fx *f = *state;
	struct deliver d;

	connect_ok(f, C(0, 1), true, "dev", NULL);
	subscribe_ok(f, C(0, 1), "t", 2);
	subscribe_ok(f, C(0, 1), "t", 0);
	assert_int_equal(stats_of(f).subscriptions, 1);
	assert_int_equal(send_publish(f, 0, 2, false, "t", "x"), 0);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.t[0].qos, 0);
}

/* ---- retained messages owed to new subscriptions ------------------------ */

static size_t retained_walks(struct fx *f)
{
	struct router_stats st;

	router_get_stats(f->r, &st);
	return st.retained_walks;
}

/* Deliveries captured to conn on topic, and how many of them had retain set. */
static size_t delivered(struct fx *f, conn_id_t conn, const char *topic, size_t *retained)
{
	size_t n = 0;

	if (retained)
		*retained = 0;
	for (size_t i = 0; i < f->n; i++) {
		struct deliver d;

		if (f->caps[i].type != REC_DELIVER)
			continue;
		decode_deliver(&f->caps[i], &d);
		for (uint32_t t = 0; t < d.n && t < ARRAY_SIZE(d.t); t++) {
			if (d.t[t].conn == conn && !strcmp(d.topic, topic)) {
				n++;
				if (retained && d.retain)
					(*retained)++;
			}
		}
	}
	return n;
}

static void put_retained(struct fx *f, const char *fmt, unsigned n)
{
	char topic[64];

	for (unsigned i = 0; i < n; i++) {
		snprintf(topic, sizeof(topic), fmt, i);
		assert_int_equal(send_publish(f, 0, 1, true, topic, "v"), 0);
	}
}

static void retained_walk_resumes_as_the_ring_takes_them(void **state)
{
	struct fx *f = *state;
	char topic[16];
	size_t rounds = 0, ret;

	put_retained(f, "t/%u", 10);
	connect_ok(f, C(1, 1), true, "dev", NULL);
	assert_int_equal(send_subscribe(f, C(1, 1), 1, "t/#", 1), 0);
	assert_int_equal(retained_walks(f), 1);
	/* A full ring: nothing goes, and the walk waits. */
	f->room = 0;
	assert_false(router_send_retained(f->r));
	assert_int_equal(f->n, 1);
	/* Three records of room a turn: three messages a turn. */
	while (retained_walks(f)) {
		size_t before = f->n;

		f->room = 3;
		assert_false(router_send_retained(f->r));
		assert_true(f->n - before <= 3);
		assert_true(++rounds <= 4);
	}
	assert_int_equal(rounds, 4);
	assert_int_equal(f->n, 11);
	assert_int_equal(f->caps[0].type, REC_SUBACK);
	for (unsigned i = 0; i < 10; i++) {
		snprintf(topic, sizeof(topic), "t/%u", i);
		assert_int_equal(delivered(f, C(1, 1), topic, &ret), 1);
		assert_int_equal(ret, 1);
	}
}

/*
 * While the walk waits: a topic it has not reached is cleared, another is
 * replaced (the subscriber gets the new value live), a new one appears,
 * and the one it stands on is cleared. Each topic reaches the subscriber
 * once, never an old value after a new one.
 */
static void retained_walk_meets_changes_and_live_publishes_once(void **state)
{
	struct fx *f = *state;
	char topic[16];
	size_t ret;

	put_retained(f, "t/%u", 10);
	connect_ok(f, C(1, 1), true, "dev", NULL);
	assert_int_equal(send_subscribe(f, C(1, 1), 1, "t/#", 1), 0);
	f->room = 3;                          /* the SUBACK is gone: t/0 and t/1 */
	assert_false(router_send_retained(f->r));
	assert_int_equal(delivered(f, C(1, 1), "t/0", NULL) + delivered(f, C(1, 1), "t/1", NULL), 2);
	f->room = -1;
	assert_int_equal(send_publish(f, 0, 1, true, "t/1", ""), 0);    /* where the walk stands */
	assert_int_equal(send_publish(f, 0, 1, true, "t/5", ""), 0);
	assert_int_equal(send_publish(f, 0, 1, true, "t/7", "new"), 0);
	assert_int_equal(send_publish(f, 0, 1, true, "t/new", "v"), 0);
	assert_int_equal(send_publish(f, 0, 1, false, "t/8", "event"), 0);
	assert_false(router_send_retained(f->r));
	assert_int_equal(retained_walks(f), 0);

	for (unsigned i = 0; i < 10; i++) {
		snprintf(topic, sizeof(topic), "t/%u", i);
		if (i == 1) {
			/* Sent before it was cleared; the clearing publish goes out live too. */
			assert_int_equal(delivered(f, C(1, 1), topic, &ret), 2);
			assert_int_equal(ret, 1);
		} else if (i == 5) {
			/* Cleared before the walk reached it: only the clearing publish, live. */
			assert_int_equal(delivered(f, C(1, 1), topic, &ret), 1);
			assert_int_equal(ret, 0);
		} else if (i == 7) {
			assert_int_equal(delivered(f, C(1, 1), topic, &ret), 1);
			assert_int_equal(ret, 0);     /* live, the new value */
		} else if (i == 8) {
			/* The live event, then the retained value it did not replace. */
			assert_int_equal(delivered(f, C(1, 1), topic, &ret), 2);
			assert_int_equal(ret, 1);
		} else {
			assert_int_equal(delivered(f, C(1, 1), topic, &ret), 1);
			assert_int_equal(ret, 1);
		}
	}
	assert_int_equal(delivered(f, C(1, 1), "t/new", &ret), 1);
	assert_int_equal(ret, 0);
}

static void retained_walk_ends_with_its_subscription_connection_or_session(void **state)
{
	struct fx *f = *state;
	struct will w = { "t/will", "gone", 0, 1 };

	put_retained(f, "t/%u", 10);
	for (int how = 0; how < 4; how++) {
		conn_id_t conn = C(1, (unsigned)how + 1);

		connect_ok(f, conn, how != 2, "dev", &w);
		subscribe_ok(f, conn, "t/#", 1);
		subscribe_ok(f, conn, "+/+", 1);
		assert_int_equal(retained_walks(f), 2);
		f->room = 2;
		assert_false(router_send_retained(f->r));
		assert_int_equal(count_type(f, REC_DELIVER), 2);
		f->room = -1;
		switch (how) {
		case 0:
			assert_int_equal(send_unsubscribe(f, conn, 2, "t/#"), 0);
			assert_int_equal(send_unsubscribe(f, conn, 3, "+/+"), 0);
			assert_int_equal(send_close(f, conn, false, 0, NULL), 0);
			break;
		case 1:
			/* Its will is a retained message on a topic the walks match. */
			assert_int_equal(send_close(f, conn, true, 0, NULL), 0);
			break;
		case 2:
			/* A persistent session taken over by a connection on another worker. */
			assert_int_equal(send_connect(f, C(2, 9), false, "dev", NULL), 0);
			assert_int_equal(retained_walks(f), 0);
			assert_int_equal(send_close(f, conn, false, 0, NULL), 0);
			assert_int_equal(send_close(f, C(2, 9), false, 0, NULL), 0);
			break;
		default:
			assert_int_equal(send_worker_down(f, 1, 2), 0);
			break;
		}
		assert_int_equal(retained_walks(f), 0);
		fx_clear(f);
		assert_false(router_send_retained(f->r));
		assert_int_equal(count_type(f, REC_DELIVER), 0);
	}
}

static void repeated_filter_in_one_subscribe_is_one_subscription_and_one_walk(void **state)
{
	struct fx *f = *state;
	struct suback sa;
	struct deliver d;
	const struct rec_subscription subs[] = {
		{ str("t/#"), 2 }, { str("t/1"), 1 },
		{ str("t/#"), 0 },               /* the last QoS wins */
		{ str("t/1"), 1 },
	};
	struct rec_subscription *many;
	const unsigned n = 5000;
	size_t ret;

	put_retained(f, "t/%u", 3);
	connect_ok(f, C(1, 1), true, "dev", NULL);
	assert_int_equal(send_subscribes(f, C(1, 1), 7, subs, ARRAY_SIZE(subs)), 0);
	decode_suback(&f->caps[0], &sa);
	assert_int_equal(sa.n, 4);
	assert_int_equal(sa.codes[0], 2);
	assert_int_equal(sa.codes[1], 1);
	assert_int_equal(sa.codes[2], 0);
	assert_int_equal(sa.codes[3], 1);
	assert_int_equal(stats_of(f).subscriptions, 2);
	assert_int_equal(stats_of(f).retained_walks, 2);
	assert_false(router_send_retained(f->r));
	assert_int_equal(delivered(f, C(1, 1), "t/0", &ret), 1);
	assert_int_equal(delivered(f, C(1, 1), "t/2", &ret), 1);
	assert_int_equal(delivered(f, C(1, 1), "t/1", &ret), 2);       /* one per filter */
	assert_int_equal(ret, 2);
	for (size_t i = 1; i < f->n; i++) {
		decode_deliver(&f->caps[i], &d);
		if (strcmp(d.topic, "t/1"))
			assert_int_equal(d.t[0].qos, 0);
	}

	/* Thousands of "#": one subscription, one walk, every message once. */
	fx_clear(f);
	many = calloc(n, sizeof(*many));
	assert_non_null(many);
	for (unsigned i = 0; i < n; i++)
		many[i] = (struct rec_subscription){ str("#"), 1 };
	assert_int_equal(send_subscribes(f, C(1, 1), 8, many, (uint16_t)n), 0);
	free(many);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->caps[0].type, REC_SUBACK);
	assert_int_equal(stats_of(f).subscriptions, 3);
	assert_int_equal(stats_of(f).retained_walks, 1);
	assert_false(router_send_retained(f->r));
	assert_int_equal(count_type(f, REC_DELIVER), 3);
}

/* A big tree is walked a bounded amount per turn, and the turns resume it. */
static void retained_walk_of_a_big_tree_takes_several_bounded_turns(void **state)
{
	struct fx *f = *state;
	const unsigned n = 20000;
	size_t turns = 1;

	f->cfg.retained_message_limit = n;
	router_config_changed(f->r);
	put_retained(f, "big/%u/x", n);
	fx_clear(f);
	connect_ok(f, C(1, 1), true, "dev", NULL);
	subscribe_ok(f, C(1, 1), "+/+/+/#", 1);
	subscribe_ok(f, C(1, 1), "+/+/nothing", 1);
	while (router_send_retained(f->r)) {
		/* Never more than the turn's budget: 4096 nodes visited. */
		assert_true(count_type(f, REC_DELIVER) <= 4096 * turns);
		assert_true(++turns < 100);
	}
	assert_true(turns >= n / 4096);
	assert_int_equal(count_type(f, REC_DELIVER), n);
	assert_int_equal(retained_walks(f), 0);
}

/* ---- routes a worker may cache (REC_PUB_ASK, REC_ROUTE) ----------------- */

/* The bytes of a local REC_ROUTE for topic naming n targets. */
static size_t route_size(const char *topic, uint32_t n)
{
	struct recw w;
	size_t count_off, len;

	recw_init(&w);
	count_off = rec_route_begin(&w, &(struct rec_route){ .topic = str(topic), .local = 1 });
	for (uint32_t i = 0; i < n; i++)
		rec_route_add(&w, &(struct rec_route_target){ .conn = 0 });
	rec_route_end(&w, count_off, n);
	assert_false(w.oom);
	len = w.len;
	recw_free(&w);
	return len;
}

/* Publish from worker with an ask; the last record emitted must be its REC_ROUTE. */
static void publish_asking(struct fx *f, unsigned worker, uint8_t qos, const char *topic,
			   uint64_t ask, struct route_ans *a)
{
	fx_clear(f);
	assert_int_equal(send_publish_ask(f, worker, qos, false, topic, "p", ask), 0);
	assert_int_equal(count_type(f, REC_ROUTE), 1);
	assert_true(f->n >= 1);
	assert_int_equal(f->caps[f->n - 1].worker, worker);
	decode_route(&f->caps[f->n - 1], a);
	assert_int_equal(a->ask, ask);
	assert_int_equal(a->gen, router_route_gen(f->r));
	assert_string_equal(a->topic, topic);
}

static void route_is_local_when_every_target_is_a_clean_session_on_the_asking_worker(void **state)
{
	struct fx *f = *state;
	struct route_ans a;
	struct deliver d;

	connect_ok(f, C(0, 1), true, "a", NULL);
	connect_ok(f, C(0, 2), true, "b", NULL);
	connect_ok(f, C(0, 3), true, "c", NULL);
	/* a: three filters match, one target at the highest granted QoS. */
	subscribe_ok(f, C(0, 1), "s/+", 0);
	subscribe_ok(f, C(0, 1), "s/#", 2);
	subscribe_ok(f, C(0, 1), "s/x", 1);
	subscribe_ok(f, C(0, 2), "s/x", 0);
	subscribe_ok(f, C(0, 3), "other", 2);

	publish_asking(f, 0, 1, "s/x", 42, &a);
	/* The message's deliveries first, then the answer, both to worker 0. */
	assert_int_equal(f->n, 2);
	assert_int_equal(f->caps[0].worker, 0);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.n, 2);
	assert_string_equal(d.payload, "p");
	assert_int_equal(a.local, 1);
	assert_int_equal(a.n, 2);
	assert_int_equal(route_qos(&a, C(0, 1)), 2);   /* granted, not min(publish, granted) */
	assert_int_equal(route_qos(&a, C(0, 2)), 0);
	assert_int_equal(route_qos(&a, C(0, 3)), -1);

	/*
	 * A fan-out split into several REC_DELIVER (with a 10-byte payload one
	 * target fills a record) while the answer just fits: it follows the last.
	 */
	router_set_max_record(f->r, route_size("s/x", 2));
	fx_clear(f);
	assert_int_equal(send_publish_ask(f, 0, 0, false, "s/x", "pppppppppp", 43), 0);
	decode_route(&f->caps[f->n - 1], &a);
	assert_int_equal(a.ask, 43);
	assert_int_equal(f->n, 3);
	assert_int_equal(f->caps[0].type, REC_DELIVER);
	assert_int_equal(f->caps[1].type, REC_DELIVER);
	assert_int_equal(a.local, 1);
	assert_int_equal(a.n, 2);

	/* One byte less and the answer would not fit the ring: the router keeps the topic. */
	router_set_max_record(f->r, route_size("s/x", 2) - 1);
	publish_asking(f, 0, 0, "s/x", 44, &a);
	assert_int_equal(a.local, 0);
	assert_int_equal(a.n, 0);
}

static void route_is_local_and_empty_without_subscribers(void **state)
{
	struct fx *f = *state;
	struct route_ans a;

	publish_asking(f, 2, 0, "nobody/home", 1, &a);
	assert_int_equal(f->n, 1);
	assert_int_equal(a.local, 1);
	assert_int_equal(a.n, 0);

	/* A session elsewhere subscribed to another topic changes nothing. */
	connect_ok(f, C(1, 1), true, "elsewhere", NULL);
	subscribe_ok(f, C(1, 1), "somewhere/else", 1);
	publish_asking(f, 2, 2, "nobody/home", 2, &a);
	assert_int_equal(f->n, 1);
	assert_int_equal(a.local, 1);
	assert_int_equal(a.n, 0);
}

/* The answer is remote: local 0, n 0, whatever the deliveries. */
static void expect_remote(struct fx *f, unsigned worker, uint8_t qos, const char *topic,
			  uint64_t ask)
{
	struct route_ans a;

	publish_asking(f, worker, qos, topic, ask, &a);
	assert_int_equal(a.local, 0);
	assert_int_equal(a.n, 0);
}

static void route_is_remote_for_another_worker_a_persistent_or_a_pending_session(void **state)
{
	struct fx *f = *state;

	/* Only a target on worker 1; and with one on worker 0 as well. */
	connect_ok(f, C(1, 1), true, "w1", NULL);
	subscribe_ok(f, C(1, 1), "w/t", 1);
	expect_remote(f, 0, 1, "w/t", 1);
	assert_int_equal(f->n, 2);
	assert_int_equal(f->caps[0].worker, 1);
	assert_int_equal(f->caps[0].type, REC_DELIVER);
	connect_ok(f, C(0, 1), true, "w0", NULL);
	subscribe_ok(f, C(0, 1), "w/#", 1);
	expect_remote(f, 0, 1, "w/t", 2);
	assert_int_equal(count_type(f, REC_DELIVER), 2);
	/* The same topic asked from worker 1 is remote too (a target on worker 0). */
	expect_remote(f, 1, 1, "w/t", 3);

	/* A persistent session online on the asking worker. */
	connect_ok(f, C(2, 1), false, "keeper", NULL);
	subscribe_ok(f, C(2, 1), "p/t", 1);
	expect_remote(f, 2, 1, "p/t", 4);
	assert_int_equal(count_type(f, REC_DELIVER), 1);
	/* ... and offline: its messages are queued by the router. */
	assert_int_equal(send_close(f, C(2, 1), false, 0, NULL), 0);
	expect_remote(f, 2, 1, "p/t", 5);
	assert_int_equal(f->n, 1);

	/* A clean session whose connection is being taken over. */
	connect_ok(f, C(3, 1), true, "moving", NULL);
	subscribe_ok(f, C(3, 1), "m/t", 1);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(3, 2), true, "moving", NULL), 0);
	assert_int_equal(decode_kick(&f->caps[0]), C(3, 1));
	expect_remote(f, 3, 1, "m/t", 6);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
	expect_remote(f, 3, 0, "m/t", 7);
}

static void route_of_a_fan_out_past_the_limit_stays_with_the_router(void **state)
{
	struct fx *f = *state;
	struct route_ans a;
	char id[16];

	/* ROUTER_ROUTE_MAX (1024) targets are named; one more is too many. */
	for (unsigned i = 0; i < 1025; i++) {
		snprintf(id, sizeof(id), "c%u", i);
		connect_ok(f, C(0, i + 1), true, id, NULL);
		subscribe_ok(f, C(0, i + 1), i < 1024 ? "t/+" : "t/b", 1);
	}
	publish_asking(f, 0, 1, "t/a", 1, &a);
	assert_int_equal(a.local, 1);
	assert_int_equal(a.n, 1024);
	publish_asking(f, 0, 1, "t/b", 2, &a);
	assert_int_equal(a.local, 0);
	assert_int_equal(a.n, 0);
}

static void publish_without_ask_gets_no_route_and_bad_flags_are_dropped(void **state)
{
	struct fx *f = *state;
	struct route_ans a;
	struct rec_publish x = { .qos = 1, .topic = str("t"), .payload = bytes("x"), .ask = 5 };
	struct recw w;

	connect_ok(f, C(0, 1), true, "a", NULL);
	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "x"), 0);
	assert_int_equal(f->n, 1);
	assert_int_equal(count_type(f, REC_ROUTE), 0);
	fx_clear(f);
	assert_int_equal(send_publish(f, 0, 1, true, "t", "x"), 0);
	assert_int_equal(count_type(f, REC_ROUTE), 0);
	fx_clear(f);

	/* Retain and ask together: the message is kept, and answered. */
	assert_int_equal(send_publish_ask(f, 0, 1, true, "r", "kept", 9), 0);
	assert_int_equal(f->n, 1);
	decode_route(&f->caps[0], &a);
	assert_int_equal(a.ask, 9);
	assert_int_equal(stats_of(f).retained, 2);
	fx_clear(f);

	/* An unknown flag bit, alone or with the known ones. */
	for (unsigned bit = 2; bit < 8; bit++) {
		x.flags = (uint8_t)(1u << bit);
		recw_init(&w);
		rec_publish_encode(&w, &x);
		assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);
		x.flags = (uint8_t)(REC_PUB_RETAIN | REC_PUB_ASK | 1u << bit);
		recw_init(&w);
		rec_publish_encode(&w, &x);
		assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);
	}
	/* The ask flag with the ask cut short or missing; an ask without the flag. */
	for (size_t cut = 1; cut <= 8; cut++) {
		build_publish_ask(&w, 1, false, "t", "x", 5);
		assert_int_equal(router_handle(f->r, 0, REC_PUBLISH, w.buf, w.len - cut), -1);
		recw_free(&w);
	}
	build_publish(&w, 1, false, "t", "x");
	recw_u64(&w, 5);                      /* the ask's bytes, without its flag */
	assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);
	build_publish_ask(&w, 1, false, "t", "x", 5);
	recw_u8(&w, 0);                       /* a byte past the ask */
	assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);
	assert_int_equal(f->n, 0);            /* neither delivered nor answered */
	assert_int_equal(stats_of(f).bad_records, 6 * 2 + 8 + 2);
}

static void route_gen_moves_with_every_change_of_where_messages_go(void **state)
{
	struct fx *f = *state;
	uint64_t g = router_route_gen(f->r);
	struct route_ans a;

#define SAME() assert_int_equal(router_route_gen(f->r), g)
#define MOVED()                                                 \
	do {                                                    \
		assert_true(router_route_gen(f->r) > g);        \
		g = router_route_gen(f->r);                     \
	} while (0)

	/* Sessions without subscriptions and messages route nothing new. */
	connect_ok(f, C(0, 1), true, "clean", NULL);
	SAME();
	connect_ok(f, C(0, 2), false, "keeper", NULL);
	SAME();
	assert_int_equal(send_publish(f, 1, 1, false, "t", "x"), 0);
	assert_int_equal(send_publish(f, 1, 1, true, "t", "x"), 0);
	publish_asking(f, 1, 1, "t", 1, &a);
	SAME();
	assert_int_equal(send_close(f, C(0, 2), false, 0, NULL), 0);
	SAME();
	assert_int_equal(send_connect(f, C(0, 3), false, "keeper", NULL), 0);   /* resumed */
	SAME();

	/* SUBSCRIBE, again at another QoS, UNSUBSCRIBE: each before its ack. */
	fx_clear(f);
	assert_int_equal(send_subscribe(f, C(0, 1), 1, "t", 1), 0);
	MOVED();
	assert_int_equal(f->caps[0].type, REC_SUBACK);
	assert_int_equal(f->caps[0].route_gen, g);
	subscribe_ok(f, C(0, 1), "t", 2);
	MOVED();
	fx_clear(f);
	assert_int_equal(send_unsubscribe(f, C(0, 1), 2, "t"), 0);
	MOVED();
	assert_int_equal(f->caps[0].route_gen, g);
	assert_int_equal(send_unsubscribe(f, C(0, 1), 3, "t"), 0);   /* nothing left to remove */
	SAME();

	/* A clean session closes: without subscriptions, then with. */
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	SAME();
	connect_ok(f, C(0, 4), true, "short", NULL);
	subscribe_ok(f, C(0, 4), "s", 0);
	MOVED();
	assert_int_equal(send_close(f, C(0, 4), true, 0, NULL), 0);
	MOVED();

	/* A persistent session with subscriptions closes, then connects again. */
	subscribe_ok(f, C(0, 3), "k/#", 1);
	MOVED();
	assert_int_equal(send_close(f, C(0, 3), false, 0, NULL), 0);
	MOVED();
	fx_clear(f);
	assert_int_equal(send_connect(f, C(1, 1), false, "keeper", NULL), 0);
	MOVED();
	assert_int_equal(f->caps[0].type, REC_CONNACK);
	assert_int_equal(f->caps[0].route_gen, g);

	/* Taken over: at the KICK, and again when the new connection takes it. */
	fx_clear(f);
	assert_int_equal(send_connect(f, C(2, 1), false, "keeper", NULL), 0);
	MOVED();
	assert_int_equal(decode_kick(&f->caps[0]), C(1, 1));
	fx_clear(f);
	assert_int_equal(send_close(f, C(1, 1), false, 0, NULL), 0);
	MOVED();
	assert_int_equal(f->caps[0].type, REC_CONNACK);
	assert_int_equal(f->caps[0].route_gen, g);

	/* A worker down: with only unsubscribed sessions, then with a subscribed one. */
	connect_ok(f, C(3, 1), true, "idle", NULL);
	SAME();
	assert_int_equal(send_worker_down(f, 3, 2), 0);
	SAME();
	connect_ok(f, C(1, 2), true, "busy", NULL);
	subscribe_ok(f, C(1, 2), "b", 1);
	MOVED();
	assert_int_equal(send_worker_down(f, 1, 2), 0);
	MOVED();
	/* ... and the persistent one on worker 2 (subscribed, goes offline). */
	assert_int_equal(send_worker_down(f, 2, 2), 0);
	MOVED();
	assert_int_equal(send_worker_down(f, 2, 2), 0);   /* nothing of epoch 1 left */
	SAME();
#undef SAME
#undef MOVED
}

static void set_route_gen_switches_the_counter_and_bumps_it(void **state)
{
	static _Atomic uint64_t shared = 100;
	struct fx *f = *state;
	uint64_t own = router_route_gen(f->r);
	struct route_ans a;

	router_set_route_gen(f->r, &shared);
	assert_int_equal(atomic_load(&shared), 101);
	assert_int_equal(router_route_gen(f->r), 101);

	connect_ok(f, C(0, 1), true, "a", NULL);
	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(atomic_load(&shared), 102);
	publish_asking(f, 0, 1, "t", 1, &a);
	assert_int_equal(a.gen, 102);
	assert_int_equal(a.local, 1);

	/* Back to its own counter, which the shared one's changes did not touch. */
	router_set_route_gen(f->r, NULL);
	assert_int_equal(router_route_gen(f->r), own + 1);
	subscribe_ok(f, C(0, 1), "u", 1);
	assert_int_equal(router_route_gen(f->r), own + 2);
	assert_int_equal(atomic_load(&shared), 102);
}

/* router_free ends no session for the workers: it leaves the route generation alone. */
static void router_free_leaves_the_route_gen_alone(void **state)
{
	static _Atomic uint64_t shared = 7;
	struct fx *f = *state;
	uint64_t before;

	router_set_route_gen(f->r, &shared);
	connect_ok(f, C(0, 1), true, "clean", NULL);
	connect_ok(f, C(1, 1), false, "keeper", NULL);
	subscribe_ok(f, C(0, 1), "t", 1);
	subscribe_ok(f, C(1, 1), "u", 1);
	before = atomic_load(&shared);
	router_free(&f->r);
	assert_null(f->r);
	assert_int_equal(atomic_load(&shared), before);
}

/* ---- offline queue ------------------------------------------------------ */

static void offline_queue_drops_new_messages_when_full(void **state)
{
	struct fx *f = *state;

	f->cfg.max_queued_messages = 2;
	offline_subscriber(f, C(0, 1), "dev", "t", 1);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "1"), 0);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "2"), 0);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "3"), 0);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "4"), 0);
	assert_int_equal(stats_of(f).queue_drops, 2);

	expect_resumed(f, C(0, 2), "dev", 2, (const char *const[]){ "1", "2" });
}

static void offline_queue_respects_the_byte_budget(void **state)
{
	struct fx *f = *state;

	f->cfg.max_queued_bytes = 10;          /* topic + payload bytes */
	offline_subscriber(f, C(0, 1), "dev", "t", 1);
	assert_int_equal(send_publish(f, 0, 1, false, "t", "1234"), 0);   /* 5 */
	assert_int_equal(send_publish(f, 0, 1, false, "t", "12345"), 0);  /* 6: over */
	assert_int_equal(send_publish(f, 0, 1, false, "t", "123"), 0);    /* 4: fits */
	assert_int_equal(stats_of(f).queue_drops, 1);
	assert_int_equal(send_connect(f, C(0, 2), false, "dev", NULL), 0);
	assert_int_equal(count_type(f, REC_SESSION_MSG), 2);
}

/* ---- bounds on what clients make the router hold ----------------------- */

static void expect_stats(struct fx *f, size_t sessions, size_t online, size_t subs,
			 size_t retained);

static void expect_refused_unavailable(struct fx *f, conn_id_t conn, const char *id)
{
	struct connack a;

	connect_answered(f, conn, false, id, NULL, &a);
	assert_int_equal(a.rc, MQTT_CONNACK_UNAVAILABLE);
	assert_int_equal(a.sid, 0);
}

static void max_sessions_refuses_new_sessions_but_not_resumes_or_takeovers(void **state)
{
	struct fx *f = *state;
	struct connack a;

	f->cfg.max_sessions = 2;
	connect_ok(f, C(0, 1), false, "a", NULL);
	connect_ok(f, C(1, 1), true, "b", NULL);
	expect_refused_unavailable(f, C(2, 1), "c");
	expect_stats(f, 2, 2, 0, 0);
	/* The refused connection holds nothing: its slot takes a CONNECT again. */
	expect_refused_unavailable(f, C(2, 1), "c");

	/* An offline session still counts; resuming it is allowed. */
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	expect_refused_unavailable(f, C(2, 2), "c");
	fx_clear(f);
	assert_int_equal(send_connect(f, C(0, 2), false, "a", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.rc, 0);
	assert_int_equal(a.present, 1);

	/* A takeover replaces a session: allowed at the limit, even by a clean CONNECT. */
	fx_clear(f);
	assert_int_equal(send_connect(f, C(3, 1), true, "b", NULL), 0);
	assert_int_equal(count_type(f, REC_KICK), 1);
	fx_clear(f);
	assert_int_equal(send_close(f, C(1, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 1);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.conn, C(3, 1));
	assert_int_equal(a.rc, 0);
	expect_stats(f, 2, 2, 0, 0);

	/* A clean CONNECT for a stored session discards it and starts one: no more sessions. */
	assert_int_equal(send_close(f, C(0, 2), false, 0, NULL), 0);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(0, 3), true, "a", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.rc, 0);

	/* Read at each use: raised, a new session fits; lowered, none is dropped. */
	f->cfg.max_sessions = 3;
	router_config_changed(f->r);
	connect_ok(f, C(2, 3), false, "c", NULL);
	expect_refused_unavailable(f, C(2, 4), "d");
	f->cfg.max_sessions = 1;
	router_config_changed(f->r);
	expect_stats(f, 3, 3, 0, 0);
	f->cfg.max_sessions = 0;              /* no cap */
	connect_ok(f, C(2, 5), false, "d", NULL);
	expect_stats(f, 4, 4, 0, 0);
}

static void send_subscribe_many(struct fx *f, conn_id_t conn, uint16_t n, const char *const *filters,
				uint8_t qos, struct suback *sa)
{
	struct rec_subscription subs[4];

	assert_true(n <= ARRAY_SIZE(subs));
	for (uint16_t i = 0; i < n; i++)
		subs[i] = (struct rec_subscription){ str(filters[i]), qos };
	fx_clear(f);
	assert_int_equal(send_subscribes(f, conn, 9, subs, n), 0);
	assert_true(f->n >= 1);
	decode_suback(&f->caps[0], sa);
	assert_int_equal(sa->n, n);
}

static void max_subscriptions_per_session_refuses_new_filters_only(void **state)
{
	struct fx *f = *state;
	const char *three[] = { "a", "b/+", "c/#" }, *again[] = { "a", "d" };
	struct suback sa;
	struct deliver d;

	f->cfg.max_subscriptions_per_session = 2;
	connect_ok(f, C(0, 1), true, "s", NULL);
	send_subscribe_many(f, C(0, 1), 3, three, 1, &sa);
	assert_int_equal(sa.codes[0], 1);
	assert_int_equal(sa.codes[1], 1);
	assert_int_equal(sa.codes[2], 0x80);
	expect_stats(f, 1, 1, 2, 0);

	/* A filter held may be subscribed again (its QoS replaced); a new one may not. */
	send_subscribe_many(f, C(0, 1), 2, again, 2, &sa);
	assert_int_equal(sa.codes[0], 2);
	assert_int_equal(sa.codes[1], 0x80);
	fx_clear(f);
	assert_int_equal(send_publish(f, 1, 2, false, "a", "x"), 0);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.t[0].qos, 2);
	assert_int_equal(send_publish(f, 1, 2, false, "c/1", "x"), 0);
	assert_int_equal(f->n, 1);

	/* Each session has its own count. */
	connect_ok(f, C(1, 1), true, "other", NULL);
	send_subscribe_many(f, C(1, 1), 2, three, 0, &sa);
	assert_int_equal(sa.codes[0], 0);
	assert_int_equal(sa.codes[1], 0);

	/* Room again after an UNSUBSCRIBE; and 0 lifts the cap, read at each use. */
	assert_int_equal(send_unsubscribe(f, C(0, 1), 3, "a"), 0);
	send_subscribe_many(f, C(0, 1), 1, &three[2], 1, &sa);
	assert_int_equal(sa.codes[0], 1);
	f->cfg.max_subscriptions_per_session = 0;
	send_subscribe_many(f, C(0, 1), 2, again, 1, &sa);
	assert_int_equal(sa.codes[0], 1);
	assert_int_equal(sa.codes[1], 1);
	expect_stats(f, 2, 2, 6, 0);
}

static void expect_held(struct fx *f, size_t bytes, size_t payloads)
{

	assert_int_equal(stats_of(f).queued_bytes_total, bytes);
	assert_int_equal(stats_of(f).queued_payloads, payloads);
}

/* Three persistent sessions subscribed to t at QoS 1, offline: sids in sid[]. */
static void three_offline(struct fx *f, uint32_t sid[3])
{
	static const char *const ids[] = { "p0", "p1", "p2" };

	for (unsigned i = 0; i < 3; i++)
		sid[i] = offline_subscriber(f, C(i, 1), ids[i], "t", 1);
}

static void a_message_queued_for_many_sessions_is_held_once(void **state)
{
	struct fx *f = *state;
	struct connack a;
	struct smsg m[2];
	uint32_t sid[3];

	three_offline(f, sid);
	expect_held(f, 0, 0);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "12345"), 0);
	expect_held(f, 6 + 3 * ROUTER_ENTRY_COST, 1);
	assert_int_equal(send_publish(f, 3, 2, false, "t", "ab"), 0);
	expect_held(f, 6 + 3 + 6 * ROUTER_ENTRY_COST, 2);

	/* p0 comes back: each message goes out as it was, and stays held as a copy. */
	fx_clear(f);
	assert_int_equal(send_connect(f, C(0, 2), false, "p0", NULL), 0);
	assert_int_equal(f->n, 3);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	decode_session_msg(&f->caps[1], &m[0]);
	decode_session_msg(&f->caps[2], &m[1]);
	assert_string_equal(m[0].topic, "t");
	assert_string_equal(m[0].payload, "12345");
	assert_string_equal(m[1].payload, "ab");
	assert_int_equal(m[1].qos, 1);
	expect_held(f, 6 + 3 + 6 * ROUTER_ENTRY_COST, 2);
	assert_int_equal(send_msg_state(f, C(0, 2), sid[0], m[0].copy, 1, MSG_DONE), 0);
	assert_int_equal(send_msg_state(f, C(0, 2), sid[0], m[1].copy, 2, MSG_DONE), 0);
	expect_held(f, 6 + 3 + 4 * ROUTER_ENTRY_COST, 2);

	/* p1 is discarded: its entries go, the messages stay for p2. */
	connect_ok(f, C(1, 2), true, "p1", NULL);
	expect_held(f, 6 + 3 + 2 * ROUTER_ENTRY_COST, 2);

	/* The last holder lets go: the payloads are freed. */
	fx_clear(f);
	assert_int_equal(send_connect(f, C(2, 2), false, "p2", NULL), 0);
	decode_session_msg(&f->caps[1], &m[0]);
	decode_session_msg(&f->caps[2], &m[1]);
	assert_string_equal(m[0].payload, "12345");
	assert_int_equal(send_msg_state(f, C(2, 2), sid[2], m[0].copy, 1, MSG_DONE), 0);
	expect_held(f, 3 + ROUTER_ENTRY_COST, 1);
	assert_int_equal(send_close(f, C(2, 2), false, 0, NULL), 0);
	expect_held(f, 3 + ROUTER_ENTRY_COST, 1);        /* the copy is queued again */
	connect_ok(f, C(2, 3), true, "p2", NULL);
	expect_held(f, 0, 0);
}

static void each_session_counts_a_shared_message_against_its_own_byte_cap(void **state)
{
	struct fx *f = *state;
	uint32_t sid[3];

	f->cfg.max_queued_bytes = 10;          /* topic + payload bytes, per session */
	three_offline(f, sid);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "12345"), 0);   /* 6 each */
	assert_int_equal(send_publish(f, 3, 1, false, "t", "12345"), 0);   /* 12 > 10 */
	assert_int_equal(stats_of(f).queue_drops, 3);
	expect_held(f, 6 + 3 * ROUTER_ENTRY_COST, 1);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "123"), 0);     /* 10: fits */
	expect_held(f, 6 + 4 + 6 * ROUTER_ENTRY_COST, 2);
}

/* One body of 6 bytes ("t" + "12345") per entry: the budget holds two entries. */
#define TWO_ENTRIES (2 * (6 + ROUTER_ENTRY_COST))

static void max_queued_bytes_total_bounds_all_queues_together(void **state)
{
	struct fx *f = *state;
	struct deliver d;
	uint32_t sid[3], online;
	uint64_t copy;

	f->cfg.max_queued_bytes_total = TWO_ENTRIES;
	three_offline(f, sid);

	/* p0, p1 and p2 share one message: 6 bytes and 3 entries are past the budget. */
	assert_int_equal(send_publish(f, 3, 1, false, "t", "12345"), 0);
	assert_int_equal(stats_of(f).queue_drops, 1);
	expect_held(f, 6 + 2 * ROUTER_ENTRY_COST, 1);

	/*
	 * Past the budget a new message is queued for no offline session, and a
	 * persistent session online gets it live, without a copy kept against
	 * a crash of its worker.
	 */
	online = connect_ok(f, C(3, 1), false, "on", NULL);
	subscribe_ok(f, C(3, 1), "t", 1);
	fx_clear(f);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "67890"), 0);
	assert_int_equal(stats_of(f).queue_drops, 4);
	expect_held(f, 6 + 2 * ROUTER_ENTRY_COST, 1);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(d.n, 1);
	assert_int_equal(d.t[0].sid, online);
	assert_int_equal(d.t[0].copy, 0);

	/* Raised (a reload): room for one more message, held once, in two of four places. */
	f->cfg.max_queued_bytes_total = TWO_ENTRIES + 6 + 2 * ROUTER_ENTRY_COST;
	router_config_changed(f->r);
	fx_clear(f);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "abcde"), 0);
	expect_held(f, 12 + 4 * ROUTER_ENTRY_COST, 2);
	decode_deliver(&f->caps[0], &d);
	copy = d.t[0].copy;

	/* Lowered: what is held stays, nothing new enters. */
	f->cfg.max_queued_bytes_total = TWO_ENTRIES;
	router_config_changed(f->r);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "fghij"), 0);
	expect_held(f, 12 + 4 * ROUTER_ENTRY_COST, 2);

	/* The holders let go: room again, and a copy for the online session is kept. */
	for (unsigned i = 0; i < 3; i++)
		connect_ok(f, C(i, 2), true, i == 0 ? "p0" : i == 1 ? "p1" : "p2", NULL);
	if (copy)
		assert_int_equal(send_msg_state(f, C(3, 1), online, copy, 1, MSG_DONE), 0);
	expect_held(f, 0, 0);
	fx_clear(f);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "again"), 0);
	decode_deliver(&f->caps[0], &d);
	assert_int_not_equal(d.t[0].copy, 0);
	expect_held(f, 6 + ROUTER_ENTRY_COST, 1);
}

static void max_queued_bytes_total_drops_qos0_first(void **state)
{
	struct fx *f = *state;

	/* "t" + one byte: 2 + ROUTER_ENTRY_COST a message; room for two. */
	f->cfg.max_queued_bytes_total = 2 * (2 + ROUTER_ENTRY_COST);
	f->cfg.queue_qos0_messages = true;
	offline_subscriber(f, C(0, 1), "p", "t", 1);
	assert_int_equal(send_publish(f, 1, 0, false, "t", "a"), 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "b"), 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "c"), 0);   /* "a" makes room */
	assert_int_equal(stats_of(f).queue_drops, 1);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "d"), 0);   /* nothing to drop first */
	assert_int_equal(stats_of(f).queue_drops, 2);

	fx_clear(f);
	expect_resumed(f, C(0, 2), "p", 2, (const char *const[]){ "b", "c" });
}

/* ---- wills, worker deaths, expiry --------------------------------------- */

static void will_is_published_on_abnormal_close(void **state)
{
	struct fx *f = *state;
	const struct will will = { "dev/lwt", "offline", 2, 1 };
	struct deliver d;

	connect_ok(f, C(0, 1), true, "dev", &will);
	connect_ok(f, C(1, 1), true, "watcher", NULL);
	subscribe_ok(f, C(1, 1), "dev/+", 2);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_string_equal(d.topic, "dev/lwt");
	assert_string_equal(d.payload, "offline");
	assert_int_equal(d.qos, 2);
	assert_int_equal(d.retain, 0);
	assert_int_equal(d.t[0].conn, C(1, 1));
	/* The will had retain set: it is kept. */
	assert_int_equal(stats_of(f).retained, 1);
	assert_int_equal(stats_of(f).sessions, 1);
}

static void will_is_not_published_on_clean_disconnect(void **state)
{
	struct fx *f = *state;
	const struct will will = { "dev/lwt", "offline", 1, 0 };

	connect_ok(f, C(0, 1), false, "dev", &will);
	connect_ok(f, C(1, 1), true, "watcher", NULL);
	subscribe_ok(f, C(1, 1), "dev/lwt", 1);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(f->n, 0);
	/* Nor later: a will lives as long as its connection. */
	assert_int_equal(send_connect(f, C(0, 2), false, "dev", NULL), 0);
	assert_int_equal(send_close(f, C(0, 2), true, 0, NULL), 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
}

static void will_reaches_own_persistent_session_queue(void **state)
{
	struct fx *f = *state;
	const struct will will = { "dev/lwt", "bye", 1, 0 };

	connect_ok(f, C(0, 1), false, "dev", &will);
	subscribe_ok(f, C(0, 1), "dev/lwt", 1);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(f->n, 0);
	expect_resumed(f, C(0, 2), "dev", 1, (const char *const[]){ "bye" });
}

static void worker_down_closes_its_sessions_and_publishes_wills(void **state)
{
	struct fx *f = *state;
	const struct will will = { "lwt/a", "dead", 1, 0 };
	struct deliver d;

	connect_ok(f, C(0, 1), true, "a", &will);
	connect_ok(f, C(0, 2), false, "b", NULL);
	connect_ok(f, C(1, 1), true, "watcher", NULL);
	subscribe_ok(f, C(1, 1), "lwt/#", 1);

	assert_int_equal(send_worker_down(f, 0, 2), 0);
	assert_int_equal(f->n, 1);
	decode_deliver(&f->caps[0], &d);
	assert_string_equal(d.topic, "lwt/a");
	assert_int_equal(d.t[0].conn, C(1, 1));
	assert_int_equal(stats_of(f).online, 1);
	assert_int_equal(stats_of(f).sessions, 2);      /* "b" persists, offline */

	/* Connections of the new epoch are untouched by a repeated notice. */
	fx_clear(f);
	connect_ok(f, conn_id_make(0, 2, 1, 1), true, "c", NULL);
	assert_int_equal(send_worker_down(f, 0, 2), 0);
	assert_int_equal(stats_of(f).online, 2);
}

/*
 * A worker dies holding QoS 1/2 exchanges of a persistent session: the
 * router's copies, in the state last reported, become the session's queue.
 */
static void worker_down_leaves_the_sessions_copies_as_last_reported(void **state)
{
	struct fx *f = *state;
	const char *payloads[] = { "a", "b", "c", "d" };
	uint64_t copy[4];
	uint32_t sid = connect_ok(f, C(0, 1), false, "p", NULL);
	struct connack a;
	struct deliver d;
	struct smsg m;

	connect_ok(f, C(0, 2), true, "clean", NULL);
	subscribe_ok(f, C(0, 1), "t", 2);
	subscribe_ok(f, C(0, 2), "t", 2);
	for (unsigned i = 0; i < 4; i++) {
		fx_clear(f);
		assert_int_equal(send_publish(f, 1, 2, false, "t", payloads[i]), 0);
		assert_int_equal(f->n, 1);
		decode_deliver(&f->caps[0], &d);
		assert_int_equal(d.n, 2);
		for (uint32_t t = 0; t < d.n; t++) {
			if (d.t[t].conn == C(0, 1))
				copy[i] = d.t[t].copy;
			else
				assert_int_equal(d.t[t].copy, 0);  /* a clean session gets none */
		}
		assert_int_not_equal(copy[i], 0);
	}
	/* "a": PUBREC came (PUBREL sent); "b": sent; "c": still queued in the worker; "d": done. */
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[0], 1, MSG_INFLIGHT), 0);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[0], 1, MSG_PUBREL), 0);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[1], 2, MSG_INFLIGHT), 0);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[3], 3, MSG_INFLIGHT), 0);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[3], 3, MSG_PUBREL), 0);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[3], 3, MSG_DONE), 0);
	/* A report for a copy that is gone, or of another connection, changes nothing. */
	assert_int_equal(send_msg_state(f, C(0, 1), sid, copy[3], 0, MSG_DONE), 0);
	assert_int_equal(send_msg_state(f, C(0, 3), sid, copy[1], 7, MSG_INFLIGHT), 0);

	fx_clear(f);
	assert_int_equal(send_worker_down(f, 0, 2), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(send_connect(f, C(1, 1), false, "p", NULL), 0);
	assert_int_equal(f->n, 4);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	decode_session_msg(&f->caps[1], &m);
	assert_int_equal(m.state, MSG_PUBREL);
	assert_int_equal(m.packet_id, 1);
	assert_int_equal(m.copy, copy[0]);
	decode_session_msg(&f->caps[2], &m);
	assert_int_equal(m.state, MSG_INFLIGHT);
	assert_int_equal(m.packet_id, 2);
	assert_string_equal(m.payload, "b");
	decode_session_msg(&f->caps[3], &m);
	assert_int_equal(m.state, MSG_QUEUED);
	assert_string_equal(m.payload, "c");
	assert_int_equal(m.qos, 2);
}

/*
 * The inbound QoS 2 ids of a persistent session outlive its worker: the
 * router keeps them in step with the worker's reports and hands them to
 * the next connection, so a resent PUBLISH is not routed twice.
 */
static void worker_down_keeps_the_inbound_qos2_ids(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "p", NULL);
	uint32_t csid = connect_ok(f, C(0, 2), true, "c", NULL);
	struct connack a;

	assert_int_equal(send_qos2_in(f, C(0, 1), sid, 5, true), 0);
	assert_int_equal(send_qos2_in(f, C(0, 1), sid, 6, true), 0);
	assert_int_equal(send_qos2_in(f, C(0, 1), sid, 6, true), 0);   /* a resend: kept once */
	assert_int_equal(send_qos2_in(f, C(0, 1), sid, 7, true), 0);
	assert_int_equal(send_qos2_in(f, C(0, 1), sid, 5, false), 0);
	assert_int_equal(send_qos2_in(f, C(0, 2), csid, 9, true), 0);  /* clean: not kept */
	assert_int_equal(send_qos2_in(f, C(0, 1), sid, 0, true), -1);
	assert_int_equal(send_worker_down(f, 0, 2), 0);

	fx_clear(f);
	assert_int_equal(send_connect(f, C(1, 1), false, "p", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	assert_int_equal(a.n, 2);
	assert_true((a.ids[0] == 6 && a.ids[1] == 7) || (a.ids[0] == 7 && a.ids[1] == 6));
	/* Handed over, and still kept: a second death of a worker keeps them again. */
	assert_int_equal(send_qos2_in(f, C(1, 1), sid, 7, false), 0);
	assert_int_equal(send_worker_down(f, 1, 2), 0);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(2, 1), false, "p", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.ids[0], 6);
	/* A clean close says what is left: the worker's list replaces the router's. */
	assert_int_equal(send_close(f, C(2, 1), false, 0, NULL), 0);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(2, 2), false, "p", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.n, 0);
}

/*
 * queue_qos0_messages: an offline persistent session queues QoS 0 too, and
 * a full queue drops its oldest QoS 0 messages first. A QoS 0 message
 * leaves the queue as it is sent: no copy is kept.
 */
static void full_offline_queue_drops_qos0_first(void **state)
{
	struct fx *f = *state;
	const char *const want1[] = { "b", "c", "d" }, *const want2[] = { "b", "d" };
	struct smsg m;

	f->cfg.max_queued_messages = 3;
	f->cfg.queue_qos0_messages = true;
	offline_subscriber(f, C(0, 1), "p", "t", 1);
	assert_int_equal(send_publish(f, 1, 0, false, "t", "a"), 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "b"), 0);
	assert_int_equal(send_publish(f, 1, 0, false, "t", "c"), 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "d"), 0);   /* full: "a" goes */
	assert_int_equal(stats_of(f).queue_drops, 1);

	fx_clear(f);
	assert_int_equal(send_connect(f, C(0, 2), false, "p", NULL), 0);
	assert_int_equal(f->n, 4);
	for (int i = 0; i < 3; i++) {
		decode_session_msg(&f->caps[i + 1], &m);
		assert_string_equal(m.payload, want1[i]);
		assert_int_equal(m.qos, i == 1 ? 0 : 1);
		assert_true((m.copy != 0) == (m.qos != 0));
	}
	/* Nothing acknowledged, the connection ends: QoS 1 comes again, QoS 0 does not. */
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 2), false, 0, NULL), 0);
	expect_resumed(f, C(0, 3), "p", ARRAY_SIZE(want2), want2);

	/* Without QoS 0 to drop, a full queue drops the new message. */
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 3), false, 0, NULL), 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "e"), 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "f"), 0);
	assert_int_equal(stats_of(f).queue_drops, 2);
}

/* Reports that cannot be right are refused: no copy id, no packet id, a PUBREL for QoS 1. */
static void bad_message_state_reports_are_refused(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "p", NULL);
	struct deliver d;

	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "x"), 0);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, 0, 1, MSG_INFLIGHT), -1);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, d.t[0].copy, 0, MSG_INFLIGHT), -1);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, d.t[0].copy, 1, MSG_QUEUED), -1);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, d.t[0].copy, 1, MSG_DONE + 1), -1);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, d.t[0].copy, 1, MSG_PUBREL), -1);
	assert_int_equal(send_msg_state(f, C(1, 1), sid, d.t[0].copy, 1, MSG_INFLIGHT), 0);
}

static void offline_session_expires_after_timeout(void **state)
{
	struct fx *f = *state;
	struct connack a;

	f->cfg.session_timeout_secs = 10;
	router_tick(f->r, 1000);
	connect_ok(f, C(0, 1), false, "old", NULL);
	connect_ok(f, C(0, 2), false, "online", NULL);
	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);

	router_tick(f->r, 11000);              /* exactly the timeout: kept */
	assert_int_equal(stats_of(f).sessions, 2);
	router_tick(f->r, 11001);
	assert_int_equal(stats_of(f).sessions, 1);      /* the online one never expires */
	assert_int_equal(stats_of(f).subscriptions, 0);

	assert_int_equal(send_connect(f, C(0, 3), false, "old", NULL), 0);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 0);
}

static void sessions_never_expire_with_timeout_zero(void **state)
{
	struct fx *f = *state;

	connect_ok(f, C(0, 1), false, "dev", NULL);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	router_tick(f->r, UINT64_C(1) << 50);
	assert_int_equal(stats_of(f).sessions, 1);
}

/* A CONNECT of an MQTT 5 client: Clean Start 0, session expiry interval expiry, a will maybe. */
static int send_connect5(struct fx *f, conn_id_t conn, const char *id, uint32_t expiry,
			 uint32_t will_delay, const char *will_props)
{
	const struct rec_connect x = {
		.conn = conn, .keepalive = 60, .client_id = str(id), .remote = str("127.0.0.1:1"),
		.will_flag = will_props != NULL, .will_topic = str(will_props ? "will/t" : ""),
		.will_payload = bytes(will_props ? "bye" : ""), .session_expiry = expiry,
		.will_delay = will_delay, .will_props = bytes(will_props ? will_props : ""),
	};
	struct recw w;

	recw_init(&w);
	rec_connect_encode(&w, &x);
	return handle(f, 0, REC_CONNECT, &w);
}

static int send_close_expiry(struct fx *f, conn_id_t conn, uint32_t expiry)
{
	const struct rec_close x = { .conn = conn, .session_expiry = expiry };
	struct recw w;

	recw_init(&w);
	rec_close_encode(&w, &x, NULL, 0);
	return handle(f, 0, REC_CLOSE, &w);
}

/*
 * Each session ends once offline for its own interval, capped by
 * max_session_expiry_interval (and as a DISCONNECT changed it); 0 ends it
 * with its connection.
 */
static void offline_sessions_expire_after_their_own_interval(void **state)
{
	struct fx *f = *state;

	f->cfg.max_session_expiry_interval = 60;
	router_tick(f->r, 1000);
	assert_int_equal(send_connect5(f, C(0, 1), "five", 5, 0, NULL), 0);
	assert_int_equal(send_connect5(f, C(0, 2), "capped", REC_EXPIRY_NEVER, 0, NULL), 0);
	assert_int_equal(send_connect5(f, C(0, 3), "changed", 3600, 0, NULL), 0);
	assert_int_equal(send_connect5(f, C(0, 4), "zero", 0, 0, NULL), 0);
	assert_int_equal(stats_of(f).sessions, 4);
	assert_int_equal(send_close_expiry(f, C(0, 1), 5), 0);
	assert_int_equal(send_close_expiry(f, C(0, 2), REC_EXPIRY_NEVER), 0);
	assert_int_equal(send_close_expiry(f, C(0, 3), 2), 0);   /* DISCONNECT's interval */
	assert_int_equal(send_close_expiry(f, C(0, 4), 100), 0); /* cannot make it outlive 0 */
	assert_int_equal(stats_of(f).sessions, 3);
	router_tick(f->r, 2999);
	assert_int_equal(stats_of(f).sessions, 3);
	router_tick(f->r, 3000);
	assert_int_equal(stats_of(f).sessions, 2);
	router_tick(f->r, 6000);
	assert_int_equal(stats_of(f).sessions, 1);
	router_tick(f->r, 60999);
	assert_int_equal(stats_of(f).sessions, 1);
	router_tick(f->r, 61000);
	assert_int_equal(stats_of(f).sessions, 0);
}

/*
 * Offline sessions are found by their deadline, not by a sweep of a
 * bounded number a tick: one with a short interval among more than a
 * tick's sweep ends at the first tick past its deadline, wherever the
 * sweep is, and the others stay.
 */
static void a_short_interval_among_many_offline_sessions_ends_on_time(void **state)
{
	enum { MANY = 20000 };          /* more than the sweep checks a tick */
	struct fx *f = *state;
	char id[32];

	router_tick(f->r, 1000);
	for (unsigned i = 0; i < MANY; i++) {
		snprintf(id, sizeof(id), "many%u", i);
		assert_int_equal(send_connect5(f, C(0, 1), id, 3600, 0, NULL), 0);
		assert_int_equal(send_close_expiry(f, C(0, 1), 3600), 0);
	}
	assert_int_equal(send_connect5(f, C(0, 1), "short", 2, 0, NULL), 0);
	assert_int_equal(send_close_expiry(f, C(0, 1), 2), 0);   /* due at 3000 */
	assert_int_equal(stats_of(f).sessions, MANY + 1);
	router_tick(f->r, 2000);
	router_tick(f->r, 2999);
	assert_int_equal(stats_of(f).sessions, MANY + 1);
	router_tick(f->r, 3000);
	assert_int_equal(stats_of(f).sessions, MANY);
	router_tick(f->r, 1000 + 3600 * 1000 - 1);
	assert_int_equal(stats_of(f).sessions, MANY);
	router_tick(f->r, 1000 + 3600 * 1000);
	assert_int_equal(stats_of(f).sessions, 0);
}

/* Records are hostile: a will's MQTT 5 part without a will, or properties a PUBLISH cannot forward. */
static void connect_with_a_bad_will_part_is_dropped(void **state)
{
	struct fx *f = *state;
	const struct rec_connect x = {
		.conn = C(0, 1), .client_id = str("w"), .remote = str("r"), .will_delay = 5,
	};
	struct recw w;

	recw_init(&w);
	rec_connect_encode(&w, &x);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);
	/* A topic alias is the broker's to rewrite: not in a will's forwarded properties. */
	assert_int_equal(send_connect5(f, C(0, 1), "w", 60, 0, "\x03\x23\x00\x01"), -1);
	assert_int_equal(f->n, 0);
	assert_int_equal(send_connect5(f, C(0, 1), "w", 60, 0, "\x02\x01\x01"), 0);
	assert_int_equal(stats_of(f).sessions, 1);
}

/* ---- bounces ------------------------------------------------------------ */

static void bounce_goes_to_the_sessions_new_connection(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", NULL);
	struct smsg m;

	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(send_connect(f, C(2, 1), false, "dev", NULL), 0);
	fx_clear(f);

	/* A delivery crossed the close of C(0,1): worker 0 hands it back. */
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 0, MSG_QUEUED, 1, "t", "late"), 0);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->caps[0].worker, 2);
	decode_session_msg(&f->caps[0], &m);
	assert_int_equal(m.conn, C(2, 1));
	assert_int_equal(m.sid, sid);
	assert_int_equal(m.state, MSG_QUEUED);
	assert_string_equal(m.payload, "late");

	/* A stored PUBREL that missed its connection stays a PUBREL, with its id. */
	fx_clear(f);
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 12, MSG_PUBREL, 2, "", ""), 0);
	assert_int_equal(f->n, 1);
	decode_session_msg(&f->caps[0], &m);
	assert_int_equal(m.conn, C(2, 1));
	assert_int_equal(m.state, MSG_PUBREL);
	assert_int_equal(m.packet_id, 12);
}

static void bounce_to_offline_session_is_queued(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", NULL);

	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 0, MSG_QUEUED, 1, "t", "late"), 0);
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 0, MSG_QUEUED, 0, "t", "qos0"), 0);
	assert_int_equal(f->n, 0);
	expect_resumed(f, C(1, 1), "dev", 1, (const char *const[]){ "late" });
}

/* A session message with this property block and these identifiers, from conn for sid. */
static int send_session_msg_v5(struct fx *f, conn_id_t conn, uint32_t sid, const char *props,
			       size_t props_len, const uint32_t *ids, uint32_t n_ids)
{
	const struct rec_session_msg x = {
		.conn = conn, .sid = sid, .state = MSG_QUEUED, .qos = 1, .topic = str("t"),
		.payload = bytes("v5"), .props = { (const uint8_t *)props, (uint32_t)props_len },
		.sub_ids = { (const uint8_t *)ids, n_ids },
	};
	struct recw w;

	recw_init(&w);
	rec_session_msg_encode(&w, &x);
	return handle(f, conn_id_worker(conn), REC_SESSION_MSG, &w);
}

/*
 * A message handed back carries its identifiers as the record's list, or,
 * kept as it went to an MQTT 5 client, in its property block: either way
 * the session gets them back as the list, and the block without them.
 * Identifiers in both places, or one no subscription can have, make a
 * malformed record.
 */
static void handed_back_message_keeps_its_identifiers(void **state)
{
	/* content type "ct", then identifiers 5 and 300 */
	static const char in_block[] = "\x0a\x03\x00\x02" "ct" "\x0b\x05\x0b\xac\x02";
	static const char ctype[] = "\x05\x03\x00\x02" "ct";
	static const uint32_t ids[2] = { 7, 268435455 }, bad[1] = { 268435456 };
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", NULL);
	const uint32_t want[2][2] = { { 5, 300 }, { 7, 268435455 } };

	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(send_session_msg_v5(f, C(0, 1), sid, in_block, 11, NULL, 0), 0);
	assert_int_equal(send_session_msg_v5(f, C(0, 1), sid, ctype, 6, ids, 2), 0);
	assert_int_equal(send_session_msg_v5(f, C(0, 1), sid, in_block, 11, ids, 2), -1);
	assert_int_equal(send_session_msg_v5(f, C(0, 1), sid, NULL, 0, bad, 1), -1);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(1, 1), false, "dev", NULL), 0);
	assert_int_equal(f->n, 3);
	for (size_t i = 0; i < 2; i++) {
		struct rec_session_msg x;
		uint32_t id;

		DECODE_CAPTURED(&f->caps[1 + i], REC_SESSION_MSG, rec_session_msg_decode, &x);
		assert_int_equal(x.props.len, 6);
		assert_memory_equal(x.props.p, ctype, 6);
		assert_int_equal(x.sub_ids.n, 2);
		for (size_t k = 0; rec_sub_id_next(&x.sub_ids, &id); k++)
			assert_int_equal(id, want[i][k]);
	}
}

static void bounce_for_gone_session_is_dropped(void **state)
{
	struct fx *f = *state;
	uint32_t sid = connect_ok(f, C(0, 1), true, "dev", NULL);

	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(send_session_msg(f, C(0, 1), sid, 0, MSG_QUEUED, 1, "t", "x"), 0);
	assert_int_equal(send_session_msg(f, C(0, 1), 999, 0, MSG_QUEUED, 1, "t", "x"), 0);
	assert_int_equal(f->n, 0);
}

/* ---- a buggy worker ----------------------------------------------------- */

static void records_for_unknown_connections_are_dropped(void **state)
{
	struct fx *f = *state;

	assert_int_equal(send_subscribe(f, C(0, 9), 1, "t", 1), -1);
	assert_int_equal(send_unsubscribe(f, C(0, 9), 1, "t"), -1);
	assert_int_equal(send_close(f, C(0, 9), true, 0, NULL), -1);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).bad_records, 3);
}

static void records_from_the_wrong_ring_or_of_router_types_are_dropped(void **state)
{
	struct fx *f = *state;
	struct recw w;

	build_connect(&w, C(1, 1), true, "dev", NULL);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);     /* conn of worker 1 on ring 0 */
	build_connect(&w, C(1, 1), true, "dev", NULL);
	assert_int_equal(handle(f, 9, REC_CONNECT, &w), -1);     /* no such worker */
	build_publish(&w, 0, 0, "t", "x");
	assert_int_equal(handle(f, 0, REC_DELIVER, &w), -1);
	build_publish(&w, 0, 0, "t", "x");
	assert_int_equal(handle(f, 0, 0xffff, &w), -1);
	build_publish(&w, 3, 0, "t", "x");
	assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);     /* QoS 3 */
	build_publish(&w, 0, 0, "t/#", "x");
	assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);     /* wildcard topic */
	build_publish(&w, 0, 0, "", "x");
	assert_int_equal(handle(f, 0, REC_PUBLISH, &w), -1);
	/* What was once the supervisor's WORKER_DOWN record is a router type now. */
	assert_int_equal(router_handle(f->r, 0, 7, "\0\0\0\0\2\0\0\0", 8), -1);
	assert_int_equal(router_handle(f->r, 0, REC_PUBLISH, NULL, 0), -1);
	assert_int_equal(f->n, 0);
}

/*
 * Provenance: a ring speaks for its own worker's connections of the
 * current epoch, in slots it can hold; nothing else acts.
 */
static void records_for_other_epochs_or_impossible_slots_are_dropped(void **state)
{
	struct fx *f = *state;
	struct recw w;

	router_set_worker(f->r, 0, 3, 100);
	build_connect(&w, conn_id_make(0, 2, 1, 1), true, "old", NULL);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);     /* a dead predecessor's */
	build_connect(&w, conn_id_make(0, 4, 1, 1), true, "next", NULL);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);     /* a successor not yet born */
	build_connect(&w, conn_id_make(0, 3, 100, 1), true, "far", NULL);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);     /* past its capacity */
	build_connect(&w, conn_id_make(0, 3, (1u << 24) - 1, 1), true, "far", NULL);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).sessions, 0);

	connect_ok(f, conn_id_make(0, 3, 99, 1), true, "ok", NULL);
	/* The session of worker 1 cannot be closed from ring 0. */
	connect_ok(f, C(1, 1), false, "w1", NULL);
	build_close(&w, C(1, 1), true, 0, NULL);
	assert_int_equal(handle(f, 0, REC_CLOSE, &w), -1);
	assert_int_equal(stats_of(f).online, 2);

	/* After the worker's death, only the new epoch speaks. */
	router_worker_down(f->r, 0, 4);
	assert_int_equal(stats_of(f).online, 1);
	fx_clear(f);
	build_connect(&w, conn_id_make(0, 3, 5, 1), true, "stale", NULL);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);
	connect_ok(f, conn_id_make(0, 4, 5, 1), true, "fresh", NULL);
}

/*
 * A stored message is taken only from one of its session's own
 * connections: a worker naming another worker's session, online or
 * offline, or a session it never held, queues and delivers nothing.
 */
static void session_msg_from_a_connection_the_session_never_had_is_dropped(void **state)
{
	struct fx *f = *state;
	uint32_t on_w1 = connect_ok(f, C(1, 1), false, "w1", NULL);
	uint32_t offline = connect_ok(f, C(1, 2), false, "gone", NULL);

	assert_int_equal(send_close(f, C(1, 2), false, 0, NULL), 0);
	fx_clear(f);
	assert_int_equal(send_session_msg(f, C(0, 1), on_w1, 5, MSG_QUEUED, 1, "forged", "x"), -1);
	assert_int_equal(send_session_msg(f, C(0, 1), offline, 6, MSG_QUEUED, 1, "forged", "x"), -1);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).queue_drops, 0);
	/* Its own last connection may: what the closing connection still owed. */
	assert_int_equal(send_session_msg(f, C(1, 2), offline, 7, MSG_QUEUED, 1, "own", "y"), 0);
	fx_clear(f);
	assert_int_equal(send_connect(f, C(1, 3), false, "gone", NULL), 0);
	assert_int_equal(f->n, 2);              /* CONNACK, then the one queued message */
	assert_int_equal(f->caps[1].type, REC_SESSION_MSG);
}

static uint32_t rng_state = 0x12345678;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

/* Valid records of every w2r type, to be cut short and corrupted. */
static size_t build_samples(struct recw *s, size_t cap, uint32_t sid)
{
	const struct will will = { "w/t", "payload", 1, 1 };
	const struct rec_subscription subs[] = { { str("a/#"), 1 }, { str("b/+"), 2 } };
	const uint16_t ids[] = { 10, 11 };
	size_t count_off, n = 0;

	assert_true(cap >= 8);
	build_connect(&s[n++], C(0, 1), false, "dev", &will);
	build_subscribe(&s[n++], C(0, 1), 1, subs, ARRAY_SIZE(subs));
	recw_init(&s[n]);
	count_off = rec_unsubscribe_begin(&s[n], &(struct rec_unsubscribe){ .conn = C(0, 1),
									   .packet_id = 2 });
	rec_unsubscribe_add(&s[n], str("a/#"));
	rec_unsubscribe_end(&s[n++], count_off, 1);
	build_publish(&s[n++], 1, 1, "a/b", "hello");
	build_session_msg(&s[n++], C(0, 1), sid, 4, MSG_INFLIGHT, 1, "a/b", "x");
	build_close(&s[n++], C(0, 1), true, ARRAY_SIZE(ids), ids);
	return n;
}

static const uint16_t sample_types[] = {
	REC_CONNECT, REC_SUBSCRIBE, REC_UNSUBSCRIBE, REC_PUBLISH,
	REC_SESSION_MSG, REC_CLOSE,
};

static void garbage_records_do_not_crash_the_router(void **state)
{
	struct fx *f = *state;
	struct recw s[8];
	size_t n;
	uint8_t buf[256];
	struct router_stats st;
	uint32_t sid = connect_ok(f, C(0, 1), false, "dev", NULL);

	subscribe_ok(f, C(0, 1), "#", 2);
	n = build_samples(s, ARRAY_SIZE(s), sid);
	assert_int_equal(n, ARRAY_SIZE(sample_types));

	/* Every valid record cut at every length: decoding fails, nothing acts. */
	for (size_t i = 0; i < n; i++) {
		for (size_t len = 0; len < s[i].len; len++) {
			uint8_t *copy = malloc(len ? len : 1);

			assert_non_null(copy);
			memcpy(copy, s[i].buf, len);   /* exact size: ASan sees any overread */
			assert_int_equal(router_handle(f->r, 0, sample_types[i], copy, len), -1);
			free(copy);
		}
	}
	/* ... and with a byte too many. */
	for (size_t i = 0; i < n; i++) {
		memcpy(buf, s[i].buf, s[i].len);
		buf[s[i].len] = 0;
		assert_int_equal(router_handle(f->r, 0, sample_types[i], buf, s[i].len + 1), -1);
	}
	fx_clear(f);

	/* Random bytes of random types. */
	for (int iter = 0; iter < 20000; iter++) {
		size_t len = rng() % 64;
		uint16_t type = (uint16_t)(rng() % (REC_TYPE_MAX + 2));
		uint8_t *p = malloc(len ? len : 1);

		assert_non_null(p);
		for (size_t k = 0; k < len; k++)
			p[k] = (uint8_t)rng();
		router_handle(f->r, rng() % 6, type, p, len);
		free(p);
		fx_clear(f);
	}

	/* Valid records with a few bytes flipped: these reach the deeper paths. */
	for (int iter = 0; iter < 50000; iter++) {
		size_t i = rng() % n;
		size_t len = s[i].len;
		uint8_t *p = malloc(len);
		unsigned flips = 1 + rng() % 3;

		assert_non_null(p);
		memcpy(p, s[i].buf, len);
		for (unsigned k = 0; k < flips; k++)
			p[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
		router_handle(f->r, rng() % 2 ? 0 : conn_id_worker(C(0, 1)), sample_types[i], p, len);
		free(p);
		fx_clear(f);
	}
	/* And unmodified ones in random order: sessions come and go. */
	for (int iter = 0; iter < 5000; iter++) {
		size_t i = rng() % n;

		router_handle(f->r, 0, sample_types[i], s[i].buf, s[i].len);
		fx_clear(f);
	}
	for (size_t i = 0; i < n; i++)
		recw_free(&s[i]);

	/* Still serving. */
	router_get_stats(f->r, &st);
	assert_true(st.bad_records > 0);
	connect_ok(f, C(3, 1), true, "after", NULL);
}

/* ---- with a store: what a crashed router's successor finds -------------- */

/* Replace the fixture's in-memory router by one over a fresh store. */
static void fx_store(struct fx *f, size_t mapsize)
{
	char path[96], err[512] = "";

	router_free(&f->r);
	snprintf(f->dir, sizeof(f->dir), "/tmp/iotd-test-router-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(path, sizeof(path), "%s/store", f->dir);
	f->st = store_open(path, STORE_DISK, mapsize, err, sizeof(err));
	if (!f->st)
		fail_msg("store_open: %s", err);
	f->r = router_new(&f->cfg, 4, capture, f, f->st);
	assert_non_null(f->r);
}

/*
 * The router dies: what was not committed is gone with it, the store (the
 * file, reopened) keeps the rest. Then its successor starts over it and
 * must not emit anything while rebuilding.
 */
static void fx_crash_and_restart(struct fx *f, const char *new_daemon)
{
	char path[96], err[512] = "";

	store_abort(f->st);
	router_free(&f->r);
	store_close(&f->st);
	fx_clear(f);
	snprintf(path, sizeof(path), "%s/store", f->dir);
	f->st = store_open(path, STORE_DISK, STORE_DISK_MAP, err, sizeof(err));
	if (!f->st)
		fail_msg("store_open: %s", err);
	if (new_daemon)
		assert_int_equal(store_new_daemon(f->st, new_daemon, true), 0);
	f->r = router_new(&f->cfg, 4, capture, f, f->st);
	assert_non_null(f->r);
	assert_int_equal(f->n, 0);
}

static void expect_stats(struct fx *f, size_t sessions, size_t online, size_t subs,
			 size_t retained)
{
	struct router_stats st;

	router_get_stats(f->r, &st);
	assert_int_equal(st.sessions, sessions);
	assert_int_equal(st.online, online);
	assert_int_equal(st.subscriptions, subs);
	assert_int_equal(st.retained, retained);
}

static const struct cap *find_deliver_to(struct fx *f, unsigned worker)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->caps[i].type == REC_DELIVER && f->caps[i].worker == worker)
			return &f->caps[i];
	fail_msg("no DELIVER for worker %u", worker);
	return NULL;
}

static void a_crashed_router_comes_back_with_sessions_subscriptions_queues_and_retained(void **state)
{
	struct fx *f = *state;
	struct will w = { "w/a", "a-gone", 1, 0 };
	uint16_t ids[] = { 5, 6 };
	uint32_t sid_a, sid_b, sid_p, sid_n, sid_new;
	struct connack a;
	struct deliver d;
	struct smsg m;

	fx_store(f, STORE_DISK_MAP);
	router_tick(f->r, 1000);
	sid_a = connect_ok(f, C(0, 1), false, "a", &w);
	subscribe_ok(f, C(0, 1), "t/#", 2);
	sid_b = connect_ok(f, C(1, 1), true, "b", NULL);
	subscribe_ok(f, C(1, 1), "t/b", 1);
	sid_p = connect_ok(f, C(2, 1), false, "p", NULL);
	subscribe_ok(f, C(2, 1), "q/#", 2);
	assert_int_equal(send_close(f, C(2, 1), false, 2, ids), 0);
	assert_int_equal(send_publish(f, 3, 1, false, "q/1", "queued-1"), 0);
	assert_int_equal(send_publish(f, 3, 2, false, "q/2", "queued-2"), 0);
	assert_int_equal(send_publish(f, 3, 0, false, "q/0", "not-queued"), 0);
	assert_int_equal(send_publish(f, 3, 1, true, "r/1", "retained"), 0);
	assert_int_equal(router_commit(f->r), 0);

	fx_crash_and_restart(f, NULL);
	expect_stats(f, 3, 2, 3, 1);

	/* Deliveries go to the same connections, at the same QoS. */
	assert_int_equal(send_publish(f, 3, 2, false, "t/b", "live"), 0);
	assert_int_equal(f->n, 2);
	decode_deliver(find_deliver_to(f, 0), &d);
	assert_int_equal(d.n, 1);
	assert_int_equal(d.t[0].conn, C(0, 1));
	assert_int_equal(d.t[0].sid, sid_a);
	assert_int_equal(d.t[0].qos, 2);
	decode_deliver(find_deliver_to(f, 1), &d);
	assert_int_equal(d.t[0].conn, C(1, 1));
	assert_int_equal(d.t[0].sid, sid_b);
	assert_int_equal(d.t[0].qos, 1);
	fx_clear(f);

	/* Retained messages for a new subscriber. */
	sid_n = connect_ok(f, C(3, 1), true, "n", NULL);
	assert_int_equal(send_subscribe(f, C(3, 1), 1, "r/#", 1), 0);
	assert_false(router_send_retained(f->r));
	assert_int_equal(f->n, 2);
	assert_int_equal(f->caps[0].type, REC_SUBACK);
	decode_deliver(&f->caps[1], &d);
	assert_string_equal(d.payload, "retained");
	assert_int_equal(d.retain, 1);
	subscribe_ok(f, C(3, 1), "w/#", 1);

	/* The persistent session resumes with its QoS 2 ids and its queue, in order. */
	assert_int_equal(send_connect(f, C(2, 2), false, "p", NULL), 0);
	assert_int_equal(f->n, 3);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	assert_int_equal(a.sid, sid_p);
	assert_int_equal(a.n, 2);
	assert_int_equal(a.ids[0], 5);
	assert_int_equal(a.ids[1], 6);
	decode_session_msg(&f->caps[1], &m);
	assert_string_equal(m.payload, "queued-1");
	assert_int_equal(m.qos, 1);
	decode_session_msg(&f->caps[2], &m);
	assert_string_equal(m.payload, "queued-2");
	assert_int_equal(m.qos, 2);
	fx_clear(f);

	/* The will registered before the crash still goes out. */
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	decode_deliver(find_deliver_to(f, 3), &d);
	assert_string_equal(d.topic, "w/a");
	assert_string_equal(d.payload, "a-gone");

	/* Session ids are never reused, not even across the crash. */
	sid_new = connect_ok(f, C(1, 2), true, "fresh", NULL);
	assert_true(sid_new > sid_a && sid_new > sid_b && sid_new > sid_p && sid_new > sid_n);
}

static void only_committed_changes_outlive_the_router(void **state)
{
	struct fx *f = *state;

	fx_store(f, STORE_DISK_MAP);
	connect_ok(f, C(0, 1), false, "kept", NULL);
	subscribe_ok(f, C(0, 1), "k", 1);
	assert_int_equal(router_commit(f->r), 0);
	connect_ok(f, C(1, 1), false, "lost", NULL);
	subscribe_ok(f, C(0, 1), "k2", 1);
	assert_int_equal(send_publish(f, 2, 1, true, "r", "lost"), 0);

	fx_crash_and_restart(f, NULL);
	expect_stats(f, 1, 1, 1, 0);
}

static void a_new_daemon_finds_persistent_sessions_offline_and_fires_no_will(void **state)
{
	struct fx *f = *state;
	struct will w = { "w/p", "p-gone", 1, 0 };

	f->cfg.session_timeout_secs = 10;
	fx_store(f, STORE_DISK_MAP);
	router_tick(f->r, 1000);
	connect_ok(f, C(0, 1), false, "p", &w);
	subscribe_ok(f, C(0, 1), "t", 1);
	offline_subscriber(f, C(1, 1), "off", "u", 1);
	assert_int_equal(send_publish(f, 2, 1, false, "u", "m1"), 0);
	connect_ok(f, C(2, 1), true, "c", NULL);
	subscribe_ok(f, C(2, 1), "w/#", 1);
	assert_int_equal(router_commit(f->r), 0);

	/* The whole daemon restarted: nobody is connected, nothing is published. */
	fx_crash_and_restart(f, "another daemon");
	expect_stats(f, 2, 0, 2, 0);

	expect_resumed(f, C(1, 2), "off", 1, (const char *const[]){ "m1" });
	connect_ok(f, C(2, 2), false, "c", NULL);     /* the clean session is gone */

	/* "p" left with the old daemon: its timeout counts from our first tick. */
	router_tick(f->r, 500000);
	expect_stats(f, 3, 2, 2, 0);
	router_tick(f->r, 510000);
	expect_stats(f, 3, 2, 2, 0);
	router_tick(f->r, 510001);
	expect_stats(f, 2, 2, 1, 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
}

/* Copies held for a live connection outlive a router crash, with their reported state. */
static void copies_survive_a_router_crash_and_a_new_daemon_queues_them(void **state)
{
	struct fx *f = *state;
	struct connack a;
	struct deliver d;
	struct smsg m;
	uint32_t sid;

	fx_store(f, STORE_DISK_MAP);
	sid = connect_ok(f, C(0, 1), false, "p", NULL);
	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "x"), 0);
	decode_deliver(&f->caps[0], &d);
	assert_int_equal(send_msg_state(f, C(0, 1), sid, d.t[0].copy, 4, MSG_INFLIGHT), 0);
	assert_int_equal(router_commit(f->r), 0);

	/* The router restarts; the connection never noticed. Then its worker dies. */
	fx_crash_and_restart(f, NULL);
	expect_stats(f, 1, 1, 1, 0);
	assert_int_equal(send_worker_down(f, 0, 2), 0);
	assert_int_equal(send_connect(f, C(1, 1), false, "p", NULL), 0);
	assert_int_equal(f->n, 2);
	decode_session_msg(&f->caps[1], &m);
	assert_int_equal(m.state, MSG_INFLIGHT);
	assert_int_equal(m.packet_id, 4);
	assert_string_equal(m.payload, "x");
	assert_int_equal(router_commit(f->r), 0);

	/* A whole new daemon: nobody is connected, the copy is an ordinary stored message. */
	fx_crash_and_restart(f, "another daemon");
	expect_stats(f, 1, 0, 1, 0);
	assert_int_equal(send_connect(f, C(2, 1), false, "p", NULL), 0);
	assert_int_equal(f->n, 2);
	decode_connack(&f->caps[0], &a);
	assert_int_equal(a.present, 1);
	decode_session_msg(&f->caps[1], &m);
	assert_int_equal(m.packet_id, 4);
	assert_string_equal(m.payload, "x");
}

static void expiry_and_queue_limits_hold_across_a_crash(void **state)
{
	struct fx *f = *state;

	f->cfg.session_timeout_secs = 10;
	f->cfg.max_queued_messages = 3;
	fx_store(f, STORE_DISK_MAP);
	router_tick(f->r, 1000);
	offline_subscriber(f, C(0, 1), "p", "t", 1);
	for (int i = 0; i < 5; i++)
		assert_int_equal(send_publish(f, 1, 1, false, "t", "x"), 0);
	assert_int_equal(router_commit(f->r), 0);

	fx_crash_and_restart(f, NULL);
	router_tick(f->r, 5000);
	expect_stats(f, 1, 0, 1, 0);
	assert_int_equal(send_publish(f, 1, 1, false, "t", "one too many"), 0);
	assert_int_equal(stats_of(f).queue_drops, 1);
	router_tick(f->r, 11001);              /* offline since 1000, before the crash */
	expect_stats(f, 0, 0, 0, 0);
	assert_int_equal(router_commit(f->r), 0);

	fx_crash_and_restart(f, NULL);
	expect_stats(f, 0, 0, 0, 0);
}

static void shared_messages_and_their_counts_are_rebuilt_from_the_store(void **state)
{
	struct fx *f = *state;
	struct router_stats before, after;
	struct smsg m;
	uint32_t sid[3];

	fx_store(f, STORE_DISK_MAP);
	router_tick(f->r, 1000);
	three_offline(f, sid);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "12345"), 0);
	assert_int_equal(send_publish(f, 3, 1, false, "t", "ab"), 0);
	/* The same bytes again (another publish): held once more until a restart. */
	assert_int_equal(send_publish(f, 3, 1, false, "t", "ab"), 0);
	expect_held(f, 6 + 3 + 3 + 9 * ROUTER_ENTRY_COST, 3);
	assert_int_equal(router_commit(f->r), 0);
	router_get_stats(f->r, &before);

	/* The store keeps a copy per queue; the successor holds each message once. */
	fx_crash_and_restart(f, NULL);
	router_get_stats(f->r, &after);
	assert_int_equal(after.sessions, before.sessions);
	expect_held(f, 6 + 3 + 9 * ROUTER_ENTRY_COST, 2);

	/* The limits count what was rebuilt. */
	f->cfg.max_sessions = 3;
	expect_refused_unavailable(f, C(3, 1), "new");
	f->cfg.max_queued_bytes_total = 6 + 3 + 9 * ROUTER_ENTRY_COST;
	assert_int_equal(send_publish(f, 3, 1, false, "t", "more"), 0);
	router_get_stats(f->r, &after);
	assert_int_equal(after.queue_drops, 3);

	/* Every session lets go: nothing is left held. */
	for (unsigned i = 0; i < 3; i++) {
		fx_clear(f);
		assert_int_equal(send_connect(f, C(i, 2), false, i == 0 ? "p0" : i == 1 ? "p1" : "p2",
					      NULL), 0);
		assert_int_equal(count_type(f, REC_SESSION_MSG), 3);
		decode_session_msg(&f->caps[1], &m);
		assert_string_equal(m.payload, "12345");
		for (size_t k = 1; k < f->n; k++) {
			decode_session_msg(&f->caps[k], &m);
			assert_int_equal(send_msg_state(f, C(i, 2), sid[i], m.copy, 1, MSG_DONE), 0);
		}
	}
	expect_held(f, 0, 0);
	assert_int_equal(router_commit(f->r), 0);
	fx_crash_and_restart(f, NULL);
	expect_held(f, 0, 0);
}

static void a_store_that_refused_writes_is_rewritten_by_the_next_tick(void **state)
{
	struct fx *f = *state;
	size_t big_len = 100000;
	char *big = malloc(big_len + 1), topic[32];

	assert_non_null(big);
	memset(big, 'x', big_len);
	big[big_len] = '\0';
	fx_store(f, 1 << 20);
	connect_ok(f, C(0, 1), false, "p", NULL);
	subscribe_ok(f, C(0, 1), "t", 1);
	assert_int_equal(router_commit(f->r), 0);

	/* More than the map holds: the turn's writes fail, serving goes on. */
	for (int i = 0; i < 20; i++) {
		snprintf(topic, sizeof(topic), "big/%d", i);
		assert_int_equal(send_publish(f, 1, 0, true, topic, big), 0);
	}
	subscribe_ok(f, C(0, 1), "t2", 1);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(router_commit(f->r), -1);
	expect_stats(f, 1, 0, 2, 20);
	for (int i = 0; i < 20; i++) {
		snprintf(topic, sizeof(topic), "big/%d", i);
		assert_int_equal(send_publish(f, 1, 0, true, topic, i < 18 ? "" : "small"), 0);
	}
	assert_int_equal(router_commit(f->r), -1);     /* still refused until the rewrite */

	router_tick(f->r, 2000);
	assert_int_equal(router_commit(f->r), 0);
	fx_crash_and_restart(f, NULL);
	expect_stats(f, 1, 0, 2, 2);
	free(big);
}

/* ---- the ACL ------------------------------------------------------------ */

static void set_acl(struct fx *f, const char *text)
{
	const struct acl_limits lim = ACL_LIMITS_DEFAULT;
	struct acl *acl = NULL;
	char err[256];

	if (acl_parse(text, strlen(text), &lim, &acl, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	router_set_acl(f->r, acl);
}

/* A CONNECT as user (NULL: none): its CONNACK. What it emitted is cleared. */
static struct connack connect_answer(struct fx *f, conn_id_t conn, bool clean, const char *id,
				     const char *user, const struct will *will)
{
	struct connack a;
	struct recw w;

	fx_clear(f);
	build_connect_as(&w, conn, clean, id, user, will);
	assert_int_equal(handle(f, conn_id_worker(conn), REC_CONNECT, &w), 0);
	assert_true(f->n >= 1);
	decode_connack(&f->caps[0], &a);
	fx_clear(f);
	return a;
}

/* A CONNECT as user (NULL: none), accepted; its sid. */
static uint32_t connect_as(struct fx *f, conn_id_t conn, bool clean, const char *id,
			   const char *user, const struct will *will)
{
	struct connack a = connect_answer(f, conn, clean, id, user, will);

	assert_int_equal(a.rc, 0);
	return a.sid;
}

static int publish_from(struct fx *f, conn_id_t conn, uint8_t qos, bool retain, const char *topic,
			const char *payload, uint64_t ask)
{
	struct recw w;

	build_publish_from(&w, conn, qos, retain, topic, payload, ask);
	return handle(f, conn_id_worker(conn), REC_PUBLISH, &w);
}

/* One SUBSCRIBE of the n filters, each at QoS 1, answered with the codes want. */
static void expect_suback(struct fx *f, conn_id_t conn, const char *const *filters,
			  const uint8_t *want, uint16_t n)
{
	struct rec_subscription subs[16];
	struct suback s;

	assert_true(n <= 16);
	for (uint16_t i = 0; i < n; i++)
		subs[i] = (struct rec_subscription){ str(filters[i]), 1 };
	fx_clear(f);
	assert_int_equal(send_subscribes(f, conn, 1, subs, n), 0);
	decode_suback(&f->caps[0], &s);
	assert_int_equal(s.n, n);
	assert_memory_equal(s.codes, want, n);
}

/* conn resumes id's stored session as user: what it emits stays captured (CONNACK first). */
static void resume(struct fx *f, conn_id_t conn, const char *id, const char *user)
{
	struct recw w;

	fx_clear(f);
	build_connect_as(&w, conn, false, id, user, NULL);
	assert_int_equal(handle(f, conn_id_worker(conn), REC_CONNECT, &w), 0);
	assert_true(f->n >= 1);
	assert_int_equal(f->caps[0].type, REC_CONNACK);
}

#define SENSORS_ACL "user alice\ntopic read sensors/#\ntopic deny sensors/private/#\n" \
		    "user pub\ntopic write #\n"

static void acl_suback_refuses_filters_with_nothing_readable(void **state)
{
	struct fx *f = *state;
	const char *filters[] = { "sensors/#", "secret/#", "sensors/private/#", "sensors/+/t" };

	set_acl(f, SENSORS_ACL);
	connect_as(f, C(0, 1), true, "a", "alice", NULL);
	expect_suback(f, C(0, 1), filters, (const uint8_t[]){ 1, 0x80, 0x80, 1 }, 4);
	assert_int_equal(stats_of(f).subscriptions, 2);   /* the refused ones are not subscribed */
}

/* Under SENSORS_ACL: alice's session "a" online on C(0, 1), and "carol", also alice's, offline; both on sensors/#. */
static void alice_online_and_carol_offline(struct fx *f)
{
	connect_as(f, C(0, 1), false, "a", "alice", NULL);
	subscribe_ok(f, C(0, 1), "sensors/#", 1);
	connect_as(f, C(1, 1), false, "carol", "alice", NULL);
	subscribe_ok(f, C(1, 1), "sensors/#", 1);
	assert_int_equal(send_close(f, C(1, 1), false, 0, NULL), 0);
}

/*
 * pub publishes sensors/a and sensors/private/a: "a" gets the first only,
 * and so does "carol" from her queue when she resumes on C(1, 2) (*m).
 */
static void only_sensors_a_reaches_alice(struct fx *f, struct smsg *m)
{
	connect_as(f, C(2, 1), true, "p", "pub", NULL);
	fx_clear(f);
	assert_int_equal(publish_from(f, C(2, 1), 1, false, "sensors/a", "ok", 0), 0);
	assert_int_equal(publish_from(f, C(2, 1), 1, false, "sensors/private/a", "no", 0), 0);
	assert_int_equal(delivered(f, C(0, 1), "sensors/a", NULL), 1);
	assert_int_equal(delivered(f, C(0, 1), "sensors/private/a", NULL), 0);
	resume(f, C(1, 2), "carol", "alice");
	assert_int_equal(f->n, 2);
	decode_session_msg(&f->caps[1], m);
	assert_string_equal(m->topic, "sensors/a");
}

static void acl_read_rule_applies_to_every_delivery(void **state)
{
	struct fx *f = *state;
	struct smsg m;

	set_acl(f, SENSORS_ACL);
	alice_online_and_carol_offline(f);
	only_sensors_a_reaches_alice(f, &m);

	/* A message its last connection hands back goes on only where it may read. */
	fx_clear(f);
	assert_int_equal(send_session_msg(f, C(1, 1), m.sid, 0, MSG_QUEUED, 1, "sensors/private/b", "x"), 0);
	assert_int_equal(send_session_msg(f, C(1, 1), m.sid, 0, MSG_QUEUED, 1, "sensors/b", "x"), 0);
	assert_int_equal(f->n, 1);
	decode_session_msg(&f->caps[0], &m);
	assert_string_equal(m.topic, "sensors/b");
}

static void acl_refused_publish_is_not_delivered_retained_or_queued(void **state)
{
	struct fx *f = *state;
	struct route_ans a;

	set_acl(f, "topic read #\nuser pub\ntopic write cmd/#\n");
	connect_as(f, C(0, 1), true, "watcher", NULL, NULL);
	subscribe_ok(f, C(0, 1), "#", 1);
	connect_as(f, C(1, 1), false, "p", NULL, NULL);
	subscribe_ok(f, C(1, 1), "#", 1);
	assert_int_equal(send_close(f, C(1, 1), false, 0, NULL), 0);
	connect_as(f, C(2, 1), true, "pub", "pub", NULL);

	fx_clear(f);
	assert_int_equal(publish_from(f, C(2, 1), 1, true, "other/x", "no", 0), 0);
	/* Nor from a connection the router holds no session for, nor another worker's. */
	assert_int_equal(publish_from(f, C(2, 9), 1, true, "cmd/1", "no", 0), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).retained, 0);
	assert_int_equal(stats_of(f).queued_payloads, 0);
	/* Asked for its route, the refused topic stays with the router: remote. */
	assert_int_equal(publish_from(f, C(2, 1), 0, false, "other/x", "no", 7), 0);
	assert_int_equal(f->n, 1);
	decode_route(&f->caps[0], &a);
	assert_int_equal(a.local, 0);
	assert_int_equal(a.n, 0);

	/* What it may write goes everywhere as usual. */
	fx_clear(f);
	assert_int_equal(publish_from(f, C(2, 1), 1, true, "cmd/1", "yes", 0), 0);
	assert_int_equal(delivered(f, C(0, 1), "cmd/1", NULL), 1);
	assert_int_equal(stats_of(f).retained, 1);
	assert_int_equal(stats_of(f).queued_payloads, 1);
}

static void acl_retained_messages_go_only_where_readable(void **state)
{
	struct fx *f = *state;

	set_acl(f, SENSORS_ACL);
	connect_as(f, C(2, 1), true, "p", "pub", NULL);
	assert_int_equal(publish_from(f, C(2, 1), 1, true, "sensors/a", "ok", 0), 0);
	assert_int_equal(publish_from(f, C(2, 1), 1, true, "sensors/private/a", "no", 0), 0);
	assert_int_equal(stats_of(f).retained, 2);
	connect_as(f, C(0, 1), true, "a", "alice", NULL);
	fx_clear(f);
	assert_int_equal(send_subscribe(f, C(0, 1), 1, "sensors/#", 1), 0);
	assert_false(router_send_retained(f->r));
	assert_int_equal(count_type(f, REC_SUBACK), 1);
	assert_int_equal(delivered(f, C(0, 1), "sensors/a", NULL), 1);
	assert_int_equal(delivered(f, C(0, 1), "sensors/private/a", NULL), 0);
}

static void acl_will_is_published_only_where_its_owner_may_write(void **state)
{
	struct fx *f = *state;
	const struct will will = { "wills/dave", "gone", 1, 0 };

	set_acl(f, "topic read #\npattern write wills/%c\n");
	connect_as(f, C(0, 1), true, "dave", NULL, &will);
	connect_as(f, C(0, 2), true, "eve", NULL, &will);
	connect_as(f, C(1, 1), true, "watcher", NULL, NULL);
	subscribe_ok(f, C(1, 1), "wills/#", 1);
	assert_int_equal(send_close(f, C(0, 2), true, 0, NULL), 0);
	assert_int_equal(f->n, 0);
	assert_int_equal(send_close(f, C(0, 1), true, 0, NULL), 0);
	assert_int_equal(delivered(f, C(1, 1), "wills/dave", NULL), 1);
}

static void acl_patterns_put_in_the_user_name_and_client_id(void **state)
{
	struct fx *f = *state;
	const char *filters[] = { "users/alice/#", "users/bob/#", "devices/dev1/in", "devices/dev2/in" };

	set_acl(f, "pattern readwrite users/%u/#\npattern read devices/%c/in\n");
	connect_as(f, C(0, 1), true, "dev1", "alice", NULL);
	expect_suback(f, C(0, 1), filters, (const uint8_t[]){ 1, 0x80, 1, 0x80 }, 4);
	fx_clear(f);
	assert_int_equal(publish_from(f, C(0, 1), 0, false, "users/alice/x", "mine", 0), 0);
	assert_int_equal(publish_from(f, C(0, 1), 0, false, "users/bob/x", "not mine", 0), 0);
	assert_int_equal(publish_from(f, C(0, 1), 0, false, "devices/dev1/in", "read only", 0), 0);
	assert_int_equal(f->n, 1);
	assert_int_equal(delivered(f, C(0, 1), "users/alice/x", NULL), 1);
}

static void acl_anonymous_clients_get_the_rules_before_any_user_line(void **state)
{
	struct fx *f = *state;
	const char *filters[] = { "public/#", "private/#" };

	set_acl(f, "topic read public/#\nuser alice\ntopic read private/#\n");
	connect_as(f, C(0, 1), true, "anon", NULL, NULL);
	connect_as(f, C(0, 2), true, "a", "alice", NULL);
	connect_as(f, C(0, 3), true, "b", "bob", NULL);
	expect_suback(f, C(0, 1), filters, (const uint8_t[]){ 1, 0x80 }, 2);
	expect_suback(f, C(0, 2), filters, (const uint8_t[]){ 0x80, 1 }, 2);
	/* A user without a section: nothing. */
	expect_suback(f, C(0, 3), filters, (const uint8_t[]){ 0x80, 0x80 }, 2);
}

/* The REC_ROUTE answering conn's PUBLISH of topic with ask. */
static void route_answer_from(struct fx *f, conn_id_t conn, const char *topic, uint64_t ask,
			      struct route_ans *a)
{
	fx_clear(f);
	assert_int_equal(publish_from(f, conn, 0, false, topic, "p", ask), 0);
	assert_int_equal(count_type(f, REC_ROUTE), 1);
	decode_route(&f->caps[f->n - 1], a);
	assert_int_equal(a->ask, ask);
}

static void acl_route_is_local_only_when_every_target_may_read(void **state)
{
	struct fx *f = *state;
	struct route_ans a;

	set_acl(f, SENSORS_ACL);
	connect_as(f, C(0, 1), true, "a", "alice", NULL);
	subscribe_ok(f, C(0, 1), "sensors/#", 1);
	connect_as(f, C(0, 2), true, "p", "pub", NULL);
	connect_as(f, C(0, 3), true, "n", "nobody", NULL);

	route_answer_from(f, C(0, 2), "sensors/a", 1, &a);
	assert_int_equal(a.local, 1);
	assert_int_equal(route_qos(&a, C(0, 1)), 1);
	/* alice matches but may not read: the router keeps the topic, and delivers nothing. */
	route_answer_from(f, C(0, 2), "sensors/private/a", 2, &a);
	assert_int_equal(a.local, 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
	/* A publish the ACL refuses: remote, so that this worker keeps sending the topic here. */
	route_answer_from(f, C(0, 3), "sensors/a", 3, &a);
	assert_int_equal(a.local, 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
}

static void acl_views_are_made_again_for_a_new_acl(void **state)
{
	struct fx *f = *state;
	const char *filters[] = { "a/#", "b/#" };
	uint64_t gen;

	set_acl(f, "user alice\ntopic read a/#\nuser pub\ntopic write #\n");
	connect_as(f, C(0, 1), true, "a", "alice", NULL);
	connect_as(f, C(1, 1), true, "p", "pub", NULL);
	subscribe_ok(f, C(0, 1), "#", 1);
	fx_clear(f);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "a/1", "x", 0), 0);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "b/1", "x", 0), 0);
	assert_int_equal(delivered(f, C(0, 1), "a/1", NULL), 1);
	assert_int_equal(delivered(f, C(0, 1), "b/1", NULL), 0);

	gen = router_route_gen(f->r);
	set_acl(f, "user alice\ntopic read b/#\nuser pub\ntopic write #\n");
	assert_true(router_route_gen(f->r) > gen);     /* every cached route is asked again */
	fx_clear(f);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "a/1", "x", 0), 0);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "b/1", "x", 0), 0);
	assert_int_equal(delivered(f, C(0, 1), "a/1", NULL), 0);
	assert_int_equal(delivered(f, C(0, 1), "b/1", NULL), 1);
	expect_suback(f, C(0, 1), filters, (const uint8_t[]){ 0x80, 1 }, 2);

	/* From the auth role's bytes; bytes that do not decode leave the ACL in force. */
	{
		const char *text = "user alice\ntopic read a/#\nuser pub\ntopic write #\n";
		const struct acl_limits lim = ACL_LIMITS_DEFAULT;
		struct acl *acl = NULL;
		struct recw w;
		char err[128];

		assert_int_equal(acl_parse(text, strlen(text), &lim, &acl, err, sizeof(err)), 0);
		recw_init(&w);
		assert_int_equal(acl_encode(acl, &w), 0);
		acl_free(acl);
		assert_int_equal(router_set_acl_bytes(f->r, w.buf, w.len), 0);
		assert_int_equal(router_set_acl_bytes(f->r, w.buf, w.len - 1), -1);
		recw_free(&w);
	}
	fx_clear(f);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "a/1", "x", 0), 0);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "b/1", "x", 0), 0);
	assert_int_equal(delivered(f, C(0, 1), "a/1", NULL), 1);
	assert_int_equal(delivered(f, C(0, 1), "b/1", NULL), 0);

	/* No ACL: everything is allowed again. */
	router_set_acl(f->r, NULL);
	fx_clear(f);
	assert_int_equal(publish_from(f, C(1, 1), 0, false, "a/1", "x", 0), 0);
	assert_int_equal(delivered(f, C(0, 1), "a/1", NULL), 1);
}

static void acl_user_names_outlive_a_router_restart(void **state)
{
	struct fx *f = *state;
	struct smsg m;

	fx_store(f, STORE_DISK_MAP);
	set_acl(f, SENSORS_ACL);
	alice_online_and_carol_offline(f);
	assert_int_equal(router_commit(f->r), 0);

	fx_crash_and_restart(f, NULL);
	set_acl(f, SENSORS_ACL);
	/* Still alice's, online and offline: without her name they could read nothing at all. */
	only_sensors_a_reaches_alice(f, &m);
}

/* A user name is a string: one holding a NUL would be cut short in the ACL's eyes. */
static void acl_connect_with_a_nul_in_its_user_name_is_dropped(void **state)
{
	struct fx *f = *state;
	const struct rec_connect x = {
		.conn = C(0, 1), .clean = 1, .client_id = str("a"), .remote = str("127.0.0.1:1"),
		.user = { (const uint8_t *)"alice\0x", 7 },
	};
	struct recw w;

	recw_init(&w);
	rec_connect_encode(&w, &x);
	assert_int_equal(handle(f, 0, REC_CONNECT, &w), -1);
	assert_int_equal(f->n, 0);
	assert_int_equal(stats_of(f).sessions, 0);
}

/* A persistent session resumed under another user name reads with that one's rules. */
static void acl_resumed_session_reads_as_its_new_user(void **state)
{
	struct fx *f = *state;

	set_acl(f, SENSORS_ACL "user bob\ntopic read other/#\n");
	connect_as(f, C(0, 1), false, "shared", "alice", NULL);
	subscribe_ok(f, C(0, 1), "sensors/#", 1);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	connect_as(f, C(1, 1), true, "p", "pub", NULL);
	assert_int_equal(publish_from(f, C(1, 1), 1, false, "sensors/a", "for alice", 0), 0);
	resume(f, C(0, 2), "shared", "bob");
	assert_int_equal(f->n, 1);                 /* the CONNACK alone: alice's message is not bob's */
	fx_clear(f);
	assert_int_equal(publish_from(f, C(1, 1), 1, false, "sensors/b", "x", 0), 0);
	assert_int_equal(f->n, 0);
}

/* ---- grants: the auth role vouches for each CONNECT ---------------------- */

static unsigned grant_fetches;
static struct fx *grant_fx;

/* What the auth role "sent": the grant of C(0, 3), read only when the router asks. */
static void grant_fetch(void *arg)
{
	(void)arg;
	grant_fetches++;
	assert_int_equal(router_grant(grant_fx->r, C(0, 3), "carol", 5, false, NULL, 0), 0);
}

/* The CONNACK code a CONNECT as user gets. */
static uint8_t connect_code(struct fx *f, conn_id_t conn, const char *id, const char *user)
{
	return connect_answer(f, conn, true, id, user, NULL).rc;
}

/*
 * With grants required, a CONNECT record is believed only under the name
 * the auth role granted its connection: another name, or none, is CONNACK
 * 5; a grant not read yet is fetched; each grant serves one CONNECT.
 */
static void grant_required_for_every_connect(void **state)
{
	struct fx *f = *state;

	set_acl(f, SENSORS_ACL);
	grant_fx = f;
	grant_fetches = 0;
	router_set_grants(f->r, true, grant_fetch, NULL);
	assert_int_equal(connect_code(f, C(0, 1), "a", "alice"), MQTT_CONNACK_NOT_AUTHORIZED);
	assert_int_equal(grant_fetches, 1);
	assert_int_equal(router_grant(f->r, C(0, 1), "bob", 3, false, NULL, 0), 0);
	assert_int_equal(connect_code(f, C(0, 1), "a", "alice"), MQTT_CONNACK_NOT_AUTHORIZED);
	assert_int_equal(router_grant(f->r, C(0, 2), "alice", 5, false, NULL, 0), 0);
	assert_int_equal(connect_code(f, C(0, 2), "a", "alice"), MQTT_CONNACK_ACCEPTED);
	/* carol's grant was read with the first fetch: no other is needed. */
	assert_int_equal(connect_code(f, C(0, 3), "c", "carol"), MQTT_CONNACK_ACCEPTED);
	assert_int_equal(grant_fetches, 1);
	/* Its grant was used: a CONNECT record again on that connection finds none. */
	assert_int_equal(send_close(f, C(0, 2), false, 0, NULL), 0);
	assert_int_equal(connect_code(f, C(0, 2), "a", "alice"), MQTT_CONNACK_NOT_AUTHORIZED);
	assert_int_equal(grant_fetches, 2);
	/* Not required: the record's name is taken. */
	router_set_grants(f->r, false, NULL, NULL);
	assert_int_equal(connect_code(f, C(0, 4), "d", "dave"), MQTT_CONNACK_ACCEPTED);
}

/* A token's rules in its grant are its session's view, without an ACL file and beside one. */
static void grant_rules_are_the_session_view(void **state)
{
	static const char *const filters[] = { "sensors/#", "mine/#" };
	static const uint8_t only_mine[] = { 0x80, 1 };
	struct fx *f = *state;
	const char *read[] = { "mine/#" };
	struct acl_client *v = acl_client_from_lists(read, 1, NULL, 0);
	struct recw w;

	assert_non_null(v);
	recw_init(&w);
	assert_int_equal(acl_client_encode(v, &w), 0);
	acl_client_free(v);
	router_set_grants(f->r, true, NULL, NULL);
	assert_int_equal(router_grant(f->r, C(0, 1), "dev", 3, true, w.buf, w.len), 0);
	connect_as(f, C(0, 1), true, "dev", "dev", NULL);
	expect_suback(f, C(0, 1), filters, only_mine, 2);
	/* An ACL file that gives "dev" everything does not widen its token's lists. */
	set_acl(f, "user dev\ntopic readwrite #\n");
	expect_suback(f, C(0, 1), filters, only_mine, 2);
	recw_free(&w);
}

/* A token's view reading only what read names, encoded as the auth role grants it. */
static void token_rules(struct recw *w, const char *read)
{
	struct acl_client *v = acl_client_from_lists(&read, 1, NULL, 0);

	assert_non_null(v);
	recw_init(w);
	assert_int_equal(acl_client_encode(v, w), 0);
	acl_client_free(v);
}

/* The auth role's grant of conn to user, with a token's rules (NULL: a token's, without rules). */
static void grant_token(struct fx *f, conn_id_t conn, const char *user, const struct recw *rules)
{
	assert_int_equal(router_grant(f->r, conn, user, strlen(user), true,
				      rules ? rules->buf : NULL, rules ? rules->len : 0), 0);
}

static void grant_user(struct fx *f, conn_id_t conn, const char *user)
{
	assert_int_equal(router_grant(f->r, conn, user, strlen(user), false, NULL, 0), 0);
}

static const char *const sensors_and_mine[] = { "sensors/#", "mine/#" };
static const uint8_t only_mine[] = { 0x80, 1 };

/*
 * A CONNECT waiting for a takeover keeps its token's rules however long it
 * waits: its grant is taken as the record comes, so neither the grants'
 * minute nor a flood of grants on its worker can make its session
 * unrestricted when it is placed.
 */
static void token_rules_outlive_a_long_takeover(void **state)
{
	struct fx *f = *state;
	struct recw rules, w;

	token_rules(&rules, "mine/#");
	router_set_grants(f->r, true, NULL, NULL);
	grant_token(f, C(0, 1), "dev", &rules);
	connect_as(f, C(0, 1), false, "dev", "dev", NULL);
	grant_token(f, C(1, 1), "dev", &rules);
	fx_clear(f);
	build_connect_as(&w, C(1, 1), false, "dev", "dev", NULL);
	assert_int_equal(handle(f, 1, REC_CONNECT, &w), 0);
	assert_int_equal(count_type(f, REC_KICK), 1);
	/* The old connection takes longer than a grant lives, and its worker floods its share. */
	router_tick(f->r, 61001);
	for (unsigned i = 0; i < 3000; i++)
		grant_user(f, C(1, 100 + i), "flood");
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(count_type(f, REC_CONNACK), 1);
	expect_suback(f, C(1, 1), sensors_and_mine, only_mine, 2);
	recw_free(&rules);
}

/* A token's grant without rules (they were lost): its session may read and write nothing. */
static void token_without_rules_allows_nothing(void **state)
{
	static const uint8_t none[] = { 0x80, 0x80 };
	struct fx *f = *state;

	router_set_grants(f->r, true, NULL, NULL);
	grant_token(f, C(0, 1), "dev", NULL);
	connect_as(f, C(0, 1), true, "dev", "dev", NULL);
	expect_suback(f, C(0, 1), sensors_and_mine, none, 2);
	grant_user(f, C(1, 1), "sub");
	connect_as(f, C(1, 1), true, "s", "sub", NULL);
	subscribe_ok(f, C(1, 1), "#", 1);
	fx_clear(f);
	assert_int_equal(publish_from(f, C(0, 1), 0, false, "mine/a", "x", 0), 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
}

/*
 * Grants are bounded per worker: one worker flooding grants (its
 * connections only) forgets its own oldest, never another worker's; a
 * share holds twice auth.max_pending.
 */
static void grants_flood_evicts_only_the_flooding_workers(void **state)
{
	struct fx *f = *state;

	f->cfg.auth_max_pending = 300;
	router_set_grants(f->r, true, NULL, NULL);
	grant_user(f, C(1, 1), "bob");
	for (unsigned i = 1; i <= 601; i++)
		grant_user(f, C(0, i), "mallory");
	assert_int_equal(connect_code(f, C(1, 1), "b", "bob"), MQTT_CONNACK_ACCEPTED);
	/* Worker 0's share holds 600: its first grant went, its second stays. */
	assert_int_equal(connect_code(f, C(0, 1), "m1", "mallory"), MQTT_CONNACK_NOT_AUTHORIZED);
	assert_int_equal(connect_code(f, C(0, 2), "m2", "mallory"), MQTT_CONNACK_ACCEPTED);
	/* A grant for a connection of no worker of this router is dropped. */
	assert_int_equal(router_grant(f->r, C(5, 1), "x", 1, false, NULL, 0), -1);
}

/*
 * A restarted router finds every session's token's rules in the store:
 * online, offline, and waiting for a takeover. Without them the sessions
 * would read everything (no ACL file here).
 */
static void token_rules_outlive_a_router_restart(void **state)
{
	struct fx *f = *state;
	struct recw rules, w;

	fx_store(f, STORE_DISK_MAP);
	token_rules(&rules, "mine/#");
	router_set_grants(f->r, true, NULL, NULL);
	grant_token(f, C(0, 1), "dev", &rules);
	connect_as(f, C(0, 1), false, "on", "dev", NULL);
	subscribe_ok(f, C(0, 1), "#", 1);
	grant_token(f, C(0, 2), "dev", &rules);
	connect_as(f, C(0, 2), false, "off", "dev", NULL);
	subscribe_ok(f, C(0, 2), "#", 1);
	assert_int_equal(send_close(f, C(0, 2), false, 0, NULL), 0);
	grant_token(f, C(0, 3), "dev", &rules);
	connect_as(f, C(0, 3), false, "wait", "dev", NULL);
	grant_token(f, C(1, 3), "dev", &rules);
	build_connect_as(&w, C(1, 3), false, "wait", "dev", NULL);
	assert_int_equal(handle(f, 1, REC_CONNECT, &w), 0);
	grant_user(f, C(2, 1), "pub");
	connect_as(f, C(2, 1), true, "p", "pub", NULL);
	assert_int_equal(router_commit(f->r), 0);

	fx_crash_and_restart(f, NULL);
	assert_int_equal(publish_from(f, C(2, 1), 1, false, "other/a", "x", 0), 0);
	assert_int_equal(stats_of(f).queued_payloads, 0);       /* not queued for "off" */
	assert_int_equal(delivered(f, C(0, 1), "other/a", NULL), 0);
	assert_int_equal(publish_from(f, C(2, 1), 1, false, "mine/a", "x", 0), 0);
	assert_int_equal(stats_of(f).queued_payloads, 1);
	assert_int_equal(delivered(f, C(0, 1), "mine/a", NULL), 1);
	expect_suback(f, C(0, 1), sensors_and_mine, only_mine, 2);
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 3), false, 0, NULL), 0);
	assert_int_equal(count_type(f, REC_CONNACK), 1);
	expect_suback(f, C(1, 3), sensors_and_mine, only_mine, 2);

	/* A new daemon over the store: "off" is still held to its token's rules. */
	assert_int_equal(router_commit(f->r), 0);
	fx_crash_and_restart(f, "another daemon");
	connect_as(f, C(2, 9), true, "p", NULL, NULL);
	assert_int_equal(stats_of(f).queued_payloads, 1);
	assert_int_equal(publish_from(f, C(2, 9), 1, false, "other/b", "x", 0), 0);
	assert_int_equal(stats_of(f).queued_payloads, 1);
	recw_free(&rules);
}

/* ---- the process: router_main over real rings ---------------------------- */

#define PROC_RING 4096
#define PROC_WORKERS 2
#define PROC_MSGS 600

struct proc {
	struct iotd_config cfg;
	struct role_env env;           /* the router's: env.shm is its mapping */
	struct shm_set set;
	struct shm_map sup;            /* ours as the supervisor */
	struct shm_map wmap;           /* ours as worker 0 */
	int ctl;                       /* the supervisor's end */
	int auth;                      /* the auth role's end of its channel */
	pid_t pid;
	char store_name[STORE_NAME_LEN]; /* the memory store's, as the supervisor draws it */
	unsigned spawns;               /* routers started over this shared memory */
	struct shmring_producer w2r;   /* we are worker 0 */
	struct shmring_consumer r2w;
};

/* The supervisor's part: shared memory, rings, eventfds and the auth channel, made once. */
static void proc_init(struct proc *p)
{
	int sp[2];

	memset(p, 0, sizeof(*p));
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp),
			 0);
	p->env.router_auth = sp[0];
	p->auth = sp[1];
	p->cfg.max_queued_messages = 100;
	assert_int_equal(shm_create(&p->set, PROC_WORKERS, PROC_RING), 0);
	assert_int_equal(shm_map_role(&p->sup, &p->set, ROLE_SUPERVISOR, 0), 0);
	assert_int_equal(shm_map_role(&p->wmap, &p->set, ROLE_WORKER, 0), 0);
	assert_int_equal(shm_map_role(&p->env.shm, &p->set, ROLE_ROUTER, 0), 0);
	workers_started(p->sup.sup, &p->env, PROC_WORKERS);
	p->env.cfg = &p->cfg;
	p->env.nworkers = PROC_WORKERS;
	shmring_producer_attach_at_tail(&p->w2r, &p->wmap.w2r[0]);
	assert_true(shmring_consumer_attach(&p->r2w, &p->wmap.r2w[0]));
	assert_int_equal(store_memory_name(p->store_name, sizeof(p->store_name), getpid()), 0);
}

/* Fork a router over the rings, as the supervisor does; returns our end of its control socket. */
static void proc_fork(struct proc *p)
{
	p->pid = fork_role(&p->env, &p->ctl);
	if (p->pid == 0) {
		router_set_memory_store(p->store_name, p->spawns > 0);
		_exit(router_main(&p->env));
	}
	p->spawns++;
}

/* Fork a router over the rings and wait until it is ready. */
static void proc_spawn(struct proc *p)
{
	struct ipc_hdr hdr;
	int fd;

	proc_fork(p);
	assert_true(ipc_recv(p->ctl, &hdr, NULL, 0, &fd) >= 0);
	assert_int_equal(hdr.type, IPC_READY);
}

static void proc_start(struct proc *p)
{
	proc_init(p);
	proc_spawn(p);
}

/* kill -9: no goodbye, the store and the rings stay as they are. */
static void proc_kill(struct proc *p)
{
	int status;

	assert_int_equal(kill(p->pid, SIGKILL), 0);
	assert_int_equal(waitpid(p->pid, &status, 0), p->pid);
	assert_true(WIFSIGNALED(status));
	close(p->ctl);
}

static void proc_stop(struct proc *p, bool shutdown)
{
	int status;

	if (shutdown)
		assert_int_equal(ipc_send(p->ctl, IPC_SHUTDOWN, 0, NULL, 0, -1), 0);
	close(p->ctl);                 /* EOF stops it too */
	assert_int_equal(waitpid(p->pid, &status, 0), p->pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	for (unsigned i = 0; i < PROC_WORKERS; i++)
		close(p->env.worker_efd[i]);
	close(p->env.router_efd);
	close(p->env.router_auth);
	close(p->auth);
	shmring_consumer_detach(&p->r2w);
	shm_unmap(&p->env.shm);
	shm_unmap(&p->wmap);
	shm_unmap(&p->sup);
	shm_close(&p->set);
}

/* Write one record into w2r[0], waiting for room as a worker would. */
static void proc_send(struct proc *p, uint16_t type, struct recw *w)
{
	uint64_t deadline = clock_ms() + 10000;
	void *dst;

	assert_false(w->oom);
	while (!(dst = shmring_reserve(&p->w2r, type, 0, (uint32_t)w->len))) {
		if (shmring_commit(&p->w2r))
			eventfd_wake(p->env.router_efd);
		assert_true(clock_ms() < deadline);
		poll(NULL, 0, 1);
	}
	memcpy(dst, w->buf, w->len);
	if (shmring_commit(&p->w2r))
		eventfd_wake(p->env.router_efd);
	recw_free(w);
}

/* The next record in r2w[0], copied out; its space is given back at once. */
static void proc_recv(struct proc *p, struct cap *c)
{
	uint64_t deadline = clock_ms() + 10000;
	const struct shmring_rec *rec;
	struct pollfd pfd = { .fd = p->env.worker_efd[0], .events = POLLIN };

	while (!(rec = shmring_peek(&p->r2w))) {
		if (clock_ms() >= deadline) {
			kill(p->pid, SIGKILL);
			fail_msg("no record from the router within 10 s");
		}
		if (shmring_prepare_sleep(&p->r2w))
			poll(&pfd, 1, 100);
		shmring_awake(&p->r2w);
		eventfd_drain(p->env.worker_efd[0]);
	}
	c->type = rec->type;
	c->len = rec->len;
	c->worker = 0;
	c->buf = malloc(rec->len ? rec->len : 1);
	assert_non_null(c->buf);
	memcpy(c->buf, shmring_payload(rec), rec->len);
	shmring_next(&p->r2w);
	if (shmring_release(&p->r2w))
		eventfd_wake(p->env.router_efd);
}

/* The next record in r2w[0], which must be of this type; nothing more of it is read. */
static void proc_expect(struct proc *p, uint16_t type)
{
	struct cap c;

	proc_recv(p, &c);
	assert_int_equal(c.type, type);
	free(c.buf);
}

/* The next record in r2w[0], which must be a CONNACK for conn: whether it says session present. */
static bool proc_expect_connack(struct proc *p, conn_id_t conn)
{
	struct connack a;
	struct cap c;

	proc_recv(p, &c);
	decode_connack(&c, &a);
	assert_int_equal(a.conn, conn);
	free(c.buf);
	return a.present;
}

/* The next record in r2w[0], which must be a DELIVER: decoded into d. */
static void proc_recv_deliver(struct proc *p, struct deliver *d)
{
	struct cap c;

	proc_recv(p, &c);
	decode_deliver(&c, d);
	free(c.buf);
}

/* The next record in r2w[0] must be one delivery of payload to C(0, 1). */
static void proc_expect_deliver(struct proc *p, const char *payload)
{
	struct deliver d;

	proc_recv_deliver(p, &d);
	assert_int_equal(d.n, 1);
	assert_int_equal(d.t[0].conn, C(0, 1));
	assert_string_equal(d.payload, payload);
}

static void proc_connect(struct proc *p, conn_id_t conn, bool clean, const char *id)
{
	struct recw w;

	build_connect(&w, conn, clean, id, NULL);
	proc_send(p, REC_CONNECT, &w);
}

/* C(0, 1) subscribes to filter. */
static void proc_subscribe(struct proc *p, uint16_t packet_id, const char *filter, uint8_t qos)
{
	struct recw w;

	build_subscribe(&w, C(0, 1), packet_id, &(struct rec_subscription){ str(filter), qos }, 1);
	proc_send(p, REC_SUBSCRIBE, &w);
}

static void proc_publish_to(struct proc *p, uint8_t qos, bool retain, const char *topic,
			    const char *payload)
{
	struct recw w;

	build_publish(&w, qos, retain, topic, payload);
	proc_send(p, REC_PUBLISH, &w);
}

static void proc_publish(struct proc *p, const char *payload)
{
	proc_publish_to(p, 1, false, "t", payload);
}

/* 99 bytes that read as the number i: "000042-xxx...". */
static void numbered_payload(char payload[100], unsigned i)
{
	memset(payload, 'x', 99);
	payload[99] = '\0';
	snprintf(payload, 8, "%06u", i % 1000000);
	payload[6] = '-';
}

static void router_main_serves_the_rings_and_never_drops_when_full(void **state)
{
	struct proc p;
	struct deliver d;
	struct ipc_hdr hdr;
	char payload[100];
	int fd;
	unsigned i;

	(void)state;
	proc_start(&p);

	proc_connect(&p, C(0, 1), true, "dev");
	proc_expect_connack(&p, C(0, 1));
	proc_subscribe(&p, 1, "t", 1);
	proc_expect(&p, REC_SUBACK);

	/* Far more deliveries than r2w holds, while we read none of them. */
	for (i = 0; i < PROC_MSGS; i++) {
		numbered_payload(payload, i);
		proc_publish(&p, payload);
	}
	for (i = 0; i < PROC_MSGS; i++) {
		proc_recv_deliver(&p, &d);
		assert_int_equal(d.n, 1);
		assert_int_equal(d.t[0].conn, C(0, 1));
		assert_int_equal(strtoul(d.payload, NULL, 10), i);      /* all of them, in order */
	}

	assert_int_equal(ipc_send(p.ctl, IPC_PING, 0, NULL, 0, -1), 0);
	assert_true(ipc_recv(p.ctl, &hdr, NULL, 0, &fd) >= 0);
	assert_int_equal(hdr.type, IPC_PONG);
	assert_int_equal(atomic_load(&p.env.shm.router->sessions), 1);
	proc_stop(&p, true);
}

/* Nothing more in r2w[0] for a while. */
static void proc_expect_nothing(struct proc *p)
{
	const struct shmring_rec *rec;

	poll(NULL, 0, 300);
	rec = shmring_peek(&p->r2w);
	if (rec)
		fail_msg("unexpected %s from the router", rec_type_name(rec->type));
}

/* The next message from the router on the auth channel, within a second: its type, payload in buf. */
static uint32_t proc_auth_recv(struct proc *p, void *buf, size_t cap)
{
	struct pollfd pfd = { .fd = p->auth, .events = POLLIN };
	struct ipc_hdr hdr;
	int fd;

	if (poll(&pfd, 1, 1000) != 1)
		return 0;
	assert_true(ipc_recv(p->auth, &hdr, buf, cap, &fd) >= 0);
	return hdr.type;
}

/* Send the router an ACL as the auth role does; sealed: as it must be. Its IPC_AUTH_ACL_TAKEN comes back. */
static void proc_send_acl(struct proc *p, const char *text, uint64_t generation, bool sealed)
{
	static const struct acl_limits lim = ACL_LIMITS_DEFAULT;
	struct ipc_auth_acl msg = { .generation = generation };
	struct acl *acl;
	struct recw w;
	char err[160];
	uint64_t back = 0;
	int fd;

	assert_int_equal(acl_parse(text, strlen(text), &lim, &acl, err, sizeof(err)), 0);
	recw_init(&w);
	assert_int_equal(acl_encode(acl, &w), 0);
	acl_free(acl);
	msg.len = w.len;
	if (sealed) {
		fd = sealedfd_make("test-acl", w.buf, w.len);
	} else {
		fd = memfd_create("test-acl", MFD_CLOEXEC);
		assert_int_equal(write(fd, w.buf, w.len), (ssize_t)w.len);
	}
	assert_true(fd >= 0);
	recw_free(&w);
	assert_int_equal(ipc_send(p->auth, IPC_AUTH_ACL, 0, &msg, sizeof(msg), fd), 0);
	close(fd);
	assert_int_equal(proc_auth_recv(p, &back, sizeof(back)), IPC_AUTH_ACL_TAKEN);
	assert_true(back == generation);
}

/* The auth role's grant of conn as user, as it sends it before the verdict. */
static void proc_send_grant(struct proc *p, conn_id_t conn, const char *user)
{
	struct ipc_auth_fields g = { .conn = conn, .code = MQTT_CONNACK_ACCEPTED, .user = user,
				     .user_len = strlen(user) };
	size_t len;
	void *payload = ipc_auth_verdict_encode(&g, &len);

	assert_non_null(payload);
	assert_int_equal(ipc_send(p->auth, IPC_AUTH_GRANT, 0, payload, len, -1), 0);
	free(payload);
}

/*
 * With an ACL file configured, the router reads no record before the auth
 * role's ACL is in force: it asks for it, refuses one that is not sealed,
 * then applies what waited under the one that is, a CONNECT only as the
 * auth role granted it.
 */
static void router_main_holds_the_rings_until_the_acl_comes(void **state)
{
	struct proc p;
	struct recw w;
	struct cap c;
	struct connack ca;
	struct suback sa;

	(void)state;
	proc_init(&p);
	snprintf(p.cfg.auth_acl_file, sizeof(p.cfg.auth_acl_file), "/nonexistent/acl");
	proc_spawn(&p);
	assert_int_equal(proc_auth_recv(&p, NULL, 0), IPC_AUTH_ACL_ASK);
	build_connect_as(&w, C(0, 2), true, "liar", "u", NULL);   /* granted as no one */
	proc_send(&p, REC_CONNECT, &w);
	proc_send_grant(&p, C(0, 1), "u");
	build_connect_as(&w, C(0, 1), true, "dev", "u", NULL);
	proc_send(&p, REC_CONNECT, &w);
	proc_expect_nothing(&p);
	proc_send_acl(&p, "user u\ntopic read a/#\n", 1, false);
	proc_expect_nothing(&p);
	proc_send_acl(&p, "user u\ntopic read a/#\n", 2, true);
	proc_recv(&p, &c);
	decode_connack(&c, &ca);
	free(c.buf);
	assert_true(ca.conn == C(0, 2) && ca.rc == MQTT_CONNACK_NOT_AUTHORIZED);
	proc_recv(&p, &c);
	decode_connack(&c, &ca);
	free(c.buf);
	assert_true(ca.conn == C(0, 1) && ca.rc == MQTT_CONNACK_ACCEPTED);
	proc_subscribe(&p, 1, "b/#", 0);
	proc_recv(&p, &c);
	decode_suback(&c, &sa);
	free(c.buf);
	assert_true(sa.n == 1 && sa.codes[0] == 0x80);
	proc_subscribe(&p, 2, "a/#", 0);
	proc_recv(&p, &c);
	decode_suback(&c, &sa);
	free(c.buf);
	assert_true(sa.n == 1 && sa.codes[0] == 0);
	proc_stop(&p, true);
}

/* Wait until the router applied everything we sent and committed what it emitted. */
static void proc_wait_applied(struct proc *p, uint64_t r2w_head)
{
	struct shm_router_ring *rr = p->env.shm.router_ring[0];
	uint64_t deadline = clock_ms() + 10000;

	while (atomic_load(&rr->w2r.tail) != p->w2r.head || atomic_load(&rr->r2w.head) <= r2w_head) {
		assert_true(clock_ms() < deadline);
		poll(NULL, 0, 1);
	}
}

/* A router serving C(0, 1) as "dev", subscribed to "t" at QoS 1, that delivered m0. */
static void proc_start_serving(struct proc *p)
{
	proc_start(p);
	proc_connect(p, C(0, 1), false, "dev");
	proc_expect_connack(p, C(0, 1));
	proc_subscribe(p, 1, "t", 1);
	proc_expect(p, REC_SUBACK);
	proc_publish(p, "m0");
	proc_expect_deliver(p, "m0");
}

/*
 * A subscriber whose worker reads nothing for a while: the retained
 * messages its subscription is owed wait for room in the ring (none is
 * dropped, however small the backlog cap), and resume as the worker reads.
 * Live QoS 0 deliveries past the cap are dropped; a SUBACK never is.
 */
static void router_main_paces_retained_and_caps_its_backlog(void **state)
{
	struct proc p;
	struct cap c;
	struct deliver d;
	char topic[16], payload[101], seen[200] = { 0 };
	unsigned n = 0, last = 0;
	bool first = true;

	(void)state;
	proc_init(&p);
	p.cfg.max_router_backlog_bytes = 2048;
	p.cfg.retained_message_limit = 1000;
	proc_spawn(&p);
	proc_connect(&p, C(0, 1), true, "dev");
	proc_expect_connack(&p, C(0, 1));

	memset(payload, 'p', sizeof(payload) - 1);
	payload[sizeof(payload) - 1] = '\0';
	for (unsigned i = 0; i < 200; i++) {
		snprintf(topic, sizeof(topic), "r/%u", i);
		proc_publish_to(&p, 1, true, topic, payload);
	}
	proc_subscribe(&p, 1, "r/#", 1);
	proc_wait_applied(&p, 0);
	proc_expect(&p, REC_SUBACK);
	/* 200 x 130 bytes: several times the ring and the cap. */
	for (unsigned i = 0; i < 200; i++) {
		proc_recv_deliver(&p, &d);
		assert_int_equal(d.retain, 1);
		assert_int_equal(strncmp(d.topic, "r/", 2), 0);
		n = (unsigned)strtoul(d.topic + 2, NULL, 10);
		assert_true(n < 200);
		assert_int_equal(seen[n]++, 0);
	}
	proc_expect_nothing(&p);

	/* Live QoS 0 past the cap: dropped, the SUBACK behind them is not. */
	proc_subscribe(&p, 2, "t", 0);
	proc_expect(&p, REC_SUBACK);
	for (unsigned i = 0; i < PROC_MSGS; i++) {
		snprintf(payload, sizeof(payload), "%06u-and-some-more-bytes-to-fill-the-ring", i);
		proc_publish_to(&p, 0, false, "t", payload);
	}
	proc_subscribe(&p, 3, "u", 0);
	proc_wait_applied(&p, 0);
	n = 0;
	for (;;) {
		proc_recv(&p, &c);
		if (c.type == REC_SUBACK) {
			free(c.buf);
			break;
		}
		decode_deliver(&c, &d);
		assert_true(first || strtoul(d.payload, NULL, 10) > last);   /* in order */
		last = (unsigned)strtoul(d.payload, NULL, 10);
		first = false;
		n++;
		free(c.buf);
	}
	assert_true(n > 0 && n < PROC_MSGS);
	/* Caught up: deliveries flow again. */
	proc_publish_to(&p, 0, false, "t", "after");
	proc_recv_deliver(&p, &d);
	assert_string_equal(d.payload, "after");
	proc_stop(&p, true);
}

/*
 * Killed after its commit and after publishing its deliveries, but before
 * releasing the records it applied (the ring's tail is put back to what
 * it was then): the successor must not apply them again.
 */
static void router_main_never_applies_a_record_twice_after_a_kill(void **state)
{
	struct proc p;
	uint64_t w2r_tail;

	(void)state;
	proc_start_serving(&p);
	w2r_tail = p.w2r.head;
	proc_publish(&p, "m1");
	proc_publish(&p, "m2");
	proc_expect_deliver(&p, "m1");
	proc_expect_deliver(&p, "m2");
	proc_wait_applied(&p, 0);
	proc_kill(&p);
	atomic_store(&p.env.shm.router_ring[0]->w2r.tail, w2r_tail);
	proc_publish(&p, "m3");               /* while no router runs */

	proc_spawn(&p);
	proc_expect_deliver(&p, "m3");
	proc_expect_nothing(&p);
	proc_stop(&p, true);
}

/*
 * Killed after its commit, before publishing what it emitted and before
 * releasing what it applied (both rings put back to what they were then):
 * the successor publishes those records, once, and does not apply the
 * records again (a second CONNECT on one connection would be dropped and
 * its CONNACK never sent).
 */
static void router_main_publishes_what_it_committed_after_a_kill(void **state)
{
	struct proc p;
	uint64_t w2r_tail, r2w_head;

	(void)state;
	proc_start_serving(&p);
	w2r_tail = p.w2r.head;
	r2w_head = p.r2w.tail;
	proc_connect(&p, C(0, 2), true, "dev2");
	proc_publish(&p, "m1");
	proc_wait_applied(&p, r2w_head);
	proc_kill(&p);
	atomic_store(&p.env.shm.router_ring[0]->r2w.head, r2w_head);
	atomic_store(&p.env.shm.router_ring[0]->w2r.tail, w2r_tail);

	proc_spawn(&p);
	proc_expect_connack(&p, C(0, 2));
	proc_expect_deliver(&p, "m1");
	proc_expect_nothing(&p);
	proc_publish(&p, "m2");
	proc_expect_deliver(&p, "m2");
	proc_stop(&p, true);
}

/*
 * Killed while holding deliveries the full r2w ring had no room for: the
 * successor sends every one of them, once, in order.
 */
static void router_main_keeps_held_records_across_a_kill(void **state)
{
	struct proc p;
	struct deliver d;
	char payload[100];
	unsigned i;

	(void)state;
	proc_start_serving(&p);
	for (i = 0; i < PROC_MSGS; i++) {
		numbered_payload(payload, i);
		proc_publish(&p, payload);
	}
	proc_wait_applied(&p, p.r2w.tail);
	proc_kill(&p);

	proc_spawn(&p);
	for (i = 0; i < PROC_MSGS; i++) {
		proc_recv_deliver(&p, &d);
		assert_int_equal(strtoul(d.payload, NULL, 10), i);
	}
	proc_expect_nothing(&p);
	proc_stop(&p, true);
}

/* The next control message from the router, which must be 'type' about worker 0. */
static void proc_expect_ctl(struct proc *p, uint32_t type, uint32_t epoch)
{
	struct pollfd pfd = { .fd = p->ctl, .events = POLLIN };
	struct ipc_worker msg;
	struct ipc_hdr hdr;
	int fd = -1;

	assert_int_equal(poll(&pfd, 1, 10000), 1);
	assert_int_equal(ipc_recv(p->ctl, &hdr, &msg, sizeof(msg), &fd), (ssize_t)sizeof(msg));
	assert_int_equal(hdr.type, type);
	assert_int_equal(msg.index, 0);
	assert_int_equal(msg.epoch, epoch);
}

static void proc_worker_down(struct proc *p, uint32_t new_epoch)
{
	struct ipc_worker msg = { .index = 0, .epoch = new_epoch };

	assert_int_equal(ipc_send(p->ctl, IPC_WORKER_DOWN, 0, &msg, sizeof(msg), -1), 0);
}

/* Worker 0's successor of epoch 'epoch': starts at the router's tail, then serves. */
static void proc_successor(struct proc *p, uint32_t epoch)
{
	atomic_store(&p->sup.sup->workers[0].epoch, epoch);
	shmring_producer_attach_at_tail(&p->w2r, &p->wmap.w2r[0]);
	atomic_store(&p->sup.sup->workers[0].ready_epoch, epoch);   /* its READY */
	eventfd_wake(p->env.router_efd);
}

/*
 * A router serving as after proc_start_serving(), stopped where it stands
 * (SIGSTOP): what is sent meanwhile waits for it. Returns where in w2r[0]
 * the next record goes.
 */
static uint64_t proc_start_paused(struct proc *p)
{
	int status;

	proc_start_serving(p);
	assert_int_equal(kill(p->pid, SIGSTOP), 0);
	assert_int_equal(waitpid(p->pid, &status, WUNTRACED), p->pid);
	return p->w2r.head;
}

/*
 * The records a worker wrote before it died are applied before its death
 * is: a SUBSCRIBE written while the router was stopped, and the death
 * notice sent right after, leave the persistent session offline with that
 * subscription; the router confirms only then, and takes the successor's
 * records (of the new epoch) from where it stopped.
 */
static void router_main_applies_a_dead_workers_records_before_its_death(void **state)
{
	struct proc p;

	(void)state;
	proc_start_paused(&p);               /* "dev", persistent, on C(0, 1), subscribed to t */
	proc_subscribe(&p, 2, "u", 1);
	proc_worker_down(&p, 2);
	assert_int_equal(kill(p.pid, SIGCONT), 0);
	proc_expect(&p, REC_SUBACK);          /* the SUBACK, to a connection now gone */
	proc_expect_ctl(&p, IPC_WORKER_DOWN_DONE, 2);

	proc_successor(&p, 2);
	proc_connect(&p, conn_id_make(0, 1, 2, 1), true, "stale");   /* the old epoch: dropped */
	proc_connect(&p, conn_id_make(0, 2, 2, 1), true, "pub");
	proc_expect_connack(&p, conn_id_make(0, 2, 2, 1));
	proc_publish_to(&p, 1, false, "u", "queued");
	proc_connect(&p, conn_id_make(0, 2, 1, 1), false, "dev");
	assert_true(proc_expect_connack(&p, conn_id_make(0, 2, 1, 1)));
	proc_expect(&p, REC_SESSION_MSG);     /* what "u" got while it was offline */
	proc_stop(&p, true);
}

/*
 * A worker that publishes an impossible head is reported once and its
 * ring left alone; the router keeps running, and once the worker's death
 * is handled its successor is served from where the router stopped.
 */
static void router_main_reports_a_worker_that_breaks_its_ring(void **state)
{
	struct proc p;
	struct ipc_hdr hdr;
	int fd;

	(void)state;
	proc_start_serving(&p);
	atomic_store(&p.wmap.worker[0]->w2r.head, p.w2r.head + 3);  /* misaligned */
	eventfd_wake(p.env.router_efd);
	proc_expect_ctl(&p, IPC_WORKER_FAULT, 1);
	assert_int_equal(ipc_send(p.ctl, IPC_PING, 0, NULL, 0, -1), 0);
	assert_true(ipc_recv(p.ctl, &hdr, NULL, 0, &fd) >= 0);
	assert_int_equal(hdr.type, IPC_PONG);

	proc_worker_down(&p, 2);
	proc_expect_ctl(&p, IPC_WORKER_DOWN_DONE, 2);
	proc_successor(&p, 2);
	proc_connect(&p, conn_id_make(0, 2, 1, 1), false, "dev");
	assert_true(proc_expect_connack(&p, conn_id_make(0, 2, 1, 1)));
	proc_stop(&p, true);
}

/* A worker that moves its r2w tail back behind what it had released is faulty too. */
static void router_main_reports_a_worker_that_rewinds_its_tail(void **state)
{
	struct proc p;

	(void)state;
	proc_start_serving(&p);
	atomic_store(&p.wmap.worker[0]->r2w.tail, 8);
	proc_publish(&p, "m1");                   /* the delivery meets the tail */
	proc_expect_ctl(&p, IPC_WORKER_FAULT, 1);
	proc_stop(&p, true);
}

/*
 * Kill the paused router as the last of 'crashes' routers that died with
 * the record at w2r position pos in hand: so its journal says.
 */
static struct router_journal *proc_kill_holding(struct proc *p, uint64_t pos, uint32_t crashes)
{
	struct router_journal *j = p->env.shm.journal;

	proc_kill(p);
	j->suspect.ring = 1;
	j->suspect.pos = pos;
	j->suspect_crashes = crashes;
	j->in_hand = j->suspect;
	return j;
}

/*
 * A record the router died on three times in a row is set aside: the
 * journal says a router died with it in hand twice already, the router
 * stopped with it unapplied is killed once more, and its successor skips
 * that one record and serves the next.
 */
static void router_main_sets_aside_a_record_it_keeps_dying_on(void **state)
{
	struct proc p;
	struct router_journal *j;
	uint64_t pos;

	(void)state;
	pos = proc_start_paused(&p);
	proc_publish(&p, "poison");
	proc_publish(&p, "after");
	j = proc_kill_holding(&p, pos, 2);

	proc_spawn(&p);
	proc_expect_deliver(&p, "after");
	proc_expect_nothing(&p);
	assert_int_equal(j->suspect_crashes, 0);
	proc_publish(&p, "m2");
	proc_expect_deliver(&p, "m2");
	proc_stop(&p, true);
}

/* Twice is not enough: a record in hand at two deaths is handled again. */
static void router_main_retries_a_record_it_died_on_twice(void **state)
{
	struct proc p;
	struct router_journal *j;
	uint64_t pos;

	(void)state;
	pos = proc_start_paused(&p);
	proc_publish(&p, "again");
	j = proc_kill_holding(&p, pos, 1);

	proc_spawn(&p);
	proc_expect_deliver(&p, "again");
	assert_int_equal(j->suspect_crashes, 2);
	assert_int_equal(j->in_hand.ring, 0);
	proc_stop(&p, true);
}

static void router_main_stops_when_the_supervisor_goes_away(void **state)
{
	struct proc p;

	(void)state;
	proc_start(&p);
	proc_stop(&p, false);
}

/*
 * A router that cannot open its store tells the supervisor why and waits
 * for its answer before it exits with status 1: the reason is read before
 * the exit is seen. Here, the memory store's name is taken already when
 * the first router of the daemon starts (something planted there).
 */
static void router_main_reports_a_store_it_cannot_open(void **state)
{
	char dir[256], why[IPC_MAX_PAYLOAD];
	struct ipc_hdr hdr;
	struct proc p;
	int fd = -1, status;
	ssize_t n;

	(void)state;
	proc_init(&p);
	assert_int_equal(store_memory_dir(dir, sizeof(dir), store_memory_root(), p.store_name), 0);
	assert_int_equal(mkdir(dir, 0700), 0);
	proc_fork(&p);
	n = ipc_recv(p.ctl, &hdr, why, sizeof(why) - 1, &fd);
	assert_true(n > 0);
	why[n] = '\0';
	assert_int_equal(hdr.type, IPC_STORE_FAILED);
	assert_non_null(strstr(why, dir));
	assert_non_null(strstr(why, "already there"));
	/* Still there, waiting for the answer. */
	assert_int_equal(waitpid(p.pid, &status, WNOHANG), 0);
	assert_int_equal(ipc_send(p.ctl, IPC_SHUTDOWN, 0, NULL, 0, -1), 0);
	assert_int_equal(waitpid(p.pid, &status, 0), p.pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 1);
	close(p.ctl);

	/* A successor takes the directory as its predecessor's (private, ours) and resumes it. */
	proc_spawn(&p);
	proc_stop(&p, true);
	assert_int_equal(access(dir, F_OK), -1);   /* a graceful stop removes it */
}

/* ---- shared subscriptions ------------------------------------------------ */

/* The targets of every REC_DELIVER captured that name conn, and their copies in copies (if not NULL). */
static size_t delivered_to(const struct fx *f, conn_id_t conn, uint64_t *copies, size_t cap)
{
	size_t n = 0;
	struct deliver d;

	for (size_t i = 0; i < f->n; i++) {
		if (f->caps[i].type != REC_DELIVER)
			continue;
		decode_deliver(&f->caps[i], &d);
		for (uint32_t t = 0; t < d.n; t++) {
			if (d.t[t].conn != conn)
				continue;
			if (copies && n < cap)
				copies[n] = d.t[t].copy;
			n++;
		}
	}
	return n;
}

static uint8_t suback_code(struct fx *f, conn_id_t conn, const char *filter)
{
	struct suback sa;

	fx_clear(f);
	assert_int_equal(send_subscribe(f, conn, 1, filter, 1), 0);
	assert_true(f->n >= 1);
	decode_suback(&f->caps[0], &sa);
	assert_int_equal(sa.n, 1);
	return sa.codes[0];
}

static void shared_filters_malformed_are_refused_and_valid_ones_granted(void **state)
{
	struct fx *f = *state;

	connect_ok(f, C(0, 1), true, "a", NULL);
	assert_int_equal(suback_code(f, C(0, 1), "$share/g"), 0x80);
	assert_int_equal(suback_code(f, C(0, 1), "$share//a"), 0x80);
	assert_int_equal(suback_code(f, C(0, 1), "$share/g#/a"), 0x80);
	assert_int_equal(suback_code(f, C(0, 1), "$share/g/"), 0x80);
	assert_int_equal(suback_code(f, C(0, 1), "$share/g/a/#"), 1);
	assert_int_equal(stats_of(f).subscriptions, 0);       /* not in the trie of plain ones */
}

/* Members on two workers take turns; a plain subscriber alongside gets every message. */
static void shared_group_round_robins_and_plain_subscribers_get_all(void **state)
{
	/* One session per worker: two members, a plain subscriber, another group of its own. */
	static const struct { const char *id, *filter; } on[4] = {
		{ "m0", "$share/g/t/+" }, { "m1", "$share/g/t/+" },
		{ "plain", "t/#" }, { "other", "$share/h/t/x" },
	};
	struct fx *f = *state;
	struct route_ans a;

	for (unsigned w = 0; w < 4; w++) {
		connect_ok(f, C(w, 1), true, on[w].id, NULL);
		subscribe_ok(f, C(w, 1), on[w].filter, 0);
	}
	fx_clear(f);
	for (int i = 0; i < 6; i++)
		assert_int_equal(send_publish(f, 2, 0, false, "t/x", "p"), 0);
	assert_int_equal(delivered_to(f, C(0, 1), NULL, 0), 3);
	assert_int_equal(delivered_to(f, C(1, 1), NULL, 0), 3);
	assert_int_equal(delivered_to(f, C(2, 1), NULL, 0), 6);
	assert_int_equal(delivered_to(f, C(3, 1), NULL, 0), 6);
	/* '+' at the first level never matches a '$' topic, in a group as anywhere. */
	fx_clear(f);
	assert_int_equal(send_publish(f, 2, 0, false, "$x/t", "p"), 0);
	subscribe_ok(f, C(0, 1), "$share/s/+/t", 0);
	assert_int_equal(send_publish(f, 2, 0, false, "$x/t", "p"), 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
	/* A topic a group matches is never delivered by a worker itself. */
	publish_asking(f, 2, 0, "t/x", 7, &a);
	assert_int_equal(a.local, 0);
	/* The last member gone, so is the group. */
	assert_int_equal(send_unsubscribe(f, C(0, 1), 2, "$share/g/t/+"), 0);
	assert_int_equal(send_close(f, C(1, 1), false, 0, NULL), 0);
	fx_clear(f);
	assert_int_equal(send_publish(f, 2, 0, false, "t/y", "p"), 0);
	assert_int_equal(delivered_to(f, C(0, 1), NULL, 0), 0);
	assert_int_equal(delivered_to(f, C(2, 1), NULL, 0), 1);
}

/* A member whose window the router knows to be full is passed over while another has room. */
static void shared_group_skips_a_member_with_a_full_window(void **state)
{
	struct fx *f = *state;
	uint64_t copy[8];
	uint32_t sid1;

	f->cfg.max_inflight = 1;
	connect_ok(f, C(0, 1), true, "m0", NULL);
	sid1 = connect_ok(f, C(1, 1), true, "m1", NULL);
	subscribe_ok(f, C(0, 1), "$share/g/t", 1);
	subscribe_ok(f, C(1, 1), "$share/g/t", 1);
	for (int i = 0; i < 5; i++) {
		size_t n;

		assert_int_equal(send_publish(f, 2, 1, false, "t", "p"), 0);
		n = delivered_to(f, C(1, 1), copy, 8);
		/* m1 acknowledges what it gets; m0 never does. */
		for (size_t k = 0; k < n; k++) {
			assert_int_not_equal(copy[k], 0);   /* a clean member's copy is kept too */
			assert_int_equal(send_msg_state(f, C(1, 1), sid1, copy[k], 0, MSG_DONE), 0);
		}
		fx_clear(f);
		if (i == 0)
			continue;
		assert_int_equal(n, 1);
	}
}

/*
 * A clean member's connection closes: what it had not finished goes to
 * another member; a QoS 2 message whose PUBREC came does not.
 */
static void shared_clean_member_leaves_its_unfinished_messages_to_another(void **state)
{
	struct fx *f = *state;
	uint64_t copy[4];
	uint32_t sid0;

	sid0 = connect_ok(f, C(0, 1), true, "m0", NULL);
	connect_ok(f, C(1, 1), false, "m1", NULL);
	subscribe_ok(f, C(0, 1), "$share/g/t", 2);
	subscribe_ok(f, C(1, 1), "$share/g/t", 2);
	assert_int_equal(send_publish(f, 2, 1, false, "t", "q1"), 0);   /* to m0 */
	assert_int_equal(send_publish(f, 2, 1, false, "t", "x"), 0);    /* to m1 */
	assert_int_equal(send_publish(f, 2, 2, false, "t", "q2"), 0);   /* to m0 */
	assert_int_equal(delivered_to(f, C(0, 1), copy, 4), 2);
	assert_int_equal(send_msg_state(f, C(0, 1), sid0, copy[0], 5, MSG_INFLIGHT), 0);
	assert_int_equal(send_msg_state(f, C(0, 1), sid0, copy[1], 6, MSG_PUBREL), 0);
	fx_clear(f);
	assert_int_equal(send_close(f, C(0, 1), false, 0, NULL), 0);
	assert_int_equal(delivered_to(f, C(1, 1), copy, 4), 1);
	assert_int_not_equal(copy[0], 0);
	{
		struct deliver d;

		for (size_t i = 0; i < f->n; i++)
			if (f->caps[i].type == REC_DELIVER)
				decode_deliver(&f->caps[i], &d);
		assert_string_equal(d.payload, "q1");
		assert_int_equal(d.qos, 1);
	}
	/* m1 offline: the group's messages queue for it, the only member left. */
	assert_int_equal(send_close(f, C(1, 1), false, 0, NULL), 0);
	fx_clear(f);
	assert_int_equal(send_publish(f, 2, 1, false, "t", "later"), 0);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
	fx_clear(f);
	expect_resumed(f, C(1, 2), "m1", 3, (const char *const[]){ "x", "q1", "later" });
}

/* hash_publisher: each publisher's messages stay with one member. */
static void shared_hash_publisher_keeps_a_publisher_on_one_member(void **state)
{
	struct fx *f = *state;
	conn_id_t pub[4] = { C(2, 1), C(2, 2), C(2, 3), C(2, 4) };
	const char *ids[4] = { "p1", "p2", "p3", "p4" };

	snprintf(f->cfg.shared_subscription_policy, sizeof(f->cfg.shared_subscription_policy),
		 "hash_publisher");
	connect_ok(f, C(0, 1), true, "m0", NULL);
	connect_ok(f, C(1, 1), true, "m1", NULL);
	subscribe_ok(f, C(0, 1), "$share/g/t", 0);
	subscribe_ok(f, C(1, 1), "$share/g/t", 0);
	for (int p = 0; p < 4; p++) {
		struct recw w;
		size_t n0, n1;

		connect_ok(f, pub[p], true, ids[p], NULL);
		fx_clear(f);
		for (int i = 0; i < 5; i++) {
			build_publish_from(&w, pub[p], 0, false, "t", "p", 0);
			assert_int_equal(handle(f, 2, REC_PUBLISH, &w), 0);
		}
		n0 = delivered_to(f, C(0, 1), NULL, 0);
		n1 = delivered_to(f, C(1, 1), NULL, 0);
		assert_int_equal(n0 + n1, 5);
		assert_true(n0 == 0 || n1 == 0);
	}
}

/* The ACL checks a share's filter, and a member that may not read a topic is passed over. */
static void shared_subscriptions_under_an_acl(void **state)
{
	struct fx *f = *state;
	const char *filters[] = { "$share/g/sensors/#", "$share/g/secret/#" };

	set_acl(f, SENSORS_ACL "user all\ntopic read #\n");
	connect_as(f, C(0, 1), true, "a", "alice", NULL);
	connect_as(f, C(1, 1), true, "b", "all", NULL);
	connect_as(f, C(2, 1), true, "p", "pub", NULL);
	expect_suback(f, C(0, 1), filters, (const uint8_t[]){ 1, 0x80 }, 2);
	expect_suback(f, C(1, 1), filters, (const uint8_t[]){ 1, 1 }, 2);
	fx_clear(f);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(publish_from(f, C(2, 1), 1, false, "sensors/private/a", "x", 0), 0);
		assert_int_equal(publish_from(f, C(2, 1), 1, false, "sensors/a", "x", 0), 0);
	}
	/* Each private one passes alice over, so each sensors/a is her turn. */
	assert_int_equal(delivered(f, C(0, 1), "sensors/private/a", NULL), 0);
	assert_int_equal(delivered(f, C(0, 1), "sensors/a", NULL), 2);
	assert_int_equal(delivered(f, C(1, 1), "sensors/private/a", NULL), 2);
	assert_int_equal(delivered(f, C(1, 1), "sensors/a", NULL), 0);
}

/* No retained message on a shared subscription [MQTT-4.8.2]. */
static void shared_subscribe_gets_no_retained_message(void **state)
{
	struct fx *f = *state;

	assert_int_equal(send_publish(f, 2, 1, true, "t", "kept"), 0);
	connect_ok(f, C(0, 1), true, "m0", NULL);
	fx_clear(f);
	assert_int_equal(send_subscribe(f, C(0, 1), 1, "$share/g/t", 1), 0);
	router_send_retained(f->r);
	assert_int_equal(count_type(f, REC_DELIVER), 0);
	fx_clear(f);
	assert_int_equal(send_subscribe(f, C(0, 1), 2, "t", 1), 0);
	router_send_retained(f->r);
	assert_int_equal(count_type(f, REC_DELIVER), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(connect_new_session_is_acked_without_session_present),
		T(shared_filters_malformed_are_refused_and_valid_ones_granted),
		T(shared_group_round_robins_and_plain_subscribers_get_all),
		T(shared_group_skips_a_member_with_a_full_window),
		T(shared_clean_member_leaves_its_unfinished_messages_to_another),
		T(shared_hash_publisher_keeps_a_publisher_on_one_member),
		T(shared_subscribe_gets_no_retained_message),
		T(shared_subscriptions_under_an_acl),
		T(connect_persistent_resumes_with_stored_qos1_but_not_qos0),
		T(connect_clean_discards_stored_session),
		T(resume_returns_qos2_ids_and_unfinished_messages_first),
		T(takeover_across_workers_kicks_then_acks_after_close),
		T(takeover_by_clean_connect_starts_fresh),
		T(second_takeover_kicks_the_waiting_connect),
		T(waiting_connect_closed_early_is_forgotten),
		T(waiting_connect_dropped_when_its_worker_dies),
		T(anonymous_clients_get_separate_sessions),
		T(second_connect_on_one_connection_is_dropped),
		T(subscribe_acks_first_then_sends_matching_retained),
		T(retained_message_is_cleared_by_empty_payload),
		T(live_publish_with_retain_is_delivered_without_retain),
		T(message_properties_go_with_live_deliveries_once_checked),
		T(no_local_and_retain_as_published_shape_each_target),
		T(retain_handling_decides_what_a_subscribe_sends),
		T(retained_walk_resumes_as_the_ring_takes_them),
		T(retained_walk_meets_changes_and_live_publishes_once),
		T(retained_walk_ends_with_its_subscription_connection_or_session),
		T(repeated_filter_in_one_subscribe_is_one_subscription_and_one_walk),
		T(retained_walk_of_a_big_tree_takes_several_bounded_turns),
		T(overlapping_subscriptions_give_one_copy_at_highest_qos),
		T(fan_out_to_three_sessions_on_two_workers_gives_two_delivers),
		T(big_fan_out_is_split_to_fit_a_ring_record),
		T(delivered_qos_is_the_lower_of_publish_and_granted),
		T(unsubscribe_stops_delivery_and_is_acked),
		T(resubscribe_replaces_the_qos),
		T(route_is_local_when_every_target_is_a_clean_session_on_the_asking_worker),
		T(route_is_local_and_empty_without_subscribers),
		T(route_is_remote_for_another_worker_a_persistent_or_a_pending_session),
		T(route_of_a_fan_out_past_the_limit_stays_with_the_router),
		T(publish_without_ask_gets_no_route_and_bad_flags_are_dropped),
		T(route_gen_moves_with_every_change_of_where_messages_go),
		T(set_route_gen_switches_the_counter_and_bumps_it),
		T(router_free_leaves_the_route_gen_alone),
		T(offline_queue_drops_new_messages_when_full),
		T(offline_queue_respects_the_byte_budget),
		T(max_sessions_refuses_new_sessions_but_not_resumes_or_takeovers),
		T(max_subscriptions_per_session_refuses_new_filters_only),
		T(a_message_queued_for_many_sessions_is_held_once),
		T(each_session_counts_a_shared_message_against_its_own_byte_cap),
		T(max_queued_bytes_total_bounds_all_queues_together),
		T(max_queued_bytes_total_drops_qos0_first),
		T(will_is_published_on_abnormal_close),
		T(will_is_not_published_on_clean_disconnect),
		T(will_reaches_own_persistent_session_queue),
		T(worker_down_closes_its_sessions_and_publishes_wills),
		T(worker_down_leaves_the_sessions_copies_as_last_reported),
		T(bad_message_state_reports_are_refused),
		T(worker_down_keeps_the_inbound_qos2_ids),
		T(full_offline_queue_drops_qos0_first),
		T(offline_session_expires_after_timeout),
		T(sessions_never_expire_with_timeout_zero),
		T(offline_sessions_expire_after_their_own_interval),
		T(a_short_interval_among_many_offline_sessions_ends_on_time),
		T(connect_with_a_bad_will_part_is_dropped),
		T(bounce_goes_to_the_sessions_new_connection),
		T(bounce_to_offline_session_is_queued),
		T(handed_back_message_keeps_its_identifiers),
		T(bounce_for_gone_session_is_dropped),
		T(records_for_unknown_connections_are_dropped),
		T(records_from_the_wrong_ring_or_of_router_types_are_dropped),
		T(garbage_records_do_not_crash_the_router),
		T(records_for_other_epochs_or_impossible_slots_are_dropped),
		T(session_msg_from_a_connection_the_session_never_had_is_dropped),
		T(a_crashed_router_comes_back_with_sessions_subscriptions_queues_and_retained),
		T(only_committed_changes_outlive_the_router),
		T(a_new_daemon_finds_persistent_sessions_offline_and_fires_no_will),
		T(copies_survive_a_router_crash_and_a_new_daemon_queues_them),
		T(expiry_and_queue_limits_hold_across_a_crash),
		T(shared_messages_and_their_counts_are_rebuilt_from_the_store),
		T(a_store_that_refused_writes_is_rewritten_by_the_next_tick),
		T(acl_suback_refuses_filters_with_nothing_readable),
		T(acl_read_rule_applies_to_every_delivery),
		T(acl_refused_publish_is_not_delivered_retained_or_queued),
		T(acl_retained_messages_go_only_where_readable),
		T(acl_will_is_published_only_where_its_owner_may_write),
		T(acl_patterns_put_in_the_user_name_and_client_id),
		T(acl_anonymous_clients_get_the_rules_before_any_user_line),
		T(acl_route_is_local_only_when_every_target_may_read),
		T(acl_views_are_made_again_for_a_new_acl),
		T(acl_user_names_outlive_a_router_restart),
		T(acl_connect_with_a_nul_in_its_user_name_is_dropped),
		T(acl_resumed_session_reads_as_its_new_user),
		T(grant_required_for_every_connect),
		T(grant_rules_are_the_session_view),
		T(token_rules_outlive_a_long_takeover),
		T(token_without_rules_allows_nothing),
		T(grants_flood_evicts_only_the_flooding_workers),
		T(token_rules_outlive_a_router_restart),
		cmocka_unit_test(router_main_serves_the_rings_and_never_drops_when_full),
		cmocka_unit_test(router_main_holds_the_rings_until_the_acl_comes),
		cmocka_unit_test(router_main_stops_when_the_supervisor_goes_away),
		cmocka_unit_test(router_main_applies_a_dead_workers_records_before_its_death),
		cmocka_unit_test(router_main_reports_a_worker_that_breaks_its_ring),
		cmocka_unit_test(router_main_reports_a_worker_that_rewinds_its_tail),
		cmocka_unit_test(router_main_sets_aside_a_record_it_keeps_dying_on),
		cmocka_unit_test(router_main_retries_a_record_it_died_on_twice),
		cmocka_unit_test(router_main_paces_retained_and_caps_its_backlog),
		cmocka_unit_test(router_main_reports_a_store_it_cannot_open),
		cmocka_unit_test(router_main_never_applies_a_record_twice_after_a_kill),
		cmocka_unit_test(router_main_publishes_what_it_committed_after_a_kill),
		cmocka_unit_test(router_main_keeps_held_records_across_a_kill),
#undef T
	};

	/* Quiet: the garbage tests provoke warnings on purpose. */
	log_init(LOG_LVL_ERROR, LOG_FMT_TEXT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
