/*
 * main.c - iotd's entry point: command line, configuration, then the
 * supervisor. Every other role is forked from the supervisor.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "iotd.h"
#include "keys.h"
#include "log.h"
#include "proctitle.h"
#include "supervisor.h"

int main(int argc, char **argv, char **envp)
{
	struct cli_args args;
	struct iotd_config cfg;
	char err[CONFIG_ERR_LEN];

	proctitle_init(argc, argv);
	if (config_parse_args(argc, argv, &args, err, sizeof(err)) < 0) {
		fprintf(stderr, "iotd: %s\nTry 'iotd --help'.\n", err);
		return 2;
	}
	if (args.help) {
		config_usage(stdout, "iotd");
		return 0;
	}
	if (args.version) {
		printf("iotd %s\n", IOTD_VERSION);
		return 0;
	}
	if (config_load(&cfg, &args, envp, err, sizeof(err)) < 0) {
		fprintf(stderr, "iotd: %s\n", err);
		return 1;
	}
	/* The auth role's files, read as it will read them: a broken one stops the start. */
	if (auth_files_check(&cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "iotd: %s\n", err);
		return 1;
	}
	/* The key role's files, by `iotd -t` only: the supervisor never holds the key. */
	if (args.test_only && keys_files_check(&cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "iotd: %s\n", err);
		return 1;
	}
	if (args.test_only) {
		printf("iotd: configuration %s is valid\n", cfg.path[0] ? cfg.path : "(defaults)");
		return 0;
	}
	log_init(cfg.log_level, cfg.log_format);
	log_set_role("supervisor", -1);
	return supervisor_main(&cfg, &args);
}
