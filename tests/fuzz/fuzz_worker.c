/*
 * fuzz_worker.c - libFuzzer harness for the worker's record handlers, fed
 * arbitrary record streams from the router's side of its ring.
 *
 * The harness reaches the worker's record handlers (handle_record(),
 * daemon/worker_records.c) through its private header (daemon/worker_int.h)
 * and links the worker as the daemon does, QoS state (daemon/qos.c)
 * included, over a worker set up as worker_setup() would, with private
 * memory standing in for the shared regions. Each input starts from four
 * real connections (socketpairs) that sent a CONNECT through the real read
 * path (two of them MQTT 5 ones, with a receive maximum and a maximum
 * packet size), then feeds a sequence of records: well-formed ones built with the
 * real encoders (rec.h) - CONNACK, SUBACK, UNSUBACK, DELIVER, SESSION_MSG,
 * KICK and ROUTE over those connection ids and a few others, with QoS,
 * flags, counts and copy ids taken whole, so that a CONNACK makes a
 * connection active and later deliveries reach its QoS state - the same
 * cut short or with a byte too many, and raw bytes under any type. The
 * harness has no record layout of its own. Between records the worker
 * flushes its output and buries what it closed, as its loop does; what it
 * wrote to the router must be records of a worker's types that decode.
 * Inputs of odd length run with an ACL in force, the connections holding
 * the views a verdict gives (conn_set_rules): none, one that lets them
 * write the topic their PUBLISHes use, one that does not, bytes that do
 * not decode; a PUBLISH the view refuses must never reach the router.
 * Whatever the stream: no crash, no out-of-bounds access, no leak once
 * everything is closed and torn down.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acl.h"
#include "config.h"
#include "log.h"
#include "shm.h"
#include "../../daemon/worker_int.h"

#include "fuzzinput.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NCONNS 4
#define RING_BYTES 65536

/* What worker_setup() and the supervisor would have given the worker. */
static struct iotd_config cfg;
static struct role_env env;
static struct shm_sup sup;
static struct shm_router router_region;
static struct shm_worker *worker_region;
static struct shmring_pctl ring_pctl;
static struct shmring_cctl ring_cctl;
static uint8_t *ring_data;
static struct shmring ring;
static struct shmring_consumer router_side;     /* empties the w2r ring */

static void harness_init(void)
{
	config_defaults(&cfg);
	cfg.max_inflight = 4;
	cfg.max_queued_messages = 8;
	log_init(LOG_LVL_ERROR, LOG_FMT_TEXT);
	worker_region = aligned_alloc(64, SHM_HDR_BYTES);
	ring_data = aligned_alloc(64, RING_BYTES);
	if (worker_region == NULL || ring_data == NULL)
		abort();
	memset(worker_region, 0, SHM_HDR_BYTES);
	env.cfg = &cfg;
	env.nworkers = 1;
	env.epoch = 1;
	env.shm.sup = &sup;
	env.shm.router = &router_region;
	env.shm.worker[0] = worker_region;
	env.router_efd = -1;
	env.ctl_fd = -1;
	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++)
		env.worker_efd[i] = env.chan_worker[i] = env.chan_listener[i] = -1;
	shmring_view(&ring, &ring_pctl, &ring_cctl, ring_data, RING_BYTES);
}

/* The view each connection gets (conn_set_rules), by slot; what client_packet publishes to is "t". */
enum view { VIEW_NONE, VIEW_WRITES_T, VIEW_NOT_T, VIEW_BROKEN };
static const enum view views[NCONNS] = { VIEW_NONE, VIEW_WRITES_T, VIEW_NOT_T, VIEW_BROKEN };
static bool acl_in_force;

