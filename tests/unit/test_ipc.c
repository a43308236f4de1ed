/*
 * test_ipc.c - unit tests of the control plane: the transport (messages
 * with no fd, one fd or a batch of fds over a SOCK_SEQPACKET socketpair,
 * EOF, truncation, the fd hygiene of the receiver) and the dispatcher
 * every role reads its sockets with (what it hands to which handler, what
 * it refuses, how much it reads per call), and the auth channels'
 * request and verdict (ipc_auth.c), whose decoder trusts no length.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"

#define SEEN_MAX 8

/* What the handlers and the refusal hook were given. */
struct seen {
	unsigned n;                      /* handler calls */
	uint32_t type[SEEN_MAX], len[SEEN_MAX], peer[SEEN_MAX];
	char data[SEEN_MAX][32];
	unsigned nfds[SEEN_MAX];
	int fds[IPC_MAX_FDS];            /* the last call's */
	unsigned stop_at;                /* the call that returns IPC_STOP; 0: none */
	unsigned refused;
	struct ipc_hdr refused_hdr;      /* the last one */
};

/* A test's socketpair; for the dispatcher's tests, a dispatcher on b too. */
struct ends {
	int a, b;
	struct ipc_dispatcher d;
	struct seen seen;
};

static int pair_setup(void **state)
{
	static struct ends e;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	memset(&e, 0, sizeof(e));
	e.a = sv[0];
	e.b = sv[1];
	*state = &e;
	return 0;
}

static int pair_teardown(void **state)
{
	struct ends *e = *state;

	if (e->a >= 0)
		close(e->a);
	if (e->b >= 0)
		close(e->b);
	return 0;
}

static bool fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0 || errno != EBADF;
}

/* ipc_recv on e->b into buf fails with err, and gives no fd. */
static void expect_recv_error(struct ends *e, char *buf, size_t len, int err)
{
	struct ipc_hdr hdr;
	int fd = 99;

	errno = 0;
	assert_int_equal(ipc_recv(e->b, &hdr, buf, len, &fd), -1);
	assert_int_equal(errno, err);
	assert_int_equal(fd, -1);
}

/* A message of that type with len bytes of payload (into buf, of cap) and no fd; its header. */
static struct ipc_hdr expect_msg(int sock, uint32_t type, void *buf, size_t cap, size_t len)
{
	struct ipc_hdr hdr;
	int fd = 123;

	assert_int_equal(ipc_recv(sock, &hdr, buf, cap, &fd), (ssize_t)len);
	assert_int_equal(hdr.type, type);
	assert_int_equal(hdr.len, len);
	assert_int_equal(hdr.version, IPC_VERSION);
	assert_int_equal(fd, -1);
	return hdr;
}

static void test_message_without_fd_round_trips(void **state)
{
	struct ends *e = *state;
	struct ipc_client cl = { .remote = "127.0.0.1:53412" };
	struct ipc_client got;

	assert_int_equal(ipc_send(e->a, IPC_PING, 5, NULL, 0, -1), 0);
	assert_int_equal(expect_msg(e->b, IPC_PING, &got, sizeof(got), 0).peer, 5);

	assert_int_equal(ipc_send(e->b, IPC_PONG, 0, &cl, sizeof(cl), -1), 0);
	expect_msg(e->a, IPC_PONG, &got, sizeof(got), sizeof(cl));
	assert_string_equal(got.remote, "127.0.0.1:53412");
}

static void test_fd_arrives_working_and_cloexec(void **state)
{
	struct ends *e = *state;
	struct ipc_client cl = { .remote = "[::1]:1883" };
	struct ipc_client got;
	struct ipc_hdr hdr;
	int pfd[2], fd = -1;
	char buf[8];

	assert_int_equal(pipe(pfd), 0);
	assert_int_equal(ipc_send(e->a, IPC_CLIENT_FD, 3, &cl, sizeof(cl), pfd[1]), 0);
	close(pfd[1]);                               /* sending does not close: ours to close */
	assert_int_equal(ipc_recv(e->b, &hdr, &got, sizeof(got), &fd), sizeof(cl));
	assert_int_equal(hdr.type, IPC_CLIENT_FD);
	assert_int_equal(hdr.peer, 3);
	assert_string_equal(got.remote, "[::1]:1883");
	assert_true(fd >= 0);
	assert_int_equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);

	assert_int_equal(write(fd, "via fd", 6), 6);
	assert_int_equal(read(pfd[0], buf, sizeof(buf)), 6);
	assert_memory_equal(buf, "via fd", 6);
	close(fd);
	/* That was the last write end: the pipe reports EOF. */
	assert_int_equal(read(pfd[0], buf, sizeof(buf)), 0);
	close(pfd[0]);
}

