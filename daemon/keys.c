/*
 * keys.c - the key role (`iotd: keys`): the process that alone holds the
 * server's TLS private keys (tls { }'s and each named certificate's, each
 * under a key id), forked only while TLS is configured. The
 * workers run the TLS record layer; each handshake's one private-key
 * operation comes here as an IPC_KEYS_SIGN and goes back as an
 * IPC_KEYS_SIGNED (daemon/worker_tls.c is the other side). It never
 * reads a client byte.
 *
 * Owns its channels (one socketpair per worker, kept by the supervisor
 * like the auth role's), each with a queue of at most
 * tls.max_pending_signs requests: a channel whose queue is full, or whose
 * answer waits for room, is not read, so that what one worker sends
 * waits in its own socket. Queues are served round robin, one signature
 * per channel in a round, and the sockets are looked at between two
 * rounds, so that one worker's flood of handshakes delays another's by
 * one signature at most. Also owns the
 * session-ticket keys: drawn at start, rotated every KEYS_TICKET_ROTATE_S
 * (the previous one kept to open tickets), sent to every worker so that a
 * ticket one worker issued is taken by any. Each worker gets every chain
 * (public) at our start, when it asks (IPC_KEYS_ASK: a new worker) and
 * after a reload (IPC_KEYS_RELOAD: every certificate's files read again
 * as one transaction, each under a new key id; the keys replaced still
 * sign for the handshakes begun under them).
 * Files: keys_files.c. What a worker sends is hostile input: every
 * request is decoded with its lengths checked.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "keys_int.h"
#include "log.h"
#include "privsep.h"
#include "role.h"

#define CTL_PER_WAKE 16
#define KEYS_TICKET_ROTATE_S 3600    /* a ticket key issues for an hour, opens for two */

struct keys;

/* One request waiting its turn; data is a digest or Ed25519's data. */
struct keys_req {
	struct ipc_keys_fields f;
	uint8_t data[IPC_KEYS_DATA_MAX];
};

/* One worker's channel. */
struct keys_chan {
	struct keys *k;
	unsigned index;
	int fd;
	struct ipc_dispatcher in;
	struct keys_req *queue;      /* a ring of tls.max_pending_signs */
	unsigned head, n;
	uint8_t answer[IPC_KEYS_SIGNED_LEN_MAX]; /* signed, waiting for room */
	size_t answer_len;
	uint32_t chains_due;         /* a bit per certificate whose chain is to go */
	bool tickets_due;
	uint32_t events;             /* armed in epoll */
	bool malformed_logged;
};

struct keys {
	struct role_env *env;
	const struct iotd_config *cfg;
	int epfd, timerfd;
	unsigned cap;                /* each queue's bound */
	unsigned next;               /* the channel served first in the next round */
	struct keys_files files[TLS_CERTS_MAX]; /* in force: new connections' chains */
	struct keys_files prev[TLS_CERTS_MAX];  /* those a reload replaced: for handshakes
	                                         * begun under them */
	uint64_t prev_until_ms;      /* ... until tls.handshake_timeout after the reload */
	uint32_t last_key_id;        /* the key ids given so far */
	uint32_t all_chains;         /* a bit per certificate held */
	uint8_t *chain_msg[TLS_CERTS_MAX]; /* each one's IPC_KEYS_CHAIN payload */
	size_t chain_len[TLS_CERTS_MAX];
	struct ipc_keys_tickets tickets;
	struct ipc_dispatcher ctl_in;
	struct keys_chan chans[IOTD_MAX_WORKERS];
	bool stopping;
};

/*
 * The key a reload replaced is dropped once every handshake begun under
 * it has ended; how long epoll may sleep until then (-1: nothing held).
 */
static int prev_expire(struct keys *k)
{
	uint64_t now = clock_ms();

	if (k->prev_until_ms == 0)
		return -1;
	if (now < k->prev_until_ms)
		return (int)(k->prev_until_ms - now);
	keys_files_free_all(k->prev);
	k->prev_until_ms = 0;
	return -1;
}

