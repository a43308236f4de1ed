/*
 * config.c - the daemon's configuration: built-in defaults, the file
 * (libconfuse syntax), IOTD_<SECTION>_<KEY> environment overrides and
 * the command line.
 *
 * Owns the key table below: every key's section, name, type, range and
 * destination field. The file, the environment and argv all go through
 * it, so a value is checked the same way wherever it came from. Nothing
 * here logs; errors go back to the caller as one message naming the
 * file and line, the variable or the option that held the bad value.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <confuse.h>

#include "iotd.h"
#include "log.h"

/* A configuration file is a page or two; refuse anything absurd. */
#define CONFIG_FILE_MAX (1024 * 1024)
/* "tcp://" + "[" + 63-byte host + "]:" + port, with room to spare. */
#define LISTEN_STR_MAX 96
/* How much of an offending value an error message quotes. */
#define SHOWN_MAX 64

enum key_type {
	KT_INT,		/* decimal, range-checked */
	KT_BOOL,
	KT_USER,	/* a login name */
	KT_PATH,	/* an absolute path */
	KT_CHOICE,	/* one of choices[], stored in canonical spelling */
	KT_LEVEL,	/* enum log_level */
	KT_FORMAT,	/* enum log_format */
	KT_LISTEN,	/* the listen list (listen[] and n_listen) */
};

struct key {
	const char *section;
	const char *name;
	enum key_type type;
	size_t off;			/* destination in struct iotd_config */
	size_t size;
	long min, max;			/* KT_INT */
	const char *const *choices;	/* KT_CHOICE, NULL-terminated */
};

static const char *const sections[] = { "server", "auth", "storage", "logging" };

/* Only "none" exists today; a backend is added here and in the auth code. */
static const char *const auth_backends[] = { "none", NULL };
static const char *const storage_backends[] = { "memory", "disk", NULL };

#define FIELD(f) offsetof(struct iotd_config, f), sizeof(((struct iotd_config *)0)->f)
#define KEY_INT(f, lo, hi) { "server", #f, KT_INT, FIELD(f), lo, hi, NULL }
#define KEY(sec, name, type, f, choices) { sec, name, type, FIELD(f), 0, 0, choices }

/*
 * Upper bounds keep later arithmetic (seconds to milliseconds, counts
 * times sizes) far from overflow; MQTT itself caps keep-alive, topic
 * length and packet identifiers at 16 bits and a packet at 256 MiB plus
 * its fixed header. A server must accept client ids of 23 bytes
 * [MQTT-3.1.3-5]; 64 bytes hold a CONNECT that carries one.
 */
static const struct key keys[] = {
	KEY("server", "listen_addresses", KT_LISTEN, listen, NULL),
	KEY_INT(workers, 0, IOTD_MAX_WORKERS),
	KEY_INT(max_connections, 1, 1048576),
	KEY_INT(max_sessions, 0, INT_MAX),
	KEY_INT(max_subscriptions_per_session, 0, INT_MAX),
	KEY_INT(max_connections_per_address, 0, 1048576),
	KEY_INT(max_connect_rate_per_address, 0, 1000000),
	KEY_INT(placement_slack, 0, 1000000),
	KEY_INT(session_timeout_secs, 0, INT_MAX),
	KEY_INT(keep_alive_timeout_secs, 0, 65535),
	KEY_INT(max_keepalive, 0, 65535),
	KEY_INT(connect_timeout, 1, 3600),
	KEY_INT(max_packet_size, 16, 268435460),
	KEY_INT(max_connect_size, 64, 268435460),
	KEY_INT(max_client_id_length, 23, 65535),
	KEY_INT(retained_message_limit, 1, INT_MAX),
	KEY_INT(retained_bytes_limit, 0, 1L << 40),
	KEY_INT(memory_limit, 0, 1L << 46),
	KEY_INT(max_inflight, 1, 65535),
	KEY_INT(max_queued_messages, 1, INT_MAX),
	KEY_INT(max_queued_bytes, 0, 1L << 40),
	KEY_INT(max_queued_bytes_total, 0, 1L << 46),
	KEY_INT(max_inflight_bytes, 1, 1L << 40),
	KEY_INT(max_output_bytes, 1024, 1L << 40),
	KEY_INT(max_router_backlog_bytes, 1048576, 1L << 40),
	KEY("server", "queue_qos0_messages", KT_BOOL, queue_qos0_messages, NULL),
	KEY_INT(max_topic_levels, 1, 65535),
	KEY_INT(max_topic_length, 1, 65535),
	KEY("server", "user", KT_USER, user, NULL),
	KEY("auth", "enabled", KT_BOOL, auth_enabled, NULL),
	KEY("auth", "backend", KT_CHOICE, auth_backend, auth_backends),
	KEY("storage", "backend", KT_CHOICE, storage_backend, storage_backends),
	KEY("storage", "path", KT_PATH, storage_path, NULL),
	KEY("logging", "level", KT_LEVEL, log_level, NULL),
	KEY("logging", "format", KT_FORMAT, log_format, NULL),
};

