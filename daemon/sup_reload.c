/*
 * sup_reload.c - SIGHUP: reload the configuration, as a transaction.
 *
 * Owns the table of how each key reaches the running daemon (cfg_fields)
 * and the comparison with the running configuration. The new file is
 * parsed and checked whole and new listen addresses bound (sup_listen.c)
 * before anything changes; then what can change live is copied into the
 * running configuration and sent to every child, and the rest is named as
 * waiting for a restart. docs/arch.md ("Control plane") tells the story.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "auth.h"
#include "ipc.h"
#include "log.h"
#include "supervisor_int.h"

/*
 * How a changed key reaches the running daemon. APPLY_LOG: every process
 * takes the new logging settings at once (IPC_LOG_SETTINGS). APPLY_LIVE:
 * a limit; every child gets the whole new configuration (IPC_CONFIG) and
 * reads it at its next use of the limit, so new packets and new
 * connections follow it while live connections stay. APPLY_RESTART: it
 * sizes the processes, their identity or the store that the running state
 * lives in; it takes effect at the next start of iotd. APPLY_AUTH: what
 * the auth role was set up with (which files, shut in by Landlock, how
 * many threads): the new files are read first, and a file that does not
 * parse fails the whole reload; then the auth role is replaced (or
 * started, or stopped) and every child gets the configuration. Listen
 * addresses have their own path (listen_prepare, listen_commit).
 */
enum apply { APPLY_LOG, APPLY_LIVE, APPLY_AUTH, APPLY_RESTART };

struct cfg_field {
	const char *name;
	size_t off, size;
	bool is_string;
	enum apply how;
};

#define CF(name, f, str, how) \
	{ name, offsetof(struct iotd_config, f), sizeof(((struct iotd_config *)0)->f), str, how }

