/*
 * config.c - the daemon's configuration: the key table, built-in defaults,
 * the checking of one value, and config_load(), which runs the layers in
 * turn (config_file.c, config_env.c, config_args.c) and checks the keys
 * against each other.
 *
 * Owns the key table below: every key's section, name, type, range and
 * destination field. The file, the environment and argv all go through
 * it, so a value is checked the same way wherever it came from. Nothing
 * here logs; errors go back to the caller as one message naming the
 * file and line, the variable or the option that held the bad value.
 */
#include "config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "config_int.h"
#include "iotd.h"
#include "log.h"

/* "tcp://" + "[" + 63-byte host + "]:" + port, with room to spare. */
#define LISTEN_STR_MAX 96

const char *const config_sections[] = { "server", "auth", "tls", "storage", "logging" };
static_assert(ARRAY_SIZE(config_sections) == N_SECTIONS, "N_SECTIONS counts config_sections[]");

/* A backend is added here and in the auth role (daemon/auth_check.c). */
static const char *const auth_backends[] = { "none", "file", "jwt", NULL };
static const char *const storage_backends[] = { "memory", "disk", NULL };
static const char *const share_policies[] = { "round_robin", "hash_publisher", NULL };
static const char *const tls_versions[] = { "tlsv1.2", "tlsv1.3", NULL };

#define FIELD(f) offsetof(struct iotd_config, f), sizeof(((struct iotd_config *)0)->f)
#define KEY_INT(f, lo, hi) { "server", #f, KT_INT, FIELD(f), lo, hi, NULL }
#define KEY_AUTH_INT(name, f, lo, hi) { "auth", name, KT_INT, FIELD(f), lo, hi, NULL }
#define KEY(sec, name, type, f, choices) { sec, name, type, FIELD(f), 0, 0, choices }

/*
 * Upper bounds keep later arithmetic (seconds to milliseconds, counts
 * times sizes) far from overflow; MQTT itself caps keep-alive, topic
 * length and packet identifiers at 16 bits and a packet at 256 MiB plus
 * its fixed header. A server must accept client ids of 23 bytes
 * [MQTT-3.1.3-5]; 64 bytes hold a CONNECT that carries one.
 */
