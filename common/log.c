/*
 * log.c - one line per event for every role: structured journal entries
 * under systemd, text or JSON lines on stderr otherwise.
 *
 * Owns the process's logging state: level, format, role name, worker
 * index, whether stderr is the journal, and the journal socket a confined
 * (chrooted) role connected before it lost sight of the file system. Each
 * line is built in a stack buffer and handed to the kernel with a single
 * system call, so lines from the supervisor and its children never
 * interleave on a shared stderr. Nothing here allocates.
 */
#include "log.h"

#include "iotd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

/* Longer lines are cut; a pipe write of this size is atomic (PIPE_BUF). */
#define LOG_LINE_MAX 2048
#define LOG_MSG_MAX 1536
/* Client-supplied fields are capped so they cannot crowd out the message. */
#define LOG_FIELD_MAX 256
#define LOG_ROLE_MAX 16

static const char *const level_names[] = {
	[LOG_LVL_ERROR] = "error",
	[LOG_LVL_WARN] = "warn",
	[LOG_LVL_INFO] = "info",
	[LOG_LVL_DEBUG] = "debug",
};

/*
 * Each level's syslog(3) priority (LOG_ERR, LOG_WARNING, LOG_INFO,
 * LOG_DEBUG) as a line's sd-daemon(3) prefix on stderr and as the
 * journal's PRIORITY= field.
 */
static const struct {
	const char *prefix;
	const char *field;
} level_priorities[] = {
	[LOG_LVL_ERROR] = { "<3>", "PRIORITY=3" },
	[LOG_LVL_WARN] = { "<4>", "PRIORITY=4" },
	[LOG_LVL_INFO] = { "<6>", "PRIORITY=6" },
	[LOG_LVL_DEBUG] = { "<7>", "PRIORITY=7" },
};

static const char *const format_names[] = {
	[LOG_FMT_TEXT] = "text",
	[LOG_FMT_JSON] = "json",
};

#define JOURNAL_SOCKET "/run/systemd/journal/socket"
/* Fields of one journal entry: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, ROLE, WORKER, CLIENT_ID, REMOTE. */
#define JOURNAL_FIELDS 7

static enum log_level cur_level = LOG_LVL_INFO;
static enum log_format cur_format = LOG_FMT_TEXT;
static bool to_journal;          /* stderr is the journal stream: "<N>" prefixes, no JSON */
static bool journal_native;      /* ... and journald's socket is there: structured entries */
static int journal_fd = -1;      /* connected journal socket (log_journal_pin), or -1 */
static char cur_role[LOG_ROLE_MAX] = "main";
static int cur_worker = -1;

/*
 * JOURNAL_STREAM names the device and inode of the stream systemd gave
 * us; it is only honoured while stderr is still that stream, since a
 * child may inherit the variable with stderr pointing elsewhere.
 */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char end;

	if (!js || !*js)
		return false;
	if (sscanf(js, "%llu:%llu%c", &dev, &ino, &end) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev &&
	       (unsigned long long)st.st_ino == ino;
}

void log_init(enum log_level level, enum log_format format)
{
	log_set_level(level);
	log_set_format(format);
	to_journal = stderr_is_journal();
	/* sd_journal_sendv() drops entries silently when journald has no socket. */
	journal_native = to_journal && access(JOURNAL_SOCKET, W_OK) == 0;
}

void log_set_format(enum log_format format)
{
	cur_format = format == LOG_FMT_JSON ? LOG_FMT_JSON : LOG_FMT_TEXT;
}

/*
 * sd_journal_sendv() names the journal socket by path on every call,
 * which a chrooted process can no longer reach (and a seccomp-confined
 * one may not even create a socket for). A confined role therefore
 * connects a datagram socket first and writes each entry on it in the
 * same native protocol. When that fails, entries go to stderr, which
 * systemd still files in the journal, only without the extra fields.
 */
