/*
 * fuzz_router.c - libFuzzer harness for the router's record handlers, fed
 * the record streams a hostile worker could write.
 *
 * Input: a sequence of operations. Most build a record with its real
 * encoder (rec.h) from a few input bytes: connection ids from a small set
 * (two workers, two epochs, a few slots, so that records meet the sessions
 * earlier ones made, and also name the wrong worker or epoch), client ids,
 * topics and filters from small sets with wildcards, QoS and flags taken
 * whole (invalid ones included). Others hand the router raw bytes under
 * any type, a worker's death, a clock tick, or an ACL (one of a few, or
 * none), against which CONNECTs with and without a user name and
 * PUBLISHes from any connection are then checked, grants required or not,
 * and grants (router_grant: a user name, with or without a token, with or
 * without its rules) for any connection. Whatever the stream,
 * the router must not crash, read out of bounds, or leak (router_free at
 * the end, LeakSanitizer), and everything it emits must be a router ->
 * worker record for an existing worker that its decoder takes whole;
 * under an ACL that allows nothing, no message may reach anyone.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "config.h"
#include "iotd.h"
#include "rec.h"
#include "router.h"

#include "fuzzinput.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NWORKERS 2

static const char *const client_ids[] = { "a", "b", "c", "", "dev/1", "x\xc3\xa9" };
static const char *const topics[] = {
	"t", "t/a", "t/b/c", "$SYS/x", "a/b", "", "t/#", "+/a", "#", "t/+/c", "x\0y",
};

/* The ACLs a stream may put in force; NULL: none. The last allows nothing. */
static const char *const acls[] = {
	"topic read #\ntopic write t/#\n",
	"user alice\ntopic readwrite t/#\ntopic deny t/b/#\npattern readwrite %c/#\n",
	NULL,
	"",
};
static bool deny_all;
static bool token_granted;   /* a token's rules were granted: they, not the ACL, are its session's */

/* Each worker's current epoch, as the router was told (worker 2 does not exist). */
static uint32_t cur_epoch[NWORKERS + 1];

static conn_id_t pick_conn(struct fuzz_in *in)
{
	uint8_t b = take(in);
	unsigned worker = b % 3;

	/* The current epoch or the one before, slot 0..7 (8 and more: past capacity), serial 1..2. */
	return conn_id_make(worker, cur_epoch[worker] - (b >> 2 & 1), b >> 3 & 15, 1 + (b >> 7));
}

static struct rec_str pick_topic(struct fuzz_in *in)
{
	return take_str(in, topics, ARRAY_SIZE(topics));
}

/*
 * The builders take their input in field order (a struct initializer
 * would leave the order open) and write the record with its encoder.
 */

static uint16_t build_connect(struct recw *w, struct fuzz_in *in)
{
	static const uint32_t expiries[4] = { 0, 1, 300, REC_EXPIRY_NEVER };
	uint8_t flags = take(in), v5 = take(in), buf[16];
	struct rec_connect x = { .remote = { (const uint8_t *)"127.0.0.1:1", 11 } };

	x.conn = pick_conn(in);
	x.clean = flags & 3;                     /* 2, 3: invalid */
	x.keepalive = take16(in);
	x.client_id = take_str(in, client_ids, ARRAY_SIZE(client_ids));
	x.will_flag = flags >> 2 & 3;
	x.will_qos = flags >> 4 & 3;
	x.will_retain = flags >> 6 & 1;
	x.will_topic = pick_topic(in);
	x.will_payload = take_payload(in, buf, sizeof(buf));
	if (flags & 0x80)
		x.user = (struct rec_str){ (const uint8_t *)"alice", 5 };
	/* The MQTT 5 part: a session expiry, a will delay and expiry, will properties (or junk). */
	x.session_expiry = expiries[v5 & 3];
	x.will_delay = v5 >> 2 & 3;
	x.will_expiry = v5 >> 4 & 1;
	if (v5 & 0x20)
		take_msg_v5(in, &x.will_props, &(uint64_t){ 0 });
	rec_connect_encode(w, &x);
	return REC_CONNECT;
}

/* Subscription identifiers: none, some, and ones no client can give. */
static const uint32_t sub_ids[] = { 0, 0, 1, 7, 268435455, 268435456, UINT32_MAX };

