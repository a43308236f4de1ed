/*
 * iotd-bench.c - MQTT load generator: measures a broker's delivery
 * rate, latency, CPU time per delivery and memory per connection, so that
 * iotd can be compared side by side with other brokers (contrib/bench.sh).
 *
 * One thread, one epoll loop, non-blocking sockets and raw packets built
 * and decoded with iotd's own codec (include/mqtt.h): no client library
 * sits between the figures and the broker. Every payload carries
 * (publisher id, sequence number, send time), so loss, duplicates and
 * reordering are counted per publisher and subscriber, not guessed.
 *
 * Clients speak MQTT 3.1.1 or, with -V 5, MQTT 5.0 (include/mqtt5.h):
 * CONNECT, SUBSCRIBE and PUBLISH carry empty property blocks, and a
 * PUBLISH's properties, whatever the broker puts there, are skipped by
 * their length, so a delivery costs what it costs in 3.1.1. The
 * sharedfanin scenario subscribes a group of connections to one shared
 * subscription ($share/GROUP/FILTER) and checks that each message reaches
 * exactly one member.
 *
 * Clients speak plain TCP, TLS (OpenSSL, --tls), MQTT over WebSocket
 * (--ws PATH) or both (wss). The transports sit behind conn_read() and
 * conn_flush(): a plain TCP connection takes one branch more per read or
 * write system call and nothing per message.
 *
 *   iotd-bench -p 1883 -s fanin -q 1 -t 10 --pids 1234 --json
 *   iotd-bench -p 8883 -s handshakes --tls --cafile ca.pem -t 10 --pids 1234
 *   iotd-bench -p 8080 -s pairs --ws /mqtt -t 10
 *   iotd-bench -p 1883 -s conns -c 1000 --user 'client%d' --password secret
 *   iotd-bench --help
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mqtt.h"
#include "mqtt5.h"

#define FANIN_PUBS 16
#define FANOUT_SUBS 950
#define N_PAIRS 50
#define SHARED_PUBS 50
#define SHARED_MEMBERS 10
#define SHARED_FILTER "$share/bench/bench/in/#"
#define PAYLOAD_HDR 20            /* u32 publisher, u64 sequence, u64 send time (ns) */
#define SUB_RBUF (256 * 1024)     /* large reads: many deliveries per system call */
#define PUB_RBUF (16 * 1024)
#define IDLE_RBUF 256
#define QOS0_BATCH (32 * 1024)    /* bytes a QoS 0 publisher writes per loop turn */
#define PUB_SNDBUF (128 * 1024)   /* keeps the kernel from buffering seconds of QoS 0 */
#define MAX_EVENTS 1024
#define KEEPALIVE 600             /* no PINGREQ is sent: every run is far shorter */
#define SETUP_TIMEOUT_S 120.0
#define QUIET_S 0.5               /* QoS 0 drain ends after this long without a delivery */
#define STALL_S 0.2               /* QoS 0: a publisher blocked this long on lost messages moves on */
#define MAX_SEQ (1ull << 31)      /* per publisher: bounds the loss bitmaps */
#define MAX_SRC 32
#define MAX_PIDS 16
#define MAX_PROCS 64
#define MAX_BROKER_PROCS 256
#define MAX_PACKET (16u << 20)
#define OUTSTANDING 65536         /* deliveries in flight in all, when --max-lag is not given */
#define MAX_USER 256              /* --user, before its %d is replaced */
#define MAX_PASSWORD 65535        /* MQTT's limit */
#define WS_MAX_RESPONSE 8192      /* the HTTP upgrade response's headers */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   /* RFC 6455 section 1.3 */

enum scenario { SC_FANIN, SC_FANOUT, SC_PAIRS, SC_LATENCY, SC_CONNS, SC_HANDSHAKES,
	       SC_SHAREDFANIN };
static const char *const sc_names[] = { "fanin", "fanout", "pairs", "latency", "conns",
					"handshakes", "sharedfanin" };

enum role { R_SUB, R_PUB, R_IDLE, R_TIMER };
static const char *const role_names[] = { "subscriber", "publisher", "connection", "timer" };

enum cstate { CS_NEW, CS_CONNECTING, CS_TLS, CS_UPGRADE, CS_CONNACK, CS_SUBACK, CS_READY, CS_CLOSED };
enum phase { PH_SETUP, PH_MEASURE, PH_DRAIN, PH_DONE };

struct opts {
	const char *host;
	int port;
	int mqtt_version;         /* the CONNECT's protocol level: 4 (MQTT 3.1.1) or 5 */
	enum scenario sc;
	int qos;
	double seconds;
	size_t payload;
	long conns;
	int procs;
	unsigned window;          /* QoS 1 PUBLISHes in flight per publisher */
	uint64_t max_lag;         /* messages a publisher may lead its slowest subscriber by; 0: none */
	bool max_lag_set;
	int conn_window;          /* handshakes (connect + CONNACK) in progress at once */
	int rate;                 /* latency scenario: messages per second */
	double drain;             /* most seconds spent waiting for stragglers */
	struct sockaddr_storage dst;
	socklen_t dst_len;
	struct sockaddr_in src[MAX_SRC];
	int n_src;
	pid_t pids[MAX_PIDS];
	int n_pids;
	const char *user;         /* NULL: no user name; may hold one %d */
	const char *password;     /* NULL: no password */
	bool json;
	/* transports */
	bool tls;
	const char *cafile, *cert, *key, *ciphers, *ciphersuites, *groups, *sni;
	int tls_version;          /* 0: any TLS 1.2 or later; 12 or 13: only that one */
	bool tls_resume;          /* offer the session of an earlier connection */
	const char *ws_path;      /* NULL: MQTT straight on TCP or TLS */
	size_t ws_frame_max;      /* payload bytes per WebSocket frame; 0: no limit */
};

/* Bytes at [off, len) are pending; cap is the allocation. */
struct buf {
	uint8_t *p;
	size_t off, len, cap;
};

/* A WebSocket connection's framing (RFC 6455): wire bytes either way. */
struct ws {
	struct buf in;            /* read from the socket, not yet unframed */
	struct buf out;           /* framed, not yet written */
	uint64_t left;            /* payload bytes of the current data frame still to come */
	uint32_t rng;             /* masking keys */
	char key[32];             /* Sec-WebSocket-Key, base64 */
};

/*
 * What one subscriber got from one publisher. A shared group has one more
 * per publisher (run.group) for what any member got; there 'next' is the
 * lowest sequence no member has got, the group's floor (group_floor()).
 */
struct track {
	uint64_t next;            /* highest sequence received + 1 */
	uint64_t distinct;        /* sequences received at least once */
	uint64_t *bits;           /* one bit per sequence received */
	uint64_t nwords;
};

struct conn {
	int fd;
	enum role role;
	int idx;                  /* among publishers, subscribers or idle connections */
	enum cstate st;
	bool writable, dirty, more_in;
	struct buf in, out;       /* MQTT bytes */
	SSL *ssl;                 /* --tls */
	struct ws *ws;            /* --ws */
	uint64_t t_start;         /* ns: when its TCP connect began */
	/* publisher */
	char topic[48];
	uint16_t topic_len;
	uint64_t seq;             /* messages generated so far = next sequence */
	uint64_t acked;
	unsigned inflight;
	uint16_t next_id;
	uint64_t *ids;            /* QoS 1 packet ids awaiting PUBACK, one bit each */
	uint64_t floor;           /* lowest 'next' among its subscribers, as last computed */
	uint64_t lag_base;        /* QoS 0: sequences below this are given up as lost */
	uint64_t blocked_since;   /* ns; 0 when not held back by max_lag */
	/* subscriber */
	struct track *tr;         /* one per publisher */
	uint64_t rx;
};

#define H_BUCKETS (128 + 57 * 64)
/* Log-linear histogram of nanoseconds: exact below 128, then 64 steps per octave (1.6%). */
struct hist {
	uint64_t n, max;
	uint64_t b[H_BUCKETS];
};

struct procset {
	pid_t pid[MAX_BROKER_PROCS];
	int n;
	double cpu_s;
	bool root_gone;
};

struct run {
	const struct opts *o;
	int ep;
	struct conn *c;
	int n, n_pubs, n_subs;
	struct conn **pub, **sub;
	int **pub_subs;           /* subscriber indexes expecting each publisher */
	int *pub_nsubs;
	struct track *group;      /* sharedfanin: per publisher, what the group got; else NULL */
	struct conn **dirty, **more, **more_next;
	int n_dirty, n_more;
	long src_first;           /* global index of c[0], for --src-addrs rotation */
	struct conn timer;
	enum phase ph;
	int next_start, handshaking, ready, target;
	bool busy;                /* a publisher could send more: do not sleep */
	uint64_t t0, t1, t_stop, last_rx, t_first_ready, t_last_ready;
	uint64_t rx, rx_interval, distinct, dup, ooo, bad, bad_ack, wrong_qos;
	uint64_t refused;         /* MQTT 5 PUBACKs with a failure reason code */
	uint8_t refused_reason;   /* the first of them */
	uint64_t handshakes, resumed;   /* handshakes scenario */
	SSL_SESSION *session;     /* --tls-resume: offered to every new connection */
	char tls_desc[96];        /* version, cipher suite and server key of the first session */
	struct hist h;
	struct procset c0, c1;
	long pss1_kb;             /* at the end of the measured interval */
	char failure[512];
	uint8_t pay[65536];
};

static const struct opts *g_opts;   /* for error reports only */
static bool g_child;                /* a conns helper process: errors go to stderr only */

static const char *mqtt_version_name(const struct opts *o)
{
	return o->mqtt_version == MQTT5_PROTOCOL_LEVEL ? "5.0" : "3.1.1";
}

static bool v5(const struct run *r)
{
	return r->o->mqtt_version == MQTT5_PROTOCOL_LEVEL;
}

/* ---------------------------------------------------------------- errors */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

/* Setup and usage errors: no figures to report, exit 2. */
static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "iotd-bench: %s\n", msg);
	if (g_opts && g_opts->json && !g_child) {
		printf("{\"ok\":false,\"scenario\":\"%s\",\"qos\":%d,\"mqtt_version\":\"%s\",\"error\":",
		       sc_names[g_opts->sc], g_opts->qos, mqtt_version_name(g_opts));
		json_str(stdout, msg);
		printf("}\n");
	}
	fflush(stdout);
	exit(2);
}

/* A broker misbehaving mid-run: stop, but still report what was measured. */
static void fail(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct run *r, const char *fmt, ...)
{
	va_list ap;

	if (r->failure[0])
		return;
	va_start(ap, fmt);
	vsnprintf(r->failure, sizeof(r->failure), fmt, ap);
	va_end(ap);
	r->ph = PH_DONE;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		die("out of memory");
	return p;
}

/* ------------------------------------------------------------------ time */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double secs(uint64_t ns)
{
	return (double)ns / 1e9;
}

static uint64_t ns_of(double s)
{
	return (uint64_t)(s * 1e9);
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ------------------------------------------------------------- histogram */

static unsigned h_index(uint64_t v)
{
	unsigned msb;

	if (v < 128)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return 128u + (msb - 7u) * 64u + (unsigned)((v >> (msb - 6u)) - 64u);
}

/* Middle of a bucket's range. */
static uint64_t h_value(unsigned i)
{
	unsigned k, shift;

	if (i < 128)
		return i;
	k = i - 128;
	shift = 1 + k / 64;
	return ((64ull + k % 64) << shift) + ((1ull << shift) >> 1);
}

static void h_add(struct hist *h, uint64_t v)
{
	h->b[h_index(v)]++;
	h->n++;
	if (v > h->max)
		h->max = v;
}

static double h_pct_us(const struct hist *h, double q)
{
	uint64_t want, seen = 0;

	if (!h->n)
		return 0;
	want = (uint64_t)(q * (double)h->n);   /* no libm: round up by hand */
	if ((double)want < q * (double)h->n)
		want++;
	if (want < 1)
		want = 1;
	for (unsigned i = 0; i < H_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= want)
			return (double)h_value(i) / 1e3;
	}
	return (double)h->max / 1e3;
}

/* ------------------------------------------------- broker CPU and memory */

/* Fields of /proc/PID/stat after the command name, which may hold spaces. */
static bool read_stat(pid_t pid, long *ppid, double *cpu_self, double *cpu_children)
{
	char path[64], line[1024], *p;
	unsigned long long f[20];
	FILE *fp;
	int n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fp = fopen(path, "r");
	if (!fp)
		return false;
	p = fgets(line, sizeof(line), fp);
	fclose(fp);
	if (!p || !(p = strrchr(line, ')')))
		return false;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime */
	n = sscanf(p + 2, "%*c %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
		   &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9],
		   &f[10], &f[11], &f[12], &f[13]);
	if (n != 14)
		return false;
	double tck = (double)sysconf(_SC_CLK_TCK);
	*ppid = (long)f[0];
	*cpu_self = (double)(f[10] + f[11]) / tck;
	*cpu_children = (double)(f[12] + f[13]) / tck;
	return true;
}

static bool in_set(const struct procset *s, pid_t pid)
{
	for (int i = 0; i < s->n; i++)
		if (s->pid[i] == pid)
			return true;
	return false;
}

/* Adds every process whose parent is already in the set (one generation). */
static int add_children(struct procset *s)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int added = 0;

	if (!d)
		return 0;
	while ((e = readdir(d)) && s->n < MAX_BROKER_PROCS) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		long ppid;
		double a, b;

		if (*end || pid <= 0 || in_set(s, (pid_t)pid))
			continue;
		if (read_stat((pid_t)pid, &ppid, &a, &b) && in_set(s, (pid_t)ppid)) {
			s->pid[s->n++] = (pid_t)pid;
			added++;
		}
	}
	closedir(d);
	return added;
}

