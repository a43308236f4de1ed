/*
 * test_config.c - unit tests for common/config.c and common/log.c.
 *
 * Covers the configuration sources and their precedence (defaults, file,
 * environment, command line), the error messages that point at the bad
 * value, listen-address and argv parsing, and the log line formats,
 * captured by pointing stderr at a temporary file.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "iotd.h"
#include "log.h"

#define N_ARGS(a) ((int)ARRAY_SIZE(a) - 1)

static char conf_path[64];

/* Each test gets a fresh, empty temporary file to use as its config file. */
static int setup_conf(void **state)
{
	int fd;

	snprintf(conf_path, sizeof(conf_path), "/tmp/iotd-test-XXXXXX");
	fd = mkstemp(conf_path);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static int teardown_conf(void **state)
{
	unlink(conf_path);
	return 0;
}

static void write_conf(const char *text)
{
	FILE *f = fopen(conf_path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static struct cli_args explicit_args(void)
{
	struct cli_args a = { .config_path = conf_path, .config_explicit = true,
			      .workers = -1 };
	return a;
}

/* Load text as the -c file with the given environment; returns config_load's result. */
static int load(const char *text, char *const *envp, struct iotd_config *cfg,
		char *err, size_t errlen)
{
	struct cli_args a = explicit_args();

	write_conf(text);
	return config_load(cfg, &a, envp, err, errlen);
}

static char *no_env[] = { NULL };

/* err begins with "<conf_path>:<line>: <what>". */
static void assert_error_at(const char *err, int line, const char *what)
{
	char want[256];

	snprintf(want, sizeof(want), "%s:%d: %s", conf_path, line, what);
	assert_int_equal(strncmp(err, want, strlen(want)), 0);
}

/* Loading text, with no environment, succeeds into *c. */
static void assert_loads(const char *text, struct iotd_config *c)
{
	char err[CONFIG_ERR_LEN];

	if (load(text, no_env, c, err, sizeof(err)) != 0)
		fail_msg("%s", err);
}

/* Loading text, with no environment, fails with a message that says what. */
static void assert_load_fails(const char *text, const char *what)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load(text, no_env, &c, err, sizeof(err)), -1);
	if (strstr(err, what) == NULL)
		fail_msg("\"%s\" does not say \"%s\"", err, what);
}

/*
 * A check across two settings blames the one given: set in env alone, the
 * load fails with env_err; set in the file by text, with file_err at line 3.
 */
static void assert_blames_the_setting_given(char **env, const char *env_err, const char *text,
					    const char *file_err)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("", env, &c, err, sizeof(err)), -1);
	assert_string_equal(err, env_err);
	assert_int_equal(load(text, no_env, &c, err, sizeof(err)), -1);
	assert_error_at(err, 3, file_err);
}

/*
 * The settings that defaults_are_the_documented_values and
 * full_file_sets_every_key check alike: each one's default and the value
 * the full file gives it, a number (long, int or bool) or a text.
 */
enum setting_type { SETTING_LONG, SETTING_INT, SETTING_BOOL, SETTING_TEXT };

struct setting {
	const char *name;
	size_t off;
	enum setting_type type;
	long def, full;
	const char *def_text, *full_text;
};

#define SETTING_AT(name) offsetof(struct iotd_config, name), \
	_Generic(((struct iotd_config *)0)->name, long: SETTING_LONG, int: SETTING_INT, \
		 bool: SETTING_BOOL, char *: SETTING_TEXT)
#define NUMBER(name, def, full) { #name, SETTING_AT(name), def, full, NULL, NULL }
#define TEXT(name, def, full) { #name, SETTING_AT(name), 0, 0, def, full }

static const struct setting settings[] = {
	NUMBER(workers, 0, 4),
	NUMBER(max_connections, 10000, 500),
	NUMBER(max_sessions, 100000, 700),
	NUMBER(max_subscriptions_per_session, 1000, 9),
	NUMBER(max_connections_per_address, 1000, 0),
	NUMBER(max_connect_rate_per_address, 100, 1000000),
	NUMBER(placement_slack, 8, 0),
	NUMBER(session_timeout_secs, 300, 0),
	NUMBER(keep_alive_timeout_secs, 60, 30),
	NUMBER(max_keepalive, 0, 600),
	NUMBER(connect_timeout, 10, 5),
	NUMBER(max_packet_size, 1048576, 65536),
	NUMBER(max_connect_size, 131072, 4096),
	NUMBER(max_http_request_size, 8192, 2048),
	NUMBER(max_client_id_length, 1024, 64),
	NUMBER(retained_message_limit, 10000, 77),
	NUMBER(max_inflight, 20, 100),
	NUMBER(topic_alias_maximum_out, 10, 0),
	NUMBER(topic_alias_max_bytes, 65536, 1),
	NUMBER(max_queued_messages, 1000, 50),
	NUMBER(max_queued_bytes, 16777216, 1000000),
	NUMBER(max_queued_bytes_total, 268435456, 3000000),
	NUMBER(max_inflight_bytes, 16777216, 1),
	NUMBER(max_output_bytes, 2097152, 1024),
	NUMBER(max_router_backlog_bytes, 67108864, 2097152),
	NUMBER(max_topic_levels, 128, 8),
	NUMBER(max_topic_length, 65535, 1024),
	TEXT(shared_subscription_policy, "round_robin", "hash_publisher"),
	TEXT(user, "iotd", "mqtt"),
	NUMBER(auth_enabled, false, false),
	TEXT(auth_backend, "none", "none"),
	TEXT(auth_password_file, "", "/etc/iotd/passwd"),
	TEXT(auth_acl_file, "", "/etc/iotd/acl"),
	TEXT(auth_jwt_key_file, "", "/etc/iotd/keys.pem"),
	TEXT(auth_jwt_username_claim, "sub", "name"),
	TEXT(auth_jwt_read_claim, "", "mqtt_read"),
	TEXT(auth_jwt_write_claim, "", "mqtt_write"),
	NUMBER(auth_allow_anonymous, false, true),
	NUMBER(auth_jwt_leeway, 0, 30),
	NUMBER(auth_hash_threads, 2, 4),
	NUMBER(auth_max_pending, 256, 100),
	NUMBER(auth_max_failure_delay_ms, 5000, 2000),
	TEXT(storage_backend, "memory", "disk"),
	TEXT(storage_path, "/var/lib/iotd", "/srv/iotd"),
	NUMBER(log_level, LOG_LVL_INFO, LOG_LVL_DEBUG),
	NUMBER(log_format, LOG_FMT_TEXT, LOG_FMT_JSON),
};

/* Each of settings in c: its default, or the full file's value; a wrong one is named. */
static void assert_settings(const struct iotd_config *c, bool full)
{
	for (size_t i = 0; i < ARRAY_SIZE(settings); i++) {
		const struct setting *s = &settings[i];
		const char *at = (const char *)c + s->off, *text = full ? s->full_text : s->def_text;
		long want = full ? s->full : s->def, got;

		if (s->type == SETTING_TEXT) {
			if (strcmp(at, text) != 0)
				fail_msg("%s is '%s', want '%s'", s->name, at, text);
			continue;
		}
		got = s->type == SETTING_LONG ? *(const long *)at
		    : s->type == SETTING_INT ? *(const int *)at : *(const bool *)at;
		if (got != want)
			fail_msg("%s is %ld, want %ld", s->name, got, want);
	}
}

/* ---- defaults and the file ---- */

static void defaults_are_the_documented_values(void **state)
{
	struct iotd_config c;

	config_defaults(&c);
	assert_int_equal(c.n_listen, 1);
	assert_string_equal(c.listen[0].host, "127.0.0.1");
	assert_string_equal(c.listen[0].port, "1883");
	assert_int_equal(c.listen[0].family, AF_INET);
	assert_settings(&c, false);
	assert_string_equal(c.path, "");
}

static void missing_default_file_gives_defaults(void **state)
{
	struct cli_args a = { .config_path = "/nonexistent/iotd.conf", .workers = -1 };
	struct iotd_config c, d;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(config_load(&c, &a, no_env, err, sizeof(err)), 0);
	config_defaults(&d);
	assert_memory_equal(&c, &d, sizeof(c));
}