int log_journal_pin(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET };
	int fd, saved, sndbuf = 8 * 1024 * 1024;

	if (!journal_native || journal_fd >= 0)
		return 0;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	/* Room for bursts, as sd-journal gives its own socket; best effort. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	journal_fd = fd;
	return 0;
fail:
	saved = errno;
	if (fd >= 0)
		close(fd);
	journal_native = false;
	log_warn("cannot connect to the journal (%s): logging to stderr", strerror(saved));
	return -1;
}

void log_get_settings(struct log_settings *s)
{
	s->level = (uint32_t)cur_level;
	s->format = (uint32_t)cur_format;
}

int log_apply_settings(const void *payload, size_t len)
{
	struct log_settings s;

	if (len == sizeof(s))
		memcpy(&s, payload, sizeof(s));
	if (len != sizeof(s) || s.level > LOG_LVL_DEBUG || s.format > LOG_FMT_JSON) {
		log_warn("ignoring malformed log settings (%zu bytes)", len);
		return -1;
	}
	log_set_level((enum log_level)s.level);
	log_set_format((enum log_format)s.format);
	return 0;
}

void log_set_role(const char *role, int worker)
{
	snprintf(cur_role, sizeof(cur_role), "%s", role ? role : "main");
	cur_worker = worker < 0 ? -1 : worker;
}

void log_set_level(enum log_level level)
{
	if (level < LOG_LVL_ERROR)
		level = LOG_LVL_ERROR;
	if (level > LOG_LVL_DEBUG)
		level = LOG_LVL_DEBUG;
	cur_level = level;
}

enum log_level log_get_level(void)
{
	return cur_level;
}

static int parse_name(const char *s, const char *const *names, int n)
{
	if (!s)
		return -1;
	for (int i = 0; i < n; i++)
		if (strcasecmp(s, names[i]) == 0)
			return i;
	return -1;
}

int log_level_parse(const char *s)
{
	return parse_name(s, level_names,
			  (int)(sizeof(level_names) / sizeof(level_names[0])));
}

int log_format_parse(const char *s)
{
	return parse_name(s, format_names,
			  (int)(sizeof(format_names) / sizeof(format_names[0])));
}

/*
 * A line under construction. Every append either fits whole before
 * `stop` or is dropped, so an escape sequence or a UTF-8 character is
 * never cut in half.
 */
struct line {
	char buf[LOG_LINE_MAX];
	size_t len;
};

static bool put_n(struct line *l, size_t stop, const char *s, size_t n)
{
	if (l->len + n > stop)
		return false;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	return true;
}

static bool put(struct line *l, size_t stop, const char *s)
{
	return put_n(l, stop, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	/* Reject overlong forms, UTF-16 surrogates and code points > U+10FFFF. */
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/*
 * Escape one byte that must not appear raw. JSON gets \uXXXX (invalid
 * UTF-8 becomes U+FFFD so the line stays valid JSON); text gets \xNN so
 * a hostile client id cannot forge a second log line.
 */
static bool put_escape(struct line *l, size_t stop, unsigned char c,
		       bool json, bool invalid)
{
	char esc[8];

	if (json) {
		switch (c) {
		case '"': return put(l, stop, "\\\"");
		case '\\': return put(l, stop, "\\\\");
		case '\n': return put(l, stop, "\\n");
		case '\r': return put(l, stop, "\\r");
		case '\t': return put(l, stop, "\\t");
		case '\b': return put(l, stop, "\\b");
		case '\f': return put(l, stop, "\\f");
		default: break;
		}
		if (invalid)
			return put(l, stop, "\\ufffd");
		snprintf(esc, sizeof(esc), "\\u%04x", c);
		return put(l, stop, esc);
	}
	if (c == '\n')
		return put(l, stop, "\\n");
	snprintf(esc, sizeof(esc), "\\x%02x", c);
	return put(l, stop, esc);
}

/*
 * Append s escaped for the current format. In text, spaces are escaped
 * too when space_is_special, so "key=value" fields stay one token.
 */
static bool put_escaped(struct line *l, size_t stop, const char *s,
			bool json, bool space_is_special)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);

	while (n > 0) {
		unsigned char c = *p;
		size_t step = 1;
		bool ok;

		if (c >= 0x80) {
			step = utf8_len(p, n);
			if (step == 0) {
				ok = put_escape(l, stop, c, json, true);
				step = 1;
			} else {
				ok = put_n(l, stop, (const char *)p, step);
			}
		} else if (c < 0x20 || c == 0x7f ||
			   (json && (c == '"' || c == '\\')) ||
			   (!json && space_is_special && c == ' ')) {
			ok = put_escape(l, stop, c, json, false);
		} else {
			ok = put_n(l, stop, (const char *)p, 1);
		}
		if (!ok)
			return false;
		p += step;
		n -= step;
	}
	return true;
}

static void put_timestamp(struct line *l, size_t stop)
{
	struct timespec ts;
	struct tm tm;
	char buf[40];
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, sizeof(buf) - n, ".%03ldZ", ts.tv_nsec / 1000000);
	put(l, stop, buf);
}

static void put_long(struct line *l, size_t stop, long v)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%ld", v);
	put(l, stop, buf);
}

static void put_msg(struct line *l, size_t stop, const char *msg,
		    bool msg_cut, bool json)
{
	/* Keep room for the marker so a cut line says so. */
	size_t room = stop - 3;

	if (!put_escaped(l, room, msg, json, false) || msg_cut)
		put(l, stop, "...");
}

