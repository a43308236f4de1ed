/*
 * auth_int.h - what the auth role's files share (daemon/auth*.c): a
 * request being decided (struct auth_job), the files in force (struct
 * auth_creds), the settings a decision reads (struct auth_policy), the
 * order of the decisions (struct auth_sched) and the pool of threads that
 * decides. Private to them; role.h has auth_main().
 */
#ifndef IOTD_AUTH_INT_H
#define IOTD_AUTH_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addrlimit.h"
#include "config.h"
#include "iotd.h"
#include "ipc.h"
#include "keyhash.h"
#include "scram.h"

enum auth_backend { AUTH_NONE, AUTH_FILE, AUTH_JWT };

/*
 * The files in force, read together (auth_creds_load) and replaced whole
 * on reload. Counted: each job holds the files it was decided with, so a
 * reload never frees them under a thread.
 */
struct auth_creds {
	atomic_uint refs;
	struct passwd_table *pw;     /* backend "file" */
	struct jwt_keys *keys;       /* backend "jwt" */
	struct acl *acl;             /* auth.acl_file, held for its enforcement; NULL: none */
};

/* What a decision reads of the configuration, copied into each job (a reload may change it). */
struct auth_policy {
	enum auth_backend backend;
	bool allow_anonymous;
	bool use_identity_as_username;   /* tls.use_identity_as_username */
	uint32_t leeway;
	char user_claim[64], read_claim[64], write_claim[64];
};

/* Where a job is, from its arrival until its verdict is sent (auth_sched.c, auth.c). */
enum auth_job_state {
	JOB_WAITING,                 /* behind its failing address's job in flight */
	JOB_READY,                   /* in its channel's queue, for a thread */
	JOB_HASHING,                 /* with the pool */
	JOB_DELAYED,                 /* decided, held until due_ms */
};

struct auth_addr;

/*
 * A SCRAM exchange between its two steps (auth.c keeps it by connection,
 * in its worker's channel; a job holds it while it is decided).
 */
struct auth_exchange {
	UT_hash_handle hh;
	uint64_t conn;
	uint32_t ticket;
	uint64_t expires_ms;         /* connect_timeout after server-first */
	bool reauth;                 /* a connected client's: no grant at its end */
	struct scram_exchange x;
};

/* One request from a worker, from its arrival until its verdict is sent. */
struct auth_job {
	struct auth_job *next;       /* the queues (auth_sched.c), the pool's, the delayed list,
					a channel's output */
	UT_hash_handle hh;           /* its channel's jobs by connection id */
	enum auth_job_state state;
	bool cancelled;              /* the connection is gone (IPC_AUTH_CANCEL): no verdict */
	struct auth_addr *addr;      /* its address's entry while it waits or is in flight there */
	struct auth_creds *creds;
	struct auth_policy policy;
	unsigned worker;
	uint64_t conn;
	uint32_t ticket;
	uint64_t due_ms;             /* not answered before (the slow-down) */
	struct addr_key key;
	bool has_key;                /* an IP address: slowed down when it fails */
	bool has_user, has_password;
	bool user_from_cert;         /* the user name is a client certificate's identity */
	uint8_t scram_step;          /* 0, IPC_AUTH_SCRAM_FIRST or IPC_AUTH_SCRAM_FINAL */
	bool reauth;                 /* a connected client's exchange (IPC_AUTH_SCRAM_REAUTH) */
	struct auth_exchange *ex;    /* a SCRAM step's exchange (the job's until it is kept) */
	const uint8_t *data;         /* a SCRAM step's message */
	size_t data_len;
	char remote[IPC_AUTH_REMOTE_MAX + 1];
	const char *client_id, *user;
	const uint8_t *password;
	size_t client_id_len, user_len, password_len;
	/* The answer (auth_decide). */
	uint8_t code;                /* CONNACK return code */
	bool bad_credentials;        /* counts as a failure of its address */
	bool good_credentials;       /* a password or token verified: its address's failures go */
	const char *why;             /* a refusal's reason */
	char why_buf[128];
	char *out_user;              /* the name the client is known by (malloc'd) */
	size_t out_user_len;
	uint8_t *rules;              /* the client's rules (malloc'd), see auth_check.c */
	size_t rules_len;
	bool rules_from_token;       /* a JWT's lists: the ACL file's view is not wanted */
	bool granted;                /* IPC_AUTH_GRANT sent to the router */
	bool cont;                   /* server-first in out_data: the exchange goes on */
	const char *out_data;        /* server-first or server-final; NULL: none */
	size_t out_data_len;
	char server_final[64];
	uint8_t bytes[];             /* client id, user name, password, SCRAM message */
};

