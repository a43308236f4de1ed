/*
 * iotd-bench.c - MQTT 3.1.1 load generator: measures a broker's delivery
 * rate, latency, CPU time per delivery and memory per connection, so that
 * iotd can be compared side by side with other brokers (contrib/bench.sh).
 *
 * One thread, one epoll loop, non-blocking sockets and raw packets built
 * and decoded with iotd's own codec (include/mqtt.h): no client library
 * sits between the figures and the broker. Every payload carries
 * (publisher id, sequence number, send time), so loss, duplicates and
 * reordering are counted per publisher and subscriber, not guessed.
 *
 *   iotd-bench -p 1883 -s fanin -q 1 -t 10 --pids 1234 --json
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mqtt.h"

#define FANIN_PUBS 16
#define FANOUT_SUBS 950
#define N_PAIRS 50
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

enum scenario { SC_FANIN, SC_FANOUT, SC_PAIRS, SC_LATENCY, SC_CONNS };
static const char *const sc_names[] = { "fanin", "fanout", "pairs", "latency", "conns" };

enum role { R_SUB, R_PUB, R_IDLE, R_TIMER };
static const char *const role_names[] = { "subscriber", "publisher", "connection", "timer" };

enum cstate { CS_NEW, CS_CONNECTING, CS_CONNACK, CS_SUBACK, CS_READY, CS_CLOSED };
enum phase { PH_SETUP, PH_MEASURE, PH_DRAIN, PH_DONE };

struct opts {
	const char *host;
	int port;
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
};

/* Bytes at [off, len) are pending; cap is the allocation. */
struct buf {
	uint8_t *p;
	size_t off, len, cap;
};

/* What one subscriber got from one publisher. */
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
	struct buf in, out;
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
	struct conn **dirty, **more, **more_next;
	int n_dirty, n_more;
	long src_first;           /* global index of c[0], for --src-addrs rotation */
	struct conn timer;
	enum phase ph;
	int next_start, handshaking, ready, target;
	bool busy;                /* a publisher could send more: do not sleep */
	uint64_t t0, t1, t_stop, last_rx, t_first_ready, t_last_ready;
	uint64_t rx, rx_interval, distinct, dup, ooo, bad, bad_ack, wrong_qos;
	struct hist h;
	struct procset c0, c1;
	long pss1_kb;             /* at the end of the measured interval */
	char failure[512];
	uint8_t pay[65536];
};

static const struct opts *g_opts;   /* for error reports only */
static bool g_child;                /* a conns helper process: errors go to stderr only */

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
		printf("{\"ok\":false,\"scenario\":\"%s\",\"qos\":%d,\"error\":",
		       sc_names[g_opts->sc], g_opts->qos);
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
	c->out.len += mqtt_encode_ack(buf_room(&c->out, 4), type, id);
	mark_dirty(r, c);
}