static void test_eof_returns_zero_with_type_zero(void **state)
{
	struct ends *e = *state;
	struct ipc_hdr hdr = { .type = 77 };
	char buf[16];
	int fd = 5;

	close(e->a);
	e->a = -1;
	assert_int_equal(ipc_recv(e->b, &hdr, buf, sizeof(buf), &fd), 0);
	assert_int_equal(hdr.type, 0);
	assert_int_equal(fd, -1);
	/* Sending into a closed pair fails cleanly, without SIGPIPE. */
	assert_int_equal(ipc_send(e->b, IPC_PING, 0, NULL, 0, -1), -1);
	assert_int_equal(errno, EPIPE);
}

static void test_empty_nonblocking_socket_gives_eagain(void **state)
{
	struct ends *e = *state;
	char buf[16];

	assert_int_equal(fcntl(e->b, F_SETFL, O_NONBLOCK), 0);
	expect_recv_error(e, buf, sizeof(buf), EAGAIN);
}

static void test_oversize_fails_with_emsgsize_and_closes_fd(void **state)
{
	struct ends *e = *state;
	static char big[IPC_MAX_PAYLOAD + 1];
	char small[8];
	int pfd[2];
	char c;

	errno = 0;
	assert_int_equal(ipc_send(e->a, IPC_PING, 0, big, sizeof(big), -1), -1);
	assert_int_equal(errno, EMSGSIZE);

	/* Longer than the receiver's buffer: dropped, and its fd not leaked. */
	assert_int_equal(pipe2(pfd, O_NONBLOCK), 0);
	assert_int_equal(ipc_send(e->a, IPC_CLIENT_FD, 0, big, 64, pfd[1]), 0);
	close(pfd[1]);
	expect_recv_error(e, small, sizeof(small), EMSGSIZE);
	assert_int_equal(read(pfd[0], &c, 1), 0);   /* no write end left anywhere */
	close(pfd[0]);

	/* The next message is intact. */
	assert_int_equal(ipc_send(e->a, IPC_PONG, 0, "ok", 2, -1), 0);
	expect_msg(e->b, IPC_PONG, small, sizeof(small), 2);
	assert_memory_equal(small, "ok", 2);
}

/* One message carrying two fds, built by hand: ipc_send never does that. */
static void send_two_fds(int sock, int fd1, int fd2)
{
	struct ipc_hdr hdr = { .type = IPC_CLIENT_FD, .version = IPC_VERSION };
	struct iovec iov = { .iov_base = &hdr, .iov_len = sizeof(hdr) };
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} cmsg;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cmsg.buf, .msg_controllen = sizeof(cmsg.buf) };
	struct cmsghdr *c;
	int fds[2] = { fd1, fd2 };

	memset(&cmsg, 0, sizeof(cmsg));
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	assert_int_equal(sendmsg(sock, &msg, 0), (ssize_t)sizeof(hdr));
}

static void test_extra_fds_are_closed(void **state)
{
	struct ends *e = *state;
	struct ipc_hdr hdr;
	int p1[2], p2[2], fd = -1;
	char c;

	assert_int_equal(pipe2(p1, O_NONBLOCK), 0);
	assert_int_equal(pipe2(p2, O_NONBLOCK), 0);
	send_two_fds(e->a, p1[1], p2[1]);
	close(p1[1]);
	close(p2[1]);

	assert_int_equal(ipc_recv(e->b, &hdr, NULL, 0, &fd), 0);
	assert_int_equal(hdr.type, IPC_CLIENT_FD);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "1", 1), 1);     /* the first one is ours */
	assert_int_equal(read(p1[0], &c, 1), 1);
	/* The second was closed on arrival: its pipe has no writer left. */
	assert_int_equal(read(p2[0], &c, 1), 0);
	close(fd);
	close(p1[0]);
	close(p2[0]);
}

