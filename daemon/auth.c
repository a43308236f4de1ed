/*
 * auth.c - the auth role (`iotd: auth`): the process that alone holds the
 * password file, the JWT keys and the ACL file, and answers the workers'
 * IPC_AUTH_REQUESTs with IPC_AUTH_VERDICTs. It never parses MQTT.
 *
 * Owns its channels' reading and writing sides (one socketpair per
 * worker, kept by the supervisor: requests written while this process
 * restarts wait for its successor, which greets every worker with
 * IPC_AUTH_HELLO so that each sends again what it has not had answered),
 * the jobs in progress and their bound (auth.max_pending per worker,
 * past which a request is answered CONNACK 3 at once; IPC_AUTH_CANCEL
 * drops one whose connection is gone), the slow-down of addresses that
 * fail (addrlimit.h's table: a verdict waits until its job's due time;
 * auth_sched.c lets such an address have one job in flight), the files'
 * reload (IPC_AUTH_RELOAD, a transaction), the generation of the ACL
 * (one more at each change) and its patterns, sent to every worker
 * (IPC_AUTH_PATTERNS) before any verdict made from it, and the channel to
 * the router, which gets the ACL in force (a sealed memfd, IPC_AUTH_ACL)
 * at our start, when it asks and after a reload that changed it; once it
 * took a change, every worker is told that views of older generations are
 * stale (IPC_AUTH_RULES_STALE). While an ACL is in
 * force, each accepted CONNECT is granted to the router
 * (IPC_AUTH_GRANT) before its verdict goes to the worker. Decisions are
 * auth_check.c's, run on auth_pool.c's threads; a client's view of the
 * ACL file is made here, as its verdict is sent. Also owns the SCRAM
 * exchanges between their two steps (struct auth_exchange, a table per
 * worker's channel: one per connection, auth.max_pending per channel,
 * each until connect_timeout; a cancel drops it; a re-authentication's
 * ends without a grant). What a worker sends is hostile input: every
 * request is decoded with its lengths checked, and a worker can only
 * fill its own share of the role.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "acl.h"
#include "auth_int.h"
#include "log.h"
#include "mqtt.h"
#include "privsep.h"
#include "rec.h"
#include "role.h"
#include "sealedfd.h"

#define CTL_PER_WAKE 16
#define REQUESTS_PER_WAKE 64         /* read from one worker's channel per wake-up */

struct auth;
static bool grant_sent(struct auth *a, struct auth_job *j);

/* One worker's channel. */
struct auth_chan {
	struct auth *a;
	unsigned index;
	int fd;
	struct ipc_dispatcher in;
	struct auth_job *jobs;       /* by connection id: every job not yet answered */
	uint32_t held;               /* jobs of this worker, up to auth.max_pending */
	struct auth_job *out, **out_tail;  /* answered, waiting for room in the channel */
	void *out_verdict;           /* out's head, encoded */
	size_t out_len;
	bool hello_due;              /* IPC_AUTH_HELLO not sent yet */
	bool patterns_due;           /* IPC_AUTH_PATTERNS of the generation in force not sent yet */
	bool stale_due;              /* IPC_AUTH_RULES_STALE not sent yet */
	uint64_t stale_generation;   /* what it says: the generation the router took */
	bool want_out;               /* EPOLLOUT armed */
	bool full;                   /* an episode of refusals past max_pending, logged */
	bool foreign_logged;         /* a request about another worker's connection, logged */
	/*
	 * SCRAM exchanges between their steps, by connection: at most one a
	 * connection, auth.max_pending a channel, each until connect_timeout.
	 */
	struct auth_exchange *exchanges;
	uint32_t nexchanges;
};

/*
 * The channel to the router, and the ACL it was sent: the bytes in force
 * (to tell whether a reload changed them), the generation of the last
 * IPC_AUTH_ACL and, while a change is on its way, the generation whose
 * IPC_AUTH_ACL_TAKEN makes the workers drop their connections' views.
 */
struct auth_router {
	int fd;
	struct ipc_dispatcher in;
	struct recw acl;             /* acl_encode of the ACL in force; len 0: none */
	uint64_t generation;
	uint64_t stale_after;        /* 0: no change on its way */
	bool due;                    /* to send (the channel was full) */
	bool want_out;
	bool grant_blocked;          /* a grant found the channel full: verdicts wait for room */
};

struct auth {
	struct role_env *env;
	const struct iotd_config *cfg;
	int epfd, timerfd;
	struct auth_creds *creds;
	struct auth_pool pool;
	struct auth_sched sched;
	struct addr_fails *fails;
	struct auth_job *delayed;    /* answered, held until due_ms; sorted by it */
	struct ipc_dispatcher ctl_in;
	struct auth_chan chans[IOTD_MAX_WORKERS];
	struct auth_router router;
	/*
	 * The generation of the ACL in force (one more at each change, none
	 * or another file) and its patterns as IPC_AUTH_PATTERNS carries
	 * them (len 0: no ACL, or too long for a message: patterns_sent false).
	 */
	uint64_t acl_generation;
	struct recw patterns;
	bool patterns_sent;
	bool stopping;
};