const struct key config_keys[] = {
	KEY("server", "listen_addresses", KT_LISTEN, listen, NULL),
	KEY_INT(workers, 0, IOTD_MAX_WORKERS),
	KEY_INT(max_connections, 1, 1048576),
	KEY_INT(max_sessions, 0, INT_MAX),
	KEY_INT(max_subscriptions_per_session, 0, INT_MAX),
	KEY_INT(max_connections_per_address, 0, 1048576),
	KEY_INT(max_connect_rate_per_address, 0, 1000000),
	KEY_INT(placement_slack, 0, 1000000),
	KEY_INT(session_timeout_secs, 0, INT_MAX),
	KEY_INT(max_session_expiry_interval, 0, UINT32_MAX),
	KEY_INT(keep_alive_timeout_secs, 0, 65535),
	KEY_INT(max_keepalive, 0, 65535),
	KEY_INT(connect_timeout, 1, 3600),
	KEY_INT(max_packet_size, 16, 268435460),
	KEY_INT(max_connect_size, 64, 268435460),
	KEY_INT(max_http_request_size, 512, 65536),
	KEY_INT(max_client_id_length, 23, 65535),
	KEY_INT(retained_message_limit, 1, INT_MAX),
	KEY_INT(retained_bytes_limit, 0, 1L << 40),
	KEY_INT(memory_limit, 0, 1L << 46),
	KEY_INT(max_inflight, 1, 65535),
	KEY_INT(topic_alias_maximum, 0, 65535),
	KEY_INT(topic_alias_maximum_out, 0, 1024),
	KEY_INT(topic_alias_max_bytes, 1, 1L << 30),
	KEY_INT(max_queued_messages, 1, INT_MAX),
	KEY_INT(max_queued_bytes, 0, 1L << 40),
	KEY_INT(max_queued_bytes_total, 0, 1L << 46),
	KEY_INT(max_inflight_bytes, 1, 1L << 40),
	KEY_INT(max_output_bytes, 1024, 1L << 40),
	KEY_INT(max_router_backlog_bytes, 1048576, 1L << 40),
	KEY("server", "queue_qos0_messages", KT_BOOL, queue_qos0_messages, NULL),
	KEY("server", "shared_subscription_policy", KT_CHOICE, shared_subscription_policy,
	    share_policies),
	KEY_INT(max_topic_levels, 1, 65535),
	KEY_INT(max_topic_length, 1, 65535),
	KEY("server", "user", KT_USER, user, NULL),
	KEY("auth", "enabled", KT_BOOL, auth_enabled, NULL),
	KEY("auth", "backend", KT_CHOICE, auth_backend, auth_backends),
	KEY("auth", "password_file", KT_PATH, auth_password_file, NULL),
	KEY("auth", "acl_file", KT_PATH, auth_acl_file, NULL),
	KEY("auth", "allow_anonymous", KT_BOOL, auth_allow_anonymous, NULL),
	KEY("auth", "jwt_key_file", KT_PATH, auth_jwt_key_file, NULL),
	KEY("auth", "jwt_username_claim", KT_NAME, auth_jwt_username_claim, NULL),
	KEY("auth", "jwt_read_claim", KT_NAME, auth_jwt_read_claim, NULL),
	KEY("auth", "jwt_write_claim", KT_NAME, auth_jwt_write_claim, NULL),
	KEY_AUTH_INT("jwt_leeway", auth_jwt_leeway, 0, 86400),
	KEY_AUTH_INT("hash_threads", auth_hash_threads, 1, 64),
	KEY_AUTH_INT("max_pending", auth_max_pending, 1, 65536),
	KEY_AUTH_INT("max_failure_delay_ms", auth_max_failure_delay_ms, 0, 60000),
	KEY_AUTH_INT("max_waiting_per_address", auth_max_waiting_per_address, 0, 65536),
	KEY("tls", "cert_file", KT_PATH, tls_cert_file, NULL),
	KEY("tls", "key_file", KT_PATH, tls_key_file, NULL),
	KEY("tls", "ca_file", KT_PATH, tls_ca_file, NULL),
	KEY("tls", "ca_path", KT_PATH, tls_ca_path, NULL),
	KEY("tls", "crl_file", KT_PATH, tls_crl_file, NULL),
	KEY("tls", "require_certificate", KT_BOOL, tls_require_certificate, NULL),
	KEY("tls", "use_identity_as_username", KT_BOOL, tls_use_identity_as_username, NULL),
	KEY("tls", "min_version", KT_CHOICE, tls_min_version, tls_versions),
	KEY("tls", "ciphers", KT_NAME, tls_ciphers, NULL),
	KEY("tls", "ciphersuites", KT_NAME, tls_ciphersuites, NULL),
	KEY("tls", "groups", KT_NAME, tls_groups, NULL),
	{ "tls", "handshake_timeout", KT_INT, FIELD(tls_handshake_timeout), 1, 300, NULL },
	{ "tls", "max_pending_signs", KT_INT, FIELD(tls_max_pending_signs), 1, 4096, NULL },
	KEY("storage", "backend", KT_CHOICE, storage_backend, storage_backends),
	KEY("storage", "path", KT_PATH, storage_path, NULL),
	KEY("logging", "level", KT_LEVEL, log_level, NULL),
	KEY("logging", "format", KT_FORMAT, log_format, NULL),
};

static_assert(ARRAY_SIZE(config_keys) == N_KEYS, "N_KEYS counts config_keys[]");