/*
 * The broker's processes and their CPU time. Roots count their reaped
 * children's time too, so a worker that dies and is reaped between two
 * snapshots does not take its CPU time with it.
 */
static void proc_snapshot(const struct opts *o, struct procset *s)
{
	memset(s, 0, sizeof(*s));
	for (int i = 0; i < o->n_pids; i++)
		s->pid[s->n++] = o->pids[i];
	for (int depth = 0; depth < 4 && add_children(s) > 0; depth++)
		;
	for (int i = 0; i < s->n; i++) {
		long ppid;
		double self, kids;

		if (!read_stat(s->pid[i], &ppid, &self, &kids)) {
			if (i < o->n_pids)
				s->root_gone = true;
			continue;
		}
		s->cpu_s += self + (i < o->n_pids ? kids : 0);
	}
}

static long pss_kb_of(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *fp;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	fp = fopen(path, "r");
	if (!fp)
		return -1;
	while (fgets(line, sizeof(line), fp))
		if (sscanf(line, "Pss: %ld kB", &kb) == 1)
			break;
	fclose(fp);
	return kb;
}

/* Sum of Pss over the broker's processes, in kB; -1 when not measurable. */
static long pss_kb(const struct opts *o)
{
	struct procset s;
	long sum = 0;

	if (!o->n_pids)
		return -1;
	proc_snapshot(o, &s);
	for (int i = 0; i < s.n; i++) {
		long kb = pss_kb_of(s.pid[i]);

		if (kb > 0)
			sum += kb;
	}
	return sum;
}

static bool same_procs(const struct procset *a, const struct procset *b)
{
	if (a->n != b->n)
		return false;
	for (int i = 0; i < a->n; i++)
		if (!in_set(b, a->pid[i]))
			return false;
	return true;
}

/* --------------------------------------------------------------- buffers */

static void buf_init(struct buf *b, size_t cap)
{
	b->p = xcalloc(1, cap);
	b->cap = cap;
	b->off = b->len = 0;
}

/* Room for 'more' bytes after len; pending bytes move to the front first. */
static uint8_t *buf_room(struct buf *b, size_t more)
{
	if (b->off) {
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
	}
	if (b->cap - b->len < more) {
		size_t cap = b->cap ? b->cap : 256;

		while (cap - b->len < more)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			die("out of memory");
		b->cap = cap;
	}
	return b->p + b->len;
}

/* ----------------------------------------------------------- connections */

static void mark_dirty(struct run *r, struct conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		r->dirty[r->n_dirty++] = c;
	}
}

static void queue_ack(struct run *r, struct conn *c, enum mqtt_type type, uint16_t id)
{
	uint8_t *p = buf_room(&c->out, MQTT5_ACK_MAX);

	c->out.len += v5(r) ? mqtt5_encode_ack(p, type, id, MQTT5_RC_SUCCESS, NULL)
			    : mqtt_encode_ack(p, type, id);
	mark_dirty(r, c);
}

static void conn_lost(struct run *r, struct conn *c, const char *why)
{
	if (r->ph == PH_SETUP && (c->st == CS_TLS || c->st == CS_UPGRADE))
		die("%s %d: %s set-up failed (%s)", role_names[c->role], c->idx,
		    c->st == CS_TLS ? "TLS" : "WebSocket", why);
	if (r->ph == PH_SETUP)
		die("broker closed %s %d during set-up (%s): is it refusing connections?",
		    role_names[c->role], c->idx, why);
	if (r->ph != PH_DONE)
		fail(r, "broker closed %s %d while %s (%s) after %" PRIu64 " deliveries in all",
		     role_names[c->role], c->idx, r->ph == PH_MEASURE ? "measuring" : "draining",
		     why, r->rx);
	c->st = CS_CLOSED;
	c->writable = false;
}

/* One send(): the bytes written, or 0 when the socket is full or the connection lost. */
static size_t sock_send(struct run *r, struct conn *c, const uint8_t *p, size_t n)
{
	for (;;) {
		ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);

		if (k >= 0) {
			if ((size_t)k < n)
				c->writable = false;  /* socket full: the next EPOLLOUT edge resumes */
			return (size_t)k;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			c->writable = false;
		else
			conn_lost(r, c, strerror(errno));
		return 0;
	}
}

static void xport_flush(struct run *r, struct conn *c);
static void parse_input(struct run *r, struct conn *c, uint64_t now);

static void conn_flush(struct run *r, struct conn *c)
{
	if (c->ssl || c->ws) {
		xport_flush(r, c);
		return;
	}
	for (int i = 0; i < 4 && c->writable && c->out.len > c->out.off; i++)
		c->out.off += sock_send(r, c, c->out.p + c->out.off, c->out.len - c->out.off);
	if (c->out.off == c->out.len)
		c->out.off = c->out.len = 0;
}

static void flush_dirty(struct run *r)
{
	for (int i = 0; i < r->n_dirty; i++) {
		struct conn *c = r->dirty[i];

		c->dirty = false;
		if (c->st != CS_CLOSED)
			conn_flush(r, c);
	}
	r->n_dirty = 0;
}

static void client_id(const struct conn *c, char *out, size_t len)
{
	static const char tag[] = { 's', 'p', 'c', 't' };

	snprintf(out, len, "ib%d-%c%d", (int)getpid(), tag[c->role], c->idx);
}

/*
 * The --user name of the connection opened n-th (from 0, across every
 * --procs process): its %d, if any, is n. parse_user() checked the rest.
 */
static void user_name(const char *pattern, long n, char *out, size_t len)
{
	const char *d = strstr(pattern, "%d");

	if (d)
		snprintf(out, len, "%.*s%ld%s", (int)(d - pattern), pattern, n, d + 2);
	else
		snprintf(out, len, "%s", pattern);
}

static void queue_connect(struct run *r, struct conn *c)
{
	const struct opts *o = r->o;
	char id[32], user[MAX_USER + 24];
	struct mqtt_connect m = { 0 };

	client_id(c, id, sizeof(id));
	m.protocol_level = (uint8_t)o->mqtt_version;
	m.clean_session = true;     /* Clean Start in MQTT 5, with no session expiry */
	m.keepalive = KEEPALIVE;
	m.client_id.p = (const uint8_t *)id;
	m.client_id.len = (uint16_t)strlen(id);
	if (o->user) {
		user_name(o->user, r->src_first + (c - r->c), user, sizeof(user));
		m.username_flag = true;
		m.username.p = (const uint8_t *)user;
		m.username.len = (uint16_t)strlen(user);
	}
	if (o->password) {
		m.password_flag = true;
		m.password.p = (const uint8_t *)o->password;
		m.password.len = (uint16_t)strlen(o->password);
	}
	if (v5(r))
		c->out.len += mqtt5_encode_connect(buf_room(&c->out, mqtt5_connect_size(&m, NULL, NULL)),
						   &m, NULL, NULL);
	else
		c->out.len += mqtt_encode_connect(buf_room(&c->out, mqtt_connect_size(&m)), &m);
	mark_dirty(r, c);
}

static void sub_filter(const struct run *r, const struct conn *c, char *out, size_t len)
{
	switch (r->o->sc) {
	case SC_FANIN:
		snprintf(out, len, "bench/#");
		break;
	case SC_PAIRS:
		snprintf(out, len, "bench/pair/%d", c->idx);
		break;
	case SC_SHAREDFANIN:
		snprintf(out, len, SHARED_FILTER);
		break;
	default:
		snprintf(out, len, "bench/%s", sc_names[r->o->sc]);
		break;
	}
}

static void queue_subscribe(struct run *r, struct conn *c)
{
	char f[64];
	struct mqtt_str filter;
	uint8_t qos = (uint8_t)r->o->qos;

	sub_filter(r, c, f, sizeof(f));
	filter.p = (const uint8_t *)f;
	filter.len = (uint16_t)strlen(f);
	if (v5(r))
		c->out.len += mqtt5_encode_sub(buf_room(&c->out, mqtt5_sub_size(MQTT_SUBSCRIBE, &filter,
										1, NULL)),
					       MQTT_SUBSCRIBE, 1, &filter, &qos, 1, NULL);
	else
		c->out.len += mqtt_encode_sub(buf_room(&c->out, mqtt_sub_size(MQTT_SUBSCRIBE, &filter, 1)),
					      MQTT_SUBSCRIBE, 1, &filter, &qos, 1);
	mark_dirty(r, c);
}

/* ------------------------------------------------------------ transports */

static SSL_CTX *g_tls;   /* one per process: conns helpers make their own after fork() */

static const char *tls_error(void)
{
	static char msg[256];
	unsigned long e = ERR_get_error();

	if (!e)
		return "no detail";
	ERR_error_string_n(e, msg, sizeof(msg));
	return msg;
}