static void exchange_free(struct auth_exchange *ex)
{
	if (ex == NULL)
		return;
	explicit_bzero(ex, sizeof(*ex));    /* its keys verify proofs */
	free(ex);
}

static void job_free(struct auth_job *j)
{
	auth_creds_unref(j->creds);
	free(j->out_user);
	free(j->rules);
	exchange_free(j->ex);
	/* The password is a secret: not left in freed memory. */
	explicit_bzero(j->bytes, (size_t)(j->data - j->bytes) + j->data_len);
	free(j);
}

/* --- SCRAM exchanges between their steps ------------------------------------- */

static void exchange_drop(struct auth_chan *ch, struct auth_exchange *ex)
{
	HASH_DEL(ch->exchanges, ex);
	ch->nexchanges--;
	exchange_free(ex);
}

/* The exchange of conn and ticket, out of the table; NULL when there is none. */
static struct auth_exchange *exchange_take(struct auth_chan *ch, uint64_t conn, uint32_t ticket)
{
	struct auth_exchange *ex;

	HASH_FIND(hh, ch->exchanges, &conn, sizeof(conn), ex);
	if (ex == NULL || ex->ticket != ticket)
		return NULL;
	HASH_DEL(ch->exchanges, ex);
	ch->nexchanges--;
	if (ex->expires_ms <= clock_ms()) {
		exchange_free(ex);
		return NULL;
	}
	return ex;
}

/*
 * j's exchange, whose server-first is encoded, kept for its final step.
 * A connection's earlier exchange goes; so do the expired ones when the
 * table is full. false: still full (auth.max_pending).
 */
static bool exchange_keep(struct auth_chan *ch, struct auth_job *j)
{
	struct auth_exchange *ex, *tmp;
	uint64_t now = clock_ms();

	HASH_FIND(hh, ch->exchanges, &j->conn, sizeof(j->conn), ex);
	if (ex != NULL)
		exchange_drop(ch, ex);
	if (ch->nexchanges >= (uint32_t)ch->a->cfg->auth_max_pending)
		HASH_ITER(hh, ch->exchanges, ex, tmp)
			if (ex->expires_ms <= now)
				exchange_drop(ch, ex);
	if (ch->nexchanges >= (uint32_t)ch->a->cfg->auth_max_pending)
		return false;
	ex = j->ex;
	j->ex = NULL;
	ex->conn = j->conn;
	ex->ticket = j->ticket;
	ex->reauth = j->reauth;
	ex->expires_ms = now + (uint64_t)ch->a->cfg->connect_timeout * 1000;
	HASH_ADD(hh, ch->exchanges, conn, sizeof(ex->conn), ex);
	ch->nexchanges++;
	return true;
}

/* --- answering ------------------------------------------------------------ */

/*
 * While verdicts wait for room, the channel is not read: a worker that
 * does not read its answers cannot make this role hold more of its
 * requests than fit in the socket, whatever it sends.
 */
static void chan_set_events(struct auth_chan *ch, bool want_out)
{
	struct epoll_event ev = { .events = want_out ? EPOLLOUT : EPOLLIN, .data.ptr = ch };

	if (ch->want_out == want_out)
		return;
	ch->want_out = want_out;
	if (epoll_ctl(ch->a->epfd, EPOLL_CTL_MOD, ch->fd, &ev) < 0)
		log_warn("epoll_ctl: %s", strerror(errno));
}

/*
 * An accepted client's view of the ACL file, made as its verdict goes out
 * from the ACL in force now, whose patterns went to the worker before
 * (chan_flush), so that no verdict sent after a change carries a view of
 * the ACL before it. One that cannot be made leaves the client without a
 * view: its messages go through the router, which checks them.
 */
static void job_rules_from_acl(struct auth *a, struct auth_job *j)
{
	if (j->code != MQTT_CONNACK_ACCEPTED || j->cont || j->reauth || j->rules_from_token)
		return;
	free(j->rules);
	j->rules = NULL;
	if (auth_rules_from_acl(a->creds->acl, a->acl_generation, a->patterns_sent, j->out_user,
				j->out_user_len, j->client_id, j->client_id_len, &j->rules,
				&j->rules_len) &&
	    j->rules_len <= IPC_MAX_PAYLOAD - sizeof(struct ipc_auth_verdict) - j->out_user_len)
		return;
	free(j->rules);
	j->rules = NULL;
	j->rules_len = 0;
	log_warn("cannot give REMOTE=%s its view of the ACL (out of memory, patterns too long "
		 "for a message, or too long a view): its messages go through the router",
		 j->remote);
}

/*
 * Send what the channel takes: the greeting first, then the patterns of
 * the ACL in force, then word of the generation the router took, then the
 * verdicts in order (made from the ACL whose patterns went before).
 */