/* Under the ACL, what the router is sent of a PUBLISH: what the publisher's view allows. */
static void check_publish(const struct shmring_rec *rec)
{
	struct rec_publish x;
	unsigned slot;

	if (!acl_in_force || rec->type != REC_PUBLISH ||
	    rec_publish_decode(&x, shmring_payload(rec), rec->len))
		return;
	slot = conn_id_slot(x.conn);
	if (slot >= NCONNS)
		abort();
	if (views[slot] == VIEW_NOT_T)
		abort();
}

/* What a worker may write to the router. */
static bool worker_type(uint16_t type)
{
	switch (type) {
	case REC_CONNECT: case REC_SUBSCRIBE: case REC_UNSUBSCRIBE: case REC_PUBLISH:
	case REC_SESSION_MSG: case REC_MSG_STATE: case REC_QOS2_IN: case REC_CLOSE:
		return true;
	default:
		return false;
	}
}

/*
 * The router's side of w2r: everything the worker wrote is read, must be
 * a record of a worker's type that its decoder takes, and is dropped.
 */
static void ring_empty(struct worker *w)
{
	const struct shmring_rec *rec;

	ring_commit(w);
	while ((rec = shmring_peek(&router_side)) != NULL) {
		if (!worker_type(rec->type) ||
		    rec_validate(rec->type, shmring_payload(rec), rec->len) < 0)
			abort();
		check_publish(rec);
		shmring_next(&router_side);
	}
	if (errno == EBADMSG)
		abort();
	shmring_discard(&router_side);
	shmring_release(&router_side);
}

/* Slot i's view, as its verdict would give it (rules that do not decode: none). */
static void conn_rules(struct worker *w, unsigned i)
{
	const char *t = "t", *x = "x";
	struct conn *c = conn_lookup(w, conn_id_make(0, 1, i, 1));
	struct acl_client *v = NULL;

	if (c == NULL || views[i] == VIEW_NONE || views[i] == VIEW_BROKEN)
		return;
	v = acl_client_from_lists(&t, 1, views[i] == VIEW_WRITES_T ? &t : &x, 1);
	if (v == NULL)
		abort();
	conn_set_rules(w, c, v);
}

#define CONNECT_FLAGS 9          /* where connect_pkt has them */

static const uint8_t connect_pkt[] = {
	0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c,
	0x00, 0x01, 'c',
};

/* MQTT 5: receive maximum 2, maximum packet size 40, so that both limits are met. */
static const uint8_t connect5_pkt[] = {
	0x10, 0x15, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3c,
	0x08, 0x21, 0x00, 0x02, 0x27, 0x00, 0x00, 0x00, 0x28, 0x00, 0x01, 'c',
};

/* Odd slots speak MQTT 5 (conn_is_v5()). */
static bool slot_v5(unsigned i)
{
	return i & 1;
}

/*
 * Four connections that sent a CONNECT, now waiting for their CONNACK:
 * the first half with a clean session, the others with a persistent one;
 * odd slots with an MQTT 5 CONNECT.
 */
static void conns_open(struct worker *w, int *peers)
{
	for (unsigned i = 0; i < NCONNS; i++) {
		struct ipc_client info = { .remote = "127.0.0.1:1" };
		uint8_t pkt[sizeof(connect5_pkt)];
		size_t len = slot_v5(i) ? sizeof(connect5_pkt) : sizeof(connect_pkt);
		int sp[2];

		memcpy(pkt, slot_v5(i) ? connect5_pkt : connect_pkt, len);
		if (i >= NCONNS / 2)
			pkt[CONNECT_FLAGS] = 0x00;
		peers[i] = -1;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
			continue;
		if (write(sp[1], pkt, len) != (ssize_t)len ||
		    !conn_new(w, sp[0], &info)) {
			close(sp[1]);
			continue;
		}
		peers[i] = sp[1];
		conn_read(w, w->slots[w->n_slots - 1]);
		conn_rules(w, i);
	}
}

/* Read and drop what the worker wrote to its clients, so their sockets keep room. */
static void peers_drain(const int *peers)
{
	uint8_t buf[4096];

	for (unsigned i = 0; i < NCONNS; i++)
		while (peers[i] >= 0 && read(peers[i], buf, sizeof(buf)) > 0)
			;
}