void config_defaults(struct iotd_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->listen[0].host, sizeof(cfg->listen[0].host), "127.0.0.1");
	snprintf(cfg->listen[0].port, sizeof(cfg->listen[0].port), "%d", IOTD_DEFAULT_PORT);
	cfg->listen[0].family = AF_INET;
	cfg->n_listen = 1;
	cfg->workers = 0;
	cfg->max_connections = 10000;
	cfg->max_sessions = 100000;
	cfg->max_subscriptions_per_session = 1000;
	cfg->max_connections_per_address = 1000;
	cfg->max_connect_rate_per_address = 100;
	cfg->placement_slack = 8;
	cfg->session_timeout_secs = 300;
	cfg->keep_alive_timeout_secs = 60;
	cfg->max_keepalive = 0;
	cfg->connect_timeout = 10;
	cfg->max_http_request_size = 8192;
	cfg->max_packet_size = 1048576;
	cfg->max_connect_size = 131072;
	cfg->max_client_id_length = 1024;
	cfg->retained_message_limit = 10000;
	cfg->retained_bytes_limit = 67108864;
	cfg->memory_limit = 0;
	cfg->max_inflight = 20;
	cfg->topic_alias_maximum = 10;
	cfg->topic_alias_maximum_out = 10;
	cfg->topic_alias_max_bytes = 65536;
	cfg->max_queued_messages = 1000;
	cfg->max_queued_bytes = 16777216;
	cfg->max_queued_bytes_total = 268435456;
	cfg->max_inflight_bytes = 16777216;
	cfg->max_output_bytes = 2097152;
	cfg->max_router_backlog_bytes = 67108864;
	cfg->queue_qos0_messages = false;
	cfg->max_topic_levels = 128;
	cfg->max_topic_length = 65535;
	snprintf(cfg->user, sizeof(cfg->user), "iotd");
	cfg->auth_enabled = false;
	snprintf(cfg->auth_backend, sizeof(cfg->auth_backend), "none");
	snprintf(cfg->auth_jwt_username_claim, sizeof(cfg->auth_jwt_username_claim), "sub");
	cfg->auth_allow_anonymous = false;
	cfg->auth_jwt_leeway = 0;
	cfg->auth_hash_threads = 2;
	cfg->auth_max_pending = 256;
	cfg->auth_max_failure_delay_ms = 5000;
	cfg->auth_max_waiting_per_address = 8;
	snprintf(cfg->tls_min_version, sizeof(cfg->tls_min_version), "tlsv1.2");
	cfg->tls_handshake_timeout = 10;
	cfg->tls_max_pending_signs = 64;
	snprintf(cfg->storage_backend, sizeof(cfg->storage_backend), "memory");
	snprintf(cfg->shared_subscription_policy, sizeof(cfg->shared_subscription_policy),
		 "round_robin");
	snprintf(cfg->storage_path, sizeof(cfg->storage_path), "/var/lib/iotd");
	cfg->log_level = LOG_LVL_INFO;
	cfg->log_format = LOG_FMT_TEXT;
}

/* ---- values ---- */

/* Quote at most SHOWN_MAX bytes of a value, unprintable bytes as '?'. */
const char *shown(const char *s, char *buf, size_t len)
{
	size_t i;

	for (i = 0; s[i] && i < SHOWN_MAX && i + 4 < len; i++)
		buf[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
	if (s[i]) {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

/* Plain decimal only: "-1", " 5", "+5", "0x10" and "5s" are all refused. */
int parse_long(const char *s, long *out)
{
	char *end;
	long v;

	if (!isdigit((unsigned char)s[0]))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return -1;
	*out = v;
	return 0;
}

static int parse_bool(const char *s)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0)
			return 1;
		if (strcasecmp(s, no[i]) == 0)
			return 0;
	}
	return -1;
}

static void *field(const struct key *k, struct iotd_config *cfg)
{
	return (char *)cfg + k->off;
}

static void store_long(const struct key *k, struct iotd_config *cfg, long v)
{
	if (k->size == sizeof(int))
		*(int *)field(k, cfg) = (int)v;
	else
		*(long *)field(k, cfg) = v;
}

static int store_str(const struct key *k, struct iotd_config *cfg,
		     const char *v, char *why, size_t whylen)
{
	if (strlen(v) >= k->size) {
		snprintf(why, whylen, "longer than %zu bytes", k->size - 1);
		return -1;
	}
	memcpy(field(k, cfg), v, strlen(v) + 1);
	return 0;
}