static const struct cfg_field cfg_fields[] = {
	CF("server.workers", workers, false, APPLY_RESTART),
	CF("server.max_connections", max_connections, false, APPLY_LIVE),
	CF("server.max_sessions", max_sessions, false, APPLY_LIVE),
	CF("server.max_subscriptions_per_session", max_subscriptions_per_session, false, APPLY_LIVE),
	CF("server.max_connections_per_address", max_connections_per_address, false, APPLY_LIVE),
	CF("server.max_connect_rate_per_address", max_connect_rate_per_address, false, APPLY_LIVE),
	CF("server.placement_slack", placement_slack, false, APPLY_LIVE),
	CF("server.session_timeout_secs", session_timeout_secs, false, APPLY_LIVE),
	CF("server.max_session_expiry_interval", max_session_expiry_interval, false, APPLY_LIVE),
	CF("server.keep_alive_timeout_secs", keep_alive_timeout_secs, false, APPLY_LIVE),
	CF("server.max_keepalive", max_keepalive, false, APPLY_LIVE),
	CF("server.connect_timeout", connect_timeout, false, APPLY_LIVE),
	CF("server.max_packet_size", max_packet_size, false, APPLY_LIVE),
	CF("server.max_connect_size", max_connect_size, false, APPLY_LIVE),
	CF("server.max_http_request_size", max_http_request_size, false, APPLY_LIVE),
	CF("server.max_client_id_length", max_client_id_length, false, APPLY_LIVE),
	CF("server.retained_message_limit", retained_message_limit, false, APPLY_LIVE),
	CF("server.retained_bytes_limit", retained_bytes_limit, false, APPLY_LIVE),
	CF("server.memory_limit", memory_limit, false, APPLY_LIVE),
	CF("server.max_inflight", max_inflight, false, APPLY_LIVE),
	CF("server.topic_alias_maximum", topic_alias_maximum, false, APPLY_LIVE),
	CF("server.topic_alias_maximum_out", topic_alias_maximum_out, false, APPLY_LIVE),
	CF("server.topic_alias_max_bytes", topic_alias_max_bytes, false, APPLY_LIVE),
	CF("server.max_queued_messages", max_queued_messages, false, APPLY_LIVE),
	CF("server.max_queued_bytes", max_queued_bytes, false, APPLY_LIVE),
	CF("server.max_queued_bytes_total", max_queued_bytes_total, false, APPLY_LIVE),
	CF("server.max_inflight_bytes", max_inflight_bytes, false, APPLY_LIVE),
	CF("server.max_output_bytes", max_output_bytes, false, APPLY_LIVE),
	CF("server.max_router_backlog_bytes", max_router_backlog_bytes, false, APPLY_LIVE),
	CF("server.queue_qos0_messages", queue_qos0_messages, false, APPLY_LIVE),
	CF("server.shared_subscription_policy", shared_subscription_policy, true, APPLY_LIVE),
	CF("server.max_topic_levels", max_topic_levels, false, APPLY_LIVE),
	CF("server.max_topic_length", max_topic_length, false, APPLY_LIVE),
	CF("server.user", user, true, APPLY_RESTART),
	CF("auth.enabled", auth_enabled, false, APPLY_LIVE),
	CF("auth.backend", auth_backend, true, APPLY_AUTH),
	CF("auth.password_file", auth_password_file, true, APPLY_AUTH),
	CF("auth.acl_file", auth_acl_file, true, APPLY_AUTH),
	CF("auth.jwt_key_file", auth_jwt_key_file, true, APPLY_AUTH),
	CF("auth.hash_threads", auth_hash_threads, false, APPLY_AUTH),
	CF("auth.allow_anonymous", auth_allow_anonymous, false, APPLY_LIVE),
	CF("auth.jwt_username_claim", auth_jwt_username_claim, true, APPLY_LIVE),
	CF("auth.jwt_read_claim", auth_jwt_read_claim, true, APPLY_LIVE),
	CF("auth.jwt_write_claim", auth_jwt_write_claim, true, APPLY_LIVE),
	CF("auth.jwt_leeway", auth_jwt_leeway, false, APPLY_LIVE),
	CF("auth.max_pending", auth_max_pending, false, APPLY_LIVE),
	CF("auth.max_failure_delay_ms", auth_max_failure_delay_ms, false, APPLY_LIVE),
	CF("auth.max_waiting_per_address", auth_max_waiting_per_address, false, APPLY_LIVE),
	/* Which files the key role reads (Landlock) and how the workers use them: at start. */
	CF("tls.cert_file", tls_cert_file, true, APPLY_RESTART),
	CF("tls.key_file", tls_key_file, true, APPLY_RESTART),
	CF("tls.ca_file", tls_ca_file, true, APPLY_RESTART),
	CF("tls.ca_path", tls_ca_path, true, APPLY_RESTART),
	CF("tls.crl_file", tls_crl_file, true, APPLY_RESTART),
	CF("tls.require_certificate", tls_require_certificate, false, APPLY_RESTART),
	CF("tls.use_identity_as_username", tls_use_identity_as_username, false, APPLY_RESTART),
	CF("tls.min_version", tls_min_version, true, APPLY_RESTART),
	CF("tls.ciphers", tls_ciphers, true, APPLY_RESTART),
	CF("tls.ciphersuites", tls_ciphersuites, true, APPLY_RESTART),
	CF("tls.groups", tls_groups, true, APPLY_RESTART),
	CF("tls.certificate", tls_named, false, APPLY_RESTART),
	CF("tls.certificate", n_tls_named, false, APPLY_RESTART),
	CF("tls.handshake_timeout", tls_handshake_timeout, false, APPLY_LIVE),
	CF("tls.max_pending_signs", tls_max_pending_signs, false, APPLY_RESTART),
	CF("storage.backend", storage_backend, true, APPLY_RESTART),
	CF("storage.path", storage_path, true, APPLY_RESTART),
	CF("logging.level", log_level, false, APPLY_LOG),
	CF("logging.format", log_format, false, APPLY_LOG),
};

static bool field_differs(const struct cfg_field *f, const struct iotd_config *a,
			  const struct iotd_config *b)
{
	const char *pa = (const char *)a + f->off, *pb = (const char *)b + f->off;

	if (f->is_string)
		return strncmp(pa, pb, f->size) != 0;
	return memcmp(pa, pb, f->size) != 0;
}

/* Addresses, or what one of them serves (its transport, its WebSocket path), changed. */
static bool listen_differs(const struct iotd_config *a, const struct iotd_config *b)
{
	if (a->n_listen != b->n_listen)
		return true;
	for (int i = 0; i < a->n_listen; i++)
		if (!listen_addr_equal(&a->listen[i], &b->listen[i]) ||
		    a->listen[i].transport != b->listen[i].transport ||
		    strcmp(a->listen[i].path, b->listen[i].path) != 0 ||
		    a->listen[i].tls != b->listen[i].tls)
			return true;
	return false;
}

/*
 * True when `next` differs from the running configuration in a key the
 * table above does not know (one added to config.h later): such a change
 * is reported as waiting for a restart rather than silently ignored.
 */
static bool other_fields_differ(const struct iotd_config *cur, const struct iotd_config *next)
{
	struct iotd_config a = *cur, b = *next;

	for (size_t i = 0; i < ARRAY_SIZE(cfg_fields); i++)
		memcpy((char *)&b + cfg_fields[i].off, (char *)&a + cfg_fields[i].off,
		       cfg_fields[i].size);
	memcpy(b.listen, a.listen, sizeof(a.listen));
	b.n_listen = a.n_listen;
	memcpy(b.path, a.path, sizeof(a.path));
	return memcmp(&a, &b, sizeof(a)) != 0;
}