static void chan_flush(struct auth_chan *ch)
{
	struct auth *a = ch->a;

	if (ch->hello_due) {
		if (ipc_send(ch->fd, IPC_AUTH_HELLO, ch->index, NULL, 0, -1) < 0)
			goto full;
		ch->hello_due = false;
	}
	if (ch->patterns_due) {
		if (a->patterns.len > 0 && ipc_send(ch->fd, IPC_AUTH_PATTERNS, ch->index,
						    a->patterns.buf, a->patterns.len, -1) < 0)
			goto full;
		ch->patterns_due = false;
	}
	if (ch->stale_due) {
		if (ipc_send(ch->fd, IPC_AUTH_RULES_STALE, ch->index, &ch->stale_generation,
			     sizeof(ch->stale_generation), -1) < 0)
			goto full;
		ch->stale_due = false;
	}
	while (ch->out != NULL) {
		struct auth_job *j = ch->out;
		struct ipc_auth_fields f = {
			.conn = j->conn, .ticket = j->ticket, .code = j->code,
			.user = j->out_user, .user_len = j->out_user_len,
			.rules_from_token = j->rules_from_token,
			.cont = j->cont, .data = (const uint8_t *)j->out_data,
			.data_len = j->out_data_len,
		};

		if (ch->out_verdict == NULL && j->cont && !exchange_keep(ch, j)) {
			log_warn("worker %u has %u SCRAM exchanges in progress (auth.max_pending); "
				 "answering CONNACK 3", ch->index, ch->nexchanges);
			f.code = j->code = MQTT_CONNACK_UNAVAILABLE;
			f.cont = j->cont = false;
			f.data = NULL;
			f.data_len = 0;
		}
		if (ch->out_verdict == NULL) {
			job_rules_from_acl(ch->a, j);
			f.rules = j->rules;
			f.rules_len = j->rules_len;
			ch->out_verdict = ipc_auth_verdict_encode(&f, &ch->out_len);
			if (ch->out_verdict == NULL) {
				/* Too long or no memory: the worker's connect_timeout ends the wait. */
				log_error("cannot encode a verdict for worker %u; dropped", ch->index);
				goto done;
			}
		}
		if (!grant_sent(ch->a, j))
			return;              /* the router's channel is full: on its EPOLLOUT */
		if (ipc_send(ch->fd, IPC_AUTH_VERDICT, ch->index, ch->out_verdict, ch->out_len,
			     -1) < 0)
			goto full;
done:
		free(ch->out_verdict);
		ch->out_verdict = NULL;
		ch->out = j->next;
		if (ch->out == NULL)
			ch->out_tail = &ch->out;
		ch->held--;
		job_free(j);
	}
	chan_set_events(ch, false);
	return;
full:
	if (errno != EAGAIN)
		log_error("cannot answer worker %u: %s", ch->index, strerror(errno));
	chan_set_events(ch, true);
}

static void answer(struct auth *a, struct auth_job *j)
{
	struct auth_chan *ch = &a->chans[j->worker];

	HASH_DEL(ch->jobs, j);
	j->next = NULL;
	*ch->out_tail = j;
	ch->out_tail = &j->next;
	if (ch->out == j)
		chan_flush(ch);
}

/* CONNACK 3 at once: past the bound, or nothing to decide with. */
static void answer_unavailable(struct auth *a, struct auth_job *j, const char *why)
{
	j->code = MQTT_CONNACK_UNAVAILABLE;
	j->why = why;
	answer(a, j);
}

/* --- the slow-down -------------------------------------------------------- */

static void arm_timer(struct auth *a)
{
	struct itimerspec its = { 0 };
	uint64_t now = clock_ms(), due;

	if (a->delayed != NULL) {
		due = a->delayed->due_ms > now ? a->delayed->due_ms - now : 1;
		its.it_value.tv_sec = (time_t)(due / 1000);
		its.it_value.tv_nsec = (long)(due % 1000) * 1000000;
	}
	timerfd_settime(a->timerfd, 0, &its, NULL);
}

static void hold_until_due(struct auth *a, struct auth_job *j)
{
	struct auth_job **pp = &a->delayed;

	while (*pp != NULL && (*pp)->due_ms <= j->due_ms)
		pp = &(*pp)->next;
	j->next = *pp;
	*pp = j;
	arm_timer(a);
}

/*
 * A job about to be decided: its verdict waits for the slow-down of its
 * address as it is now (after the failures of the job in flight before it).
 * The clock counts whole milliseconds: one more, so that no answer comes
 * early.
 */
static void job_set_due(struct auth *a, struct auth_job *j)
{
	uint64_t now = clock_ms();
	uint32_t delay = j->has_key ? addr_fail_delay(a->fails, &j->key, now,
						      (uint32_t)a->cfg->auth_max_failure_delay_ms) : 0;

	j->due_ms = now + (delay > 0 ? delay + 1 : 0);
}

