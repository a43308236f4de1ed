/*
 * hostile.c - a compromised worker, played against a running iotd.
 *
 * Given a worker's pid, it takes that worker's place: it finds the
 * worker's mappings of the shared-memory regions in /proc/PID/maps
 * ("/memfd:iotd-shm": rw-s is the worker's own region, r--s the ones it
 * may only read) and writes through /proc/PID/mem exactly what code
 * running in that worker could write: its own region (counters, the w2r
 * ring's head and data, the r2w ring's tail), nothing else. It stops the
 * worker first (SIGSTOP) so that the real code does not interfere, plays
 * one case, waits a little for the daemon's answer (the router finding the
 * ring impossible and the supervisor killing the worker), then kills the
 * worker (SIGKILL) if the daemon has not. Records are built with the
 * daemon's own encoders (rec.h) and laid out in the ring by the daemon's
 * own structures (shm.h, shmring.h), so a well-formed forgery is exactly
 * what a worker would send; only records malformed on purpose are raw
 * bytes.
 *
 *   hostile CASE VARIANT PID
 *
 *   ring-head   misaligned | backwards | beyond       the w2r head
 *   record-len  huge | over-max | pad                 a bad record at the head
 *   race        random                                data and head rewritten for ~1 s
 *   tail        backwards | beyond | misaligned       the r2w tail
 *   forge       conns | session                       well-formed records it may not send
 *   acl         publish                               a PUBLISH its session may not write
 *   counters    garbage | inherit                     the header page's counters and flags
 *   readonly    writes                                what it may not write, and cannot
 *
 * One line per case on stdout: "hostile CASE VARIANT: worker N (pid P): ...".
 * Exit status: 0 when every check of the tool held, 1 when one failed (the
 * line says which), 2 when the case could not be played (bad arguments, no
 * such worker, no access). Runs as root: /proc/PID/mem of a worker that
 * dropped to another user, and ptrace for gdb.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "iotd.h"
#include "rec.h"
#include "role.h"
#include "shm.h"
#include "shmring.h"

#define SHM_NAME "/memfd:iotd-shm"
#define MAX_MAPS 16
#define WAIT_FAULT_MS 3000       /* how long the daemon has to kill a worker that broke a ring */
#define WAIT_READ_MS 5000        /* how long the router has to read what was written */
#define RACE_MS 1000

struct mapping {
	uint64_t lo, hi;
	bool writable;
	unsigned long inode;
};

/* The worker played, and what it maps. */
struct target {
	pid_t pid, sup_pid, router_pid, listener_pid;
	unsigned index;
	int mem;                     /* /proc/PID/mem, read-write */
	int router_efd;              /* the worker's descriptor of the router's eventfd, or -1 */
	struct mapping maps[MAX_MAPS];
	unsigned nmaps;
	struct mapping own, rring, sup, router;
	uint64_t ring_size;
	uint32_t epoch, capacity;
};

static const char *case_name, *variant;
static unsigned failures;
static pid_t stopped_pid;        /* the worker we stopped: never left stopped behind us */

