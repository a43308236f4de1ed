/*
 * log.c - one line per event on stderr, as text or JSON, for every role.
 *
 * Owns the process's logging state: level, format, role name, worker
 * index and whether stderr is the journal. Each line is built in a stack
 * buffer and handed to the kernel with a single write(2), so lines from
 * the supervisor and its children never interleave on a shared stderr.
 * Nothing here allocates.
 */
#include "log.h"

#include "iotd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* sd-daemon(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. */
static const char *const level_prefixes[] = {
	[LOG_LVL_ERROR] = "<3>",
	[LOG_LVL_WARN] = "<4>",
	[LOG_LVL_INFO] = "<6>",
	[LOG_LVL_DEBUG] = "<7>",
};

static const char *const format_names[] = {
	[LOG_FMT_TEXT] = "text",
	[LOG_FMT_JSON] = "json",
};

static enum log_level cur_level = LOG_LVL_INFO;
static enum log_format cur_format = LOG_FMT_TEXT;
static bool to_journal;
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
	cur_format = format == LOG_FMT_JSON ? LOG_FMT_JSON : LOG_FMT_TEXT;
	to_journal = stderr_is_journal();
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

static void build_text(struct line *l, enum log_level level,
		       const char *client_id, const char *remote,
		       const char *msg, bool msg_cut)
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
	if (to_journal) {
		put(l, stop, level_prefixes[level]);
	} else {
		put_timestamp(l, stop);
		put(l, stop, " ");
	}
	put(l, stop, "iotd[");
	put_long(l, stop, (long)getpid());
	put(l, stop, "]: ");
	put_field(l, stop, cur_role, false);
	if (cur_worker >= 0) {
		put(l, stop, " ");
		put_long(l, stop, cur_worker);
	}
	put(l, stop, ": ");
	put(l, stop, level_names[level]);
	put(l, stop, ": ");
	put_msg(l, stop, msg, msg_cut, false);
	memcpy(l->buf + l->len, fields.buf, fields.len);
	l->len += fields.len;
	l->buf[l->len++] = '\n';
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
	l.len = 0;
	if (cur_format == LOG_FMT_JSON)
		build_json(&l, level, client_id, remote, msg, n >= (int)sizeof(msg));
	else
		build_text(&l, level, client_id, remote, msg, n >= (int)sizeof(msg));
	write_line(l.buf, l.len);
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

noreturn void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERROR, NULL, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}
