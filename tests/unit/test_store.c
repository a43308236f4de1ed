/*
 * test_store.c - the router's LMDB store: what is written comes back after
 * a reopen, what was not committed does not, and stores iotd must not
 * touch are refused.
 *
 * Each test works in its own temporary directory, removed at teardown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <lmdb.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "rec.h"
#include "store.h"
#include "../../daemon/store_int.h"

#define MAP ((size_t)64 << 20)

struct fx {
	char dir[64];
	char path[128];          /* the store: dir/s */
	struct store *st;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/iotd-test-store-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/s", f->dir);
	*state = f;
	return 0;
}

static void rm_rf(const char *dir)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

static int teardown(void **state)
{
	struct fx *f = *state;

	store_close(&f->st);
	rm_rf(f->dir);
	free(f);
	return 0;
}

static struct store *open_ok(struct fx *f)
{
	char err[512] = "";

	f->st = store_open(f->path, STORE_DISK, MAP, err, sizeof(err));
	if (!f->st)
		fail_msg("store_open: %s", err);
	return f->st;
}

static void reopen(struct fx *f)
{
	store_close(&f->st);
	open_ok(f);
}

/* ---- collecting what the store gives back ------------------------------- */

struct got_session {
	uint32_t sid;
	bool clean, online, pending;
	char client_id[64], remote[64], user[64], pend_user[64];
	bool token, pend_token;
	char token_rules[64], pend_token_rules[64];
	uint64_t last_seen, conn, pend_conn;
	uint16_t ids[8], n_ids;
	bool will_flag;
	uint8_t will_qos, will_retain;
	char will_topic[64], will_payload[64];
	uint32_t expiry, cx_expiry, will_delay;
	char will_props[64];
	bool will_held;
	uint64_t will_at;
	char held_topic[64], held_props[64];
};

struct got_msg {
	uint32_t sid;
	uint64_t order;
	uint16_t packet_id;
	uint8_t state, qos, retain;
	bool at_worker;
	char topic[1024], payload[64], props[64];
	uint64_t expires_at;
	uint8_t n_sub_ids;
	uint32_t sub_ids[REC_TARGET_SUB_IDS_MAX];
};

struct got {
	struct got_session s[8];
	size_t ns;
	struct { uint32_t sid; char filter[1024]; uint8_t qos; uint32_t sub_id; } sub[8];
	size_t nsub;
	struct got_msg q[16];
	size_t nq;
	struct { char topic[1024]; uint8_t qos; char payload[64], props[64]; uint64_t expires_at; } ret[8];
	size_t nret;
	struct { uint64_t seq; uint16_t type; char data[64]; } held[8];
	size_t nheld;
};

static void copy_str(char *dst, size_t cap, const void *src, size_t len)
{
	assert_true(len < cap);
	if (len)                     /* src may be NULL then: a token without rules */
		memcpy(dst, src, len);
	dst[len] = '\0';
}

static void got_session(void *arg, const struct store_session *s)
{
	struct got *g = arg;
	struct got_session *o = &g->s[g->ns++];

	assert_true(g->ns <= 8);
	o->sid = s->sid;
	o->clean = s->clean;
	o->online = s->online;
	o->pending = s->pending;
	copy_str(o->client_id, sizeof(o->client_id), s->client_id, s->client_id_len);
	copy_str(o->remote, sizeof(o->remote), s->remote, strlen(s->remote));
	copy_str(o->user, sizeof(o->user), s->user, s->user_len);
	o->token = s->token.on;
	copy_str(o->token_rules, sizeof(o->token_rules), s->token.rules, s->token.len);
	o->last_seen = s->last_seen_ms;
	o->n_ids = s->n_qos2_ids;
	o->expiry = s->expiry;
	o->will_held = s->will_held;
	if (s->will_held) {
		o->will_at = s->will_at_ms;
		copy_str(o->held_topic, sizeof(o->held_topic), s->will.will_topic,
			 s->will.will_topic_len);
		copy_str(o->held_props, sizeof(o->held_props), s->will.will_props,
			 s->will.will_props_len);
	}
	if (s->n_qos2_ids)
		memcpy(o->ids, s->qos2_ids, s->n_qos2_ids * sizeof(uint16_t));
	if (s->online) {
		o->conn = s->cx.conn;
		o->will_flag = s->cx.will_flag;
		o->will_qos = s->cx.will_qos;
		o->will_retain = s->cx.will_retain;
		copy_str(o->will_topic, sizeof(o->will_topic), s->cx.will_topic,
			 s->cx.will_topic_len);
		copy_str(o->will_payload, sizeof(o->will_payload), s->cx.will_payload,
			 s->cx.will_payload_len);
		o->cx_expiry = s->cx.session_expiry;
		o->will_delay = s->cx.will_delay;
		copy_str(o->will_props, sizeof(o->will_props), s->cx.will_props,
			 s->cx.will_props_len);
	}
	if (s->pending) {
		o->pend_conn = s->pend.conn;
		copy_str(o->pend_user, sizeof(o->pend_user), s->pend.user, s->pend.user_len);
		o->pend_token = s->pend_token.on;
		copy_str(o->pend_token_rules, sizeof(o->pend_token_rules), s->pend_token.rules,
			 s->pend_token.len);
	}
}

static void got_sub(void *arg, uint32_t sid, const char *filter, uint16_t len, uint8_t qos,
		    uint32_t sub_id)
{
	struct got *g = arg;

	assert_true(g->nsub < 8);
	g->sub[g->nsub].sid = sid;
	copy_str(g->sub[g->nsub].filter, sizeof(g->sub[0].filter), filter, len);
	g->sub[g->nsub].sub_id = sub_id;
	g->sub[g->nsub++].qos = qos;
}

static void got_queued(void *arg, uint32_t sid, uint64_t order, const struct store_msg *m)
{
	struct got *g = arg;
	struct got_msg *o = &g->q[g->nq++];

	assert_true(g->nq <= 16);
	o->sid = sid;
	o->order = order;
	o->packet_id = m->packet_id;
	o->state = m->state;
	o->at_worker = m->at_worker;
	o->qos = m->qos;
	o->retain = m->retain;
	copy_str(o->topic, sizeof(o->topic), m->topic, m->topic_len);
	copy_str(o->payload, sizeof(o->payload), m->payload, m->payload_len);
	copy_str(o->props, sizeof(o->props), m->v5.props, m->v5.props_len);
	o->expires_at = m->v5.expires_at;
	o->n_sub_ids = m->n_sub_ids;
	assert_true(m->n_sub_ids <= REC_TARGET_SUB_IDS_MAX);
	if (m->n_sub_ids)
		memcpy(o->sub_ids, m->sub_ids, (size_t)m->n_sub_ids * sizeof(uint32_t));
}

static void got_retained(void *arg, const char *topic, uint16_t len, uint8_t qos,
			 const uint8_t *payload, uint32_t payload_len, const struct store_v5 *v5)
{
	struct got *g = arg;

	assert_true(g->nret < 8);
	copy_str(g->ret[g->nret].topic, sizeof(g->ret[0].topic), topic, len);
	copy_str(g->ret[g->nret].payload, sizeof(g->ret[0].payload), payload, payload_len);
	copy_str(g->ret[g->nret].props, sizeof(g->ret[0].props), v5->props, v5->props_len);
	g->ret[g->nret].expires_at = v5->expires_at;
	g->ret[g->nret++].qos = qos;
}

static void got_held(void *arg, uint64_t seq, uint16_t type, const void *data, uint32_t len)
{
	struct got *g = arg;

	assert_true(g->nheld < 8);
	g->held[g->nheld].seq = seq;
	g->held[g->nheld].type = type;
	copy_str(g->held[g->nheld++].data, sizeof(g->held[0].data), data, len);
}

static struct got *read_all(struct store *st)
{
	struct got *g = calloc(1, sizeof(*g));

	assert_non_null(g);
	assert_int_equal(store_each_session(st, got_session, g), 0);
	assert_int_equal(store_each_sub(st, got_sub, g), 0);
	assert_int_equal(store_each_queued(st, got_queued, g), 0);
	assert_int_equal(store_each_retained(st, got_retained, g), 0);
	return g;
}