static int tls_version_of(int v)
{
	return v == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

/* The client context: versions, suites, trust and identity, made once. */
static SSL_CTX *tls_ctx(const struct opts *o)
{
	SSL_CTX *ctx;
	X509_VERIFY_PARAM *vp;

	if (g_tls)
		return g_tls;
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		die("SSL_CTX_new: %s", tls_error());
	SSL_CTX_set_min_proto_version(ctx, tls_version_of(o->tls_version));
	if (o->tls_version)
		SSL_CTX_set_max_proto_version(ctx, tls_version_of(o->tls_version));
	if (o->ciphers && !SSL_CTX_set_cipher_list(ctx, o->ciphers))
		die("--ciphers '%s': %s", o->ciphers, tls_error());
	if (o->ciphersuites && !SSL_CTX_set_ciphersuites(ctx, o->ciphersuites))
		die("--ciphersuites '%s': %s", o->ciphersuites, tls_error());
	if (o->groups && !SSL_CTX_set1_groups_list(ctx, o->groups))
		die("--groups '%s': %s", o->groups, tls_error());
	if (o->cafile ? !SSL_CTX_load_verify_locations(ctx, o->cafile, NULL)
		      : !SSL_CTX_set_default_verify_paths(ctx))
		die("cannot load the trusted certificates%s%s: %s", o->cafile ? " of " : "",
		    o->cafile ? o->cafile : "", tls_error());
	if (o->cert && (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1 ||
			SSL_CTX_use_PrivateKey_file(ctx, o->key ? o->key : o->cert, SSL_FILETYPE_PEM) != 1 ||
			SSL_CTX_check_private_key(ctx) != 1))
		die("cannot use --cert %s / --key %s: %s", o->cert, o->key ? o->key : o->cert, tls_error());
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	/* the broker's certificate must name the address connected to (or --sni) */
	vp = SSL_CTX_get0_param(ctx);
	if (o->sni ? !X509_VERIFY_PARAM_set1_host(vp, o->sni, 0)
		   : !X509_VERIFY_PARAM_set1_ip_asc(vp, o->host) &&
		     !X509_VERIFY_PARAM_set1_host(vp, o->host, 0))
		die("cannot check certificates against %s: %s", o->sni ? o->sni : o->host, tls_error());
	/* sessions are resumed only when asked, from r->session */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	g_tls = ctx;
	return ctx;
}

static void tls_new(struct run *r, struct conn *c)
{
	c->ssl = SSL_new(tls_ctx(r->o));
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
		die("SSL_new: %s", tls_error());
	SSL_set_connect_state(c->ssl);
	if (r->o->sni && !SSL_set_tlsext_host_name(c->ssl, r->o->sni))
		die("--sni %s: %s", r->o->sni, tls_error());
	if (r->session)
		SSL_set_session(c->ssl, r->session);
}

/* What went wrong with an SSL call that returned rc; NULL: it only has to wait. */
static const char *tls_failure(struct conn *c, int rc, bool *want_write)
{
	static char msg[320];

	switch (SSL_get_error(c->ssl, rc)) {
	case SSL_ERROR_WANT_WRITE:
		*want_write = true;
		return NULL;
	case SSL_ERROR_WANT_READ:
		return NULL;
	case SSL_ERROR_ZERO_RETURN:
		return "TLS close_notify";
	case SSL_ERROR_SYSCALL:
		return errno ? strerror(errno) : "end of stream";
	default:
		if (SSL_get_verify_result(c->ssl) != X509_V_OK) {
			snprintf(msg, sizeof(msg), "TLS: the broker's certificate: %s",
				 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
			return msg;
		}
		snprintf(msg, sizeof(msg), "TLS: %s", tls_error());
		return msg;
	}
}

/* "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519 EC-256": what the broker chose, for the report. */
static void tls_describe(struct run *r, struct conn *c)
{
	X509 *peer = SSL_get0_peer_certificate(c->ssl);
	EVP_PKEY *k = peer ? X509_get0_pubkey(peer) : NULL;
	const char *group = SSL_group_to_name(c->ssl, SSL_get_negotiated_group(c->ssl));

	snprintf(r->tls_desc, sizeof(r->tls_desc), "%s %s %s %s-%d", SSL_get_version(c->ssl),
		 SSL_get_cipher_name(c->ssl), group ? group : "?",
		 k ? EVP_PKEY_get0_type_name(k) : "?", k ? EVP_PKEY_get_bits(k) : 0);
}

static void base64(const uint8_t *in, int n, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, n);
}

/* RFC 6455 section 4.1: GET with Upgrade, the client's key and "mqtt" as subprotocol. */
static void ws_queue_upgrade(struct run *r, struct conn *c)
{
	const struct opts *o = r->o;
	uint8_t nonce[16];
	char req[1024];
	int n;

	if (RAND_bytes(nonce, sizeof(nonce)) != 1)
		die("RAND_bytes: %s", tls_error());
	base64(nonce, sizeof(nonce), c->ws->key);
	memcpy(&c->ws->rng, nonce, 4);
	c->ws->rng |= 1;   /* xorshift32 must not start at 0 */
	n = snprintf(req, sizeof(req),
		     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
		     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
		     "Sec-WebSocket-Protocol: mqtt\r\n\r\n",
		     o->ws_path, o->host, o->port, c->ws->key);
	memcpy(buf_room(&c->ws->out, (size_t)n), req, (size_t)n);
	c->ws->out.len += (size_t)n;
	c->st = CS_UPGRADE;
	mark_dirty(r, c);
}

/* TCP, then TLS and the WebSocket upgrade when asked, are up: MQTT may start. */
static void transport_ready(struct run *r, struct conn *c)
{
	if (c->ssl && !r->tls_desc[0])
		tls_describe(r, c);
	if (c->ws && c->st != CS_UPGRADE) {
		ws_queue_upgrade(r, c);
		return;
	}
	c->st = CS_CONNACK;
	queue_connect(r, c);
}

static void tls_handshake(struct run *r, struct conn *c)
{
	bool want_write = false;
	const char *why;
	int rc;

	ERR_clear_error();
	rc = SSL_connect(c->ssl);
	if (rc == 1) {
		transport_ready(r, c);
		return;
	}
	why = tls_failure(c, rc, &want_write);
	if (why)
		conn_lost(r, c, why);
	else if (want_write)
		c->writable = false;
}

/* The TCP connection is up. */
static void link_up(struct run *r, struct conn *c)
{
	if (c->ssl) {
		c->st = CS_TLS;
		tls_handshake(r, c);
	} else {
		transport_ready(r, c);
	}
}

static uint32_t xorshift32(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* One final frame, masked as a client's must be (RFC 6455 section 5.3). */
static void ws_frame(struct ws *w, uint8_t opcode, const uint8_t *p, size_t n)
{
	uint8_t *f = buf_room(&w->out, n + 14);
	uint32_t key = xorshift32(&w->rng);
	size_t hl = 2;
	uint8_t *mask;

	f[0] = 0x80 | opcode;
	if (n < 126) {
		f[1] = (uint8_t)(0x80 | n);
	} else if (n < 65536) {
		f[1] = 0x80 | 126;
		f[2] = (uint8_t)(n >> 8);
		f[3] = (uint8_t)n;
		hl = 4;
	} else {
		f[1] = 0x80 | 127;
		for (int i = 0; i < 8; i++)
			f[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
		hl = 10;
	}
	mask = f + hl;
	memcpy(mask, &key, 4);
	hl += 4;
	for (size_t i = 0; i < n; i++)
		f[hl + i] = p[i] ^ mask[i & 3];
	w->out.len += hl + n;
}

/* Frames every pending MQTT byte: many packets to a frame, or --ws-frame-max a frame. */
static void ws_frame_output(const struct opts *o, struct conn *c)
{
	struct buf *b = &c->out;

	while (b->len > b->off) {
		size_t n = b->len - b->off;

		if (o->ws_frame_max && n > o->ws_frame_max)
			n = o->ws_frame_max;
		ws_frame(c->ws, 0x2, b->p + b->off, n);
		b->off += n;
	}
	b->off = b->len = 0;
}

/*
 * One SSL_write or SSL_read: the bytes moved, or 0 when it has to wait
 * (for the socket to drain: not writable until the next EPOLLOUT edge)
 * or the connection is lost.
 */
static size_t tls_io(struct run *r, struct conn *c, bool writing, uint8_t *p, size_t n)
{
	int len = n > INT_MAX ? INT_MAX : (int)n, rc;
	bool want_write = false;
	const char *why;

	ERR_clear_error();
	rc = writing ? SSL_write(c->ssl, p, len) : SSL_read(c->ssl, p, len);
	if (rc > 0)
		return (size_t)rc;
	why = tls_failure(c, rc, &want_write);
	if (why)
		conn_lost(r, c, why);
	else if (want_write)
		c->writable = false;
	return 0;
}

/* Writes b through TLS or straight to the socket until it is empty or would block. */
static void xport_write(struct run *r, struct conn *c, struct buf *b)
{
	while (c->writable && b->len > b->off && c->st != CS_CLOSED) {
		size_t want = b->len - b->off;
		size_t n = c->ssl ? tls_io(r, c, true, b->p + b->off, want)
				  : sock_send(r, c, b->p + b->off, want);

		if (!n)
			break;   /* TLS wanting to read: xport_read() calls again */
		b->off += n;
	}
	if (b->off == b->len)
		b->off = b->len = 0;
}

/*
 * New frames are made only once the last ones are written: MQTT bytes
 * wait in c->out meanwhile, so a publisher pauses as it does on TCP.
 */
static void xport_flush(struct run *r, struct conn *c)
{
	if (!c->ws) {
		xport_write(r, c, &c->out);
		return;
	}
	xport_write(r, c, &c->ws->out);
	if (c->ws->out.len == 0 && c->out.len > c->out.off && c->st != CS_UPGRADE) {
		ws_frame_output(r->o, c);
		xport_write(r, c, &c->ws->out);
	}
}

/* Reads into b what the socket holds; *full: b filled up, read again next turn. */
static void xport_fill(struct run *r, struct conn *c, struct buf *b, bool *full)
{
	buf_room(b, 1);
	while (b->len < b->cap && c->st != CS_CLOSED) {
		size_t room = b->cap - b->len;

		if (c->ssl) {
			size_t n = tls_io(r, c, false, b->p + b->len, room);

			if (!n)
				break;
			b->len += n;
			continue;
		}
		ssize_t n = read(c->fd, b->p + b->len, room);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				conn_lost(r, c, strerror(errno));
			break;
		}
		if (n == 0) {
			conn_lost(r, c, "end of stream");
			break;
		}
		b->len += (size_t)n;
		if ((size_t)n < room)
			break;   /* drained: the next byte raises a new edge */
	}
	*full = b->len == b->cap && c->st != CS_CLOSED;
}

/* A header's value in the upgrade response (NUL-terminated), or NULL. */
static const char *http_header(const char *resp, const char *name)
{
	size_t n = strlen(name);

	for (const char *l = strstr(resp, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
		if (!strncasecmp(l + 2, name, n) && l[2 + n] == ':') {
			const char *v = l + 3 + n;

			while (*v == ' ' || *v == '\t')
				v++;
			return v;
		}
	}
	return NULL;
}

static bool header_is(const char *resp, const char *name, const char *want)
{
	const char *v = http_header(resp, name);
	size_t n = strlen(want);

	return v && !strncasecmp(v, want, n) && (v[n] == '\r' || v[n] == ' ' || v[n] == '\t');
}

/* RFC 6455 section 4.2.2: 101, the accept key of our key, and "mqtt". */
static void ws_check_upgrade(struct run *r, struct conn *c)
{
	struct buf *b = &c->ws->in;
	char resp[WS_MAX_RESPONSE + 1], keyed[96], accept[32];
	uint8_t sha1[20];
	const uint8_t *end = memmem(b->p + b->off, b->len - b->off, "\r\n\r\n", 4);
	size_t hl;

	if (!end) {
		if (b->len - b->off > WS_MAX_RESPONSE)
			conn_lost(r, c, "WebSocket upgrade response headers too long");
		return;
	}
	hl = (size_t)(end + 4 - (b->p + b->off));
	if (hl > WS_MAX_RESPONSE) {
		conn_lost(r, c, "WebSocket upgrade response headers too long");
		return;
	}
	memcpy(resp, b->p + b->off, hl);
	resp[hl] = '\0';
	b->off += hl;
	snprintf(keyed, sizeof(keyed), "%s%s", c->ws->key, WS_GUID);
	EVP_Digest(keyed, strlen(keyed), sha1, NULL, EVP_sha1(), NULL);
	base64(sha1, sizeof(sha1), accept);
	if (strncmp(resp, "HTTP/1.1 101", 12))
		conn_lost(r, c, "WebSocket upgrade refused (no 101 Switching Protocols)");
	else if (!header_is(resp, "Sec-WebSocket-Accept", accept))
		conn_lost(r, c, "WebSocket upgrade: wrong Sec-WebSocket-Accept");
	else if (!header_is(resp, "Sec-WebSocket-Protocol", "mqtt"))
		conn_lost(r, c, "WebSocket upgrade: the broker did not choose subprotocol mqtt");
	else
		transport_ready(r, c);
}

/* A control frame, whole in b at off: ping is answered, close ends the connection. */
static void ws_control(struct run *r, struct conn *c, uint8_t opcode, const uint8_t *p, size_t n)
{
	if (opcode == 0x9) {
		ws_frame(c->ws, 0xA, p, n);
		mark_dirty(r, c);
	} else if (opcode == 0x8) {
		conn_lost(r, c, "WebSocket close frame");
	} else if (opcode != 0xA) {
		conn_lost(r, c, "WebSocket frame with a reserved opcode");
	}
}

/*
 * Unframes what was read into MQTT bytes in c->in: data frames are
 * streamed (a packet may span frames, a frame may hold many packets),
 * control frames are taken whole. Returns whether c->in grew.
 */
static bool ws_unframe(struct run *r, struct conn *c)
{
	struct ws *w = c->ws;
	struct buf *b = &w->in;
	bool grew = false;

	while (b->len > b->off && c->st != CS_CLOSED) {
		const uint8_t *h = b->p + b->off;
		size_t avail = b->len - b->off, hl = 2;
		uint64_t n;

		if (w->left) {
			size_t take = avail < w->left ? avail : (size_t)w->left;

			memcpy(buf_room(&c->in, take), h, take);
			c->in.len += take;
			b->off += take;
			w->left -= take;
			grew = true;
			continue;
		}
		if (avail < 2)
			break;
		n = h[1] & 0x7f;
		hl += n == 126 ? 2 : n == 127 ? 8 : 0;
		if (avail < hl)
			break;
		if (h[1] & 0x80) {
			conn_lost(r, c, "masked WebSocket frame from the broker");
			break;
		}
		if (n >= 126) {
			n = 0;
			for (size_t i = 2; i < hl; i++)
				n = n << 8 | h[i];
		}
		if (h[0] & 0x08) {   /* control: at most 125 bytes, never fragmented */
			if (n > 125 || !(h[0] & 0x80)) {
				conn_lost(r, c, "bad WebSocket control frame");
				break;
			}
			if (avail < hl + n)
				break;
			b->off += hl + (size_t)n;
			ws_control(r, c, h[0] & 0x0f, h + hl, (size_t)n);
			continue;
		}
		if ((h[0] & 0x0f) != 0x2 && (h[0] & 0x0f) != 0x0) {
			conn_lost(r, c, "non-binary WebSocket data frame");
			break;
		}
		b->off += hl;
		w->left = n;
	}
	if (b->off == b->len)
		b->off = b->len = 0;
	return grew;
}

static void xport_read(struct run *r, struct conn *c)
{
	bool full;

	if (!c->ws) {
		xport_fill(r, c, &c->in, &full);
		parse_input(r, c, now_ns());
	} else {
		xport_fill(r, c, &c->ws->in, &full);
		if (c->st == CS_UPGRADE)
			ws_check_upgrade(r, c);
		if (c->st != CS_UPGRADE && ws_unframe(r, c))
			parse_input(r, c, now_ns());
	}
	if (full && c->st != CS_CLOSED) {
		c->more_in = true;
		r->more_next[r->n_more++] = c;
	}
	/* a TLS write may have waited for this read */
	if (c->ssl && (c->out.len > c->out.off || (c->ws && c->ws->out.len)))
		mark_dirty(r, c);
}

/* Best effort at close: DISCONNECT when nothing else is half written, then close_notify. */
static void xport_close(struct conn *c)
{
	uint8_t d[2];
	size_t n = mqtt_encode_empty(d, MQTT_DISCONNECT);
	bool quiet = c->out.len == c->out.off && (!c->ws || !c->ws->out.len);

	if (c->st == CS_READY && quiet && c->ws) {
		ws_frame(c->ws, 0x2, d, n);
		if (c->ssl)
			(void)SSL_write(c->ssl, c->ws->out.p, (int)c->ws->out.len);
		else
			(void)send(c->fd, c->ws->out.p, c->ws->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
	} else if (c->st == CS_READY && quiet && c->ssl) {
		(void)SSL_write(c->ssl, d, (int)n);
	}
	if (c->ssl) {
		if (SSL_is_init_finished(c->ssl))
			(void)SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		c->ssl = NULL;
		ERR_clear_error();
	}
	if (c->ws)
		c->ws->in.off = c->ws->in.len = c->ws->out.off = c->ws->out.len = c->ws->left = 0;
}

static void set_opt(int fd, int level, int name, int val)
{
	(void)setsockopt(fd, level, name, &val, sizeof(val));
}

/* Binds to the next source address, leaving the port to connect(). */
static void bind_source(const struct opts *o, int fd, long i)
{
	if (!o->n_src)
		return;
	set_opt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
	if (bind(fd, (const struct sockaddr *)&o->src[i % o->n_src], sizeof(o->src[0])) < 0)
		die("cannot bind to source address %s: %s",
		    inet_ntoa(o->src[i % o->n_src].sin_addr), strerror(errno));
}

static void connect_failed(const struct opts *o, int err)
{
	if (err == ECONNREFUSED)
		die("connection refused by %s port %d: is the broker running?", o->host, o->port);
	if (err == EADDRNOTAVAIL)
		die("out of ephemeral ports: spread connections with --src-addrs");
	if (err == EMFILE || err == ENFILE)
		die("out of file descriptors: spread connections with --procs");
	die("cannot connect to %s port %d: %s", o->host, o->port, strerror(err));
}

static void conn_start(struct run *r, struct conn *c, long global_idx)
{
	const struct opts *o = r->o;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c };

	c->fd = socket(o->dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		connect_failed(o, errno);
	c->in.off = c->in.len = c->out.off = c->out.len = 0;
	c->t_start = now_ns();
	set_opt(c->fd, IPPROTO_TCP, TCP_NODELAY, 1);
	if (c->role == R_PUB && o->qos == 0)
		set_opt(c->fd, SOL_SOCKET, SO_SNDBUF, PUB_SNDBUF);
	bind_source(o, c->fd, global_idx);
	if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		die("epoll_ctl: %s", strerror(errno));
	c->st = CS_CONNECTING;
	r->handshaking++;
	if (o->tls)
		tls_new(r, c);
	if (connect(c->fd, (const struct sockaddr *)&o->dst, o->dst_len) == 0) {
		c->writable = true;
		link_up(r, c);
	} else if (errno != EINPROGRESS) {
		connect_failed(o, errno);
	}
}

/* Resets the connection so that its close costs no TIME_WAIT port. */
static void conn_close(struct conn *c)
{
	struct linger l = { 1, 0 };

	if (c->fd < 0)
		return;
	if (c->ssl || c->ws) {
		xport_close(c);
	} else if (c->st == CS_READY) {
		uint8_t d[2];
		size_t n = mqtt_encode_empty(d, MQTT_DISCONNECT);

		(void)send(c->fd, d, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	(void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(c->fd);
	c->fd = -1;
	c->st = CS_CLOSED;
}

/* ------------------------------------------------------ loss and ordering */

static bool expects(const struct run *r, int sub, int pub)
{
	switch (r->o->sc) {
	case SC_FANIN:
	case SC_FANOUT:
	case SC_LATENCY:
	case SC_SHAREDFANIN:    /* any member may get any message, one member each */
		return true;
	case SC_PAIRS:
		return sub == pub;
	default:
		return false;
	}
}

static void track_grow(struct track *t, uint64_t seq)
{
	uint64_t need = seq / 64 + 1, n = t->nwords ? t->nwords : 1024;

	while (n < need)
		n *= 2;
	t->bits = realloc(t->bits, n * sizeof(uint64_t));
	if (!t->bits)
		die("out of memory for the loss bitmaps");
	memset(t->bits + t->nwords, 0, (n - t->nwords) * sizeof(uint64_t));
	t->nwords = n;
}

/* Marks a sequence received; false (a duplicate) when it was already. */
static bool track_mark(struct run *r, struct track *t, uint64_t seq)
{
	uint64_t bit = 1ull << (seq % 64);

	if (seq / 64 >= t->nwords)
		track_grow(t, seq);
	if (t->bits[seq / 64] & bit) {
		r->dup++;
		return false;
	}
	t->bits[seq / 64] |= bit;
	t->distinct++;
	r->distinct++;
	return true;
}

/* A delivery below the highest one so far is late: reordered. */
static void track_order(struct run *r, struct track *t, uint64_t seq)
{
	if (seq < t->next)
		r->ooo++;
	else
		t->next = seq + 1;
}

/*
 * Records one delivery: new in order, late (reordered) or a duplicate. In
 * a shared group a message is new or a duplicate for the group as a whole,
 * and in order or late for the member that got it.
 */
static void track_add(struct run *r, struct conn *c, uint32_t pub, uint64_t seq)
{
	struct track *t = r->group ? &r->group[pub] : &c->tr[pub];

	if (track_mark(r, t, seq))
		track_order(r, &c->tr[pub], seq);
}

/*
 * The group's floor for one publisher: the lowest sequence no member has
 * got, those below lag_base (given up as lost) skipped. It only moves up,
 * so each sequence is stepped over once in the whole run.
 */
static uint64_t group_floor(const struct run *r, int pub)
{
	struct track *g = &r->group[pub];
	uint64_t lo = g->next > r->pub[pub]->lag_base ? g->next : r->pub[pub]->lag_base;

	while (lo / 64 < g->nwords) {
		unsigned k = (unsigned)(lo % 64);
		uint64_t w = ~(g->bits[lo / 64] >> k);  /* 1: not received (or shifted in) */
		unsigned got = w ? (unsigned)__builtin_ctzll(w) : 64;

		lo += got;
		if (got < 64 - k)
			break;   /* stopped at a sequence not received */
	}
	g->next = lo;
	return lo;
}

static void on_delivery(struct run *r, struct conn *c, const struct mqtt_publish *p, uint64_t now)
{
	uint32_t pub;
	uint64_t seq, sent_at;

	if (c->role != R_SUB || p->payload_len < PAYLOAD_HDR) {
		r->bad++;
		return;
	}
	if (p->qos)
		queue_ack(r, c, MQTT_PUBACK, p->packet_id);
	if (p->qos != r->o->qos)
		r->wrong_qos++;
	memcpy(&pub, p->payload, 4);
	memcpy(&seq, p->payload + 4, 8);
	memcpy(&sent_at, p->payload + 12, 8);
	if (pub >= (uint32_t)r->n_pubs || !expects(r, c->idx, (int)pub) || seq >= r->pub[pub]->seq) {
		r->bad++;    /* misrouted, or a sequence never sent */
		return;
	}
	track_add(r, c, pub, seq);
	h_add(&r->h, now > sent_at ? now - sent_at : 0);
	c->rx++;
	r->rx++;
	r->last_rx = now;
	if (r->ph == PH_MEASURE)
		r->rx_interval++;
}

/* reason: MQTT 5's (0 in 3.1.1); one of 0x80 or more refused the message. */
static void on_puback(struct run *r, struct conn *c, uint16_t id, uint8_t reason)
{
	uint64_t bit = 1ull << (id % 64);

	if (c->role != R_PUB || !c->ids || !(c->ids[id / 64] & bit)) {
		r->bad_ack++;
		return;
	}
	if (reason >= 0x80 && !r->refused++)
		r->refused_reason = reason;
	c->ids[id / 64] &= ~bit;
	c->inflight--;
	c->acked++;
}

/* --------------------------------------------------------- packet intake */

static void became_ready(struct run *r, struct conn *c)
{
	uint64_t now = now_ns();

	c->st = CS_READY;
	r->handshaking--;
	r->ready++;
	if (!r->t_first_ready)
		r->t_first_ready = now;
	r->t_last_ready = now;
}

/* MQTT 3.1.1 section 3.2.2.3, with what to check on this side. */
static const char *connack_reason(const struct opts *o, uint8_t rc)
{
	switch (rc) {
	case 1: return "unacceptable protocol version";
	case 2: return "client identifier rejected";
	case 3: return "server unavailable";
	case 4: return o->user || o->password ? "bad user name or password: check --user and --password"
					       : "bad user name or password: the broker wants --user and --password";
	case 5: return o->user || o->password ? "not authorized: check --user and --password"
					       : "not authorized: the broker wants --user and --password";
	default: return "reserved";
	}
}

/* An MQTT 5 reason code's name, for messages. */
static const char *reason_name(enum mqtt_type type, uint8_t code)
{
	const char *name = mqtt5_reason_name(type, code);

	return name ? name : "not a reason code of this packet";
}

/*
 * rc: a 3.1.1 return code, or with v5_rc an MQTT 5 reason code. A broker
 * without MQTT 5 answers a level 5 CONNECT with the 3.1.1 return code 1.
 */
static void on_connack(struct run *r, struct conn *c, uint8_t rc, bool v5_rc)
{
	if (c->st != CS_CONNACK)
		die("broker sent CONNACK to %s %d twice", role_names[c->role], c->idx);
	if (v5_rc && rc != MQTT5_RC_SUCCESS)
		die("broker refused CONNECT of %s %d: CONNACK reason code 0x%02x (%s)",
		    role_names[c->role], c->idx, rc, reason_name(MQTT_CONNACK, rc));
	if (!v5_rc && rc != MQTT_CONNACK_ACCEPTED)
		die("broker refused CONNECT of %s %d: CONNACK return code %u (%s)%s",
		    role_names[c->role], c->idx, rc, connack_reason(r->o, rc),
		    v5(r) && rc == 1 ? ": the broker does not speak MQTT 5 (-V 5)" : "");
	if (c->role == R_SUB) {
		c->st = CS_SUBACK;
		queue_subscribe(r, c);
	} else {
		became_ready(r, c);
	}
}

/* 3.1.1's one failure code, 0x80, is MQTT 5's first; MQTT 5 names why. */
static void on_suback(struct run *r, struct conn *c, struct mqtt_list_iter *it)
{
	struct mqtt_str f;
	uint8_t code = MQTT_SUBACK_FAILURE;

	if (c->st != CS_SUBACK || !mqtt_list_next(it, &f, &code))
		die("unexpected SUBACK for %s %d", role_names[c->role], c->idx);
	if (code >= MQTT_SUBACK_FAILURE && v5(r))
		die("broker refused the subscription of subscriber %d: SUBACK reason code 0x%02x (%s)%s",
		    c->idx, code, reason_name(MQTT_SUBACK, code),
		    r->o->user ? " (does its ACL let --user read the filter?)" : "");
	if (code >= MQTT_SUBACK_FAILURE)
		die("broker refused the subscription of subscriber %d%s", c->idx,
		    r->o->user ? " (does its ACL let --user read the filter?)" : "");
	if (code < r->o->qos)
		die("broker granted QoS %u to subscriber %d, %d was asked", code, c->idx, r->o->qos);
	became_ready(r, c);
}

/* One whole packet of a 3.1.1 connection. */
static int take_packet(struct run *r, struct conn *c, uint8_t first, const uint8_t *body,
		       uint32_t len, uint64_t now)
{
	struct mqtt_packet pkt;
	struct mqtt_list_iter it;
	int rc = mqtt_decode(first, body, len, &pkt);

	if (rc != MQTT_OK)
		return rc;
	switch (pkt.type) {
	case MQTT_PUBLISH:
		on_delivery(r, c, &pkt.u.publish, now);
		break;
	case MQTT_PUBACK:
		on_puback(r, c, pkt.u.packet_id, 0);
		break;
	case MQTT_CONNACK:
		on_connack(r, c, pkt.u.connack.rc, false);
		break;
	case MQTT_SUBACK:
		mqtt_list_iter_init(&it, &pkt);
		on_suback(r, c, &it);
		break;
	case MQTT_PINGRESP:
		break;
	default:
		r->bad++;
		break;
	}
	return MQTT_OK;
}

/*
 * Steps a PUBLISH's payload past its property block (Variable Byte Integer
 * length, then the properties), which this side has no use for. False
 * when the length is malformed or runs past the packet.
 */
static bool skip_properties(struct mqtt_publish *p)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < 4 && i < p->payload_len; i++) {
		n |= (uint32_t)(p->payload[i] & 0x7f) << (7 * i);
		if (p->payload[i] & 0x80)
			continue;
		if (n > p->payload_len - i - 1)
			return false;
		p->payload += i + 1 + n;
		p->payload_len -= i + 1 + n;
		return true;
	}
	return false;
}

/* A DISCONNECT from an MQTT 5 broker: the connection is lost, and the reason says why. */
static void on_disconnect(struct run *r, struct conn *c, uint8_t reason)
{
	char why[128];

	snprintf(why, sizeof(why), "DISCONNECT reason code 0x%02x: %s", reason,
		 reason_name(MQTT_DISCONNECT, reason));
	conn_lost(r, c, why);
}

/*
 * One whole packet of an MQTT 5 connection. A PUBLISH, the per-message
 * packet, is decoded by the 3.1.1 decoder, whose payload then starts with
 * the property block, skipped by its length: no property is parsed, and
 * no subscription identifier, message expiry or user property a broker
 * adds costs more than a length. A PUBACK of the 3.1.1 form takes the
 * 3.1.1 decoder too; every other packet is decoded in full.
 */
static int take_packet5(struct run *r, struct conn *c, uint8_t first, const uint8_t *body,
			uint32_t len, uint64_t now)
{
	struct mqtt5_packet pkt;
	struct mqtt_list_iter it;
	int rc;

	if (first >> 4 == MQTT_PUBLISH) {
		struct mqtt_packet pub;

		rc = mqtt_decode(first, body, len, &pub);
		if (rc != MQTT_OK)
			return rc;
		if (!skip_properties(&pub.u.publish))
			return MQTT_ERR_MALFORMED;
		on_delivery(r, c, &pub.u.publish, now);
		return MQTT_OK;
	}
	/*
	 * A PUBACK without reason code is 3.1.1's (the per-message one at QoS
	 * 1); a CONNACK with a 3.1.1 return code is the refusal of a broker
	 * that does not speak MQTT 5.
	 */
	if ((first >> 4 == MQTT_PUBACK && len == 2) ||
	    (first >> 4 == MQTT_CONNACK && len == 2 && body[1] && body[1] < 0x80))
		return take_packet(r, c, first, body, len, now);
	rc = mqtt5_decode(first, body, len, &pkt);
	if (rc != MQTT_OK)
		return rc;
	switch (pkt.type) {
	case MQTT_PUBACK:
		on_puback(r, c, pkt.u.packet_id, pkt.reason);
		break;
	case MQTT_CONNACK:
		on_connack(r, c, pkt.reason, true);
		break;
	case MQTT_SUBACK:
		mqtt5_list_iter_init(&it, &pkt);
		on_suback(r, c, &it);
		break;
	case MQTT_DISCONNECT:
		on_disconnect(r, c, pkt.reason);
		break;
	case MQTT_PINGRESP:
		break;
	default:
		r->bad++;
		break;
	}
	return MQTT_OK;
}

/* Decodes every whole packet in place; a partial one stays for the next read. */
static void parse_input(struct run *r, struct conn *c, uint64_t now)
{
	struct buf *b = &c->in;
	bool is_v5 = v5(r);

	while (r->ph != PH_DONE && c->st != CS_CLOSED) {
		uint8_t first;
		uint32_t rem;
		size_t hl;
		int rc = is_v5 ? mqtt5_fixed_header(b->p + b->off, b->len - b->off, MAX_PACKET,
						    &first, &rem, &hl)
			       : mqtt_fixed_header(b->p + b->off, b->len - b->off, MAX_PACKET,
						   &first, &rem, &hl);

		if (rc == MQTT_INCOMPLETE)
			break;
		if (rc != MQTT_OK) {
			fail(r, "broker sent %s to %s %d", mqtt_result_str(rc), role_names[c->role], c->idx);
			return;
		}
		if (b->len - b->off < hl + rem) {
			buf_room(b, hl + rem - (b->len - b->off));
			break;
		}
		rc = (is_v5 ? take_packet5 : take_packet)(r, c, first, b->p + b->off + hl, rem, now);
		if (rc != MQTT_OK) {
			fail(r, "broker sent a bad %s to %s %d: %s", mqtt_type_name(first >> 4),
			     role_names[c->role], c->idx, mqtt_result_str(rc));
			return;
		}
		b->off += hl + rem;
	}
	if (b->off == b->len)
		b->off = b->len = 0;
}

/*
 * Edge-triggered: a read that does not fill the buffer drained the socket
 * (the next byte raises a new edge); one that fills it is read again next
 * turn, so one busy socket cannot starve the others.
 */
static void conn_read(struct run *r, struct conn *c)
{
	size_t room;
	ssize_t n;

	c->more_in = false;
	if (c->st == CS_CLOSED)
		return;
	if (c->ssl || c->ws) {
		xport_read(r, c);
		return;
	}
	buf_room(&c->in, 1);
	room = c->in.cap - c->in.len;
	n = read(c->fd, c->in.p + c->in.len, room);
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			conn_lost(r, c, strerror(errno));
		return;
	}
	if (n == 0) {
		conn_lost(r, c, "end of stream");
		return;
	}
	c->in.len += (size_t)n;
	parse_input(r, c, now_ns());
	if ((size_t)n == room && c->st != CS_CLOSED) {
		c->more_in = true;
		r->more_next[r->n_more++] = c;
	}
}

static void conn_connected(struct run *r, struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err)
		connect_failed(r->o, err);
	c->writable = true;
	link_up(r, c);
}

static void on_event(struct run *r, struct conn *c, uint32_t ev)
{
	if (c->st == CS_CONNECTING) {
		if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		conn_connected(r, c);
	}
	if (ev & EPOLLOUT) {
		c->writable = true;
		if (c->out.len > c->out.off || c->ws)
			mark_dirty(r, c);
	}
	if (c->st == CS_TLS) {
		tls_handshake(r, c);
		if (c->st == CS_TLS)
			return;
	}
	if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !c->more_in)
		conn_read(r, c);
}

/* -------------------------------------------------------------- publishing */

/*
 * Lowest 'next' among the subscribers that should get this publisher's
 * messages; for a shared group, the group's floor.
 */
static uint64_t sub_floor(const struct run *r, int pub)
{
	uint64_t lo = UINT64_MAX;

	if (r->group)
		return group_floor(r, pub);

	for (int i = 0; i < r->pub_nsubs[pub]; i++) {
		uint64_t n = r->sub[r->pub_subs[pub][i]]->tr[pub].next;

		if (n < lo)
			lo = n;
	}
	return lo == UINT64_MAX ? 0 : lo;
}

/*
 * How far a publisher may run ahead of its slowest subscriber, so that a
 * broker slower at delivering than at accepting does not hoard an
 * unbounded queue. At QoS 0 a lost message never arrives to advance the
 * floor, so a publisher held back for STALL_S gives the missing ones up.
 */
static uint64_t lag_room(struct run *r, struct conn *c, uint64_t now)
{
	uint64_t base, lag;

	if (!r->o->max_lag)
		return UINT64_MAX;
	base = c->floor > c->lag_base ? c->floor : c->lag_base;
	lag = c->seq - base;
	if (lag >= r->o->max_lag) {
		c->floor = sub_floor(r, c->idx);
		base = c->floor > c->lag_base ? c->floor : c->lag_base;
		lag = c->seq - base;
	}
	if (lag < r->o->max_lag) {
		c->blocked_since = 0;
		return r->o->max_lag - lag;
	}
	if (!c->blocked_since)
		c->blocked_since = now;
	else if (r->o->qos == 0 && now - c->blocked_since > ns_of(STALL_S))
		c->lag_base = c->seq;
	return 0;
}

static uint16_t take_packet_id(struct run *r, struct conn *c)
{
	for (int tries = 0; tries < 65535; tries++) {
		uint16_t id = ++c->next_id ? c->next_id : ++c->next_id;

		if (!(c->ids[id / 64] & (1ull << (id % 64)))) {
			c->ids[id / 64] |= 1ull << (id % 64);
			c->inflight++;
			return id;
		}
	}
	die("no free packet identifier");
}

static size_t publish_size(const struct run *r, const struct conn *c)
{
	const struct opts *o = r->o;

	return v5(r) ? mqtt5_publish_size(c->topic_len, o->payload, (uint8_t)o->qos, NULL)
		     : mqtt_publish_size(c->topic_len, o->payload, (uint8_t)o->qos);
}

/* Appends one PUBLISH carrying (publisher, sequence, send time); MQTT 5's without properties. */
static void put_publish(struct run *r, struct conn *c, uint64_t now)
{
	const struct opts *o = r->o;
	uint32_t pub = (uint32_t)c->idx;
	uint16_t id = o->qos ? take_packet_id(r, c) : 0;
	uint8_t *out = buf_room(&c->out, publish_size(r, c));

	memcpy(r->pay, &pub, 4);
	memcpy(r->pay + 4, &c->seq, 8);
	memcpy(r->pay + 12, &now, 8);
	if (v5(r))
		c->out.len += mqtt5_encode_publish(out, false, (uint8_t)o->qos, false,
						   (const uint8_t *)c->topic, c->topic_len, id,
						   NULL, r->pay, o->payload);
	else
		c->out.len += mqtt_encode_publish(out, false, (uint8_t)o->qos, false,
						  (const uint8_t *)c->topic, c->topic_len, id,
						  r->pay, o->payload);
	c->seq++;
}

/* Fills one publisher's batch; returns whether it could have sent more. */
static bool pump_publisher(struct run *r, struct conn *c, uint64_t now)
{
	const struct opts *o = r->o;
	size_t sz = publish_size(r, c);
	uint64_t budget, room;

	if (c->st != CS_READY || !c->writable || c->out.len > c->out.off)
		return false;   /* pause while the socket would block */
	budget = o->qos ? o->window - c->inflight : QOS0_BATCH / sz + 1;
	room = lag_room(r, c, now);
	if (room < budget)
		budget = room;
	if (MAX_SEQ - c->seq < budget)
		budget = MAX_SEQ - c->seq;
	if (!budget)
		return false;
	for (uint64_t i = 0; i < budget; i++)
		put_publish(r, c, now);
	mark_dirty(r, c);
	return o->qos == 0 && budget == QOS0_BATCH / sz + 1;
}

static void pump_all(struct run *r)
{
	uint64_t now = now_ns();

	r->busy = false;
	for (int i = 0; i < r->n_pubs; i++)
		if (pump_publisher(r, r->pub[i], now))
			r->busy = true;
}

/* Latency scenario: one message per timer tick, at a fixed rate. */
static void on_tick(struct run *r)
{
	uint64_t ticks = 0;
	struct conn *c = r->pub[0];
	uint64_t now;

	if (read(r->timer.fd, &ticks, sizeof(ticks)) != sizeof(ticks) || r->ph != PH_MEASURE)
		return;
	now = now_ns();
	if (ticks > 100)
		ticks = 100;   /* late by 100 ticks: the broker stalled; do not burst more */
	for (uint64_t i = 0; i < ticks && c->st == CS_READY; i++) {
		if (r->o->qos && c->inflight >= r->o->window)
			break;
		put_publish(r, c, now);
	}
	mark_dirty(r, c);
}

static void timer_arm(struct run *r, long period_ns)
{
	struct itimerspec its = { { 0, period_ns }, { 0, period_ns } };

	if (period_ns >= 1000000000L)
		its.it_interval = its.it_value = (struct timespec){ period_ns / 1000000000L,
								     period_ns % 1000000000L };
	if (timerfd_settime(r->timer.fd, 0, &its, NULL) < 0)
		die("timerfd_settime: %s", strerror(errno));
}

/* -------------------------------------------------------------- the loop */

static void start_more(struct run *r)
{
	while (r->next_start < r->target && r->handshaking < r->o->conn_window) {
		struct conn *c = &r->c[r->next_start];

		conn_start(r, c, r->src_first + r->next_start);
		r->next_start++;
	}
}

/* At most 50 ms, so that a publisher held back by lost messages gets to move on. */
static int turn_timeout(const struct run *r, uint64_t deadline)
{
	uint64_t now = now_ns();

	if (r->busy || r->n_more || r->n_dirty)
		return 0;
	if (now >= deadline)
		return 0;
	if (deadline - now > ns_of(0.05))
		return 50;
	return (int)((deadline - now + 999999) / 1000000);
}

/* One epoll round: events, sockets with more to read, publishers, writes. */
static void turn(struct run *r, uint64_t deadline)
{
	struct epoll_event ev[MAX_EVENTS];
	int n = epoll_wait(r->ep, ev, MAX_EVENTS, turn_timeout(r, deadline));
	int n_more = r->n_more;
	struct conn **more = r->more_next;

	if (n < 0 && errno != EINTR)
		die("epoll_wait: %s", strerror(errno));
	/* reads below queue their sockets on the other list */
	r->more_next = r->more;
	r->more = more;
	r->n_more = 0;
	for (int i = 0; i < n_more && r->ph != PH_DONE; i++)
		conn_read(r, more[i]);
	for (int i = 0; i < n && r->ph != PH_DONE; i++) {
		struct conn *c = ev[i].data.ptr;

		if (c->role == R_TIMER)
			on_tick(r);
		else
			on_event(r, c, ev[i].events);
	}
	if (r->ph == PH_MEASURE && r->o->sc != SC_LATENCY)
		pump_all(r);
	else
		r->busy = false;
	flush_dirty(r);
}

/* --------------------------------------------------------- run set-up */

static void add_conn(struct run *r, enum role role, int idx)
{
	struct conn *c = &r->c[r->n++];

	c->fd = -1;
	c->role = role;
	c->idx = idx;
	c->st = CS_NEW;
	if (role == R_SUB) {
		buf_init(&c->in, SUB_RBUF);
		r->sub[idx] = c;
	} else if (role == R_PUB) {
		buf_init(&c->in, PUB_RBUF);
		r->pub[idx] = c;
	} else {
		buf_init(&c->in, IDLE_RBUF);
	}
	buf_init(&c->out, role == R_PUB ? QOS0_BATCH * 2 : 256);
	if (r->o->ws_path) {
		c->ws = xcalloc(1, sizeof(*c->ws));
		buf_init(&c->ws->in, c->in.cap);
		buf_init(&c->ws->out, c->out.cap + 64);
	}
}

static void pub_topic(const struct run *r, struct conn *c)
{
	switch (r->o->sc) {
	case SC_FANIN:
	case SC_SHAREDFANIN:
		snprintf(c->topic, sizeof(c->topic), "bench/in/%d", c->idx);
		break;
	case SC_PAIRS:
		snprintf(c->topic, sizeof(c->topic), "bench/pair/%d", c->idx);
		break;
	default:
		snprintf(c->topic, sizeof(c->topic), "bench/%s", sc_names[r->o->sc]);
		break;
	}
	c->topic_len = (uint16_t)strlen(c->topic);
}

static void link_pubs_subs(struct run *r)
{
	r->pub_subs = xcalloc((size_t)r->n_pubs, sizeof(int *));
	r->pub_nsubs = xcalloc((size_t)r->n_pubs, sizeof(int));
	for (int p = 0; p < r->n_pubs; p++) {
		r->pub_subs[p] = xcalloc((size_t)r->n_subs, sizeof(int));
		for (int s = 0; s < r->n_subs; s++)
			if (expects(r, s, p))
				r->pub_subs[p][r->pub_nsubs[p]++] = s;
	}
	for (int s = 0; s < r->n_subs; s++)
		r->sub[s]->tr = xcalloc((size_t)r->n_pubs, sizeof(struct track));
	if (r->o->sc == SC_SHAREDFANIN)
		r->group = xcalloc((size_t)r->n_pubs, sizeof(struct track));
}

static void run_init(struct run *r, const struct opts *o, int n_pubs, int n_subs, long n_idle)
{
	long total = n_pubs + n_subs + n_idle;

	memset(r, 0, sizeof(*r));
	r->o = o;
	r->ep = epoll_create1(EPOLL_CLOEXEC);
	if (r->ep < 0)
		die("epoll_create1: %s", strerror(errno));
	r->c = xcalloc((size_t)total, sizeof(struct conn));
	r->dirty = xcalloc((size_t)total + 1, sizeof(struct conn *));
	r->more = xcalloc((size_t)total + 1, sizeof(struct conn *));
	r->more_next = xcalloc((size_t)total + 1, sizeof(struct conn *));
	r->pub = xcalloc((size_t)n_pubs, sizeof(struct conn *));
	r->sub = xcalloc((size_t)n_subs, sizeof(struct conn *));
	r->n_pubs = n_pubs;
	r->n_subs = n_subs;
	/* subscribers first: every one must be subscribed before the first publish */
	for (int i = 0; i < n_subs; i++)
		add_conn(r, R_SUB, i);
	for (int i = 0; i < n_pubs; i++) {
		add_conn(r, R_PUB, i);
		pub_topic(r, r->pub[i]);
		r->pub[i]->ids = o->qos ? xcalloc(65536 / 64, sizeof(uint64_t)) : NULL;
	}
	for (long i = 0; i < n_idle; i++)
		add_conn(r, R_IDLE, (int)i);
	r->timer.fd = -1;
	r->timer.role = R_TIMER;
	link_pubs_subs(r);
}

/* Opens connections up to c[target - 1] and waits for all of them to be ready. */
static void setup_phase(struct run *r, int target)
{
	uint64_t deadline = now_ns() + ns_of(SETUP_TIMEOUT_S);

	r->target = target;
	while (r->ready < target) {
		start_more(r);
		if (now_ns() >= deadline)
			die("set-up timed out: %d of %d connections ready after %.0f s",
			    r->ready, target, SETUP_TIMEOUT_S);
		turn(r, deadline);
	}
}

static void close_all(struct run *r)
{
	for (int i = 0; i < r->n; i++)
		conn_close(&r->c[i]);
}

/* ---------------------------------------------------------- traffic runs */

/* Deliveries each message of a publisher should make: one for a shared group. */
static uint64_t fan_of(const struct run *r, int pub)
{
	return r->group ? 1 : (uint64_t)r->pub_nsubs[pub];
}

static uint64_t expected_total(const struct run *r)
{
	uint64_t sum = 0;

	for (int p = 0; p < r->n_pubs; p++)
		sum += r->pub[p]->seq * fan_of(r, p);
	return sum;
}

static bool all_acked(const struct run *r)
{
	for (int p = 0; p < r->n_pubs; p++)
		if (r->pub[p]->inflight)
			return false;
	return true;
}

static bool pending_output(const struct run *r)
{
	for (int p = 0; p < r->n_pubs; p++) {
		const struct conn *c = r->pub[p];

		if (c->st != CS_CLOSED && c->out.len > c->out.off)
			return true;
	}
	return false;
}

static bool drained(const struct run *r, uint64_t now)
{
	if (pending_output(r))
		return false;
	if (r->distinct >= expected_total(r) && (r->o->qos == 0 || all_acked(r)))
		return true;
	return r->o->qos == 0 && now - r->last_rx > ns_of(QUIET_S);
}

static void measure_phase(struct run *r)
{
	const struct opts *o = r->o;

	proc_snapshot(o, &r->c0);
	r->t0 = now_ns();
	r->t_stop = r->t0 + ns_of(o->seconds);
	r->last_rx = r->t0;
	r->ph = PH_MEASURE;
	if (o->sc == SC_LATENCY)
		timer_arm(r, 1000000000L / o->rate);
	while (r->ph == PH_MEASURE && now_ns() < r->t_stop)
		turn(r, r->t_stop);
	r->t1 = now_ns();
	proc_snapshot(o, &r->c1);
	r->pss1_kb = pss_kb(o);
	if (o->sc == SC_LATENCY)
		timer_arm(r, 0);
}

static void drain_phase(struct run *r)
{
	uint64_t deadline = now_ns() + ns_of(r->o->drain);

	if (r->ph != PH_MEASURE)
		return;
	r->ph = PH_DRAIN;
	r->busy = false;
	for (uint64_t now = now_ns(); r->ph == PH_DRAIN && now < deadline; now = now_ns()) {
		if (drained(r, now))
			break;
		turn(r, now + ns_of(0.05) < deadline ? now + ns_of(0.05) : deadline);
	}
	if (r->ph == PH_DRAIN)
		r->ph = PH_DONE;
}

static void start_timer(struct run *r)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &r->timer };

	r->timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (r->timer.fd < 0 || epoll_ctl(r->ep, EPOLL_CTL_ADD, r->timer.fd, &ev) < 0)
		die("timerfd: %s", strerror(errno));
}