static void report(struct target *t, const char *fmt, ...)
{
	va_list ap;

	printf("hostile %s %s: worker %u (pid %d): ", case_name, variant, t->index, (int)t->pid);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void check(struct target *t, bool ok, const char *fmt, ...)
{
	va_list ap;

	printf("hostile %s %s: worker %u (pid %d): %s: ", case_name, variant, t->index,
	       (int)t->pid, ok ? "ok" : "FAILED");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	if (!ok)
		failures++;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "hostile: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (stopped_pid > 0)
		kill(stopped_pid, SIGKILL);
	exit(2);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* ---- /proc ------------------------------------------------------------------ */

static int read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;
	size_t len = 0;

	if (fd < 0)
		return -1;
	while (len + 1 < cap && (n = read(fd, buf + len, cap - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	return (int)len;
}

#define PROC_PATH 64             /* /proc/PID/ and a short name */

/* /proc/PID/name, written into path (PROC_PATH bytes). */
static const char *proc_path(char *path, pid_t pid, const char *name)
{
	snprintf(path, PROC_PATH, "/proc/%d/%s", (int)pid, name);
	return path;
}

/* /proc/PID/name read whole into buf, as read_file(). */
static int proc_read(pid_t pid, const char *name, char *buf, size_t cap)
{
	char path[PROC_PATH];

	return read_file(proc_path(path, pid, name), buf, cap);
}

/* State letter and parent of a process; 0 when it is gone. */
static char proc_state(pid_t pid, pid_t *ppid)
{
	char buf[512], *p;

	if (proc_read(pid, "stat", buf, sizeof(buf)) <= 0 || (p = strrchr(buf, ')')) == NULL)
		return 0;
	if (ppid)
		*ppid = (pid_t)strtol(p + 4, NULL, 10);
	return p[2];
}

static bool proc_gone(pid_t pid)
{
	char st = proc_state(pid, NULL);

	return st == 0 || st == 'Z' || st == 'X';
}

/* The process title ("iotd: worker 0"), or "". */
static void proc_title(pid_t pid, char *buf, size_t cap)
{
	int n = proc_read(pid, "cmdline", buf, cap);

	if (n < 0)
		n = 0;
	for (int i = 0; i < n; i++)
		if (buf[i] == '\0')
			buf[i] = ' ';
	while (n > 0 && buf[n - 1] == ' ')
		buf[--n] = '\0';
}

/* The child of ppid whose title is 'title', or 0. */
static pid_t child_titled(pid_t ppid, const char *title)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;

	if (d == NULL)
		return 0;
	while (!found && (e = readdir(d)) != NULL) {
		pid_t pid, parent;
		char t[128];

		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		pid = (pid_t)atoi(e->d_name);
		if (proc_state(pid, &parent) == 0 || parent != ppid || proc_gone(pid))
			continue;
		proc_title(pid, t, sizeof(t));
		if (strcmp(t, title) == 0)
			found = pid;
	}
	closedir(d);
	return found;
}

/* The process's mappings of iotd's regions. */
static unsigned maps_read(pid_t pid, struct mapping *out, unsigned max)
{
	char path[PROC_PATH], line[512];
	unsigned n = 0;
	FILE *f = fopen(proc_path(path, pid, "maps"), "re");

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi, off;
		unsigned long inode;
		char perms[8], dev[16];

		if (strstr(line, SHM_NAME) == NULL)
			continue;
		if (sscanf(line, "%llx-%llx %7s %llx %15s %lu", &lo, &hi, perms, &off, dev,
			   &inode) != 6)
			continue;
		if (n < max)
			out[n] = (struct mapping){ lo, hi, perms[1] == 'w', inode };
		n++;
	}
	fclose(f);
	return n;
}

/* Does pid map the region 'inode' (writable or not, as asked)? */
static bool maps_region(pid_t pid, unsigned long inode, int writable)
{
	struct mapping m[MAX_MAPS * 8];
	unsigned n = maps_read(pid, m, MAX_MAPS * 8);

	for (unsigned i = 0; i < n && i < MAX_MAPS * 8; i++)
		if (m[i].inode == inode && (writable < 0 || m[i].writable == (writable > 0)))
			return true;
	return false;
}

/* ---- the worker's memory ----------------------------------------------------- */

static bool mem_read(struct target *t, uint64_t addr, void *buf, size_t len)
{
	return pread(t->mem, buf, len, (off_t)addr) == (ssize_t)len;
}

static bool mem_write(struct target *t, uint64_t addr, const void *buf, size_t len)
{
	return pwrite(t->mem, buf, len, (off_t)addr) == (ssize_t)len;
}

static uint64_t mem_u64(struct target *t, uint64_t addr)
{
	uint64_t v = 0;

	mem_read(t, addr, &v, sizeof(v));
	return v;
}

static uint32_t mem_u32(struct target *t, uint64_t addr)
{
	uint32_t v = 0;

	mem_read(t, addr, &v, sizeof(v));
	return v;
}

static bool put_u64(struct target *t, uint64_t addr, uint64_t v)
{
	return mem_write(t, addr, &v, sizeof(v));
}

static bool put_u32(struct target *t, uint64_t addr, uint32_t v)
{
	return mem_write(t, addr, &v, sizeof(v));
}

/* Where each field the worker writes, or reads of the router's, lies in its address space. */
#define OWN(t, field) ((t)->own.lo + offsetof(struct shm_worker, field))
#define RRING(t, field) ((t)->rring.lo + offsetof(struct shm_router_ring, field))
#define W2R_DATA(t) ((t)->own.lo + SHM_HDR_BYTES)

static uint64_t w2r_tail(struct target *t)
{
	return mem_u64(t, RRING(t, w2r.tail));
}

/* ---- finding the worker --------------------------------------------------------- */

/*
 * The worker's own descriptor of the router's eventfd: of its eventfds,
 * the one its epoll set does not watch (it watches its own). Taken with
 * pidfd_getfd(), as the worker itself could write it.
 */
static int take_router_efd(pid_t pid)
{
	char path[PROC_PATH], buf[8192];
	int efds[8], nefd = 0, watched[64], nw = 0, chosen = -1;
	DIR *d;
	struct dirent *e;
	int pidfd, fd;

	d = opendir(proc_path(path, pid, "fdinfo"));
	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		char p2[320], *s;

		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		snprintf(p2, sizeof(p2), "/proc/%d/fdinfo/%s", (int)pid, e->d_name);
		if (read_file(p2, buf, sizeof(buf)) <= 0)
			continue;
		if (strstr(buf, "eventfd-count:") && nefd < 8)
			efds[nefd++] = atoi(e->d_name);
		for (s = buf; (s = strstr(s, "tfd:")) != NULL && nw < 64; s += 4)
			watched[nw++] = atoi(s + 4);
	}
	closedir(d);
	for (int i = 0; i < nefd; i++) {
		bool w = false;

		for (int j = 0; j < nw; j++)
			w |= watched[j] == efds[i];
		if (!w)
			chosen = chosen == -1 ? efds[i] : -2;
	}
	if (chosen < 0)
		return -1;
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		return -1;
	fd = (int)syscall(SYS_pidfd_getfd, pidfd, chosen, 0);
	close(pidfd);
	return fd;
}

static void wake_router(struct target *t)
{
	uint64_t one = 1;

	if (t->router_efd >= 0)
		(void)!write(t->router_efd, &one, sizeof(one));
}

static bool size_is_ring(uint64_t len)
{
	uint64_t ring = len - SHM_HDR_BYTES;

	return len > SHM_HDR_BYTES && ring >= SHMRING_MIN_SIZE && !(ring & (ring - 1));
}

static void target_open(struct target *t, pid_t pid)
{
	char title[128], path[PROC_PATH];
	uint64_t small = ((sizeof(struct shm_sup) + 4095) / 4096) * 4096;
	unsigned nrw = 0;

	memset(t, 0, sizeof(*t));
	t->pid = pid;
	t->router_efd = -1;
	proc_title(pid, title, sizeof(title));
	if (sscanf(title, "iotd: worker %u", &t->index) != 1)
		die("pid %d is not an iotd worker (title '%s')", (int)pid, title);
	if (proc_state(pid, &t->sup_pid) == 0)
		die("pid %d is gone", (int)pid);
	t->router_pid = child_titled(t->sup_pid, "iotd: router");
	t->listener_pid = child_titled(t->sup_pid, "iotd: listener");
	t->nmaps = maps_read(pid, t->maps, MAX_MAPS);
	if (t->nmaps > MAX_MAPS)
		die("worker %d maps %u shared-memory regions", (int)pid, t->nmaps);
	for (unsigned i = 0; i < t->nmaps; i++) {
		struct mapping *m = &t->maps[i];

		if (m->writable) {
			t->own = *m;
			nrw++;
		} else if (size_is_ring(m->hi - m->lo)) {
			t->rring = *m;
		} else if (maps_region(t->sup_pid, m->inode, 1)) {
			t->sup = *m;
		} else if (t->router_pid && maps_region(t->router_pid, m->inode, 1)) {
			t->router = *m;
		}
	}
	if (nrw != 1 || !t->rring.lo || !t->sup.lo || t->sup.hi - t->sup.lo < small)
		die("worker %d: cannot tell its regions apart in /proc/%d/maps", (int)pid, (int)pid);
	t->ring_size = t->own.hi - t->own.lo - SHM_HDR_BYTES;
	t->mem = open(proc_path(path, pid, "mem"), O_RDWR | O_CLOEXEC);
	if (t->mem < 0)
		die("%s: %s (run as root)", path, strerror(errno));
	t->epoch = mem_u32(t, t->sup.lo + offsetof(struct shm_sup, workers) +
				   t->index * sizeof(struct shm_worker_state) +
				   offsetof(struct shm_worker_state, epoch));
	t->capacity = mem_u32(t, t->sup.lo + offsetof(struct shm_sup, workers) +
				      t->index * sizeof(struct shm_worker_state) +
				      offsetof(struct shm_worker_state, capacity));
	t->router_efd = take_router_efd(pid);
}

/* SIGSTOP, and wait until the worker is stopped: from now on only we write its memory. */
static void target_stop(struct target *t)
{
	uint64_t deadline = clock_ms() + 2000;

	if (kill(t->pid, SIGSTOP) < 0)
		die("cannot stop pid %d: %s", (int)t->pid, strerror(errno));
	stopped_pid = t->pid;
	while (proc_state(t->pid, NULL) != 'T') {
		if (clock_ms() > deadline)
			die("pid %d did not stop", (int)t->pid);
		sleep_ms(1);
	}
}

/* Wait up to ms for the daemon to kill the worker; true when it did. */
static bool wait_killed(struct target *t, unsigned ms, uint64_t *after_ms)
{
	uint64_t start = clock_ms();

	while (!proc_gone(t->pid)) {
		if (clock_ms() - start > ms)
			return false;
		sleep_ms(2);
	}
	*after_ms = clock_ms() - start;
	return true;
}

/* The case is played: the worker dies, by the daemon's hand or ours. */
static void target_finish(struct target *t, bool expect_fault)
{
	uint64_t after = 0;
	bool killed = wait_killed(t, expect_fault ? WAIT_FAULT_MS : 0, &after);

	if (expect_fault)
		check(t, killed, killed ? "killed by the daemon %" PRIu64 " ms after the write"
					: "still alive %u ms after the write", after, WAIT_FAULT_MS);
	if (!killed) {
		kill(t->pid, SIGKILL);
		report(t, "killed (SIGKILL)");
	}
}

/* ---- writing the w2r ring as the worker would ------------------------------------- */

struct writer {
	struct target *t;
	uint64_t head;               /* local: written up to here */
	uint64_t published;
	unsigned records;
	uint64_t bytes;              /* ring bytes written, padding included */
};

static uint64_t ring_record_bytes(uint64_t len)
{
	return (sizeof(struct shmring_rec) + len + SHMRING_ALIGN - 1) & ~(uint64_t)(SHMRING_ALIGN - 1);
}

static void writer_init(struct writer *w, struct target *t)
{
	w->t = t;
	w->head = w->published = mem_u64(t, OWN(t, w2r.head));
	w->records = 0;
	w->bytes = 0;
}

static bool writer_publish(struct writer *w)
{
	if (!put_u64(w->t, OWN(w->t, w2r.head), w->head))
		return false;
	w->published = w->head;
	wake_router(w->t);
	return true;
}

/* Wait until the router has read everything published (or the worker is gone). */
static bool writer_drained(struct writer *w, unsigned ms)
{
	uint64_t deadline = clock_ms() + ms;

	while (w2r_tail(w->t) != w->published) {
		if (proc_gone(w->t->pid) || clock_ms() > deadline)
			return false;
		sleep_ms(1);
	}
	return true;
}

/* Append one record, publishing and waiting for room when the ring is full. */
static bool writer_put(struct writer *w, uint16_t type, const void *payload, uint32_t len)
{
	struct target *t = w->t;
	uint64_t size = ring_record_bytes(len), mask = t->ring_size - 1;
	uint64_t to_end = t->ring_size - (w->head & mask), pad = size > to_end ? to_end : 0;
	uint64_t deadline = clock_ms() + WAIT_READ_MS;
	struct shmring_rec hdr = { .len = len, .type = type };

	if (len > shmring_max_payload(t->ring_size))
		return false;
	while (t->ring_size - (w->head - w2r_tail(t)) < pad + size) {
		if (!writer_publish(w) || proc_gone(t->pid) || clock_ms() > deadline)
			return false;
		sleep_ms(1);
	}
	if (pad) {
		struct shmring_rec p = { .len = (uint32_t)(pad - sizeof(p)), .type = SHMRING_PAD };

		if (!mem_write(t, W2R_DATA(t) + (w->head & mask), &p, sizeof(p)))
			return false;
		w->head += pad;
		w->bytes += pad;
	}
	if (!mem_write(t, W2R_DATA(t) + (w->head & mask), &hdr, sizeof(hdr)) ||
	    (len && !mem_write(t, W2R_DATA(t) + (w->head & mask) + sizeof(hdr), payload, len)))
		return false;
	w->head += size;
	w->bytes += size;
	w->records++;
	return true;
}

static bool writer_rec(struct writer *w, uint16_t type, struct recw *r)
{
	bool ok = !r->oom && writer_put(w, type, r->buf, (uint32_t)r->len);

	recw_reset(r);
	return ok;
}

/* A string constant as records carry it. */
#define STR(s) ((struct rec_str){ (const uint8_t *)(s), (uint16_t)(sizeof(s) - 1) })
#define BYTES(s) ((struct rec_bytes){ (const uint8_t *)(s), (uint32_t)(sizeof(s) - 1) })

/* A QoS 0 PUBLISH asking for the topic's route: the router always answers on r2w. */
static void build_publish_ask(struct recw *r, struct rec_str topic)
{
	rec_publish_encode(r, &(struct rec_publish){
		.qos = 0, .flags = REC_PUB_ASK, .topic = topic, .ask = 1,
	});
}

/* Wait until the router has caught up with what the worker published before it stopped. */
static void wait_router_caught_up(struct target *t)
{
	struct writer w;

	writer_init(&w, t);
	if (!writer_drained(&w, WAIT_READ_MS))
		die("the router did not catch up with worker %u's ring", t->index);
}

/* ---- cases -------------------------------------------------------------------------- */

static void case_ring_head(struct target *t)
{
	uint64_t head, tail;

	wait_router_caught_up(t);
	head = mem_u64(t, OWN(t, w2r.head));
	tail = w2r_tail(t);
	if (strcmp(variant, "misaligned") == 0)
		head += 4;
	else if (strcmp(variant, "backwards") == 0 && head >= SHMRING_ALIGN)
		head -= SHMRING_ALIGN;
	else if (strcmp(variant, "beyond") == 0)
		head = tail + t->ring_size + SHMRING_ALIGN;
	else
		die("ring-head: variant misaligned, backwards or beyond (and a ring written to)");
	if (!put_u64(t, OWN(t, w2r.head), head))
		die("cannot write the w2r head: %s", strerror(errno));
	wake_router(t);
	report(t, "w2r head set to %" PRIu64 " (tail %" PRIu64 ", ring %" PRIu64 " bytes)", head,
	       tail, t->ring_size);
	target_finish(t, true);
}

static void case_record_len(struct target *t)
{
	uint64_t mask = t->ring_size - 1, head, pos;
	struct shmring_rec hdr = { .type = REC_PUBLISH };
	uint64_t bump = 2 * sizeof(hdr);

	wait_router_caught_up(t);
	head = mem_u64(t, OWN(t, w2r.head));
	pos = head & mask;
	if (strcmp(variant, "huge") == 0) {
		hdr.len = UINT32_MAX - 7;
	} else if (strcmp(variant, "over-max") == 0) {
		/* Fits what is published, but longer than any record may be. */
		hdr.len = (uint32_t)shmring_max_payload(t->ring_size) + SHMRING_ALIGN;
		bump = t->ring_size;
	} else if (strcmp(variant, "pad") == 0) {
		/* A PAD only ever fills up to the end of the ring; this one stops short. */
		hdr.type = SHMRING_PAD;
		hdr.len = pos + 2 * sizeof(hdr) == t->ring_size ? 0 : sizeof(hdr);
	} else {
		die("record-len: variant huge, over-max or pad");
	}
	if (!mem_write(t, W2R_DATA(t) + pos, &hdr, sizeof(hdr)) ||
	    !put_u64(t, OWN(t, w2r.head), head + bump))
		die("cannot write the w2r ring: %s", strerror(errno));
	wake_router(t);
	report(t, "record type %u len %u at %" PRIu64 ", head bumped by %" PRIu64, hdr.type,
	       hdr.len, head, bump);
	target_finish(t, true);
}

struct race {
	struct target *t;
	uint64_t until;
	uint64_t base;               /* the router's tail when the race began */
	unsigned long writes;
	bool stop;
};

static uint64_t rnd64(unsigned *seed)
{
	return ((uint64_t)rand_r(seed) << 33) ^ ((uint64_t)rand_r(seed) << 11) ^ (uint64_t)rand_r(seed);
}

/* Rewrites the ring's data: random bytes, and records with plausible headers. */
static void *race_data(void *arg)
{
	struct race *r = arg;
	struct target *t = r->t;
	unsigned seed = (unsigned)getpid() ^ 0x5eed;
	uint8_t buf[256];

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED) && clock_ms() < r->until) {
		uint64_t off = (r->base + rnd64(&seed) % 4096) & (t->ring_size - 1) & ~7ull;
		size_t n = 8 + (size_t)(rnd64(&seed) % (sizeof(buf) - 8));

		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)rand_r(&seed);
		if (rand_r(&seed) & 1) {
			struct shmring_rec hdr = { .len = (uint32_t)(n - sizeof(hdr)),
						   .type = (uint16_t)(1 + rand_r(&seed) % REC_TYPE_MAX) };

			memcpy(buf, &hdr, sizeof(hdr));
		}
		if (off + n > t->ring_size)
			n = (size_t)(t->ring_size - off);
		if (!mem_write(t, W2R_DATA(t) + off, buf, n))
			break;
		__atomic_add_fetch(&r->writes, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* Rewrites the head: mostly plausible values (so that the router reads), some not. */
static void *race_head(void *arg)
{
	struct race *r = arg;
	struct target *t = r->t;
	unsigned seed = (unsigned)getpid() ^ 0x4ead;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED) && clock_ms() < r->until) {
		uint64_t tail = w2r_tail(t), head;
		unsigned pick = (unsigned)rand_r(&seed) % 8;

		if (pick < 6)
			head = tail + ((rnd64(&seed) % 4096) & ~7ull);
		else if (pick == 6)
			head = rnd64(&seed);
		else
			head = tail;
		if (!put_u64(t, OWN(t, w2r.head), head))
			break;
		wake_router(t);
		__atomic_add_fetch(&r->writes, 1, __ATOMIC_RELAXED);
		if (rand_r(&seed) & 1)
			sleep_ms(0);
	}
	return NULL;
}

