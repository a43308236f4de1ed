/*
 * worker.c - a session worker: the process that serves the client
 * connections it was handed.
 *
 * Owns: the client sockets, their read and write buffers, keep-alive and
 * connect deadlines, and the QoS state of its connected clients (the
 * in-flight window and the queue behind it for outbound QoS 1/2 messages,
 * and the inbound QoS 2 ids awaiting PUBREL). It decodes every packet,
 * answers what it can alone (PUBACK/PUBREC/PUBCOMP, PINGRESP), and sends
 * the rest to the router over its ring: CONNECT, SUBSCRIBE, UNSUBSCRIBE,
 * PUBLISH, and the state a persistent session leaves behind when it
 * closes. The router answers CONNACK, SUBACK, UNSUBACK and sends the
 * deliveries, one record per message for all of this worker's targets.
 *
 * One epoll loop; replies and deliveries are appended to per-connection
 * output buffers and flushed once per loop turn, ring records are
 * committed once per turn, and the router is woken only if it sleeps.
 *
 * This file is the process: set-up and teardown, the loop, the control
 * socket, the 1 s tick (deadlines, counters, heap trim), the connections
 * the listener hands over and the address reports it hears back, and the
 * throttling of reads. The connections are worker_conn.c's, their MQTT
 * packets worker_mqtt.c's, the ring records worker_records.c's (see
 * worker_int.h).
 */
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "worker_int.h"
#include "worker_tls.h"
#include "worker_transport.h"

#define BACKLOG_HIGH (8u << 20)  /* stop reading clients past this much unsent to the router */
#define BACKLOG_LOW (2u << 20)   /* ... and read again below this */
#define REPORTS_SLACK 4096       /* address reports kept beyond two per connection held */

/*
 * Connections taken per loop turn, so that a burst of them does not hold
 * up the clients already served. Messages are taken whole: a turn may
 * take up to IPC_MAX_FDS - 1 more.
 */
#define ACCEPT_PER_TURN 64

/* --- address reports to the listener ----------------------------------- */

static bool report_push(struct worker *w, uint32_t op, uint64_t token, const struct addr_key *k)
{
	struct addr_reports *r = &w->reports;
	struct ipc_addr_entry *e;

	if (r->n == r->cap) {
		uint32_t cap = r->cap ? r->cap * 2 : 64;

		e = reallocarray(r->e, cap, sizeof(*e));
		if (e == NULL)
			return false;
		r->e = e;
		r->cap = cap;
	}
	e = &r->e[r->n++];
	*e = (struct ipc_addr_entry){ .op = op, .token = token };
	if (k != NULL)
		memcpy(e->key, k->b, sizeof(e->key));
	return true;
}

/*
 * The reports cannot be kept: drop them and have the listener ask for
 * every connection held again. Nothing more is queued until it does.
 */
static void reports_lost(struct worker *w)
{
	struct addr_reports *r = &w->reports;

	if (r->lost)
		return;
	r->n = 0;
	r->lost = true;
	if (!report_push(w, IPC_ADDR_LOST, 0, NULL))
		log_error("out of memory for an address report to the listener; its "
			  "per-address counts stay as they are");
}

/* A connection the listener handed this worker is gone. */
void report_gone(struct worker *w, const char *remote)
{
	struct addr_reports *r = &w->reports;
	struct addr_key k;

	if (r->lost || !addr_key_from_remote(remote, &k))
		return;
	/* A listener that reads nothing costs about what a sync answer would. */
	if (r->n >= 2 * w->n_conns + REPORTS_SLACK) {
		log_warn("the listener reads no address reports (%u waiting); dropping them", r->n);
		reports_lost(w);
	} else if (!report_push(w, IPC_ADDR_GONE, 0, &k)) {
		log_error("out of memory for an address report to the listener; dropping them");
		reports_lost(w);
	}
}

/* IPC_ADDR_SYNC: what waits is old news; the answer is every connection held now. */
static void answer_sync(struct worker *w, uint64_t token)
{
	struct addr_reports *r = &w->reports;
	struct addr_key k;

	r->n = 0;
	r->lost = false;
	if (!report_push(w, IPC_ADDR_RESET, token, NULL))
		goto oom;
	for (uint32_t i = 0; i < w->n_slots; i++) {
		const struct conn *c = w->slots[i];

		if (c != NULL && addr_key_from_remote(c->remote, &k) &&
		    !report_push(w, IPC_ADDR_HELD, 0, &k))
			goto oom;
	}
	return;
oom:
	log_error("out of memory answering the listener's address sync");
	reports_lost(w);
}

