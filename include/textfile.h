/*
 * textfile.h - read a whole configuration file into memory, bounded, and
 * walk its lines.
 *
 * The password file, the ACL file and the JWT key file are read whole and
 * then parsed from the buffer (so that the fuzzers and the tests drive the
 * very parser the daemon uses). A file larger than its bound is refused
 * before it is read, so a mistaken path (a log, a device) cannot make the
 * reader allocate without end.
 */
#ifndef IOTD_TEXTFILE_H
#define IOTD_TEXTFILE_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Read the regular file at path (at most max_bytes) into a malloc'd buffer
 * with a NUL after its last byte (not counted in *len). Returns 0, or -1
 * with a message naming the path in err ("/etc/iotd/passwd: No such file
 * or directory", "...: larger than 1048576 bytes").
 */
int textfile_read(const char *path, size_t max_bytes, char **buf, size_t *len,
		  char *err, size_t errlen);

/* A file read to be parsed, and the parser's message (without the path). */
struct textfile {
	const char *path;
	char *text;                  /* NUL-terminated */
	size_t len;
	char err[256];
};

/* textfile_read() into f: 0, or -1 with the message in err. */
int textfile_open(struct textfile *f, const char *path, size_t max_bytes, char *err,
		  size_t errlen);

/*
 * The end of a parse whose result is rc: with rc < 0, err gets "path:
 * f->err". The text is wiped before it is freed (a password file's hashes
 * must not linger in the heap). Returns rc.
 */
int textfile_close(struct textfile *f, int rc, char *err, size_t errlen);

/*
 * Hand each line of text[0..len) to line(arg, its number from 1, its bytes
 * without the '\n'), first to last, until one returns -1. A text over
 * max_bytes, or a line over max_line, is refused with a message in err
 * ("larger than 1048576 bytes", "line 3: longer than the line limit"); a
 * line the callback refuses has the callback's. Returns 0 or -1.
 */
int textfile_lines(const char *text, size_t len, size_t max_bytes, size_t max_line,
		   int (*line)(void *arg, size_t no, const char *s, size_t n), void *arg,
		   char *err, size_t errlen);

/*
 * The next sep-separated field of s[*off..len) in *f, *flen, *off moved
 * past it and its separator; false when there is none.
 */
bool text_field(const char *s, size_t len, char sep, size_t *off, const char **f, size_t *flen);

#endif