/* ------------------------------------------------------------- reporting */

struct jw {
	FILE *f;
	bool first;
};

static void jkey(struct jw *w, const char *k)
{
	fprintf(w->f, "%s\"%s\":", w->first ? "{" : ",", k);
	w->first = false;
}

static void jnum(struct jw *w, const char *k, double v)
{
	jkey(w, k);
	if (isfinite(v))
		fprintf(w->f, "%.6g", v);
	else
		fprintf(w->f, "null");
}

static void jint(struct jw *w, const char *k, uint64_t v)
{
	jkey(w, k);
	fprintf(w->f, "%" PRIu64, v);
}

static void jtext(struct jw *w, const char *k, const char *v)
{
	jkey(w, k);
	json_str(w->f, v);
}

static void jbool(struct jw *w, const char *k, bool v)
{
	jkey(w, k);
	fprintf(w->f, v ? "true" : "false");
}

/* Every figure of a run, as name/value pairs, in JSON or as text lines. */
struct figures {
	struct jw w;
	bool json;
};

static void fig_num(struct figures *f, const char *k, double v)
{
	if (f->json)
		jnum(&f->w, k, v);
	else
		printf("%-22s %.6g\n", k, v);
}

static void fig_int(struct figures *f, const char *k, uint64_t v)
{
	if (f->json)
		jint(&f->w, k, v);
	else
		printf("%-22s %" PRIu64 "\n", k, v);
}

