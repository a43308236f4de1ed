/*
 * config_int.h - what the configuration's files share (common/config*.c):
 * the key table's types, the state of one load and the functions one file
 * offers the others. include/config.h is the interface to the rest of
 * iotd; nothing outside common/config*.c includes this.
 */
#ifndef IOTD_CONFIG_INT_H
#define IOTD_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* How much of an offending value an error message quotes. */
#define SHOWN_MAX 64

/* ---- the key table (config.c) ---- */

enum key_type {
	KT_INT,		/* decimal, range-checked */
	KT_BOOL,
	KT_USER,	/* a login name */
	KT_PATH,	/* an absolute path */
	KT_CHOICE,	/* one of choices[], stored in canonical spelling */
	KT_LEVEL,	/* enum log_level */
	KT_FORMAT,	/* enum log_format */
	KT_LISTEN,	/* the listen list (listen[] and n_listen) */
	KT_NAME,	/* printable text, possibly empty (a JWT claim's name) */
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

/* The tables' lengths, checked against their initialisers in config.c. */
#define N_SECTIONS 5
#define N_KEYS 66

extern const char *const config_sections[];
extern const struct key config_keys[];

/* ---- one load (config.c) ---- */

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

void set_err(struct load_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* ---- values (config.c) ---- */

const char *shown(const char *s, char *buf, size_t len);
int parse_long(const char *s, long *out);
int add_listen(struct listen_addr *list, int *n, const char *v,
	       char *why, size_t whylen);
int key_apply(const struct key *k, const char *v, struct iotd_config *cfg,
	      char *why, size_t whylen);
int key_index(const char *section, const char *name);
const char *key_env_name(const struct key *k, char *buf, size_t len);

/* ---- the layers, each over what the one before left in ctx->cfg ---- */

int load_file(struct load_ctx *ctx, const char *path, bool must_exist);	/* config_file.c */
int load_env(struct load_ctx *ctx, char *const *envp);			/* config_env.c */
int load_args(struct load_ctx *ctx, const struct cli_args *args);		/* config_args.c */

#endif