static void no_config_path_reads_the_default_path(void **state)
{
	struct cli_args a = { .workers = -1 };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	if (access(IOTD_DEFAULT_CONFIG, F_OK) == 0)
		skip();	/* an installed file would make the result depend on it */
	assert_int_equal(config_load(&c, &a, no_env, err, sizeof(err)), 0);
	assert_int_equal(c.max_connections, 10000);
}

static void missing_explicit_file_is_an_error_naming_it(void **state)
{
	struct cli_args a = { .config_path = "/nonexistent/x.conf",
			      .config_explicit = true, .workers = -1 };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(config_load(&c, &a, no_env, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "/nonexistent/x.conf"));
	assert_non_null(strstr(err, "No such file"));
}

static void full_file_sets_every_key(void **state)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load(
		"# every key, none at its default\n"
		"server {\n"
		"  listen_addresses = {\"0.0.0.0:1883\", \"[::1]:8883\", \"tcp://broker.local:1884\", \":1885\"}\n"
		"  workers = 4\n"
		"  max_connections = 500\n"
		"  max_sessions = 700\n"
		"  max_subscriptions_per_session = 9\n"
		"  max_connections_per_address = 0\n"
		"  max_connect_rate_per_address = 1000000\n"
		"  placement_slack = 0\n"
		"  session_timeout_secs = 0\n"
		"  keep_alive_timeout_secs = 30\n"
		"  max_keepalive = 600\n"
		"  connect_timeout = 5\n"
		"  max_packet_size = 65536\n"
		"  max_connect_size = 4096\n"
		"  max_http_request_size = 2048\n"
		"  max_client_id_length = 64\n"
		"  retained_message_limit = 77\n"
		"  max_inflight = 100\n"
		"  topic_alias_maximum_out = 0\n"
		"  topic_alias_max_bytes = 1\n"
		"  max_queued_messages = 50\n"
		"  max_queued_bytes = 1000000\n"
		"  max_queued_bytes_total = 3000000\n"
		"  max_inflight_bytes = 1\n"
		"  max_output_bytes = 1024\n"
		"  max_router_backlog_bytes = 2097152\n"
		"  max_topic_levels = 8\n"
		"  max_topic_length = 1024\n"
		"  shared_subscription_policy = hash_publisher\n"
		"  user = \"mqtt\"\n"
		"}\n"
		"auth { enabled = false backend = \"none\"\n"
		"  password_file = \"/etc/iotd/passwd\" acl_file = \"/etc/iotd/acl\"\n"
		"  jwt_key_file = \"/etc/iotd/keys.pem\" jwt_username_claim = name\n"
		"  jwt_read_claim = mqtt_read jwt_write_claim = mqtt_write jwt_leeway = 30\n"
		"  allow_anonymous = true hash_threads = 4 max_pending = 100\n"
		"  max_failure_delay_ms = 2000 }\n"
		"storage {\n  backend = disk\n  path = \"/srv/iotd\"\n}\n"
		"logging { level = debug format = json }\n",
		no_env, &c, err, sizeof(err)), 0);
	assert_int_equal(c.n_listen, 4);
	assert_string_equal(c.listen[0].host, "0.0.0.0");
	assert_int_equal(c.listen[0].family, AF_INET);
	assert_string_equal(c.listen[1].host, "::1");
	assert_string_equal(c.listen[1].port, "8883");
	assert_int_equal(c.listen[1].family, AF_INET6);
	assert_string_equal(c.listen[2].host, "broker.local");
	assert_int_equal(c.listen[2].family, AF_UNSPEC);
	assert_string_equal(c.listen[3].host, "");
	assert_string_equal(c.listen[3].port, "1885");
	assert_settings(&c, true);
	assert_string_equal(c.path, conf_path);
}

static void file_keys_keep_defaults_for_the_rest(void **state)
{
	struct iotd_config c;

	assert_loads("server { max_inflight = 7 }\n", &c);
	assert_int_equal(c.max_inflight, 7);
	assert_int_equal(c.max_connections, 10000);
	assert_int_equal(c.n_listen, 1);
	assert_string_equal(c.listen[0].host, "127.0.0.1");
}

static void enum_values_are_case_insensitive(void **state)
{
	struct iotd_config c;

	assert_loads("storage { backend = DISK }\nlogging { level = Warn }\n", &c);
	assert_string_equal(c.storage_backend, "disk");
	assert_int_equal(c.log_level, LOG_LVL_WARN);
}

struct bad_value {
	const char *section, *key, *value;
};

static const struct bad_value bad_values[] = {
	{ "server", "max_connections", "abc" },
	{ "server", "max_connections", "-1" },
	{ "server", "max_connections", "0" },
	{ "server", "max_connections", "99999999999999999999999" },
	{ "server", "max_connections", "0x10" },
	{ "server", "max_connections", "5s" },
	{ "server", "workers", "65" },
	{ "server", "placement_slack", "-1" },
	{ "server", "placement_slack", "1000001" },
	{ "server", "session_timeout_secs", "-5" },
	{ "server", "keep_alive_timeout_secs", "65536" },
	{ "server", "max_keepalive", "70000" },
	{ "server", "connect_timeout", "0" },
	{ "server", "max_packet_size", "15" },
	{ "server", "max_packet_size", "268435461" },
	{ "server", "max_connect_size", "63" },
	{ "server", "max_connect_size", "268435461" },
	{ "server", "max_http_request_size", "511" },
	{ "server", "max_http_request_size", "65537" },
	{ "server", "max_client_id_length", "22" },
	{ "server", "max_client_id_length", "65536" },
	{ "server", "retained_message_limit", "0" },
	{ "server", "max_inflight", "0" },
	{ "server", "max_inflight", "65536" },
	{ "server", "topic_alias_maximum_out", "1025" },
	{ "server", "topic_alias_maximum_out", "-1" },
	{ "server", "topic_alias_max_bytes", "0" },
	{ "server", "topic_alias_max_bytes", "1073741825" },
	{ "server", "max_queued_messages", "" },
	{ "server", "max_queued_bytes", "1x" },
	{ "server", "max_queued_bytes", "1099511627777" },
	{ "server", "max_queued_bytes_total", "-1" },
	{ "server", "max_queued_bytes_total", "70368744177665" },
	{ "server", "max_sessions", "-1" },
	{ "server", "max_sessions", "2147483648" },
	{ "server", "max_subscriptions_per_session", "-1" },
	{ "server", "max_subscriptions_per_session", "ten" },
	{ "server", "max_inflight_bytes", "0" },
	{ "server", "max_inflight_bytes", "1099511627777" },
	{ "server", "max_output_bytes", "1023" },
	{ "server", "max_output_bytes", "-1" },
	{ "server", "max_connections_per_address", "-1" },
	{ "server", "max_connections_per_address", "1048577" },
	{ "server", "max_connect_rate_per_address", "1000001" },
	{ "server", "max_connect_rate_per_address", "1.5" },
	{ "server", "max_router_backlog_bytes", "0" },
	{ "server", "max_router_backlog_bytes", "1048575" },
	{ "server", "max_router_backlog_bytes", "1099511627777" },
	{ "server", "max_topic_levels", "0" },
	{ "server", "max_topic_length", "65536" },
	{ "server", "user", "root;rm" },
	{ "server", "user", "-x" },
	{ "server", "listen_addresses", "1.2.3.4" },
	{ "auth", "enabled", "maybe" },
	{ "auth", "backend", "ldap" },
	{ "auth", "password_file", "passwd" },
	{ "auth", "jwt_read_claim", "a b" },
	{ "auth", "hash_threads", "0" },
	{ "auth", "hash_threads", "65" },
	{ "auth", "max_pending", "0" },
	{ "auth", "max_failure_delay_ms", "60001" },
	{ "auth", "jwt_leeway", "-1" },
	{ "server", "shared_subscription_policy", "random" },
	{ "storage", "backend", "sql" },
	{ "storage", "path", "relative/dir" },
	{ "logging", "level", "loud" },
	{ "logging", "format", "xml" },
};