/* ---- writing ------------------------------------------------------------ */

/*
 * Sessions are written with a user name of "user-<client id>" and token's
 * rules "tok-<client id>"; the waiting CONNECT's are "next" and "ptok".
 */
#define PUT_USER(id) "user-" id
#define PUT_TOKEN(id) "tok-" id
#define PEND_TOKEN "ptok"

static const uint16_t IDS[] = { 7, 300, 65535 };

/* The session put_session writes; user and token: room for its user name and rules (64 each). */
static struct store_session session_of(uint32_t sid, const char *id, bool clean, uint64_t conn,
				       uint64_t pend_conn, char *user, char *token)
{
	struct store_session s = {
		.sid = sid,
		.clean = clean,
		.client_id = id,
		.client_id_len = (uint16_t)strlen(id),
		.remote = "127.0.0.1:5000",
		.last_seen_ms = 1234,
		.qos2_ids = IDS,
		.n_qos2_ids = 3,
		.online = conn != 0,
		.pending = pend_conn != 0,
		.user = user,
		.user_len = (uint16_t)snprintf(user, 64, "user-%s", id),
		.token = { true, (const uint8_t *)token, (uint32_t)snprintf(token, 64, "tok-%s", id) },
		.pend_token = { true, (const uint8_t *)PEND_TOKEN, 4 },
	};

	s.cx = (struct store_connect){
		.conn = conn, .clean = clean, .will_flag = true, .will_qos = 1, .will_retain = 1,
		.keepalive = 30, .remote = "127.0.0.1:5000", .will_topic = "gone/x",
		.will_topic_len = 6, .will_payload = (const uint8_t *)"bye", .will_payload_len = 3,
	};
	s.pend = (struct store_connect){ .conn = pend_conn, .remote = "10.0.0.1:1", .user = "next",
					 .user_len = 4 };
	return s;
}

static void put_session(struct store *st, uint32_t sid, const char *id, bool clean, uint64_t conn,
			uint64_t pend_conn)
{
	char user[64], token[64];
	struct store_session s = session_of(sid, id, clean, conn, pend_conn, user, token);

	store_session_put(st, &s);
}

static void put_msg(struct store *st, uint32_t sid, uint64_t order, const char *topic,
		    const char *payload)
{
	struct store_msg m = {
		.packet_id = (uint16_t)order, .state = MSG_QUEUED, .qos = 1, .retain = 0,
		.topic = topic, .topic_len = (uint16_t)strlen(topic),
		.payload = (const uint8_t *)payload, .payload_len = (uint32_t)strlen(payload),
	};

	store_queue_put(st, sid, order, &m);
}

static void put_retained(struct store *st, const char *topic, const char *payload)
{
	store_retained_put(st, topic, (uint16_t)strlen(topic), 1, (const uint8_t *)payload,
			   (uint32_t)strlen(payload), NULL);
}

/* A topic longer than an LMDB key: 'len' bytes of 'fill' ending in 'tail'. */
static char *long_topic(size_t len, char fill, const char *tail)
{
	char *t = malloc(len + 1);

	assert_non_null(t);
	memset(t, fill, len);
	memcpy(t + len - strlen(tail), tail, strlen(tail));
	t[len] = '\0';
	return t;
}

/* ---- tests -------------------------------------------------------------- */

static void everything_written_comes_back_after_reopen(void **state)
{
	struct fx *f = *state;
	char *lt1 = long_topic(900, 'a', "/one"), *lt2 = long_topic(900, 'a', "/two");
	struct got *g;
	uint64_t v;

	open_ok(f);
	put_session(f->st, 1, "alpha", false, 0x0100000100010001ull, 0x0000000100020001ull);
	put_session(f->st, 2, "beta", false, 0, 0);
	store_sub_put(f->st, 1, "a/+/c", 5, 1, 0);
	store_sub_put(f->st, 1, lt1, 900, 2, 0);
	store_sub_put(f->st, 1, lt2, 900, 0, 0);
	store_sub_put(f->st, 2, "#", 1, 2, 0);
	put_msg(f->st, 2, 5, "t/1", "five");
	put_msg(f->st, 2, 3, "t/1", "three");
	put_retained(f->st, "r/1", "one");
	put_retained(f->st, lt1, "long one");
	put_retained(f->st, lt2, "long two");
	store_meta_put(f->st, "next_sid", 3);
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);

	g = read_all(f->st);
	assert_int_equal(g->ns, 2);
	assert_int_equal(g->s[0].sid, 1);
	assert_string_equal(g->s[0].client_id, "alpha");
	assert_false(g->s[0].clean);
	assert_true(g->s[0].online);
	assert_int_equal(g->s[0].conn, 0x0100000100010001ull);
	assert_true(g->s[0].pending);
	assert_int_equal(g->s[0].pend_conn, 0x0000000100020001ull);
	assert_true(g->s[0].will_flag);
	assert_int_equal(g->s[0].will_qos, 1);
	assert_int_equal(g->s[0].will_retain, 1);
	assert_string_equal(g->s[0].will_topic, "gone/x");
	assert_string_equal(g->s[0].will_payload, "bye");
	assert_string_equal(g->s[0].remote, "127.0.0.1:5000");
	assert_int_equal(g->s[0].last_seen, 1234);
	assert_int_equal(g->s[0].n_ids, 3);
	assert_memory_equal(g->s[0].ids, IDS, sizeof(IDS));
	assert_false(g->s[1].online);
	assert_false(g->s[1].pending);
	/* User names (format 3): the session's, online or not, and the waiting CONNECT's. */
	assert_string_equal(g->s[0].user, PUT_USER("alpha"));
	assert_string_equal(g->s[0].pend_user, "next");
	assert_string_equal(g->s[1].user, PUT_USER("beta"));
	/* Tokens' rules (format 4): the session's, and the waiting CONNECT's. */
	assert_true(g->s[0].token);
	assert_string_equal(g->s[0].token_rules, PUT_TOKEN("alpha"));
	assert_true(g->s[0].pend_token);
	assert_string_equal(g->s[0].pend_token_rules, PEND_TOKEN);
	assert_true(g->s[1].token);
	assert_string_equal(g->s[1].token_rules, PUT_TOKEN("beta"));

	assert_int_equal(g->nsub, 4);
	assert_int_equal(g->sub[0].sid, 1);
	assert_string_equal(g->sub[0].filter, "a/+/c");
	/* Two long filters sharing their first 400 bytes stay two. */
	assert_string_equal(g->sub[1].filter, lt1);
	assert_int_equal(g->sub[1].qos, 2);
	assert_string_equal(g->sub[2].filter, lt2);
	assert_int_equal(g->sub[2].qos, 0);
	assert_int_equal(g->sub[3].sid, 2);

	/* The queue comes back in order, not in the order it was written. */
	assert_int_equal(g->nq, 2);
	assert_int_equal(g->q[0].order, 3);
	assert_string_equal(g->q[0].payload, "three");
	assert_int_equal(g->q[1].order, 5);
	assert_int_equal(g->q[1].qos, 1);
	assert_string_equal(g->q[1].topic, "t/1");

	assert_int_equal(g->nret, 3);
	assert_string_equal(g->ret[0].topic, lt1);
	assert_string_equal(g->ret[0].payload, "long one");
	assert_string_equal(g->ret[1].topic, lt2);
	assert_string_equal(g->ret[2].topic, "r/1");
	assert_int_equal(g->ret[2].qos, 1);

	assert_true(store_meta_get(f->st, "next_sid", &v));
	assert_int_equal(v, 3);
	assert_false(store_meta_get(f->st, "tail/0", &v));
	free(g);
	free(lt1);
	free(lt2);
}

