/*
 * ipc.h - control plane: small typed messages over SOCK_SEQPACKET
 * socketpairs, with file descriptors attached (SCM_RIGHTS): at most one,
 * except IPC_CLIENT_FD, which carries up to IPC_MAX_FDS.
 *
 * Every message is one datagram: a fixed header and up to IPC_MAX_PAYLOAD
 * bytes. Sending fds does not close them (the caller does, once sent);
 * received fds are close-on-exec and owned by the receiver; extra fds that
 * arrive are closed. Returns follow libc: -1 and errno on failure.
 *
 * ipc_dispatch() (below) reads a socket for a role: a table per socket
 * says which types it takes, of what size, with how many fds.
 */
#ifndef IOTD_IPC_H
#define IOTD_IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

#define IPC_VERSION 15           /* bump whenever the header, enum ipc_type or a payload changes */
/*
 * The largest payload: an IPC_AUTH_REQUEST with a client id, a user name
 * and a password of MQTT's 65535 bytes each (every other message is
 * under 4 KiB but a verdict's rules and the ACL's patterns, which are
 * given up past it). It stays below what a unix socket's default send buffer
 * (net.core.wmem_default, 208 KiB) lets one datagram carry.
 */
#define IPC_MAX_PAYLOAD (200 * 1024)
/*
 * Fds one message may carry: a full IPC_CLIENT_FD payload, and well under
 * the kernel's SCM_MAX_FD (253).
 */
#define IPC_MAX_FDS 64

enum ipc_type {
	IPC_READY = 1,        /* child -> supervisor: set up and serving */
	IPC_SHUTDOWN,         /* supervisor -> child: graceful stop (payload: none) */
	IPC_CLIENT_FD,        /* listener -> worker: n fds + n struct ipc_client, in the same order */
	IPC_PING,             /* supervisor -> child: health check */
	IPC_PONG,             /* child -> supervisor */
	IPC_STOP_ACCEPT,      /* supervisor -> listener: close listening sockets */
	IPC_LOG_SETTINGS,     /* supervisor -> child: new log level and format (struct log_settings, log.h) */
	IPC_CONFIG,           /* supervisor -> child: the configuration in force after a reload (struct iotd_config) */
	IPC_WORKER_DOWN,      /* supervisor -> router: worker i died (struct ipc_worker) */
	IPC_WORKER_DOWN_DONE, /* router -> supervisor: its last records applied, its sessions closed (struct ipc_worker) */
	IPC_WORKER_FAULT,     /* router -> supervisor: worker i broke its rings: kill it (struct ipc_worker) */
	IPC_ADDR_SYNC,        /* listener -> worker: send every address you hold (payload: uint64_t token) */
	IPC_ADDR_REPORT,      /* worker -> listener: n struct ipc_addr_entry, in the order they happened */
	IPC_STORE_FAILED,     /* router -> supervisor: its store cannot be opened (payload: why, a string); it exits on IPC_SHUTDOWN */
	IPC_AUTH_REQUEST,     /* worker -> auth: check a CONNECT's credentials (struct ipc_auth_request + bytes) */
	IPC_AUTH_VERDICT,     /* auth -> worker: the answer (struct ipc_auth_verdict + bytes) */
	IPC_AUTH_HELLO,       /* auth -> worker: a new auth process; send again every request not answered */
	IPC_AUTH_RELOAD,      /* supervisor -> auth: read the files again, as a transaction */
	IPC_AUTH_ACL,         /* auth -> router: the ACL in force (struct ipc_auth_acl; a sealed memfd, none for no ACL) */
	IPC_AUTH_ACL_ASK,     /* router -> auth: send the ACL in force (payload: none) */
	IPC_AUTH_ACL_TAKEN,   /* router -> auth: the IPC_AUTH_ACL of this generation was handled (uint64_t) */
	IPC_AUTH_RULES_STALE, /* auth -> worker: the router has this generation: drop older views (uint64_t) */
	IPC_AUTH_GRANT,       /* auth -> router: a CONNECT accepted, before its verdict (a verdict's payload) */
	IPC_AUTH_CANCEL,      /* worker -> auth: a request's connection closed; no verdict wanted (struct ipc_auth_cancel) */
	IPC_KEYS_SIGN,        /* worker -> keys: sign for a handshake (struct ipc_keys_sign + bytes) */
	IPC_KEYS_SIGNED,      /* keys -> worker: the signature (struct ipc_keys_signed + bytes) */
	IPC_KEYS_CHAIN,       /* keys -> worker: the certificate chain in force (struct ipc_keys_chain + PEM) */
	IPC_KEYS_TICKETS,     /* keys -> worker: the session-ticket keys (struct ipc_keys_tickets) */
	IPC_KEYS_ASK,         /* worker -> keys: a new worker: send the chain and the ticket keys (payload: none) */
	IPC_KEYS_FAILED,      /* keys -> supervisor: its files are unusable (payload: why, a string); it exits */
	IPC_KEYS_RELOAD,      /* supervisor -> keys: read the files again, as a transaction (payload: none) */
	IPC_AUTH_PATTERNS,    /* auth -> worker: the ACL's patterns for views of its generation (acl_patterns_encode) */
	IPC_TYPE_MAX
};