/* Give the threads what the scheduler lets them have. */
static void dispatch(struct auth *a)
{
	struct auth_job *j;

	while ((j = auth_sched_next(&a->sched)) != NULL)
		auth_pool_submit(&a->pool, j);
}

/*
 * A job at its end (decided and due, or taken out of a queue): the next
 * job of its address starts, then the verdict goes, unless the connection
 * is gone.
 */
static void job_done(struct auth *a, struct auth_job *j)
{
	struct auth_job *next = auth_sched_release(&a->sched, j);

	if (next != NULL) {
		job_set_due(a, next);
		dispatch(a);
	}
	if (j->cancelled)
		job_free(j);
	else
		answer(a, j);
}

static void answer_due(struct auth *a)
{
	uint64_t now = clock_ms();

	while (a->delayed != NULL && a->delayed->due_ms <= now) {
		struct auth_job *j = a->delayed;

		a->delayed = j->next;
		job_done(a, j);
	}
	arm_timer(a);
}

/*
 * A job the pool decided: count it against its address (a cancelled one
 * too: a client that leaves does not escape the slow-down), log a
 * refusal, end it when due. Only credentials that verified forget the
 * address's failures; an anonymous client accepted does not.
 */
static void decided(struct auth *a, struct auth_job *j)
{
	uint64_t now = clock_ms();

	auth_sched_hashed(&a->sched, j);
	if (j->has_key && j->bad_credentials)
		addr_fail_count(a->fails, &j->key, now);
	else if (j->has_key && j->good_credentials)
		addr_fail_clear(a->fails, &j->key);
	if (j->code != MQTT_CONNACK_ACCEPTED)
		log_auth_refusal(j->client_id, j->client_id_len, j->remote, j->user, j->user_len,
				 j->code, j->why);
	else if (j->cont)
		log_debug("SCRAM exchange of REMOTE=%s as \"%.*s\": server-first", j->remote,
			  (int)MIN(j->user_len, 256u), j->user);
	else
		log_debug("accepted REMOTE=%s as \"%.*s\"", j->remote, (int)MIN(j->out_user_len, 256u),
			  j->out_user);
	if (j->due_ms > now) {
		j->state = JOB_DELAYED;
		hold_until_due(a, j);
	} else {
		job_done(a, j);
	}
	dispatch(a);
}

/* --- requests --------------------------------------------------------------- */

static struct auth_job *job_new(struct auth *a, unsigned worker, const struct ipc_auth_fields *f)
{
	size_t n = f->client_id_len + f->user_len + f->password_len + f->data_len;
	struct auth_job *j = malloc(sizeof(*j) + n);
	uint8_t *p;

	if (j == NULL)
		return NULL;
	memset(j, 0, sizeof(*j));
	j->worker = worker;
	j->conn = f->conn;
	j->ticket = f->ticket;
	j->has_user = f->has_user;
	j->has_password = f->has_password;
	j->user_from_cert = f->user_from_cert;
	memcpy(j->remote, f->remote, f->remote_len);
	j->remote[f->remote_len] = '\0';
	j->has_key = addr_key_from_remote(j->remote, &j->key);
	p = j->bytes;
	j->client_id = (const char *)p;
	j->client_id_len = f->client_id_len;
	memcpy(p, f->client_id, f->client_id_len);
	p += f->client_id_len;
	j->user = (const char *)p;
	j->user_len = f->user_len;
	memcpy(p, f->user, f->user_len);
	p += f->user_len;
	j->password = p;
	j->password_len = f->password_len;
	memcpy(p, f->password, f->password_len);
	p += f->password_len;
	j->data = p;
	j->data_len = f->data_len;
	if (f->data_len > 0)
		memcpy(p, f->data, f->data_len);
	j->scram_step = f->scram_step;
	j->reauth = f->reauth;
	auth_policy_from(a->cfg, &j->policy);
	return j;
}