static conn_id_t pick_conn(struct fuzz_in *in)
{
	uint8_t b = take(in);

	/* Mostly our connections (slots 0..3, serial 1); sometimes another epoch, slot or worker. */
	if (b & 0x80)
		return conn_id_make(b & 1, 1 + (b >> 1 & 1), b >> 2 & 7, 1 + (b >> 5 & 1));
	return conn_id_make(0, 1, b % NCONNS, 1);
}

static struct rec_str pick_topic(struct fuzz_in *in)
{
	static const char *const topics[] = { "t", "t/a", "", "a/b/c", "$SYS/x", "t/#" };

	return take_str(in, topics, ARRAY_SIZE(topics));
}

static uint16_t build_connack(struct recw *rw, struct fuzz_in *in)
{
	struct rec_connack x;
	uint16_t ids[3];
	uint8_t n = take(in) % 4;

	x.conn = pick_conn(in);
	x.sid = take(in);
	x.rc = take(in) % 4 == 0 ? take(in) : 0;
	x.session_present = take(in) % 3;
	for (uint8_t i = 0; i < n; i++)
		ids[i] = take16(in);
	rec_connack_encode(rw, &x, ids, n);
	return REC_CONNACK;
}

static uint16_t build_suback(struct recw *rw, struct fuzz_in *in)
{
	uint8_t n = take(in) % 4;
	struct rec_suback x;
	size_t count_off;

	x.conn = pick_conn(in);
	x.packet_id = take16(in);
	count_off = rec_suback_begin(rw, &x);
	for (uint8_t i = 0; i < n; i++)
		rec_suback_add(rw, take(in));
	rec_suback_end(rw, count_off, n);
	return REC_SUBACK;
}

static uint16_t build_unsuback(struct recw *rw, struct fuzz_in *in)
{
	struct rec_unsuback x;

	size_t count_off;
	uint8_t n = take(in) % 4;

	x.conn = pick_conn(in);
	x.packet_id = take16(in);
	count_off = rec_unsuback_begin(rw, &x);
	for (uint8_t i = 0; i < n; i++)
		rec_suback_add(rw, take(in));
	rec_suback_end(rw, count_off, n);
	return REC_UNSUBACK;
}

/*
 * A delivery's target: a connection, a session id, any QoS, a copy id or
 * none, subscription identifiers (some no subscription can have) or none.
 */
static struct rec_target pick_target(struct fuzz_in *in)
{
	static const uint32_t ids[] = { 1, 268435455, 0, 268435456, 7 };
	struct rec_target t;

	t.conn = pick_conn(in);
	t.sid = take(in) % 4;
	t.qos = take(in) % 8;                /* any, not only 0..2 */
	t.copy = take(in) % 4;               /* 0: none */
	t.retain = take(in) & 1;
	t.n_sub_ids = take(in) % 3;          /* 0: none */
	t.sub_ids = ids + take(in) % 4;      /* two of them at most */
	return t;
}

static uint16_t build_deliver(struct recw *rw, struct fuzz_in *in)
{
	static const uint8_t user_prop[] = { 0x06, 0x26, 0x00, 0x01, 'k', 0x00, 0x00 };
	uint8_t n = take(in) % 5, buf[32];
	struct rec_deliver x;
	size_t count_off;

	x.qos = take(in) % 4;
	x.topic = pick_topic(in);
	x.payload = take_payload(in, buf, sizeof(buf));
	x.retain = take(in) % 3;
	/* Sometimes an MQTT 5 message: a user property, an expiry past or to come. */
	x.props = take(in) & 1 ? (struct rec_bytes){ user_prop, sizeof(user_prop) } :
				 (struct rec_bytes){ 0 };
	x.expires_at = take(in) % 3 == 0 ? 0 : (take(in) & 1 ? 1 : UINT64_MAX / 2);
	count_off = rec_deliver_begin(rw, &x);
	for (uint8_t i = 0; i < n; i++) {
		struct rec_target t = pick_target(in);

		rec_deliver_add(rw, &t);
	}
	rec_deliver_end(rw, count_off, n);
	return REC_DELIVER;
}

