/*
 * textfile.c - a whole configuration file read into memory, and its lines
 * walked (textfile.h).
 *
 * Owns nothing past the call: the buffer goes to the caller, or from
 * textfile_open() to textfile_close().
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "textfile.h"

int textfile_read(const char *path, size_t max_bytes, char **buf, size_t *len,
		  char *err, size_t errlen)
{
	struct stat st;
	char *b = NULL;
	size_t have = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		goto fail;
	}
	if ((unsigned long long)st.st_size > max_bytes) {
		snprintf(err, errlen, "%s: larger than %zu bytes", path, max_bytes);
		goto fail;
	}
	/* One byte more than the size: a file that grew meanwhile is seen to. */
	b = malloc((size_t)st.st_size + 2);
	if (!b) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	for (;;) {
		ssize_t n = read(fd, b + have, (size_t)st.st_size + 1 - have);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		if (have > (size_t)st.st_size) {
			snprintf(err, errlen, "%s: changed while being read", path);
			goto fail;
		}
	}
	close(fd);
	b[have] = '\0';
	*buf = b;
	*len = have;
	return 0;
fail:
	free(b);
	close(fd);
	return -1;
}

int textfile_open(struct textfile *f, const char *path, size_t max_bytes, char *err,
		  size_t errlen)
{
	*f = (struct textfile){ .path = path };
	return textfile_read(path, max_bytes, &f->text, &f->len, err, errlen);
}

int textfile_close(struct textfile *f, int rc, char *err, size_t errlen)
{
	if (rc < 0)
		snprintf(err, errlen, "%s: %s", f->path, f->err);
	explicit_bzero(f->text, f->len);
	free(f->text);
	f->text = NULL;
	return rc;
}

int textfile_lines(const char *text, size_t len, size_t max_bytes, size_t max_line,
		   int (*line)(void *arg, size_t no, const char *s, size_t n), void *arg,
		   char *err, size_t errlen)
{
	size_t off = 0, no = 0;

	if (len > max_bytes) {
		snprintf(err, errlen, "larger than %zu bytes", max_bytes);
		return -1;
	}
	while (off < len) {
		const char *nl = memchr(text + off, '\n', len - off);
		size_t end = nl ? (size_t)(nl - text) : len;

		no++;
		if (end - off > max_line) {
			snprintf(err, errlen, "line %zu: longer than the line limit", no);
			return -1;
		}
		if (line(arg, no, text + off, end - off) < 0)
			return -1;
		off = end + 1;
	}
	return 0;
}

bool text_field(const char *s, size_t len, char sep, size_t *off, const char **f, size_t *flen)
{
	const char *end;

	if (*off > len)
		return false;
	*f = s + *off;
	end = memchr(*f, sep, len - *off);
	*flen = end ? (size_t)(end - *f) : len - *off;
	*off += *flen + 1;
	return true;
}