/*
 * peer: the worker the message is from, to or about, else 0. On a
 * worker's own sockets (its control socket, its channel) the receiver
 * requires that worker's index. version: the sender's IPC_VERSION, which
 * the receiver requires to be its own. Who sent a message needs no field:
 * each socketpair has one process at either end.
 */
struct ipc_hdr {
	uint32_t type;
	uint32_t len;                /* payload bytes */
	uint32_t peer;
	uint32_t version;
};

struct ipc_client {              /* one per connection in an IPC_CLIENT_FD payload */
	char remote[64];             /* "127.0.0.1:53412" or "[::1]:53412" */
	uint32_t transport;          /* enum listen_transport (config.h): the worker checks it */
	char path[LISTEN_PATH_MAX];  /* ws, wss: the path its listener serves; "": any */
	uint32_t tls;                /* mqtts, wss: its listener's certificate (TLS_CERTS_MAX):
	                              * the worker checks it */
};

/*
 * A worker's death and what the router did about it. epoch: for
 * WORKER_DOWN and WORKER_DOWN_DONE the successor's (every connection of
 * another epoch is gone), for WORKER_FAULT the faulty process's.
 */
struct ipc_worker {
	uint32_t index;
	uint32_t epoch;
};

_Static_assert(IPC_MAX_FDS * sizeof(struct ipc_client) <= IPC_MAX_PAYLOAD,
	       "a full batch of connections fits one message");

/*
 * How the listener learns which addresses a worker's connections come
 * from (max_connections_per_address). It counts each connection when it
 * hands it over; the worker reports each one it was handed as it goes.
 * To start afresh (a new listener, a restarted worker, a worker that lost
 * track), the listener sends IPC_ADDR_SYNC with a new token and counts from
 * zero the connections it hands over from then on; the worker answers,
 * after every connection handed before the request, with ADDR_RESET
 * carrying the token and one ADDR_HELD per connection it holds. Entries
 * before the matching ADDR_RESET are old news and ignored.
 */
enum ipc_addr_op {
	IPC_ADDR_RESET = 1,   /* the answer to the IPC_ADDR_SYNC with this token begins */
	IPC_ADDR_HELD,        /* a connection held from key */
	IPC_ADDR_GONE,        /* a connection from key is gone (closed, or could not be taken) */
	IPC_ADDR_LOST,        /* the worker lost track (its reports could not be kept): sync again */
};

struct ipc_addr_entry {
	uint32_t op;                 /* enum ipc_addr_op */
	uint32_t reserved;           /* 0 */
	uint64_t token;              /* IPC_ADDR_RESET: the request's token; else 0 */
	uint8_t key[16];             /* IPC_ADDR_HELD, IPC_ADDR_GONE: struct addr_key (addrlimit.h) */
};

#define IPC_ADDR_ENTRIES_MAX (4096 / sizeof(struct ipc_addr_entry))

/*
 * The auth channels: one SOCK_SEQPACKET socketpair per worker between the
 * auth role and that worker, both ends kept by the supervisor for the
 * daemon's life, so that requests written while either side restarts wait
 * for its successor. The worker names each request by the connection and
 * a ticket (its own slot for the request), which the verdict carries
 * back; a verdict whose connection is gone is dropped. What a worker
 * sends is hostile input to the auth role (ipc_auth_request_decode
 * checks every length). Encoders and decoders: common/ipc_auth.c.
 *
 * With an ACL file, each generation of it (counted by the auth process,
 * from 1; one more at each change) reaches a worker as IPC_AUTH_PATTERNS,
 * the patterns every view of it shares, before any verdict made from it;
 * an accepted verdict then carries the client's topic rules and the
 * generation (acl_view_encode), or a token's lists (acl_client_encode,
 * IPC_AUTH_RULES_FROM_TOKEN). IPC_AUTH_RULES_STALE names the generation
 * the router took: views of older ones go. A new auth process counts
 * again from 1: its IPC_AUTH_HELLO drops every view of the file and the
 * patterns.
 */