static void case_race(struct target *t)
{
	struct race r = { .t = t };
	pthread_t data, head;
	uint64_t after = 0;
	bool killed;

	wait_router_caught_up(t);
	r.base = w2r_tail(t);
	r.until = clock_ms() + RACE_MS;
	if (pthread_create(&data, NULL, race_data, &r) != 0 ||
	    pthread_create(&head, NULL, race_head, &r) != 0)
		die("pthread_create failed");
	killed = wait_killed(t, RACE_MS, &after);
	__atomic_store_n(&r.stop, true, __ATOMIC_RELAXED);
	pthread_join(data, NULL);
	pthread_join(head, NULL);
	report(t, "%lu writes to the w2r data and head; %s", r.writes,
	       killed ? "killed by the daemon during the race" : "alive when the race ended");
	target_finish(t, false);
}

/* The r2w ring's tail: the worker's claim of what it read of the router's records. */
static void case_tail(struct target *t)
{
	struct writer w;
	struct recw r;
	uint64_t tail, rhead;

	recw_init(&r);
	writer_init(&w, t);
	/* A first answer makes the router look at (and remember) the tail as it is. */
	build_publish_ask(&r, STR("hostile/ask"));
	if (!writer_rec(&w, REC_PUBLISH, &r) || !writer_publish(&w) ||
	    !writer_drained(&w, WAIT_READ_MS))
		die("the router did not read a PUBLISH from worker %u", t->index);
	tail = mem_u64(t, OWN(t, r2w.tail));
	rhead = mem_u64(t, RRING(t, r2w.head));
	if (strcmp(variant, "backwards") == 0) {
		if (tail < SHMRING_ALIGN)
			die("tail backwards: the worker has read nothing yet (tail %" PRIu64 ")", tail);
		tail -= SHMRING_ALIGN;
	} else if (strcmp(variant, "beyond") == 0) {
		tail = rhead + SHMRING_ALIGN;
	} else if (strcmp(variant, "misaligned") == 0) {
		tail += 4;
	} else {
		die("tail: variant backwards, beyond or misaligned");
	}
	if (!put_u64(t, OWN(t, r2w.tail), tail))
		die("cannot write the r2w tail: %s", strerror(errno));
	/* The next answer makes the router check it. */
	build_publish_ask(&r, STR("hostile/ask"));
	if (!writer_rec(&w, REC_PUBLISH, &r) || !writer_publish(&w))
		die("cannot write to the w2r ring");
	recw_free(&r);
	report(t, "r2w tail set to %" PRIu64 " (router's head %" PRIu64 ")", tail, rhead);
	target_finish(t, true);
}