/* A field capped at LOG_FIELD_MAX output bytes, never past stop. */
static void put_field(struct line *l, size_t stop, const char *v, bool json)
{
	size_t cap = MIN(l->len + LOG_FIELD_MAX, stop);

	put_escaped(l, cap, v, json, !json);
}

static void build_json(struct line *l, enum log_level level,
		       const char *client_id, const char *remote,
		       const char *msg, bool msg_cut)
{
	/* The message is last; what follows it is only the closing '"}\n'. */
	size_t stop = sizeof(l->buf) - 3;

	put(l, stop, "{\"ts\":\"");
	put_timestamp(l, stop);
	put(l, stop, "\",\"level\":\"");
	put(l, stop, level_names[level]);
	put(l, stop, "\",\"role\":\"");
	put_field(l, stop, cur_role, true);
	put(l, stop, "\"");
	if (cur_worker >= 0) {
		put(l, stop, ",\"worker\":");
		put_long(l, stop, cur_worker);
	}
	put(l, stop, ",\"pid\":");
	put_long(l, stop, (long)getpid());
	if (client_id) {
		put(l, stop, ",\"client_id\":\"");
		put_field(l, stop, client_id, true);
		put(l, stop, "\"");
	}
	if (remote) {
		put(l, stop, ",\"remote\":\"");
		put_field(l, stop, remote, true);
		put(l, stop, "\"");
	}
	put(l, stop, ",\"msg\":\"");
	put_msg(l, stop, msg, msg_cut, true);
	memcpy(l->buf + l->len, "\"}\n", 3);
	l->len += 3;
}

/*
 * The text line. For the journal (bare) it is only "role: message
 * fields": the journal has its own time, pid and priority.
 */
static void build_text(struct line *l, enum log_level level,
		       const char *client_id, const char *remote,
		       const char *msg, bool msg_cut, bool bare)
{
	struct line fields;
	size_t stop;

	/* Client fields go after the message but must survive its truncation. */
	fields.len = 0;
	if (client_id) {
		put(&fields, sizeof(fields.buf), " client_id=");
		put_field(&fields, sizeof(fields.buf), client_id, false);
	}
	if (remote) {
		put(&fields, sizeof(fields.buf), " remote=");
		put_field(&fields, sizeof(fields.buf), remote, false);
	}

	stop = sizeof(l->buf) - 1 - fields.len;
	if (!bare) {
		if (to_journal) {
			put(l, stop, level_priorities[level].prefix);
		} else {
			put_timestamp(l, stop);
			put(l, stop, " ");
		}
		put(l, stop, "iotd[");
		put_long(l, stop, (long)getpid());
		put(l, stop, "]: ");
	}
	put_field(l, stop, cur_role, false);
	if (cur_worker >= 0) {
		put(l, stop, " ");
		put_long(l, stop, cur_worker);
	}
	put(l, stop, ": ");
	if (!bare) {
		put(l, stop, level_names[level]);
		put(l, stop, ": ");
	}
	put_msg(l, stop, msg, msg_cut, false);
	memcpy(l->buf + l->len, fields.buf, fields.len);
	l->len += fields.len;
	if (!bare)
		l->buf[l->len++] = '\n';
}

/*
 * "NAME=value", the value capped like a text field and with control
 * characters and invalid UTF-8 escaped as \xNN (spaces kept): never a raw
 * newline, so the entry needs no binary framing.
 */
static void journal_field(struct line *l, const char *name, const char *value)
{
	l->len = 0;
	put(l, sizeof(l->buf), name);
	put_escaped(l, MIN(l->len + LOG_FIELD_MAX, sizeof(l->buf)), value, false, false);
}

/* One entry in the native protocol on the pinned socket: "NAME=value\n" each. */
static bool journal_write_pinned(const struct iovec *fields, int n)
{
	struct iovec iov[2 * JOURNAL_FIELDS];
	ssize_t sent;
	size_t total = 0;

	for (int i = 0; i < n; i++) {
		iov[2 * i] = fields[i];
		iov[2 * i + 1] = (struct iovec){ .iov_base = "\n", .iov_len = 1 };
		total += fields[i].iov_len + 1;
	}
	do
		sent = writev(journal_fd, iov, 2 * n);
	while (sent < 0 && errno == EINTR);
	return sent == (ssize_t)total;
}

/*
 * A structured entry: the message as a human reads it, plus ROLE=,
 * WORKER=, CLIENT_ID= and REMOTE= for `journalctl ROLE=worker` and
 * friends. Returns false when the journal did not take it.
 */
