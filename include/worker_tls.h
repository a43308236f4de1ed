/*
 * worker_tls.h - a worker's TLS (daemon/worker_tls.c): the server side
 * of the TLS record layer for connections on non-blocking fds, with the
 * handshake's private-key operation done by the key role (`iotd: keys`)
 * over the worker's channel to it. The worker never holds the key.
 *
 * One struct tls_worker per worker process holds an SSL_CTX per
 * certificate (made from the certificate chain and the clients' CAs the
 * key role sends: 0 is tls { }'s, the others the named ones), the
 * session-ticket keys and the signatures in flight. A connection's
 * handshake that needs a signature returns TLS_WANT_KEYS; once the
 * worker's loop sees the key role's channel readable it calls
 * tls_worker_on_keys(), which names each connection whose answer came:
 * calling tls_conn_handshake() on it again finishes the handshake.
 */
#ifndef IOTD_WORKER_TLS_H
#define IOTD_WORKER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

enum tls_result {
	TLS_DONE = 0,        /* the handshake finished; bytes read or written */
	TLS_WANT_READ,       /* wait for the fd to be readable, then call again */
	TLS_WANT_WRITE,      /* wait for the fd to be writable, then call again */
	TLS_WANT_KEYS,       /* wait for the key role's answer (tls_worker_on_keys) */
	TLS_WANT_JOB,        /* every handshake job waits for the key role: call again after
	                      * tls_worker_on_keys() answered one */
	TLS_CLOSED,          /* the peer closed the TLS session */
	TLS_ERROR,           /* a failed handshake or a broken connection (logged at debug) */
};

/* Bytes of records one read(2) takes at most (OpenSSL's read-ahead buffer, while not empty). */
#define TLS_READ_AHEAD 32768

struct tls_worker;
struct tls_conn;

/*
 * In a worker that is to serve TLS, before its confinement: OpenSSL reads
 * its configuration file and sets up what it loads lazily, since the
 * confined worker can open no file. -1 (logged) on failure.
 */
int tls_worker_preinit(void);

/*
 * A worker's TLS over keys_fd (its end of the key role's channel); it
 * asks the key role for the chain at once. At most 4 x
 * tls.max_pending_signs handshakes wait for a signature at once (each
 * holds an async job and its 32 KiB stack); more get TLS_WANT_JOB. NULL
 * when out of memory.
 */
struct tls_worker *tls_worker_new(const struct iotd_config *cfg, unsigned index, int keys_fd);
void tls_worker_free(struct tls_worker *w);
/*
 * The worker's 1 s tick: what handshakes ended since the last release
 * held goes back (the async jobs' pool emptied, the heap trimmed), once
 * no handshake waits for a signature. The end of a burst does so at once.
 */
void tls_worker_tick(struct tls_worker *w);
/*
 * Whether certificate cert (TLS_CERTS_MAX, as the listener says) is one
 * configured: any index is taken, as a compromised listener may send it.
 */
bool tls_worker_serves(const struct tls_worker *w, uint32_t cert);
/* Whether the key role's chain for cert came: until then its handshakes cannot start. */
bool tls_worker_ready(const struct tls_worker *w, uint32_t cert);
/* How many certificates' chains came (a new one: connections waiting for it may start). */
unsigned tls_worker_ready_count(const struct tls_worker *w);

/*
 * Read the key role's channel: the chain (a new SSL_CTX for connections
 * made from then on), the ticket keys, the signatures. resumed() is
 * called for each connection whose signature came. -1 when the channel
 * is broken, else 0.
 */
int tls_worker_on_keys(struct tls_worker *w, void (*resumed)(struct tls_conn *c, void *arg),
		       void *arg);

/*
 * A server-side TLS connection presenting certificate cert, on a connected
 * non-blocking fd (not owned). NULL: cert not ready, or no memory.
 */
struct tls_conn *tls_conn_new(struct tls_worker *w, uint32_t cert, int fd, void *owner);
void *tls_conn_owner(const struct tls_conn *c);
enum tls_result tls_conn_handshake(struct tls_conn *c);
/* Decrypted bytes, up to cap, in *n (TLS_DONE). */
enum tls_result tls_conn_read(struct tls_conn *c, void *buf, size_t cap, size_t *n);
/* Bytes taken, in *n (TLS_DONE); after TLS_WANT_*, call again with the same bytes. */
enum tls_result tls_conn_write(struct tls_conn *c, const void *buf, size_t len, size_t *n);
/*
 * The client certificate's identity for tls.use_identity_as_username:
 * its subject's CN, else its first DNS or email SAN. Its length, or -1
 * when there is no verified certificate or no such name, or it does not
 * fit len (with its NUL).
 */
int tls_conn_identity(const struct tls_conn *c, char *buf, size_t len);
/* The ALPN protocol agreed ("mqtt"), or NULL. */
const char *tls_conn_alpn(const struct tls_conn *c);
/* Bytes held in OpenSSL (decrypted, or whole records read ahead) that no event on the fd will announce. */
bool tls_conn_pending(const struct tls_conn *c);
/* Anything OpenSSL read from the fd and has not handed out yet, a part of a record included. */
bool tls_conn_buffered(const struct tls_conn *c);
/* A close_notify, once, if the handshake finished and the socket takes it now. */
void tls_conn_close_notify(struct tls_conn *c);
/* Frees the connection, ending a handshake that waits for the key role. The fd stays open. */
void tls_conn_free(struct tls_conn *c);

#endif