/* Connection ids a worker might hold: slots 0..7, serials 1..8 of an epoch. */
#define GUESS_SLOTS 8
#define GUESS_SERIALS 8
#define GUESS_SIDS 32

/* A queued QoS 1 message for session sid, of which the router holds no copy. */
static void build_session_msg(struct recw *r, conn_id_t conn, uint32_t sid, struct rec_str topic)
{
	rec_session_msg_encode(r, &(struct rec_session_msg){
		.conn = conn, .sid = sid, .state = MSG_QUEUED, .qos = 1,
		.topic = topic, .payload = BYTES("forged"),
	});
}

static bool forge_about(struct writer *w, struct recw *r, conn_id_t conn)
{
	const struct rec_str unsubscribed[] = { STR("#"), STR("by/#"), STR("pre/#") };
	struct rec_subscription sub = { .filter = STR("forged/#"), .qos = 2 };
	size_t count_off;
	bool ok = true;

	/* Close it, publishing its will. */
	rec_close_encode(r, &(struct rec_close){ .conn = conn, .publish_will = 1 }, NULL, 0);
	ok &= writer_rec(w, REC_CLOSE, r);
	/* Subscribe it to what it never asked for, and away from what it did. */
	count_off = rec_subscribe_begin(r, &(struct rec_subscribe){ .conn = conn, .packet_id = 1 });
	rec_subscribe_add(r, &sub);
	rec_subscribe_end(r, count_off, 1);
	ok &= writer_rec(w, REC_SUBSCRIBE, r);
	count_off = rec_unsubscribe_begin(r, &(struct rec_unsubscribe){ .conn = conn, .packet_id = 2 });
	for (size_t i = 0; i < ARRAY_SIZE(unsubscribed); i++)
		rec_unsubscribe_add(r, unsubscribed[i]);
	rec_unsubscribe_end(r, count_off, ARRAY_SIZE(unsubscribed));
	ok &= writer_rec(w, REC_UNSUBSCRIBE, r);
	/* Reports on its sessions' messages and inbound QoS 2 ids. */
	for (uint32_t sid = 1; ok && sid <= GUESS_SIDS; sid++) {
		for (uint64_t copy = 1; ok && copy <= 4; copy++) {
			rec_msg_state_encode(r, &(struct rec_msg_state){
				.conn = conn, .sid = sid, .copy = copy, .packet_id = 1,
				.state = MSG_DONE,
			});
			ok &= writer_rec(w, REC_MSG_STATE, r);
		}
		rec_qos2_in_encode(r, &(struct rec_qos2_in){
			.conn = conn, .sid = sid, .packet_id = 1, .held = 1,
		});
		ok &= writer_rec(w, REC_QOS2_IN, r);
		build_session_msg(r, conn, sid, STR("forged/record"));
		ok &= writer_rec(w, REC_SESSION_MSG, r);
	}
	return ok;
}