static void uncommitted_changes_are_lost_like_in_a_crash(void **state)
{
	struct fx *f = *state;
	struct got *g;

	open_ok(f);
	put_retained(f->st, "kept", "1");
	assert_int_equal(store_commit(f->st), 0);
	put_retained(f->st, "lost", "2");
	put_session(f->st, 9, "lost", true, 0, 0);
	store_abort(f->st);
	put_retained(f->st, "also-lost", "3");
	reopen(f);                      /* closing aborts too */

	g = read_all(f->st);
	assert_int_equal(g->ns, 0);
	assert_int_equal(g->nret, 1);
	assert_string_equal(g->ret[0].topic, "kept");
	free(g);
}

/*
 * A session goes with its subscriptions; its queued messages, which are no
 * key range of its own (format 8), go one by one.
 */
static void deletes_remove_sessions_with_their_subscriptions_and_queue(void **state)
{
	struct fx *f = *state;
	char *lt = long_topic(700, 'z', "/x");
	struct got *g;

	open_ok(f);
	put_session(f->st, 1, "one", false, 0, 0);
	put_session(f->st, 2, "two", false, 0, 0);
	store_sub_put(f->st, 1, "a", 1, 0, 0);
	store_sub_put(f->st, 1, lt, 700, 1, 0);
	store_sub_put(f->st, 2, "b", 1, 1, 0);
	store_sub_put(f->st, 2, lt, 700, 1, 0);
	put_msg(f->st, 1, 1, "a", "x");
	put_msg(f->st, 2, 1, "b", "y");
	put_msg(f->st, 2, 2, "b", "z");
	assert_int_equal(store_commit(f->st), 0);

	store_session_del(f->st, 1);
	store_queue_del(f->st, 1, 1);
	store_sub_del(f->st, 2, lt, 700);
	store_sub_del(f->st, 2, "nope", 4);         /* absent: nothing happens */
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);
	g = read_all(f->st);
	assert_int_equal(g->ns, 1);
	assert_int_equal(g->s[0].sid, 2);
	assert_int_equal(g->nsub, 1);
	assert_string_equal(g->sub[0].filter, "b");
	assert_int_equal(g->nq, 2);
	assert_int_equal(g->q[0].sid, 2);
	store_queue_del(f->st, 2, g->q[0].order);
	store_queue_del(f->st, 2, g->q[1].order);
	free(g);

	assert_int_equal(store_commit(f->st), 0);
	g = read_all(f->st);
	assert_int_equal(g->nq, 0);
	assert_int_equal(g->ns, 1);
	free(g);
	free(lt);
}

static void retained_messages_are_replaced_and_cleared(void **state)
{
	struct fx *f = *state;
	char *lt1 = long_topic(1000, 'q', "/1"), *lt2 = long_topic(1000, 'q', "/2");
	struct got *g;

	open_ok(f);
	put_retained(f->st, "a", "first");
	put_retained(f->st, "a", "second");
	put_retained(f->st, lt1, "L1");
	put_retained(f->st, lt2, "L2");
	put_retained(f->st, lt1, "L1 again");
	assert_int_equal(store_commit(f->st), 0);
	g = read_all(f->st);
	assert_int_equal(g->nret, 3);
	assert_string_equal(g->ret[0].payload, "second");
	assert_string_equal(g->ret[1].payload, "L1 again");
	assert_string_equal(g->ret[2].payload, "L2");
	free(g);

	store_retained_del(f->st, lt1, 1000);
	store_retained_del(f->st, "a", 1);
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);
	g = read_all(f->st);
	assert_int_equal(g->nret, 1);
	assert_string_equal(g->ret[0].topic, lt2);
	free(g);
	free(lt1);
	free(lt2);
}

static void ring_positions_and_held_records_are_kept_per_ring(void **state)
{
	struct fx *f = *state;
	struct got g = { 0 };
	uint64_t v;

	open_ok(f);
	store_meta_put(f->st, "tail/0", 4096);
	store_meta_put(f->st, "head/1", 1u << 20);
	store_outbox_put(f->st, 1, 7, REC_DELIVER, "seven", 5);
	store_outbox_put(f->st, 1, 8, REC_KICK, "eight", 5);
	store_outbox_put(f->st, 0, 1, REC_CONNACK, "zero", 4);
	store_outbox_put(f->st, 2, 1, REC_SUBACK, "two", 3);
	assert_int_equal(store_commit(f->st), 0);
	store_outbox_del(f->st, 1, 7);
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);

	assert_true(store_meta_get(f->st, "tail/0", &v));
	assert_int_equal(v, 4096);
	assert_true(store_meta_get(f->st, "head/1", &v));
	assert_int_equal(v, 1u << 20);
	assert_int_equal(store_each_outbox(f->st, 1, got_held, &g), 0);
	assert_int_equal(g.nheld, 1);
	assert_int_equal(g.held[0].seq, 8);
	assert_int_equal(g.held[0].type, REC_KICK);
	assert_string_equal(g.held[0].data, "eight");
	g.nheld = 0;
	assert_int_equal(store_each_outbox(f->st, 3, got_held, &g), 0);
	assert_int_equal(g.nheld, 0);

	store_outbox_clear(f->st);
	assert_int_equal(store_commit(f->st), 0);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(store_each_outbox(f->st, i, got_held, &g), 0);
	assert_int_equal(g.nheld, 0);
}

static void new_daemon_keeps_persistent_sessions_offline_only(void **state)
{
	struct fx *f = *state;
	struct got *g, held = { 0 };
	uint64_t v;

	open_ok(f);
	assert_int_equal(store_new_daemon(f->st, "boot/1/100", true), 0);
	assert_true(store_same_daemon(f->st, "boot/1/100"));
	put_session(f->st, 1, "persistent-online", false, 0x0100000100010001ull,
		    0x0000000100020001ull);
	put_session(f->st, 2, "persistent-offline", false, 0, 0);
	put_session(f->st, 3, "clean-online", true, 0x0100000100030001ull, 0);
	store_sub_put(f->st, 1, "p/1", 3, 1, 0);
	store_sub_put(f->st, 3, "c/3", 3, 1, 0);
	put_msg(f->st, 2, 1, "t", "kept");
	put_msg(f->st, 3, 1, "t", "gone");
	put_retained(f->st, "r", "stays");
	store_meta_put(f->st, "tail/0", 64);
	store_meta_put(f->st, "head/0", 128);
	store_meta_put(f->st, "next_sid", 4);
	store_outbox_put(f->st, 0, 1, REC_DELIVER, "x", 1);
	assert_int_equal(store_commit(f->st), 0);

	/* The daemon restarts: another identity claims the store. */
	reopen(f);
	assert_false(store_same_daemon(f->st, "boot/2/100"));
	assert_int_equal(store_new_daemon(f->st, "boot/2/100", true), 0);
	assert_true(store_same_daemon(f->st, "boot/2/100"));
	reopen(f);
	g = read_all(f->st);
	assert_int_equal(g->ns, 2);
	assert_int_equal(g->s[0].sid, 1);
	assert_false(g->s[0].online);           /* no will kept, no waiting CONNECT */
	assert_false(g->s[0].pending);
	assert_int_equal(g->s[0].last_seen, STORE_SEEN_UNKNOWN);
	assert_int_equal(g->s[0].n_ids, 3);     /* the QoS 2 exchanges are still owed */
	assert_string_equal(g->s[0].user, PUT_USER("persistent-online")); /* for its view of the ACL */
	assert_int_equal(g->s[1].sid, 2);
	assert_int_equal(g->s[1].last_seen, STORE_SEEN_UNKNOWN);
	assert_int_equal(g->nsub, 1);
	assert_string_equal(g->sub[0].filter, "p/1");
	assert_int_equal(g->nq, 1);
	assert_string_equal(g->q[0].payload, "kept");
	assert_int_equal(g->nret, 1);
	assert_false(store_meta_get(f->st, "tail/0", &v));
	assert_false(store_meta_get(f->st, "head/0", &v));
	assert_true(store_meta_get(f->st, "next_sid", &v));   /* sids are never reused */
	assert_int_equal(v, 4);
	assert_int_equal(store_each_outbox(f->st, 0, got_held, &held), 0);
	assert_int_equal(held.nheld, 0);
	free(g);
}

