/*
 * sealedfd.c - bytes as a sealed memfd, and back (sealedfd.h).
 *
 * Owns nothing that lives on. The receiving side treats the fd as
 * hostile: its seals and size are checked before it is mapped, so that
 * what is mapped can neither change nor shrink under the reader (a
 * shrunk file would turn a read into SIGBUS).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sealedfd.h"

int sealedfd_make(const char *name, const void *buf, size_t len)
{
	const char *p = buf;
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), err;

	if (fd < 0)
		return -1;
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto fail;
		p += n;
		len -= (size_t)n;
	}
	if (fcntl(fd, F_ADD_SEALS, SEALEDFD_SEALS) < 0)
		goto fail;
	return fd;
fail:
	err = errno ? errno : EIO;
	close(fd);
	errno = err;
	return -1;
}

const void *sealedfd_map(int fd, size_t len, size_t max, char *err, size_t errlen)
{
	struct stat st;
	void *p;
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals < 0 || (seals & SEALEDFD_SEALS) != SEALEDFD_SEALS) {
		snprintf(err, errlen, "not a sealed memfd");
		return NULL;
	}
	if (fstat(fd, &st) < 0 || st.st_size < 0 || (size_t)st.st_size != len || len == 0 ||
	    len > max) {
		snprintf(err, errlen, "its size is not the %zu bytes announced (at most %zu)", len,
			 max);
		return NULL;
	}
	p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "cannot map it: %s", strerror(errno));
		return NULL;
	}
	return p;
}

void sealedfd_unmap(const void *p, size_t len)
{
	if (p != NULL)
		munmap((void *)p, len);
}