static bool journal_send(enum log_level level, const char *client_id,
			 const char *remote, const char *msg, bool msg_cut)
{
	struct line message, role, cid, rem;
	char worker[32];
	struct iovec iov[JOURNAL_FIELDS];
	int n = 0;

	memcpy(message.buf, "MESSAGE=", 8);
	message.len = 8;
	build_text(&message, level, client_id, remote, msg, msg_cut, true);
	iov[n++] = (struct iovec){ .iov_base = message.buf, .iov_len = message.len };
	iov[n++] = (struct iovec){ .iov_base = (void *)level_priorities[level].field,
				   .iov_len = strlen(level_priorities[level].field) };
	iov[n++] = (struct iovec){ .iov_base = "SYSLOG_IDENTIFIER=iotd", .iov_len = 22 };
	journal_field(&role, "ROLE=", cur_role);
	iov[n++] = (struct iovec){ .iov_base = role.buf, .iov_len = role.len };
	if (cur_worker >= 0) {
		int len = snprintf(worker, sizeof(worker), "WORKER=%d", cur_worker);

		iov[n++] = (struct iovec){ .iov_base = worker, .iov_len = (size_t)len };
	}
	if (client_id) {
		journal_field(&cid, "CLIENT_ID=", client_id);
		iov[n++] = (struct iovec){ .iov_base = cid.buf, .iov_len = cid.len };
	}
	if (remote) {
		journal_field(&rem, "REMOTE=", remote);
		iov[n++] = (struct iovec){ .iov_base = rem.buf, .iov_len = rem.len };
	}
	if (journal_fd >= 0)
		return journal_write_pinned(iov, n);
	return sd_journal_sendv(iov, n) >= 0;
}

static void write_line(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDERR_FILENO, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;	/* nowhere left to report it */
		buf += n;
		len -= (size_t)n;
	}
}

static void vlog(enum log_level level, const char *client_id,
		 const char *remote, const char *fmt, va_list ap)
{
	int saved_errno = errno;
	char msg[LOG_MSG_MAX];
	struct line l;
	int n;

	/* errno is still the caller's here, so %m reports the caller's error. */
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (n < 0)
		snprintf(msg, sizeof(msg), "(unformattable log message)");
	if (journal_native && journal_send(level, client_id, remote, msg, n >= (int)sizeof(msg)))
		goto out;
	l.len = 0;
	/* The journal stream files text lines by their "<N>" prefix; JSON would lose it. */
	if (cur_format == LOG_FMT_JSON && !to_journal)
		build_json(&l, level, client_id, remote, msg, n >= (int)sizeof(msg));
	else
		build_text(&l, level, client_id, remote, msg, n >= (int)sizeof(msg), false);
	write_line(l.buf, l.len);
out:
	errno = saved_errno;
}

#define LOG_AT(lvl)                                   \
	do {                                          \
		va_list ap;                           \
		if ((lvl) > cur_level)                \
			return;                       \
		va_start(ap, fmt);                    \
		vlog((lvl), NULL, NULL, fmt, ap);     \
		va_end(ap);                           \
	} while (0)

void log_error(const char *fmt, ...)
{
	LOG_AT(LOG_LVL_ERROR);
}

void log_warn(const char *fmt, ...)
{
	LOG_AT(LOG_LVL_WARN);
}

void log_info(const char *fmt, ...)
{
	LOG_AT(LOG_LVL_INFO);
}

void log_debug(const char *fmt, ...)
{
	LOG_AT(LOG_LVL_DEBUG);
}

void log_client(enum log_level level, const char *client_id, const char *remote,
		const char *fmt, ...)
{
	va_list ap;

	if (level > cur_level)
		return;
	if (level < LOG_LVL_ERROR)
		level = LOG_LVL_ERROR;
	va_start(ap, fmt);
	vlog(level, client_id, remote, fmt, ap);
	va_end(ap);
}

void log_auth_refusal(const char *client_id, size_t client_id_len, const char *remote,
		      const char *user, size_t user_len, unsigned code, const char *why)
{
	char cid[256], host[64];
	const char *end = remote[0] == '[' ? strchr(remote, ']') : strrchr(remote, ':');
	size_t hlen = end ? (size_t)(end - remote) - (remote[0] == '[') : strlen(remote);

	snprintf(host, sizeof(host), "%.*s", (int)hlen, remote + (remote[0] == '['));
	snprintf(cid, sizeof(cid), "%.*s", (int)MIN(client_id_len, sizeof(cid) - 1), client_id);
	log_client(LOG_LVL_WARN, cid, remote, "refused REMOTE=%s USER=\"%.*s\" CONNACK=%u (%s)",
		   host, (int)MIN(user_len, (size_t)256), user ? user : "", code, why);
}

noreturn void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERROR, NULL, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}