#define IPC_AUTH_FIELD_MAX 65535     /* a client id, user name or password: MQTT's bound */
#define IPC_AUTH_REMOTE_MAX 63       /* struct ipc_client's remote, without its NUL */

/* Followed by remote, client id, user name, password and SCRAM message, without NULs. */
struct ipc_auth_request {
	uint64_t conn;
	uint32_t ticket;
	uint8_t has_user, has_password;  /* the CONNECT's flags: an empty one is not an absent one */
	uint16_t remote_len;
	uint32_t client_id_len, user_len, password_len;
	uint32_t flags;                  /* IPC_AUTH_USER_FROM_CERT, IPC_AUTH_SCRAM_* */
	uint32_t data_len;               /* a SCRAM step's message; 0 otherwise */
};

/*
 * The user name is the identity of the client's verified TLS certificate
 * (tls.use_identity_as_username), with no password: the worker's word,
 * taken only while the auth role's configuration says so.
 */
#define IPC_AUTH_USER_FROM_CERT 0x01
/*
 * A step of MQTT 5's enhanced authentication (SCRAM-SHA-256, scram.h)
 * rather than a password: the data is the client's message (at most
 * SCRAM_MSG_MAX bytes), with no user name nor password. The first step
 * (client-first) is answered IPC_AUTH_CONTINUE with server-first, and the
 * auth role keeps the exchange (by connection and ticket) for the final
 * step (client-final), answered as a CONNECT is, server-final in the
 * data of an acceptance. REAUTH: the first step of a connected client's
 * re-authentication.
 */
#define IPC_AUTH_SCRAM_FIRST 0x02
#define IPC_AUTH_SCRAM_FINAL 0x04
#define IPC_AUTH_SCRAM_REAUTH 0x08   /* with _FIRST: no grant to the router at the end */

/* Followed by the user name, the client's rules and the SCRAM message, without NULs. */
struct ipc_auth_verdict {
	uint64_t conn;
	uint32_t ticket;
	uint8_t code;                    /* a CONNACK return code: 0, 3, 4 or 5 */
	uint8_t flags;                   /* IPC_AUTH_RULES_FROM_TOKEN, IPC_AUTH_CONTINUE */
	uint8_t reserved[2];
	uint32_t user_len, rules_len, data_len;
};

/*
 * The request of this connection and ticket is not wanted any more (the
 * connection closed): the auth role drops it, and it stops counting
 * against auth.max_pending at once.
 */
struct ipc_auth_cancel {
	uint64_t conn;
	uint32_t ticket;
	uint32_t reserved;               /* 0 */
};

/* The rules are a token's lists: they stay when the ACL changes (IPC_AUTH_RULES_STALE). */
#define IPC_AUTH_RULES_FROM_TOKEN 0x01
/* Not a verdict yet: the data is server-first; the client's final step is awaited. */
#define IPC_AUTH_CONTINUE 0x02

/* A request or a verdict as its fields, pointing into a payload. */
struct ipc_auth_fields {
	uint64_t conn;
	uint32_t ticket;
	uint8_t code;                    /* verdicts */
	bool rules_from_token;           /* verdicts */
	bool has_user, has_password;     /* requests */
	bool user_from_cert;             /* requests: IPC_AUTH_USER_FROM_CERT */
	uint8_t scram_step;              /* requests: 0, IPC_AUTH_SCRAM_FIRST or _FINAL */
	bool reauth;                     /* requests: IPC_AUTH_SCRAM_REAUTH */
	bool cont;                       /* verdicts: IPC_AUTH_CONTINUE */
	const char *remote, *client_id, *user;
	const uint8_t *password, *rules, *data;
	size_t remote_len, client_id_len, user_len, password_len, rules_len, data_len;
};

#define IPC_AUTH_DATA_MAX 1024       /* a SCRAM message: scram.h's SCRAM_MSG_MAX */

_Static_assert(sizeof(struct ipc_auth_request) + IPC_AUTH_REMOTE_MAX + 3 * IPC_AUTH_FIELD_MAX +
	       IPC_AUTH_DATA_MAX <=
	       IPC_MAX_PAYLOAD, "the largest request fits one message");

/*
 * A request's payload, malloc'd, in *len (the caller keeps it to send
 * again); NULL when out of memory or a field is too long.
 */