static void build_connect(struct recw *r, conn_id_t conn, const char *client_id)
{
	rec_connect_encode(r, &(struct rec_connect){
		.conn = conn, .clean = 1, .keepalive = 60,
		.client_id = { (const uint8_t *)client_id, (uint16_t)strlen(client_id) },
		.remote = STR("forged"),
		.will_flag = 1, .will_qos = 1, .will_retain = 0,
		.will_topic = STR("forged/will"), .will_payload = BYTES("forged-will"),
	});
}

/* Record types only the router writes, and numbers no record has. */
static bool forge_router_only(struct writer *w, struct recw *r, unsigned other,
			      uint32_t other_epoch)
{
	const struct rec_str topic = STR("by/t");
	conn_id_t conn = conn_id_make(other, other_epoch, 0, 1);
	struct rec_route_target route_target = { .conn = conn, .qos = 2 };
	size_t count_off;
	bool ok = true;

	/*
	 * Raw bytes, on purpose: the old WORKER_DOWN record (u32 worker, u32
	 * new epoch) had the number CONNACK has now; as a CONNACK it is
	 * malformed.
	 */
	recw_u32(r, other);
	recw_u32(r, other_epoch + 1);
	ok &= writer_rec(w, REC_CONNACK, r);
	rec_connack_encode(r, &(struct rec_connack){ .conn = conn, .sid = 1 }, NULL, 0);
	ok &= writer_rec(w, REC_CONNACK, r);
	count_off = rec_suback_begin(r, &(struct rec_suback){ .conn = conn, .packet_id = 1 });
	rec_suback_add(r, 2);
	rec_suback_end(r, count_off, 1);
	ok &= writer_rec(w, REC_SUBACK, r);
	count_off = rec_unsuback_begin(r, &(struct rec_unsuback){ .conn = conn, .packet_id = 1 });
	rec_suback_end(r, count_off, 0);
	ok &= writer_rec(w, REC_UNSUBACK, r);
	count_off = rec_deliver_begin(r, &(struct rec_deliver){
		.qos = 2, .topic = topic, .payload = BYTES("forged-deliver"),
	});
	for (unsigned slot = 0; slot < GUESS_SLOTS; slot++)
		for (unsigned serial = 1; serial <= GUESS_SERIALS; serial++)
			rec_deliver_add(r, &(struct rec_target){
				.conn = conn_id_make(other, other_epoch, slot, serial),
				.sid = 1, .qos = 2,
			});
	rec_deliver_end(r, count_off, GUESS_SLOTS * GUESS_SERIALS);
	ok &= writer_rec(w, REC_DELIVER, r);
	for (unsigned slot = 0; slot < GUESS_SLOTS; slot++) {
		rec_kick_encode(r, &(struct rec_kick){ conn_id_make(other, other_epoch, slot, 1) });
		ok &= writer_rec(w, REC_KICK, r);
	}
	count_off = rec_route_begin(r, &(struct rec_route){
		.ask = 1, .gen = 0, .topic = topic, .local = 1,
	});
	rec_route_add(r, &route_target);
	rec_route_end(r, count_off, 1);
	ok &= writer_rec(w, REC_ROUTE, r);
	/* Raw bytes under numbers no record type has: no layout to follow. */
	recw_u64(r, conn);
	ok &= writer_rec(w, REC_TYPE_MAX, r);
	recw_u64(r, conn);
	ok &= writer_rec(w, UINT16_MAX, r);
	return ok;
}

