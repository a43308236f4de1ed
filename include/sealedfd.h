/*
 * sealedfd.h - bytes handed to another process as a sealed memfd: the
 * receiver maps them without a copy through the socket, whatever their
 * size, and knows the sender can no longer change them under it.
 */
#ifndef IOTD_SEALEDFD_H
#define IOTD_SEALEDFD_H

#include <fcntl.h>
#include <stddef.h>

/* The seals a sealed memfd carries: nothing may write, grow, shrink it or change its seals. */
#define SEALEDFD_SEALS (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)

/*
 * A memfd named name holding len bytes of buf (len > 0), sealed. The fd,
 * close-on-exec, or -1 with errno.
 */
int sealedfd_make(const char *name, const void *buf, size_t len);

/*
 * The bytes of a sealed memfd received from another process, mapped
 * read-only: NULL (with a message in err) unless fd carries every seal of
 * SEALEDFD_SEALS and is exactly len bytes long, 0 < len <= max. Unmap with
 * sealedfd_unmap(p, len). The caller keeps fd (closing it is fine once
 * mapped).
 */
const void *sealedfd_map(int fd, size_t len, size_t max, char *err, size_t errlen);
void sealedfd_unmap(const void *p, size_t len);

#endif