void *ipc_auth_request_encode(const struct ipc_auth_fields *f, size_t *len);
/* The fields of a request's payload; false when its lengths do not add up or exceed a bound. */
bool ipc_auth_request_decode(const void *data, size_t len, struct ipc_auth_fields *f);
/* A verdict's payload (code, user name, rules), malloc'd; NULL as above. */
void *ipc_auth_verdict_encode(const struct ipc_auth_fields *f, size_t *len);
bool ipc_auth_verdict_decode(const void *data, size_t len, struct ipc_auth_fields *f);

/*
 * The auth <-> router channel: one SOCK_SEQPACKET socketpair, kept by the
 * supervisor for the daemon's life like the workers' auth channels. The
 * auth role sends the whole ACL (acl_encode's bytes) at its start, when
 * the router asks (IPC_AUTH_ACL_ASK: a router that starts) and after a
 * reload that changed it, as a sealed memfd of len bytes (sealedfd.h:
 * any size up to ACL_LIMITS_DEFAULT's max_bytes, 16 MiB); len 0 and no fd
 * say "no ACL". The router answers each with IPC_AUTH_ACL_TAKEN and its
 * generation; the auth role then tells the workers that views of older
 * generations are stale (IPC_AUTH_RULES_STALE). While an ACL is in
 * force (config_acl_in_force), each accepted CONNECT is granted to the
 * router (IPC_AUTH_GRANT: a verdict's payload, its connection id, the
 * user name and, for a token's lists, its rules) before the worker gets
 * its verdict, so that the router believes no CONNECT record the auth
 * role did not accept under that name.
 */
struct ipc_auth_acl {
	uint64_t generation;             /* counted by the auth process, from 1 */
	uint64_t len;                    /* the memfd's bytes; 0: no ACL */
};

/*
 * The key role's channels: one SOCK_SEQPACKET socketpair per worker,
 * kept by the supervisor like the auth channels. Only the key role holds
 * the server's private key; a worker sends it what a handshake needs
 * signed and gets the signature back (IPC_KEYS_SIGN, IPC_KEYS_SIGNED,
 * matched by the worker's request id), and gets the public certificate
 * chain (IPC_KEYS_CHAIN) and the session-ticket keys (IPC_KEYS_TICKETS)
 * when the role starts, when it asks (IPC_KEYS_ASK) and, for the ticket
 * keys, at each rotation. A request is hostile input to the key role:
 * ipc_keys_sign_decode checks the algorithm, the digest and the length
 * that goes with them. Encoders and decoders: common/ipc_keys.c.
 */
enum ipc_keys_alg {
	IPC_KEYS_RSA_PKCS1 = 1,      /* RSASSA-PKCS1-v1_5 over a digest (TLS 1.2) */
	/*
	 * RSASSA-PSS: the raw RSA operation on an encoding OpenSSL made of
	 * the digest (MGF1 and salt of the digest's), with no md; the key
	 * role signs nothing that is not such an encoding, so that a worker
	 * gets signatures and never a decryption.
	 */
	IPC_KEYS_RSA_PSS,
	IPC_KEYS_ECDSA,              /* over a digest */
	IPC_KEYS_ED25519,            /* over the data itself */
	IPC_KEYS_ALG_MAX
};

enum ipc_keys_md {
	IPC_KEYS_MD_NONE = 0,        /* Ed25519 */
	IPC_KEYS_MD_SHA256,
	IPC_KEYS_MD_SHA384,
	IPC_KEYS_MD_SHA512,
	IPC_KEYS_MD_MAX
};

/* Ed25519's data: TLS 1.3's signed content is under 200 bytes, TLS 1.2's key exchange under 1 KiB. */
#define IPC_KEYS_DATA_MAX 2048
#define IPC_KEYS_SIG_MAX 1024        /* an RSA-8192 signature */

#define IPC_KEYS_PSS_MIN 256         /* an RSA-2048 encoding */

/* Followed by len bytes: a digest of md's length, a PSS encoding, or Ed25519's data. */
struct ipc_keys_sign {
	uint64_t id;                 /* the worker's, returned in the answer */
	uint32_t key_id;             /* the chain's (IPC_KEYS_CHAIN) it was made for */
	uint8_t alg, md;             /* enum ipc_keys_alg, enum ipc_keys_md */
	uint16_t len;
};

/* Followed by len bytes of signature (0 unless status is IPC_KEYS_OK). */
struct ipc_keys_signed {
	uint64_t id;
	uint32_t status;             /* enum ipc_keys_status */
	uint32_t len;
};