#define N_KEYS ARRAY_SIZE(keys)

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
	cfg->max_packet_size = 1048576;
	cfg->max_connect_size = 131072;
	cfg->max_client_id_length = 1024;
	cfg->retained_message_limit = 10000;
	cfg->retained_bytes_limit = 67108864;
	cfg->memory_limit = 0;
	cfg->max_inflight = 20;
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
	snprintf(cfg->storage_backend, sizeof(cfg->storage_backend), "memory");
	snprintf(cfg->storage_path, sizeof(cfg->storage_path), "/var/lib/iotd");
	cfg->log_level = LOG_LVL_INFO;
	cfg->log_format = LOG_FMT_TEXT;
}

/* ---- listen addresses ---- */

static bool valid_ipv6(const char *host)
{
	char addr[INET6_ADDRSTRLEN];
	const char *zone = strchr(host, '%');
	size_t len = zone ? (size_t)(zone - host) : strlen(host);
	unsigned char buf[sizeof(struct in6_addr)];

	if (len == 0 || len >= sizeof(addr))
		return false;
	memcpy(addr, host, len);
	addr[len] = '\0';
	if (inet_pton(AF_INET6, addr, buf) != 1)
		return false;
	if (!zone)
		return true;
	/* A zone is an interface name (link-local addresses): IFNAMSIZ - 1. */
	zone++;
	if (*zone == '\0' || strlen(zone) > 15)
		return false;
	for (; *zone; zone++)
		if (!isalnum((unsigned char)*zone) && !strchr("._-", *zone))
			return false;
	return true;
}

/* Labels of letters, digits, '-' and '_'; no empty label. */
static bool valid_hostname(const char *host)
{
	size_t label = 0;

	for (const char *p = host; *p; p++) {
		if (*p == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum((unsigned char)*p) || *p == '-' || *p == '_') {
			label++;
		} else {
			return false;
		}
	}
	return label > 0 && host[0] != '-';
}

/*
 * Digits and dots only must be a dotted quad: the resolver would take
 * "10.1" or "4294967295" as an address in inet_aton's legacy forms.
 */
static bool looks_numeric(const char *host)
{
	return host[strspn(host, "0123456789.")] == '\0';
}

static int parse_port(const char *s, struct listen_addr *a)
{
	size_t n = strspn(s, "0123456789");
	long port;

	if (n == 0 || n > 5 || s[n] != '\0')
		return -1;
	port = strtol(s, NULL, 10);
	if (port < 1 || port > 65535)
		return -1;
	snprintf(a->port, sizeof(a->port), "%ld", port);
	return 0;
}

static int copy_host(struct listen_addr *a, const char *host, size_t len)
{
	if (len >= sizeof(a->host))
		return -1;
	memcpy(a->host, host, len);
	a->host[len] = '\0';
	return 0;
}

static int parse_bracketed(const char *s, struct listen_addr *a)
{
	const char *close = strchr(s, ']');

	if (!close || close[1] != ':')
		return -1;
	if (copy_host(a, s + 1, (size_t)(close - s - 1)) < 0 || !valid_ipv6(a->host))
		return -1;
	a->family = AF_INET6;
	return parse_port(close + 2, a);
}

static int parse_plain(const char *s, struct listen_addr *a)
{
	const char *colon = strrchr(s, ':');
	struct in_addr in4;

	/* A second colon is an IPv6 address without brackets: ambiguous. */
	if (!colon || memchr(s, ':', (size_t)(colon - s)))
		return -1;
	if (copy_host(a, s, (size_t)(colon - s)) < 0)
		return -1;
	if (a->host[0] == '\0' || strcmp(a->host, "*") == 0) {
		a->host[0] = '\0';
		a->family = AF_UNSPEC;
	} else if (inet_pton(AF_INET, a->host, &in4) == 1) {
		a->family = AF_INET;
	} else if (looks_numeric(a->host) || !valid_hostname(a->host)) {
		return -1;
	} else {
		a->family = AF_UNSPEC;
	}
	return parse_port(colon + 1, a);
}

