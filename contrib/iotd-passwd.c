/*
 * iotd-passwd - add, change or delete a user of a password file, as
 * mosquitto_passwd does, with an Argon2id hash or a SCRAM-SHA-256
 * verifier (passwd.h).
 *
 *   iotd-passwd [-c] [-t PASSES] [-m KIB] FILE USER      asks for the password twice
 *   iotd-passwd [-c] [-t PASSES] [-m KIB] -b FILE USER PASSWORD
 *   iotd-passwd [-c] -s [-i ITERATIONS] [-b] FILE USER [PASSWORD]
 *   iotd-passwd -D FILE USER
 *
 * -c creates the file (or replaces it whole), -b takes the password from
 * the command line (where other users of the machine may see it: for
 * scripts), -D deletes the user. -t and -m set the Argon2id passes and
 * memory in KiB (defaults 2 and 19456). -s writes a SCRAM-SHA-256 entry
 * instead, for MQTT 5's enhanced authentication (the password then never
 * crosses the network; it also serves a plain CONNECT password), with -i
 * iterations (default 4096, the least RFC 7677 allows). Asked for, the password is read
 * without echo from a terminal, or as two lines from a pipe.
 *
 * Every other line is kept byte for byte: comments, blank lines, other
 * users, Mosquitto's $6$ and $7$ hashes, CRLF ends. The user's first line
 * is rewritten in place (its line end kept) and any later line of the
 * same user dropped, as the later one would win. The file is replaced
 * atomically: a new file in the same directory, mode 0600, the old one's
 * owner and group where that is allowed, flushed to disk, then renamed
 * over the old one. Exit status 0, or 1 with a message.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "passwd.h"
#include "textfile.h"

#define MAX_FILE (64u << 20)
#define MAX_PASSWORD 65535 /* MQTT's limit on a password */
#define MAX_USER 65535

struct buf {
	char *p;
	size_t len, cap;
};

static noreturn void die(const char *fmt, ...)
{
	va_list ap;

	fputs("iotd-passwd: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void usage(void)
{
	fputs("usage: iotd-passwd [-c] [-t PASSES] [-m KIB] FILE USER\n"
	      "       iotd-passwd [-c] [-t PASSES] [-m KIB] -b FILE USER PASSWORD\n"
	      "       iotd-passwd [-c] -s [-i ITERATIONS] [-b] FILE USER [PASSWORD]\n"
	      "       iotd-passwd -D FILE USER\n"
	      " -b  take the password from the command line\n"
	      " -c  create the file, replacing any that is there\n"
	      " -D  delete USER\n"
	      " -t  Argon2id passes (default 2)\n"
	      " -m  Argon2id memory in KiB (default 19456)\n"
	      " -s  write a SCRAM-SHA-256 entry (MQTT 5 enhanced authentication) instead\n"
	      " -i  SCRAM iterations (default 4096, at least 4096)\n", stderr);
	exit(1);
}

static void buf_add(struct buf *b, const char *s, size_t len)
{
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + len)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			die("out of memory");
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, len);
	b->len += len;
}

static uint32_t number(const char *s, const char *what)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || end == s || s[0] == '-' || v == 0 || v > UINT32_MAX)
		die("%s: not a positive number: %s", what, s);
	return (uint32_t)v;
}

/*
 * A user name the file can hold and give back: no ':' (it ends the name),
 * no line end, no blanks at either end (the reader drops them), not
 * starting with '#' (a comment).
 */
static void check_user(const char *u)
{
	size_t len = strlen(u);

	if (len == 0 || len > MAX_USER)
		die("a user name is 1 to %d bytes", MAX_USER);
	if (strpbrk(u, ":\n\r"))
		die("a user name cannot hold ':' or a line end");
	if (u[0] == ' ' || u[0] == '\t' || u[len - 1] == ' ' || u[len - 1] == '\t')
		die("a user name cannot start or end with a blank");
	if (u[0] == '#')
		die("a user name cannot start with '#'");
}

/* One line of the password from stdin, without echo on a terminal. */
static void read_password(const char *prompt, char *out, size_t cap)
{
	struct termios old, quiet;
	bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	bool got;
	size_t len;

	/*
	 * Echo goes off before the prompt shows, and nothing is flushed:
	 * whatever is typed once the prompt is there is read, unechoed.
	 */
	if (tty) {
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
		quiet.c_lflag |= ICANON;
		if (tcsetattr(STDIN_FILENO, TCSANOW, &quiet) != 0)
			die("cannot turn echo off: %s", strerror(errno));
		fputs(prompt, stderr);
		fflush(stderr);
	}
	got = fgets(out, (int)cap, stdin) != NULL;
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSANOW, &old);
		fputc('\n', stderr);
	}
	if (!got)
		die("no password given");
	len = strlen(out);
	if (len > 0 && out[len - 1] == '\n')
		out[--len] = '\0';
	else if (len == cap - 1)
		die("a password is at most %d bytes", MAX_PASSWORD);
	if (len > 0 && out[len - 1] == '\r')
		out[--len] = '\0';
}