static uint32_t sup_epoch(struct target *t, unsigned i)
{
	return mem_u32(t, t->sup.lo + offsetof(struct shm_sup, workers) +
				  i * sizeof(struct shm_worker_state) +
				  offsetof(struct shm_worker_state, epoch));
}

static void case_forge(struct target *t)
{
	unsigned other = t->index == 0 ? 1 : 0;
	uint32_t other_epoch = sup_epoch(t, other);
	struct writer w;
	struct recw r;
	bool ok = true, read;
	uint64_t faulted_after;

	recw_init(&r);
	wait_router_caught_up(t);
	writer_init(&w, t);
	if (strcmp(variant, "conns") == 0) {
		/* Another worker's connections, of its current epoch. */
		for (unsigned slot = 0; ok && slot < GUESS_SLOTS; slot++)
			for (unsigned serial = 1; ok && serial <= GUESS_SERIALS; serial++)
				ok &= forge_about(&w, &r, conn_id_make(other, other_epoch, slot, serial));
		/* Its own, of its predecessors' epochs. */
		for (uint32_t e = t->epoch > 3 ? t->epoch - 3 : 1; ok && e < t->epoch; e++)
			for (unsigned slot = 0; ok && slot < GUESS_SLOTS; slot++)
				ok &= forge_about(&w, &r, conn_id_make(t->index, e, slot, 1));
		/* CONNECTs in slots past what it can hold. */
		for (uint32_t slot = t->capacity; ok && slot < t->capacity + 4; slot++) {
			build_connect(&r, conn_id_make(t->index, t->epoch, slot, 1), "forged-slot");
			ok &= writer_rec(&w, REC_CONNECT, &r);
		}
		build_connect(&r, conn_id_make(t->index, t->epoch, 0xffffff, 1), "forged-slot-max");
		ok &= writer_rec(&w, REC_CONNECT, &r);
		/* A CONNECT on another worker's connection. */
		build_connect(&r, conn_id_make(other, other_epoch, GUESS_SLOTS, 1), "forged-other");
		ok &= writer_rec(&w, REC_CONNECT, &r);
		ok &= forge_router_only(&w, &r, other, other_epoch);
	} else if (strcmp(variant, "session") == 0) {
		/*
		 * A connection id it may hold (its own epoch, slot 0): a stored
		 * message "re-routed" to every session, wherever it lives.
		 */
		for (uint32_t sid = 1; ok && sid <= GUESS_SIDS; sid++) {
			build_session_msg(&r, conn_id_make(t->index, t->epoch, 0, 1), sid,
					  STR("forged/session"));
			ok &= writer_rec(&w, REC_SESSION_MSG, &r);
		}
	} else {
		die("forge: variant conns or session");
	}
	recw_free(&r);
	if (!ok)
		die("cannot write the forged records (worker gone, or the router stopped reading)");
	ok = writer_publish(&w);
	read = ok && writer_drained(&w, WAIT_READ_MS);
	check(t, read, "%u well-formed records, %" PRIu64 " bytes, %s", w.records, w.bytes,
	      read ? "all read by the router" : "not all read by the router");
	/* Well-formed records are dropped one by one: no reason to stop reading the ring. */
	check(t, !wait_killed(t, 200, &faulted_after), "the router kept reading the ring");
	target_finish(t, false);
}

/*
 * The router's write check, which a compromised worker cannot skip: for
 * every connection id the worker may hold (its epoch, the guessed slots
 * and serials), a QoS 0 PUBLISH on acl/denied, then one on acl/marker,
 * as if its clients had sent them. Under an ACL that lets the session
 * write acl/marker and not acl/denied, a subscriber to acl/# must get the
 * marker and never the other: the router reads the records in order, so
 * once the marker came, the denied one was decided. The test asserts
 * that; this only writes and sees the records read.
 */