static void reports_flush(struct worker *w)
{
	struct addr_reports *r = &w->reports;
	uint32_t sent = 0;

	while (sent < r->n) {
		uint32_t k = MIN(r->n - sent, (uint32_t)IPC_ADDR_ENTRIES_MAX);

		if (ipc_send(w->env->chan_worker[w->index], IPC_ADDR_REPORT, w->index, &r->e[sent],
			     k * sizeof(*r->e), -1) < 0) {
			/* Full: the rest goes at a later turn. */
			if (errno != EAGAIN && !r->send_failed_logged) {
				log_error("cannot send address reports to the listener: %s",
					  strerror(errno));
				r->send_failed_logged = true;
			}
			break;
		}
		sent += k;
	}
	if (sent == 0)
		return;
	memmove(r->e, r->e + sent, (size_t)(r->n - sent) * sizeof(*r->e));
	r->n -= sent;
	/* A large sync answer leaves a large array behind. */
	if (r->n == 0 && r->cap > REPORTS_SLACK) {
		free(r->e);
		r->e = NULL;
		r->cap = 0;
	}
}

/* --- throttling --------------------------------------------------------- */

/*
 * When the router is behind (or restarting) its ring fills and records pile
 * up here. Rather than grow without bound, stop reading from clients: TCP
 * then pushes back on the publishers. Reading resumes once the backlog
 * has drained below the low-water mark.
 */
static void throttle_update(struct worker *w)
{
	bool pressure = atomic_load_explicit(&w->env->shm.sup->memory_pressure,
					     memory_order_relaxed);

	if (!w->throttled && (w->out.bytes > BACKLOG_HIGH || pressure)) {
		w->throttled = true;
		if (pressure)
			log_warn("memory_limit reached; pausing reads from clients");
		else
			log_warn("router is behind (%zu bytes waiting); pausing reads from clients",
				 w->out.bytes);
	} else if (w->throttled && w->out.bytes < BACKLOG_LOW && !pressure) {
		w->throttled = false;
		log_info("reading from clients again");
		for (uint32_t i = 0; i < w->n_slots; i++) {
			struct conn *c = w->slots[i];

			if (c != NULL && c->throttled) {
				c->throttled = false;
				conn_set_events(w, c);
			}
		}
	}
}

static void throttle_conn(struct worker *w, struct conn *c)
{
	c->throttled = true;
	conn_set_events(w, c);
}

static bool out_over_cap(const struct worker *w, const struct conn *c)
{
	return buf_held(c->out) > (size_t)w->cfg->max_output_bytes;
}

/* See out_drained(): logged once per episode, as the slow reader's QoS 0 drops are. */
static void hold_back_reader(struct worker *w, struct conn *c)
{
	log_client(LOG_LVL_WARN, conn_client_id(c), c->remote,
		   "%zu bytes of output unsent (max_output_bytes); not reading it until they "
		   "drain", buf_held(c->out));
	c->out_full = true;
	conn_set_events(w, c);
}

/* --- accepting the connections the listener hands over ------------------ */

/*
 * How many connections the listener counted as handed in this message:
 * one per struct ipc_client in its payload, whether or not their fds
 * made it. Nothing else comes over the channel.
 */
static unsigned handed_in(const struct ipc_hdr *hdr)
{
	if (hdr->type != IPC_CLIENT_FD)
		return 0;
	return MIN(hdr->len / sizeof(struct ipc_client), (unsigned)IPC_MAX_FDS);
}

/* Returns how many of the message's connections were taken; every other fd is closed. */
static unsigned take_clients(struct worker *w, struct ipc_msg *m)
{
	struct ipc_client *info = m->data;
	unsigned taken = 0;

	/* One fd per struct ipc_client, in the same order; anything else is not ours to guess. */
	if (m->nfds == 0 || m->hdr.len != m->nfds * sizeof(*info)) {
		log_error("a malformed hand-over from the listener (%u fds, %u bytes); "
			  "closing its connections", m->nfds, m->hdr.len);
		reports_lost(w);    /* their addresses are not to be trusted */
		for (unsigned i = 0; i < m->nfds; i++)
			close(m->fds[i]);
		return 0;
	}
	for (unsigned i = 0; i < m->nfds; i++) {
		info[i].remote[sizeof(info[i].remote) - 1] = '\0';
		if (conn_new(w, m->fds[i], &info[i]))       /* it closes the fd when it cannot take it */
			taken++;
		else
			report_gone(w, info[i].remote);
	}
	return taken;
}