static void invalid_values_name_file_line_and_key(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(bad_values); i++) {
		const struct bad_value *b = &bad_values[i];
		char text[256], want[256], err[CONFIG_ERR_LEN];
		struct iotd_config c;
		bool list = strcmp(b->key, "listen_addresses") == 0;

		snprintf(text, sizeof(text), "# line 1\n%s {\n  %s = %s\"%s\"%s\n}\n",
			 b->section, b->key, list ? "{" : "", b->value, list ? "}" : "");
		snprintf(want, sizeof(want), "%s:3: %s: %s: invalid value '%s'",
			 conf_path, b->section, b->key, b->value);
		err[0] = '\0';
		if (load(text, no_env, &c, err, sizeof(err)) != -1 ||
		    strncmp(err, want, strlen(want)) != 0)
			fail_msg("%s.%s = '%s': got \"%s\", want \"%s...\"", b->section,
				 b->key, b->value, err, want);
	}
}

static void unknown_key_is_rejected_with_its_line(void **state)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN], want[128];

	assert_int_equal(load("server {\n  workers = 1\n  max_conections = 5\n}\n",
			      no_env, &c, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s:3: server: max_conections: unknown key", conf_path);
	assert_string_equal(err, want);
}

static void unknown_section_is_rejected(void **state)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("\nlistener { port = 1 }\n", no_env, &c, err, sizeof(err)), -1);
	assert_error_at(err, 2, "listener: unknown section");
}

static void key_outside_its_section_is_rejected(void **state)
{
	assert_load_fails("workers = 4\n", ":1: workers: unknown section");
	assert_load_fails("server|workers = 4\n", "workers");
}

static void syntax_errors_name_file_and_line(void **state)
{
	static const struct { const char *text; int line; const char *what; } cases[] = {
		{ "server {\n  workers = 1\n", 1, "'{' not closed" },
		{ "server {\n  listen_addresses = {\":1\"\n}\n", 1, "'{' not closed" },
		{ "# c\nserver {\n  workers 1\n}\n", 3, "server: missing equal sign" },
		{ "server {\n  user = \"iotd\n}\n", 2, "string not closed" },
		{ "server {\n  user = 'iotd\n}\n", 2, "string not closed" },
		{ "\n/* off\nserver { workers = 1 }\n", 2, "comment not closed" },
		{ "\n\n}\n", 3, "unexpected closing brace" },
		{ "server = 1\n", 1, "missing opening brace for section 'server'" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct iotd_config c;
		char err[CONFIG_ERR_LEN], want[128];

		snprintf(want, sizeof(want), "%s:%d: %s", conf_path, cases[i].line, cases[i].what);
		if (load(cases[i].text, no_env, &c, err, sizeof(err)) != -1 ||
		    strncmp(err, want, strlen(want)) != 0)
			fail_msg("case %zu: got \"%s\", want \"%s...\"", i, err, want);
	}
}

static void comments_anywhere_keep_line_numbers_right(void **state)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN], want[128];

	assert_int_equal(load("# one\n// two\n/* three\n four */\nserver {\n"
			      "  listen_addresses = {\n"
			      "    \"127.0.0.1:1883\", # loopback\n"
			      "    // \"[::1]:1883\",\n"
			      "    \":1884\" /* any */\n"
			      "  }\n"
			      "  path_like = tcp://h:1 # '//' inside a value is not a comment\n"
			      "}\n", no_env, &c, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s:11: server: path_like: unknown key", conf_path);
	assert_string_equal(err, want);

	assert_loads("server {\n  listen_addresses = {\n    \"127.0.0.1:1883\", # lo\n"
		     "    \":1884\" // any\n  }\n}\n", &c);
	assert_int_equal(c.n_listen, 2);
	assert_string_equal(c.listen[1].port, "1884");
}

static void nul_byte_in_file_is_rejected_with_its_line(void **state)
{
	struct cli_args a = explicit_args();
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];
	FILE *f = fopen(conf_path, "w");

	assert_non_null(f);
	fwrite("server {\n\n workers = 1\0 }\n", 1, 26, f);
	fclose(f);
	assert_int_equal(config_load(&c, &a, no_env, err, sizeof(err)), -1);
	assert_error_at(err, 3, "NUL byte");
}

static void empty_or_oversized_listen_list_is_rejected(void **state)
{
	char text[1024];
	size_t n;

	assert_load_fails("server { listen_addresses = {} }\n", "listen_addresses: empty list");

	n = (size_t)snprintf(text, sizeof(text), "server { listen_addresses = {");
	for (int i = 0; i <= CONFIG_MAX_LISTEN; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\":%d\"", i ? "," : "",
				      2000 + i);
	snprintf(text + n, sizeof(text) - n, "} }\n");
	assert_load_fails(text, "listen_addresses: more than 16 addresses");
}

static void tls_listeners_are_refused_without_tls(void **state)
{
	struct iotd_config c;

	assert_loads("server { listen_addresses = { \":1883\", \"ws://:8080/mqtt\" } }\n", &c);
	assert_int_equal(c.listen[1].transport, LISTEN_WS);
	assert_string_equal(c.listen[1].path, "/mqtt");
	assert_load_fails("server { listen_addresses = { \"mqtts://:8883\" } }\n",
			  "listen_addresses: mqtts://*:8883 needs tls.cert_file and tls.key_file");
	assert_load_fails("server { listen_addresses = { \":1\", \"wss://h:443/m\" } }\n",
			  "wss://h:443 needs tls.cert_file and tls.key_file");
	assert_loads("server { listen_addresses = { \"mqtts://:8883\", \"wss://h:443/m\" } }\n"
		     "tls { cert_file = \"/c.pem\"\n key_file = \"/k.pem\" }\n", &c);
	assert_int_equal(c.listen[0].transport, LISTEN_MQTTS);
	assert_int_equal(c.listen[1].transport, LISTEN_WSS);
}

static void named_tls_certificates(void **state)
{
	static const char named[] =
		"tls { cert_file = \"/c.pem\"\n key_file = \"/k.pem\"\n"
		" certificate \"internal\" { cert_file = \"/i.pem\"\n key_file = \"/i.key\"\n"
		"  ca_file = \"/ca.pem\"\n require_certificate = true }\n"
		" certificate \"b-2.x\" { cert_file = \"/b.pem\"\n key_file = \"/b.key\" } }\n";
	struct iotd_config c;
	struct tls_cert_files tc;
	char text[1024];

	snprintf(text, sizeof(text), "server { listen_addresses = { \"mqtts://:8883\", "
		 "\"wss://h:443/m?tls=internal\", \"mqtts://:8884?tls=b-2.x\" } }\n%s", named);
	assert_loads(text, &c);
	assert_int_equal(c.n_tls_named, 2);
	assert_int_equal(config_tls_certs(&c), 3);
	assert_int_equal(c.listen[0].tls, 0);
	assert_int_equal(c.listen[1].tls, 1);
	assert_string_equal(c.listen[1].path, "/m");
	assert_string_equal(c.listen[1].tls_name, "internal");
	assert_int_equal(c.listen[2].tls, 2);
	config_tls_cert(&c, 1, &tc);
	assert_string_equal(tc.name, "internal");
	assert_string_equal(tc.cert_file, "/i.pem");
	assert_string_equal(tc.key_file, "/i.key");
	assert_string_equal(tc.ca_file, "/ca.pem");
	assert_true(tc.require_certificate);
	config_tls_cert(&c, 2, &tc);
	assert_false(tc.require_certificate);
	assert_string_equal(tc.ca_file, "");
	config_tls_cert(&c, 0, &tc);
	assert_string_equal(tc.cert_file, "/c.pem");

	/* A name no section declares; a query on a listener without TLS. */
	snprintf(text, sizeof(text), "server { listen_addresses = { \"mqtts://:8883?tls=intern\" "
		 "} }\n%s", named);
	assert_load_fails(text, "mqtts://*:8883?tls=intern: no tls { certificate \"intern\" { } } "
			  "is declared");
	assert_load_fails("server { listen_addresses = { \"ws://:80/m?tls=a\" } }\n",
			  "invalid value");
	assert_load_fails("server { listen_addresses = { \"mqtts://:8883?tls=\" } }\n",
			  "invalid value");
	assert_load_fails("server { listen_addresses = { \"mqtts://:8883?x=a\" } }\n",
			  "invalid value");
	/* Named ones only: a listener without ?tls= needs tls { }'s own. */
	assert_loads("server { listen_addresses = { \"mqtts://:1?tls=a\" } }\n"
		     "tls { certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\" } }\n", &c);
	assert_true(config_tls(&c));
	assert_load_fails("server { listen_addresses = { \"mqtts://:1\" } }\n"
			  "tls { certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\" } }\n",
			  "needs tls.cert_file and tls.key_file, or ?tls=name");
	/* Each named certificate is whole and checked. */
	assert_load_fails("tls { certificate \"a\" { cert_file = \"/a\" } }\n",
			  "tls: certificate \"a\": certificate needs key_file");
	assert_load_fails("tls { certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\"\n"
			  " require_certificate = true } }\n",
			  "tls: certificate \"a\": require_certificate needs ca_file");
	assert_load_fails("tls { certificate \"a\" { cert_file = \"rel\" } }\n",
			  "tls: certificate \"a\": cert_file: invalid value 'rel' (expected an "
			  "absolute path)");
	assert_load_fails("tls { certificate \"a b\" { cert_file = \"/a\" } }\n",
			  "expected a name of up to 31 letters");
	assert_load_fails("tls { certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\" }\n"
			  " certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\" } }\n",
			  "tls: found duplicate title 'a'");
	assert_load_fails("tls { certificate \"a\" { cert = \"/a\" } }\n", "unknown key");
}

