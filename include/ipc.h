/*
 * ipc.h - control plane: small typed messages over SOCK_SEQPACKET
 * socketpairs, with at most one file descriptor attached (SCM_RIGHTS).
 *
 * Every message is one datagram: a fixed header and up to IPC_MAX_PAYLOAD
 * bytes. Sending an fd does not close it (the caller does, once sent);
 * a received fd is close-on-exec and owned by the receiver; extra fds that
 * arrive are closed. Returns follow libc: -1 and errno on failure.
 */
#ifndef IOTD_IPC_H
#define IOTD_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define IPC_VERSION 3            /* bump whenever enum ipc_type or a payload changes */
#define IPC_MAX_PAYLOAD 4096

enum ipc_type {
	IPC_READY = 1,        /* child -> supervisor: set up and serving */
	IPC_SHUTDOWN,         /* supervisor -> child: graceful stop (payload: none) */
	IPC_CLIENT_FD,        /* listener -> worker: fd + struct ipc_client */
	IPC_PING,             /* supervisor -> child: health check */
	IPC_PONG,             /* child -> supervisor */
	IPC_STOP_ACCEPT,      /* supervisor -> listener: close listening sockets */
	IPC_LOG_SETTINGS,     /* supervisor -> child: new log level and format (struct log_settings, log.h) */
	IPC_CONFIG,           /* supervisor -> child: the configuration in force after a reload (struct iotd_config) */
	IPC_TYPE_MAX
};

struct ipc_hdr {
	uint32_t type;
	uint32_t len;                /* payload bytes */
	uint32_t peer;               /* worker index, or 0 */
	uint32_t pid;                /* sender */
};

struct ipc_client {              /* payload of IPC_CLIENT_FD */
	char remote[64];             /* "127.0.0.1:53412" or "[::1]:53412" */
};

/*
 * Remember this process's pid for the headers; call it again in a child
 * right after fork(). Without it every send asks getpid().
 */
void ipc_set_process(void);

/* Send one message; fd < 0 sends none. Non-blocking sockets may fail with EAGAIN. */
int ipc_send(int sock, uint32_t type, uint32_t peer, const void *data, size_t len, int fd);
/*
 * Receive one message. On success returns the payload length (copied into
 * data, at most cap bytes: a longer message fails with EMSGSIZE) and sets
 * *hdr and *fd_r (-1 when none came). Returns 0 with hdr->type == 0 on EOF,
 * -1 with errno on error (EAGAIN when nothing is waiting).
 */
ssize_t ipc_recv(int sock, struct ipc_hdr *hdr, void *data, size_t cap, int *fd_r);

#endif