enum ipc_keys_status {
	IPC_KEYS_OK = 0,
	IPC_KEYS_WRONG_KEY,          /* key_id is not the key in force (a reload replaced it) */
	IPC_KEYS_WRONG_ALG,          /* not an algorithm of the key in force */
	IPC_KEYS_SIGN_FAILED,
};

/*
 * Followed by chain_len bytes of PEM, the certificate and then its chain,
 * and trust_len bytes of PEM, the CAs that sign clients' certificates and
 * their CRLs (tls.ca_file, tls.ca_path, tls.crl_file: a worker opens no
 * file). The key role writes them from the certificates it parsed, so
 * that nothing else a file holds (a key beside a certificate) reaches a
 * worker. Together they fit one message (IPC_KEYS_CHAIN_MAX).
 */
struct ipc_keys_chain {
	uint32_t key_id;             /* counted by the key role from 1, per key it loaded */
	uint32_t cert;               /* which certificate (TLS_CERTS_MAX): 0 is tls { }'s */
	uint32_t chain_len, trust_len;
};

#define IPC_KEYS_CHAIN_MAX (IPC_MAX_PAYLOAD - sizeof(struct ipc_keys_chain))

/* What a chain message carries, pointing into its payload. */
struct ipc_keys_pem {
	uint32_t key_id;
	uint32_t cert;
	const char *chain, *trust;
	size_t chain_len, trust_len;
};

/* One session-ticket key: the name a ticket carries, its AES-256-CBC and HMAC-SHA256 keys. */
struct ipc_ticket_key {
	uint8_t name[16];
	uint8_t aes[32];
	uint8_t hmac[32];
};

/* keys[0] issues and opens tickets; keys[1], the previous one, only opens them. */
struct ipc_keys_tickets {
	uint32_t n;                  /* 1 or 2 */
	uint32_t reserved;           /* 0 */
	struct ipc_ticket_key keys[2];
};

/* A request or an answer as its fields, data pointing into a payload. */
struct ipc_keys_fields {
	uint64_t id;
	uint32_t key_id;             /* requests */
	uint8_t alg, md;             /* requests */
	uint32_t status;             /* answers */
	const uint8_t *data;         /* the digest or data; the signature */
	size_t len;
};

#define IPC_KEYS_SIGN_LEN_MAX (sizeof(struct ipc_keys_sign) + IPC_KEYS_DATA_MAX)
#define IPC_KEYS_SIGNED_LEN_MAX (sizeof(struct ipc_keys_signed) + IPC_KEYS_SIG_MAX)

/* The digest's length for md, 0 for IPC_KEYS_MD_NONE or an unknown one. */
size_t ipc_keys_md_len(uint8_t md);
/* A request's payload into buf (IPC_KEYS_SIGN_LEN_MAX bytes); 0 when a field is out of bounds. */
size_t ipc_keys_sign_encode(const struct ipc_keys_fields *f, uint8_t *buf);
/* The fields of a request; false unless the algorithm, digest and length go together. */
bool ipc_keys_sign_decode(const void *data, size_t len, struct ipc_keys_fields *f);
/* An answer's payload into buf (IPC_KEYS_SIGNED_LEN_MAX bytes); 0 when too long. */
size_t ipc_keys_signed_encode(const struct ipc_keys_fields *f, uint8_t *buf);
bool ipc_keys_signed_decode(const void *data, size_t len, struct ipc_keys_fields *f);
/* A chain message's payload, malloc'd, in *len; NULL when out of memory or too long. */
void *ipc_keys_chain_encode(const struct ipc_keys_pem *p, size_t *len);
/* A chain message's parts; false when the lengths disagree or there is no chain. */
bool ipc_keys_chain_decode(const void *data, size_t len, struct ipc_keys_pem *p);
/* The ticket keys of a whole struct ipc_keys_tickets; false unless n is 1 or 2. */
bool ipc_keys_tickets_decode(const void *data, size_t len, struct ipc_keys_tickets *t);

/* --- the transport (ipc.c) ------------------------------------------------ */

/* Send one message; fd < 0 sends none. Non-blocking sockets may fail with EAGAIN. */
int ipc_send(int sock, uint32_t type, uint32_t peer, const void *data, size_t len, int fd);
/* Send one message with nfds fds (0 to IPC_MAX_FDS; more fails with EINVAL). */
int ipc_send_fds(int sock, uint32_t type, uint32_t peer, const void *data, size_t len,
		 const int *fds, unsigned nfds);