/* --- a channel ------------------------------------------------------------ */

/* Read while the queue has room and no answer waits; write while something waits. */
static void chan_arm(struct keys_chan *ch)
{
	bool out = ch->answer_len > 0 || ch->chains_due != 0 || ch->tickets_due;
	uint32_t events = (ch->n < ch->k->cap && !out ? EPOLLIN : 0) | (out ? EPOLLOUT : 0);
	struct epoll_event ev = { .events = events, .data.ptr = ch };

	if (events == ch->events)
		return;
	ch->events = events;
	if (epoll_ctl(ch->k->epfd, EPOLL_CTL_MOD, ch->fd, &ev) < 0)
		log_warn("epoll_ctl: %s", strerror(errno));
}

/* One message; false when the channel is full (EAGAIN) or broken (logged). */
static bool chan_send(struct keys_chan *ch, uint32_t type, const void *data, size_t len)
{
	if (ipc_send(ch->fd, type, ch->index, data, len, -1) == 0)
		return true;
	if (errno != EAGAIN)
		log_warn("cannot write to worker %u: %s", ch->index, strerror(errno));
	return errno != EAGAIN;      /* a broken channel: given up, not retried */
}

/* What waits goes, in order: the chains, the ticket keys, an answer. */
static void chan_flush(struct keys_chan *ch)
{
	struct keys *k = ch->k;

	for (int i = 0; i < TLS_CERTS_MAX && ch->chains_due != 0; i++) {
		if (!(ch->chains_due & (1u << i)))
			continue;
		if (!chan_send(ch, IPC_KEYS_CHAIN, k->chain_msg[i], k->chain_len[i]))
			break;
		ch->chains_due &= ~(1u << i);
	}
	if (ch->chains_due == 0 && ch->tickets_due &&
	    chan_send(ch, IPC_KEYS_TICKETS, &k->tickets, sizeof(k->tickets)))
		ch->tickets_due = false;
	if (ch->chains_due == 0 && !ch->tickets_due && ch->answer_len > 0 &&
	    chan_send(ch, IPC_KEYS_SIGNED, ch->answer, ch->answer_len))
		ch->answer_len = 0;
	chan_arm(ch);
}

/* IPC_KEYS_SIGN: queued, or dropped (logged once) when malformed. */
static int on_sign(void *ctx, struct ipc_msg *m)
{
	struct keys_chan *ch = ctx;
	struct ipc_keys_fields f;
	struct keys_req *r;

	if (!ipc_keys_sign_decode(m->data, m->hdr.len, &f)) {
		if (!ch->malformed_logged)
			log_warn("a malformed signing request from worker %u; dropped (further "
				 "ones unlogged)", ch->index);
		ch->malformed_logged = true;
		return 0;
	}
	if (ch->n == ch->k->cap)
		return IPC_STOP;         /* cannot happen: only as many are read as fit */
	r = &ch->queue[(ch->head + ch->n++) % ch->k->cap];
	r->f = f;
	memcpy(r->data, f.data, f.len);
	r->f.data = r->data;
	return ch->n == ch->k->cap ? IPC_STOP : 0;
}

/* IPC_KEYS_ASK: a new worker process wants the chain and the ticket keys. */
static int on_ask(void *ctx, struct ipc_msg *m)
{
	struct keys_chan *ch = ctx;

	ch->chains_due = ch->k->all_chains;
	ch->tickets_due = true;
	return 0;
}

static const struct ipc_handler from_worker[IPC_TYPE_MAX] = {
	[IPC_KEYS_SIGN] = { .fn = on_sign, .min_len = sizeof(struct ipc_keys_sign),
			    .max_len = IPC_KEYS_SIGN_LEN_MAX },
	[IPC_KEYS_ASK] = { .fn = on_ask },
};

static void chan_read(struct keys_chan *ch)
{
	unsigned room = ch->k->cap - ch->n;

	if (room > 0 && ipc_dispatch(ch->fd, &ch->in, ch, room) < 0 && errno != 0)
		log_warn("worker %u's channel: %s", ch->index, strerror(errno));
	chan_flush(ch);
}