static void fig_text(struct figures *f, const char *k, const char *v)
{
	if (f->json)
		jtext(&f->w, k, v);
	else
		printf("%-22s %s\n", k, v);
}

static void fig_bool(struct figures *f, const char *k, bool v)
{
	if (f->json)
		jbool(&f->w, k, v);
	else
		printf("%-22s %s\n", k, v ? "yes" : "no");
}

/* A list of counts: a JSON array, or one text line. */
static void fig_ints(struct figures *f, const char *k, const uint64_t *v, int n)
{
	if (f->json) {
		jkey(&f->w, k);
		for (int i = 0; i < n; i++)
			printf("%c%" PRIu64, i ? ',' : '[', v[i]);
		printf(n ? "]" : "[]");
		return;
	}
	printf("%-22s", k);
	for (int i = 0; i < n; i++)
		printf(" %" PRIu64, v[i]);
	printf("\n");
}

static void fig_end(struct figures *f)
{
	if (f->json)
		printf("}\n");
	fflush(stdout);
}

static const char *transport_name(const struct opts *o)
{
	if (o->ws_path)
		return o->tls ? "wss" : "ws";
	return o->tls ? "tls" : "tcp";
}

/* The MQTT version, the transport, and with TLS what the broker chose. */
static void fig_transport(struct figures *f, const struct run *r)
{
	fig_text(f, "mqtt_version", mqtt_version_name(r->o));
	fig_text(f, "transport", transport_name(r->o));
	fig_text(f, "tls", r->tls_desc);
}