static uint16_t build_session_msg(struct recw *rw, struct fuzz_in *in)
{
	uint8_t buf[32];
	struct rec_session_msg x;

	x.conn = pick_conn(in);
	x.sid = take(in) % 4;
	x.copy = take(in) % 4;
	x.packet_id = take16(in);
	x.state = take(in) % 5;
	x.qos = take(in) % 4;
	x.retain = take(in) % 3;
	x.topic = pick_topic(in);
	x.payload = take_payload(in, buf, sizeof(buf));
	take_msg_v5(in, &x.props, &x.expires_at);
	{
		/* Subscription identifiers, as a delivery's target's. */
		struct rec_target t = pick_target(in);

		x.sub_ids = (struct rec_iter){ t.sub_ids, t.n_sub_ids };
	}
	rec_session_msg_encode(rw, &x);
	return REC_SESSION_MSG;
}

static uint16_t build_route(struct recw *rw, struct fuzz_in *in)
{
	uint8_t n = take(in) % 4;
	struct rec_route x;
	size_t count_off;

	x.ask = take(in) % 4;
	x.gen = atomic_load(&router_region.route_gen) + take(in) % 2;
	x.topic = pick_topic(in);
	x.local = take(in) % 3;
	count_off = rec_route_begin(rw, &x);
	for (uint8_t i = 0; i < n; i++) {
		struct rec_route_target t;

		t.conn = pick_conn(in);
		t.qos = take(in) % 4;
		rec_route_add(rw, &t);
	}
	rec_route_end(rw, count_off, n);
	return REC_ROUTE;
}

static uint16_t build_kick(struct recw *rw, struct fuzz_in *in)
{
	struct rec_kick x = { .conn = pick_conn(in) };

	rec_kick_encode(rw, &x);
	return REC_KICK;
}

/* A well-formed record of one of the types the router writes to a worker. */
static uint16_t build_valid(struct recw *rw, struct fuzz_in *in, uint8_t kind)
{
	switch (kind % 9) {
	case 0: case 1: return build_connack(rw, in);
	case 2: return build_suback(rw, in);
	case 3: return build_unsuback(rw, in);
	case 4: case 5: return build_deliver(rw, in);
	case 6: return build_session_msg(rw, in);
	case 7: return build_route(rw, in);
	default: return build_kick(rw, in);
	}
}

/* A well-formed record cut short, or with a byte too many: malformed by one field's worth. */
static uint16_t build_damaged(struct recw *rw, struct fuzz_in *in)
{
	uint16_t type = build_valid(rw, in, take(in));
	uint8_t how = take(in);

	if (how & 1)
		recw_u8(rw, take(in));
	else
		rw->len = rw->len ? (how >> 1) % rw->len : 0;
	return type;
}

/*
 * One of our active clients sends a PUBLISH (to the router or delivered
 * here, as its route says) or acknowledges a packet id, through the real
 * read path, so that the QoS state the records built moves on.
 */