static void case_acl(struct target *t)
{
	const struct rec_str topics[] = { STR("acl/denied"), STR("acl/marker") };
	struct writer w;
	struct recw r;
	bool ok = true, read;

	if (strcmp(variant, "publish") != 0)
		die("acl: variant publish");
	recw_init(&r);
	wait_router_caught_up(t);
	writer_init(&w, t);
	for (size_t i = 0; i < ARRAY_SIZE(topics); i++)
		for (unsigned slot = 0; ok && slot < GUESS_SLOTS; slot++)
			for (unsigned serial = 1; ok && serial <= GUESS_SERIALS; serial++) {
				rec_publish_encode(&r, &(struct rec_publish){
					.conn = conn_id_make(t->index, t->epoch, slot, serial),
					.topic = topics[i], .payload = BYTES("forged"),
				});
				ok &= writer_rec(&w, REC_PUBLISH, &r);
			}
	recw_free(&r);
	if (!ok || !writer_publish(&w))
		die("cannot write the PUBLISH records (worker gone, or the router stopped reading)");
	read = writer_drained(&w, WAIT_READ_MS);
	check(t, read, "%u PUBLISH records on acl/denied then acl/marker, %s", w.records,
	      read ? "all read by the router" : "not all read by the router");
	target_finish(t, false);
}

/* The header page's counters and wake-up flags: claims nobody may take for sizes. */
static void case_counters(struct target *t)
{
	uint64_t deadline;
	uint32_t v = 1;

	wait_router_caught_up(t);
	if (strcmp(variant, "garbage") == 0) {
		if (!put_u64(t, OWN(t, accepted), UINT64_MAX - 5) ||
		    !put_u64(t, OWN(t, released), UINT64_MAX) ||
		    !put_u64(t, OWN(t, msgs_in), UINT64_MAX) ||
		    !put_u64(t, OWN(t, msgs_out), UINT64_MAX - 1))
			die("cannot write the counters: %s", strerror(errno));
		/* Flip the wake-up flags: the router may wake the worker, never more than once each. */
		deadline = clock_ms() + 500;
		while (clock_ms() < deadline) {
			if (!put_u32(t, OWN(t, w2r.p_wait), v) || !put_u32(t, OWN(t, r2w.c_sleep), v))
				break;
			wake_router(t);
			v += (v & 1) ? 2 : 1;
			if (v % 64 == 0)
				sleep_ms(1);
		}
		report(t, "counters set to garbage, wake-up flags flipped %u times", v);
		target_finish(t, false);
	} else if (strcmp(variant, "inherit") == 0) {
		/*
		 * Leave garbage for the successor in everything the region holds,
		 * then break the ring: the successor must take none of it.
		 */
		uint64_t head = mem_u64(t, OWN(t, w2r.head));

		if (!put_u64(t, OWN(t, accepted), UINT64_MAX - 5) ||
		    !put_u64(t, OWN(t, released), 0) ||
		    !put_u32(t, OWN(t, w2r.p_wait), 0xffffffff) ||
		    !put_u64(t, OWN(t, r2w.tail), 3) ||
		    !put_u64(t, OWN(t, w2r.head), head + 4))
			die("cannot write the counters and the w2r head");
		wake_router(t);
		report(t, "counters and flags left as garbage, r2w tail and w2r head misaligned");
		target_finish(t, true);
	} else {
		die("counters: variant garbage or inherit");
	}
}

/* ---- what the worker cannot write -------------------------------------------------- */

/* gdb attached to the worker makes it call mprotect(addr, len, prot); returns "rc errno". */
static bool gdb_mprotect(struct target *t, uint64_t addr, uint64_t len, int prot, long *rc,
			 long *err)
{
	char call[160], pid[16], line[512];
	int pipefd[2];
	pid_t child;
	FILE *f;
	int status;
	bool got_rc = false, got_err = false;

	snprintf(pid, sizeof(pid), "%d", (int)t->pid);
	snprintf(call, sizeof(call), "print (int)mprotect((void *)0x%" PRIx64 ", %" PRIu64 ", %d)",
		 addr, len, prot);
	if (pipe(pipefd) < 0)
		return false;
	child = fork();
	if (child < 0)
		return false;
	if (child == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(pipefd[1], 1);
		dup2(null, 2);
		dup2(null, 0);
		close(pipefd[0]);
		/* The worker is stopped: its pending SIGSTOP is not its business during the call. */
		execlp("gdb", "gdb", "-nx", "-batch", "-p", pid,
		       "-ex", "handle SIGSTOP nostop noprint nopass",
		       "-ex", call,
		       "-ex", "print *((int *(*)(void))__errno_location)()", (char *)NULL);
		_exit(127);
	}
	close(pipefd[1]);
	f = fdopen(pipefd[0], "r");
	while (f && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "$1 = ", 5) == 0)
			got_rc = sscanf(line + 5, "%ld", rc) == 1;
		else if (strncmp(line, "$2 = ", 5) == 0)
			got_err = sscanf(line + 5, "%ld", err) == 1;
	}
	if (f)
		fclose(f);
	waitpid(child, &status, 0);
	return got_rc && got_err;
}