/*
 * tls.use_identity_as_username: every TLS listener's certificate, tls { }'s
 * own or a named one, requires a client certificate; plain listeners and
 * certificates no listener presents do not matter.
 */
static void identity_needs_certificates_where_used(void **state)
{
	static const char top_plain[] = "cert_file = \"/c.pem\"\n key_file = \"/k.pem\"\n";
	static const char top_req[] = "cert_file = \"/c.pem\"\n key_file = \"/k.pem\"\n"
				      " ca_file = \"/ca.pem\"\n require_certificate = true\n";
	static const char a_plain[] = "certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\" }\n";
	static const char a_req[] = "certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\"\n"
				    " ca_file = \"/ca\"\n require_certificate = true }\n";
	static const struct {
		const char *listen, *top, *named, *fails_with;
	} cases[] = {
		/* Named certificates only. */
		{ "\"mqtts://:1?tls=a\"", "", a_plain,
		  "use_identity_as_username needs require_certificate = true where it is used: "
		  "mqtts://*:1?tls=a presents tls.certificate \"a\", whose require_certificate "
		  "is false" },
		{ "\"mqtts://:1?tls=a\", \"wss://h:2/m?tls=a\"", "", a_req, NULL },
		/* tls { } requires, the named one does not, and the other way round. */
		{ "\"mqtts://:1\", \"wss://h:2/m?tls=a\"", top_req, a_plain,
		  "wss://h:2?tls=a presents tls.certificate \"a\", whose require_certificate "
		  "is false" },
		{ "\"mqtts://:1?tls=a\", \"wss://h:2/m\"", top_plain, a_req,
		  "wss://h:2 presents tls { }'s certificate, and tls.require_certificate is false" },
		{ "\":3\", \"mqtts://:1?tls=a\"", top_plain, a_req, NULL },
		{ "\"mqtts://:1\", \"wss://h:2/m?tls=a\"", top_req, a_req, NULL },
		/* No TLS listener presents the certificate that does not require. */
		{ "\":3\", \"ws://:4/m\"", top_plain, a_plain, NULL },
	};
	static const char named_only[] = "server { listen_addresses = { \"mqtts://:1?tls=a\" } }\n"
					 "tls { certificate \"a\" { cert_file = \"/a\"\n"
					 " key_file = \"/k\" } }\n";
	char *env[] = { "IOTD_TLS_USE_IDENTITY_AS_USERNAME=true", NULL };
	struct iotd_config c;
	char text[1024], err[CONFIG_ERR_LEN];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "server { listen_addresses = { %s } }\n"
			 "tls { use_identity_as_username = true\n %s %s}\n", cases[i].listen,
			 cases[i].top, cases[i].named);
		if (cases[i].fails_with)
			assert_load_fails(text, cases[i].fails_with);
		else
			assert_loads(text, &c);
	}
	/* The message says where the option was set. */
	assert_int_equal(load("server { listen_addresses = { \"mqtts://:1?tls=a\" } }\n"
			      "tls { certificate \"a\" { cert_file = \"/a\"\n key_file = \"/k\" }\n"
			      " use_identity_as_username = true }\n", no_env, &c, err, sizeof(err)),
			 -1);
	assert_error_at(err, 4, "tls: use_identity_as_username needs require_certificate");
	assert_int_equal(load(named_only, env, &c, err, sizeof(err)), -1);
	assert_string_equal(err, "environment: IOTD_TLS_USE_IDENTITY_AS_USERNAME: "
			    "use_identity_as_username needs require_certificate = true where it "
			    "is used: mqtts://*:1?tls=a presents tls.certificate \"a\", whose "
			    "require_certificate is false");
}

static void control_characters_in_values_do_not_reach_the_message(void **state)
{
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("server { user = \"a\\033[2Jb\" }\n", no_env, &c, err,
			      sizeof(err)), -1);
	assert_null(strchr(err, '\033'));
	assert_non_null(strstr(err, "'a?[2Jb'"));
}

static void failed_load_leaves_the_config_untouched(void **state)
{
	struct iotd_config c, before;
	char err[CONFIG_ERR_LEN];

	memset(&c, 0x5a, sizeof(c));
	before = c;
	assert_int_equal(load("server { workers = 2\n max_inflight = 0 }\n", no_env, &c,
			      err, sizeof(err)), -1);
	assert_memory_equal(&c, &before, sizeof(c));
}

static void shipped_config_file_equals_the_defaults(void **state)
{
	static const char *const keys[] = {
		"listen_addresses", "workers", "max_connections", "max_connections_per_address",
		"max_connect_rate_per_address", "placement_slack", "max_inflight_bytes",
		"max_output_bytes",
		"session_timeout_secs", "keep_alive_timeout_secs", "max_keepalive",
		"connect_timeout", "max_packet_size", "max_connect_size", "max_http_request_size",
		"max_client_id_length", "retained_message_limit", "max_inflight",
		"topic_alias_maximum", "topic_alias_maximum_out", "topic_alias_max_bytes",
		"max_queued_messages", "max_queued_bytes", "max_router_backlog_bytes",
		"max_topic_levels",
		"max_topic_length", "user", "backend", "allow_anonymous", "jwt_username_claim",
		"jwt_leeway", "hash_threads", "max_pending", "max_failure_delay_ms", "path",
		"level", "format",
	};
	struct cli_args a = { .config_path = "contrib/iotd.conf", .config_explicit = true,
			      .workers = -1 };
	struct iotd_config c, d;
	char err[CONFIG_ERR_LEN], text[16384];
	FILE *f = fopen(a.config_path, "r");
	size_t n;

	if (!f)
		skip();	/* run from the top of the source tree to check it */
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		char line[64];

		snprintf(line, sizeof(line), "\t%s = ", keys[i]);
		if (!strstr(text, line))
			fail_msg("contrib/iotd.conf lacks %s", keys[i]);
	}
	if (config_load(&c, &a, no_env, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	config_defaults(&d);
	snprintf(d.path, sizeof(d.path), "%s", a.config_path);
	assert_memory_equal(&c, &d, sizeof(c));
}

/* ---- the environment and precedence ---- */

static void env_overrides_file(void **state)
{
	char *env[] = { "IOTD_SERVER_MAX_CONNECTIONS=5", "IOTD_LOGGING_LEVEL=debug",
			"IOTD_AUTH_ENABLED=no", "PATH=/bin", NULL };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("server { max_connections = 50 workers = 3 }\n", env, &c, err,
			      sizeof(err)), 0);
	assert_int_equal(c.max_connections, 5);
	assert_int_equal(c.workers, 3);
	assert_int_equal(c.log_level, LOG_LVL_DEBUG);
}

static void env_listen_list_is_comma_separated(void **state)
{
	char *env[] = { "IOTD_SERVER_LISTEN_ADDRESSES=127.0.0.1:1883, [::1]:1884", NULL };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("server { listen_addresses = {\":9\"} }\n", env, &c, err,
			      sizeof(err)), 0);
	assert_int_equal(c.n_listen, 2);
	assert_string_equal(c.listen[0].host, "127.0.0.1");
	assert_string_equal(c.listen[1].host, "::1");
	assert_string_equal(c.listen[1].port, "1884");
}