/*
 * Receive one message. On success returns the payload length (copied into
 * data, at most cap bytes: a longer message fails with EMSGSIZE) and sets
 * *hdr and *fd_r (-1 when none came). Returns 0 with hdr->type == 0 on EOF,
 * -1 with errno on error (EAGAIN when nothing is waiting).
 */
ssize_t ipc_recv(int sock, struct ipc_hdr *hdr, void *data, size_t cap, int *fd_r);
/*
 * ipc_recv() for a message with up to max_fds fds (at most IPC_MAX_FDS):
 * sets fds[0 .. *nfds_r - 1] in the order sent and closes any beyond
 * max_fds. On failure no fd is left open and *nfds_r is 0. A message that
 * did arrive but is dropped - longer than cap (EMSGSIZE), malformed
 * (EBADMSG: not the length its header says, or of type 0), or with fds this
 * process had no room for (EMFILE: the whole message is dropped) - leaves
 * *hdr as it came, so that a caller can still account for what the sender
 * meant to send.
 */
ssize_t ipc_recv_fds(int sock, struct ipc_hdr *hdr, void *data, size_t cap,
		     int *fds, unsigned max_fds, unsigned *nfds_r);
/* ipc_recv_fds() that never waits, even on a blocking socket (EAGAIN: nothing waiting). */
ssize_t ipc_recv_fds_nowait(int sock, struct ipc_hdr *hdr, void *data, size_t cap,
			    int *fds, unsigned max_fds, unsigned *nfds_r);

/* --- the receiving side (ipc_dispatch.c) ------------------------------------ */

/*
 * One message, as a handler gets it. data: hdr.len bytes, aligned for any
 * type, the handler's to read and write until it returns. fds: nfds fds in
 * the order sent, the handler's to keep or close.
 */
struct ipc_msg {
	struct ipc_hdr hdr;
	int sock;                    /* the socket it came on, for an answer */
	void *data;
	int *fds;
	unsigned nfds;
};

/* Returns 0 to read on, IPC_STOP to end this ipc_dispatch() call after this message. */
typedef int ipc_handler_fn(void *ctx, struct ipc_msg *msg);
#define IPC_STOP 1

/*
 * What a role takes of one message type. A table of IPC_TYPE_MAX of
 * these, indexed by type, says all a role accepts on one socket; a type
 * without fn is refused. The payload must be from min_len to max_len
 * bytes and, with unit set, a whole number of unit-byte entries.
 */
struct ipc_handler {
	ipc_handler_fn *fn;
	uint32_t min_len, max_len;
	uint32_t unit;
	uint32_t max_fds;            /* fds it may carry (at most IPC_MAX_FDS); more are closed */
};

#define IPC_LEN(n) .min_len = (n), .max_len = (n)     /* a payload of exactly n bytes */
#define IPC_PEER_ANY UINT32_MAX

/* One socket's reading side: its table and what it has logged. */
struct ipc_dispatcher {
	const struct ipc_handler *handlers;      /* IPC_TYPE_MAX entries */
	uint32_t peer;                           /* what every header must carry, or IPC_PEER_ANY */
	/*
	 * Told of every message refused, with its header as it came (fds
	 * closed already): for a receiver that must account for what the
	 * sender meant to send. NULL: nothing to account for.
	 */
	void (*refused)(void *ctx, const struct ipc_hdr *hdr);
	char from[32];                           /* the sender, for log lines: "worker 3" */
	uint32_t logged;                         /* kinds of refusal logged already */
};

void ipc_dispatcher_init(struct ipc_dispatcher *d, const struct ipc_handler handlers[IPC_TYPE_MAX],
			 uint32_t peer, const char *from);

/*
 * Read and handle up to max messages waiting on sock, calling each one's
 * handler with ctx; it never waits, whether sock blocks or not. Refused,
 * each kind logged once per dispatcher and the message dropped with its
 * fds: a message of another IPC_VERSION or peer, of a type the table
 * lacks, of the wrong size, longer than IPC_MAX_PAYLOAD, malformed, or
 * with fds this process had no room for. Fds beyond the type's max_fds
 * are closed (logged once) and the message handled. Returns how many
 * messages were read (handled or refused; 0: none was waiting, or a signal
 * interrupted the read), or -1 when the socket is done: the peer is gone
 * (EOF, errno 0) or reading failed (errno).
 */
int ipc_dispatch(int sock, struct ipc_dispatcher *d, void *ctx, unsigned max);

#endif