/* A decoded request from ch's worker: held, answered at once, or dropped. */
static void request_take(struct auth_chan *ch, const struct ipc_auth_fields *f)
{
	struct auth *a = ch->a;
	struct auth_job *j, *dup;
	bool failing;

	/* A worker asks for its own connections only: a grant names the connection to the router. */
	if (conn_id_worker(f->conn) != ch->index) {
		if (!ch->foreign_logged)
			log_warn("worker %u asked about a connection of worker %u; dropped (logged "
				 "once)", ch->index, conn_id_worker(f->conn));
		ch->foreign_logged = true;
		return;
	}
	/* Sent again after our greeting while the first is still here: one answer is enough. */
	HASH_FIND(hh, ch->jobs, &f->conn, sizeof(f->conn), dup);
	if (dup != NULL)
		return;
	j = job_new(a, ch->index, f);
	if (j == NULL) {
		log_error("out of memory for an authentication request; dropped");
		return;
	}
	HASH_ADD(hh, ch->jobs, conn, sizeof(j->conn), j);
	ch->held++;
	if (ch->held > (uint32_t)a->cfg->auth_max_pending) {
		if (!ch->full)
			log_warn("worker %u has %u authentication requests waiting (auth.max_pending); "
				 "answering CONNACK 3 until they drain", ch->index, ch->held - 1);
		ch->full = true;
		answer_unavailable(a, j, "too many requests waiting (auth.max_pending)");
		return;
	}
	if (ch->held == 1)
		ch->full = false;
	/* A final step goes on the exchange its first began; none left (expired, restarted): CONNACK 3. */
	if (j->scram_step == IPC_AUTH_SCRAM_FINAL &&
	    (j->ex = exchange_take(ch, j->conn, j->ticket)) == NULL) {
		j->why = "no SCRAM exchange in progress (expired, or the auth role restarted)";
		log_auth_refusal(j->client_id, j->client_id_len, j->remote, j->user, j->user_len,
				 MQTT_CONNACK_UNAVAILABLE, j->why);
		answer_unavailable(a, j, j->why);
		return;
	}
	if (j->ex != NULL)
		j->reauth = j->ex->reauth;
	j->creds = a->creds;
	atomic_fetch_add(&a->creds->refs, 1);
	failing = j->has_key && addr_fail_delay(a->fails, &j->key, clock_ms(),
						(uint32_t)a->cfg->auth_max_failure_delay_ms) > 0;
	switch (auth_sched_add(&a->sched, j, failing,
			       (uint32_t)a->cfg->auth_max_waiting_per_address)) {
	case SCHED_FULL:
		j->why = "too many attempts from its address waiting (auth.max_waiting_per_address)";
		log_auth_refusal(j->client_id, j->client_id_len, j->remote, j->user, j->user_len,
				 MQTT_CONNACK_UNAVAILABLE, j->why);
		answer_unavailable(a, j, j->why);
		break;
	case SCHED_WAITING:
		break;                   /* started when the job before it ends */
	case SCHED_READY:
		job_set_due(a, j);
		dispatch(a);
		break;
	}
}

/* IPC_AUTH_REQUEST; the password is wiped from the receive buffer whatever becomes of it. */
static int on_request(void *ctx, struct ipc_msg *m)
{
	struct auth_chan *ch = ctx;
	struct ipc_auth_fields f;

	if (!ipc_auth_request_decode(m->data, m->hdr.len, &f)) {
		log_warn("a malformed authentication request from worker %u; dropped", ch->index);
		return 0;
	}
	request_take(ch, &f);
	explicit_bzero((void *)f.password, f.password_len);
	return 0;
}

/*
 * IPC_AUTH_CANCEL: the connection closed while its request was here; it
 * stops counting against max_pending at once. A job still queued goes
 * now; one with a thread, or decided and held for its delay, ends then
 * without a verdict (its address stays in flight until then). Looked up
 * among this channel's jobs alone, by connection and ticket: a cancel
 * about another worker's connection, or one answered already, finds
 * nothing and is ignored.
 */
static int on_cancel(void *ctx, struct ipc_msg *m)
{
	struct auth_chan *ch = ctx;
	struct ipc_auth_cancel c;
	struct auth_job *j;

	memcpy(&c, m->data, sizeof(c));
	exchange_free(exchange_take(ch, c.conn, c.ticket));
	HASH_FIND(hh, ch->jobs, &c.conn, sizeof(c.conn), j);
	if (j == NULL || j->ticket != c.ticket)
		return 0;
	HASH_DEL(ch->jobs, j);
	ch->held--;
	j->cancelled = true;
	if (auth_sched_remove(&ch->a->sched, j))
		job_done(ch->a, j);
	return 0;
}

static const struct ipc_handler from_worker[IPC_TYPE_MAX] = {
	[IPC_AUTH_REQUEST] = { .fn = on_request, .min_len = sizeof(struct ipc_auth_request),
			       .max_len = IPC_MAX_PAYLOAD },
	[IPC_AUTH_CANCEL] = { .fn = on_cancel, IPC_LEN(sizeof(struct ipc_auth_cancel)) },
};

/* --- the router ------------------------------------------------------------ */

static void router_set_events(struct auth *a, bool want_out)
{
	struct auth_router *rt = &a->router;
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = rt };

	if (rt->want_out == want_out)
		return;
	rt->want_out = want_out;
	if (epoll_ctl(a->epfd, EPOLL_CTL_MOD, rt->fd, &ev) < 0)
		log_warn("epoll_ctl: %s", strerror(errno));
}