static uint16_t build_subscribe(struct recw *w, struct fuzz_in *in)
{
	uint8_t n = take(in) % 4;
	struct rec_subscribe x;
	size_t count_off;

	x.conn = pick_conn(in);
	x.packet_id = take16(in);
	x.sub_id = sub_ids[take(in) % (sizeof(sub_ids) / sizeof(sub_ids[0]))];
	count_off = rec_subscribe_begin(w, &x);
	for (uint8_t i = 0; i < n; i++) {
		struct rec_subscription sub;

		sub.filter = pick_topic(in);
		sub.qos = take(in) % 4;
		rec_subscribe_add(w, &sub);
	}
	rec_subscribe_end(w, count_off, n);
	return REC_SUBSCRIBE;
}

static uint16_t build_unsubscribe(struct recw *w, struct fuzz_in *in)
{
	uint8_t n = take(in) % 4;
	struct rec_unsubscribe x;
	size_t count_off;

	x.conn = pick_conn(in);
	x.packet_id = take16(in);
	count_off = rec_unsubscribe_begin(w, &x);
	for (uint8_t i = 0; i < n; i++)
		rec_unsubscribe_add(w, pick_topic(in));
	rec_unsubscribe_end(w, count_off, n);
	return REC_UNSUBSCRIBE;
}

static uint16_t build_publish(struct recw *w, struct fuzz_in *in)
{
	uint8_t flags = take(in), buf[16];
	struct rec_publish x = { 0 };

	x.qos = flags % 4;
	x.flags = flags >> 2 & 3;                /* retain, ask */
	x.topic = pick_topic(in);
	x.payload = take_payload(in, buf, sizeof(buf));
	if (x.flags & REC_PUB_ASK)
		x.ask = take(in);
	x.conn = pick_conn(in);
	rec_publish_encode(w, &x);
	return REC_PUBLISH;
}

static uint16_t build_session_msg(struct recw *w, struct fuzz_in *in)
{
	struct rec_session_msg x;
	uint8_t buf[16];

	x.conn = pick_conn(in);
	x.sid = take(in) % 8;
	x.copy = take(in) % 4;
	x.packet_id = take16(in);
	x.state = take(in) % 4;
	x.qos = take(in) % 4;
	x.retain = take(in) % 2;
	x.topic = pick_topic(in);
	x.payload = take_payload(in, buf, sizeof(buf));
	take_msg_v5(in, &x.props, &x.expires_at);
	/* Subscription identifiers: none, some, and ones no subscription can have. */
	x.sub_ids.p = (const uint8_t *)(sub_ids + take(in) % 4);
	x.sub_ids.n = take(in) % 4;
	rec_session_msg_encode(w, &x);
	return REC_SESSION_MSG;
}

static uint16_t build_msg_state(struct recw *w, struct fuzz_in *in)
{
	struct rec_msg_state x;

	x.conn = pick_conn(in);
	x.sid = take(in) % 8;
	x.copy = take(in) % 8;
	x.packet_id = take16(in);
	x.state = take(in) % 5;
	rec_msg_state_encode(w, &x);
	return REC_MSG_STATE;
}

static uint16_t build_qos2_in(struct recw *w, struct fuzz_in *in)
{
	struct rec_qos2_in x;

	x.conn = pick_conn(in);
	x.sid = take(in) % 8;
	x.packet_id = take(in) % 4;
	x.held = take(in) % 3;
	rec_qos2_in_encode(w, &x);
	return REC_QOS2_IN;
}

static uint16_t build_close(struct recw *w, struct fuzz_in *in)
{
	uint8_t n = take(in) % 4;
	struct rec_close x;
	uint16_t ids[3];

	x.conn = pick_conn(in);
	x.publish_will = take(in) % 3;
	x.session_expiry = take(in) & 1 ? REC_EXPIRY_NEVER : take(in) % 3;
	for (uint8_t i = 0; i < n; i++)
		ids[i] = take(in) % 4;
	rec_close_encode(w, &x, ids, n);
	return REC_CLOSE;
}

/*
 * What the router emits must be its own kind of record, for a worker that
 * exists, well-formed to its last byte (its rec.h decoder says so).
 */