/* The key a request names: one in force, or one a reload replaced; NULL: none. */
static const struct keys_files *key_named(const struct keys *k, uint32_t key_id)
{
	for (int i = 0; i < TLS_CERTS_MAX; i++) {
		if (k->files[i].key != NULL && k->files[i].key_id == key_id)
			return &k->files[i];
		if (k->prev[i].key != NULL && k->prev[i].key_id == key_id)
			return &k->prev[i];
	}
	return NULL;
}

/* The head of ch's queue signed and answered (or held until the channel has room). */
static void chan_serve_one(struct keys_chan *ch)
{
	struct keys_req *r = &ch->queue[ch->head];
	const struct keys_files *f = key_named(ch->k, r->f.key_id);
	uint8_t sig[IPC_KEYS_SIG_MAX];
	struct ipc_keys_fields a = { .id = r->f.id, .data = sig };

	a.status = f != NULL ? keys_sign(f, &r->f, sig, &a.len) : IPC_KEYS_WRONG_KEY;
	ch->answer_len = ipc_keys_signed_encode(&a, ch->answer);
	explicit_bzero(r->data, r->f.len);
	ch->head = (ch->head + 1) % ch->k->cap;
	ch->n--;
	chan_flush(ch);
}

/* Whether ch has a request to sign and room for its answer. */
static bool chan_servable(const struct keys_chan *ch)
{
	return ch->n > 0 && ch->answer_len == 0 && ch->chains_due == 0 && !ch->tickets_due;
}

/*
 * One round: one signature for each channel that can take one, starting
 * after the one that started the last round. True when requests remain
 * that could be served now.
 */
static bool serve_round_robin(struct keys *k)
{
	unsigned nw = k->env->nworkers;
	bool more = false;

	for (unsigned i = 0; i < nw; i++) {
		struct keys_chan *ch = &k->chans[(k->next + i) % nw];

		if (chan_servable(ch))
			chan_serve_one(ch);
		more = more || chan_servable(ch);
	}
	k->next = (k->next + 1) % nw;
	return more;
}

/* --- session-ticket keys ---------------------------------------------------- */

/* A new key issues tickets; the one before only opens them. Every worker is told. */
static int tickets_rotate(struct keys *k)
{
	struct ipc_keys_tickets *t = &k->tickets;

	if (t->n > 0)
		t->keys[1] = t->keys[0];
	if (RAND_priv_bytes((unsigned char *)&t->keys[0], sizeof(t->keys[0])) != 1) {
		log_error("cannot draw a session-ticket key");
		return -1;
	}
	t->n = t->n > 0 ? 2 : 1;
	for (unsigned i = 0; i < k->env->nworkers; i++) {
		k->chans[i].tickets_due = true;
		chan_flush(&k->chans[i]);
	}
	return 0;
}

/* --- the supervisor ----------------------------------------------------------- */

/*
 * Each certificate's IPC_KEYS_CHAIN payload, from files: all made, then
 * put in place (and all_chains set), or none.
 */
static int chain_msgs_make(struct keys *k, const struct keys_files *files)
{
	uint8_t *msg[TLS_CERTS_MAX] = { 0 };
	size_t len[TLS_CERTS_MAX] = { 0 };
	uint32_t all = 0;

	for (int i = 0; i < TLS_CERTS_MAX; i++) {
		const struct keys_files *f = &files[i];
		struct ipc_keys_pem p = { .key_id = f->key_id, .cert = (uint32_t)i,
					  .chain = f->chain, .chain_len = f->chain_len,
					  .trust = f->trust, .trust_len = f->trust_len };

		if (f->key == NULL)
			continue;
		if ((msg[i] = ipc_keys_chain_encode(&p, &len[i])) == NULL) {
			for (int j = 0; j < i; j++)
				free(msg[j]);
			return -1;
		}
		all |= 1u << i;
	}
	for (int i = 0; i < TLS_CERTS_MAX; i++) {
		free(k->chain_msg[i]);
		k->chain_msg[i] = msg[i];
		k->chain_len[i] = len[i];
	}
	k->all_chains = all;
	return 0;
}