/* Send the router the ACL in force, when due; a full channel is tried again on EPOLLOUT. */
static void router_flush(struct auth *a)
{
	struct auth_router *rt = &a->router;
	struct ipc_auth_acl msg = { .generation = rt->generation + 1, .len = rt->acl.len };
	int fd = -1;

	if (!rt->due)
		return;
	if (msg.len > 0 && (fd = sealedfd_make("iotd-acl", rt->acl.buf, rt->acl.len)) < 0) {
		log_error("cannot hand the ACL to the router: %s", strerror(errno));
		return;                  /* tried again at the next change or request */
	}
	if (ipc_send(rt->fd, IPC_AUTH_ACL, 0, &msg, sizeof(msg), fd) < 0) {
		if (errno != EAGAIN)
			log_error("cannot send the ACL to the router: %s", strerror(errno));
		router_set_events(a, errno == EAGAIN);
	} else {
		rt->generation = msg.generation;
		rt->due = false;
		router_set_events(a, rt->grant_blocked);
	}
	if (fd >= 0)
		close(fd);
}

/*
 * The ACL in force is creds': keep its bytes and send them to the router
 * when they differ from those it has (*changed), the workers' views then
 * being stale. false: it cannot be encoded (out of memory); nothing
 * changed.
 */
static bool router_acl_take(struct auth *a, const struct auth_creds *creds, bool first,
			    bool *changed)
{
	struct auth_router *rt = &a->router;
	struct recw w;

	recw_init(&w);
	if (creds->acl != NULL && (acl_encode(creds->acl, &w) < 0 || w.oom)) {
		recw_free(&w);
		return false;
	}
	*changed = first || w.len != rt->acl.len ||
		   (w.len > 0 && memcmp(w.buf, rt->acl.buf, w.len) != 0);
	if (!*changed) {
		recw_free(&w);
		return true;
	}
	recw_free(&rt->acl);
	rt->acl = w;
	rt->due = true;
	rt->stale_after = rt->generation + 1;
	router_flush(a);
	return true;
}

/*
 * An accepted CONNECT is granted to the router before its verdict goes
 * (while an ACL is in force), once: a verdict's payload with its
 * connection id, its user name and a token's rules (the router makes
 * other views itself). false: the router's channel is full; tried again
 * when it has room. A grant that cannot be sent at all is given up (and
 * logged): the router then refuses that CONNECT.
 */
static bool grant_sent(struct auth *a, struct auth_job *j)
{
	struct ipc_auth_fields f = {
		.conn = j->conn, .code = j->code, .user = j->out_user, .user_len = j->out_user_len,
		.rules_from_token = j->rules_from_token,
		.rules = j->rules_from_token ? j->rules : NULL,
		.rules_len = j->rules_from_token ? j->rules_len : 0,
	};
	void *grant;
	size_t len;
	int rc;

	if (j->code != MQTT_CONNACK_ACCEPTED || j->cont || j->reauth || j->granted ||
	    !config_acl_in_force(a->cfg))
		return true;
	if ((grant = ipc_auth_verdict_encode(&f, &len)) == NULL) {
		errno = ENOMEM;
		rc = -1;
	} else {
		rc = ipc_send(a->router.fd, IPC_AUTH_GRANT, j->worker, grant, len, -1);
		free(grant);
	}
	if (rc < 0 && errno == EAGAIN) {
		a->router.grant_blocked = true;
		router_set_events(a, true);
		return false;
	}
	if (rc < 0)
		log_error("cannot grant REMOTE=%s's CONNECT to the router (%s): it will be refused",
			  j->remote, strerror(errno));
	j->granted = true;
	return true;
}

/* The router's channel has room: what waited for it goes. */
static void router_writable(struct auth *a)
{
	router_flush(a);
	if (!a->router.grant_blocked)
		return;
	a->router.grant_blocked = false;
	for (unsigned i = 0; i < a->env->nworkers; i++)
		chan_flush(&a->chans[i]);
	if (!a->router.due && !a->router.grant_blocked)
		router_set_events(a, false);
}

/*
 * The ACL in force (a->creds') is a new generation: its patterns go to
 * every worker before any verdict made from it (a verdict encoded and
 * waiting for room is made again). Patterns too long for one message are
 * not sent: the clients they apply to get no view (the router decides).
 */
static void workers_acl_take(struct auth *a)
{
	const struct acl *acl = a->creds->acl;

	a->acl_generation++;
	recw_free(&a->patterns);
	a->patterns_sent = acl == NULL;
	if (acl != NULL && acl_patterns_encode(acl, a->acl_generation, &a->patterns) == 0 &&
	    !a->patterns.oom && a->patterns.len <= IPC_MAX_PAYLOAD)
		a->patterns_sent = true;
	if (!a->patterns_sent) {
		log_error("the ACL's patterns (%zu bytes) cannot go to the workers (out of memory, "
			  "or more than a message's %u): their clients' messages all go through "
			  "the router", a->patterns.len, (unsigned)IPC_MAX_PAYLOAD);
		recw_free(&a->patterns);
	}
	for (unsigned i = 0; i < a->env->nworkers; i++) {
		struct auth_chan *ch = &a->chans[i];

		ch->patterns_due = true;
		free(ch->out_verdict);
		ch->out_verdict = NULL;
		chan_flush(ch);
	}
}