/* Does next change what the auth role was set up with? */
static bool auth_setup_differs(const struct iotd_config *cur, const struct iotd_config *next)
{
	for (size_t i = 0; i < ARRAY_SIZE(cfg_fields); i++)
		if (cfg_fields[i].how == APPLY_AUTH && field_differs(&cfg_fields[i], cur, next))
			return true;
	return false;
}

/*
 * After the configuration was taken: an auth role set up anew (replaced,
 * started or stopped as the configuration now asks), or told to read its
 * files again.
 */
static void auth_apply(struct supervisor *sv, bool setup_changed)
{
	struct child *c = child_of_role(sv, ROLE_AUTH);
	bool wanted = child_wanted(sv, c);

	if (c->state == CHILD_DOWN) {
		if (wanted && c->restart_at_ms == 0)
			c->restart_at_ms = clock_ms();     /* restart_due_children forks it */
		return;
	}
	if (!setup_changed && wanted) {
		if (ipc_send(c->ctl_fd, IPC_AUTH_RELOAD, 0, NULL, 0, -1) < 0)
			log_warn("cannot ask the auth role to read its files again: %s",
				 strerror(errno));
		return;
	}
	/* A successor inherits the new configuration; one no longer wanted stays down. */
	if (ipc_send(c->ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1) == 0)
		c->replacing = true;
	else
		log_warn("cannot ask the auth role to restart: %s", strerror(errno));
}

/*
 * The key role reads its files again on every reload, as a transaction
 * (a file it cannot use changes nothing, logged there). Other paths, and
 * TLS switched on or off, wait for a restart of iotd (APPLY_RESTART).
 */
static void keys_apply(struct supervisor *sv)
{
	struct child *c = child_of_role(sv, ROLE_KEYS);

	if (c->state != CHILD_RUNNING)
		return;
	if (ipc_send(c->ctl_fd, IPC_KEYS_RELOAD, 0, NULL, 0, -1) < 0)
		log_warn("cannot ask the key role to read its files again: %s", strerror(errno));
}

/* What main() checks at start is checked at reload: files the auth role would not read. */
static int auth_files_refused(const struct supervisor *sv, const struct iotd_config *next,
			      char *err, size_t len)
{
	if (!auth_setup_differs(sv->cfg, next))
		return 0;
	return auth_files_check(next, err, len);
}

/*
 * The largest max_packet_size the rings made at start can carry: create_shm()
 * would have made rings of the same size for it.
 */
static long ring_packet_max(const struct supervisor *sv)
{
	return (long)(sv->shm.ring_size / 2) - 65536;
}

static void append_name(char *list, size_t len, const char *name)
{
	size_t used = strlen(list);

	snprintf(list + used, len - used, "%s%s", used ? ", " : "", name);
}

static void broadcast(struct supervisor *sv, uint32_t type, const void *data, size_t len)
{
	char name[32];

	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->state == CHILD_DOWN || c->ctl_fd < 0)
			continue;
		if (ipc_send(c->ctl_fd, type, c->index, data, len, -1) < 0)
			log_warn("cannot send the new settings to %s: %s",
				 child_name(c, name, sizeof(name)), strerror(errno));
	}
}

/* Ask the listener to exit; child_exited() forks its successor at once. */
static void replace_listener(struct supervisor *sv)
{
	for (unsigned i = 0; i < sv->n_children; i++) {
		struct child *c = &sv->children[i];

		if (c->role != ROLE_LISTENER || c->state == CHILD_DOWN)
			continue;
		if (ipc_send(c->ctl_fd, IPC_SHUTDOWN, 0, NULL, 0, -1) == 0)
			c->replacing = true;
		else
			log_warn("cannot ask the listener to restart: %s", strerror(errno));
	}
}

/*
 * Take from `next` every key that can change while clients stay
 * connected; name the others. The running configuration only ever holds
 * values that are in force: children forked later (a restart after a
 * crash) inherit it. `set`: the sockets for next's listen addresses when
 * they changed (listen_prepare), else NULL.
 */