/* The user a line holds, as the file's reader sees it; false for blank and comment lines. */
static bool line_user(const char *s, size_t len, const char **user, size_t *ulen)
{
	const char *colon;
	size_t n;

	while (len > 0 && (*s == ' ' || *s == '\t')) {
		s++;
		len--;
	}
	if (len == 0 || *s == '#')
		return false;
	colon = memchr(s, ':', len);
	if (!colon)
		return false;
	n = (size_t)(colon - s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	*user = s;
	*ulen = n;
	return true;
}

/*
 * The new file: old with user's entry replaced by entry (or removed when
 * entry is NULL). Returns whether the user was there.
 */
static bool rewrite(const char *old, size_t len, const char *user, const char *entry,
		    struct buf *out)
{
	size_t ulen = strlen(user), off = 0;
	bool found = false;

	while (off < len) {
		const char *nl = memchr(old + off, '\n', len - off);
		size_t end = nl ? (size_t)(nl - old) + 1 : len, body = end;
		const char *u;
		size_t n;

		if (body > off && old[body - 1] == '\n')
			body--;
		if (body > off && old[body - 1] == '\r')
			body--;
		if (!line_user(old + off, body - off, &u, &n) || n != ulen ||
		    memcmp(u, user, ulen) != 0) {
			buf_add(out, old + off, end - off);
		} else if (!found && entry) {
			buf_add(out, user, ulen);
			buf_add(out, ":", 1);
			buf_add(out, entry, strlen(entry));
			buf_add(out, old + body, end - body);
			found = true;
		} else {
			found = true;
		}
		off = end;
	}
	if (!found && entry) {
		if (out->len > 0 && out->p[out->len - 1] != '\n')
			buf_add(out, "\n", 1);
		buf_add(out, user, ulen);
		buf_add(out, ":", 1);
		buf_add(out, entry, strlen(entry));
		buf_add(out, "\n", 1);
	}
	return found;
}

static void write_all(int fd, const char *p, size_t len, const char *path)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("%s: %s", path, strerror(errno));
		p += n;
		len -= (size_t)n;
	}
}

/* Replace path with data: a temporary file beside it, flushed, then renamed. */
static void replace_file(const char *path, const struct buf *data, const struct stat *old)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	int fd, dfd;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp))
		die("%s: path too long", path);
	fd = mkstemp(tmp);
	if (fd < 0)
		die("%s: %s", tmp, strerror(errno));
	if (fchmod(fd, 0600) != 0)
		goto fail;
	/* Only root may give the file away; anyone else keeps it as their own. */
	if (old && fchown(fd, old->st_uid, old->st_gid) != 0 && errno != EPERM)
		goto fail;
	write_all(fd, data->p, data->len, tmp);
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		goto fail;
	}
	if (rename(tmp, path) != 0) {
		fd = -1;
		goto fail;
	}
	snprintf(dir, sizeof(dir), "%s", path);
	dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return;
fail:
	{
		int e = errno;

		if (fd >= 0)
			close(fd);
		unlink(tmp);
		die("%s: %s", path, strerror(e));
	}
}

int main(int argc, char **argv)
{
	struct passwd_argon2_params params = {
		.t_cost = PASSWD_ARGON2_T, .m_kib = PASSWD_ARGON2_M_KIB, .lanes = PASSWD_ARGON2_P
	};
	bool batch = false, create = false, del = false, scram = false;
	uint32_t iterations = PASSWD_SCRAM_ITERATIONS;
	static char pw[MAX_PASSWORD + 2], again[MAX_PASSWORD + 2];
	char entry[PASSWD_HASH_MAX], err[512];
	const char *path, *user;
	char *old = NULL;
	size_t old_len = 0;
	struct stat st;
	bool have_old;
	struct buf out = { 0 };
	int c;

	while ((c = getopt(argc, argv, "bcDt:m:si:h")) != -1) {
		switch (c) {
		case 'b': batch = true; break;
		case 'c': create = true; break;
		case 'D': del = true; break;
		case 't': params.t_cost = number(optarg, "-t"); break;
		case 'm': params.m_kib = number(optarg, "-m"); break;
		case 's': scram = true; break;
		case 'i': iterations = number(optarg, "-i"); break;
		default: usage();
		}
	}
	if (argc - optind != (batch ? 3 : 2) || (del && (create || batch)))
		usage();
	if (params.m_kib < 8 * params.lanes)
		die("-m: at least %u KiB", 8 * params.lanes);
	if (iterations < 4096)
		die("-i: at least 4096 iterations (RFC 7677)");
	path = argv[optind];
	user = argv[optind + 1];
	check_user(user);

	if (!create && textfile_read(path, MAX_FILE, &old, &old_len, err, sizeof(err)) != 0)
		die("%s", err);
	/* A file replaced, even whole (-c), keeps its owner and group. */
	have_old = stat(path, &st) == 0;
	if (!del) {
		if (batch) {
			if (strlen(argv[optind + 2]) > MAX_PASSWORD)
				die("a password is at most %d bytes", MAX_PASSWORD);
			snprintf(pw, sizeof(pw), "%s", argv[optind + 2]);
		} else {
			read_password("Password: ", pw, sizeof(pw));
			read_password("Reenter password: ", again, sizeof(again));
			if (strcmp(pw, again) != 0)
				die("the passwords do not match");
		}
		if ((scram ? passwd_hash_scram(pw, strlen(pw), iterations, entry, sizeof(entry)) :
			     passwd_hash_argon2id(pw, strlen(pw), &params, entry, sizeof(entry))) != 0)
			die("cannot hash the password");
		OPENSSL_cleanse(pw, sizeof(pw));
		OPENSSL_cleanse(again, sizeof(again));
	}
	if (!rewrite(old ? old : "", old_len, user, del ? NULL : entry, &out) && del)
		die("%s: no user %s", path, user);
	replace_file(path, &out, have_old ? &st : NULL);
	free(old);
	free(out.p);
	return 0;
}