int config_parse_listen(const char *s, struct listen_addr *out)
{
	struct listen_addr a;

	if (!s || !out)
		return -1;
	memset(&a, 0, sizeof(a));
	if (strncasecmp(s, "tcp://", 6) == 0)
		s += 6;
	else if (strstr(s, "://"))
		return -1;
	if (*s == '[' ? parse_bracketed(s, &a) < 0 : parse_plain(s, &a) < 0)
		return -1;
	*out = a;
	return 0;
}

/* ---- values ---- */

/* Quote at most SHOWN_MAX bytes of a value, unprintable bytes as '?'. */
static const char *shown(const char *s, char *buf, size_t len)
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
static int parse_long(const char *s, long *out)
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

static int add_listen(struct listen_addr *list, int *n, const char *v,
		      char *why, size_t whylen)
{
	char buf[SHOWN_MAX + 4];

	if (*n >= CONFIG_MAX_LISTEN) {
		snprintf(why, whylen, "more than %d addresses", CONFIG_MAX_LISTEN);
		return -1;
	}
	if (config_parse_listen(v, &list[*n]) < 0) {
		snprintf(why, whylen, "'%s' is not host:port, [v6]:port, "
			 "tcp://host:port or :port", shown(v, buf, sizeof(buf)));
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
static int key_apply(const struct key *k, const char *v, struct iotd_config *cfg,
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
	case KT_LEVEL:
	case KT_FORMAT:
		return apply_enum(k, v, cfg, why, whylen);
	case KT_LISTEN:
		return apply_listen_csv(v, cfg, why, whylen);
	}
	snprintf(why, whylen, "internal error: unknown key type");
	return -1;
}

static int key_index(const char *section, const char *name)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* ---- one load ---- */

enum origin { SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_CLI };

struct load_ctx {
	struct iotd_config cfg;		/* built here, copied out on success */
	const char *path;		/* the file being read */
	char *err;
	size_t errlen;
	bool failed;			/* err holds the first error */
	enum origin src[N_KEYS];	/* where each key's value came from ... */
	int line[N_KEYS];		/* ... and on which line of the file */
};

/*
 * libconfuse's callbacks get no user pointer, and its scanner is global
 * anyway, so the load in progress is found here.
 */
static struct load_ctx *cur_ctx;

static void set_err(struct load_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Keep the first error: later ones are usually consequences of it. */
static void set_err(struct load_ctx *ctx, const char *fmt, ...)
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

static const char *key_env_name(const struct key *k, char *buf, size_t len)
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
	const struct key *k = &keys[i];
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

/* ---- the file ---- */

/* libconfuse's wording for an unknown name, reworded as ours. */
static const char cfg_unknown_fmt[] = "no such option '%s'";

static void on_cfg_error(cfg_t *sec, const char *fmt, va_list ap)
{
	struct load_ctx *ctx = cur_ctx;
	bool in_section = sec && sec->name && strcmp(sec->name, "root") != 0;
	char msg[CONFIG_ERR_LEN];

	if (!ctx)
		return;
	if (strcmp(fmt, cfg_unknown_fmt) == 0 && in_section)
		snprintf(msg, sizeof(msg), "%s: unknown key", va_arg(ap, const char *));
	else if (strcmp(fmt, cfg_unknown_fmt) == 0)
		snprintf(msg, sizeof(msg), "%s: unknown section (expected server, auth, "
			 "storage or logging)", va_arg(ap, const char *));
	else
		vsnprintf(msg, sizeof(msg), fmt, ap);
	if (in_section)
		set_err(ctx, "%s:%d: %s: %s", ctx->path, sec->line, sec->name, msg);
	else
		set_err(ctx, "%s:%d: %s", ctx->path, sec ? sec->line : 0, msg);
}

static int on_file_value(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	struct load_ctx *ctx = cur_ctx;
	char why[160], buf[SHOWN_MAX + 4];
	int i = key_index(sec->name, opt->name);

	/* "server|workers" at top level reaches a section's option by path. */
	if (i < 0) {
		cfg_error(sec, cfg_unknown_fmt, opt->name);
		return -1;
	}
	if (key_apply(&keys[i], value, &ctx->cfg, why, sizeof(why)) < 0) {
		cfg_error(sec, "%s: invalid value '%s' (%s)", opt->name,
			  shown(value, buf, sizeof(buf)), why);
		return -1;
	}
	ctx->src[i] = SRC_FILE;
	ctx->line[i] = sec->line;
	*(const char **)result = value;
	return 0;
}

/* Each element is checked as it is read, so the error has its line. */
static int on_listen_value(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	struct load_ctx *ctx = cur_ctx;
	struct listen_addr a;
	char buf[SHOWN_MAX + 4];
	int i = key_index(sec->name, opt->name);

	if (i < 0) {
		cfg_error(sec, cfg_unknown_fmt, opt->name);
		return -1;
	}
	if (config_parse_listen(value, &a) < 0) {
		cfg_error(sec, "%s: invalid value '%s' (expected host:port, [v6]:port, "
			  "tcp://host:port or :port)", opt->name, shown(value, buf, sizeof(buf)));
		return -1;
	}
	ctx->src[i] = SRC_FILE;
	ctx->line[i] = sec->line;
	*(const char **)result = value;
	return 0;
}

static int on_listen_list(cfg_t *sec, cfg_opt_t *opt)
{
	if (cfg_opt_size(opt) > CONFIG_MAX_LISTEN) {
		cfg_error(sec, "%s: more than %d addresses", opt->name, CONFIG_MAX_LISTEN);
		return -1;
	}
	return 0;
}

/* libconfuse option tables, generated from keys[] so the two never drift. */
struct opt_tables {
	cfg_opt_t sec[ARRAY_SIZE(sections)][N_KEYS + 1];
	cfg_opt_t root[ARRAY_SIZE(sections) + 1];
};

static void build_opts(struct opt_tables *t)
{
	const cfg_opt_t end = CFG_END();

	for (size_t s = 0; s < ARRAY_SIZE(sections); s++) {
		size_t n = 0;

		for (size_t i = 0; i < N_KEYS; i++) {
			const struct key *k = &keys[i];

			if (strcmp(k->section, sections[s]) != 0)
				continue;
			/* No libconfuse defaults: an absent key leaves cfg as it is. */
			if (k->type == KT_LISTEN)
				t->sec[s][n++] = (cfg_opt_t)CFG_STR_LIST_CB(k->name, NULL,
						CFGF_NODEFAULT, on_listen_value);
			else
				t->sec[s][n++] = (cfg_opt_t)CFG_STR_CB(k->name, NULL,
						CFGF_NODEFAULT, on_file_value);
		}
		t->sec[s][n] = end;
		t->root[s] = (cfg_opt_t)CFG_SEC(sections[s], t->sec[s], CFGF_NONE);
	}
	t->root[ARRAY_SIZE(sections)] = end;
}

/* Read fd to its end into a NUL-terminated buffer. */
static int read_all(int fd, char **out, size_t *outlen, const char **why)
{
	size_t len = 0, cap = 4096;
	char *buf, *grown;
	ssize_t n;

	buf = malloc(cap);
	if (!buf) {
		*why = strerror(ENOMEM);
		return -1;
	}
	for (;;) {
		if (len + 1 == cap) {
			grown = realloc(buf, cap * 2);
			if (!grown) {
				*why = strerror(ENOMEM);
				goto free_buf;
			}
			buf = grown;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*why = strerror(errno);
			goto free_buf;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CONFIG_FILE_MAX) {
			*why = "file larger than 1 MiB";
			goto free_buf;
		}
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;

free_buf:
	free(buf);
	return -1;
}

/*
 * Read the whole file: flex ends the process on a read error, and a
 * buffer also lets a NUL byte be reported rather than silently end the
 * file. Returns 0, 1 when the file does not exist, or -1.
 */
static int read_file(struct load_ctx *ctx, char **out)
{
	const char *why = "not a regular file";
	struct stat st;
	const char *nul;
	size_t len;
	int fd, line = 1;

	/* O_NONBLOCK: a FIFO put in the file's place must not hang startup. */
	fd = open(ctx->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return 1;
		set_err(ctx, "%s: cannot open: %s", ctx->path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    read_all(fd, out, &len, &why) < 0) {
		set_err(ctx, "%s: cannot read: %s", ctx->path, why);
		close(fd);
		return -1;
	}
	close(fd);
	nul = memchr(*out, '\0', len);
	if (!nul)
		return 0;
	for (const char *p = *out; p < nul; p++)
		line += *p == '\n';
	set_err(ctx, "%s:%d: NUL byte in file", ctx->path, line);
	free(*out);
	return -1;
}

/*
 * libconfuse 3.3 counts each comment as two or three lines, rejects a
 * comment inside a {...} list, and accepts a file that ends inside a
 * section or a comment. So comments are blanked out here first, newlines
 * kept so line numbers hold, and whatever is left open at the end of the
 * file is reported. '#' starts a comment anywhere outside a string, '//'
 * and '/' '*' only where a token may start, so "tcp://h:1" stays a value.
 * Strings are "..." or '...' with backslash escapes; ${VAR} (substituted
 * by libconfuse) runs to the next '}'.
 */
enum scan_state { SCAN_CODE, SCAN_DQ, SCAN_SQ, SCAN_LINE_COMMENT, SCAN_BLOCK_COMMENT };

struct scan {
	enum scan_state state;
	int line;
	int opened;		/* line where the open string or comment began */
	int depth;		/* '{' not yet closed */
	int brace_line;		/* line of the outermost open '{' */
};

static bool at_token_start(const char *text, const char *p)
{
	return p == text || strchr(" \t\r\n{}(),=+\"'", p[-1]) != NULL;
}

/* Skip "${...}" at p, counting its newlines; NULL if it is not one. */
static char *skip_env_ref(struct scan *sc, char *p)
{
	char *close;

	if (p[0] != '$' || p[1] != '{')
		return NULL;
	close = strchr(p + 2, '}');
	if (!close)
		return NULL;
	for (; p < close; p++)
		sc->line += *p == '\n';
	return close + 1;
}

/* One step in code: returns the next position to look at. */
static char *scan_code(struct scan *sc, char *text, char *p)
{
	char *next;

	if (*p == '#' || (*p == '/' && p[1] == '/' && at_token_start(text, p))) {
		sc->state = SCAN_LINE_COMMENT;
		return p;
	}
	if (*p == '/' && p[1] == '*' && at_token_start(text, p)) {
		sc->state = SCAN_BLOCK_COMMENT;
		sc->opened = sc->line;
		p[0] = p[1] = ' ';
		return p + 2;
	}
	if (at_token_start(text, p) && (next = skip_env_ref(sc, p)))
		return next;
	if (*p == '"' || *p == '\'') {
		sc->state = *p == '"' ? SCAN_DQ : SCAN_SQ;
		sc->opened = sc->line;
	} else if (*p == '{') {
		if (sc->depth++ == 0)
			sc->brace_line = sc->line;
	} else if (*p == '}' && sc->depth > 0) {
		sc->depth--;	/* a '}' too many is libconfuse's to report */
	}
	return p + 1;
}

static char *scan_string(struct scan *sc, char *p)
{
	char *next;

	if (*p == '\\' && p[1] != '\0') {
		sc->line += p[1] == '\n';
		return p + 2;
	}
	if (sc->state == SCAN_DQ && (next = skip_env_ref(sc, p)))
		return next;
	if (*p == (sc->state == SCAN_DQ ? '"' : '\''))
		sc->state = SCAN_CODE;
	return p + 1;
}

static char *scan_comment(struct scan *sc, char *p)
{
	if (sc->state == SCAN_LINE_COMMENT && *p == '\n') {
		sc->state = SCAN_CODE;
		return p;
	}
	if (sc->state == SCAN_BLOCK_COMMENT && p[0] == '*' && p[1] == '/') {
		p[0] = p[1] = ' ';
		sc->state = SCAN_CODE;
		return p + 2;
	}
	if (*p != '\n')
		*p = ' ';
	return p + 1;
}

static int strip_comments(struct load_ctx *ctx, char *text)
{
	struct scan sc = { .state = SCAN_CODE, .line = 1 };
	char *p = text;

	while (*p) {
		char *next;
		bool newline = *p == '\n';

		if (sc.state == SCAN_CODE)
			next = scan_code(&sc, text, p);
		else if (sc.state == SCAN_DQ || sc.state == SCAN_SQ)
			next = scan_string(&sc, p);
		else
			next = scan_comment(&sc, p);
		/* A step that stays put only changes state; the newline counts later. */
		if (next == p + 1 && newline)
			sc.line++;
		p = next;
	}
	switch (sc.state) {
	case SCAN_DQ:
	case SCAN_SQ:
		set_err(ctx, "%s:%d: string not closed at end of file", ctx->path, sc.opened);
		return -1;
	case SCAN_BLOCK_COMMENT:
		set_err(ctx, "%s:%d: comment not closed at end of file", ctx->path, sc.opened);
		return -1;
	case SCAN_CODE:
	case SCAN_LINE_COMMENT:
		break;
	}
	if (sc.depth > 0) {
		set_err(ctx, "%s:%d: '{' not closed at end of file", ctx->path, sc.brace_line);
		return -1;
	}
	return 0;
}

/* A listen list given in the file replaces the default one. */
static int take_listen(struct load_ctx *ctx, cfg_t *root)
{
	cfg_opt_t *opt = cfg_getopt(cfg_getsec(root, "server"), "listen_addresses");
	int i = key_index("server", "listen_addresses");
	unsigned int n = cfg_opt_size(opt);
	char why[160];

	if (!opt || !(opt->flags & CFGF_MODIFIED))
		return 0;
	if (n == 0) {
		set_err(ctx, "%s: server: listen_addresses: empty list", ctx->path);
		return -1;
	}
	ctx->cfg.n_listen = 0;
	for (unsigned int j = 0; j < n; j++) {
		if (add_listen(ctx->cfg.listen, &ctx->cfg.n_listen,
			       cfg_opt_getnstr(opt, j), why, sizeof(why)) < 0) {
			set_err(ctx, "%s:%d: server: listen_addresses: %s", ctx->path,
				ctx->line[i], why);
			return -1;
		}
	}
	return 0;
}

static int parse_text(struct load_ctx *ctx, char *text)
{
	struct opt_tables t;
	cfg_t *root;
	int rc = -1;

	if (strip_comments(ctx, text) < 0)
		return -1;
	build_opts(&t);
	root = cfg_init(t.root, CFGF_NONE);
	if (!root) {
		set_err(ctx, "%s: out of memory", ctx->path);
		return -1;
	}
	cfg_set_error_function(root, on_cfg_error);
	cfg_set_validate_func(root, "server|listen_addresses", on_listen_list);
	cur_ctx = ctx;
	if (cfg_parse_buf(root, text) != CFG_SUCCESS) {
		set_err(ctx, "%s: cannot parse", ctx->path);
		goto free_root;
	}
	if (take_listen(ctx, root) < 0)
		goto free_root;
	rc = 0;
free_root:
	cur_ctx = NULL;
	cfg_free(root);
	return rc;
}

static int load_file(struct load_ctx *ctx, const char *path, bool must_exist)
{
	char *text;
	int rc;

	ctx->path = path;
	rc = read_file(ctx, &text);
	if (rc == 1) {
		if (!must_exist)
			return 0;
		set_err(ctx, "%s: cannot open: %s", path, strerror(ENOENT));
		return -1;
	}
	if (rc < 0)
		return -1;
	rc = parse_text(ctx, text);
	free(text);
	if (rc == 0)
		snprintf(ctx->cfg.path, sizeof(ctx->cfg.path), "%s", path);
	return rc;
}

/* ---- the environment ---- */

static const char *env_get(char *const *envp, const char *name)
{
	size_t n = strlen(name);

	for (; envp && *envp; envp++)
		if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
			return *envp + n + 1;
	return NULL;
}

static bool env_in_our_sections(const char *var, size_t len)
{
	char prefix[32];

	for (size_t s = 0; s < ARRAY_SIZE(sections); s++) {
		size_t plen = (size_t)snprintf(prefix, sizeof(prefix), "IOTD_%s_", sections[s]);

		for (size_t c = 0; c < plen; c++)
			prefix[c] = (char)toupper((unsigned char)prefix[c]);
		if (len > plen && strncmp(var, prefix, plen) == 0)
			return true;
	}
	return false;
}

static bool env_is_key(const char *var, size_t len)
{
	char name[64];

	for (size_t i = 0; i < N_KEYS; i++) {
		key_env_name(&keys[i], name, sizeof(name));
		if (strlen(name) == len && strncmp(var, name, len) == 0)
			return true;
	}
	return false;
}

/*
 * IOTD_SERVER_* and the like are ours: a misspelt one is an error, not a
 * silently ignored setting. Other IOTD_* variables are left alone.
 */
static int check_env_names(struct load_ctx *ctx, char *const *envp)
{
	for (; envp && *envp; envp++) {
		size_t len = strcspn(*envp, "=");

		if (env_in_our_sections(*envp, len) && !env_is_key(*envp, len)) {
			set_err(ctx, "environment: %.*s: no such setting",
				(int)MIN(len, (size_t)SHOWN_MAX), *envp);
			return -1;
		}
	}
	return 0;
}

static int load_env(struct load_ctx *ctx, char *const *envp)
{
	char name[64], why[160], buf[SHOWN_MAX + 4];

	if (check_env_names(ctx, envp) < 0)
		return -1;
	for (size_t i = 0; i < N_KEYS; i++) {
		const char *v = env_get(envp, key_env_name(&keys[i], name, sizeof(name)));

		if (!v)
			continue;
		if (key_apply(&keys[i], v, &ctx->cfg, why, sizeof(why)) < 0) {
			set_err(ctx, "environment: %s: invalid value '%s' (%s)", name,
				shown(v, buf, sizeof(buf)), why);
			return -1;
		}
		ctx->src[i] = SRC_ENV;
	}
	return 0;
}

/* ---- the command line ---- */

static int load_args(struct load_ctx *ctx, const struct cli_args *args)
{
	int workers = key_index("server", "workers");
	int listen_i = key_index("server", "listen_addresses");
	int level = key_index("logging", "level");
	struct listen_addr list[CONFIG_MAX_LISTEN];
	char why[160];
	int n = 0;

	if (args->n_listen > CONFIG_MAX_LISTEN) {
		set_err(ctx, "option -l: more than %d addresses", CONFIG_MAX_LISTEN);
		return -1;
	}
	for (int i = 0; i < args->n_listen; i++) {
		if (add_listen(list, &n, args->listen[i], why, sizeof(why)) < 0) {
			set_err(ctx, "option -l: %s", why);
			return -1;
		}
	}
	if (n > 0) {
		memcpy(ctx->cfg.listen, list, sizeof(list[0]) * (size_t)n);
		ctx->cfg.n_listen = n;
		ctx->src[listen_i] = SRC_CLI;
	}
	if (args->workers >= 0) {
		if (args->workers > keys[workers].max) {
			set_err(ctx, "option -w: invalid value '%d' (expected an integer in "
				"%ld..%ld)", args->workers, keys[workers].min, keys[workers].max);
			return -1;
		}
		ctx->cfg.workers = args->workers;
		ctx->src[workers] = SRC_CLI;
	}
	if (args->verbose > 0) {
		int raised = ctx->cfg.log_level + MIN(args->verbose, (int)LOG_LVL_DEBUG);

		ctx->cfg.log_level = MIN(raised, (int)LOG_LVL_DEBUG);
		ctx->src[level] = SRC_CLI;
	}
	return 0;
}

/* ---- across keys ---- */

/* Blame a unless only b was set by hand. */
static size_t blame(const struct load_ctx *ctx, const char *sec, const char *a,
		    const char *b)
{
	size_t ia = (size_t)key_index(sec, a), ib = (size_t)key_index(sec, b);

	return ctx->src[ia] == SRC_DEFAULT && ctx->src[ib] != SRC_DEFAULT ? ib : ia;
}

static int check_consistency(struct load_ctx *ctx)
{
	const struct iotd_config *c = &ctx->cfg;
	char where[CONFIG_ERR_LEN];

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
	/* Authentication switched on with nothing to check against would admit everyone. */
	if (c->auth_enabled && strcmp(c->auth_backend, "none") == 0) {
		describe_origin(ctx, blame(ctx, "auth", "enabled", "backend"), where,
				sizeof(where));
		set_err(ctx, "%senabled is true but backend is 'none'", where);
		return -1;
	}
	return 0;
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

/* ---- argv ---- */

static const struct option long_options[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "listen", required_argument, NULL, 'l' },
	{ "workers", required_argument, NULL, 'w' },
	{ "test-config", no_argument, NULL, 't' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

/*
 * cur is the argv element getopt was working on: a long option is always
 * a whole element, a short one is known by optopt.
 */
static int arg_error(const char *cur, int c, char *err, size_t errlen)
{
	bool is_long = cur && strncmp(cur, "--", 2) == 0;
	char opt[80];

	if (is_long)
		snprintf(opt, sizeof(opt), "%.*s", (int)MIN(strcspn(cur, "="), (size_t)SHOWN_MAX), cur);
	else
		snprintf(opt, sizeof(opt), "-%c", isprint(optopt) ? optopt : '?');
	if (c == ':')
		snprintf(err, errlen, "option '%s' requires an argument", opt);
	else if (is_long && optopt != 0)
		snprintf(err, errlen, "option '%s' takes no argument", opt);
	else
		snprintf(err, errlen, "unknown option '%s'", opt);
	return -1;
}

static int arg_workers(const char *v, struct cli_args *args, char *err, size_t errlen)
{
	const struct key *k = &keys[key_index("server", "workers")];
	char buf[SHOWN_MAX + 4];
	long n;

	if (parse_long(v, &n) < 0 || n < k->min || n > k->max) {
		snprintf(err, errlen, "option -w: invalid value '%s' (expected an integer "
			 "in %ld..%ld)", shown(v, buf, sizeof(buf)), k->min, k->max);
		return -1;
	}
	args->workers = (int)n;
	return 0;
}

static int arg_listen(const char *v, struct cli_args *args, char *err, size_t errlen)
{
	struct listen_addr a;
	char buf[SHOWN_MAX + 4];

	if (args->n_listen >= CONFIG_MAX_LISTEN) {
		snprintf(err, errlen, "option -l: more than %d addresses", CONFIG_MAX_LISTEN);
		return -1;
	}
	if (config_parse_listen(v, &a) < 0) {
		snprintf(err, errlen, "option -l: invalid address '%s' (expected host:port, "
			 "[v6]:port, tcp://host:port or :port)", shown(v, buf, sizeof(buf)));
		return -1;
	}
	args->listen[args->n_listen++] = v;
	return 0;
}

int config_parse_args(int argc, char **argv, struct cli_args *args,
		      char *err, size_t errlen)
{
	char unused[CONFIG_ERR_LEN];
	char buf[SHOWN_MAX + 4];
	int c;

	if (!err || errlen == 0) {
		err = unused;
		errlen = sizeof(unused);
	}
	err[0] = '\0';
	memset(args, 0, sizeof(*args));
	args->workers = -1;
	/* optind = 0 makes glibc start over, so this can run more than once. */
	optind = 0;
	opterr = 0;
	for (;;) {
		int at = optind > 0 ? optind : 1;
		const char *cur = at < argc ? argv[at] : NULL;

		c = getopt_long(argc, argv, "+:c:l:w:tvhV", long_options, NULL);
		if (c == -1)
			break;
		switch (c) {
		case 'c':
			args->config_path = optarg;
			args->config_explicit = true;
			break;
		case 'l':
			if (arg_listen(optarg, args, err, errlen) < 0)
				return -1;
			break;
		case 'w':
			if (arg_workers(optarg, args, err, errlen) < 0)
				return -1;
			break;
		case 't':
			args->test_only = true;
			break;
		case 'v':
			args->verbose++;
			break;
		case 'h':
			args->help = true;
			break;
		case 'V':
			args->version = true;
			break;
		default:
			return arg_error(cur, c, err, errlen);
		}
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument '%s'",
			 shown(argv[optind], buf, sizeof(buf)));
		return -1;
	}
	return 0;
}

void config_usage(FILE *out, const char *prog)
{
	fprintf(out,
		"Usage: %s [OPTION]...\n"
		"MQTT 3.1.1 broker.\n"
		"\n"
		"  -c, --config FILE     read the configuration from FILE\n"
		"                        (default %s; if that file is missing,\n"
		"                        built-in defaults are used)\n"
		"  -l, --listen ADDR     listen on ADDR: host:port, [v6]:port,\n"
		"                        tcp://host:port or :port (any address);\n"
		"                        repeatable, replaces the configured list\n"
		"  -w, --workers N       worker processes, 0..%d (0: one per CPU)\n"
		"  -t, --test-config     check the configuration and exit\n"
		"  -v, --verbose         raise the log level by one (repeatable)\n"
		"  -h, --help            show this help and exit\n"
		"  -V, --version         show the version and exit\n"
		"\n"
		"Settings come from the command line, then the environment\n"
		"(IOTD_<SECTION>_<KEY>, e.g. IOTD_SERVER_MAX_CONNECTIONS=5,\n"
		"IOTD_SERVER_LISTEN_ADDRESSES=\"127.0.0.1:1883,[::1]:1883\"),\n"
		"then the configuration file, then built-in defaults.\n",
		prog ? prog : "iotd", IOTD_DEFAULT_CONFIG, IOTD_MAX_WORKERS);
}
