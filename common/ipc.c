/*
 * ipc.c - the control plane's message transport: one datagram per message
 * on a SOCK_SEQPACKET socketpair, with at most one fd (see ipc.h).
 *
 * Owns the wire framing (struct ipc_hdr + payload) and the fd hygiene of
 * the receiving side: every received fd is close-on-exec from the start,
 * and no fd that the caller does not get back is left open.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ipc.h"

/*
 * Room for more fds than a message may carry, so that a peer sending
 * extras does not make the message fail (MSG_CTRUNC): we get them all and
 * close the surplus. Beyond this many the message is dropped as truncated.
 */
#define IPC_MAX_RECV_FDS 16

union ipc_cmsg_send {
	char buf[CMSG_SPACE(sizeof(int))];
	struct cmsghdr align;
};

union ipc_cmsg_recv {
	char buf[CMSG_SPACE(sizeof(int) * IPC_MAX_RECV_FDS)];
	struct cmsghdr align;
};

/* This process's pid, once ipc_set_process() ran in it (getpid() is a system call). */
static uint32_t ipc_pid;

void ipc_set_process(void)
{
	ipc_pid = (uint32_t)getpid();
}

int ipc_send(int sock, uint32_t type, uint32_t peer, const void *data, size_t len, int fd)
{
	struct ipc_hdr hdr = { .type = type, .len = (uint32_t)len, .peer = peer,
			       .pid = ipc_pid ? ipc_pid : (uint32_t)getpid() };
	struct iovec iov[2] = {
		{ .iov_base = &hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = (void *)data, .iov_len = len },
	};
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	union ipc_cmsg_send cmsg;
	ssize_t n;

	if (len > IPC_MAX_PAYLOAD) {
		errno = EMSGSIZE;
		return -1;
	}
	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&cmsg, 0, sizeof(cmsg));
		msg.msg_control = cmsg.buf;
		msg.msg_controllen = sizeof(cmsg.buf);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	/* MSG_NOSIGNAL: a dead peer is an error to handle, not a reason to die of SIGPIPE. */
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	if ((size_t)n != sizeof(hdr) + len) {     /* cannot happen on SEQPACKET */
		errno = EIO;
		return -1;
	}
	return 0;
}

/*
 * Walk the ancillary data: keep the first fd, close every other one. A
 * message carries at most one fd by contract; more is a peer's bug, and
 * leaking the rest would slowly exhaust our fd table.
 */
static int ipc_take_fds(struct msghdr *msg)
{
	int keep = -1;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (keep < 0)
				keep = fd;
			else
				close(fd);
		}
	}
	return keep;
}

ssize_t ipc_recv(int sock, struct ipc_hdr *hdr, void *data, size_t cap, int *fd_r)
{
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(*hdr) },
		{ .iov_base = data, .iov_len = cap },
	};
	union ipc_cmsg_recv cmsg;
	struct msghdr msg = {
		.msg_iov = iov, .msg_iovlen = cap ? 2 : 1,
		.msg_control = cmsg.buf, .msg_controllen = sizeof(cmsg.buf),
	};
	ssize_t n;
	int fd;

	*fd_r = -1;
	memset(hdr, 0, sizeof(*hdr));
	/* MSG_CMSG_CLOEXEC: no window in which a fork+exec elsewhere could inherit the fd. */
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	fd = ipc_take_fds(&msg);
	if (n == 0 && fd < 0)
		return 0;                     /* EOF: hdr->type is 0 */
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		errno = EMSGSIZE;
		goto fail;
	}
	if ((size_t)n < sizeof(*hdr) || hdr->len != (size_t)n - sizeof(*hdr)) {
		errno = EBADMSG;
		goto fail;
	}
	*fd_r = fd;
	return (ssize_t)hdr->len;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}