static uint64_t lost_total(const struct run *r)
{
	uint64_t lost = 0;

	for (int p = 0; p < r->n_pubs && r->group; p++)
		lost += r->pub[p]->seq - r->group[p].distinct;
	for (int p = 0; p < r->n_pubs && !r->group; p++)
		for (int i = 0; i < r->pub_nsubs[p]; i++)
			lost += r->pub[p]->seq - r->sub[r->pub_subs[p][i]]->tr[p].distinct;
	return lost;
}

static uint64_t unacked_total(const struct run *r)
{
	uint64_t n = 0;

	for (int p = 0; p < r->n_pubs; p++)
		n += r->pub[p]->inflight;
	return n;
}

/* The integrity verdict: the first reason this run does not count. */
static void judge(struct run *r, uint64_t lost, uint64_t unacked, bool procs_changed)
{
	if (!r->rx_interval)    /* at QoS 0, a broker dropping every message (an ACL...) */
		fail(r, "no message delivered in the measured interval%s",
		     r->o->user ? ": does the ACL let --user write and read the scenario's topics?" :
		     r->group ? ": does the broker support shared subscriptions (" SHARED_FILTER ")?" : "");
	if (r->ooo)
		fail(r, "%" PRIu64 " deliveries out of order", r->ooo);
	if (r->bad)
		fail(r, "%" PRIu64 " unexpected packets (misrouted, corrupt or never sent)", r->bad);
	if (r->bad_ack)
		fail(r, "%" PRIu64 " PUBACKs for packet ids not in flight", r->bad_ack);
	if (r->refused)
		fail(r, "%" PRIu64 " PUBACKs refused the message, the first with reason code 0x%02x (%s)",
		     r->refused, r->refused_reason, reason_name(MQTT_PUBACK, r->refused_reason));
	if (r->o->qos == 1 && lost)
		fail(r, "%" PRIu64 " QoS 1 messages lost (not delivered %.1f s after the end)",
		     lost, r->o->drain);
	if (r->o->qos == 1 && unacked)
		fail(r, "%" PRIu64 " QoS 1 PUBLISHes never acknowledged", unacked);
	if (r->o->qos == 0 && r->dup)
		fail(r, "%" PRIu64 " duplicate QoS 0 deliveries", r->dup);
	if (r->wrong_qos)
		fail(r, "%" PRIu64 " deliveries at a QoS other than %d", r->wrong_qos, r->o->qos);
	if (r->c1.root_gone)
		fail(r, "a broker process given with --pids exited during the run");
	else if (procs_changed)
		fail(r, "the broker's process set changed during the run (a crash and restart?)");
}

/*
 * A shared group: deliveries per member, and how evenly the broker spread
 * them (largest over smallest count; none when a member got nothing).
 */
static void report_group(struct figures *f, const struct run *r)
{
	uint64_t n[SHARED_MEMBERS], lo = UINT64_MAX, hi = 0;

	for (int s = 0; s < r->n_subs && s < SHARED_MEMBERS; s++) {
		n[s] = r->sub[s]->rx;
		lo = n[s] < lo ? n[s] : lo;
		hi = n[s] > hi ? n[s] : hi;
	}
	fig_ints(f, "member_deliveries", n, r->n_subs < SHARED_MEMBERS ? r->n_subs : SHARED_MEMBERS);
	fig_num(f, "fairness", lo && lo != UINT64_MAX ? (double)hi / (double)lo : NAN);
}