static void apply_config(struct supervisor *sv, const struct iotd_config *next,
			 const struct listen_set *set)
{
	char applied[1024] = "", pending[512] = "", note[160];
	bool logging = false, live = false, auth_setup = auth_setup_differs(sv->cfg, next);
	bool auth_mode = config_auth_role(sv->cfg) != config_auth_role(next) ||
			 sv->cfg->auth_allow_anonymous != next->auth_allow_anonymous ||
			 strcmp(sv->cfg->auth_backend, next->auth_backend) != 0;

	for (size_t i = 0; i < ARRAY_SIZE(cfg_fields); i++) {
		const struct cfg_field *f = &cfg_fields[i];

		if (!field_differs(f, sv->cfg, next))
			continue;
		if (f->how == APPLY_RESTART) {
			append_name(pending, sizeof(pending), f->name);
			continue;
		}
		/* A whole packet must fit in a ring record, and the rings keep their size. */
		if (f->off == offsetof(struct iotd_config, max_packet_size) &&
		    next->max_packet_size > ring_packet_max(sv)) {
			snprintf(note, sizeof(note), "%s (above %ld, the most the shared-memory rings "
				 "made at start carry)", f->name, ring_packet_max(sv));
			append_name(pending, sizeof(pending), note);
			continue;
		}
		memcpy((char *)sv->cfg + f->off, (const char *)next + f->off, f->size);
		append_name(applied, sizeof(applied), f->name);
		logging |= f->how == APPLY_LOG;
		live |= f->how == APPLY_LIVE || f->how == APPLY_AUTH;
	}
	if (set != NULL) {
		listen_commit(sv, next, set);
		memcpy(sv->cfg->listen, next->listen, sizeof(next->listen));
		sv->cfg->n_listen = next->n_listen;
		append_name(applied, sizeof(applied), "server.listen_addresses");
	} else if (listen_differs(sv->cfg, next)) {
		append_name(pending, sizeof(pending),
			    "server.listen_addresses (ignored: systemd passes the sockets)");
	}
	if (other_fields_differ(sv->cfg, next))
		append_name(pending, sizeof(pending), "other keys");
	if (logging) {
		struct log_settings ls;

		log_set_level(sv->cfg->log_level);
		log_set_format(sv->cfg->log_format);
		log_get_settings(&ls);
		broadcast(sv, IPC_LOG_SETTINGS, &ls, sizeof(ls));
	}
	if (live)
		broadcast(sv, IPC_CONFIG, sv->cfg, sizeof(*sv->cfg));
	if (set != NULL)
		replace_listener(sv);
	auth_apply(sv, auth_setup);
	keys_apply(sv);
	if (auth_mode)
		log_auth_mode(sv->cfg);
	if (!applied[0] && !pending[0])
		log_info("configuration reloaded: nothing changed");
	else
		log_info("configuration reloaded: applied: %s; after a restart of iotd: %s",
			 applied[0] ? applied : "nothing", pending[0] ? pending : "nothing");
}

/*
 * The certificates stay those of the start (the key role's and the
 * workers' slots) until a restart: each TLS listen address of next gets
 * the index its certificate has among them, by name (so that sections
 * moved in the file change nothing), and one whose certificate is not
 * among them refuses the reload.
 */
static int listen_certs_resolve(const struct supervisor *sv, struct iotd_config *next,
				char *err, size_t len)
{
	const struct iotd_config *cur = sv->cfg;

	for (int i = 0; i < next->n_listen; i++) {
		struct listen_addr *la = &next->listen[i];

		if (!listen_transport_tls(la->transport))
			continue;
		la->tls = la->tls_name[0] || cur->tls_cert_file[0] == '\0' ? -1 : 0;
		for (int j = 0; j < cur->n_tls_named && la->tls_name[0]; j++)
			if (strcmp(cur->tls_named[j].name, la->tls_name) == 0)
				la->tls = 1 + j;
		if (la->tls >= 0)
			continue;
		snprintf(err, len, "server.listen_addresses: %s://%s:%s%s%s presents a certificate "
			 "that is read at the next start of iotd, not at a reload",
			 listen_transport_name(la->transport), la->host[0] ? la->host : "*", la->port,
			 la->tls_name[0] ? "?tls=" : "", la->tls_name);
		return -1;
	}
	return 0;
}

/*
 * SIGHUP. A transaction: the new file is parsed and checked whole, and
 * new listen addresses are bound; if anything fails, nothing changes
 * (never a fall-back to defaults, never half a configuration).
 */
void reload_config(struct supervisor *sv)
{
	struct iotd_config next;
	struct listen_set set = { .n = 0 };
	struct timespec ts;
	char err[CONFIG_ERR_LEN];
	bool rebind;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
	if (config_load(&next, sv->args, environ, err, sizeof(err)) < 0 ||
	    auth_files_refused(sv, &next, err, sizeof(err)) < 0 ||
	    listen_certs_resolve(sv, &next, err, sizeof(err)) < 0)
		goto fail;
	rebind = !sv->socket_activated && listen_differs(sv->cfg, &next);
	if (rebind && listen_prepare(sv, &next, &set, err, sizeof(err)) < 0)
		goto fail;
	apply_config(sv, &next, rebind ? &set : NULL);
	goto done;
fail:
	log_error("reload failed, keeping the running configuration: %s", err);
done:
	sd_notify(0, "READY=1");
	notify_status(sv);
}