static void test_short_or_inconsistent_message_is_rejected(void **state)
{
	struct ends *e = *state;
	struct ipc_hdr hdr = { .type = IPC_PING, .len = 10 };
	char buf[32];
	int fd;

	/* Shorter than a header. */
	assert_int_equal(send(e->a, "abc", 3, 0), 3);
	errno = 0;
	assert_int_equal(ipc_recv(e->b, &hdr, buf, sizeof(buf), &fd), -1);
	assert_int_equal(errno, EBADMSG);
	/* A header whose len disagrees with what came. */
	hdr = (struct ipc_hdr){ .type = IPC_PING, .len = 10 };
	assert_int_equal(send(e->a, &hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	expect_recv_error(e, buf, sizeof(buf), EBADMSG);
	/* Type 0, which only EOF may read as. */
	assert_int_equal(ipc_send(e->a, 0, 0, NULL, 0, -1), 0);
	expect_recv_error(e, buf, sizeof(buf), EBADMSG);
}

static void test_every_fd_is_released(void **state)
{
	struct ends *e = *state;
	struct ipc_hdr hdr;
	int probe, fd;
	char buf[8];

	/* Many messages with fds, received and closed: the fd numbers stay put. */
	probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(probe >= 0);
	close(probe);
	for (int i = 0; i < 200; i++) {
		int pfd[2];

		assert_int_equal(pipe(pfd), 0);
		assert_int_equal(ipc_send(e->a, IPC_CLIENT_FD, 0, "x", 1, pfd[0]), 0);
		close(pfd[0]);
		close(pfd[1]);
		assert_int_equal(ipc_recv(e->b, &hdr, buf, sizeof(buf), &fd), 1);
		assert_true(fd_is_open(fd));
		close(fd);
	}
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_int_equal(fd, probe);
	close(fd);
}

/* n pipes; the write ends go in a message, the read ends stay here. */
static void make_pipes(int (*p)[2], int *ends, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(pipe2(p[i], O_NONBLOCK | O_CLOEXEC), 0);
		ends[i] = p[i][1];
	}
}

static void test_batch_of_fds_arrives_in_order(void **state)
{
	struct ends *e = *state;
	struct ipc_client cl[5], got[IPC_MAX_FDS];
	struct ipc_hdr hdr;
	int p[5][2], ends[5], fds[IPC_MAX_FDS];
	unsigned nfds = 99;

	memset(cl, 0, sizeof(cl));
	for (int i = 0; i < 5; i++)
		snprintf(cl[i].remote, sizeof(cl[i].remote), "10.0.0.%d:%d", i, 1000 + i);
	make_pipes(p, ends, 5);
	assert_int_equal(ipc_send_fds(e->a, IPC_CLIENT_FD, 1, cl, sizeof(cl), ends, 5), 0);
	for (int i = 0; i < 5; i++)
		close(p[i][1]);
	assert_int_equal(ipc_recv_fds(e->b, &hdr, got, sizeof(got), fds, IPC_MAX_FDS, &nfds),
			 sizeof(cl));
	assert_int_equal(hdr.type, IPC_CLIENT_FD);
	assert_int_equal(hdr.peer, 1);
	assert_int_equal(nfds, 5);
	for (int i = 0; i < 5; i++) {
		char c;

		assert_string_equal(got[i].remote, cl[i].remote);
		assert_int_equal(fcntl(fds[i], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
		/* fds[i] is the write end of pipe i: what goes in comes out there. */
		assert_int_equal(write(fds[i], "x", 1), 1);
		assert_int_equal(read(p[i][0], &c, 1), 1);
		close(fds[i]);
		assert_int_equal(read(p[i][0], &c, 1), 0);
		close(p[i][0]);
	}
}

static void test_fds_beyond_max_are_closed(void **state)
{
	struct ends *e = *state;
	struct ipc_hdr hdr;
	int p[3][2], ends[3], fds[2];
	unsigned nfds;
	char c;

	make_pipes(p, ends, 3);
	assert_int_equal(ipc_send_fds(e->a, IPC_CLIENT_FD, 0, NULL, 0, ends, 3), 0);
	for (int i = 0; i < 3; i++)
		close(p[i][1]);
	assert_int_equal(ipc_recv_fds(e->b, &hdr, NULL, 0, fds, 2, &nfds), 0);
	assert_int_equal(nfds, 2);
	close(fds[0]);
	close(fds[1]);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(read(p[i][0], &c, 1), 0);     /* no writer left anywhere */
		close(p[i][0]);
	}
}

static void test_more_fds_than_a_message_carries_is_refused(void **state)
{
	struct ends *e = *state;
	int fds[IPC_MAX_FDS + 1];

	for (int i = 0; i <= IPC_MAX_FDS; i++)
		fds[i] = 0;
	errno = 0;
	assert_int_equal(ipc_send_fds(e->a, IPC_CLIENT_FD, 0, NULL, 0, fds, IPC_MAX_FDS + 1), -1);
	assert_int_equal(errno, EINVAL);
}

static void test_dropped_batch_keeps_its_header_and_closes_every_fd(void **state)
{
	struct ends *e = *state;
	struct ipc_client cl[4];
	struct ipc_hdr hdr;
	char small[64];
	int p[4][2], ends[4], fds[IPC_MAX_FDS];
	unsigned nfds = 99;
	char c;

	memset(cl, 0, sizeof(cl));
	make_pipes(p, ends, 4);
	assert_int_equal(ipc_send_fds(e->a, IPC_CLIENT_FD, 0, cl, sizeof(cl), ends, 4), 0);
	for (int i = 0; i < 4; i++)
		close(p[i][1]);
	errno = 0;
	assert_int_equal(ipc_recv_fds(e->b, &hdr, small, sizeof(small), fds, IPC_MAX_FDS, &nfds),
			 -1);
	assert_int_equal(errno, EMSGSIZE);
	assert_int_equal(nfds, 0);
	/* What the sender meant: a caller can still count it. */
	assert_int_equal(hdr.type, IPC_CLIENT_FD);
	assert_int_equal(hdr.len, sizeof(cl));
	for (int i = 0; i < 4; i++) {
		assert_int_equal(read(p[i][0], &c, 1), 0);
		close(p[i][0]);
	}
}

/* --- the dispatcher ---------------------------------------------------------- */

static int record(void *ctx, struct ipc_msg *m)
{
	struct seen *s = ctx;
	unsigned i = s->n++;

	if (i < SEEN_MAX) {
		s->type[i] = m->hdr.type;
		s->len[i] = m->hdr.len;
		s->peer[i] = m->hdr.peer;
		memcpy(s->data[i], m->data, m->hdr.len < 32 ? m->hdr.len : 32);
		s->nfds[i] = m->nfds;
	}
	memcpy(s->fds, m->fds, m->nfds * sizeof(int));
	return s->n == s->stop_at ? IPC_STOP : 0;
}

static void note_refused(void *ctx, const struct ipc_hdr *hdr)
{
	struct seen *s = ctx;

	s->refused++;
	s->refused_hdr = *hdr;
}

static const struct ipc_handler table[IPC_TYPE_MAX] = {
	[IPC_PING] = { .fn = record },
	[IPC_PONG] = { .fn = record, .max_len = 16 },
	[IPC_WORKER_DOWN] = { .fn = record, IPC_LEN(sizeof(struct ipc_worker)) },
	[IPC_ADDR_REPORT] = { .fn = record, .unit = sizeof(struct ipc_addr_entry),
			      .max_len = 2 * sizeof(struct ipc_addr_entry) },
	[IPC_CLIENT_FD] = { .fn = record, .unit = sizeof(struct ipc_client),
			    .max_len = IPC_MAX_FDS * sizeof(struct ipc_client),
			    .max_fds = IPC_MAX_FDS },
};

/* The dispatcher e->d on e->b, made non-blocking like the fd channels. */
static void dispatcher_on(struct ends *e, uint32_t peer)
{
	assert_int_equal(fcntl(e->b, F_SETFL, O_NONBLOCK), 0);
	ipc_dispatcher_init(&e->d, table, peer, "the test");
	e->d.refused = note_refused;
}

/* A socketpair with a dispatcher on its b end that takes any peer. */
static int dispatch_setup(void **state)
{
	if (pair_setup(state) < 0)
		return -1;
	dispatcher_on(*state, IPC_PEER_ANY);
	return 0;
}

/* What the dispatcher reads of e->b in one call, at most max messages. */
static int dispatch(struct ends *e, unsigned max)
{
	return ipc_dispatch(e->b, &e->d, &e->seen, max);
}

/* One datagram with a header of our making: what ipc_send never sends. */
static void send_raw(int sock, struct ipc_hdr hdr, const void *data, size_t len)
{
	static char buf[sizeof(struct ipc_hdr) + IPC_MAX_PAYLOAD + 64];

	assert_true(len <= IPC_MAX_PAYLOAD + 64);
	memcpy(buf, &hdr, sizeof(hdr));
	if (len > 0)
		memcpy(buf + sizeof(hdr), data, len);
	assert_int_equal(send(sock, buf, sizeof(hdr) + len, 0), (ssize_t)(sizeof(hdr) + len));
}

/* stderr into a file, for what gets logged; restored by captured(). */
static int capture_stderr(FILE **f)
{
	int saved = dup(2);

	fflush(stderr);
	*f = tmpfile();
	assert_non_null(*f);
	assert_int_equal(dup2(fileno(*f), 2), 2);
	return saved;
}

/* How many times needle was logged since capture_stderr(). */
static unsigned captured(FILE *f, int saved, const char *needle)
{
	static char text[8192];
	unsigned n = 0;
	size_t len;

	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	rewind(f);
	len = fread(text, 1, sizeof(text) - 1, f);
	text[len] = '\0';
	fclose(f);
	for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
		n++;
	return n;
}

static void test_dispatch_hands_each_type_to_its_handler(void **state)
{
	struct ends *e = *state;
	struct ipc_worker w = { .index = 2, .epoch = 7 }, got;

	assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_PONG, 1, "hello", 5, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_WORKER_DOWN, 2, &w, sizeof(w), -1), 0);
	assert_int_equal(dispatch(e, 16), 3);
	assert_int_equal(e->seen.n, 3);
	assert_int_equal(e->seen.type[0], IPC_PING);
	assert_int_equal(e->seen.len[0], 0);
	assert_int_equal(e->seen.type[1], IPC_PONG);
	assert_int_equal(e->seen.peer[1], 1);
	assert_memory_equal(e->seen.data[1], "hello", 5);
	assert_int_equal(e->seen.type[2], IPC_WORKER_DOWN);
	memcpy(&got, e->seen.data[2], sizeof(got));
	assert_int_equal(got.index, 2);
	assert_int_equal(got.epoch, 7);
	assert_int_equal(e->seen.refused, 0);
	/* Nothing more waiting. */
	assert_int_equal(dispatch(e, 16), 0);
	assert_int_equal(e->seen.n, 3);
}