static void new_daemon_of_a_memory_store_starts_empty(void **state)
{
	struct fx *f = *state;
	struct got *g;

	open_ok(f);
	put_session(f->st, 1, "p", false, 0, 0);
	store_sub_put(f->st, 1, "p/1", 3, 1, 0);
	put_msg(f->st, 1, 1, "t", "x");
	put_retained(f->st, "r", "x");
	assert_int_equal(store_commit(f->st), 0);
	assert_int_equal(store_new_daemon(f->st, "other", false), 0);
	g = read_all(f->st);
	assert_int_equal(g->ns + g->nsub + g->nq + g->nret, 0);
	free(g);
}

/* The size of a value of database db, read behind iotd's back. */
static size_t value_size(struct fx *f, const char *db, const void *key, size_t klen)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = { klen, (void *)key }, v;
	size_t n;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK | MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	n = v.mv_size;
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return n;
}

/*
 * Make a closed store's queue what format 7 and older wrote: every queued
 * message moved from "messages" (key: order, sid) to "queue" (key: sid,
 * order), behind iotd's back.
 */
static void queue_as_format7(struct fx *f)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi msgs, queue;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "messages", 0, &msgs), 0);
	assert_int_equal(mdb_dbi_open(txn, "queue", MDB_CREATE, &queue), 0);
	assert_int_equal(mdb_cursor_open(txn, msgs, &cur), 0);
	while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
		uint8_t old[12];
		MDB_val ok = { sizeof(old), old };

		assert_int_equal(k.mv_size, 12);
		memcpy(old, (const uint8_t *)k.mv_data + 8, 4);
		memcpy(old + 4, k.mv_data, 8);
		assert_int_equal(mdb_put(txn, queue, &ok, &v, 0), 0);
		assert_int_equal(mdb_cursor_del(cur, 0), 0);
	}
	assert_int_equal(rc, MDB_NOTFOUND);
	mdb_cursor_close(cur);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* Is there a database of this name in the closed store? */
static bool has_db(struct fx *f, const char *db)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	int rc;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK | MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	rc = mdb_dbi_open(txn, db, 0, &dbi);
	assert_true(rc == 0 || rc == MDB_NOTFOUND);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return rc == 0;
}