/* Count a message's connections against this turn; IPC_STOP once it is full. */
static int accept_turn_over(struct worker *w, unsigned handed)
{
	w->accept_turn += MAX(handed, 1u);
	return w->accept_turn >= ACCEPT_PER_TURN ? IPC_STOP : 0;
}

/* IPC_CLIENT_FD */
static int on_clients(void *ctx, struct ipc_msg *m)
{
	struct worker *w = ctx;
	struct shm_worker *ws = w->env->shm.worker[w->index];
	unsigned handed = handed_in(&m->hdr), taken;

	/* At once: should this worker die now, the supervisor counts them as gone. */
	atomic_fetch_add(&ws->accepted, handed);
	taken = take_clients(w, m);
	if (handed > taken)
		atomic_fetch_add(&ws->released, handed - taken);
	return accept_turn_over(w, handed);
}

/* IPC_ADDR_SYNC */
static int on_addr_sync(void *ctx, struct ipc_msg *m)
{
	uint64_t token;

	memcpy(&token, m->data, sizeof(token));
	answer_sync(ctx, token);
	return accept_turn_over(ctx, 0);
}

/*
 * A message dropped whole (ipc_dispatch logged why), its fds closed: the
 * connections it named are counted as taken and gone, and what the
 * listener knows of our addresses can no longer be trusted.
 */
static void listener_message_refused(void *ctx, const struct ipc_hdr *hdr)
{
	struct worker *w = ctx;
	struct shm_worker *ws = w->env->shm.worker[w->index];
	unsigned handed = handed_in(hdr);

	atomic_fetch_add(&ws->accepted, handed);
	atomic_fetch_add(&ws->released, handed);
	if (handed > 0)
		log_error("a hand-over of %u connection(s) from the listener was dropped; "
			  "they are closed", handed);
	reports_lost(w);
	w->accept_turn += MAX(handed, 1u);
}

static const struct ipc_handler from_listener[IPC_TYPE_MAX] = {
	[IPC_CLIENT_FD] = { .fn = on_clients, .unit = sizeof(struct ipc_client),
			    .max_len = IPC_MAX_FDS * sizeof(struct ipc_client),
			    .max_fds = IPC_MAX_FDS },
	[IPC_ADDR_SYNC] = { .fn = on_addr_sync, IPC_LEN(sizeof(uint64_t)) },
};

static void accept_clients(struct worker *w)
{
	w->accept_turn = 0;
	/* No EOF can come: the supervisor holds both ends. */
	ipc_dispatch(w->env->chan_worker[w->index], &w->chan_in, w, ACCEPT_PER_TURN);
}

/* --- timers, control, loop ---------------------------------------------- */

static void check_deadlines(struct worker *w)
{
	uint64_t connect_ms = (uint64_t)w->cfg->connect_timeout * 1000;
	uint64_t handshake_ms = (uint64_t)w->cfg->tls_handshake_timeout * 1000;

	for (uint32_t i = 0; i < w->n_slots; i++) {
		struct conn *c = w->slots[i];
		uint64_t idle;

		if (c == NULL)
			continue;
		idle = w->now_ms - c->last_rx_ms;
		if (c->xp != NULL && xport_handshaking(c->xp)) {
			if (idle >= handshake_ms)
				conn_close(w, c, false, "TLS handshake not finished within "
					   "tls.handshake_timeout");
		} else if (c->state == CS_NEW && connect_ms > 0 && idle >= connect_ms)
			conn_close(w, c, false, "no CONNECT within connect_timeout");
		else if (c->state == CS_AUTHENTICATING && connect_ms > 0 && idle >= connect_ms)
			conn_refuse(w, c, MQTT_CONNACK_UNAVAILABLE,
				    "no verdict from the auth role within connect_timeout");
		else if (c->state == CS_ACTIVE && c->keepalive > 0 &&
			 idle >= (uint64_t)c->keepalive * 1500)
			conn_disconnect(w, c, MQTT5_RC_KEEP_ALIVE_TIMEOUT, true,
					"keep-alive timeout");
	}
}

/*
 * A reloaded configuration (IPC_CONFIG). Limits are read at each use, so
 * new packets and new connections follow them; what was derived from them
 * is derived again, and a raised max_inflight sends what waited behind the
 * old window at once instead of at the next acknowledgement.
 */