static void test_dispatch_refuses_a_type_the_table_lacks_and_logs_it_once(void **state)
{
	struct ends *e = *state;
	FILE *f;
	int saved;

	assert_int_equal(ipc_send(e->a, IPC_TYPE_MAX + 10, 0, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_CONFIG, 0, "x", 1, -1), 0);     /* a type, not ours */
	assert_int_equal(ipc_send(e->a, IPC_TYPE_MAX, 0, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	saved = capture_stderr(&f);
	assert_int_equal(dispatch(e, 16), 4);
	assert_int_equal(captured(f, saved, "of a type not taken here"), 1);
	assert_int_equal(e->seen.refused, 3);
	assert_int_equal(e->seen.refused_hdr.type, IPC_TYPE_MAX);
	assert_int_equal(e->seen.n, 1);
	assert_int_equal(e->seen.type[0], IPC_PING);
}

static void test_dispatch_refuses_a_payload_of_the_wrong_size(void **state)
{
	struct ends *e = *state;
	struct ipc_addr_entry ae[3];
	char big[32] = "0123456789abcdefX";

	memset(ae, 0, sizeof(ae));
	/* Exactly sizeof(struct ipc_worker): shorter and longer are refused. */
	assert_int_equal(ipc_send(e->a, IPC_WORKER_DOWN, 0, big, 4, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_WORKER_DOWN, 0, big, 12, -1), 0);
	/* Up to 16 bytes. */
	assert_int_equal(ipc_send(e->a, IPC_PONG, 0, big, 17, -1), 0);
	/* Whole entries only, and at most two. */
	assert_int_equal(ipc_send(e->a, IPC_ADDR_REPORT, 0, ae, sizeof(ae[0]) + 8, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_ADDR_REPORT, 0, ae, sizeof(ae), -1), 0);
	assert_int_equal(dispatch(e, 16), 5);
	assert_int_equal(e->seen.refused, 5);
	assert_int_equal(e->seen.n, 0);
	assert_int_equal(e->seen.refused_hdr.len, sizeof(ae));

	assert_int_equal(ipc_send(e->a, IPC_PONG, 0, big, 16, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_ADDR_REPORT, 0, ae, 2 * sizeof(ae[0]), -1), 0);
	assert_int_equal(dispatch(e, 16), 2);
	assert_int_equal(e->seen.n, 2);
	assert_int_equal(e->seen.len[0], 16);
	assert_int_equal(e->seen.len[1], 2 * sizeof(ae[0]));
	assert_int_equal(e->seen.refused, 5);
}

static void test_dispatch_closes_an_fd_where_none_is_expected(void **state)
{
	struct ends *e = *state;
	int p1[2], p2[2];
	char c;

	assert_int_equal(pipe2(p1, O_NONBLOCK), 0);
	assert_int_equal(pipe2(p2, O_NONBLOCK), 0);
	/* PING takes no fd: handled without it. */
	assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, p1[1]), 0);
	/* A refused message's fd goes too. */
	assert_int_equal(ipc_send(e->a, IPC_CONFIG, 0, NULL, 0, p2[1]), 0);
	close(p1[1]);
	close(p2[1]);
	assert_int_equal(dispatch(e, 16), 2);
	assert_int_equal(e->seen.n, 1);
	assert_int_equal(e->seen.nfds[0], 0);
	assert_int_equal(e->seen.refused, 1);
	/* No writer left anywhere: both fds were closed on arrival. */
	assert_int_equal(read(p1[0], &c, 1), 0);
	assert_int_equal(read(p2[0], &c, 1), 0);
	close(p1[0]);
	close(p2[0]);
}