static int check_emit(void *arg, unsigned worker, uint16_t type, const struct recw *rec)
{
	(void)arg;
	if (worker >= NWORKERS || type == 0 || type >= REC_TYPE_MAX)
		abort();
	if (type == REC_CONNECT || type == REC_SUBSCRIBE || type == REC_UNSUBSCRIBE ||
	    type == REC_PUBLISH || type == REC_CLOSE || type == REC_MSG_STATE ||
	    type == REC_QOS2_IN)
		abort();
	if (rec->oom || (rec->len > 0 && rec->buf == NULL))
		abort();
	if (rec_validate(type, rec->buf, rec->len) != 0)
		abort();
	if (deny_all && !token_granted && type == REC_DELIVER)
		abort();
	if (deny_all && !token_granted && type == REC_SESSION_MSG) {
		struct rec_session_msg m;

		if (rec_session_msg_decode(&m, rec->buf, rec->len) || m.state != MSG_PUBREL)
			abort();
	}
	return 0;
}

/* A token's view, as a grant carries it: may read and write "t/#" alone. */
static struct recw token_rules;

static void grant(struct router *r, struct fuzz_in *in)
{
	static const char *const users[] = { "alice", "", "bob" };
	uint8_t b = take(in);
	const char *user = users[b % ARRAY_SIZE(users)];

	if (b & 0x10) {
		router_set_grants(r, b & 0x20, NULL, NULL);
		return;
	}
	if (token_rules.len == 0) {
		const char *list[] = { "t/#" };
		struct acl_client *v = acl_client_from_lists(list, 1, list, 1);

		if (!v || acl_client_encode(v, &token_rules) < 0)
			abort();
		acl_client_free(v);
	}
	token_granted |= (b & 0x40) != 0;
	/* A token's grant with its rules, or without them (lost: its session may do nothing). */
	router_grant(r, pick_conn(in), user, strlen(user), b & 0x40, token_rules.buf,
		     b & 0x80 ? 0 : token_rules.len);
}

static void set_acl(struct router *r, unsigned which)
{
	static const struct acl_limits lim = ACL_LIMITS_DEFAULT;
	const char *text = acls[which % ARRAY_SIZE(acls)];
	struct acl *acl = NULL;
	char err[128];

	deny_all = false;
	if (text && acl_parse(text, strlen(text), &lim, &acl, err, sizeof(err)) != 0)
		abort();
	router_set_acl(r, acl);
	deny_all = text && !text[0];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct iotd_config cfg;
	struct fuzz_in in = { data, size };
	struct router *r;
	struct router_stats st;
	uint64_t now = 1000;

	config_defaults(&cfg);
	cfg.max_queued_messages = 8;
	cfg.retained_message_limit = 8;
	cfg.max_inflight = 4;
	r = router_new(&cfg, NWORKERS, check_emit, NULL, NULL);
	if (r == NULL)
		return 0;
	for (unsigned i = 0; i <= NWORKERS; i++)
		cur_epoch[i] = 1;
	deny_all = false;
	token_granted = false;
	for (unsigned i = 0; i < NWORKERS; i++)
		router_set_worker(r, i, 1, 8);
	router_tick(r, now);
	while (in.left > 0) {
		uint8_t op = take(&in);
		unsigned worker = op >> 4 & 1;
		struct recw w;
		uint16_t type;

		recw_init(&w);
		switch (op % 12) {
		case 0: type = build_connect(&w, &in); break;
		case 1: type = build_subscribe(&w, &in); break;
		case 2: type = build_unsubscribe(&w, &in); break;
		case 3: case 4: type = build_publish(&w, &in); break;
		case 5: type = build_session_msg(&w, &in); break;
		case 6: type = build_msg_state(&w, &in); break;
		case 7: type = build_qos2_in(&w, &in); break;
		case 8: type = build_close(&w, &in); break;
		case 9: type = take_raw_record(&w, &in, 48); break;
		case 10:
			/* A worker dies; its successor is of the next epoch. */
			router_worker_down(r, worker, ++cur_epoch[worker]);
			recw_free(&w);
			continue;
		default: {
			uint8_t b = take(&in);

			if (b & 0x80) {
				set_acl(r, b >> 3 & 3);
			} else if (b & 0x40) {
				grant(r, &in);
			} else {
				now += 1000u * (b % 8);
				router_tick(r, now);
			}
			recw_free(&w);
			continue;
		}
		}
		if (!w.oom)
			router_handle(r, op >> 5 & 1 ? worker : (op >> 6) % 3, type, w.buf, w.len);
		recw_free(&w);
	}
	router_get_stats(r, &st);
	if (st.online > st.sessions)
		abort();
	router_free(&r);
	return 0;
}