static void worker_config_changed(struct worker *w)
{
	for (uint32_t i = 0; i < w->n_slots; i++) {
		struct conn *c = w->slots[i];

		if (c != NULL && out_drained(w, c))
			conn_set_events(w, c);
		if (c != NULL && c->state == CS_ACTIVE && c->qos != NULL && c->qos->n_pending > 0)
			pending_pump(w, c);
	}
}

/* --- what the supervisor says -------------------------------------------- */

#define CTL_PER_WAKE 16              /* messages read from the supervisor per wake-up */

static int on_shutdown(void *ctx, struct ipc_msg *m)
{
	((struct worker *)ctx)->stopping = true;
	return IPC_STOP;
}

static int on_config(void *ctx, struct ipc_msg *m)
{
	struct worker *w = ctx;

	if (role_take_config(w->env, m->data, m->hdr.len) == 0) {
		worker_config_changed(w);
		worker_auth_config_changed(w);
	}
	return 0;
}

static const struct ipc_handler from_supervisor[IPC_TYPE_MAX] = {
	[IPC_SHUTDOWN] = { .fn = on_shutdown },
	ROLE_SUPERVISOR_ENTRIES(on_config),
};

/* Returns false when the worker must stop: told to, or the supervisor is gone. */
static bool control_message(struct worker *w)
{
	return ipc_dispatch(w->env->ctl_fd, &w->ctl_in, w, CTL_PER_WAKE) >= 0 && !w->stopping;
}

static void publish_counters(struct worker *w)
{
	struct shm_worker *ws = w->env->shm.worker[w->index];

	if (w->msgs_in) {
		atomic_fetch_add_explicit(&ws->msgs_in, w->msgs_in, memory_order_relaxed);
		w->msgs_in = 0;
	}
	if (w->msgs_out) {
		atomic_fetch_add_explicit(&ws->msgs_out, w->msgs_out, memory_order_relaxed);
		w->msgs_out = 0;
	}
}

static int worker_setup(struct worker *w, struct role_env *env)
{
	struct itimerspec its = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };

	w->env = env;
	w->cfg = env->cfg;
	w->index = env->index;
	w->epoch = env->epoch;
	ipc_dispatcher_init(&w->ctl_in, from_supervisor, w->index, "the supervisor");
	ipc_dispatcher_init(&w->chan_in, from_listener, w->index, "the listener");
	w->chan_in.refused = listener_message_refused;
	recw_init(&w->rw);
	w->rbuf = malloc(READ_CHUNK);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (w->rbuf == NULL || w->epfd < 0 || w->timerfd < 0 ||
	    timerfd_settime(w->timerfd, 0, &its, NULL) < 0)
		return -1;
	/*
	 * The router read our predecessor's records to the end before we were
	 * forked (IPC_WORKER_DOWN_DONE): start where it stands, whatever a
	 * faulty predecessor left in our own memory.
	 */
	shmring_producer_attach_at_tail(&w->prod, &env->shm.w2r[w->index]);
	ringout_init(&w->out, &w->prod);
	/*
	 * What the router sent our predecessor is read like anything else:
	 * those connections are of an older epoch, so no lookup finds them,
	 * and QoS 1/2 deliveries among them go back to the router for their
	 * (now offline) sessions instead of being lost. A position the
	 * predecessor left that the router's ring cannot have is skipped.
	 */
	if (!shmring_consumer_attach(&w->cons, &env->shm.r2w[w->index])) {
		log_error("the ring from the router: our predecessor left an impossible position; "
			  "skipping what it holds");
		shmring_discard(&w->cons);
		/* Before READY: the router must see the repaired tail, never the old one. */
		shmring_release(&w->cons);
	}
	/* The wake-up eventfd edge-triggered: no read to re-arm it, one syscall less. */
	if (epoll_watch(w->epfd, w->timerfd, EPOLLIN, &w->timerfd) < 0 ||
	    epoll_watch(w->epfd, env->ctl_fd, EPOLLIN, &env->ctl_fd) < 0 ||
	    epoll_watch(w->epfd, env->worker_efd[w->index], EPOLLIN | EPOLLET,
			&env->worker_efd[w->index]) < 0 ||
	    epoll_watch(w->epfd, env->chan_worker[w->index], EPOLLIN,
			&env->chan_worker[w->index]) < 0)
		return -1;
	if (config_tls(w->cfg)) {
		w->tls = tls_worker_new(w->cfg, w->index, env->keys_chan_worker[w->index]);
		if (w->tls == NULL || epoll_watch(w->epfd, env->keys_chan_worker[w->index], EPOLLIN,
						  &env->keys_chan_worker[w->index]) < 0)
			return -1;
	}
	return worker_auth_setup(w);
}