/* auth_check.c */
int auth_creds_load(const struct iotd_config *cfg, struct auth_creds **out, char *err,
		    size_t errlen);
void auth_creds_unref(struct auth_creds *c);
void auth_creds_describe(const struct auth_creds *c, char *buf, size_t len);
void auth_policy_from(const struct iotd_config *cfg, struct auth_policy *p);
void auth_decide(struct auth_job *j);
/*
 * The view of a client (user name, empty for none, and client id) under
 * acl, of this generation, as a verdict's rules (acl_view_encode),
 * malloc'd in *rules (none without an ACL). false when out of memory, or
 * when the client needs the patterns and the workers could not be sent
 * them (patterns_sent false).
 */
struct acl;
bool auth_rules_from_acl(const struct acl *acl, uint64_t generation, bool patterns_sent,
			 const char *user, size_t ulen, const char *client_id, size_t clen,
			 uint8_t **rules, size_t *len);

/*
 * auth_sched.c: which job a free thread decides next. Each worker's
 * channel has a queue; the channels are served in turn, and one channel
 * has at most `budget` jobs with the threads at once, so that one
 * worker's clients cannot take every thread. An address that failed
 * recently has one job in flight at a time (from its start until its
 * verdict is sent or its due time passes), and at most max_waiting behind
 * it; the others are not held at all.
 */
struct auth_sched_chan {
	struct auth_job *ready, **ready_tail;
	uint32_t hashing;            /* its jobs with the threads */
};

struct auth_sched {
	struct auth_sched_chan chans[IOTD_MAX_WORKERS];
	unsigned nchans, budget;
	unsigned slots;              /* jobs the pool may hold at once (auth_sched.c) */
	unsigned turn;               /* the channel served first next time */
	unsigned hashing;            /* jobs with the pool */
	struct auth_addr *addrs;     /* failing addresses with a job in flight, by key */
};

enum auth_sched_added { SCHED_READY, SCHED_WAITING, SCHED_FULL };

void auth_sched_init(struct auth_sched *s, unsigned nchans, unsigned threads);
/*
 * A new job. failing: its address failed recently (it then goes one at a
 * time). SCHED_READY: queued for a thread (the caller sets its due time);
 * SCHED_WAITING: behind the address's job in flight; SCHED_FULL: already
 * max_waiting behind it (or no memory for its address's entry): the job
 * is not taken (answer it CONNACK 3).
 */
enum auth_sched_added auth_sched_add(struct auth_sched *s, struct auth_job *j, bool failing,
				     uint32_t max_waiting);
/* The next job for a free thread (JOB_HASHING from now), or NULL. */
struct auth_job *auth_sched_next(struct auth_sched *s);
/* j's thread is free again. */
void auth_sched_hashed(struct auth_sched *s, struct auth_job *j);
/*
 * j is done (its verdict sent, or dropped): its address's next job, now
 * JOB_READY and in flight, or NULL. The caller sets that job's due time.
 */
struct auth_job *auth_sched_release(struct auth_sched *s, struct auth_job *j);
/*
 * Take a waiting or ready job out of the queues (true: the caller frees it
 * after auth_sched_release). false: it is with a thread or delayed, and
 * stays until then.
 */
bool auth_sched_remove(struct auth_sched *s, struct auth_job *j);
/* Every job still queued, each given to free_job; the addresses forgotten. */
void auth_sched_clear(struct auth_sched *s, void (*free_job)(struct auth_job *));

/* auth_pool.c: threads that run auth_decide, so that a slow hash never stalls the loop. */
struct auth_pool {
	pthread_t threads[64];
	unsigned n;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct auth_job *todo, **todo_tail;
	struct auth_job *done, **done_tail;
	bool stop;
	int efd;                     /* written when a job is done */
};

int auth_pool_start(struct auth_pool *p, unsigned nthreads);
void auth_pool_submit(struct auth_pool *p, struct auth_job *j);
/* Every job decided since the last call, in order; NULL when none. */
struct auth_job *auth_pool_take_done(struct auth_pool *p);
/* Let the threads finish their job and join them; what is left is the caller's to free. */
void auth_pool_stop(struct auth_pool *p);

#endif
