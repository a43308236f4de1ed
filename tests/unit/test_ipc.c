/*
 * test_ipc.c - unit tests of the control-plane transport: messages with
 * no fd, one fd or a batch of fds over a SOCK_SEQPACKET socketpair, EOF,
 * truncation and the fd hygiene of the receiver.
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
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"

struct ends {
	int a, b;
};

static int pair_setup(void **state)
{
	static struct ends e;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
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

static void test_message_without_fd_round_trips(void **state)
{
	struct ends *e = *state;
	struct ipc_client cl = { .remote = "127.0.0.1:53412" };
	struct ipc_client got;
	struct ipc_hdr hdr;
	int fd = 123;

	assert_int_equal(ipc_send(e->a, IPC_PING, 5, NULL, 0, -1), 0);
	assert_int_equal(ipc_recv(e->b, &hdr, &got, sizeof(got), &fd), 0);
	assert_int_equal(hdr.type, IPC_PING);
	assert_int_equal(hdr.len, 0);
	assert_int_equal(hdr.peer, 5);
	assert_int_equal(hdr.pid, (uint32_t)getpid());
	assert_int_equal(fd, -1);

	assert_int_equal(ipc_send(e->b, IPC_PONG, 0, &cl, sizeof(cl), -1), 0);
	assert_int_equal(ipc_recv(e->a, &hdr, &got, sizeof(got), &fd), sizeof(cl));
	assert_int_equal(hdr.type, IPC_PONG);
	assert_int_equal(hdr.len, sizeof(cl));
	assert_string_equal(got.remote, "127.0.0.1:53412");
	assert_int_equal(fd, -1);
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
	struct ipc_hdr hdr;
	int pfd[2], fd = 99;
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
	assert_int_equal(ipc_recv(e->b, &hdr, small, sizeof(small), &fd), 2);
	assert_int_equal(hdr.type, IPC_PONG);
}

/* One message carrying two fds, built by hand: ipc_send never does that. */
static void send_two_fds(int sock, int fd1, int fd2)
{
	struct ipc_hdr hdr = { .type = IPC_CLIENT_FD, .pid = (uint32_t)getpid() };
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

#define PAIR_TEST(f) cmocka_unit_test_setup_teardown(f, pair_setup, pair_teardown)

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
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