static void report_traffic(struct run *r)
{
	const struct opts *o = r->o;
	double dt = secs(r->t1 - r->t0);
	double cpu = r->c1.cpu_s - r->c0.cpu_s;
	uint64_t sent = 0, lost = lost_total(r), unacked = unacked_total(r);
	bool changed = o->n_pids && !same_procs(&r->c0, &r->c1);
	struct rusage ru;
	struct figures f = { { stdout, true }, o->json };

	for (int p = 0; p < r->n_pubs; p++)
		sent += r->pub[p]->seq;
	judge(r, lost, unacked, changed);
	getrusage(RUSAGE_SELF, &ru);
	fig_bool(&f, "ok", !r->failure[0]);
	fig_text(&f, "scenario", sc_names[o->sc]);
	fig_int(&f, "qos", (uint64_t)o->qos);
	fig_transport(&f, r);
	fig_num(&f, "seconds", dt);
	fig_int(&f, "payload", o->payload);
	fig_int(&f, "publishers", (uint64_t)r->n_pubs);
	fig_int(&f, "subscribers", (uint64_t)r->n_subs);
	fig_int(&f, "sent", sent);
	fig_int(&f, "expected", expected_total(r));
	fig_int(&f, "received", r->rx);
	fig_int(&f, "received_in_interval", r->rx_interval);
	fig_int(&f, "lost", lost);
	fig_int(&f, "duplicates", r->dup);
	fig_int(&f, "out_of_order", r->ooo);
	fig_int(&f, "unacked", unacked);
	fig_num(&f, "sent_per_s", dt > 0 ? (double)sent / dt : 0);
	fig_num(&f, "msgs_per_s", dt > 0 ? (double)r->rx_interval / dt : 0);
	fig_num(&f, "broker_cpu_s", o->n_pids ? cpu : NAN);
	fig_num(&f, "msgs_per_cpu_s", o->n_pids && cpu > 0 ? (double)r->rx_interval / cpu : NAN);
	fig_int(&f, "broker_procs", (uint64_t)r->c1.n);
	fig_bool(&f, "broker_procs_changed", changed);
	fig_num(&f, "broker_pss_kb", (double)r->pss1_kb);
	fig_num(&f, "lat_p50_us", h_pct_us(&r->h, 0.50));
	fig_num(&f, "lat_p99_us", h_pct_us(&r->h, 0.99));
	fig_num(&f, "lat_p999_us", h_pct_us(&r->h, 0.999));
	fig_num(&f, "lat_max_us", (double)r->h.max / 1e3);
	fig_num(&f, "bench_cpu_s", (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
		(double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	if (r->group)
		report_group(&f, r);
	fig_text(&f, "error", r->failure);
	fig_end(&f);
	if (r->failure[0])
		fprintf(stderr, "iotd-bench: FAILED %s qos %d: %s\n", sc_names[o->sc], o->qos, r->failure);
}

/*
 * The lag cap shares OUTSTANDING deliveries among publishers: enough to
 * keep any broker here busy, few enough that the figures measure the
 * broker rather than how deep the socket buffers are.
 */
static uint64_t default_lag(const struct opts *o, int pubs, int fan)
{
	uint64_t lag = OUTSTANDING / ((uint64_t)pubs * (uint64_t)fan);

	return lag < o->window ? o->window : lag;
}

static int run_traffic(struct opts *o)
{
	static struct run r;
	int pubs = 1, subs = 1;

	if (o->sc == SC_FANIN)
		pubs = FANIN_PUBS;
	else if (o->sc == SC_FANOUT)
		subs = FANOUT_SUBS;
	else if (o->sc == SC_PAIRS)
		pubs = subs = N_PAIRS;
	else if (o->sc == SC_SHAREDFANIN)
		pubs = SHARED_PUBS, subs = SHARED_MEMBERS;
	if (!o->max_lag_set)
		o->max_lag = default_lag(o, pubs, o->sc == SC_FANOUT ? subs : 1);
	run_init(&r, o, pubs, subs, 0);
	if (o->sc == SC_LATENCY)
		start_timer(&r);
	setup_phase(&r, subs);
	setup_phase(&r, subs + pubs);
	measure_phase(&r);
	drain_phase(&r);
	close_all(&r);
	report_traffic(&r);
	return r.failure[0] ? 1 : 0;
}

/* ------------------------------------------------------ idle connections */

/* What one process opening idle connections reports to the parent. */
struct conns_report {
	int proc;
	long ok;
	uint64_t t_last;      /* CLOCK_MONOTONIC ns of its last CONNACK */
	char tls_desc[96];    /* what its first TLS session negotiated */
	char err[256];
};

static void conns_open(struct run *r, const struct opts *o, long first, long count)
{
	run_init(r, o, 0, 0, count);
	for (long i = 0; i < count; i++)
		r->c[i].idx = (int)(first + i);
	/* source addresses rotate by global index, so processes share them evenly */
	r->src_first = first;
	setup_phase(r, (int)count);
}

static void check_fd_limit(long need)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)need + 32 > rl.rlim_cur)
		die("%ld connections need more than this process's %lu file descriptors: "
		    "spread them with --procs", need, (unsigned long)rl.rlim_cur);
}

/* A child: open its share, report, hold them until the parent lets go. */
static void conns_child(const struct opts *o, int k, long first, long count, int report_fd,
			int hold_fd)
{
	static struct run r;
	struct conns_report rep = { 0 };
	struct pollfd pfd = { .fd = hold_fd, .events = POLLIN };
	ssize_t w;

	g_child = true;
	conns_open(&r, o, first, count);
	rep.proc = k;
	rep.ok = r.ready;
	rep.t_last = r.t_last_ready;
	memcpy(rep.tls_desc, r.tls_desc, sizeof(rep.tls_desc));
	w = write(report_fd, &rep, sizeof(rep));   /* atomic: smaller than PIPE_BUF */
	(void)w;
	(void)poll(&pfd, 1, 600 * 1000);   /* the parent closes hold_fd (or exits) */
	close_all(&r);
	_exit(0);
}

static void reap(pid_t *kids, int n)
{
	uint64_t deadline = now_ns() + ns_of(10);
	int left = n;

	while (left > 0 && now_ns() < deadline) {
		left = 0;
		for (int i = 0; i < n; i++) {
			if (kids[i] > 0 && waitpid(kids[i], NULL, WNOHANG) == kids[i])
				kids[i] = 0;
			if (kids[i] > 0)
				left++;
		}
		if (left)
			sleep_s(0.01);
	}
	for (int i = 0; i < n; i++)
		if (kids[i] > 0) {
			kill(kids[i], SIGKILL);   /* our own child, stuck */
			waitpid(kids[i], NULL, 0);
		}
}

/* A child that exited without reporting has printed why; so do we, and stop. */
static void check_kids(pid_t *kids, const bool *reported, int n)
{
	for (int k = 0; k < n; k++) {
		int st;

		if (!reported[k] && kids[k] > 0 && waitpid(kids[k], &st, WNOHANG) == kids[k]) {
			kids[k] = 0;
			reap(kids, n);
			die("connection process %d failed (exit status %d)", k,
			    WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
		}
	}
}

static void fork_kids(const struct opts *o, pid_t *kids, int rep[2], int hold[2])
{
	long per = (o->conns + o->procs - 1) / o->procs;

	for (int k = 0; k < o->procs; k++) {
		long first = k * per;
		long count = o->conns - first < per ? o->conns - first : per;

		fflush(stdout);
		fflush(stderr);
		kids[k] = fork();
		if (kids[k] < 0)
			die("fork: %s", strerror(errno));
		if (kids[k] == 0) {
			close(rep[0]);
			close(hold[1]);
			conns_child(o, k, first, count > 0 ? count : 0, rep[1], hold[0]);
		}
	}
	close(rep[1]);
	close(hold[0]);
}

/* Children open the connections; returns the latest CONNACK time among them. */
static uint64_t conns_forked(const struct opts *o, int *hold_w, pid_t *kids, long *ok,
			     char *tls_desc)
{
	int rep[2], hold[2], got = 0;
	bool reported[MAX_PROCS] = { false };
	uint64_t t_last = 0, deadline = now_ns() + ns_of(SETUP_TIMEOUT_S + 10);

	if (pipe2(rep, O_CLOEXEC) < 0 || pipe2(hold, O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	fork_kids(o, kids, rep, hold);
	*hold_w = hold[1];
	*ok = 0;
	while (got < o->procs) {
		struct conns_report cr;
		struct pollfd pfd = { .fd = rep[0], .events = POLLIN };

		if (now_ns() >= deadline) {
			reap(kids, o->procs);
			die("connection processes did not report within %.0f s", SETUP_TIMEOUT_S + 10);
		}
		if (poll(&pfd, 1, 100) <= 0 || read(rep[0], &cr, sizeof(cr)) != (ssize_t)sizeof(cr)) {
			check_kids(kids, reported, o->procs);
			continue;
		}
		if (cr.proc < 0 || cr.proc >= o->procs || reported[cr.proc])
			die("garbled report from a connection process");
		reported[cr.proc] = true;
		got++;
		*ok += cr.ok;
		if (cr.t_last > t_last)
			t_last = cr.t_last;
		cr.tls_desc[sizeof(cr.tls_desc) - 1] = '\0';
		if (!tls_desc[0])
			memcpy(tls_desc, cr.tls_desc, sizeof(cr.tls_desc));
	}
	close(rep[0]);
	return t_last;
}

static int run_conns(const struct opts *o)
{
	static struct run r;
	pid_t kids[MAX_PROCS] = { 0 };
	int hold_w = -1;
	long ok = 0;
	uint64_t t0, t_last;
	struct procset c0, c1;
	long pss0, pss1;
	double cpu, dt;
	struct figures f = { { stdout, true }, o->json };

	r.o = o;   /* for the report when helper processes open the connections */
	if (o->procs == 1)
		check_fd_limit(o->conns);
	else
		check_fd_limit((o->conns + o->procs - 1) / o->procs);
	pss0 = pss_kb(o);
	proc_snapshot(o, &c0);
	t0 = now_ns();
	if (o->procs == 1) {
		conns_open(&r, o, 0, o->conns);
		ok = r.ready;
		t_last = r.t_last_ready;
	} else {
		t_last = conns_forked(o, &hold_w, kids, &ok, r.tls_desc);
	}
	proc_snapshot(o, &c1);
	sleep_s(0.5);   /* lets the broker finish what it allocates per connection */
	pss1 = pss_kb(o);
	if (o->procs == 1)
		close_all(&r);
	else {
		close(hold_w);
		reap(kids, o->procs);
	}
	cpu = c1.cpu_s - c0.cpu_s;
	dt = secs(t_last - t0);
	fig_bool(&f, "ok", ok == o->conns && !c1.root_gone);
	fig_text(&f, "scenario", "conns");
	fig_int(&f, "qos", 0);
	fig_transport(&f, &r);
	fig_int(&f, "connections", (uint64_t)ok);
	fig_int(&f, "procs", (uint64_t)o->procs);
	fig_int(&f, "src_addrs", (uint64_t)(o->n_src ? o->n_src : 1));
	fig_num(&f, "connect_s", dt);
	fig_num(&f, "connect_per_s", dt > 0 ? (double)ok / dt : 0);
	fig_num(&f, "broker_cpu_s", o->n_pids ? cpu : NAN);
	fig_num(&f, "conns_per_cpu_s", o->n_pids && cpu > 0 ? (double)ok / cpu : NAN);
	fig_num(&f, "pss_before_kb", (double)pss0);
	fig_num(&f, "pss_after_kb", (double)pss1);
	fig_num(&f, "bytes_per_conn", o->n_pids && ok ? (double)(pss1 - pss0) * 1024.0 / (double)ok : NAN);
	fig_text(&f, "error", c1.root_gone ? "a broker process exited during the run" : "");
	fig_end(&f);
	return ok == o->conns && !c1.root_gone ? 0 : 1;
}

/* ------------------------------------------------------------ handshakes */

/* A connection that got its CONNACK is counted, closed and opened anew. */
static void recycle(struct run *r)
{
	uint64_t now = now_ns();

	for (int i = 0; i < r->n && r->ph == PH_MEASURE; i++) {
		struct conn *c = &r->c[i];

		if (c->st != CS_READY)
			continue;
		r->handshakes++;
		h_add(&r->h, now - c->t_start);
		if (c->ssl && SSL_session_reused(c->ssl))
			r->resumed++;
		/* TLS 1.3 tickets came before the CONNACK: this session can be resumed */
		if (c->ssl && r->o->tls_resume && !r->session)
			r->session = SSL_get1_session(c->ssl);
		conn_close(c);
		r->ready--;
		if (now < r->t_stop)
			conn_start(r, c, r->src_first + i);
	}
}

/*
 * Connections opened, brought through TCP, TLS, the WebSocket upgrade and
 * CONNECT/CONNACK, and closed, --conn-window at a time, for -t seconds:
 * what a broker spends on each newcomer, key exchange and signature included.
 */
static int run_handshakes(const struct opts *o)
{
	static struct run r;
	struct rusage ru;
	struct figures f = { { stdout, true }, o->json };
	double dt, cpu;
	bool changed;

	check_fd_limit(o->conn_window);
	run_init(&r, o, 0, 0, o->conn_window);
	proc_snapshot(o, &r.c0);
	r.t0 = now_ns();
	r.t_stop = r.t0 + ns_of(o->seconds);
	r.ph = PH_MEASURE;
	for (int i = 0; i < r.n; i++)
		conn_start(&r, &r.c[i], i);
	while (r.ph == PH_MEASURE && now_ns() < r.t_stop) {
		turn(&r, r.t_stop);
		recycle(&r);
	}
	r.t1 = now_ns();
	proc_snapshot(o, &r.c1);
	close_all(&r);
	dt = secs(r.t1 - r.t0);
	cpu = r.c1.cpu_s - r.c0.cpu_s;
	changed = o->n_pids && !same_procs(&r.c0, &r.c1);
	if (!r.handshakes)
		fail(&r, "no handshake completed in %.1f s", dt);
	if (r.c1.root_gone)
		fail(&r, "a broker process given with --pids exited during the run");
	getrusage(RUSAGE_SELF, &ru);
	fig_bool(&f, "ok", !r.failure[0]);
	fig_text(&f, "scenario", "handshakes");
	fig_int(&f, "qos", 0);
	fig_transport(&f, &r);
	fig_num(&f, "seconds", dt);
	fig_int(&f, "conn_window", (uint64_t)o->conn_window);
	fig_int(&f, "handshakes", r.handshakes);
	fig_int(&f, "resumed", r.resumed);
	fig_num(&f, "handshakes_per_s", dt > 0 ? (double)r.handshakes / dt : 0);
	fig_num(&f, "broker_cpu_s", o->n_pids ? cpu : NAN);
	fig_num(&f, "handshakes_per_cpu_s", o->n_pids && cpu > 0 ? (double)r.handshakes / cpu : NAN);
	fig_bool(&f, "broker_procs_changed", changed);
	fig_num(&f, "hs_p50_us", h_pct_us(&r.h, 0.50));
	fig_num(&f, "hs_p99_us", h_pct_us(&r.h, 0.99));
	fig_num(&f, "bench_cpu_s", (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
		(double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	fig_text(&f, "error", r.failure);
	fig_end(&f);
	if (r.failure[0])
		fprintf(stderr, "iotd-bench: FAILED handshakes: %s\n", r.failure);
	return r.failure[0] ? 1 : 0;
}

/* --------------------------------------------------------------- options */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: iotd-bench [OPTION]...\n"
		"MQTT 3.1.1 and 5.0 load generator for iotd and other brokers (loopback only).\n\n"
		"  -h HOST            broker address (default 127.0.0.1)\n"
		"  -p PORT            broker port (default 1883)\n"
		"  -s SCENARIO        fanin (16 publishers -> 1 subscriber on bench/#),\n"
		"                     fanout (1 publisher -> 950 subscribers),\n"
		"                     pairs (50 publisher/subscriber pairs),\n"
		"                     latency (one pair at --rate msg/s), conns (idle connections),\n"
		"                     handshakes (connect, CONNECT/CONNACK, close, for -t seconds,\n"
		"                     --conn-window at once),\n"
		"                     sharedfanin (%d publishers -> a group of %d subscribers\n"
		"                     sharing " SHARED_FILTER "; each message to one of them)\n"
		"  -V VERSION         MQTT version of every client: 4 (3.1.1, the default)\n"
		"                     or 5 (5.0); also --mqtt-version VERSION\n"
		"  -q QOS             0 or 1 (default 0)\n"
		"  -t SECONDS         measured interval (default 10)\n"
		"  -P BYTES           payload size, >= %d (default 64)\n"
		"  -c N               connections for the conns scenario (default 10000)\n"
		"  --procs N          spread the conns connections over N processes\n"
		"  --src-addrs A,B    bind client sockets to these loopback addresses in turn\n"
		"  --pids PID,PID     the broker's processes (children included) for CPU and memory\n"
		"  --user NAME        user name in every CONNECT; a %%d in it becomes the\n"
		"                     connection's number, from 0 in the order they are opened\n"
		"                     (subscribers first, then publishers; conns: across --procs)\n"
		"  --password PASS    password in every CONNECT\n"
		"  --window N         QoS 1 PUBLISHes in flight per publisher (default 64)\n"
		"  --max-lag N        messages a publisher may lead its slowest subscriber by\n"
		"                     (default: %d deliveries in flight in all, shared out;\n"
		"                     0: no limit)\n"
		"  --conn-window N    connection handshakes in progress at once (default 64)\n"
		"  --rate N           latency scenario: messages per second (default 1000)\n"
		"  --drain SECONDS    most time to wait for late deliveries (default 10)\n"
		"  --tls              connect with TLS (OpenSSL); the broker's certificate is\n"
		"                     checked against -h (an IP address) or --sni\n"
		"  --cafile FILE      certificates trusted for the broker (default: the system's)\n"
		"  --cert FILE        client certificate chain (PEM); --key FILE its key\n"
		"  --ciphers LIST     TLS 1.2 cipher list; --ciphersuites LIST: TLS 1.3 suites\n"
		"  --groups LIST      key exchange groups offered, e.g. X25519 (default: OpenSSL's)\n"
		"  --tls-version V    1.2 or 1.3 only (default: 1.2 or later)\n"
		"  --sni NAME         server name sent and checked\n"
		"  --tls-resume       resume the first session on every later connection\n"
		"  --ws PATH          MQTT over WebSocket at PATH (with --tls: wss)\n"
		"  --ws-frame-max N   payload bytes per WebSocket frame (default: one frame\n"
		"                     per write, however many packets it holds)\n"
		"  --json             print one JSON object with every figure\n"
		"  --free-port        print a free TCP port on 127.0.0.1 and exit\n"
		"  --help             show this help\n\n"
		"Exit status: 0 ok, 1 the broker lost, reordered or misrouted messages,\n"
		"delivered none or closed a connection, 2 usage or set-up error (connection,\n"
		"CONNECT or subscription refused: no broker, wrong --user or --password, an ACL...).\n",
		SHARED_PUBS, SHARED_MEMBERS, PAYLOAD_HDR, OUTSTANDING);
}

static long num_arg(const char *s, long lo, long hi, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi)
		die("%s must be an integer in %ld..%ld, not '%s'", what, lo, hi, s);
	return v;
}

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24 == 127;
	if (sa->sa_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
	return false;
}

static void resolve(struct opts *o)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai;
	char port[16];
	int rc;

	snprintf(port, sizeof(port), "%d", o->port);
	rc = getaddrinfo(o->host, port, &hints, &ai);
	if (rc)
		die("cannot resolve %s: %s", o->host, gai_strerror(rc));
	if (!is_loopback(ai->ai_addr)) {
		freeaddrinfo(ai);
		die("%s is not a loopback address: iotd-bench only loads the local machine", o->host);
	}
	memcpy(&o->dst, ai->ai_addr, ai->ai_addrlen);
	o->dst_len = ai->ai_addrlen;
	freeaddrinfo(ai);
	if (o->n_src && o->dst.ss_family != AF_INET)
		die("--src-addrs needs an IPv4 broker address");
}

static void parse_src(struct opts *o, const char *list)
{
	char tmp[1024], *save = NULL;

	snprintf(tmp, sizeof(tmp), "%s", list);
	for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		struct sockaddr_in *sa = &o->src[o->n_src];

		if (o->n_src == MAX_SRC)
			die("at most %d source addresses", MAX_SRC);
		memset(sa, 0, sizeof(*sa));
		sa->sin_family = AF_INET;
		if (inet_pton(AF_INET, t, &sa->sin_addr) != 1 || !is_loopback((struct sockaddr *)sa))
			die("source address '%s' is not an IPv4 loopback address", t);
		o->n_src++;
	}
}

static void parse_pids(struct opts *o, const char *list)
{
	char tmp[1024], *save = NULL;

	snprintf(tmp, sizeof(tmp), "%s", list);
	for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (o->n_pids == MAX_PIDS)
			die("at most %d pids", MAX_PIDS);
		o->pids[o->n_pids] = (pid_t)num_arg(t, 1, INT_MAX, "a pid");
		if (kill(o->pids[o->n_pids], 0) < 0 && errno == ESRCH)
			die("no process %s (--pids)", t);
		o->n_pids++;
	}
}

