/*
 * ipc_dispatch.c - the control plane's receiving side: one loop that
 * reads a socket and hands each message to its role's handler (ipc.h).
 *
 * Owns what every role refuses alike, so that no handler sees a message
 * its table does not allow: another IPC_VERSION or peer, an unknown type,
 * a payload of the wrong size, fds the type does not carry, and what the
 * transport itself drops (too long, malformed, no room for its fds). A
 * peer may be compromised (the listener and the workers parse client
 * bytes), so each kind of refusal is logged once per socket, not once per
 * message, and reading is bounded per call.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#include "ipc.h"
#include "log.h"

enum refusal {
	REFUSED_TOO_LONG,            /* longer than IPC_MAX_PAYLOAD (EMSGSIZE) */
	REFUSED_MALFORMED,           /* shorter than a header, or its len disagrees (EBADMSG) */
	REFUSED_NO_FD_ROOM,          /* its fds could not all be installed (EMFILE) */
	REFUSED_VERSION,
	REFUSED_PEER,
	REFUSED_TYPE,
	REFUSED_SIZE,
	EXTRA_FDS_CLOSED,            /* not a refusal: the message is handled without them */
};

void ipc_dispatcher_init(struct ipc_dispatcher *d, const struct ipc_handler handlers[IPC_TYPE_MAX],
			 uint32_t peer, const char *from)
{
	*d = (struct ipc_dispatcher){ .handlers = handlers, .peer = peer };
	snprintf(d->from, sizeof(d->from), "%s", from);
}

static void close_fds(int *fds, unsigned from, unsigned to)
{
	for (unsigned i = from; i < to; i++)
		close(fds[i]);
}

/* Log the first refusal of each kind from this socket; the rest go unlogged. */
static void log_once(struct ipc_dispatcher *d, enum refusal why, const struct ipc_hdr *hdr)
{
	static const char *const what[] = {
		[REFUSED_TOO_LONG] = "longer than the largest message",
		[REFUSED_MALFORMED] = "malformed",
		[REFUSED_NO_FD_ROOM] = "carrying fds this process has no room for",
		[REFUSED_VERSION] = "of another protocol version",
		[REFUSED_PEER] = "for another worker",
		[REFUSED_TYPE] = "of a type not taken here",
		[REFUSED_SIZE] = "of the wrong size",
		[EXTRA_FDS_CLOSED] = "with fds it may not carry (closed)",
	};

	if (d->logged & (1u << why))
		return;
	d->logged |= 1u << why;
	log_warn("control message from %s %s (type %u, %u bytes, version %u, peer %u)%s; "
		 "further ones like it go unlogged", d->from, what[why], hdr->type, hdr->len,
		 hdr->version, hdr->peer, why == EXTRA_FDS_CLOSED ? "" : ": dropped");
}

static void refuse(struct ipc_dispatcher *d, void *ctx, enum refusal why,
		   const struct ipc_hdr *hdr)
{
	log_once(d, why, hdr);
	if (d->refused != NULL)
		d->refused(ctx, hdr);
}

/* Why a message that arrived whole must not reach a handler; -1 when it may. */
static int check(const struct ipc_dispatcher *d, const struct ipc_hdr *hdr)
{
	const struct ipc_handler *h;

	if (hdr->version != IPC_VERSION)
		return REFUSED_VERSION;
	if (d->peer != IPC_PEER_ANY && hdr->peer != d->peer)
		return REFUSED_PEER;
	if (hdr->type >= IPC_TYPE_MAX || d->handlers[hdr->type].fn == NULL)
		return REFUSED_TYPE;
	h = &d->handlers[hdr->type];
	if (hdr->len < h->min_len || hdr->len > h->max_len || (h->unit && hdr->len % h->unit))
		return REFUSED_SIZE;
	return -1;
}

int ipc_dispatch(int sock, struct ipc_dispatcher *d, void *ctx, unsigned max)
{
	union {
		char b[IPC_MAX_PAYLOAD];
		max_align_t align;
	} buf;
	int fds[IPC_MAX_FDS];
	unsigned n;

	for (n = 0; n < max; n++) {
		struct ipc_msg m = { .sock = sock, .data = buf.b, .fds = fds };
		ssize_t len = ipc_recv_fds_nowait(sock, &m.hdr, buf.b, sizeof(buf.b), fds,
						  IPC_MAX_FDS, &m.nfds);
		const struct ipc_handler *h;
		int why;

		/* Nothing waiting, or a signal came first: the next wake-up reads on. */
		if (len < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		/* Arrived, but dropped whole by the transport (its fds closed). */
		if (len < 0 && (errno == EMSGSIZE || errno == EBADMSG || errno == EMFILE)) {
			refuse(d, ctx, errno == EMSGSIZE ? REFUSED_TOO_LONG :
			       errno == EBADMSG ? REFUSED_MALFORMED : REFUSED_NO_FD_ROOM, &m.hdr);
			continue;
		}
		if (len < 0)
			return -1;
		if (len == 0 && m.hdr.type == 0) {
			errno = 0;
			return -1;               /* EOF */
		}
		why = check(d, &m.hdr);
		if (why >= 0) {
			close_fds(fds, 0, m.nfds);
			refuse(d, ctx, (enum refusal)why, &m.hdr);
			continue;
		}
		h = &d->handlers[m.hdr.type];
		if (m.nfds > h->max_fds) {
			close_fds(fds, h->max_fds, m.nfds);
			m.nfds = h->max_fds;
			log_once(d, EXTRA_FDS_CLOSED, &m.hdr);
		}
		if (h->fn(ctx, &m) == IPC_STOP)
			return (int)n + 1;
	}
	return (int)n;
}