static void case_readonly(struct target *t)
{
	struct mapping others[MAX_MAPS * 8];
	unsigned writable = 0, big_ro = 0, small_ro = 0;
	uint64_t small = ((sizeof(struct shm_sup) + 4095) / 4096) * 4096;
	uint64_t small_router = ((sizeof(struct shm_router) + 4095) / 4096) * 4096;
	long rc = 0, err = 0;
	bool have_gdb = access("/usr/bin/gdb", X_OK) == 0;

	/* gdb first: it stops the worker itself, and leaves it running where it was. */
	if (have_gdb && gdb_mprotect(t, t->rring.lo, t->rring.hi - t->rring.lo, 3, &rc, &err))
		check(t, rc == -1 && err == EACCES,
		      "mprotect(ring from the router, PROT_READ|PROT_WRITE) called in the worker: "
		      "%ld, errno %ld", rc, err);
	else
		report(t, "gdb could not make the worker call mprotect: not checked");
	if (have_gdb && gdb_mprotect(t, t->sup.lo, t->sup.hi - t->sup.lo, 3, &rc, &err))
		check(t, rc == -1 && err == EACCES,
		      "mprotect(supervisor's region, PROT_READ|PROT_WRITE) called in the worker: "
		      "%ld, errno %ld", rc, err);
	if (have_gdb && gdb_mprotect(t, t->own.lo, t->own.hi - t->own.lo, 3, &rc, &err))
		check(t, rc == 0, "mprotect(its own region, PROT_READ|PROT_WRITE) in the worker "
		      "(control): %ld", rc);
	target_stop(t);

	/* What it maps: one writable region, and read-only only what shm.h gives a worker. */
	for (unsigned i = 0; i < t->nmaps; i++) {
		struct mapping *m = &t->maps[i];
		uint64_t len = m->hi - m->lo;
		uint8_t byte;
		ssize_t n;

		if (m->writable) {
			writable++;
			/* The control: the same write into its own region goes through. */
			check(t, mem_read(t, m->lo, &byte, 1) && mem_write(t, m->lo, &byte, 1),
			      "write through /proc/PID/mem into its own region (control)");
			check(t, len == SHM_HDR_BYTES + t->ring_size && maps_region(t->sup_pid, m->inode, 0),
			      "writable mapping %" PRIx64 " of %" PRIu64 " bytes is its own region",
			      m->lo, len);
			continue;
		}
		if (size_is_ring(len))
			big_ro++;
		else
			small_ro++;
		/* Every read-only mapping refuses a write, even one made through /proc/PID/mem. */
		if (!mem_read(t, m->lo, &byte, 1)) {
			check(t, false, "cannot read the read-only mapping %" PRIx64, m->lo);
			continue;
		}
		errno = 0;
		n = pwrite(t->mem, &byte, 1, (off_t)m->lo);
		check(t, n != 1, "write through /proc/PID/mem into read-only mapping %" PRIx64
		      " (%" PRIu64 " bytes) refused: %s", m->lo, len,
		      n == 1 ? "written" : n == 0 ? "nothing written" : strerror(errno));
	}
	check(t, t->nmaps == 4 && writable == 1 && big_ro == 1 && small_ro == 2,
	      "%u shared-memory mappings: %u writable, %u read-only ring, %u read-only pages "
	      "(expected 4: its own region, the ring from the router, sup and router)",
	      t->nmaps, writable, big_ro, small_ro);
	check(t, t->rring.hi - t->rring.lo == SHM_HDR_BYTES + t->ring_size &&
		 t->router_pid && maps_region(t->router_pid, t->rring.inode, 1),
	      "the read-only ring is the one the router writes to it");
	check(t, t->sup.hi - t->sup.lo == small, "the supervisor's region: %" PRIu64 " bytes",
	      t->sup.hi - t->sup.lo);
	check(t, t->router.lo && t->router.hi - t->router.lo == small_router,
	      "the router's region (read-only): %" PRIu64 " bytes", t->router.hi - t->router.lo);

	/* Nothing of another worker, the listener or the router's journal. */
	if (t->router_pid) {
		unsigned n = maps_read(t->router_pid, others, ARRAY_SIZE(others));
		unsigned foreign = 0;

		for (unsigned i = 0; i < n && i < ARRAY_SIZE(others); i++) {
			bool mine = false;

			for (unsigned j = 0; j < t->nmaps; j++)
				mine |= t->maps[j].inode == others[i].inode;
			/* The router's writable regions a worker may see: router and its own ring. */
			if (mine && others[i].writable && others[i].inode != t->router.inode &&
			    others[i].inode != t->rring.inode)
				foreign++;
			/* Its read-only ones are sup and the workers' regions: only its own. */
			if (mine && !others[i].writable && others[i].inode != t->own.inode &&
			    others[i].inode != t->sup.inode)
				foreign++;
		}
		check(t, foreign == 0, "maps %u region(s) of the router's journal, another "
		      "worker's rings or regions", foreign);
	}
	if (t->listener_pid) {
		unsigned n = maps_read(t->listener_pid, others, ARRAY_SIZE(others));
		bool listener_region = false;

		for (unsigned i = 0; i < n && i < ARRAY_SIZE(others); i++)
			for (unsigned j = 0; j < t->nmaps; j++)
				listener_region |= others[i].writable &&
						   others[i].inode == t->maps[j].inode;
		check(t, !listener_region, "does not map the listener's region");
	}
	target_finish(t, false);
}

int main(int argc, char **argv)
{
	struct target t;
	char *end;
	long pid;

	if (argc != 4) {
		fprintf(stderr, "usage: hostile CASE VARIANT PID\n"
			"  ring-head   misaligned|backwards|beyond\n"
			"  record-len  huge|over-max|pad\n"
			"  race        random\n"
			"  tail        backwards|beyond|misaligned\n"
			"  forge       conns|session\n"
			"  acl         publish\n"
			"  counters    garbage|inherit\n"
			"  readonly    writes\n");
		return 2;
	}
	case_name = argv[1];
	variant = argv[2];
	pid = strtol(argv[3], &end, 10);
	if (*end || pid <= 0)
		die("bad pid '%s'", argv[3]);
	target_open(&t, (pid_t)pid);
	if (strcmp(case_name, "readonly") == 0) {
		case_readonly(&t);
		return failures ? 1 : 0;
	}
	target_stop(&t);
	if (strcmp(case_name, "ring-head") == 0)
		case_ring_head(&t);
	else if (strcmp(case_name, "record-len") == 0)
		case_record_len(&t);
	else if (strcmp(case_name, "race") == 0)
		case_race(&t);
	else if (strcmp(case_name, "tail") == 0)
		case_tail(&t);
	else if (strcmp(case_name, "forge") == 0)
		case_forge(&t);
	else if (strcmp(case_name, "acl") == 0)
		case_acl(&t);
	else if (strcmp(case_name, "counters") == 0)
		case_counters(&t);
	else {
		kill(t.pid, SIGCONT);
		die("unknown case '%s'", case_name);
	}
	return failures ? 1 : 0;
}