/* IPC_AUTH_ACL_ASK: a router that starts holds its rings until it has the ACL. */
static int on_acl_ask(void *ctx, struct ipc_msg *m)
{
	struct auth *a = ctx;

	a->router.due = true;
	router_flush(a);
	return 0;
}

/*
 * IPC_AUTH_ACL_TAKEN: the router enforces the new ACL; the views given to
 * the workers' connections of generations before it are stale (a verdict
 * already encoded is made again).
 */
static int on_acl_taken(void *ctx, struct ipc_msg *m)
{
	struct auth *a = ctx;
	uint64_t generation;

	memcpy(&generation, m->data, sizeof(generation));
	if (a->router.stale_after == 0 || generation < a->router.stale_after)
		return 0;
	a->router.stale_after = 0;
	for (unsigned i = 0; i < a->env->nworkers; i++) {
		struct auth_chan *ch = &a->chans[i];

		ch->stale_due = true;
		ch->stale_generation = a->acl_generation;
		free(ch->out_verdict);
		ch->out_verdict = NULL;
		chan_flush(ch);
	}
	return 0;
}

static const struct ipc_handler from_router[IPC_TYPE_MAX] = {
	[IPC_AUTH_ACL_ASK] = { .fn = on_acl_ask },
	[IPC_AUTH_ACL_TAKEN] = { .fn = on_acl_taken, IPC_LEN(sizeof(uint64_t)) },
};

/* --- the supervisor ------------------------------------------------------- */

/* IPC_AUTH_RELOAD: the files again, all or nothing. */
static int on_reload(void *ctx, struct ipc_msg *m)
{
	struct auth *a = ctx;
	struct auth_creds *next;
	char err[512], what[64];
	bool changed;

	if (auth_creds_load(a->cfg, &next, err, sizeof(err)) < 0) {
		log_error("reload: %s; keeping the files in force", err);
		return 0;
	}
	if (!router_acl_take(a, next, false, &changed)) {
		log_error("reload: out of memory encoding the ACL; keeping the files in force");
		auth_creds_unref(next);
		return 0;
	}
	auth_creds_unref(a->creds);
	a->creds = next;
	if (changed)
		workers_acl_take(a);
	auth_creds_describe(next, what, sizeof(what));
	log_info("reload: files read again (%s)", what);
	return 0;
}

static int on_shutdown(void *ctx, struct ipc_msg *m)
{
	((struct auth *)ctx)->stopping = true;
	return IPC_STOP;
}

static int on_config(void *ctx, struct ipc_msg *m)
{
	role_take_config(((struct auth *)ctx)->env, m->data, m->hdr.len);
	return 0;
}

static const struct ipc_handler from_supervisor[IPC_TYPE_MAX] = {
	[IPC_SHUTDOWN] = { .fn = on_shutdown },
	[IPC_AUTH_RELOAD] = { .fn = on_reload },
	ROLE_SUPERVISOR_ENTRIES(on_config),
};

/* --- set-up ------------------------------------------------------------------ */

/*
 * Landlock: read beneath the directories of the files, nothing else (see
 * privsep_seal_read for why not the files themselves). A reload that
 * names other files replaces this process (sup_reload.c).
 */
static int seal(const struct iotd_config *cfg)
{
	const char *files[] = { cfg->auth_password_file, cfg->auth_jwt_key_file,
				cfg->auth_acl_file };
	char dirs[3][PATH_MAX];
	const char *list[3];
	size_t n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		if (files[i][0] == '\0')
			continue;
		snprintf(dirs[n], sizeof(dirs[n]), "%s", files[i]);
		list[n] = dirname(dirs[n]);
		n++;
	}
	return privsep_seal_read(list, n);
}