static void env_invalid_value_names_the_variable(void **state)
{
	static char *const bad[] = {
		"IOTD_SERVER_MAX_CONNECTIONS=abc",
		"IOTD_SERVER_WORKERS=-1",
		"IOTD_SERVER_LISTEN_ADDRESSES=127.0.0.1:1883,,:1884",
		"IOTD_SERVER_LISTEN_ADDRESSES=",
		"IOTD_STORAGE_BACKEND=tape",
		"IOTD_LOGGING_FORMAT=yaml",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char *env[] = { bad[i], NULL };
		char want[96], err[CONFIG_ERR_LEN];
		struct iotd_config c;

		snprintf(want, sizeof(want), "environment: %.*s: invalid value",
			 (int)strcspn(bad[i], "="), bad[i]);
		if (load("", env, &c, err, sizeof(err)) != -1 ||
		    strncmp(err, want, strlen(want)) != 0)
			fail_msg("%s: got \"%s\"", bad[i], err);
	}
}

static void env_misspelt_setting_is_rejected(void **state)
{
	char *env[] = { "IOTD_SERVER_MAX_CONECTIONS=5", NULL };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("", env, &c, err, sizeof(err)), -1);
	assert_string_equal(err, "environment: IOTD_SERVER_MAX_CONECTIONS: no such setting");
}

static void env_other_iotd_variables_are_ignored(void **state)
{
	char *env[] = { "IOTD_BIN=/usr/sbin/iotd", "IOTD_TOOLS=/x", "IOTD_SERVER=1", NULL };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(load("", env, &c, err, sizeof(err)), 0);
}

static void command_line_overrides_env_and_file(void **state)
{
	char *env[] = { "IOTD_SERVER_WORKERS=3", "IOTD_SERVER_LISTEN_ADDRESSES=:2000", NULL };
	struct cli_args a = explicit_args();
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	write_conf("server { workers = 2 listen_addresses = {\":1000\"} }\n"
		   "logging { level = warn }\n");
	assert_int_equal(config_load(&c, &a, env, err, sizeof(err)), 0);
	assert_int_equal(c.workers, 3);
	assert_string_equal(c.listen[0].port, "2000");
	assert_int_equal(c.log_level, LOG_LVL_WARN);

	a.workers = 4;
	a.listen[0] = "[::]:3000";
	a.listen[1] = ":3001";
	a.n_listen = 2;
	a.verbose = 1;
	assert_int_equal(config_load(&c, &a, env, err, sizeof(err)), 0);
	assert_int_equal(c.workers, 4);
	assert_int_equal(c.n_listen, 2);
	assert_string_equal(c.listen[0].port, "3000");
	assert_int_equal(c.listen[0].family, AF_INET6);
	assert_string_equal(c.listen[1].port, "3001");
	assert_int_equal(c.log_level, LOG_LVL_INFO);

	a.verbose = 5;	/* capped */
	assert_int_equal(config_load(&c, &a, env, err, sizeof(err)), 0);
	assert_int_equal(c.log_level, LOG_LVL_DEBUG);

	a.workers = IOTD_MAX_WORKERS + 1;
	assert_int_equal(config_load(&c, &a, env, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "option -w"));
}

static void keepalive_over_the_cap_blames_the_setting_that_was_given(void **state)
{
	char *env[] = { "IOTD_SERVER_MAX_KEEPALIVE=30", NULL };

	/* The default keep-alive (60) conflicts with the cap set in the environment. */
	assert_blames_the_setting_given(env, "environment: IOTD_SERVER_MAX_KEEPALIVE: "
					"keep_alive_timeout_secs (60) exceeds max_keepalive (30)",
					"server {\n max_keepalive = 100\n keep_alive_timeout_secs = 200\n}\n",
					"server: keep_alive_timeout_secs (200)");
}

/*
 * The CONNECT bounds take their minima (a CONNECT with the 23-byte client
 * id every server must accept), and a max_connect_size above
 * max_packet_size is no error: the worker applies the lower of the two.
 */
static void connect_bounds_take_their_minima_and_any_packet_size(void **state)
{
	char *env[] = { "IOTD_SERVER_MAX_CONNECT_SIZE=2097152",
			"IOTD_SERVER_MAX_CLIENT_ID_LENGTH=65535", NULL };
	struct iotd_config c;
	char err[CONFIG_ERR_LEN];

	assert_loads("server {\n max_connect_size = 64\n max_client_id_length = 23\n}\n", &c);
	assert_int_equal(c.max_connect_size, 64);
	assert_int_equal(c.max_client_id_length, 23);

	assert_int_equal(load("server {\n max_packet_size = 1024\n}\n", env, &c, err,
			      sizeof(err)), 0);
	assert_int_equal(c.max_packet_size, 1024);
	assert_int_equal(c.max_connect_size, 2097152);
	assert_int_equal(c.max_client_id_length, 65535);
}

static void max_sessions_below_max_connections_is_rejected(void **state)
{
	char *env[] = { "IOTD_SERVER_MAX_CONNECTIONS=200000", NULL };
	struct iotd_config c;

	/* The default max_sessions (100000) is blamed on the max_connections given. */
	assert_blames_the_setting_given(env, "environment: IOTD_SERVER_MAX_CONNECTIONS: "
					"max_sessions (100000) is below max_connections (200000): "
					"every connection holds a session",
					"server {\n max_connections = 50\n max_sessions = 49\n}\n",
					"server: max_sessions (49) is below max_connections (50)");

	/* Equal is enough; 0 is no cap at all; the new keys take 0 and their largest values. */
	assert_loads("server {\n max_connections = 50\n max_sessions = 50\n}\n", &c);
	assert_loads("server {\n max_connections = 200000\n max_sessions = 0\n"
		     " max_subscriptions_per_session = 0\n max_queued_bytes = 0\n"
		     " max_queued_bytes_total = 0\n}\n", &c);
	assert_int_equal(c.max_sessions, 0);
	assert_int_equal(c.max_subscriptions_per_session, 0);
	assert_int_equal(c.max_queued_bytes, 0);
	assert_int_equal(c.max_queued_bytes_total, 0);
	assert_loads("server {\n max_sessions = 2147483647\n"
		     " max_subscriptions_per_session = 2147483647\n"
		     " max_queued_bytes_total = 70368744177664\n}\n", &c);
	assert_int_equal(c.max_queued_bytes_total, 1L << 46);
}

static void auth_enabled_without_a_backend_is_rejected(void **state)
{
	assert_load_fails("auth {\n enabled = true\n}\n",
			  ":2: auth: enabled is true but backend is 'none'");
}

static void auth_backends_need_their_files(void **state)
{
	struct iotd_config c;

	assert_load_fails("auth {\n backend = file\n}\n",
			  ":2: auth: backend 'file' needs password_file");
	assert_load_fails("auth {\n backend = jwt\n}\n",
			  ":2: auth: backend 'jwt' needs jwt_key_file");
	assert_load_fails("auth {\n backend = jwt\n jwt_key_file = \"/k\"\n"
			  " jwt_username_claim = \"\"\n}\n", "backend 'jwt' needs jwt_username_claim");
	assert_loads("auth {\n backend = file\n password_file = \"/p\"\n}\n", &c);
	assert_true(config_auth_role(&c));
	assert_loads("auth {\n acl_file = \"/a\"\n}\n", &c);
	assert_true(config_auth_role(&c));
	assert_loads("", &c);
	assert_false(config_auth_role(&c));
}

/* auth.enabled, kept for existing files, must agree with the backend when it is set. */
static void auth_enabled_agrees_with_the_backend(void **state)
{
	struct iotd_config c;

	assert_load_fails("auth {\n enabled = false\n backend = file\n password_file = \"/p\"\n}\n",
			  ":2: auth: enabled is false but backend is 'file'");
	assert_loads("auth {\n enabled = true\n backend = file\n password_file = \"/p\"\n}\n", &c);
	assert_loads("auth {\n enabled = false\n}\n", &c);
}

/* ---- listen addresses ---- */

struct listen_case {
	const char *in, *host, *port;
	int family;
	int transport;               /* enum listen_transport */
	const char *path;            /* NULL: "" */
};