static void client_packet(struct worker *w, const int *peers, struct fuzz_in *in)
{
	/* An MQTT 5 PUBLISH's property block: content type "x". */
	static const uint8_t content_type[] = { 0x04, 0x03, 0x00, 0x01, 'x' };
	static const uint8_t acks[] = {
		MQTT_PUBACK << 4, MQTT_PUBREC << 4, MQTT_PUBREL << 4 | 0x02, MQTT_PUBCOMP << 4,
	};
	uint8_t b = take(in), pkt[24], n = 0;
	unsigned i = b % NCONNS;
	uint16_t pid = 1 + take(in) % 8;     /* the ids the worker hands out first */
	struct conn *c = conn_lookup(w, conn_id_make(0, 1, i, 1));

	if (c == NULL || c->state != CS_ACTIVE || peers[i] < 0)
		return;
	if (b & 0x80) {
		uint8_t qos = (b >> 2) % 3;

		pkt[n++] = (uint8_t)(MQTT_PUBLISH << 4 | qos << 1 | (b >> 4 & 1));
		pkt[n++] = (uint8_t)(3 + (qos ? 2 : 0) + 1 + (slot_v5(i) ? sizeof(content_type) : 0));
		pkt[n++] = 0;
		pkt[n++] = 1;
		pkt[n++] = 't';
		if (qos) {
			pkt[n++] = (uint8_t)(pid >> 8);
			pkt[n++] = (uint8_t)pid;
		}
		if (slot_v5(i)) {
			memcpy(pkt + n, content_type, sizeof(content_type));
			n += sizeof(content_type);
		}
		pkt[n++] = take(in);                  /* one byte of payload */
	} else {
		pkt[n++] = acks[b >> 2 & 3];
		pkt[n++] = 2;
		pkt[n++] = (uint8_t)(pid >> 8);
		pkt[n++] = (uint8_t)pid;
	}
	if (write(peers[i], pkt, n) == n)
		conn_read(w, c);
}

/* Hand the record to the worker as drain_ring() would: header and payload in one buffer. */
static void feed(struct worker *w, uint16_t type, const struct recw *rw)
{
	struct shmring_rec *rec = malloc(sizeof(*rec) + rw->len + 1);

	if (rec == NULL)
		return;
	*rec = (struct shmring_rec){ .len = (uint32_t)rw->len, .type = type };
	if (rw->len > 0)
		memcpy(rec + 1, rw->buf, rw->len);
	handle_record(w, rec);
	free(rec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct worker w = { 0 };
	struct fuzz_in in = { data, size };
	int peers[NCONNS];

	if (!ready) {
		harness_init();
		ready = true;
	}
	w.env = &env;
	w.cfg = &cfg;
	w.index = 0;
	w.epoch = 1;
	w.now_ms = 1000;
	w.acl_in_force = acl_in_force = size & 1;
	w.epfd = epoll_create1(EPOLL_CLOEXEC);
	w.timerfd = -1;
	w.rbuf = malloc(READ_CHUNK);
	recw_init(&w.rw);
	if (w.epfd < 0 || w.rbuf == NULL)
		abort();
	memset(&ring_pctl, 0, sizeof(ring_pctl));
	memset(&ring_cctl, 0, sizeof(ring_cctl));
	shmring_producer_attach_at_tail(&w.prod, &ring);
	ringout_init(&w.out, &w.prod);
	shmring_consumer_attach(&router_side, &ring);
	conns_open(&w, peers);
	ring_empty(&w);

	while (in.left > 0) {
		uint8_t op = take(&in);
		struct recw rw;
		int type = -1;                       /* none: a client's packet instead */

		recw_init(&rw);
		switch (op % 12) {
		case 9: type = take_raw_record(&rw, &in, 64); break;
		case 10: type = build_damaged(&rw, &in); break;
		case 11: client_packet(&w, peers, &in); break;
		default: type = build_valid(&rw, &in, op); break;
		}
		if (type >= 0 && !rw.oom)
			feed(&w, (uint16_t)type, &rw);
		recw_free(&rw);
		if (op & 0x80) {
			atomic_fetch_add(&router_region.route_gen, 1);
			flush_dirty(&w);
			bury_closed(&w);
			peers_drain(peers);
			ring_empty(&w);
		}
	}
	close_all(&w, "end of input");
	bury_closed(&w);
	ring_empty(&w);
	worker_teardown(&w);
	shmring_consumer_detach(&router_side);
	for (unsigned i = 0; i < NCONNS; i++)
		if (peers[i] >= 0)
			close(peers[i]);
	return 0;
}