static int apply_int(const struct key *k, const char *v, struct iotd_config *cfg,
		     char *why, size_t whylen)
{
	long n;

	if (parse_long(v, &n) < 0 || n < k->min || n > k->max) {
		snprintf(why, whylen, "expected an integer in %ld..%ld", k->min, k->max);
		return -1;
	}
	store_long(k, cfg, n);
	return 0;
}

/* A login name in POSIX's portable characters; getpwnam() decides if it exists. */
static int apply_user(const struct key *k, const char *v, struct iotd_config *cfg,
		      char *why, size_t whylen)
{
	size_t n = strspn(v, "abcdefghijklmnopqrstuvwxyz"
			     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");

	if (v[0] == '\0' || v[0] == '-' || v[n] != '\0' || n > 32) {
		snprintf(why, whylen, "expected a user name of up to 32 letters, "
			 "digits, '.', '_' or '-'");
		return -1;
	}
	return store_str(k, cfg, v, why, whylen);
}

static int apply_path(const struct key *k, const char *v, struct iotd_config *cfg,
		      char *why, size_t whylen)
{
	if (v[0] != '/') {
		snprintf(why, whylen, "expected an absolute path");
		return -1;
	}
	for (const char *p = v; *p; p++) {
		if (iscntrl((unsigned char)*p)) {
			snprintf(why, whylen, "control character in path");
			return -1;
		}
	}
	return store_str(k, cfg, v, why, whylen);
}

/* Printable ASCII without blanks or quotes; "" unsets. */
static int apply_name(const struct key *k, const char *v, struct iotd_config *cfg,
		      char *why, size_t whylen)
{
	for (const char *p = v; *p; p++) {
		if (!isgraph((unsigned char)*p) || *p == '"' || *p == '\\') {
			snprintf(why, whylen, "expected printable characters without blanks or quotes");
			return -1;
		}
	}
	return store_str(k, cfg, v, why, whylen);
}

static int apply_choice(const struct key *k, const char *v, struct iotd_config *cfg,
			char *why, size_t whylen)
{
	size_t used = 0;

	for (const char *const *c = k->choices; *c; c++)
		if (strcasecmp(v, *c) == 0)
			return store_str(k, cfg, *c, why, whylen);
	used += (size_t)snprintf(why, whylen, "expected");
	for (const char *const *c = k->choices; *c && used < whylen; c++)
		used += (size_t)snprintf(why + used, whylen - used, "%s '%s'",
					 c == k->choices ? "" : (c[1] ? "," : " or"), *c);
	return -1;
}

static int apply_enum(const struct key *k, const char *v, struct iotd_config *cfg,
		      char *why, size_t whylen)
{
	int n = k->type == KT_LEVEL ? log_level_parse(v) : log_format_parse(v);

	if (n < 0) {
		snprintf(why, whylen, k->type == KT_LEVEL ?
			 "expected 'error', 'warn', 'info' or 'debug'" :
			 "expected 'text' or 'json'");
		return -1;
	}
	store_long(k, cfg, n);
	return 0;
}

int add_listen(struct listen_addr *list, int *n, const char *v,
	       char *why, size_t whylen)
{
	char buf[SHOWN_MAX + 4];

	if (*n >= CONFIG_MAX_LISTEN) {
		snprintf(why, whylen, "more than %d addresses", CONFIG_MAX_LISTEN);
		return -1;
	}
	if (config_parse_listen(v, &list[*n]) < 0) {
		snprintf(why, whylen, "'%s' is not host:port, [v6]:port, tcp://host:port, "
			 ":port, mqtts://host:port[?tls=name], ws://host:port[/path] or "
			 "wss://host:port[/path][?tls=name]", shown(v, buf, sizeof(buf)));
		return -1;
	}
	(*n)++;
	return 0;
}

/* "a:1, [::1]:2": the environment's spelling of a list. */
static int apply_listen_csv(const char *v, struct iotd_config *cfg,
			    char *why, size_t whylen)
{
	struct listen_addr list[CONFIG_MAX_LISTEN];
	char one[LISTEN_STR_MAX];
	int n = 0;

	for (;;) {
		size_t len = strcspn(v, ",");
		const char *start = v;
		size_t skip = strspn(start, " \t");

		start += MIN(skip, len);
		len -= MIN(skip, len);
		while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t'))
			len--;
		if (len >= sizeof(one))
			len = sizeof(one) - 1;	/* too long to be valid: parsing fails */
		memcpy(one, start, len);
		one[len] = '\0';
		if (add_listen(list, &n, one, why, whylen) < 0)
			return -1;
		v += strcspn(v, ",");
		if (*v == '\0')
			break;
		v++;
	}
	memcpy(cfg->listen, list, sizeof(list[0]) * (size_t)n);
	cfg->n_listen = n;
	return 0;
}

/* Check v for key k and store it in cfg; on error explain why. */
int key_apply(const struct key *k, const char *v, struct iotd_config *cfg,
	      char *why, size_t whylen)
{
	int b;

	switch (k->type) {
	case KT_INT:
		return apply_int(k, v, cfg, why, whylen);
	case KT_BOOL:
		b = parse_bool(v);
		if (b < 0) {
			snprintf(why, whylen, "expected true or false");
			return -1;
		}
		*(bool *)field(k, cfg) = b;
		return 0;
	case KT_USER:
		return apply_user(k, v, cfg, why, whylen);
	case KT_PATH:
		return apply_path(k, v, cfg, why, whylen);
	case KT_CHOICE:
		return apply_choice(k, v, cfg, why, whylen);
	case KT_NAME:
		return apply_name(k, v, cfg, why, whylen);
	case KT_LEVEL:
	case KT_FORMAT:
		return apply_enum(k, v, cfg, why, whylen);
	case KT_LISTEN:
		return apply_listen_csv(v, cfg, why, whylen);
	}
	snprintf(why, whylen, "internal error: unknown key type");
	return -1;
}

int key_index(const char *section, const char *name)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(config_keys[i].section, section) == 0 &&
		    strcmp(config_keys[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* ---- one load ---- */

/* Keep the first error: later ones are usually consequences of it. */
void set_err(struct load_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	if (ctx->failed)
		return;
	ctx->failed = true;
	if (!ctx->err || ctx->errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(ctx->err, ctx->errlen, fmt, ap);
	va_end(ap);
	/* Values come from the file: keep escapes off the operator's terminal. */
	for (char *p = ctx->err; *p; p++)
		if (iscntrl((unsigned char)*p))
			*p = '?';
}

const char *key_env_name(const struct key *k, char *buf, size_t len)
{
	size_t n = (size_t)snprintf(buf, len, "IOTD_%s_%s", k->section, k->name);

	for (size_t i = 0; i < n && i < len; i++)
		buf[i] = (char)toupper((unsigned char)buf[i]);
	return buf;
}

static const char *key_cli_flag(const struct key *k)
{
	if (k->type == KT_LISTEN)
		return "-l";
	if (k->type == KT_LEVEL)
		return "-v";
	return "-w";
}

/* "where: " for a message about key i, from wherever its value came. */
static void describe_origin(const struct load_ctx *ctx, size_t i, char *buf, size_t len)
{
	const struct key *k = &config_keys[i];
	char env[64];

	switch (ctx->src[i]) {
	case SRC_FILE:
		snprintf(buf, len, "%s:%d: %s: ", ctx->path, ctx->line[i], k->section);
		return;
	case SRC_ENV:
		snprintf(buf, len, "environment: %s: ", key_env_name(k, env, sizeof(env)));
		return;
	case SRC_CLI:
		snprintf(buf, len, "option %s: ", key_cli_flag(k));
		return;
	case SRC_DEFAULT:
		break;
	}
	snprintf(buf, len, "%s: %s: ", ctx->cfg.path[0] ? ctx->cfg.path : "defaults",
		 k->section);
}

/* ---- across keys ---- */

/* Blame a unless only b was set by hand. */
static size_t blame(const struct load_ctx *ctx, const char *sec, const char *a,
		    const char *b)
{
	size_t ia = (size_t)key_index(sec, a), ib = (size_t)key_index(sec, b);

	return ctx->src[ia] == SRC_DEFAULT && ctx->src[ib] != SRC_DEFAULT ? ib : ia;
}

bool config_auth_role(const struct iotd_config *cfg)
{
	return strcmp(cfg->auth_backend, "none") != 0 || cfg->auth_acl_file[0] != '\0';
}

bool config_acl_in_force(const struct iotd_config *cfg)
{
	return cfg->auth_acl_file[0] != '\0' ||
	       (strcmp(cfg->auth_backend, "jwt") == 0 &&
		(cfg->auth_jwt_read_claim[0] != '\0' || cfg->auth_jwt_write_claim[0] != '\0'));
}

/* A key of the auth section that must be set for the backend chosen. */
static int auth_needs(struct load_ctx *ctx, const char *key, const char *value)
{
	char where[CONFIG_ERR_LEN];

	if (value[0] != '\0')
		return 0;
	describe_origin(ctx, (size_t)key_index("auth", "backend"), where, sizeof(where));
	set_err(ctx, "%sbackend '%s' needs %s", where, ctx->cfg.auth_backend, key);
	return -1;
}

/*
 * auth.enabled predates the backends and is kept so that existing files
 * load: it says nothing the backend does not, and is only checked when a
 * file or the environment sets it. true needs a backend other than
 * "none" (with nothing to check against it would admit everyone); false
 * contradicts one.
 */
static int check_auth(struct load_ctx *ctx)
{
	const struct iotd_config *c = &ctx->cfg;
	bool none = strcmp(c->auth_backend, "none") == 0;
	char where[CONFIG_ERR_LEN];

	if (ctx->src[key_index("auth", "enabled")] != SRC_DEFAULT && c->auth_enabled == none) {
		describe_origin(ctx, blame(ctx, "auth", "enabled", "backend"), where,
				sizeof(where));
		set_err(ctx, "%senabled is %s but backend is '%s'", where,
			c->auth_enabled ? "true" : "false", c->auth_backend);
		return -1;
	}
	if (strcmp(c->auth_backend, "file") == 0)
		return auth_needs(ctx, "password_file", c->auth_password_file);
	if (strcmp(c->auth_backend, "jwt") == 0)
		return auth_needs(ctx, "jwt_key_file", c->auth_jwt_key_file) < 0 ||
		       auth_needs(ctx, "jwt_username_claim", c->auth_jwt_username_claim) < 0 ? -1 : 0;
	return 0;
}

bool config_tls(const struct iotd_config *cfg)
{
	return cfg->tls_cert_file[0] != '\0' || cfg->tls_key_file[0] != '\0' ||
	       cfg->n_tls_named > 0;
}

int config_tls_certs(const struct iotd_config *cfg)
{
	return 1 + cfg->n_tls_named;
}

void config_tls_cert(const struct iotd_config *cfg, int i, struct tls_cert_files *out)
{
	const struct tls_named *n;

	if (i == 0) {
		*out = (struct tls_cert_files){ .name = "", .cert_file = cfg->tls_cert_file,
						.key_file = cfg->tls_key_file,
						.ca_file = cfg->tls_ca_file,
						.ca_path = cfg->tls_ca_path,
						.crl_file = cfg->tls_crl_file,
						.require_certificate = cfg->tls_require_certificate };
		return;
	}
	n = &cfg->tls_named[i - 1];
	*out = (struct tls_cert_files){ .name = n->name, .cert_file = n->cert_file,
					.key_file = n->key_file, .ca_file = n->ca_file,
					.ca_path = "", .crl_file = "",
					.require_certificate = n->require_certificate };
}

/* A key of the tls section that another one needs. */
static int tls_needs(struct load_ctx *ctx, const char *by, const char *key, bool set)
{
	char where[CONFIG_ERR_LEN];

	if (set)
		return 0;
	describe_origin(ctx, (size_t)key_index("tls", by), where, sizeof(where));
	set_err(ctx, "%s%s needs %s", where, by, key);
	return -1;
}

/* The same of a named certificate, which only the file declares. */
static int named_needs(struct load_ctx *ctx, const struct tls_named *n, const char *by,
		       const char *key, bool set)
{
	if (set)
		return 0;
	set_err(ctx, "%s:%d: tls: certificate \"%s\": %s needs %s", ctx->path, n->line,
		n->name, by, key);
	return -1;
}

static int check_tls_named(struct load_ctx *ctx, const struct tls_named *n)
{
	return named_needs(ctx, n, "certificate", "cert_file", n->cert_file[0] != '\0') < 0 ||
	       named_needs(ctx, n, "certificate", "key_file", n->key_file[0] != '\0') < 0 ||
	       (n->require_certificate &&
		named_needs(ctx, n, "require_certificate", "ca_file", n->ca_file[0] != '\0') < 0) ?
	       -1 : 0;
}

/*
 * A certificate and its key go together; a client's certificate is
 * checked against a CA (an identity is taken only where one is required:
 * check_tls_identity). Whether the key matches the certificate is the
 * key role's to check at its start (nothing else reads the key).
 */
static int check_tls(struct load_ctx *ctx)
{
	const struct iotd_config *c = &ctx->cfg;

	for (int i = 0; i < c->n_tls_named; i++)
		if (check_tls_named(ctx, &c->tls_named[i]) < 0)
			return -1;
	if (c->tls_cert_file[0] == '\0' && c->tls_key_file[0] == '\0')
		return 0;
	if (tls_needs(ctx, "cert_file", "key_file", c->tls_key_file[0] != '\0') < 0 ||
	    tls_needs(ctx, "key_file", "cert_file", c->tls_cert_file[0] != '\0') < 0 ||
	    (c->tls_require_certificate &&
	     tls_needs(ctx, "require_certificate", "ca_file or ca_path",
		       c->tls_ca_file[0] != '\0' || c->tls_ca_path[0] != '\0') < 0))
		return -1;
	return 0;
}

/* A listen address as written, for messages: scheme, host ("*": any), port, ?tls=name. */
static void listen_shown(const struct listen_addr *la, char *buf, size_t len)
{
	snprintf(buf, len, "%s://%s:%s%s%s", listen_transport_name(la->transport),
		 la->host[0] ? la->host : "*", la->port, la->tls_name[0] ? "?tls=" : "",
		 la->tls_name);
}

/*
 * tls.use_identity_as_username takes a TLS client's user name from its
 * certificate: every certificate a TLS listener presents must then
 * require one (the sockets systemd passes are checked as they are
 * taken). A listener that let a client in without one would have no
 * identity to give it, and none may come in as anyone else.
 */
static int check_tls_identity(struct load_ctx *ctx)
{
	const struct iotd_config *c = &ctx->cfg;
	char where[CONFIG_ERR_LEN], addr[CONFIG_ERR_LEN];
	struct tls_cert_files tc;

	if (!c->tls_use_identity_as_username)
		return 0;
	for (int i = 0; i < c->n_listen; i++) {
		const struct listen_addr *la = &c->listen[i];

		if (!listen_transport_tls(la->transport))
			continue;
		config_tls_cert(c, la->tls, &tc);
		if (tc.require_certificate)
			continue;
		describe_origin(ctx, (size_t)key_index("tls", "use_identity_as_username"), where,
				sizeof(where));
		listen_shown(la, addr, sizeof(addr));
		if (tc.name[0])
			set_err(ctx, "%suse_identity_as_username needs require_certificate = true "
				"where it is used: %s presents tls.certificate \"%s\", whose "
				"require_certificate is false", where, addr, tc.name);
		else
			set_err(ctx, "%suse_identity_as_username needs require_certificate = true "
				"where it is used: %s presents tls { }'s certificate, and "
				"tls.require_certificate is false", where, addr);
		return -1;
	}
	return 0;
}

/* The index of the certificate a TLS listener names (TLS_CERTS_MAX), or -1. */
static int tls_named_index(const struct iotd_config *c, const char *name)
{
	for (int i = 0; i < c->n_tls_named; i++)
		if (strcmp(c->tls_named[i].name, name) == 0)
			return 1 + i;
	return -1;
}

/*
 * mqtts:// and wss:// listeners need a certificate: tls { }'s, or the
 * named one their "?tls=name" gives, which must be declared.
 */
static int check_listen_tls(struct load_ctx *ctx)
{
	struct iotd_config *c = &ctx->cfg;
	char where[CONFIG_ERR_LEN], addr[CONFIG_ERR_LEN];

	for (int i = 0; i < c->n_listen; i++) {
		struct listen_addr *la = &c->listen[i];

		la->tls = la->tls_name[0] ? tls_named_index(c, la->tls_name) : 0;
		if (!listen_transport_tls(la->transport) ||
		    (la->tls > 0 || (la->tls == 0 && c->tls_cert_file[0] != '\0')))
			continue;
		describe_origin(ctx, (size_t)key_index("server", "listen_addresses"), where,
				sizeof(where));
		listen_shown(la, addr, sizeof(addr));
		if (la->tls < 0)
			set_err(ctx, "%slisten_addresses: %s: no tls { certificate \"%s\" { } } is "
				"declared", where, addr, la->tls_name);
		else
			set_err(ctx, "%slisten_addresses: %s needs tls.cert_file and tls.key_file, "
				"or ?tls=name", where, addr);
		return -1;
	}
	return 0;
}

static int check_consistency(struct load_ctx *ctx)
{
	const struct iotd_config *c = &ctx->cfg;
	char where[CONFIG_ERR_LEN];

	if (check_listen_tls(ctx) < 0)
		return -1;
	/* The keep-alive imposed on clients must pass the broker's own cap. */
	if (c->max_keepalive > 0 && c->keep_alive_timeout_secs > c->max_keepalive) {
		describe_origin(ctx, blame(ctx, "server", "keep_alive_timeout_secs",
					   "max_keepalive"), where, sizeof(where));
		set_err(ctx, "%skeep_alive_timeout_secs (%ld) exceeds max_keepalive (%ld)",
			where, c->keep_alive_timeout_secs, c->max_keepalive);
		return -1;
	}
	/* Every connection holds a session: fewer sessions would refuse connections silently. */
	if (c->max_sessions > 0 && c->max_sessions < c->max_connections) {
		describe_origin(ctx, blame(ctx, "server", "max_sessions", "max_connections"), where,
				sizeof(where));
		set_err(ctx, "%smax_sessions (%ld) is below max_connections (%ld): every connection holds a session",
			where, c->max_sessions, c->max_connections);
		return -1;
	}
	return check_auth(ctx) < 0 || check_tls(ctx) < 0 || check_tls_identity(ctx) < 0 ? -1 : 0;
}

int config_load(struct iotd_config *cfg, const struct cli_args *args,
		char *const *envp, char *err, size_t errlen)
{
	static const struct cli_args no_args = { .workers = -1 };
	struct load_ctx ctx;
	const char *path;

	if (!args)
		args = &no_args;
	memset(&ctx, 0, sizeof(ctx));
	ctx.err = err;
	ctx.errlen = errlen;
	if (err && errlen > 0)
		err[0] = '\0';
	config_defaults(&ctx.cfg);
	path = args->config_path ? args->config_path : IOTD_DEFAULT_CONFIG;
	if (load_file(&ctx, path, args->config_explicit) < 0 ||
	    load_env(&ctx, envp) < 0 ||
	    load_args(&ctx, args) < 0 ||
	    check_consistency(&ctx) < 0)
		return -1;
	/* Only a complete, valid configuration replaces the caller's (SIGHUP). */
	*cfg = ctx.cfg;
	return 0;
}