static int auth_setup(struct auth *a, struct role_env *env)
{
	char err[512], what[64];

	a->env = env;
	a->cfg = env->cfg;
	a->fails = calloc(1, sizeof(*a->fails));
	if (a->fails == NULL)
		return -1;
	/* Before Landlock: OpenSSL reads its configuration once, here. */
	OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
	if (auth_creds_load(a->cfg, &a->creds, err, sizeof(err)) < 0) {
		log_error("%s", err);
		return -1;
	}
	if (seal(a->cfg) < 0 || auth_pool_start(&a->pool, (unsigned)a->cfg->auth_hash_threads) < 0)
		return -1;
	auth_sched_init(&a->sched, env->nworkers, a->pool.n);
	auth_creds_describe(a->creds, what, sizeof(what));
	log_debug("files read (%s); %ld hashing threads", what, a->cfg->auth_hash_threads);
	ipc_dispatcher_init(&a->ctl_in, from_supervisor, IPC_PEER_ANY, "the supervisor");
	a->epfd = epoll_create1(EPOLL_CLOEXEC);
	a->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (a->epfd < 0 || a->timerfd < 0)
		return -1;
	if (epoll_watch(a->epfd, env->ctl_fd, EPOLLIN, &env->ctl_fd) < 0 ||
	    epoll_watch(a->epfd, a->timerfd, EPOLLIN, &a->timerfd) < 0 ||
	    epoll_watch(a->epfd, a->pool.efd, EPOLLIN, &a->pool.efd) < 0)
		return -1;
	a->router.fd = env->auth_router;
	ipc_dispatcher_init(&a->router.in, from_router, IPC_PEER_ANY, "the router");
	if (epoll_watch(a->epfd, a->router.fd, EPOLLIN, &a->router) < 0)
		return -1;
	for (unsigned i = 0; i < env->nworkers; i++) {
		struct auth_chan *ch = &a->chans[i];
		char from[32];

		*ch = (struct auth_chan){ .a = a, .index = i, .fd = env->auth_chan[i],
					  .hello_due = true };
		ch->out_tail = &ch->out;
		snprintf(from, sizeof(from), "worker %u", i);
		ipc_dispatcher_init(&ch->in, from_worker, i, from);
		if (epoll_watch(a->epfd, ch->fd, EPOLLIN, ch) < 0)
			return -1;
	}
	return 0;
}

static void auth_teardown(struct auth *a)
{
	struct auth_job *j, *tmp;

	auth_pool_stop(&a->pool);
	/* The channels' indexes first: clearing one reads its first job. */
	for (unsigned i = 0; i < a->env->nworkers; i++)
		HASH_CLEAR(hh, a->chans[i].jobs);
	auth_sched_clear(&a->sched, job_free);
	for (j = auth_pool_take_done(&a->pool); j != NULL; j = tmp) {
		tmp = j->next;
		job_free(j);
	}
	for (j = a->pool.todo; j != NULL; j = tmp) {
		tmp = j->next;
		job_free(j);
	}
	for (j = a->delayed; j != NULL; j = tmp) {
		tmp = j->next;
		job_free(j);
	}
	for (unsigned i = 0; i < a->env->nworkers; i++) {
		struct auth_chan *ch = &a->chans[i];

		struct auth_exchange *ex, *extmp;

		for (j = ch->out; j != NULL; j = tmp) {
			tmp = j->next;
			job_free(j);
		}
		free(ch->out_verdict);
		HASH_ITER(hh, ch->exchanges, ex, extmp)
			exchange_drop(ch, ex);
	}
	auth_creds_unref(a->creds);
	recw_free(&a->router.acl);
	recw_free(&a->patterns);
	free(a->fails);
	close(a->epfd);
	close(a->timerfd);
}

int auth_main(struct role_env *env)
{
	struct auth a = { 0 };
	struct epoll_event evs[64];
	bool changed;

	if (auth_setup(&a, env) < 0) {
		log_error("auth role setup failed");
		return 1;
	}
	/*
	 * The router gets the ACL first (the files may have changed since the
	 * last process: the views the workers hold are then stale); every
	 * worker hears that what it sent before may be lost (it sends it
	 * again, and drops its views of the file), then the patterns.
	 */
	if (!router_acl_take(&a, a.creds, true, &changed)) {
		log_error("out of memory encoding the ACL");
		auth_teardown(&a);
		return 1;
	}
	workers_acl_take(&a);
	ipc_send(env->ctl_fd, IPC_READY, 0, NULL, 0, -1);
	while (!a.stopping) {
		int n = epoll_wait(a.epfd, evs, (int)ARRAY_SIZE(evs), -1);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n && !a.stopping; i++) {
			void *p = evs[i].data.ptr;

			if (p == &env->ctl_fd) {
				if (ipc_dispatch(env->ctl_fd, &a.ctl_in, &a, CTL_PER_WAKE) < 0)
					a.stopping = true;
			} else if (p == &a.timerfd) {
				uint64_t ticks;

				(void)!read(a.timerfd, &ticks, sizeof(ticks));
				answer_due(&a);
			} else if (p == &a.router) {
				if (evs[i].events & EPOLLOUT)
					router_writable(&a);
				if ((evs[i].events & EPOLLIN) &&
				    ipc_dispatch(a.router.fd, &a.router.in, &a, CTL_PER_WAKE) < 0 &&
				    errno != 0)
					log_warn("the router's channel: %s", strerror(errno));
			} else if (p == &a.pool.efd) {
				struct auth_job *j = auth_pool_take_done(&a.pool), *next;

				for (; j != NULL; j = next) {
					next = j->next;
					decided(&a, j);
				}
			} else {
				struct auth_chan *ch = p;

				if (evs[i].events & EPOLLOUT)
					chan_flush(ch);
				if (evs[i].events & EPOLLIN)
					ipc_dispatch(ch->fd, &ch->in, ch, REQUESTS_PER_WAKE);
			}
		}
	}
	auth_teardown(&a);
	return 0;
}