static const struct listen_case listen_accepted[] = {
	{ "127.0.0.1:1883", "127.0.0.1", "1883", AF_INET, LISTEN_TCP, NULL },
	{ "0.0.0.0:1", "0.0.0.0", "1", AF_INET, LISTEN_TCP, NULL },
	{ "[::1]:1883", "::1", "1883", AF_INET6, LISTEN_TCP, NULL },
	{ "[::]:8883", "::", "8883", AF_INET6, LISTEN_TCP, NULL },
	{ "[fe80::1%eth0]:1883", "fe80::1%eth0", "1883", AF_INET6, LISTEN_TCP, NULL },
	{ "tcp://10.0.0.1:1883", "10.0.0.1", "1883", AF_INET, LISTEN_TCP, NULL },
	{ "TCP://[::1]:1", "::1", "1", AF_INET6, LISTEN_TCP, NULL },
	{ "tcp://broker.example.com:65535", "broker.example.com", "65535", AF_UNSPEC, LISTEN_TCP, NULL },
	{ "localhost:1883", "localhost", "1883", AF_UNSPEC, LISTEN_TCP, NULL },
	{ ":1883", "", "1883", AF_UNSPEC, LISTEN_TCP, NULL },
	{ "*:1883", "", "1883", AF_UNSPEC, LISTEN_TCP, NULL },
	{ "tcp://:1883", "", "1883", AF_UNSPEC, LISTEN_TCP, NULL },
	{ "host:01883", "host", "1883", AF_UNSPEC, LISTEN_TCP, NULL },
	{ "ws://127.0.0.1:8080", "127.0.0.1", "8080", AF_INET, LISTEN_WS, NULL },
	{ "WS://[::1]:8080/mqtt", "::1", "8080", AF_INET6, LISTEN_WS, "/mqtt" },
	{ "ws://:80/a/b-c_d.e~f", "", "80", AF_UNSPEC, LISTEN_WS, "/a/b-c_d.e~f" },
	{ "ws://host:80/", "host", "80", AF_UNSPEC, LISTEN_WS, "/" },
	{ "wss://host:443/mqtt", "host", "443", AF_UNSPEC, LISTEN_WSS, "/mqtt" },
	{ "mqtts://0.0.0.0:8883", "0.0.0.0", "8883", AF_INET, LISTEN_MQTTS, NULL },
};

static const char *const listen_refused[] = {
	"1.2.3.4", "host:", "host", "host:99999", "host:0", "host:-1", "host:12a",
	"host:123456", "[::1", "[::1]", "[::1]1883", "[::1]:", "[]:1883", "[1.2.3.4]:1883",
	"[::1%]:1883", "::1:1883", "udp://x:1", "http://x:1", "1.2.3.256:1", "10.1:1883",
	"12345:1883", "a..b:1", "-a:1", "ho st:1", " host:1", "host:1 ", "", ":",
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1",
	/* Paths: only WebSocket listeners have one, visible ASCII without query or fragment. */
	"tcp://host:1/mqtt", "host:1/mqtt", "mqtts://host:1/x", "ws://host:1mqtt",
	"ws://host:1/a b", "ws://host:1/a?b", "ws://host:1/a#b", "ws://host/mqtt", "ws://:1/\x7f",
	"ws://host:1/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	"ws://ws://host:1", "wss:/host:1",
};

static void listen_addresses_parse_or_are_rejected(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(listen_accepted); i++) {
		const struct listen_case *t = &listen_accepted[i];
		struct listen_addr a;

		memset(&a, 0x5a, sizeof(a));
		if (config_parse_listen(t->in, &a) != 0)
			fail_msg("'%s' was rejected", t->in);
		if (strcmp(a.host, t->host) != 0 || strcmp(a.port, t->port) != 0 ||
		    a.family != t->family || a.transport != t->transport ||
		    strcmp(a.path, t->path ? t->path : "") != 0)
			fail_msg("'%s' gave host '%s' port '%s' family %d transport %s path '%s'",
				 t->in, a.host, a.port, a.family, listen_transport_name(a.transport),
				 a.path);
	}
	for (size_t i = 0; i < ARRAY_SIZE(listen_refused); i++) {
		struct listen_addr a;

		memset(&a, 0x5a, sizeof(a));
		if (config_parse_listen(listen_refused[i], &a) != -1)
			fail_msg("'%s' was accepted", listen_refused[i]);
	}
	assert_int_equal(config_parse_listen(NULL, &(struct listen_addr){ 0 }), -1);
}

/* ---- argv ---- */

static void args_short_options_are_all_understood(void **state)
{
	char *argv[] = { "iotd", "-c", "/etc/x.conf", "-l", ":1", "-l", "[::1]:2", "-w", "8",
			 "-t", "-v", "-vv", "-h", "-V", NULL };
	struct cli_args a;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(config_parse_args(N_ARGS(argv), argv, &a, err, sizeof(err)), 0);
	assert_string_equal(a.config_path, "/etc/x.conf");
	assert_true(a.config_explicit);
	assert_int_equal(a.n_listen, 2);
	assert_string_equal(a.listen[0], ":1");
	assert_string_equal(a.listen[1], "[::1]:2");
	assert_int_equal(a.workers, 8);
	assert_true(a.test_only);
	assert_int_equal(a.verbose, 3);
	assert_true(a.help);
	assert_true(a.version);
}

static void args_long_options_are_all_understood(void **state)
{
	char *argv[] = { "iotd", "--config=/x.conf", "--listen", ":1", "--workers=0",
			 "--test-config", "--verbose", "--help", "--version", NULL };
	struct cli_args a;
	char err[CONFIG_ERR_LEN];

	assert_int_equal(config_parse_args(N_ARGS(argv), argv, &a, err, sizeof(err)), 0);
	assert_string_equal(a.config_path, "/x.conf");
	assert_int_equal(a.n_listen, 1);
	assert_int_equal(a.workers, 0);
	assert_true(a.test_only);
	assert_int_equal(a.verbose, 1);
	assert_true(a.help && a.version);
}

static void args_defaults_when_none_given(void **state)
{
	char *argv[] = { "iotd", NULL };
	struct cli_args a;
	char err[CONFIG_ERR_LEN];

	memset(&a, 0x5a, sizeof(a));
	assert_int_equal(config_parse_args(N_ARGS(argv), argv, &a, err, sizeof(err)), 0);
	assert_null(a.config_path);
	assert_false(a.config_explicit);
	assert_int_equal(a.n_listen, 0);
	assert_int_equal(a.workers, -1);
	assert_false(a.test_only || a.help || a.version);
	assert_int_equal(a.verbose, 0);
}

struct bad_args {
	const char *argv[5];
	const char *want;
};

static const struct bad_args bad_args[] = {
	{ { "iotd", "-x" }, "unknown option '-x'" },
	{ { "iotd", "-vx" }, "unknown option '-x'" },
	{ { "iotd", "--verbose", "-vq" }, "unknown option '-q'" },
	{ { "iotd", "--bogus" }, "unknown option '--bogus'" },
	{ { "iotd", "--bogus=1" }, "unknown option '--bogus'" },
	{ { "iotd", "--verbose=2" }, "option '--verbose' takes no argument" },
	{ { "iotd", "-c" }, "option '-c' requires an argument" },
	{ { "iotd", "--config" }, "option '--config' requires an argument" },
	{ { "iotd", "-w", "abc" }, "option -w: invalid value 'abc'" },
	{ { "iotd", "-w", "-1" }, "option -w: invalid value '-1'" },
	{ { "iotd", "-w", "65" }, "option -w: invalid value '65'" },
	{ { "iotd", "--workers=4x" }, "option -w: invalid value '4x'" },
	{ { "iotd", "-l", "1.2.3.4" }, "option -l: invalid address '1.2.3.4'" },
	{ { "iotd", "extra" }, "unexpected argument 'extra'" },
	{ { "iotd", "-v", "extra", "-v" }, "unexpected argument 'extra'" },
};

static void args_errors_say_what_is_wrong(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(bad_args); i++) {
		char *argv[6] = { NULL };
		struct cli_args a;
		char err[CONFIG_ERR_LEN] = "";
		int argc = 0;

		while (bad_args[i].argv[argc]) {
			argv[argc] = (char *)bad_args[i].argv[argc];
			argc++;
		}
		if (config_parse_args(argc, argv, &a, err, sizeof(err)) != -1 ||
		    strncmp(err, bad_args[i].want, strlen(bad_args[i].want)) != 0)
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, err, bad_args[i].want);
	}
}

