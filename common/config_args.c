/*
 * config_args.c - the command line: argv parsed into struct cli_args
 * (config_parse_args), the usage text, and the layer that lays -l, -w
 * and -v over the file and the environment.
 */
#include "config.h"

#include <ctype.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config_int.h"
#include "iotd.h"
#include "log.h"

/* ---- the command line's layer ---- */

int load_args(struct load_ctx *ctx, const struct cli_args *args)
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
		if (args->workers > config_keys[workers].max) {
			set_err(ctx, "option -w: invalid value '%d' (expected an integer in "
				"%ld..%ld)", args->workers, config_keys[workers].min,
				config_keys[workers].max);
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
	const struct key *k = &config_keys[key_index("server", "workers")];
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
		"                        tcp://host:port or :port (any address) for\n"
		"                        MQTT, ws://host:port[/path] for MQTT over\n"
		"                        WebSocket, mqtts://host:port and\n"
		"                        wss://host:port[/path] for them over TLS;\n"
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