/* Write a format number into a closed store, behind iotd's back. */
static void set_format(struct fx *f, uint64_t format)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi meta;
	MDB_val k = { 6, "format" }, v = { sizeof(format), &format };

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	assert_int_equal(mdb_put(txn, meta, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* Mark the closed store as written by format, open it: it is marked current. */
static void reopen_upgraded_from(struct fx *f, uint64_t format)
{
	uint64_t now = 0;

	set_format(f, format);
	open_ok(f);
	assert_true(store_meta_get(f->st, "format", &now));
	assert_int_equal(now, STORE_FORMAT);
}

static void newer_format_is_refused(void **state)
{
	struct fx *f = *state;
	char err[512] = "";

	open_ok(f);
	store_close(&f->st);
	set_format(f, STORE_FORMAT + 1);
	assert_null(store_open(f->path, STORE_DISK, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "newer than this iotd"));
}

/* Format 1 (no copies) is read as it is and marked current, so an older iotd refuses it. */
static void older_format_is_read_and_upgraded(void **state)
{
	struct fx *f = *state;
	struct got g = { 0 };

	open_ok(f);
	put_session(f->st, 3, "dev", false, 0, 0);
	put_msg(f->st, 3, 1, "t", "kept");
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	queue_as_format7(f);
	reopen_upgraded_from(f, STORE_FORMAT_OLDEST);
	assert_int_equal(store_each_queued(f->st, got_queued, &g), 0);
	assert_int_equal(g.nq, 1);
	assert_string_equal(g.q[0].payload, "kept");
}

/*
 * Format 5 keeps a subscription's MQTT 5 options in the byte that held
 * its QoS: a format 4 subscription reads as its QoS with no option, and
 * the options byte of a format 5 one comes back whole, with a format 6
 * one's subscription identifier.
 */
static void format_4_subscription_reads_as_its_qos_without_options(void **state)
{
	struct fx *f = *state;
	struct got *g;

	open_ok(f);
	put_session(f->st, 3, "dev", false, 0, 0);
	store_sub_put(f->st, 3, "old/+", 5, 2, 0);
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	reopen_upgraded_from(f, 4);
	store_sub_put(f->st, 3, "new/#", 5, 0x2d, 0);   /* QoS 1, no local, retain as published, RH 2 */
	store_sub_put(f->st, 3, "sid/#", 5, 1, 268435455);
	assert_int_equal(store_commit(f->st), 0);
	g = read_all(f->st);
	assert_int_equal(g->nsub, 3);
	for (size_t i = 0; i < g->nsub; i++) {
		bool old = strcmp(g->sub[i].filter, "old/+") == 0;
		bool sid = strcmp(g->sub[i].filter, "sid/#") == 0;

		assert_int_equal(g->sub[i].qos, old ? 2 : sid ? 1 : 0x2d);
		/* Format 6: the identifier, when there is one, after the options. */
		assert_int_equal(g->sub[i].sub_id, sid ? 268435455 : 0);
	}
	free(g);
}

/* Cut n bytes off the end of a value of database db, behind iotd's back. */
static void cut_value(struct fx *f, const char *db, const void *key, size_t klen, size_t n)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = { klen, (void *)key }, v;
	uint8_t buf[1024];

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	assert_true(v.mv_size > n && v.mv_size <= sizeof(buf));
	memcpy(buf, v.mv_data, v.mv_size);
	v = (MDB_val){ v.mv_size - n, buf };
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/*
 * Format 8 keys queued messages by queue order, then session: a format 7
 * store's "queue" (keys by session, then order) is moved into "messages"
 * as it is opened, each message whole, and read back in queue order
 * across sessions (the messages a closing connection owed, without
 * ROUTER_ORDER_QUEUED's high bit, first). A new one is appended after.
 */
static void format_7_queues_are_moved_into_queue_order(void **state)
{
	const uint64_t queued = UINT64_C(1) << 63;
	struct fx *f = *state;
	struct got *g;

	open_ok(f);
	put_session(f->st, 3, "three", false, 0, 0);
	put_session(f->st, 4, "four", false, 0, 0);
	put_msg(f->st, 3, queued | 1, "t/3", "a");
	put_msg(f->st, 4, queued | 2, "t/4", "b");
	put_msg(f->st, 3, queued | 4, "t/3", "d");
	put_msg(f->st, 4, 3, "t/4", "owed");
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	queue_as_format7(f);
	reopen_upgraded_from(f, 7);
	g = read_all(f->st);
	assert_int_equal(g->nq, 4);
	assert_int_equal(g->q[0].sid, 4);
	assert_string_equal(g->q[0].payload, "owed");
	assert_int_equal(g->q[1].sid, 3);
	assert_int_equal(g->q[1].order, queued | 1);
	assert_string_equal(g->q[1].topic, "t/3");
	assert_string_equal(g->q[1].payload, "a");
	assert_int_equal(g->q[2].sid, 4);
	assert_string_equal(g->q[2].payload, "b");
	assert_int_equal(g->q[3].order, queued | 4);
	free(g);
	store_queue_del(f->st, 3, queued | 1);
	put_msg(f->st, 3, queued | 5, "t/3", "e");
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	assert_false(has_db(f, "queue"));
	open_ok(f);
	g = read_all(f->st);
	assert_int_equal(g->nq, 4);
	assert_string_equal(g->q[1].payload, "b");
	assert_string_equal(g->q[3].payload, "e");
	free(g);
}

#define V5_PROPS "\x05\x03\x00\x02ct"    /* a property block: content type "ct" */

/*
 * Format 6 keeps an MQTT 5 message's properties and expiry with queued and
 * retained messages: a format 5 queued message (its value ends before
 * them) and retained message (its qos byte without STORE_RETAINED_V5)
 * read as messages without them, and format 6 ones come back whole.
 */
static void format_5_messages_read_as_without_properties(void **state)
{
	static const uint8_t qkey[12] = { 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1 };
	const struct store_v5 v5 = { (const uint8_t *)V5_PROPS, 6, 1700000000123ull };
	struct store_msg m = {
		.packet_id = 2, .state = MSG_QUEUED, .qos = 1, .topic = "t", .topic_len = 1,
		.payload = (const uint8_t *)"new", .payload_len = 3, .v5 = v5,
	};
	struct fx *f = *state;
	struct got *g;

	open_ok(f);
	put_session(f->st, 3, "dev", false, 0, 0);
	put_msg(f->st, 3, 1, "t", "old");
	put_retained(f->st, "r/old", "plain");
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	queue_as_format7(f);
	/* A message with neither is written as format 5 wrote it: no expiry, no counted block. */
	assert_int_equal(value_size(f, "queue", qkey, sizeof(qkey)), 2 + 1 + 1 + 1 + (2 + 1) + (4 + 3));
	reopen_upgraded_from(f, 5);
	store_queue_put(f->st, 3, 2, &m);
	store_retained_put(f->st, "r/new", 5, 1, (const uint8_t *)"five", 4, &v5);
	assert_int_equal(store_commit(f->st), 0);
	g = read_all(f->st);
	assert_int_equal(g->nq, 2);
	assert_string_equal(g->q[0].payload, "old");
	assert_string_equal(g->q[0].props, "");
	assert_true(g->q[0].expires_at == 0);
	assert_string_equal(g->q[1].payload, "new");
	assert_memory_equal(g->q[1].props, V5_PROPS, 6);
	assert_true(g->q[1].expires_at == v5.expires_at);
	assert_int_equal(g->nret, 2);
	for (size_t i = 0; i < 2; i++) {
		bool v5_one = strcmp(g->ret[i].topic, "r/new") == 0;

		assert_int_equal(g->ret[i].qos, 1);
		assert_string_equal(g->ret[i].payload, v5_one ? "five" : "plain");
		assert_true(g->ret[i].expires_at == (v5_one ? v5.expires_at : 0));
		if (v5_one)
			assert_memory_equal(g->ret[i].props, V5_PROPS, 6);
		else
			assert_string_equal(g->ret[i].props, "");
	}
	free(g);
}

/*
 * Format 7 keeps a queued message's subscription identifiers, only when
 * it has some: a message without any is written as format 6 wrote it (a
 * format 6 value reads as one without), one with them comes back whole,
 * and a value shorter than its count says is damaged, skipped. One with
 * no expiry, properties nor identifiers is written as format 5 wrote it.
 */
static void format_6_messages_read_as_without_sub_ids(void **state)
{
	/* Format 6's keys are sid + order (moved as the store is opened), format 8's order + sid. */
	static const uint8_t k1[12] = { 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1 };
	static const uint8_t k2[12] = { 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3 };
	static const uint8_t k7[12] = { 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 7 };
	static const uint32_t ids[2] = { 9, 268435455 };
	const struct store_msg old = {
		.packet_id = 1, .state = MSG_QUEUED, .qos = 1, .topic = "t", .topic_len = 1,
		.payload = (const uint8_t *)"old", .payload_len = 3,
		.v5 = { .expires_at = 1700000000123ull },
	};
	struct store_msg m = {
		.packet_id = 2, .state = MSG_INFLIGHT, .qos = 2, .topic = "t", .topic_len = 1,
		.payload = (const uint8_t *)"ids", .payload_len = 3,
		.n_sub_ids = 2, .sub_ids = ids,
	};
	/* packet id, state, qos, retain, topic, payload, expiry, counted properties */
	const size_t format6 = 2 + 1 + 1 + 1 + (2 + 1) + (4 + 3) + 8 + 4;
	struct fx *f = *state;
	struct got *g;

	open_ok(f);
	put_session(f->st, 3, "dev", false, 0, 0);
	store_queue_put(f->st, 3, 1, &old);
	put_msg(f->st, 3, 7, "t", "new");
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	queue_as_format7(f);
	assert_int_equal(value_size(f, "queue", k1, sizeof(k1)), format6);
	assert_int_equal(value_size(f, "queue", k7, sizeof(k7)), format6 - 8 - 4);
	reopen_upgraded_from(f, 6);
	store_queue_put(f->st, 3, 2, &m);
	assert_int_equal(store_commit(f->st), 0);
	g = read_all(f->st);
	assert_int_equal(g->nq, 3);
	assert_string_equal(g->q[0].payload, "old");
	assert_int_equal(g->q[0].n_sub_ids, 0);
	assert_true(g->q[0].expires_at == old.v5.expires_at);
	assert_string_equal(g->q[2].payload, "new");
	assert_true(g->q[2].expires_at == 0);
	assert_int_equal(g->q[2].n_sub_ids, 0);
	assert_string_equal(g->q[1].payload, "ids");
	assert_int_equal(g->q[1].state, MSG_INFLIGHT);
	assert_int_equal(g->q[1].n_sub_ids, 2);
	assert_int_equal(g->q[1].sub_ids[0], 9);
	assert_int_equal(g->q[1].sub_ids[1], 268435455);
	free(g);
	store_close(&f->st);
	assert_int_equal(value_size(f, "messages", k2, sizeof(k2)), format6 + 1 + 2 * 4);

	/* A count the value does not hold: damaged, skipped. */
	open_ok(f);
	store_queue_put(f->st, 3, 2, &(struct store_msg){ .qos = 1, .topic = "t", .topic_len = 1,
							  .n_sub_ids = 1, .sub_ids = ids });
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	cut_value(f, "messages", k2, sizeof(k2), 4);
	open_ok(f);
	g = read_all(f->st);
	assert_int_equal(g->nq, 2);
	assert_string_equal(g->q[0].payload, "old");
	assert_string_equal(g->q[1].payload, "new");
	free(g);
}

/*
 * Change session sid's value behind iotd's back: with value, replace it by
 * its first len bytes; else cut n bytes off its end. Then, when back is
 * not 0, set the byte back bytes from the new end to poke.
 */
static void edit_session_value(struct fx *f, uint32_t sid, const uint8_t *value, size_t len,
			       size_t n, size_t back, uint8_t poke)
{
	uint8_t kb[4] = { (uint8_t)(sid >> 24), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8), (uint8_t)sid };
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi sessions;
	MDB_val k = { 4, kb }, v;
	uint8_t buf[1024];

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "sessions", 0, &sessions), 0);
	if (!value) {
		assert_int_equal(mdb_get(txn, sessions, &k, &v), 0);
		assert_true(v.mv_size > n);
		value = v.mv_data;
		len = v.mv_size - n;
	}
	assert_true(len > 0 && len <= sizeof(buf));
	memcpy(buf, value, len);
	v = (MDB_val){ len, buf };
	assert_true(back <= v.mv_size);
	if (back)
		buf[v.mv_size - back] = poke;
	assert_int_equal(mdb_put(txn, sessions, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

static void change_session_value(struct fx *f, uint32_t sid, size_t n, size_t back, uint8_t poke)
{
	edit_session_value(f, sid, NULL, 0, n, back, poke);
}

/* Write s as format 7 did, less its last cut bytes, into the closed store, then poke as above. */
static void put_session_format7(struct fx *f, const struct store_session *s, size_t cut,
				size_t back, uint8_t poke)
{
	struct recw w;

	recw_init(&w);
	store_session_encode7(&w, s);
	assert_false(w.oom);
	assert_true(w.len > cut);
	edit_session_value(f, s->sid, w.buf, w.len - cut, 0, back, poke);
	recw_free(&w);
}


/* What a format 4 value spends on a token with these rules: its flag, then the counted rules. */
#define TOKEN_BYTES(rules) (1 + 4 + strlen(rules))
/* What format 6 adds to a session holding no will, with n CONNECTs without will properties. */
#define FORMAT6_BYTES(n) (4 + 1 + 16 * (n))

/*
 * Sessions "on" (online, with a waiting CONNECT) and "off" as an older
 * format wrote them: their values without the last on_cut and off_cut
 * bytes, the store marked that format. What the store, opened again and
 * marked current, gives back.
 */
static struct got *two_sessions_of_format(struct fx *f, uint64_t format, size_t on_cut,
					  size_t off_cut)
{
	char user[2][64], token[2][64];
	struct store_session on = session_of(1, "on", false, 0x0100000100010001ull,
					     0x0000000100020001ull, user[0], token[0]);
	struct store_session off = session_of(2, "off", false, 0, 0, user[1], token[1]);
	struct got *g;

	open_ok(f);
	store_session_put(f->st, &on);
	store_session_put(f->st, &off);
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	put_session_format7(f, &on, on_cut, 0, 0);
	put_session_format7(f, &off, off_cut, 0, 0);
	reopen_upgraded_from(f, format);
	g = read_all(f->st);
	assert_int_equal(g->ns, 2);
	assert_true(g->s[0].online);
	assert_true(g->s[0].pending);
	assert_string_equal(g->s[0].client_id, "on");
	assert_string_equal(g->s[0].will_payload, "bye");
	assert_string_equal(g->s[1].client_id, "off");
	return g;
}

/* Format 2 sessions (no user names, nor tokens, at the end) are read as sessions without them. */
static void format_2_sessions_read_as_without_user_names(void **state)
{
	struct got *g = two_sessions_of_format(*state, 2,
		2 + strlen(PUT_USER("on")) + 2 + strlen("next") + TOKEN_BYTES(PUT_TOKEN("on")) +
		TOKEN_BYTES(PEND_TOKEN) + FORMAT6_BYTES(2),
		2 + strlen(PUT_USER("off")) + TOKEN_BYTES(PUT_TOKEN("off")) + FORMAT6_BYTES(0));

	assert_string_equal(g->s[0].user, "");
	assert_string_equal(g->s[0].pend_user, "");
	assert_string_equal(g->s[1].user, "");
	assert_false(g->s[0].token);
	free(g);
}

/*
 * Format 3 sessions (no tokens at the end) are read as sessions whose
 * users came with no token's rules (no format 3 daemon stored any), their
 * user names kept.
 */
static void format_3_sessions_read_as_without_tokens(void **state)
{
	struct got *g = two_sessions_of_format(*state, 3,
		TOKEN_BYTES(PUT_TOKEN("on")) + TOKEN_BYTES(PEND_TOKEN) + FORMAT6_BYTES(2),
		TOKEN_BYTES(PUT_TOKEN("off")) + FORMAT6_BYTES(0));

	assert_string_equal(g->s[0].user, PUT_USER("on"));
	assert_string_equal(g->s[0].pend_user, "next");
	assert_false(g->s[0].token);
	assert_false(g->s[0].pend_token);
	assert_string_equal(g->s[1].user, PUT_USER("off"));
	assert_false(g->s[1].token);
	free(g);
}

/*
 * Format 5 sessions (no MQTT 5 part at the end) last as their clean flag
 * says: a persistent one, and its CONNECTs, for ever; none holds a will.
 */
static void format_5_sessions_read_as_lasting_as_their_clean_flag_says(void **state)
{
	struct got *g = two_sessions_of_format(*state, 5, FORMAT6_BYTES(2), FORMAT6_BYTES(0));

	assert_string_equal(g->s[0].user, PUT_USER("on"));
	assert_true(g->s[0].token);
	assert_int_equal(g->s[0].expiry, REC_EXPIRY_NEVER);
	assert_int_equal(g->s[0].cx_expiry, REC_EXPIRY_NEVER);
	assert_int_equal(g->s[1].expiry, REC_EXPIRY_NEVER);
	assert_false(g->s[1].will_held);
	free(g);
}

/* Format 7 sessions, the last of the older encoding, are read back whole. */
static void format_7_sessions_read_back_whole(void **state)
{
	struct got *g = two_sessions_of_format(*state, 7, 0, 0);

	assert_string_equal(g->s[0].user, PUT_USER("on"));
	assert_string_equal(g->s[0].pend_user, "next");
	assert_true(g->s[0].token);
	assert_true(g->s[0].pend_token);
	assert_string_equal(g->s[1].user, PUT_USER("off"));
	assert_true(g->s[1].token);
	free(g);
}

/*
 * Format 8 spends on an idle connection's session (online, no will, no
 * user name) its flags, counted strings and varints: 42 bytes here, where
 * format 7 spent 92.
 */
static void format_8_session_of_an_idle_connection_is_short(void **state)
{
	struct fx *f = *state;
	struct store_session s = {
		.sid = 1, .client_id = "ib1234-c1", .client_id_len = 9, .remote = "127.0.0.1:5000",
		.online = true, .user = "",
	};
	struct recw w;
	struct got *g;

	s.cx = (struct store_connect){ .conn = 0x0100000100010001ull, .keepalive = 60,
				       .remote = "127.0.0.1:5000" };
	open_ok(f);
	store_session_put(f->st, &s);
	assert_int_equal(store_commit(f->st), 0);
	store_close(&f->st);
	assert_int_equal(value_size(f, "sessions", "\0\0\0\1", 4), 42);
	recw_init(&w);
	store_session_encode7(&w, &s);
	assert_int_equal(w.len, 92);
	recw_free(&w);
	open_ok(f);
	g = read_all(f->st);
	assert_int_equal(g->ns, 1);
	assert_true(g->s[0].online);
	assert_string_equal(g->s[0].client_id, "ib1234-c1");
	free(g);
}

/* Format 6: a session's interval, its CONNECT's MQTT 5 part, and a will held for its delay. */
static void session_expiry_and_held_will_round_trip(void **state)
{
	struct fx *f = *state;
	struct store_session s = {
		.sid = 8, .client_id = "w", .client_id_len = 1, .remote = "r", .expiry = 7,
		.online = true, .will_held = false,
	};
	struct got *g;

	s.cx = (struct store_connect){
		.conn = 0x0100000100010001ull, .will_flag = true, .remote = "r",
		.will_topic = "t", .will_topic_len = 1, .session_expiry = 7, .will_delay = 3,
		.will_props = (const uint8_t *)V5_PROPS, .will_props_len = 6,
	};
	open_ok(f);
	store_session_put(f->st, &s);
	s.sid = 9;
	s.online = false;
	s.will_held = true;
	s.will_at_ms = 1700000000999ull;
	s.will = s.cx;
	s.will.will_topic = "held";
	s.will.will_topic_len = 4;
	store_session_put(f->st, &s);
	assert_int_equal(store_commit(f->st), 0);
	g = read_all(f->st);
	assert_int_equal(g->ns, 2);
	assert_int_equal(g->s[0].expiry, 7);
	assert_int_equal(g->s[0].cx_expiry, 7);
	assert_int_equal(g->s[0].will_delay, 3);
	assert_memory_equal(g->s[0].will_props, V5_PROPS, 6);
	assert_false(g->s[0].will_held);
	assert_true(g->s[1].will_held);
	assert_true(g->s[1].will_at == 1700000000999ull);
	assert_string_equal(g->s[1].held_topic, "held");
	assert_memory_equal(g->s[1].held_props, V5_PROPS, 6);
	free(g);
}

/*
 * A token whose rules were lost stays a token without rules (the router
 * then allows its session nothing); a session of an earlier daemon keeps
 * its token; a token flag that is neither 0 nor 1 makes the value corrupt.
 */
static void tokens_without_rules_and_orphans_keep_their_mark(void **state)
{
	struct fx *f = *state;
	struct store_session s = {
		.sid = 5, .client_id = "lost", .client_id_len = 4, .remote = "r",
		.token = { true, NULL, 0 },
	};
	struct got *g;

	open_ok(f);
	store_session_put(f->st, &s);
	put_session(f->st, 6, "kept", false, 0x0100000100010001ull, 0);
	assert_int_equal(store_commit(f->st), 0);
	assert_int_equal(store_new_daemon(f->st, "another daemon", true), 0);
	g = read_all(f->st);
	assert_int_equal(g->ns, 2);
	assert_true(g->s[0].token);
	assert_string_equal(g->s[0].token_rules, "");
	assert_false(g->s[1].online);
	assert_true(g->s[1].token);
	assert_string_equal(g->s[1].token_rules, PUT_TOKEN("kept"));
	free(g);
	store_close(&f->st);
	/* Session 5's format 7 value ends with its token (the flag, then a u32 0: no rules), then format 6's. */
	put_session_format7(f, &s, 0, 5 + FORMAT6_BYTES(0), 2);
	open_ok(f);
	g = read_all(f->st);
	assert_int_equal(g->ns, 1);
	assert_int_equal(g->s[0].sid, 6);
	free(g);
	store_close(&f->st);
	/* A format 8 value whose first byte has a flag no format 8 sets is corrupt too. */
	change_session_value(f, 6, 0, value_size(f, "sessions", "\0\0\0\6", 4), 0xc0);
	open_ok(f);
	g = read_all(f->st);
	assert_int_equal(g->ns, 0);
	free(g);
}

/* A copy held for a worker keeps its mark and its state; one can be deleted alone. */
static void copies_keep_their_mark_and_go_one_by_one(void **state)
{
	struct fx *f = *state;
	struct got g = { 0 };
	struct store_msg m = {
		.packet_id = 9, .state = MSG_PUBREL, .qos = 2, .at_worker = true,
		.topic = "t", .topic_len = 1, .payload = (const uint8_t *)"", .payload_len = 0,
	};

	open_ok(f);
	put_session(f->st, 3, "dev", false, 0, 0);
	put_msg(f->st, 3, 1, "t", "one");
	store_queue_put(f->st, 3, 2, &m);
	put_msg(f->st, 3, 3, "t", "three");
	store_queue_del(f->st, 3, 1);
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);
	assert_int_equal(store_each_queued(f->st, got_queued, &g), 0);
	assert_int_equal(g.nq, 2);
	assert_int_equal(g.q[0].order, 2);
	assert_true(g.q[0].at_worker);
	assert_int_equal(g.q[0].state, MSG_PUBREL);
	assert_int_equal(g.q[0].packet_id, 9);
	assert_false(g.q[1].at_worker);
	assert_string_equal(g.q[1].payload, "three");
}

/*
 * A turn's deletes of queued messages are done at its commit, last first,
 * but they keep their place among the turn's other changes: a message
 * deleted and put again is there, one deleted is not read back in the
 * same turn, and an aborted turn deletes nothing.
 */
static void queue_deletes_keep_their_place_in_the_turn(void **state)
{
	struct fx *f = *state;
	struct got g = { 0 }, in_turn = { 0 };

	open_ok(f);
	put_session(f->st, 3, "dev", false, 0, 0);
	for (uint64_t i = 1; i <= 6; i++)
		put_msg(f->st, 3, i, "t", i == 2 ? "two" : "x");
	assert_int_equal(store_commit(f->st), 0);
	store_queue_del(f->st, 3, 9);              /* absent: nothing happens */
	store_queue_del(f->st, 3, 3);
	store_queue_del(f->st, 3, 1);
	store_queue_del(f->st, 3, 2);
	put_msg(f->st, 3, 2, "t", "two again");
	store_queue_del(f->st, 3, 5);
	assert_int_equal(store_each_queued(f->st, got_queued, &in_turn), 0);
	assert_int_equal(in_turn.nq, 3);
	store_queue_del(f->st, 3, 6);
	store_abort(f->st);
	store_queue_del(f->st, 3, 4);
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);
	assert_int_equal(store_each_queued(f->st, got_queued, &g), 0);
	assert_int_equal(g.nq, 5);
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(g.q[i].order, i + 1 < 4 ? i + 1 : i + 2);
	assert_string_equal(g.q[1].payload, "two");

	/* A whole long queue deleted in one turn. */
	put_session(f->st, 4, "long", false, 0, 0);
	for (uint64_t i = 100; i < 6100; i++)
		put_msg(f->st, 4, i, "t", "x");
	assert_int_equal(store_commit(f->st), 0);
	for (uint64_t i = 100; i < 6100; i++)
		store_queue_del(f->st, 4, i);
	assert_int_equal(store_commit(f->st), 0);
	memset(&g, 0, sizeof(g));
	assert_int_equal(store_each_queued(f->st, got_queued, &g), 0);
	assert_int_equal(g.nq, 5);
}

