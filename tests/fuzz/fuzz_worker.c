/*
 * fuzz_worker.c - libFuzzer harness for the worker's record handlers, fed
 * arbitrary record streams from the router's side of its ring.
 *
 * The harness reaches the worker's record handlers through its private
 * header (daemon/worker_int.h) and links the worker as the daemon does,
 * over a worker set up as worker_setup() would, with private memory
 * standing in for the shared regions. Each input starts
 * from four real connections (socketpairs) that sent a CONNECT through
 * the real read path, then feeds records built with the real writer
 * (rec.h): CONNACK, SUBACK, UNSUBACK, DELIVER, SESSION_MSG, KICK and ROUTE
 * over those connection ids and a few others, with QoS, flags, counts and
 * copy ids taken whole, and raw bytes under any type. Between records the
 * worker flushes its output and buries what it closed, as its loop does.
 * Whatever the stream: no crash, no out-of-bounds access, no leak once
 * everything is closed and torn down.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "shm.h"
#include "../../daemon/worker_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NCONNS 4
#define RING_BYTES 65536

struct in {
	const uint8_t *p;
	size_t left;
};

static uint8_t take(struct in *in)
{
	if (in->left == 0)
		return 0;
	in->left--;
	return *in->p++;
}

static uint16_t take16(struct in *in)
{
	return (uint16_t)(take(in) | take(in) << 8);
}

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

/* The router's side of w2r: everything the worker wrote is read and dropped. */
static void ring_empty(struct worker *w)
{
	ring_commit(w);
	shmring_discard(&router_side);
	shmring_release(&router_side);
}

static const uint8_t connect_pkt[] = {
	0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c,
	0x00, 0x01, 'c',
};

/* Four connections that sent a CONNECT, now waiting for their CONNACK. */
static void conns_open(struct worker *w, int *peers)
{
	for (unsigned i = 0; i < NCONNS; i++) {
		struct ipc_client info = { .remote = "127.0.0.1:1" };
		int sp[2];

		peers[i] = -1;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
			continue;
		if (write(sp[1], connect_pkt, sizeof(connect_pkt)) != sizeof(connect_pkt) ||
		    !conn_new(w, sp[0], &info)) {
			close(sp[1]);
			continue;
		}
		peers[i] = sp[1];
		conn_read(w, w->slots[w->n_slots - 1]);
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

static conn_id_t pick_conn(struct in *in)
{
	uint8_t b = take(in);

	/* Mostly our connections (slots 0..3, serial 1); sometimes another epoch, slot or worker. */
	if (b & 0x80)
		return conn_id_make(b & 1, 1 + (b >> 1 & 1), b >> 2 & 7, 1 + (b >> 5 & 1));
	return conn_id_make(0, 1, b % NCONNS, 1);
}

static void put_topic(struct recw *rw, struct in *in)
{
	static const char *const topics[] = { "t", "t/a", "", "a/b/c", "$SYS/x", "t/#" };
	const char *t = topics[take(in) % 6];

	recw_str(rw, t, (uint16_t)strlen(t));
}

static void put_payload(struct recw *rw, struct in *in)
{
	uint8_t n = take(in) % 32, buf[32];

	for (uint8_t i = 0; i < n; i++)
		buf[i] = take(in);
	recw_bytes(rw, buf, n);
}

static uint16_t build_connack(struct recw *rw, struct in *in)
{
	uint8_t n = take(in) % 4;

	recw_u64(rw, pick_conn(in));
	recw_u32(rw, take(in));
	recw_u8(rw, take(in) % 4 == 0 ? take(in) : 0);
	recw_u8(rw, take(in) % 3);
	recw_u16(rw, n);
	for (uint8_t i = 0; i < n; i++)
		recw_u16(rw, take16(in));
	return REC_CONNACK;
}

static uint16_t build_suback(struct recw *rw, struct in *in, bool sub)
{
	uint8_t n = take(in) % 4;

	recw_u64(rw, pick_conn(in));
	recw_u16(rw, take16(in));
	if (!sub)
		return REC_UNSUBACK;
	recw_u16(rw, n);
	for (uint8_t i = 0; i < n; i++)
		recw_u8(rw, take(in));
	return REC_SUBACK;
}

static uint16_t build_deliver(struct recw *rw, struct in *in)
{
	uint8_t n = take(in) % 5;

	recw_u8(rw, take(in) % 4);
	put_topic(rw, in);
	put_payload(rw, in);
	recw_u8(rw, take(in) % 3);
	recw_u32(rw, n);
	for (uint8_t i = 0; i < n; i++) {
		uint8_t q = take(in);

		recw_u64(rw, pick_conn(in));
		recw_u32(rw, take(in) % 4);
		recw_u8(rw, q);                          /* QoS | REC_TARGET_COPY, or junk */
		if (q & REC_TARGET_COPY)
			recw_u64(rw, take(in) % 4);
	}
	return REC_DELIVER;
}

static uint16_t build_session_msg(struct recw *rw, struct in *in)
{
	recw_u64(rw, pick_conn(in));
	recw_u32(rw, take(in) % 4);
	recw_u64(rw, take(in) % 4);
	recw_u16(rw, take16(in));
	recw_u8(rw, take(in) % 5);
	recw_u8(rw, take(in) % 4);
	recw_u8(rw, take(in) % 3);
	put_topic(rw, in);
	put_payload(rw, in);
	return REC_SESSION_MSG;
}

static uint16_t build_route(struct recw *rw, struct in *in)
{
	uint8_t n = take(in) % 4;

	recw_u64(rw, take(in) % 4);                     /* ask */
	recw_u64(rw, atomic_load(&router_region.route_gen) + take(in) % 2);
	put_topic(rw, in);
	recw_u8(rw, take(in) % 3);                      /* local */
	recw_u32(rw, n);
	for (uint8_t i = 0; i < n; i++) {
		recw_u64(rw, pick_conn(in));
		recw_u8(rw, take(in) % 4);
	}
	return REC_ROUTE;
}

static uint16_t build_raw(struct recw *rw, struct in *in)
{
	uint16_t type = take(in) % (REC_TYPE_MAX + 2);
	uint8_t n = take(in) % 64;

	for (uint8_t i = 0; i < n; i++)
		recw_u8(rw, take(in));
	return type;
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
	struct in in = { data, size };
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
	w.epfd = epoll_create1(EPOLL_CLOEXEC);
	w.timerfd = -1;
	w.rbuf = malloc(READ_CHUNK);
	recw_init(&w.rw);
	if (w.epfd < 0 || w.rbuf == NULL)
		abort();
	memset(&ring_pctl, 0, sizeof(ring_pctl));
	memset(&ring_cctl, 0, sizeof(ring_cctl));
	shmring_producer_attach_at_tail(&w.prod, &ring);
	shmring_consumer_attach(&router_side, &ring);
	conns_open(&w, peers);
	ring_empty(&w);

	while (in.left > 0) {
		uint8_t op = take(&in);
		struct recw rw;
		uint16_t type;

		recw_init(&rw);
		switch (op % 10) {
		case 0: case 1: type = build_connack(&rw, &in); break;
		case 2: type = build_suback(&rw, &in, true); break;
		case 3: type = build_suback(&rw, &in, false); break;
		case 4: case 5: type = build_deliver(&rw, &in); break;
		case 6: type = build_session_msg(&rw, &in); break;
		case 7: type = build_route(&rw, &in); break;
		case 8:
			recw_u64(&rw, pick_conn(&in));
			type = REC_KICK;
			break;
		default: type = build_raw(&rw, &in); break;
		}
		if (!rw.oom)
			feed(&w, type, &rw);
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
