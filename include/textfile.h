/*
 * textfile.h - read a whole configuration file into memory, bounded.
 *
 * The password file, the ACL file and the JWT key file are read whole and
 * then parsed from the buffer (so that the fuzzers and the tests drive the
 * very parser the daemon uses). A file larger than its bound is refused
 * before it is read, so a mistaken path (a log, a device) cannot make the
 * reader allocate without end.
 */
#ifndef IOTD_TEXTFILE_H
#define IOTD_TEXTFILE_H

#include <stddef.h>

/*
 * Read the regular file at path (at most max_bytes) into a malloc'd buffer
 * with a NUL after its last byte (not counted in *len). Returns 0, or -1
 * with a message naming the path in err ("/etc/iotd/passwd: No such file
 * or directory", "...: larger than 1048576 bytes").
 */
int textfile_read(const char *path, size_t max_bytes, char **buf, size_t *len,
		  char *err, size_t errlen);

#endif