/*
 * IPC_KEYS_RELOAD: every certificate's files again, all or nothing. New
 * ones go to every worker under new key ids (their new connections use
 * them); the ones they replace still sign for handshakes begun under them.
 */
static int on_reload(void *ctx, struct ipc_msg *m)
{
	struct keys *k = ctx;
	struct keys_files next[TLS_CERTS_MAX];
	uint32_t key_id = k->last_key_id;
	char err[512];

	if (keys_files_load_all(k->cfg, &key_id, next, err, sizeof(err)) < 0) {
		log_error("reload: %s; keeping every key and certificate in force", err);
		return 0;
	}
	if (chain_msgs_make(k, next) < 0) {
		log_error("reload: out of memory; keeping every key and certificate in force");
		keys_files_free_all(next);
		return 0;
	}
	k->last_key_id = key_id;
	keys_files_free_all(k->prev);
	memcpy(k->prev, k->files, sizeof(k->prev));
	memcpy(k->files, next, sizeof(k->files));
	k->prev_until_ms = clock_ms() + (uint64_t)k->cfg->tls_handshake_timeout * 1000;
	for (unsigned i = 0; i < k->env->nworkers; i++) {
		k->chans[i].chains_due = k->all_chains;
		chan_flush(&k->chans[i]);
	}
	log_info("reload: keys and certificate chains read again");
	return 0;
}

static int on_shutdown(void *ctx, struct ipc_msg *m)
{
	((struct keys *)ctx)->stopping = true;
	return IPC_STOP;
}

static int on_config(void *ctx, struct ipc_msg *m)
{
	role_take_config(((struct keys *)ctx)->env, m->data, m->hdr.len);
	return 0;
}

static const struct ipc_handler from_supervisor[IPC_TYPE_MAX] = {
	[IPC_SHUTDOWN] = { .fn = on_shutdown },
	[IPC_KEYS_RELOAD] = { .fn = on_reload },
	ROLE_SUPERVISOR_ENTRIES(on_config),
};

/*
 * Files that cannot be used: the supervisor is told why (at start it then
 * stops the daemon) and we wait for its IPC_SHUTDOWN, so that the reason
 * is read before our exit is seen.
 */
static int refuse_to_start(struct role_env *env, const char *why)
{
	struct ipc_hdr hdr;
	char buf[64];
	int fd;

	log_error("%s", why);
	if (ipc_send(env->ctl_fd, IPC_KEYS_FAILED, 0, why, strlen(why) + 1, -1) < 0)
		return 1;
	for (;;) {
		ssize_t n = ipc_recv(env->ctl_fd, &hdr, buf, sizeof(buf), &fd);

		if (fd >= 0)
			close(fd);
		if ((n < 0 && errno != EINTR && errno != EMSGSIZE) || hdr.type == 0 ||
		    hdr.type == IPC_SHUTDOWN)
			return 1;
	}
}

/* --- set-up ------------------------------------------------------------------ */

/*
 * Landlock: read beneath the directories of every certificate's files,
 * nothing else (privsep_seal_read says why not the files themselves).
 */
static int seal(const struct iotd_config *cfg)
{
	const char *files[4 * TLS_CERTS_MAX], *dirs[TLS_CERTS_MAX];
	size_t nf = 0, nd = 0;

	for (int i = 0; i < config_tls_certs(cfg); i++) {
		struct tls_cert_files tc;

		config_tls_cert(cfg, i, &tc);
		files[nf++] = tc.key_file;
		files[nf++] = tc.cert_file;
		files[nf++] = tc.ca_file;
		files[nf++] = tc.crl_file;
		dirs[nd++] = tc.ca_path;
	}
	return privsep_seal_read_files(files, nf, dirs, nd);
}

