/*
 * fuzz_config.c - libFuzzer harness for the configuration file.
 *
 * Feeds arbitrary bytes as the -c file through config_load, the same
 * read, parse and validate path the daemon uses, via a memfd named by
 * /proc/self/fd. A configuration that loads must satisfy every range the
 * key table promises; a failure must come with a message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "iotd.h"
#include "log.h"

static int conf_fd = -1;
static char conf_path[64];

static void check_loaded(const struct iotd_config *c)
{
	if (c->n_listen < 1 || c->n_listen > CONFIG_MAX_LISTEN ||
	    c->workers < 0 || c->workers > IOTD_MAX_WORKERS ||
	    c->max_connections < 1 || c->max_packet_size < 16 ||
	    c->max_packet_size > 268435460 || c->max_connect_size < 64 ||
	    c->max_connect_size > 268435460 || c->max_client_id_length < 23 ||
	    c->max_client_id_length > 65535 || c->max_inflight < 1 ||
	    c->max_inflight > 65535 || c->max_topic_length > 65535 ||
	    c->keep_alive_timeout_secs > 65535 || c->max_keepalive > 65535 ||
	    c->log_level < LOG_LVL_ERROR || c->log_level > LOG_LVL_DEBUG ||
	    (c->log_format != LOG_FMT_TEXT && c->log_format != LOG_FMT_JSON) ||
	    c->storage_path[0] != '/' || c->user[0] == '\0')
		__builtin_trap();
	for (int i = 0; i < c->n_listen; i++)
		if (c->listen[i].port[0] == '\0' ||
		    memchr(c->listen[i].host, '\0', sizeof(c->listen[i].host)) == NULL ||
		    c->listen[i].tls < 0 || c->listen[i].tls > c->n_tls_named ||
		    (c->listen[i].tls_name[0] && !listen_transport_tls(c->listen[i].transport)))
			__builtin_trap();
	/* Named certificates: within bounds, each whole. */
	if (c->n_tls_named < 0 || c->n_tls_named > CONFIG_MAX_TLS_NAMED)
		__builtin_trap();
	for (int i = 0; i < c->n_tls_named; i++)
		if (c->tls_named[i].name[0] == '\0' || c->tls_named[i].cert_file[0] != '/' ||
		    c->tls_named[i].key_file[0] != '/')
			__builtin_trap();
}

/* The first line, as a listen address: config_parse_listen on raw bytes. */
static void fuzz_listen(const uint8_t *data, size_t size)
{
	char buf[256];
	size_t n = 0;
	struct listen_addr a;

	while (n < size && n < sizeof(buf) - 1 && data[n] != '\n') {
		buf[n] = (char)data[n];
		n++;
	}
	buf[n] = '\0';
	if (config_parse_listen(buf, &a) == 0 &&
	    (a.port[0] == '\0' || memchr(a.tls_name, '\0', sizeof(a.tls_name)) == NULL))
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cli_args args = { .config_path = conf_path, .config_explicit = true,
				 .workers = -1 };
	char *envp[] = { NULL };
	struct iotd_config cfg;
	char err[CONFIG_ERR_LEN];

	if (conf_fd < 0) {
		conf_fd = memfd_create("fuzz_config", MFD_CLOEXEC);
		if (conf_fd < 0)
			abort();
		snprintf(conf_path, sizeof(conf_path), "/proc/self/fd/%d", conf_fd);
	}
	if (ftruncate(conf_fd, 0) < 0 ||
	    (size > 0 && pwrite(conf_fd, data, size, 0) != (ssize_t)size))
		abort();
	if (config_load(&cfg, &args, envp, err, sizeof(err)) == 0)
		check_loaded(&cfg);
	else if (err[0] == '\0')
		__builtin_trap();
	fuzz_listen(data, size);
	return 0;
}