static void args_more_listen_addresses_than_fit_is_an_error(void **state)
{
	char *argv[2 + 2 * (CONFIG_MAX_LISTEN + 1)];
	struct cli_args a;
	char err[CONFIG_ERR_LEN];
	int argc = 0;

	argv[argc++] = "iotd";
	for (int i = 0; i <= CONFIG_MAX_LISTEN; i++) {
		argv[argc++] = "-l";
		argv[argc++] = ":1883";
	}
	argv[argc] = NULL;
	assert_int_equal(config_parse_args(argc, argv, &a, err, sizeof(err)), -1);
	assert_string_equal(err, "option -l: more than 16 addresses");
}

static void args_can_be_parsed_twice(void **state)
{
	char *first[] = { "iotd", "-vx", NULL };
	char *second[] = { "iotd", "-w", "2", NULL };
	struct cli_args a;
	char err[CONFIG_ERR_LEN];

	/* The first parse stops in the middle of a cluster; the second must start clean. */
	assert_int_equal(config_parse_args(N_ARGS(first), first, &a, err, sizeof(err)), -1);
	assert_int_equal(config_parse_args(N_ARGS(second), second, &a, err, sizeof(err)), 0);
	assert_int_equal(a.workers, 2);
	assert_int_equal(a.verbose, 0);
}

static void usage_lists_every_option_and_the_default_path(void **state)
{
	static const char *const want[] = {
		"--config", "--listen", "--workers", "--test-config", "--verbose", "--help",
		"--version", "-c,", "-l,", "-w,", "-t,", "-v,", "-h,", "-V,", IOTD_DEFAULT_CONFIG,
		"Usage: prog",
	};
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	assert_non_null(f);
	config_usage(f, "prog");
	fclose(f);
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		if (!strstr(text, want[i]))
			fail_msg("usage lacks %s", want[i]);
	free(text);
}

/* ---- logging ---- */

static void log_level_and_format_names_parse(void **state)
{
	static const struct { const char *s; int level, format; } cases[] = {
		{ "error", LOG_LVL_ERROR, -1 }, { "warn", LOG_LVL_WARN, -1 },
		{ "info", LOG_LVL_INFO, -1 }, { "debug", LOG_LVL_DEBUG, -1 },
		{ "DEBUG", LOG_LVL_DEBUG, -1 }, { "text", -1, LOG_FMT_TEXT },
		{ "json", -1, LOG_FMT_JSON }, { "JSON", -1, LOG_FMT_JSON },
		{ "", -1, -1 }, { "warning", -1, -1 }, { "infox", -1, -1 },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		assert_int_equal(log_level_parse(cases[i].s), cases[i].level);
		assert_int_equal(log_format_parse(cases[i].s), cases[i].format);
	}
	assert_int_equal(log_level_parse(NULL), -1);
	assert_int_equal(log_format_parse(NULL), -1);
}

struct capture {
	char path[64];
	int fd, saved;
};

/* Point stderr at a temporary file; no cmocka assertion may run until capture_end. */
static void capture_begin(struct capture *c)
{
	snprintf(c->path, sizeof(c->path), "/tmp/iotd-log-XXXXXX");
	c->fd = mkstemp(c->path);
	assert_true(c->fd >= 0);
	fflush(stderr);
	c->saved = dup(STDERR_FILENO);
	dup2(c->fd, STDERR_FILENO);
}

static size_t capture_end(struct capture *c, char *buf, size_t len)
{
	ssize_t n;

	dup2(c->saved, STDERR_FILENO);
	close(c->saved);
	n = pread(c->fd, buf, len - 1, 0);
	close(c->fd);
	unlink(c->path);
	assert_true(n >= 0);
	buf[n] = '\0';
	return (size_t)n;
}

static int setup_log(void **state)
{
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO, LOG_FMT_TEXT);
	log_set_role("worker", 3);
	return 0;
}

static int teardown_log(void **state)
{
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO, LOG_FMT_TEXT);
	log_set_role(NULL, -1);
	return 0;
}

static void text_line_has_pid_role_worker_and_level(void **state)
{
	struct capture c;
	char buf[4096], want[128];

	capture_begin(&c);
	log_warn("hello %d", 42);
	capture_end(&c, buf, sizeof(buf));
	snprintf(want, sizeof(want), " iotd[%d]: worker 3: warn: hello 42\n", (int)getpid());
	assert_non_null(strstr(buf, want));
	/* An ISO 8601 UTC timestamp comes first when not under the journal. */
	assert_true(buf[4] == '-' && buf[10] == 'T' && strchr(buf, 'Z') < strstr(buf, " iotd["));
	assert_int_equal(strchr(buf, '\n') - buf + 1, (long)strlen(buf));
}

static void text_line_without_worker_index(void **state)
{
	struct capture c;
	char buf[4096], want[128];

	log_set_role("router", -1);
	capture_begin(&c);
	log_error("x");
	capture_end(&c, buf, sizeof(buf));
	snprintf(want, sizeof(want), " iotd[%d]: router: error: x\n", (int)getpid());
	assert_non_null(strstr(buf, want));
}

static void messages_above_the_level_are_dropped(void **state)
{
	struct capture c;
	char buf[4096];

	capture_begin(&c);
	log_debug("not shown");
	log_client(LOG_LVL_DEBUG, "c", "r", "not shown");
	log_set_level(LOG_LVL_ERROR);
	log_warn("not shown");
	log_info("not shown");
	log_error("shown");
	log_set_level(LOG_LVL_DEBUG);
	log_debug("shown too");
	capture_end(&c, buf, sizeof(buf));
	assert_null(strstr(buf, "not shown"));
	assert_non_null(strstr(buf, "error: shown\n"));
	assert_non_null(strstr(buf, "debug: shown too\n"));
	assert_int_equal(log_get_level(), LOG_LVL_DEBUG);
}

static void journal_stream_gets_priority_prefixes_instead_of_time(void **state)
{
	static const struct { enum log_level level; const char *prefix; } cases[] = {
		{ LOG_LVL_ERROR, "<3>iotd[" }, { LOG_LVL_WARN, "<4>iotd[" },
		{ LOG_LVL_INFO, "<6>iotd[" }, { LOG_LVL_DEBUG, "<7>iotd[" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct capture c;
		struct stat st;
		char buf[4096], js[64];

		capture_begin(&c);
		fstat(STDERR_FILENO, &st);
		snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
			 (unsigned long long)st.st_ino);
		setenv("JOURNAL_STREAM", js, 1);
		log_init(LOG_LVL_DEBUG, LOG_FMT_TEXT);
		log_client(cases[i].level, NULL, NULL, "m");
		capture_end(&c, buf, sizeof(buf));
		assert_int_equal(strncmp(buf, cases[i].prefix, strlen(cases[i].prefix)), 0);
	}
}

static void journal_stream_of_another_file_is_ignored(void **state)
{
	struct capture c;
	char buf[4096];

	setenv("JOURNAL_STREAM", "1:1", 1);
	capture_begin(&c);
	log_init(LOG_LVL_INFO, LOG_FMT_TEXT);
	log_info("m");
	capture_end(&c, buf, sizeof(buf));
	assert_true(buf[0] != '<');
}

static void text_client_fields_are_appended_and_escaped(void **state)
{
	struct capture c;
	char buf[4096];

	capture_begin(&c);
	log_client(LOG_LVL_INFO, "dev 1\nfake: line", "10.0.0.1:5000", "connected");
	capture_end(&c, buf, sizeof(buf));
	assert_non_null(strstr(buf, ": info: connected client_id=dev\\x201\\nfake:\\x20line "
				    "remote=10.0.0.1:5000\n"));
	assert_int_equal(strchr(buf, '\n') - buf + 1, (long)strlen(buf));
}