static void a_file_that_is_not_lmdb_is_refused(void **state)
{
	struct fx *f = *state;
	char file[160], junk[8192], err[512] = "";
	int fd;

	assert_int_equal(mkdir(f->path, 0700), 0);
	snprintf(file, sizeof(file), "%s/data.mdb", f->path);
	fd = open(file, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	memset(junk, 'j', sizeof(junk));
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	assert_null(store_open(f->path, STORE_DISK, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "not an iotd store"));
}

static void an_lmdb_environment_of_somebody_else_is_refused(void **state)
{
	struct fx *f = *state;
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = { 3, "key" }, v = { 5, "value" };
	char err[512] = "";

	assert_int_equal(mkdir(f->path, 0700), 0);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_open(env, f->path, MDB_NOLOCK, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	assert_null(store_open(f->path, STORE_DISK, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "not an iotd store"));
}

static void a_path_that_is_a_file_or_in_use_is_refused(void **state)
{
	struct fx *f = *state;
	char err[512] = "";
	int fd;

	open_ok(f);
	assert_null(store_open(f->path, STORE_DISK, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "in use by another iotd router"));
	store_close(&f->st);
	rm_rf(f->path);
	fd = open(f->path, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_null(store_open(f->path, STORE_DISK, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "not a directory"));
}

/* A map too small for what is written: the failure is contained, then repaired. */
static void a_failed_write_makes_the_store_stale_until_a_rewrite(void **state)
{
	struct fx *f = *state;
	char err[512] = "", topic[32];
	static uint8_t big[64 * 1024];
	struct got *g;
	int i;

	f->st = store_open(f->path, STORE_DISK, 1 << 20, err, sizeof(err));
	assert_non_null(f->st);
	put_retained(f->st, "small", "s");
	assert_int_equal(store_commit(f->st), 0);
	for (i = 0; i < 64 && !store_stale(f->st); i++) {
		snprintf(topic, sizeof(topic), "big/%d", i);
		store_retained_put(f->st, topic, (uint16_t)strlen(topic), 0, big, sizeof(big), NULL);
	}
	assert_true(store_stale(f->st));
	assert_int_equal(store_commit(f->st), -1);
	put_retained(f->st, "ignored", "while stale");
	assert_int_equal(store_commit(f->st), -1);

	/* The last good commit is intact. */
	g = read_all(f->st);
	assert_int_equal(g->nret, 1);
	free(g);

	assert_int_equal(store_resync_begin(f->st), 0);
	assert_false(store_stale(f->st));
	put_session(f->st, 5, "after", false, 0, 0);
	assert_int_equal(store_commit(f->st), 0);
	reopen(f);
	g = read_all(f->st);
	assert_int_equal(g->ns, 1);
	assert_int_equal(g->nret, 1);
	free(g);
}

static pid_t dead_pid(void)
{
	pid_t pid = fork();
	int status;

	assert_true(pid >= 0);
	if (pid == 0)
		_exit(0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return pid;
}

/* The directory a daemon of that pid would keep its memory store in, under root. */
static void memory_dir(char *dir, size_t len, const char *root, pid_t pid)
{
	char name[STORE_NAME_LEN];

	assert_int_equal(store_memory_name(name, sizeof(name), pid), 0);
	assert_int_equal(store_memory_dir(dir, len, root, name), 0);
}

static bool exists(const char *dir)
{
	struct stat sb;

	return lstat(dir, &sb) == 0;
}

/* 128 random bits in every name: nobody can guess the next one, the pid still reads. */
static void memory_store_names_cannot_be_guessed(void **state)
{
	char a[STORE_NAME_LEN], b[STORE_NAME_LEN], want[32];
	const char *hex;

	(void)state;
	assert_int_equal(store_memory_name(a, sizeof(a), 4242), 0);
	assert_int_equal(store_memory_name(b, sizeof(b), 4242), 0);
	snprintf(want, sizeof(want), "iotd-4242-");
	assert_memory_equal(a, want, strlen(want));
	hex = a + strlen(want);
	assert_int_equal(strlen(hex), 32);
	assert_int_equal(strspn(hex, "0123456789abcdef"), 32);
	assert_string_not_equal(a, b);
	assert_int_equal(store_memory_name(a, 20, 4242), -1);   /* never cut short */
}

/* The first router makes its directory: anything already under the name stops it. */
static void a_new_memory_store_refuses_what_is_there(void **state)
{
	struct fx *f = *state;
	char dir[160], link[160], err[512] = "";
	struct stat sb;

	memory_dir(dir, sizeof(dir), f->dir, getpid());
	assert_int_equal(store_memory_create(dir, err, sizeof(err)), 0);
	assert_int_equal(lstat(dir, &sb), 0);
	assert_true(S_ISDIR(sb.st_mode));
	assert_int_equal(sb.st_mode & 0777, 0700);
	/* A second creation under the same name (a planted directory, even one of ours). */
	assert_int_equal(store_memory_create(dir, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "already there"));
	/* A restarted router opens its predecessor's directory. */
	f->st = store_open(dir, STORE_MEMORY, MAP, err, sizeof(err));
	assert_non_null(f->st);
	store_close(&f->st);

	memory_dir(link, sizeof(link), f->dir, getpid());
	assert_int_equal(symlink(dir, link), 0);
	assert_int_equal(store_memory_create(link, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "already there"));
}

static void sweep_removes_only_stores_of_dead_daemons(void **state)
{
	struct fx *f = *state;
	pid_t dead = dead_pid(), dead_held = dead_pid(), dead_old = dead_pid();
	char d_dead[160], d_self[160], d_parent[160], d_held[160], d_old[160], d_other[160];
	char err[512];
	struct store *held;

	memory_dir(d_dead, sizeof(d_dead), f->dir, dead);
	f->st = store_open(d_dead, STORE_MEMORY, MAP, err, sizeof(err));
	assert_non_null(f->st);
	store_close(&f->st);
	memory_dir(d_self, sizeof(d_self), f->dir, getpid());
	assert_int_equal(mkdir(d_self, 0700), 0);
	memory_dir(d_parent, sizeof(d_parent), f->dir, getppid());
	assert_int_equal(mkdir(d_parent, 0700), 0);
	/* The name older versions used: a leftover of theirs is swept too. */
	snprintf(d_old, sizeof(d_old), "%s/iotd-%d", f->dir, (int)dead_old);
	assert_int_equal(mkdir(d_old, 0700), 0);
	/* Not a store's name: not ours to remove. */
	snprintf(d_other, sizeof(d_other), "%s/iotd-%d-backup", f->dir, (int)dead);
	assert_int_equal(mkdir(d_other, 0700), 0);
	/* A router still holding the store of a dead pid: not a leftover yet. */
	memory_dir(d_held, sizeof(d_held), f->dir, dead_held);
	held = store_open(d_held, STORE_MEMORY, MAP, err, sizeof(err));
	assert_non_null(held);

	assert_int_equal(store_sweep(f->dir, getpid()), 2);
	assert_false(exists(d_dead));
	assert_false(exists(d_old));
	assert_true(exists(d_self));
	assert_true(exists(d_parent));
	assert_true(exists(d_held));
	assert_true(exists(d_other));
	store_close(&held);
	assert_int_equal(store_sweep(f->dir, getpid()), 1);
	assert_false(exists(d_held));
	assert_int_equal(rmdir(d_other), 0);
}

/* /dev/shm is anybody's: a link or a foreign directory under a store's name is never used. */
static void memory_stores_never_follow_planted_links(void **state)
{
	struct fx *f = *state;
	char victim[128], file[160], link[160], open_dir[160], err[512] = "";
	pid_t dead = dead_pid();
	struct stat sb;
	int fd;

	snprintf(victim, sizeof(victim), "%s/victim", f->dir);
	assert_int_equal(mkdir(victim, 0700), 0);
	snprintf(file, sizeof(file), "%s/data.mdb", victim);
	fd = open(file, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	memory_dir(link, sizeof(link), f->dir, dead);
	assert_int_equal(symlink(victim, link), 0);

	assert_int_equal(store_sweep(f->dir, getpid()), 0);
	assert_int_equal(stat(file, &sb), 0);
	assert_int_equal(store_remove(link), -1);          /* not a directory of ours */
	assert_int_equal(stat(file, &sb), 0);
	assert_null(store_open(link, STORE_MEMORY, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "not a private directory"));

	snprintf(open_dir, sizeof(open_dir), "%s/iotd-open", f->dir);
	assert_int_equal(mkdir(open_dir, 0700), 0);
	assert_int_equal(chmod(open_dir, 0777), 0);
	assert_null(store_open(open_dir, STORE_MEMORY, MAP, err, sizeof(err)));
	assert_non_null(strstr(err, "not a private directory"));
}

static void daemon_identity_tells_processes_apart(void **state)
{
	char a[STORE_IDENT_LEN], b[STORE_IDENT_LEN], c[STORE_IDENT_LEN], stat[1024];
	unsigned long long start = 0;
	size_t n = sizeof(a) + 1;
	FILE *f;
	void *m;

	(void)state;
	assert_int_equal(store_daemon_ident(getpid(), a, sizeof(a)), 0);
	/* The process's start time (field 22), not a field that moves with its memory. */
	f = fopen("/proc/self/stat", "r");
	assert_non_null(f);
	assert_non_null(fgets(stat, sizeof(stat), f));
	fclose(f);
	assert_int_equal(sscanf(strrchr(stat, ')') + 2,
				"%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
				"%*d %*d %llu", &start), 1);
	snprintf(c, sizeof(c), "/%d/%llu", (int)getpid(), start);
	n = strlen(a);
	assert_true(n > strlen(c) && strcmp(a + n - strlen(c), c) == 0);
	m = mmap(NULL, 64u << 20, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(store_daemon_ident(getpid(), b, sizeof(b)), 0);
	munmap(m, 64u << 20);
	assert_int_equal(store_daemon_ident(getppid(), c, sizeof(c)), 0);
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(everything_written_comes_back_after_reopen),
		T(uncommitted_changes_are_lost_like_in_a_crash),
		T(deletes_remove_sessions_with_their_subscriptions_and_queue),
		T(retained_messages_are_replaced_and_cleared),
		T(ring_positions_and_held_records_are_kept_per_ring),
		T(new_daemon_keeps_persistent_sessions_offline_only),
		T(new_daemon_of_a_memory_store_starts_empty),
		T(newer_format_is_refused),
		T(older_format_is_read_and_upgraded),
		T(format_4_subscription_reads_as_its_qos_without_options),
		T(format_5_messages_read_as_without_properties),
		T(format_6_messages_read_as_without_sub_ids),
		T(format_7_queues_are_moved_into_queue_order),
		T(format_2_sessions_read_as_without_user_names),
		T(format_3_sessions_read_as_without_tokens),
		T(format_5_sessions_read_as_lasting_as_their_clean_flag_says),
		T(format_7_sessions_read_back_whole),
		T(format_8_session_of_an_idle_connection_is_short),
		T(session_expiry_and_held_will_round_trip),
		T(tokens_without_rules_and_orphans_keep_their_mark),
		T(copies_keep_their_mark_and_go_one_by_one),
		T(queue_deletes_keep_their_place_in_the_turn),
		T(a_file_that_is_not_lmdb_is_refused),
		T(an_lmdb_environment_of_somebody_else_is_refused),
		T(a_path_that_is_a_file_or_in_use_is_refused),
		T(a_failed_write_makes_the_store_stale_until_a_rewrite),
		T(memory_store_names_cannot_be_guessed),
		T(a_new_memory_store_refuses_what_is_there),
		T(sweep_removes_only_stores_of_dead_daemons),
		T(memory_stores_never_follow_planted_links),
		T(daemon_identity_tells_processes_apart),
#undef T
	};

	/* Quiet: the failure tests provoke errors on purpose. */
	log_init(LOG_LVL_ERROR, LOG_FMT_TEXT);
	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