static void test_dispatch_hands_a_full_batch_of_fds(void **state)
{
	struct ends *e = *state;
	static struct ipc_client cl[IPC_MAX_FDS];
	int p[IPC_MAX_FDS][2], ends[IPC_MAX_FDS];

	make_pipes(p, ends, IPC_MAX_FDS);
	assert_int_equal(ipc_send_fds(e->a, IPC_CLIENT_FD, 0, cl, sizeof(cl), ends, IPC_MAX_FDS),
			 0);
	for (int i = 0; i < IPC_MAX_FDS; i++)
		close(p[i][1]);
	assert_int_equal(dispatch(e, 16), 1);
	assert_int_equal(e->seen.n, 1);
	assert_int_equal(e->seen.type[0], IPC_CLIENT_FD);
	assert_int_equal(e->seen.nfds[0], IPC_MAX_FDS);
	for (int i = 0; i < IPC_MAX_FDS; i++) {
		char c;

		/* In the order sent, and the handler's: open until it closes them. */
		assert_int_equal(write(e->seen.fds[i], "x", 1), 1);
		assert_int_equal(read(p[i][0], &c, 1), 1);
		close(e->seen.fds[i]);
		close(p[i][0]);
	}
}

static void test_dispatch_refuses_a_message_too_long_or_malformed(void **state)
{
	struct ends *e = *state;
	static char big[IPC_MAX_PAYLOAD + 1];
	struct ipc_hdr hdr = { .type = IPC_PONG, .len = sizeof(big), .version = IPC_VERSION };
	int sndbuf = 1 << 20;

	/* Room for the messages behind one of IPC_MAX_PAYLOAD (as the auth channels have). */
	assert_int_equal(setsockopt(e->a, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	send_raw(e->a, hdr, big, sizeof(big));
	assert_int_equal(send(e->a, "abc", 3, 0), 3);
	assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(dispatch(e, 1), 1);
	/* Told as it came: a receiver can account for what was meant. */
	assert_int_equal(e->seen.refused, 1);
	assert_int_equal(e->seen.refused_hdr.type, IPC_PONG);
	assert_int_equal(e->seen.refused_hdr.len, sizeof(big));
	assert_int_equal(dispatch(e, 16), 2);
	assert_int_equal(e->seen.refused, 2);
	assert_int_equal(e->seen.n, 1);
	assert_int_equal(e->seen.type[0], IPC_PING);
}

static void test_dispatch_refuses_another_version_or_peer(void **state)
{
	struct ends *e = *state;
	struct ipc_hdr hdr = { .type = IPC_PING, .peer = 3, .version = IPC_VERSION + 1 };

	dispatcher_on(e, 3);
	send_raw(e->a, hdr, NULL, 0);
	assert_int_equal(ipc_send(e->a, IPC_PING, 4, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(e->a, IPC_PING, 3, NULL, 0, -1), 0);
	assert_int_equal(dispatch(e, 16), 3);
	assert_int_equal(e->seen.refused, 2);
	assert_int_equal(e->seen.refused_hdr.peer, 4);
	assert_int_equal(e->seen.n, 1);
	assert_int_equal(e->seen.peer[0], 3);
}

static void test_dispatch_reports_eof_after_what_came_before_it(void **state)
{
	struct ends *e = *state;

	assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	close(e->a);
	e->a = -1;
	errno = EINVAL;
	assert_int_equal(dispatch(e, 16), -1);
	assert_int_equal(errno, 0);
	assert_int_equal(e->seen.n, 1);
	/* And again: the peer stays gone. */
	assert_int_equal(dispatch(e, 16), -1);
	assert_int_equal(e->seen.refused, 0);
}

static void test_dispatch_reads_at_most_max_per_call(void **state)
{
	struct ends *e = *state;

	for (int i = 0; i < 5; i++)
		assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(dispatch(e, 2), 2);
	assert_int_equal(e->seen.n, 2);
	assert_int_equal(dispatch(e, 2), 2);
	assert_int_equal(dispatch(e, 2), 1);
	assert_int_equal(dispatch(e, 2), 0);
	assert_int_equal(e->seen.n, 5);
}

/* The control sockets block (a send waits for room): reading them never does. */
static void test_dispatch_never_waits_on_a_blocking_socket(void **state)
{
	struct ends *e = *state;

	ipc_dispatcher_init(&e->d, table, IPC_PEER_ANY, "the test");
	assert_int_equal(fcntl(e->b, F_GETFL) & O_NONBLOCK, 0);
	assert_int_equal(dispatch(e, 16), 0);
	assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(dispatch(e, 16), 1);
	assert_int_equal(e->seen.n, 1);
}

static void test_dispatch_stops_where_a_handler_says(void **state)
{
	struct ends *e = *state;

	e->seen.stop_at = 2;
	for (int i = 0; i < 4; i++)
		assert_int_equal(ipc_send(e->a, IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(dispatch(e, 16), 2);
	assert_int_equal(e->seen.n, 2);
	assert_int_equal(dispatch(e, 16), 2);
	assert_int_equal(e->seen.n, 4);
}

static void test_auth_request_round_trips(void **state)
{
	static uint8_t password[IPC_AUTH_FIELD_MAX];
	struct ipc_auth_fields f = {
		.conn = 0x0102030405060708ull, .ticket = 7, .has_user = true, .has_password = true,
		.remote = "[::1]:1883", .remote_len = 10, .client_id = "c1", .client_id_len = 2,
		.user = "alice", .user_len = 5, .password = password, .password_len = sizeof(password),
	}, g;
	size_t len;
	uint8_t *p;

	memset(password, 'p', sizeof(password));
	p = ipc_auth_request_encode(&f, &len);
	assert_non_null(p);
	assert_true(len <= IPC_MAX_PAYLOAD);
	assert_true(ipc_auth_request_decode(p, len, &g));
	assert_true(g.conn == f.conn && g.ticket == 7 && g.has_user && g.has_password);
	assert_memory_equal(g.remote, "[::1]:1883", 10);
	assert_memory_equal(g.client_id, "c1", 2);
	assert_memory_equal(g.user, "alice", 5);
	assert_int_equal(g.password_len, sizeof(password));
	assert_memory_equal(g.password, password, sizeof(password));
	/* One byte short or long, a length that overruns, a flag out of range: refused. */
	assert_false(ipc_auth_request_decode(p, len - 1, &g));
	assert_false(ipc_auth_request_decode(p, sizeof(struct ipc_auth_request) - 1, &g));
	((struct ipc_auth_request *)p)->user_len = UINT32_MAX - 4;
	assert_false(ipc_auth_request_decode(p, len, &g));
	((struct ipc_auth_request *)p)->user_len = 5;
	((struct ipc_auth_request *)p)->has_user = 2;
	assert_false(ipc_auth_request_decode(p, len, &g));
	((struct ipc_auth_request *)p)->has_user = 1;
	((struct ipc_auth_request *)p)->flags = 0x10;      /* a flag of no meaning */
	assert_false(ipc_auth_request_decode(p, len, &g));
	/* A certificate's identity comes without a password. */
	((struct ipc_auth_request *)p)->flags = IPC_AUTH_USER_FROM_CERT;
	assert_false(ipc_auth_request_decode(p, len, &g));
	((struct ipc_auth_request *)p)->flags = 0;
	((struct ipc_auth_request *)p)->has_user = 0;      /* no user name, but its bytes */
	assert_false(ipc_auth_request_decode(p, len, &g));
	free(p);
	f.has_password = false;
	f.password_len = 0;
	f.user_from_cert = true;
	p = ipc_auth_request_encode(&f, &len);
	assert_non_null(p);
	assert_true(ipc_auth_request_decode(p, len, &g));
	assert_true(g.user_from_cert && g.has_user && !g.has_password);
	free(p);
	/* Longer fields than MQTT allows are not encoded. */
	f.user_len = IPC_AUTH_FIELD_MAX + 1;
	assert_null(ipc_auth_request_encode(&f, &len));
}

/* A SCRAM step: its message alone, one step at a time, REAUTH with the first only. */
static void test_auth_scram_step_round_trips(void **state)
{
	static const char first[] = "n,,n=alice,r=abc";
	struct ipc_auth_fields f = {
		.conn = 5, .ticket = 2, .remote = "127.0.0.1:1", .remote_len = 11,
		.client_id = "c", .client_id_len = 1, .scram_step = IPC_AUTH_SCRAM_FIRST,
		.reauth = true, .data = (const uint8_t *)first, .data_len = sizeof(first) - 1,
	}, g;
	struct ipc_auth_request *h;
	size_t len;
	uint8_t *p = ipc_auth_request_encode(&f, &len);

	assert_non_null(p);
	assert_true(ipc_auth_request_decode(p, len, &g));
	assert_true(g.scram_step == IPC_AUTH_SCRAM_FIRST && g.reauth && !g.has_user);
	assert_int_equal(g.data_len, sizeof(first) - 1);
	assert_memory_equal(g.data, first, g.data_len);
	h = (struct ipc_auth_request *)p;
	h->flags = IPC_AUTH_SCRAM_FIRST | IPC_AUTH_SCRAM_FINAL;
	assert_false(ipc_auth_request_decode(p, len, &g));
	h->flags = IPC_AUTH_SCRAM_FINAL | IPC_AUTH_SCRAM_REAUTH;
	assert_false(ipc_auth_request_decode(p, len, &g));
	h->flags = IPC_AUTH_SCRAM_FIRST | IPC_AUTH_USER_FROM_CERT;
	assert_false(ipc_auth_request_decode(p, len, &g));
	h->flags = 0;                                      /* a password's request has no message */
	assert_false(ipc_auth_request_decode(p, len, &g));
	h->flags = IPC_AUTH_SCRAM_FINAL;
	h->has_user = 1;                                   /* nor a step a user name */
	assert_false(ipc_auth_request_decode(p, len, &g));
	h->has_user = 0;
	h->data_len = IPC_AUTH_DATA_MAX + 1;
	assert_false(ipc_auth_request_decode(p, len, &g));
	free(p);
	f.data_len = IPC_AUTH_DATA_MAX + 1;
	assert_null(ipc_auth_request_encode(&f, &len));

	/* server-first, continuing. */
	f = (struct ipc_auth_fields){ .conn = 5, .ticket = 2, .cont = true,
				      .data = (const uint8_t *)"r=abcdef,s=c2FsdA==,i=4096",
				      .data_len = 26 };
	p = ipc_auth_verdict_encode(&f, &len);
	assert_non_null(p);
	assert_true(ipc_auth_verdict_decode(p, len, &g));
	assert_true(g.cont && g.data_len == 26 && g.user_len == 0 && g.rules_len == 0);
	assert_memory_equal(g.data, "r=abcdef,s=c2FsdA==,i=4096", 26);
	free(p);
}

static void test_auth_verdict_round_trips(void **state)
{
	struct ipc_auth_fields f = { .conn = 9, .ticket = 3, .code = 0, .user = "sensor-7",
				     .user_len = 8, .rules = (const uint8_t *)"r\0\1#",
				     .rules_len = 4 }, g;
	size_t len;
	uint8_t *p = ipc_auth_verdict_encode(&f, &len);

	assert_non_null(p);
	assert_true(ipc_auth_verdict_decode(p, len, &g));
	assert_true(g.conn == 9 && g.ticket == 3 && g.code == 0);
	assert_memory_equal(g.user, "sensor-7", 8);
	assert_int_equal(g.rules_len, 4);
	assert_memory_equal(g.rules, "r\0\1#", 4);
	assert_false(ipc_auth_verdict_decode(p, len + 1, &g));
	free(p);
}

#define PAIR_TEST(f) cmocka_unit_test_setup_teardown(f, pair_setup, pair_teardown)
#define DISPATCH_TEST(f) cmocka_unit_test_setup_teardown(f, dispatch_setup, pair_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		PAIR_TEST(test_message_without_fd_round_trips),
		PAIR_TEST(test_fd_arrives_working_and_cloexec),
		PAIR_TEST(test_eof_returns_zero_with_type_zero),
		PAIR_TEST(test_empty_nonblocking_socket_gives_eagain),
		PAIR_TEST(test_oversize_fails_with_emsgsize_and_closes_fd),
		PAIR_TEST(test_extra_fds_are_closed),
		PAIR_TEST(test_short_or_inconsistent_message_is_rejected),
		PAIR_TEST(test_every_fd_is_released),
		PAIR_TEST(test_batch_of_fds_arrives_in_order),
		PAIR_TEST(test_fds_beyond_max_are_closed),
		PAIR_TEST(test_more_fds_than_a_message_carries_is_refused),
		PAIR_TEST(test_dropped_batch_keeps_its_header_and_closes_every_fd),
		DISPATCH_TEST(test_dispatch_hands_each_type_to_its_handler),
		DISPATCH_TEST(test_dispatch_refuses_a_type_the_table_lacks_and_logs_it_once),
		DISPATCH_TEST(test_dispatch_refuses_a_payload_of_the_wrong_size),
		DISPATCH_TEST(test_dispatch_closes_an_fd_where_none_is_expected),
		DISPATCH_TEST(test_dispatch_hands_a_full_batch_of_fds),
		DISPATCH_TEST(test_dispatch_refuses_a_message_too_long_or_malformed),
		DISPATCH_TEST(test_dispatch_refuses_another_version_or_peer),
		DISPATCH_TEST(test_dispatch_reports_eof_after_what_came_before_it),
		DISPATCH_TEST(test_dispatch_reads_at_most_max_per_call),
		DISPATCH_TEST(test_dispatch_stops_where_a_handler_says),
		PAIR_TEST(test_dispatch_never_waits_on_a_blocking_socket),
		cmocka_unit_test(test_auth_request_round_trips),
		cmocka_unit_test(test_auth_verdict_round_trips),
		cmocka_unit_test(test_auth_scram_step_round_trips),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