static void json_line_has_all_fields(void **state)
{
	struct capture c;
	char buf[4096], want[256];

	log_init(LOG_LVL_INFO, LOG_FMT_JSON);
	capture_begin(&c);
	log_client(LOG_LVL_WARN, "sensor-1", "[::1]:4000", "bye");
	capture_end(&c, buf, sizeof(buf));
	assert_int_equal(strncmp(buf, "{\"ts\":\"", 7), 0);
	snprintf(want, sizeof(want), "Z\",\"level\":\"warn\",\"role\":\"worker\",\"worker\":3,"
		 "\"pid\":%d,\"client_id\":\"sensor-1\",\"remote\":\"[::1]:4000\","
		 "\"msg\":\"bye\"}\n", (int)getpid());
	assert_non_null(strstr(buf, want));
}

static void json_omits_worker_and_client_fields_when_absent(void **state)
{
	struct capture c;
	char buf[4096];

	log_init(LOG_LVL_INFO, LOG_FMT_JSON);
	log_set_role("supervisor", -1);
	capture_begin(&c);
	log_info("up");
	capture_end(&c, buf, sizeof(buf));
	assert_non_null(strstr(buf, "\"role\":\"supervisor\",\"pid\":"));
	assert_null(strstr(buf, "\"worker\""));
	assert_null(strstr(buf, "\"client_id\""));
	assert_null(strstr(buf, "\"remote\""));
}

static void json_escapes_quotes_controls_and_invalid_utf8(void **state)
{
	static const struct { const char *in, *out; } cases[] = {
		{ "plain", "plain" },
		{ "a\"b", "a\\\"b" },
		{ "back\\slash", "back\\\\slash" },
		{ "nl\ncr\rtab\t", "nl\\ncr\\rtab\\t" },
		{ "\b\f", "\\b\\f" },
		{ "bell\x01\x1f\x7f", "bell\\u0001\\u001f\\u007f" },
		{ "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" },
		{ "bad\xff", "bad\\ufffd" },
		{ "cut\xc3", "cut\\ufffd" },
		{ "overlong\xc0\xaf", "overlong\\ufffd\\ufffd" },
		{ "surrogate\xed\xa0\x80", "surrogate\\ufffd\\ufffd\\ufffd" },
		{ "toobig\xf4\x90\x80\x80", "toobig\\ufffd\\ufffd\\ufffd\\ufffd" },
	};

	log_init(LOG_LVL_INFO, LOG_FMT_JSON);
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct capture c;
		char buf[4096], want[256];

		capture_begin(&c);
		log_client(LOG_LVL_INFO, cases[i].in, NULL, "%s", cases[i].in);
		capture_end(&c, buf, sizeof(buf));
		snprintf(want, sizeof(want), "\"msg\":\"%s\"}\n", cases[i].out);
		if (!strstr(buf, want))
			fail_msg("case %zu: line %s lacks %s", i, buf, want);
		snprintf(want, sizeof(want), "\"client_id\":\"%s\"", cases[i].out);
		if (!strstr(buf, want))
			fail_msg("case %zu: line %s lacks %s", i, buf, want);
	}
}

static void long_lines_are_cut_but_stay_one_valid_line(void **state)
{
	static char big[8192];
	enum log_format formats[] = { LOG_FMT_TEXT, LOG_FMT_JSON };

	memset(big, '"', sizeof(big) - 1);
	for (size_t i = 0; i < ARRAY_SIZE(formats); i++) {
		struct capture c;
		char buf[16384];
		size_t n;

		log_init(LOG_LVL_INFO, formats[i]);
		capture_begin(&c);
		log_client(LOG_LVL_INFO, big, big, "%s", big);
		n = capture_end(&c, buf, sizeof(buf));
		assert_true(n <= 2048);
		assert_int_equal(buf[n - 1], '\n');
		assert_int_equal(strchr(buf, '\n') - buf + 1, (long)n);
		if (formats[i] == LOG_FMT_JSON)
			assert_int_equal(strcmp(buf + n - 6, "...\"}\n"), 0);
		else
			assert_non_null(strstr(buf, "... client_id="));
	}
}

static void logging_keeps_errno_and_supports_percent_m(void **state)
{
	struct capture c;
	char buf[4096];

	capture_begin(&c);
	errno = ENOENT;
	log_info("open: %m");
	int after = errno;
	capture_end(&c, buf, sizeof(buf));
	assert_int_equal(after, ENOENT);
	assert_non_null(strstr(buf, "open: No such file or directory\n"));
}

static void fatal_logs_an_error_and_exits_1(void **state)
{
	int status, fds[2];
	char buf[512] = "";
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fds[1], STDERR_FILENO);
		fatal("broken: %d", 7);
	}
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 1);
	assert_non_null(strstr(buf, ": error: broken: 7\n"));
}

#define CONF_TEST(f) cmocka_unit_test_setup_teardown(f, setup_conf, teardown_conf)
#define LOG_TEST(f) cmocka_unit_test_setup_teardown(f, setup_log, teardown_log)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults_are_the_documented_values),
		cmocka_unit_test(missing_default_file_gives_defaults),
		cmocka_unit_test(no_config_path_reads_the_default_path),
		cmocka_unit_test(missing_explicit_file_is_an_error_naming_it),
		CONF_TEST(full_file_sets_every_key),
		CONF_TEST(file_keys_keep_defaults_for_the_rest),
		CONF_TEST(enum_values_are_case_insensitive),
		CONF_TEST(invalid_values_name_file_line_and_key),
		CONF_TEST(unknown_key_is_rejected_with_its_line),
		CONF_TEST(unknown_section_is_rejected),
		CONF_TEST(key_outside_its_section_is_rejected),
		CONF_TEST(syntax_errors_name_file_and_line),
		CONF_TEST(comments_anywhere_keep_line_numbers_right),
		CONF_TEST(nul_byte_in_file_is_rejected_with_its_line),
		CONF_TEST(empty_or_oversized_listen_list_is_rejected),
		CONF_TEST(tls_listeners_are_refused_without_tls),
		CONF_TEST(named_tls_certificates),
		CONF_TEST(identity_needs_certificates_where_used),
		CONF_TEST(control_characters_in_values_do_not_reach_the_message),
		CONF_TEST(failed_load_leaves_the_config_untouched),
		cmocka_unit_test(shipped_config_file_equals_the_defaults),
		CONF_TEST(env_overrides_file),
		CONF_TEST(env_listen_list_is_comma_separated),
		CONF_TEST(env_invalid_value_names_the_variable),
		CONF_TEST(env_misspelt_setting_is_rejected),
		CONF_TEST(env_other_iotd_variables_are_ignored),
		CONF_TEST(command_line_overrides_env_and_file),
		CONF_TEST(keepalive_over_the_cap_blames_the_setting_that_was_given),
		CONF_TEST(connect_bounds_take_their_minima_and_any_packet_size),
		CONF_TEST(max_sessions_below_max_connections_is_rejected),
		CONF_TEST(auth_enabled_without_a_backend_is_rejected),
		CONF_TEST(auth_backends_need_their_files),
		CONF_TEST(auth_enabled_agrees_with_the_backend),
		cmocka_unit_test(listen_addresses_parse_or_are_rejected),
		cmocka_unit_test(args_short_options_are_all_understood),
		cmocka_unit_test(args_long_options_are_all_understood),
		cmocka_unit_test(args_defaults_when_none_given),
		cmocka_unit_test(args_errors_say_what_is_wrong),
		cmocka_unit_test(args_more_listen_addresses_than_fit_is_an_error),
		cmocka_unit_test(args_can_be_parsed_twice),
		cmocka_unit_test(usage_lists_every_option_and_the_default_path),
		cmocka_unit_test(log_level_and_format_names_parse),
		LOG_TEST(text_line_has_pid_role_worker_and_level),
		LOG_TEST(text_line_without_worker_index),
		LOG_TEST(messages_above_the_level_are_dropped),
		LOG_TEST(journal_stream_gets_priority_prefixes_instead_of_time),
		LOG_TEST(journal_stream_of_another_file_is_ignored),
		LOG_TEST(text_client_fields_are_appended_and_escaped),
		LOG_TEST(json_line_has_all_fields),
		LOG_TEST(json_omits_worker_and_client_fields_when_absent),
		LOG_TEST(json_escapes_quotes_controls_and_invalid_utf8),
		LOG_TEST(long_lines_are_cut_but_stay_one_valid_line),
		LOG_TEST(logging_keeps_errno_and_supports_percent_m),
		LOG_TEST(fatal_logs_an_error_and_exits_1),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