static void conn_lost(struct run *r, struct conn *c, const char *why)
{
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

static void conn_flush(struct run *r, struct conn *c)
{
	for (int i = 0; i < 4 && c->writable && c->out.len > c->out.off; i++) {
		size_t want = c->out.len - c->out.off;
		ssize_t n = send(c->fd, c->out.p + c->out.off, want, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				c->writable = false;
			else
				conn_lost(r, c, strerror(errno));
			break;
		}
		c->out.off += (size_t)n;
		if ((size_t)n < want)
			c->writable = false;  /* socket full: the next EPOLLOUT edge resumes */
	}
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
	m.protocol_level = 4;
	m.clean_session = true;
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
	c->out.len += mqtt_encode_sub(buf_room(&c->out, mqtt_sub_size(MQTT_SUBSCRIBE, &filter, 1)),
				      MQTT_SUBSCRIBE, 1, &filter, &qos, 1);
	mark_dirty(r, c);
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
	set_opt(c->fd, IPPROTO_TCP, TCP_NODELAY, 1);
	if (c->role == R_PUB && o->qos == 0)
		set_opt(c->fd, SOL_SOCKET, SO_SNDBUF, PUB_SNDBUF);
	bind_source(o, c->fd, global_idx);
	if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		die("epoll_ctl: %s", strerror(errno));
	c->st = CS_CONNECTING;
	r->handshaking++;
	if (connect(c->fd, (const struct sockaddr *)&o->dst, o->dst_len) == 0) {
		c->st = CS_CONNACK;
		c->writable = true;
		queue_connect(r, c);
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
	if (c->st == CS_READY) {
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

/* Records one delivery: new in order, late (reordered) or a duplicate. */
static void track_add(struct run *r, struct track *t, uint64_t seq)
{
	uint64_t bit = 1ull << (seq % 64);

	if (seq / 64 >= t->nwords)
		track_grow(t, seq);
	if (t->bits[seq / 64] & bit) {
		r->dup++;
		return;
	}
	t->bits[seq / 64] |= bit;
	t->distinct++;
	r->distinct++;
	if (seq < t->next)
		r->ooo++;
	else
		t->next = seq + 1;
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
	track_add(r, &c->tr[pub], seq);
	h_add(&r->h, now > sent_at ? now - sent_at : 0);
	c->rx++;
	r->rx++;
	r->last_rx = now;
	if (r->ph == PH_MEASURE)
		r->rx_interval++;
}

static void on_puback(struct run *r, struct conn *c, uint16_t id)
{
	uint64_t bit = 1ull << (id % 64);

	if (c->role != R_PUB || !c->ids || !(c->ids[id / 64] & bit)) {
		r->bad_ack++;
		return;
	}
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

static void on_connack(struct run *r, struct conn *c, const struct mqtt_connack *a)
{
	if (c->st != CS_CONNACK)
		die("broker sent CONNACK to %s %d twice", role_names[c->role], c->idx);
	if (a->rc != MQTT_CONNACK_ACCEPTED)
		die("broker refused CONNECT of %s %d: CONNACK return code %u (%s)",
		    role_names[c->role], c->idx, a->rc, connack_reason(r->o, a->rc));
	if (c->role == R_SUB) {
		c->st = CS_SUBACK;
		queue_subscribe(r, c);
	} else {
		became_ready(r, c);
	}
}

static void on_suback(struct run *r, struct conn *c, const struct mqtt_packet *pkt)
{
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t code = MQTT_SUBACK_FAILURE;

	mqtt_list_iter_init(&it, pkt);
	if (c->st != CS_SUBACK || !mqtt_list_next(&it, &f, &code))
		die("unexpected SUBACK for %s %d", role_names[c->role], c->idx);
	if (code == MQTT_SUBACK_FAILURE)
		die("broker refused the subscription of subscriber %d%s", c->idx,
		    r->o->user ? " (does its ACL let --user read the filter?)" : "");
	if (code < r->o->qos)
		die("broker granted QoS %u to subscriber %d, %d was asked", code, c->idx, r->o->qos);
	became_ready(r, c);
}

static void on_packet(struct run *r, struct conn *c, const struct mqtt_packet *pkt, uint64_t now)
{
	switch (pkt->type) {
	case MQTT_PUBLISH:
		on_delivery(r, c, &pkt->u.publish, now);
		break;
	case MQTT_PUBACK:
		on_puback(r, c, pkt->u.packet_id);
		break;
	case MQTT_CONNACK:
		on_connack(r, c, &pkt->u.connack);
		break;
	case MQTT_SUBACK:
		on_suback(r, c, pkt);
		break;
	case MQTT_PINGRESP:
		break;
	default:
		r->bad++;
		break;
	}
}

/* Decodes every whole packet in place; a partial one stays for the next read. */
static void parse_input(struct run *r, struct conn *c, uint64_t now)
{
	struct buf *b = &c->in;

	while (r->ph != PH_DONE) {
		uint8_t first;
		uint32_t rem;
		size_t hl;
		struct mqtt_packet pkt;
		int rc = mqtt_fixed_header(b->p + b->off, b->len - b->off, MAX_PACKET, &first, &rem, &hl);

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
		rc = mqtt_decode(first, b->p + b->off + hl, rem, &pkt);
		if (rc != MQTT_OK) {
			fail(r, "broker sent a bad %s to %s %d: %s", mqtt_type_name(first >> 4),
			     role_names[c->role], c->idx, mqtt_result_str(rc));
			return;
		}
		on_packet(r, c, &pkt, now);
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
	c->st = CS_CONNACK;
	queue_connect(r, c);
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
		if (c->out.len > c->out.off)
			mark_dirty(r, c);
	}
	if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !c->more_in)
		conn_read(r, c);
}

/* -------------------------------------------------------------- publishing */

/* Lowest 'next' among the subscribers that should get this publisher's messages. */
static uint64_t sub_floor(const struct run *r, int pub)
{
	uint64_t lo = UINT64_MAX;

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

/* Appends one PUBLISH carrying (publisher, sequence, send time). */
static void put_publish(struct run *r, struct conn *c, uint64_t now)
{
	const struct opts *o = r->o;
	uint32_t pub = (uint32_t)c->idx;
	uint16_t id = o->qos ? take_packet_id(r, c) : 0;
	size_t sz = mqtt_publish_size(c->topic_len, o->payload, (uint8_t)o->qos);

	memcpy(r->pay, &pub, 4);
	memcpy(r->pay + 4, &c->seq, 8);
	memcpy(r->pay + 12, &now, 8);
	c->out.len += mqtt_encode_publish(buf_room(&c->out, sz), false, (uint8_t)o->qos, false,
					  (const uint8_t *)c->topic, c->topic_len, id,
					  r->pay, o->payload);
	c->seq++;
}

/* Fills one publisher's batch; returns whether it could have sent more. */
static bool pump_publisher(struct run *r, struct conn *c, uint64_t now)
{
	const struct opts *o = r->o;
	size_t sz = mqtt_publish_size(c->topic_len, o->payload, (uint8_t)o->qos);
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
}

static void pub_topic(const struct run *r, struct conn *c)
{
	switch (r->o->sc) {
	case SC_FANIN:
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

static uint64_t expected_total(const struct run *r)
{
	uint64_t sum = 0;

	for (int p = 0; p < r->n_pubs; p++)
		sum += r->pub[p]->seq * (uint64_t)r->pub_nsubs[p];
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

static void fig_end(struct figures *f)
{
	if (f->json)
		printf("}\n");
	fflush(stdout);
}

static uint64_t lost_total(const struct run *r)
{
	uint64_t lost = 0;

	for (int p = 0; p < r->n_pubs; p++)
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
		     r->o->user ? ": does the ACL let --user write and read the scenario's topics?" : "");
	if (r->ooo)
		fail(r, "%" PRIu64 " deliveries out of order", r->ooo);
	if (r->bad)
		fail(r, "%" PRIu64 " unexpected packets (misrouted, corrupt or never sent)", r->bad);
	if (r->bad_ack)
		fail(r, "%" PRIu64 " PUBACKs for packet ids not in flight", r->bad_ack);
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
static uint64_t conns_forked(const struct opts *o, int *hold_w, pid_t *kids, long *ok)
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
		t_last = conns_forked(o, &hold_w, kids, &ok);
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

/* --------------------------------------------------------------- options */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: iotd-bench [OPTION]...\n"
		"MQTT 3.1.1 load generator for iotd and other brokers (loopback only).\n\n"
		"  -h HOST            broker address (default 127.0.0.1)\n"
		"  -p PORT            broker port (default 1883)\n"
		"  -s SCENARIO        fanin (16 publishers -> 1 subscriber on bench/#),\n"
		"                     fanout (1 publisher -> 950 subscribers),\n"
		"                     pairs (50 publisher/subscriber pairs),\n"
		"                     latency (one pair at --rate msg/s), conns (idle connections)\n"
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
		"  --json             print one JSON object with every figure\n"
		"  --free-port        print a free TCP port on 127.0.0.1 and exit\n"
		"  --help             show this help\n\n"
		"Exit status: 0 ok, 1 the broker lost, reordered or misrouted messages,\n"
		"delivered none or closed a connection, 2 usage or set-up error (connection,\n"
		"CONNECT or subscription refused: no broker, wrong --user or --password, an ACL...).\n",
		PAYLOAD_HDR, OUTSTANDING);
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

static enum scenario parse_scenario(const char *s)
{
	for (unsigned i = 0; i < sizeof(sc_names) / sizeof(sc_names[0]); i++)
		if (!strcmp(s, sc_names[i]))
			return (enum scenario)i;
	die("unknown scenario '%s' (fanin, fanout, pairs, latency, conns)", s);
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
	       O_FREE, O_HELP, O_USER, O_PASSWORD };
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
		{ 0, 0, 0, 0 },
	};
	int ch;

	*o = (struct opts){ .host = "127.0.0.1", .port = 1883, .seconds = 10, .payload = 64,
			    .conns = 10000, .procs = 1, .window = 64,
			    .conn_window = 64, .rate = 1000, .drain = 10 };
	g_opts = o;
	while ((ch = getopt_long(argc, argv, "h:p:s:q:t:P:c:", lo, NULL)) != -1) {
		switch (ch) {
		case 'h': o->host = optarg; break;
		case 'p': o->port = (int)num_arg(optarg, 1, 65535, "-p"); break;
		case 's': o->sc = parse_scenario(optarg); break;
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
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s'", argv[optind]);
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
	return run_traffic(&o);
}