static int keys_setup(struct keys *k, struct role_env *env)
{
	struct itimerspec every = { .it_interval.tv_sec = KEYS_TICKET_ROTATE_S,
				    .it_value.tv_sec = KEYS_TICKET_ROTATE_S };

	ipc_dispatcher_init(&k->ctl_in, from_supervisor, IPC_PEER_ANY, "the supervisor");
	k->epfd = epoll_create1(EPOLL_CLOEXEC);
	k->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (k->epfd < 0 || k->timerfd < 0 || timerfd_settime(k->timerfd, 0, &every, NULL) < 0 ||
	    epoll_watch(k->epfd, env->ctl_fd, EPOLLIN, &env->ctl_fd) < 0 ||
	    epoll_watch(k->epfd, k->timerfd, EPOLLIN, &k->timerfd) < 0 ||
	    chain_msgs_make(k, k->files) < 0)
		return -1;
	for (unsigned i = 0; i < env->nworkers; i++) {
		struct keys_chan *ch = &k->chans[i];
		char from[32];

		*ch = (struct keys_chan){ .k = k, .index = i, .fd = env->keys_chan[i],
					  .chains_due = k->all_chains, .events = EPOLLIN };
		ch->queue = calloc(k->cap, sizeof(*ch->queue));
		snprintf(from, sizeof(from), "worker %u", i);
		ipc_dispatcher_init(&ch->in, from_worker, i, from);
		if (ch->queue == NULL || epoll_watch(k->epfd, ch->fd, EPOLLIN, ch) < 0)
			return -1;
	}
	return tickets_rotate(k);
}

static void keys_teardown(struct keys *k)
{
	for (unsigned i = 0; i < k->env->nworkers; i++) {
		struct keys_chan *ch = &k->chans[i];

		if (ch->queue != NULL)
			OPENSSL_cleanse(ch->queue, k->cap * sizeof(*ch->queue));
		free(ch->queue);
	}
	OPENSSL_cleanse(&k->tickets, sizeof(k->tickets));
	keys_files_free_all(k->files);
	keys_files_free_all(k->prev);
	for (int i = 0; i < TLS_CERTS_MAX; i++)
		free(k->chain_msg[i]);
	close(k->epfd);
	close(k->timerfd);
}

int keys_main(struct role_env *env)
{
	struct keys k = { .env = env, .cfg = env->cfg, .epfd = -1, .timerfd = -1 };
	struct epoll_event evs[64];
	char err[512];
	bool more = false;

	k.cap = (unsigned)k.cfg->tls_max_pending_signs;
	/* Before Landlock: OpenSSL reads its configuration once, here. */
	OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
	if (keys_files_load_all(k.cfg, &k.last_key_id, k.files, err, sizeof(err)) < 0)
		return refuse_to_start(env, err);
	if (seal(k.cfg) < 0 || keys_setup(&k, env) < 0) {
		log_error("key role setup failed");
		keys_teardown(&k);
		return 1;
	}
	log_debug("keys and certificate chains read (%u)", (unsigned)k.last_key_id);
	ipc_send(env->ctl_fd, IPC_READY, 0, NULL, 0, -1);
	while (!k.stopping) {
		int n = epoll_wait(k.epfd, evs, (int)ARRAY_SIZE(evs), more ? 0 : prev_expire(&k));

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n && !k.stopping; i++) {
			void *p = evs[i].data.ptr;

			if (p == &env->ctl_fd) {
				if (ipc_dispatch(env->ctl_fd, &k.ctl_in, &k, CTL_PER_WAKE) < 0)
					k.stopping = true;
			} else if (p == &k.timerfd) {
				uint64_t ticks;

				(void)!read(k.timerfd, &ticks, sizeof(ticks));
				tickets_rotate(&k);
			} else {
				struct keys_chan *ch = p;

				if (evs[i].events & EPOLLOUT)
					chan_flush(ch);
				if (evs[i].events & EPOLLIN)
					chan_read(ch);
			}
		}
		more = serve_round_robin(&k);
		/* A queue that had been full has room again: its channel is read. */
		for (unsigned i = 0; i < env->nworkers; i++)
			chan_arm(&k.chans[i]);
	}
	keys_teardown(&k);
	return 0;
}
