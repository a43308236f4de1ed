/*
 * ipc.c - the control plane's message transport: one datagram per message
 * on a SOCK_SEQPACKET socketpair, with up to IPC_MAX_FDS fds (see ipc.h).
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
 * Room for every fd one sendmsg can carry (the kernel's SCM_MAX_FD), more
 * than a message may: a peer sending extras does not make the message fail
 * (MSG_CTRUNC); we get them all and close the surplus.
 */
#define IPC_RECV_FD_ROOM 253

union ipc_cmsg_send {
	char buf[CMSG_SPACE(sizeof(int) * IPC_MAX_FDS)];
	struct cmsghdr align;
};

union ipc_cmsg_recv {
	char buf[CMSG_SPACE(sizeof(int) * IPC_RECV_FD_ROOM)];
	struct cmsghdr align;
};

int ipc_send_fds(int sock, uint32_t type, uint32_t peer, const void *data, size_t len,
		 const int *fds, unsigned nfds)
{
	struct ipc_hdr hdr = { .type = type, .len = (uint32_t)len, .peer = peer,
			       .version = IPC_VERSION };
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
	if (nfds > IPC_MAX_FDS) {
		errno = EINVAL;
		return -1;
	}
	if (nfds > 0) {
		struct cmsghdr *c;

		memset(&cmsg, 0, sizeof(cmsg));
		msg.msg_control = cmsg.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
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

int ipc_send(int sock, uint32_t type, uint32_t peer, const void *data, size_t len, int fd)
{
	return ipc_send_fds(sock, type, peer, data, len, &fd, fd >= 0 ? 1 : 0);
}

static void close_fds(const int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

/*
 * Walk the ancillary data: keep the first max fds in the order sent, close
 * every other one. More than the contract allows is a peer's bug, and
 * leaking the rest would slowly exhaust our fd table.
 */
static unsigned ipc_take_fds(struct msghdr *msg, int *fds, unsigned max)
{
	unsigned kept = 0;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (kept < max)
				fds[kept++] = fd;
			else
				close(fd);
		}
	}
	return kept;
}

static ssize_t recv_fds(int sock, struct ipc_hdr *hdr, void *data, size_t cap,
			int *fds, unsigned max_fds, unsigned *nfds_r, int flags)
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
	unsigned nfds;

	*nfds_r = 0;
	memset(hdr, 0, sizeof(*hdr));
	/* MSG_CMSG_CLOEXEC: no window in which a fork+exec elsewhere could inherit the fd. */
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	nfds = ipc_take_fds(&msg, fds, max_fds < IPC_MAX_FDS ? max_fds : IPC_MAX_FDS);
	if (n == 0 && nfds == 0)
		return 0;                     /* EOF: hdr->type is 0 */
	if (msg.msg_flags & MSG_TRUNC) {
		errno = EMSGSIZE;
		goto fail;
	}
	/* There is room for every fd a message can carry: some could not be installed. */
	if (msg.msg_flags & MSG_CTRUNC) {
		errno = EMFILE;
		goto fail;
	}
	/* Type 0 is no message: it would read as EOF. */
	if ((size_t)n < sizeof(*hdr) || hdr->len != (size_t)n - sizeof(*hdr) || hdr->type == 0) {
		errno = EBADMSG;
		goto fail;
	}
	*nfds_r = nfds;
	return (ssize_t)hdr->len;
fail:
	close_fds(fds, nfds);
	return -1;
}

ssize_t ipc_recv_fds(int sock, struct ipc_hdr *hdr, void *data, size_t cap,
		     int *fds, unsigned max_fds, unsigned *nfds_r)
{
	return recv_fds(sock, hdr, data, cap, fds, max_fds, nfds_r, 0);
}

ssize_t ipc_recv_fds_nowait(int sock, struct ipc_hdr *hdr, void *data, size_t cap,
			    int *fds, unsigned max_fds, unsigned *nfds_r)
{
	return recv_fds(sock, hdr, data, cap, fds, max_fds, nfds_r, MSG_DONTWAIT);
}

ssize_t ipc_recv(int sock, struct ipc_hdr *hdr, void *data, size_t cap, int *fd_r)
{
	unsigned nfds;
	ssize_t n = ipc_recv_fds(sock, hdr, data, cap, fd_r, 1, &nfds);

	if (nfds == 0)
		*fd_r = -1;
	return n;
}
