/*
 * config_file.c - the configuration file: read whole and bounded, its
 * comments blanked out, then parsed by libconfuse with option tables
 * generated from the key table, each value checked as it is read (so
 * that an error names its line).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <confuse.h>

#include "config_int.h"
#include "iotd.h"

/* A configuration file is a page or two; refuse anything absurd. */
#define CONFIG_FILE_MAX (1024 * 1024)

/*
 * libconfuse's callbacks get no user pointer, and its scanner is global
 * anyway, so the load in progress is found here.
 */
static struct load_ctx *cur_ctx;

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
	if (key_apply(&config_keys[i], value, &ctx->cfg, why, sizeof(why)) < 0) {
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
			  "tcp://host:port, :port, mqtts://host:port[?tls=name], "
			  "ws://host:port[/path] or wss://host:port[/path][?tls=name])", opt->name,
			  shown(value, buf, sizeof(buf)));
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

/*
 * tls { certificate "name" { } }: a certificate a listener names. Its
 * values are checked as tls { }'s are (key_apply), into its slot.
 */
static const struct {
	const char *name;
	enum key_type type;
	size_t off, size;
} named_keys[] = {
#define NAMED(f, t) { #f, t, offsetof(struct tls_named, f), sizeof(((struct tls_named *)0)->f) }
	NAMED(cert_file, KT_PATH),
	NAMED(key_file, KT_PATH),
	NAMED(ca_file, KT_PATH),
	NAMED(require_certificate, KT_BOOL),
#undef NAMED
};

/* libconfuse option tables, generated from keys[] so the two never drift. */
struct opt_tables {
	cfg_opt_t sec[N_SECTIONS][N_KEYS + 2];
	cfg_opt_t root[N_SECTIONS + 1];
	cfg_opt_t named[ARRAY_SIZE(named_keys) + 1];
};

static void build_opts(struct opt_tables *t)
{
	const cfg_opt_t end = CFG_END();

	for (size_t i = 0; i < ARRAY_SIZE(named_keys); i++)
		t->named[i] = (cfg_opt_t)CFG_STR(named_keys[i].name, NULL, CFGF_NODEFAULT);
	t->named[ARRAY_SIZE(named_keys)] = end;
	for (size_t s = 0; s < N_SECTIONS; s++) {
		size_t n = 0;

		for (size_t i = 0; i < N_KEYS; i++) {
			const struct key *k = &config_keys[i];

			if (strcmp(k->section, config_sections[s]) != 0)
				continue;
			/* No libconfuse defaults: an absent key leaves cfg as it is. */
			if (k->type == KT_LISTEN)
				t->sec[s][n++] = (cfg_opt_t)CFG_STR_LIST_CB(k->name, NULL,
						CFGF_NODEFAULT, on_listen_value);
			else
				t->sec[s][n++] = (cfg_opt_t)CFG_STR_CB(k->name, NULL,
						CFGF_NODEFAULT, on_file_value);
		}
		if (strcmp(config_sections[s], "tls") == 0)
			t->sec[s][n++] = (cfg_opt_t)CFG_SEC("certificate", t->named,
					CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES);
		t->sec[s][n] = end;
		t->root[s] = (cfg_opt_t)CFG_SEC(config_sections[s], t->sec[s], CFGF_NONE);
	}
	t->root[N_SECTIONS] = end;
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

/* One named certificate's name and values, into slot n. */
static int take_named(struct load_ctx *ctx, cfg_t *sec, struct tls_named *n)
{
	const char *name = cfg_title(sec);
	size_t len = strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				  "0123456789._-");
	char why[160], buf[SHOWN_MAX + 4];

	if (len == 0 || name[len] != '\0' || len >= sizeof(n->name)) {
		set_err(ctx, "%s:%d: tls: certificate \"%s\": expected a name of up to %d letters, "
			"digits, '.', '_' or '-'", ctx->path, sec->line, shown(name, buf, sizeof(buf)),
			TLS_NAME_MAX - 1);
		return -1;
	}
	memcpy(n->name, name, len + 1);
	n->line = sec->line;
	for (size_t i = 0; i < ARRAY_SIZE(named_keys); i++) {
		size_t off = (size_t)((char *)n - (char *)&ctx->cfg) + named_keys[i].off;
		struct key k = { "tls", named_keys[i].name, named_keys[i].type, off,
				 named_keys[i].size, 0, 0, NULL };
		const char *v = cfg_size(sec, k.name) > 0 ? cfg_getstr(sec, k.name) : NULL;

		if (v != NULL && key_apply(&k, v, &ctx->cfg, why, sizeof(why)) < 0) {
			set_err(ctx, "%s:%d: tls: certificate \"%s\": %s: invalid value '%s' (%s)",
				ctx->path, sec->line, n->name, k.name, shown(v, buf, sizeof(buf)),
				why);
			return -1;
		}
	}
	return 0;
}

/* The named certificates given in the file replace those before (there are none). */
static int take_tls_named(struct load_ctx *ctx, cfg_t *root)
{
	cfg_t *tls = cfg_getsec(root, "tls");
	unsigned int n = tls != NULL ? cfg_size(tls, "certificate") : 0;

	if (n > CONFIG_MAX_TLS_NAMED) {
		set_err(ctx, "%s: tls: more than %d named certificates", ctx->path,
			CONFIG_MAX_TLS_NAMED);
		return -1;
	}
	memset(ctx->cfg.tls_named, 0, sizeof(ctx->cfg.tls_named));
	ctx->cfg.n_tls_named = 0;
	for (unsigned int j = 0; j < n; j++) {
		if (take_named(ctx, cfg_getnsec(tls, "certificate", j),
			       &ctx->cfg.tls_named[j]) < 0)
			return -1;
		ctx->cfg.n_tls_named++;
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
	if (take_listen(ctx, root) < 0 || take_tls_named(ctx, root) < 0)
		goto free_root;
	rc = 0;
free_root:
	cur_ctx = NULL;
	cfg_free(root);
	return rc;
}

int load_file(struct load_ctx *ctx, const char *path, bool must_exist)
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