void worker_teardown(struct worker *w)
{
	ring_commit(w);
	ringout_clear(&w->out);
	free(w->slots);
	free(w->pub_props.p);
	free(w->sub_id_props.p);
	free(w->serials);
	free(w->free_slots);
	free(w->rbuf);
	recw_free(&w->rw);
	routes_free(&w->routes);
	free(w->rt_scratch);
	shmring_consumer_detach(&w->cons);
	free(w->reports.e);
	worker_auth_free(w);
	tls_worker_free(w->tls);
	close(w->epfd);
	close(w->timerfd);
}

int worker_main(struct role_env *env)
{
	struct worker w = { 0 };
	struct epoll_event evs[256];
	struct shm_worker *ws;

	if (worker_setup(&w, env) < 0)
		fatal("worker setup failed: %s", strerror(errno));
	/*
	 * Our own counts start from nothing: whatever our predecessor left in
	 * them is its claim, not ours (the listener counts from when it saw
	 * our epoch). READY then tells the supervisor we serve.
	 */
	ws = env->shm.worker[w.index];
	atomic_store(&ws->accepted, 0);
	atomic_store(&ws->released, 0);
	ipc_send(env->ctl_fd, IPC_READY, w.index, NULL, 0, -1);
	while (!w.stopping) {
		int timeout = shmring_prepare_sleep(&w.cons) ? -1 : 0;
		int n = epoll_wait(w.epfd, evs, (int)ARRAY_SIZE(evs), timeout);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		shmring_awake(&w.cons);
		w.now_ms = clock_ms();
		throttle_update(&w);     /* memory_limit may have been reached while we slept */
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &w.timerfd) {
				uint64_t ticks;

				(void)!read(w.timerfd, &ticks, sizeof(ticks));
				check_deadlines(&w);
				worker_auth_tick(&w);
				publish_counters(&w);
				if (w.tls != NULL)
					tls_worker_tick(w.tls);
				/* Give large freed blocks back to the system (at once over the ceiling). */
				if (heap_trim_wanted || atomic_load(&env->shm.sup->memory_pressure)) {
					heap_trim_wanted = false;
					malloc_trim(0);
				}
			} else if (p == &env->ctl_fd) {
				if (!control_message(&w))
					w.stopping = true;
			} else if (p == &env->worker_efd[w.index]) {
				continue;   /* the ring is drained below, every turn */
			} else if (p == &env->chan_worker[w.index]) {
				accept_clients(&w);
			} else if (p == &env->auth_chan_worker[w.index]) {
				worker_auth_event(&w, evs[i].events);
			} else if (p == &env->keys_chan_worker[w.index]) {
				unsigned ready = tls_worker_ready_count(w.tls);

				/* No EOF can come: the supervisor holds both ends. */
				if (tls_worker_on_keys(w.tls, xport_keys_answered, &w) < 0)
					log_error("the key role's channel is broken");
				if (tls_worker_ready_count(w.tls) > ready)
					xport_chain_came(&w);
				if (w.tls_jobs_wanted > 0)
					xport_jobs_freed(&w);
			} else {
				struct conn *c = p;

				/* An earlier event of this turn may have closed it. */
				if (c->state == CS_CLOSED)
					continue;
				if (c->xp != NULL && (evs[i].events & EPOLLOUT) &&
				    xport_out_ready(&w, c))
					continue;
				if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP) && c->want_out) {
					if (!conn_flush(&w, c))
						continue;
				}
				if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) ||
				    c->state == CS_CLOSED)
					continue;
				if (w.throttled && c->state == CS_ACTIVE &&
				    !(evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
					throttle_conn(&w, c);
				else if (c->state == CS_ACTIVE && out_over_cap(&w, c) &&
					 !(evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
					hold_back_reader(&w, c);
				else if (c->paused && !c->in_off &&
					 !(evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
					conn_set_events(&w, c);   /* input before its CONNACK: left in the kernel */
				else
					conn_read(&w, c);
			}
		}
		drain_ring(&w);
		ring_commit(&w);
		throttle_update(&w);
		flush_dirty(&w);
		bury_closed(&w);
		reports_flush(&w);
		worker_auth_flush(&w);
	}
	close_all(&w, "broker shutting down");
	bury_closed(&w);
	publish_counters(&w);
	worker_teardown(&w);
	return 0;
}