/* At most one conversion, %d: the name reaches snprintf only through user_name(). */
static const char *parse_user(const char *s)
{
	const char *pct = strchr(s, '%');

	if (strlen(s) > MAX_USER)
		die("--user is longer than %d bytes", MAX_USER);
	if (pct && (pct[1] != 'd' || strchr(pct + 2, '%')))
		die("--user may hold one %%d and no other %%, not '%s'", s);
	return s;
}

static const char *parse_password(const char *s)
{
	if (strlen(s) > MAX_PASSWORD)
		die("--password is longer than %d bytes", MAX_PASSWORD);
	return s;
}

static int parse_tls_version(const char *s)
{
	if (!strcmp(s, "1.2"))
		return 12;
	if (!strcmp(s, "1.3"))
		return 13;
	die("--tls-version must be 1.2 or 1.3, not '%s'", s);
}

/* An origin-form request target: no space or control byte may reach the request line. */
static const char *parse_ws_path(const char *s)
{
	if (s[0] != '/' || strlen(s) > 512)
		die("--ws takes a path starting with '/', at most 512 bytes, not '%s'", s);
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			die("--ws path '%s' holds a space or control character", s);
	return s;
}

static enum scenario parse_scenario(const char *s)
{
	for (unsigned i = 0; i < sizeof(sc_names) / sizeof(sc_names[0]); i++)
		if (!strcmp(s, sc_names[i]))
			return (enum scenario)i;
	die("unknown scenario '%s' (fanin, fanout, pairs, latency, conns, handshakes, sharedfanin)", s);
}

static int parse_mqtt_version(const char *s)
{
	if (!strcmp(s, "4") || !strcmp(s, "3.1.1"))
		return 4;
	if (!strcmp(s, "5") || !strcmp(s, "5.0"))
		return MQTT5_PROTOCOL_LEVEL;
	die("-V takes 4 (MQTT 3.1.1) or 5 (MQTT 5.0), not '%s'", s);
}

static double secs_arg(const char *s, const char *what)
{
	char *end;
	double v = strtod(s, &end);

	if (*end || end == s || !(v > 0 && v <= 3600))
		die("%s must be a number of seconds in (0, 3600], not '%s'", what, s);
	return v;
}

static void free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		die("cannot find a free port: %s", strerror(errno));
	printf("%d\n", ntohs(sa.sin_port));
	close(fd);
	exit(0);
}

static void parse_args(struct opts *o, int argc, char **argv)
{
	enum { O_PROCS = 256, O_SRC, O_PIDS, O_JSON, O_WINDOW, O_LAG, O_CWIN, O_RATE, O_DRAIN,
	       O_FREE, O_HELP, O_USER, O_PASSWORD, O_TLS, O_CAFILE, O_CERT, O_KEY, O_CIPHERS,
	       O_SUITES, O_GROUPS, O_TLSVER, O_SNI, O_RESUME, O_WS, O_WSMAX };
	static const struct option lo[] = {
		{ "procs", required_argument, 0, O_PROCS },
		{ "src-addrs", required_argument, 0, O_SRC },
		{ "pids", required_argument, 0, O_PIDS },
		{ "json", no_argument, 0, O_JSON },
		{ "window", required_argument, 0, O_WINDOW },
		{ "max-lag", required_argument, 0, O_LAG },
		{ "conn-window", required_argument, 0, O_CWIN },
		{ "rate", required_argument, 0, O_RATE },
		{ "drain", required_argument, 0, O_DRAIN },
		{ "free-port", no_argument, 0, O_FREE },
		{ "user", required_argument, 0, O_USER },
		{ "password", required_argument, 0, O_PASSWORD },
		{ "help", no_argument, 0, O_HELP },
		{ "tls", no_argument, 0, O_TLS },
		{ "cafile", required_argument, 0, O_CAFILE },
		{ "cert", required_argument, 0, O_CERT },
		{ "key", required_argument, 0, O_KEY },
		{ "ciphers", required_argument, 0, O_CIPHERS },
		{ "ciphersuites", required_argument, 0, O_SUITES },
		{ "groups", required_argument, 0, O_GROUPS },
		{ "tls-version", required_argument, 0, O_TLSVER },
		{ "sni", required_argument, 0, O_SNI },
		{ "tls-resume", no_argument, 0, O_RESUME },
		{ "ws", required_argument, 0, O_WS },
		{ "ws-frame-max", required_argument, 0, O_WSMAX },
		{ "mqtt-version", required_argument, 0, 'V' },
		{ 0, 0, 0, 0 },
	};
	int ch;

	*o = (struct opts){ .host = "127.0.0.1", .port = 1883, .mqtt_version = 4,
			    .seconds = 10, .payload = 64,
			    .conns = 10000, .procs = 1, .window = 64,
			    .conn_window = 64, .rate = 1000, .drain = 10 };
	g_opts = o;
	while ((ch = getopt_long(argc, argv, "h:p:s:q:t:P:c:V:", lo, NULL)) != -1) {
		switch (ch) {
		case 'h': o->host = optarg; break;
		case 'p': o->port = (int)num_arg(optarg, 1, 65535, "-p"); break;
		case 's': o->sc = parse_scenario(optarg); break;
		case 'V': o->mqtt_version = parse_mqtt_version(optarg); break;
		case 'q': o->qos = (int)num_arg(optarg, 0, 1, "-q"); break;
		case 't': o->seconds = secs_arg(optarg, "-t"); break;
		case 'P': o->payload = (size_t)num_arg(optarg, PAYLOAD_HDR, 65536, "-P"); break;
		case 'c': o->conns = num_arg(optarg, 1, 10000000, "-c"); break;
		case O_PROCS: o->procs = (int)num_arg(optarg, 1, MAX_PROCS, "--procs"); break;
		case O_SRC: parse_src(o, optarg); break;
		case O_PIDS: parse_pids(o, optarg); break;
		case O_JSON: o->json = true; break;
		case O_WINDOW: o->window = (unsigned)num_arg(optarg, 1, 60000, "--window"); break;
		case O_LAG:
			o->max_lag = (uint64_t)num_arg(optarg, 0, LONG_MAX, "--max-lag");
			o->max_lag_set = true;
			break;
		case O_CWIN: o->conn_window = (int)num_arg(optarg, 1, 100000, "--conn-window"); break;
		case O_RATE: o->rate = (int)num_arg(optarg, 1, 1000000, "--rate"); break;
		case O_DRAIN: o->drain = secs_arg(optarg, "--drain"); break;
		case O_FREE: free_port(); break;
		case O_USER: o->user = parse_user(optarg); break;
		case O_PASSWORD: o->password = parse_password(optarg); break;
		case O_TLS: o->tls = true; break;
		case O_CAFILE: o->cafile = optarg; break;
		case O_CERT: o->cert = optarg; break;
		case O_KEY: o->key = optarg; break;
		case O_CIPHERS: o->ciphers = optarg; break;
		case O_SUITES: o->ciphersuites = optarg; break;
		case O_GROUPS: o->groups = optarg; break;
		case O_TLSVER: o->tls_version = parse_tls_version(optarg); break;
		case O_SNI: o->sni = optarg; break;
		case O_RESUME: o->tls_resume = true; break;
		case O_WS: o->ws_path = parse_ws_path(optarg); break;
		case O_WSMAX: o->ws_frame_max = (size_t)num_arg(optarg, 1, 1 << 24, "--ws-frame-max"); break;
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s'", argv[optind]);
	if (!o->tls && (o->cafile || o->cert || o->key || o->ciphers || o->ciphersuites || o->groups ||
			o->tls_version || o->sni || o->tls_resume))
		die("TLS options need --tls");
	if (o->ws_frame_max && !o->ws_path)
		die("--ws-frame-max needs --ws");
	if (o->max_lag && o->qos && o->max_lag < o->window)
		o->max_lag = o->window;
	resolve(o);
}

int main(int argc, char **argv)
{
	static struct opts o;

	signal(SIGPIPE, SIG_IGN);
	parse_args(&o, argc, argv);
	if (o.sc == SC_CONNS)
		return run_conns(&o);
	if (o.sc == SC_HANDSHAKES)
		return run_handshakes(&o);
	return run_traffic(&o);
}
